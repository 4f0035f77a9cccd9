//! When leases expire (issue 14; the state machine's side is `kv/lease.rs`).
//!
//! Expiry is the leader's call, by its clock: it keeps, for every lease,
//! when it expires unless kept alive (granted or kept alive + TTL), and
//! proposes `LEASE_EXPIRE` once that has passed; applying it deletes the
//! lease's keys, on every node at the same revision. None of this is
//! replicated state: a node that becomes leader gives every lease its full
//! TTL from that moment (it cannot know when the old leader last heard a
//! keepalive), so a leader change never expires a lease early; it can
//! expire one up to its TTL, plus the election, late.
//!
//! A keepalive on a follower is forwarded to the leader (`LEASE_KEEPALIVE`
//! on the peer link) and answered when the leader's reply comes back, or
//! with `TIMEOUT` after `--request-timeout-ms`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_reply, ErrorCode, ErrorReply, LeaseKeepalive, LeaseKeepaliveReply, LeaseReply,
    LeaseRequest, NodeId, RaftMessage, MAX_LEASES_LISTED, MAX_LEASE_KEYS_LISTED,
};

use super::conn::ReplyTo;
use super::Node;
use crate::kv::{ApplyResult, Command, Op};
use crate::raft::{ProposeError, Role};

/// How long the leader waits for an expiry it proposed to be applied
/// before proposing it again (a proposal can be lost with leadership).
const EXPIRE_RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct LeaseClock {
    deadlines: HashMap<u64, Instant>,
    /// The same deadlines, soonest first.
    queue: BTreeSet<(Instant, u64)>,
    /// Leases whose expiry is proposed, and when to propose it again.
    expiring: HashMap<u64, Instant>,
    was_leader: bool,
    /// Keepalives forwarded to the leader, by token: who waits, and until.
    forwarded: HashMap<u64, (ReplyTo, Instant)>,
    next_token: u64,
}

impl LeaseClock {
    fn renew(&mut self, id: u64, ttl_secs: u64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl_secs);
        if let Some(old) = self.deadlines.insert(id, deadline) {
            self.queue.remove(&(old, id));
        }
        self.queue.insert((deadline, id));
    }

    fn forget(&mut self, id: u64) {
        if let Some(old) = self.deadlines.remove(&id) {
            self.queue.remove(&(old, id));
        }
        self.expiring.remove(&id);
    }

    /// Seconds lease `id` has left, rounded up, by this node's clock.
    fn remaining_secs(&self, id: u64, now: Instant) -> Option<u64> {
        let left = self.deadlines.get(&id)?.saturating_duration_since(now);
        Some(left.as_millis().div_ceil(1000) as u64)
    }
}

impl Node {
    /// After an entry is applied: a grant starts its lease's clock, an end
    /// stops it.
    pub(super) fn lease_applied(&mut self, result: &Option<ApplyResult>) {
        let Some(ApplyResult::Lease(r)) = result else {
            return;
        };
        let Some(id) = r.id else { return };
        if let Some(ttl) = r.granted_ttl {
            self.leases.renew(id, ttl, Instant::now());
        } else if r.deleted.is_some() {
            self.leases.forget(id);
        }
    }

    /// On the timer: a new leader's full TTLs, the expiries due, and
    /// forwarded keepalives that got no answer.
    pub(super) fn lease_timers(&mut self, now: Instant) {
        let leader = self.take_over_leases(now);
        if leader {
            self.propose_expiries(now);
        }
        let late: Vec<u64> = self
            .leases
            .forwarded
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in late {
            if let Some((to, _)) = self.leases.forwarded.remove(&token) {
                let error = ErrorReply::new(
                    ErrorCode::Timeout,
                    "the leader did not answer the forwarded keepalive in time; send it again",
                );
                self.complete_error(to, &error);
            }
        }
    }

