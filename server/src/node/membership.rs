//! Membership on the node: the configuration a data directory's log starts
//! from, `--force-new-cluster`, keeping the peer links in step with the
//! latest configuration, and the `MEMBER` and `TRANSFER_LEADER` requests
//! (the core decides; see `raft/membership.rs`).
//!
//! Where a node's configurations come from:
//! - a founding member's first start writes the cluster's first
//!   configuration (from `--peers`) as log entry 1 of term 0
//!   (`raft::bootstrap_entry`), so members added later read it from the log;
//! - a node started with `--join` starts from no configuration at all and
//!   learns the cluster's from the leader's log or snapshot;
//! - every later change is a `CONFIG` entry, and a snapshot records the
//!   configuration at its index.
//!
//! The configuration the log starts from (empty in both cases above) is
//! recorded once in the data directory (`membership`), so `--peers` seeds
//! only a brand-new cluster. A data directory written before configurations
//! were logged records the one `--peers` gives at its first start with this
//! version.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Instant;

use poncho_protocol::{
    encode_reply, Entry, EntryKind, ErrorCode, ErrorReply, Member, MemberInfo, MemberReply,
    MemberRequest, Membership, NodeId, TransferLeaderReply,
};

use super::conn::{ConnRole, ReplyTo};
use super::Node;
use crate::durable;
use crate::raft::{ChangeError, HardState, MemberRole, Role};

/// The file in a data directory that holds the configuration its log
/// starts from.
pub const BASE_MEMBERSHIP_FILE: &str = "membership";
/// Larger than any configuration: a file this big is not one.
const MAX_BASE_FILE_BYTES: u64 = 1 << 20;

/// The recorded configuration the log starts from, if one was recorded.
pub(super) fn read_base(dir: &Path) -> Result<Option<Membership>, String> {
    let path = dir.join(BASE_MEMBERSHIP_FILE);
    let text = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > MAX_BASE_FILE_BYTES => {
            return Err(format!(
                "{} is too large to be a configuration",
                path.display()
            ))
        }
        Ok(_) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let membership: Membership = serde_json::from_str(text.trim())
        .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    if !membership.members.is_empty() {
        membership
            .check()
            .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    }
    Ok(Some(membership))
}

/// Records `membership` as the configuration the log starts from.
pub(super) fn write_base(dir: &Path, membership: &Membership, fsync: bool) -> Result<(), String> {
    let path = dir.join(BASE_MEMBERSHIP_FILE);
    let tmp = dir.join(format!("{BASE_MEMBERSHIP_FILE}.tmp"));
    let fail = |e: io::Error| format!("cannot record {}: {e}", path.display());
    let _ = std::fs::remove_file(&tmp);
    let mut file = durable::create_new(&tmp, false, &()).map_err(|f| fail(f.source))?;
    let text = serde_json::to_string(membership).unwrap_or_default() + "\n";
    file.write_all(text.as_bytes()).map_err(fail)?;
    durable::replace(file, &tmp, &path, fsync, &()).map_err(|f| fail(f.source))
}

/// `--force-new-cluster`: the entry that makes `own` the only voter of
/// `latest` (every other member removed, this node's addresses kept or
/// taken from `own_member`), and the hard state to write with it: a term
/// past everything in the log, voted for itself, so the entry is the
/// newest and the node's own next election (quorum one) commits it and
/// everything before it. `None` if `own` is the only voter already.
pub(super) fn forced_configuration(
    latest: &Membership,
    own_member: Member,
    hard_state: HardState,
    last: (u64, u64),
) -> Option<(Entry, HardState, Membership)> {
    let own = own_member.id;
    let others: Vec<NodeId> = latest.ids().into_iter().filter(|&id| id != own).collect();
    if latest.is_voter(own) && others.is_empty() {
        return None;
    }
    let mut removed = latest.removed.clone();
    removed.extend(others);
    let overflow = removed
        .len()
        .saturating_sub(poncho_protocol::MAX_REMOVED_IDS);
    removed.drain(..overflow);
    let mut member = latest.get(own).cloned().unwrap_or(own_member);
    member.learner = false;
    let forced = Membership {
        members: vec![member],
        removed,
    };
    let term = hard_state.term.max(last.1) + 1;
    let entry = Entry {
        index: last.0 + 1,
        term,
        kind: EntryKind::Config,
        data: forced.encode().into(),
    };
    let hard_state = HardState {
        term,
        vote: Some(own),
    };
    Some((entry, hard_state, forced))
}