    /// Whether this node leads; if it has only just become leader, every
    /// lease gets its full TTL from `now` first.
    fn take_over_leases(&mut self, now: Instant) -> bool {
        let leader = self.raft.role() == Role::Leader;
        if leader && !self.leases.was_leader {
            let leases: Vec<(u64, u64)> = self.kv.leases().collect();
            self.leases.deadlines.clear();
            self.leases.queue.clear();
            self.leases.expiring.clear();
            for (id, ttl) in &leases {
                self.leases.renew(*id, *ttl, now);
            }
            if !leases.is_empty() {
                info!(
                    "leading: every lease ({}) has its full TTL again from now",
                    leases.len()
                );
            }
        }
        self.leases.was_leader = leader;
        leader
    }

    fn propose_expiries(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.leases.queue.first() {
            if deadline > now {
                break;
            }
            self.leases.queue.pop_first();
            self.leases.deadlines.remove(&id);
            if self.kv.lease_ttl(id).is_none() {
                self.leases.expiring.remove(&id);
                continue;
            }
            let retry_at = self.leases.expiring.get(&id).copied();
            if retry_at.is_none_or(|at| at <= now) {
                let command = Command {
                    op: Op::LeaseExpire { id },
                    client_id: None,
                    seq: None,
                    user: None,
                    ts_ms: super::clients::now_ms(),
                };
                if self.raft.propose(command.encode()).is_ok() {
                    info!("lease {id} was not kept alive for its TTL: expiring it");
                }
                self.leases.expiring.insert(id, now + EXPIRE_RETRY);
            }
            // Looked at again when the retry is due, if still there.
            let again = self.leases.expiring.get(&id).copied().unwrap_or(now);
            self.leases.deadlines.insert(id, again);
            self.leases.queue.insert((again, id));
        }
    }

    /// `LEASE` keepalive, ttl and list (grants and revokes are writes).
    pub(super) fn handle_lease(&mut self, key: usize, req_id: Option<u64>, request: LeaseRequest) {
        let now = Instant::now();
        // A leader answers from its deadlines: taken over first if it only
        // just won (the timer may not have run yet).
        let leader = self.take_over_leases(now);
        if leader && !self.leases_current() {
            if matches!(
                request,
                LeaseRequest::Grant { .. } | LeaseRequest::Revoke { .. }
            ) {
                return;
            }
            let error = ErrorReply::new(
                ErrorCode::NoLeader,
                "this node has just become leader and has not applied everything committed \
                 yet, so it cannot tell which leases exist; retry in a moment",
            );
            return self.reply_error_now(key, req_id, &error);
        }
        match request {
            LeaseRequest::Keepalive { id } if leader => {
                let reply = self.keep_alive(id, now);
                match reply {
                    Some(ttl) => {
                        let reply = LeaseReply {
                            id: Some(id),
                            ttl: Some(ttl),
                            ..LeaseReply::default()
                        };
                        self.conns
                            .reply_now(key, |out| encode_reply(out, req_id, &reply));
                    }
                    None => self.reply_error_now(key, req_id, &lease_gone(id)),
                }
            }
            LeaseRequest::Keepalive { id } => {
                let Some(leader_id) = self.raft.leader_id() else {
                    let error = self.propose_error(&ProposeError::NotLeader { leader_id: None });
                    return self.reply_error_now(key, req_id, &error);
                };
                let Some(to) = self.conns.reserve(key, req_id) else {
                    return;
                };
                self.leases.next_token += 1;
                let token = self.leases.next_token;
                let until = now + self.config.request_timeout;
                self.leases.forwarded.insert(token, (to, until));
                let message = RaftMessage::LeaseKeepalive(LeaseKeepalive {
                    term: self.raft.term(),
                    token,
                    id,
                });
                self.send_to_peer(leader_id, &message);
            }
            LeaseRequest::Ttl { id, keys } if leader => {
                let (Some(granted), Some(left), false) = (
                    self.kv.lease_ttl(id),
                    self.leases.remaining_secs(id, now),
                    self.leases.expiring.contains_key(&id),
                ) else {
                    return self.reply_error_now(key, req_id, &lease_gone(id));
                };
                let (listed, more) = if keys {
                    let (k, more) = self.kv.lease_keys(id, MAX_LEASE_KEYS_LISTED);
                    (Some(k), more)
                } else {
                    (None, false)
                };
                let reply = LeaseReply {
                    id: Some(id),
                    ttl: Some(left.min(granted)),
                    granted_ttl: Some(granted),
                    keys: listed,
                    keys_more: more,
                    ..LeaseReply::default()
                };
                self.conns
                    .reply_now(key, |out| encode_reply(out, req_id, &reply));
            }
            LeaseRequest::List if leader => {
                let ids: Vec<u64> = self.kv.leases().map(|(id, _)| id).collect();
                let more = ids.len() > MAX_LEASES_LISTED;
                let reply = LeaseReply {
                    leases: Some(ids.into_iter().take(MAX_LEASES_LISTED).collect()),
                    more,
                    ..LeaseReply::default()
                };
                self.conns
                    .reply_now(key, |out| encode_reply(out, req_id, &reply));
            }
            LeaseRequest::Ttl { .. } | LeaseRequest::List => {
                let leader_id = self.raft.leader_id();
                let error = self.propose_error(&ProposeError::NotLeader { leader_id });
                self.reply_error_now(key, req_id, &error);
            }
            // `Command::from_request` took them as writes.
            LeaseRequest::Grant { .. } | LeaseRequest::Revoke { .. } => {}
        }
    }