/// The latest configuration among `entries`, else `base`.
pub(super) fn latest_in(entries: &[Entry], base: &Membership) -> Result<Membership, String> {
    match entries.iter().rev().find(|e| e.kind == EntryKind::Config) {
        Some(e) => Membership::decode(&e.data)
            .map_err(|error| format!("log entry {}: bad configuration: {error}", e.index)),
        None => Ok(base.clone()),
    }
}

/// Membership requests waiting for their outcome, and what the node has
/// made of its configuration so far.
#[derive(Default)]
pub struct MemberRequests {
    /// The `Raft::membership_version` the peer links were last made to
    /// follow.
    followed: Option<u64>,
    /// Changes proposed here, answered once the entry at their index
    /// commits (with the term they were proposed in) or their time is up.
    changes: BTreeMap<u64, PendingChange>,
    /// Leadership transfers asked for here, answered once the target leads.
    transfers: Vec<PendingTransfer>,
    /// A member refused this node's connection saying it was removed.
    pub told_removed: bool,
    /// The commit index `cut_off_removed` last looked at.
    commit_seen: u64,
    /// Removed nodes whose connections were closed once their removal
    /// committed (they are refused from then on).
    cut_off: BTreeSet<NodeId>,
    removal_logged: bool,
}

struct PendingChange {
    to: ReplyTo,
    term: u64,
    deadline: Instant,
}

struct PendingTransfer {
    to: ReplyTo,
    target: NodeId,
    deadline: Instant,
}

impl Node {
    /// Whether this node was removed from its cluster (a committed entry of
    /// its own log says so, or a member told it): it serves nothing but
    /// HEALTHCHECK and STATUS. A removal not yet committed may still be
    /// undone (a new leader without it truncates it away), so it does not
    /// count: the node keeps its part until then, as a leader removing
    /// itself keeps leading.
    pub(super) fn is_removed(&self) -> bool {
        self.members.told_removed || self.removed_by_committed(self.config.id)
    }

    /// Whether `id`'s removal is in the configuration at this node's
    /// commit index (final: removed ids never come back).
    pub(super) fn removed_by_committed(&self, id: NodeId) -> bool {
        let committed = self.raft.membership_at(self.raft.log().committed());
        MemberRole::of(id, &committed) == MemberRole::Removed
    }

    /// The error every other request gets on a removed node.
    pub(super) fn removed_error(&self) -> ErrorReply {
        ErrorReply::new(
            ErrorCode::Removed,
            format!(
                "node {} was removed from its cluster and serves nothing; use another member",
                self.config.id
            ),
        )
    }

    /// After the core's outputs: the peer links follow the latest
    /// configuration (links to new members open, removed members' close,
    /// moved members' reopen at their new addresses); a removal of this
    /// node is logged once; transfers whose target now leads are answered.
    pub(super) fn follow_membership(&mut self) {
        let version = self.raft.membership_version();
        if self.members.followed != Some(version) {
            let index = self.raft.membership_index();
            let latest = self.raft.membership().clone();
            let closing = self.peers.sync(&latest, self.config.id, Instant::now());
            for key in closing {
                self.close(key, "the member's address changed, or it was removed");
            }
            let removed: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.role, ConnRole::Peer(id) if latest.was_removed(id)))
                .map(|(key, _)| key)
                .collect();
            for key in removed {
                self.close(key, "the member was removed");
            }
            if self.members.followed.is_some() {
                info!(
                    "configuration of index {index}: voters {:?}, learners {:?}; this node is a {}",
                    latest.voters(),
                    latest.learners(),
                    self.raft.member_role().name()
                );
            }
            self.members.followed = Some(version);
        }
        self.cut_off_removed();
        if self.is_removed() && !self.members.removal_logged {
            self.members.removal_logged = true;
            warn!(
                "node {} was removed from the cluster: it takes part in nothing more and \
                 answers clients with REMOVED. Stop it; its data directory can go",
                self.config.id
            );
        }
        self.answer_transfers();
    }

    /// Once a removal commits, the removed node's connections to this one
    /// close: it reconnects, is refused with REMOVED, and so learns it was
    /// removed (the leader replicates only to members, so its log may never
    /// say so).
    fn cut_off_removed(&mut self) {
        let committed = self.raft.log().committed();
        if committed == self.members.commit_seen {
            return;
        }
        self.members.commit_seen = committed;
        let config = self.raft.membership_at(committed);
        let fresh: Vec<NodeId> = config
            .removed
            .iter()
            .copied()
            .filter(|id| !self.members.cut_off.contains(id))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.role {
                ConnRole::Peer(id) | ConnRole::Outbound(id, _) => fresh.contains(&id),
                _ => false,
            })
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.close(key, "the member's removal committed");
        }
        self.members.cut_off.extend(fresh);
        // Bounded as the configuration's removed ids are.
        if self.members.cut_off.len() > 2 * poncho_protocol::MAX_REMOVED_IDS {
            self.members.cut_off = config.removed.iter().copied().collect();
        }
    }

    /// `MEMBER`: a list, or a change the core is asked to make.
    pub(super) fn handle_member_request(
        &mut self,
        key: usize,
        req_id: Option<u64>,
        request: MemberRequest,
    ) {
        let Some((change, force)) = request.change() else {
            return self.list_members(key, req_id);
        };
        match self.raft.propose_change(&change, force) {
            Ok(index) => {
                let Some(to) = self.conns.reserve(key, req_id) else {
                    return;
                };
                info!("membership change proposed at index {index}: {change:?}");
                let pending = PendingChange {
                    to,
                    term: self.raft.term(),
                    deadline: Instant::now() + self.config.request_timeout,
                };
                self.members.changes.insert(index, pending);
            }
            Err(e) => {
                let error = self.change_error(&e);
                self.reply_error_now(key, req_id, &error);
            }
        }
    }

    /// The leader lists the members with its view of each; a follower that
    /// knows the leader sends the client there; with no leader known, a
    /// node lists what its own log says.
    fn list_members(&mut self, key: usize, req_id: Option<u64>) {
        if self.raft.role() != Role::Leader {
            if let Some(leader) = self.raft.leader_id() {
                let error = self.change_error(&ChangeError::NotLeader {
                    leader_id: Some(leader),
                });
                return self.reply_error_now(key, req_id, &error);
            }
        }
        let reply = self.member_reply(None);
        self.conns
            .reply_now(key, |out| encode_reply(out, req_id, &reply));
    }

    /// The members as this node sees them (with the leader's view of each,
    /// if it leads).
    fn member_reply(&self, index: Option<u64>) -> MemberReply {
        let progress = self.raft.member_progress();
        let leader = self.raft.leader_id();
        let members = self
            .raft
            .membership()
            .members
            .iter()
            .map(|m| {
                let seen = progress.iter().find(|p| p.id == m.id);
                MemberInfo {
                    id: m.id,
                    addr: m.addr,
                    peer_addr: m.peer_addr,
                    learner: m.learner,
                    leader: leader == Some(m.id),
                    match_index: seen.map(|p| p.match_index),
                    healthy: seen.map(|p| p.healthy),
                }
            })
            .collect();
        MemberReply {
            index,
            members,
            last_index: (!progress.is_empty()).then(|| self.raft.log().last_index()),
        }
    }

    /// Answers the change proposed at `entry`'s index, if one waits here:
    /// made, if the entry that committed is the one proposed.
    pub(super) fn answer_change(&mut self, entry: &Entry) {
        let Some(pending) = self.members.changes.remove(&entry.index) else {
            return;
        };
        if pending.term != entry.term {
            let error = ErrorReply::new(
                ErrorCode::LeadershipLost,
                "leadership changed before the change committed, and another entry took its \
                 place: it was not made; retry",
            );
            return self.complete_error(pending.to, &error);
        }
        let reply = self.member_reply(Some(entry.index));
        let req_id = pending.to.req_id;
        self.conns
            .complete(pending.to, |out| encode_reply(out, req_id, &reply));
    }

    /// `TRANSFER_LEADER`: the leader hands leadership to voter `target`;
    /// answered once it leads (see `answer_transfers`).
    pub(super) fn handle_transfer(&mut self, key: usize, req_id: Option<u64>, target: NodeId) {
        if self.raft.role() != Role::Leader {
            let error = self.change_error(&ChangeError::NotLeader {
                leader_id: self.raft.leader_id(),
            });
            return self.reply_error_now(key, req_id, &error);
        }
        if !self.raft.membership().is_voter(target) {
            let error = ErrorReply::new(
                ErrorCode::MembershipRefused,
                format!("node {target} is not a voter; leadership goes only to a voter"),
            );
            return self.reply_error_now(key, req_id, &error);
        }
        let Some(to) = self.conns.reserve(key, req_id) else {
            return;
        };
        if target != self.config.id {
            if let Err(e) = self.raft.transfer_leadership(target) {
                let error = self.propose_error(&e);
                return self.complete_error(to, &error);
            }
            info!("transferring leadership to node {target}");
        }
        // Two election timeouts: the core gives a transfer up after one.
        let wait = self.config.tick * (2 * self.config.election_timeout_ticks.max(1)) as u32;
        self.members.transfers.push(PendingTransfer {
            to,
            target,
            deadline: Instant::now() + wait,
        });
        self.answer_transfers();
    }

    fn answer_transfers(&mut self) {
        if self.members.transfers.is_empty() {
            return;
        }
        let leader = self.raft.leader_id();
        let term = self.raft.term();
        let (done, waiting) = std::mem::take(&mut self.members.transfers)
            .into_iter()
            .partition(|t| Some(t.target) == leader);
        self.members.transfers = waiting;
        for t in done {
            let reply = TransferLeaderReply {
                leader_id: t.target,
                term,
            };
            let req_id = t.to.req_id;
            self.conns
                .complete(t.to, |out| encode_reply(out, req_id, &reply));
        }
    }

    /// Changes and transfers whose time is up.
    pub(super) fn expire_member_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .members
            .changes
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&i, _)| i)
            .collect();
        for index in expired {
            if let Some(c) = self.members.changes.remove(&index) {
                let error = ErrorReply::new(
                    ErrorCode::Timeout,
                    format!(
                        "the change at index {index} did not commit in time; whether it will is \
                         unknown: see `member list` before trying again"
                    ),
                );
                self.complete_error(c.to, &error);
            }
        }
        let (late, waiting) = std::mem::take(&mut self.members.transfers)
            .into_iter()
            .partition(|t| t.deadline <= now);
        self.members.transfers = waiting;
        for t in late {
            let error = ErrorReply::new(
                ErrorCode::Timeout,
                format!(
                    "node {} did not take over in time (it may be behind or unreachable); \
                     leadership stays where it is",
                    t.target
                ),
            );
            self.complete_error(t.to, &error);
        }
    }

    /// The error a refused change gets.
    pub(super) fn change_error(&self, e: &ChangeError) -> ErrorReply {
        let code = match e {
            ChangeError::NotLeader { leader_id } => {
                let e = crate::raft::ProposeError::NotLeader {
                    leader_id: *leader_id,
                };
                return self.propose_error(&e);
            }
            ChangeError::TransferInProgress
            | ChangeError::ChangeInProgress { .. }
            | ChangeError::TermNotCommitted => ErrorCode::ChangeInProgress,
            ChangeError::Invalid(_) => ErrorCode::MembershipRefused,
            ChangeError::LearnerBehind { .. } => ErrorCode::LearnerNotReady,
            ChangeError::Unsafe { .. } => ErrorCode::UnsafeChange,
        };
        ErrorReply::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id).parse().unwrap(),
            peer_addr: None,
            learner: false,
        }
    }

    #[test]
    fn the_base_is_recorded_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_base(dir.path()).unwrap(), None);
        let m = Membership::bootstrap([member(1), member(2)]);
        write_base(dir.path(), &m, false).unwrap();
        assert_eq!(read_base(dir.path()).unwrap(), Some(m));
        write_base(dir.path(), &Membership::default(), false).unwrap();
        assert_eq!(read_base(dir.path()).unwrap(), Some(Membership::default()));
        std::fs::write(
            dir.path().join(BASE_MEMBERSHIP_FILE),
            "{\"members\":[{\"id\":0",
        )
        .unwrap();
        let e = read_base(dir.path()).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn forcing_a_new_cluster_leaves_this_node_the_only_voter_in_a_later_term() {
        let three = Membership::bootstrap([member(1), member(2), member(3)]);
        let hs = HardState {
            term: 7,
            vote: Some(2),
        };
        let (entry, hs, forced) = forced_configuration(&three, member(1), hs, (40, 6)).unwrap();
        assert_eq!((entry.index, entry.term), (41, 8));
        assert_eq!(hs.vote, Some(1));
        assert_eq!(forced.voters().into_iter().collect::<Vec<_>>(), [1]);
        assert!(forced.was_removed(2) && forced.was_removed(3));
        assert_eq!(Membership::decode(&entry.data).unwrap(), forced);
        assert!(forced_configuration(&forced, member(1), hs, (41, 8)).is_none());
    }
}