    /// Whether this leader's applied state holds every lease a client was
    /// told of: it has committed an entry of its own term (so everything an
    /// earlier leader committed is committed here too) and applied all it
    /// committed. Until then a grant it has not applied yet would look
    /// like a lease that does not exist.
    fn leases_current(&self) -> bool {
        let log = self.raft.log();
        log.term(log.committed()) == Some(self.raft.term())
            && self.kv.last_applied() >= log.committed()
    }

    /// The leader renews lease `id`: its TTL, or `None` if it does not
    /// exist (or its expiry is already proposed).
    fn keep_alive(&mut self, id: u64, now: Instant) -> Option<u64> {
        let ttl = self.kv.lease_ttl(id)?;
        if self.leases.expiring.contains_key(&id) {
            return None;
        }
        self.leases.renew(id, ttl, now);
        Some(ttl)
    }

    /// A keepalive a follower forwarded, or the leader's answer to ours.
    pub(super) fn handle_lease_peer_message(&mut self, from: NodeId, message: RaftMessage) {
        match message {
            RaftMessage::LeaseKeepalive(m) => {
                // A leader not yet current answers as no leader: the
                // follower's client retries.
                let leader = self.take_over_leases(Instant::now()) && self.leases_current();
                let ttl = if leader {
                    self.keep_alive(m.id, Instant::now())
                } else {
                    None
                };
                let reply = RaftMessage::LeaseKeepaliveReply(LeaseKeepaliveReply {
                    term: self.raft.term(),
                    token: m.token,
                    id: m.id,
                    ttl,
                    leader,
                });
                self.send_to_peer(from, &reply);
            }
            RaftMessage::LeaseKeepaliveReply(m) => {
                let Some((to, _)) = self.leases.forwarded.remove(&m.token) else {
                    return; // timed out already
                };
                match (m.leader, m.ttl) {
                    (true, Some(ttl)) => {
                        let reply = LeaseReply {
                            id: Some(m.id),
                            ttl: Some(ttl),
                            ..LeaseReply::default()
                        };
                        let req_id = to.req_id;
                        self.conns
                            .complete(to, |out| encode_reply(out, req_id, &reply));
                    }
                    (true, None) => self.complete_error(to, &lease_gone(m.id)),
                    (false, _) => {
                        let error =
                            self.propose_error(&ProposeError::NotLeader { leader_id: None });
                        self.complete_error(to, &error);
                    }
                }
            }
            _ => {}
        }
    }
}

fn lease_gone(id: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::LeaseNotFound,
        format!(
            "lease {id} does not exist (never granted, revoked, or expired), or its expiry is \
             under way"
        ),
    )
}
