//! The Ready driver: carries out what the core hands out, in the order the
//! core requires: send what may go now, apply and answer what committed,
//! make the hard state and entries durable with one fsync, then send what
//! had to wait for the disk. While the disk is full, what waits to be made
//! durable is held (`Unpersisted`) and retried, and a leader hands off.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use poncho_protocol::{Entry, NodeId};

use super::log_limiter::LogLimiter;
use super::{Fatal, Node};
use crate::raft::{Alert, HardState, Outbound, Ready, Role};
use crate::storage::{Health, StorageError};

/// After a write found the disk full, the first retry waits this long; each
/// failed retry doubles the wait, up to `NO_SPACE_RETRY_MAX`.
const NO_SPACE_RETRY_MIN: Duration = Duration::from_millis(100);
const NO_SPACE_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the log repeats that the disk is still full.
const NO_SPACE_REMINDER: Duration = Duration::from_secs(30);
/// Votes and acknowledgements held while the disk is full, newest kept: they
/// may only leave once durable, and Raft resends what is dropped.
const MAX_HELD_MESSAGES: usize = 4096;

/// What the core handed out to make durable since a write found the disk
/// full, retried until it is written. Readies are merged in the order they
/// came: the newest hard state, and entries as storage would store them (a
/// later batch replaces what it overlaps). Nothing here is reported
/// persisted, and none of `messages` leaves, until the write succeeds.
///
/// Bounded without a limit of its own: a leader refuses proposals while it
/// cannot write, and a follower only holds what its leader sent and got no
/// acknowledgement for (the core's in-flight window).
pub struct Unpersisted {
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    messages: VecDeque<Outbound>,
    /// Held messages dropped at `MAX_HELD_MESSAGES`.
    dropped: u64,
    /// The latest error, for STATUS and the log.
    pub error: String,
    since: Instant,
    attempts: u64,
    next_retry: Instant,
    backoff: Duration,
    next_reminder: Instant,
}

impl Unpersisted {
    fn new(error: String, now: Instant) -> Unpersisted {
        Unpersisted {
            hard_state: None,
            entries: Vec::new(),
            messages: VecDeque::new(),
            dropped: 0,
            error,
            since: now,
            attempts: 0,
            next_retry: now + NO_SPACE_RETRY_MIN,
            backoff: NO_SPACE_RETRY_MIN,
            next_reminder: now + NO_SPACE_REMINDER,
        }
    }

    /// As the core does when it enters a term (`Raft::enter_term`): a held
    /// message of a term older than the newest hard state's is dropped. It
    /// may acknowledge entries that a later batch merged here replaced, so
    /// once the write lands the disk would no longer back it.
    fn merge(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        messages: Vec<Outbound>,
    ) {
        if let Some(hs) = hard_state {
            self.hard_state = hard_state;
            self.messages.retain(|out| out.message.term() >= hs.term);
        }
        if let Some(first) = entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(entries);
        }
        self.messages.extend(messages);
        while self.messages.len() > MAX_HELD_MESSAGES {
            self.messages.pop_front();
            self.dropped += 1;
        }
    }

    /// STATUS's `storage_error`.
    pub fn describe(&self) -> String {
        format!(
            "{} (for {} ms, {} retries, {} log entries waiting)",
            self.error,
            self.since.elapsed().as_millis(),
            self.attempts,
            self.entries.len()
        )
    }
}

/// The core's alerts, each leader's logged at ERROR once per window.
#[derive(Default)]
pub struct AlertLog(LogLimiter);

impl AlertLog {
    fn report(&mut self, alert: &Alert) {
        let kind = match alert {
            Alert::OverwriteCommitted { leader, .. } => format!("overwrite {leader}"),
            Alert::BadConfig { leader, .. } => format!("config {leader}"),
        };
        self.0.error(&kind, &alert.to_string());
    }
}

impl Node {
    /// Carries out every Ready the core has, in the order the core requires.
    pub(super) fn drive_raft(&mut self) -> Result<(), Fatal> {
        while self.raft.has_ready() {
            let mut rd = self.raft.ready();
            log_role_change(&rd);
            for alert in &rd.alerts {
                self.alerts.report(alert);
            }
            // 1. Messages that may leave now, leaving now: followers persist
            //    while we do.
            for out in &rd.messages {
                self.send_to_peer(out.to, &out.message);
            }
            // 2. Committed entries are durable on a majority already, so
            //    they are applied and answered before this node's own fsync
            //    (the core allows it; the simulator applies before its
            //    writes complete). They all precede any snapshot installed
            //    below, which only ever moves the state machine forward.
            self.apply(&mut rd);
            self.flush_replies();
            // 3. Durability: hard state, entries, one fsync for all of it;
            // 4. then what had to wait for the disk.
            let entries = std::mem::take(&mut rd.entries);
            let after = std::mem::take(&mut rd.messages_after_persist);
            self.persist(rd.hard_state, entries, after)?;
            // 5. Snapshot transfers.
            self.handle_snapshot_outputs(&mut rd)?;
        }
        Ok(())
    }

    /// Applies the committed entries and answers their writes, then the
    /// reads the core has confirmed or failed.
    fn apply(&mut self, rd: &mut Ready) {
        let mut last = None;
        for entry in &std::mem::take(&mut rd.committed_entries) {
            last = Some(entry.index);
            let revision_before = self.kv.revision();
            let result = self.kv.apply(entry);
            self.publish_changes(revision_before);
            self.lease_applied(&result);
            if entry.kind == poncho_protocol::EntryKind::Config {
                self.answer_change(entry);
            } else {
                self.answer_applied(entry, result);
            }
        }
        if let Some(index) = last {
            self.raft.advance_applied(index);
        }
        let reads = std::mem::take(&mut rd.reads);
        let failed = std::mem::take(&mut rd.failed_reads);
        self.answer_reads(reads, failed);
    }

    /// Makes a Ready's hard state and entries durable, then sends what waited
    /// for that and reports it persisted. If the disk is full, or was at an
    /// earlier Ready that is still not written, the whole lot is held
    /// (`Unpersisted`) and retried by `retry_unpersisted`; any other storage
    /// failure is fatal.
    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        messages: Vec<Outbound>,
    ) -> Result<(), Fatal> {
        if let Some(held) = &mut self.unpersisted {
            held.merge(hard_state, entries, messages);
            return Ok(());
        }
        match self.write_durably(hard_state, &entries) {
            Ok(()) => {
                self.persisted(&entries, messages);
                Ok(())
            }
            Err(e) if self.storage.health() == Health::NoSpace => {
                let now = Instant::now();
                error!(
                    "NO_SPACE: {e}. Until space is freed this node writes nothing: it \
                     answers writes with NO_SPACE, sends no vote or acknowledgement, keeps \
                     serving reads, and retries every {NO_SPACE_RETRY_MIN:?} to \
                     {NO_SPACE_RETRY_MAX:?}; nothing acknowledged is lost"
                );
                let mut held = Unpersisted::new(e.to_string(), now);
                held.merge(hard_state, entries, messages);
                self.unpersisted = Some(held);
                self.hand_off_leadership(0);
                Ok(())
            }
            Err(e) => Err(Fatal::Storage(e)),
        }
    }

    fn write_durably(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if let Some(hs) = hard_state {
            self.storage.save_hard_state(hs)?;
        }
        if !entries.is_empty() {
            self.storage.append(entries)?;
            self.storage.sync()?;
        }
        Ok(())
    }

    fn persisted(&mut self, entries: &[Entry], messages: impl IntoIterator<Item = Outbound>) {
        for out in messages {
            self.send_to_peer(out.to, &out.message);
        }
        if let Some(last) = entries.last() {
            self.raft.on_persisted(last.index, last.term);
        }
    }

    /// While the disk is full: once the backoff has passed, asks storage to
    /// put its files back in step (`Storage::recover`) and writes everything
    /// held at the same place. Freed space is thus noticed within
    /// `NO_SPACE_RETRY_MAX`, and the node resumes by itself.
    pub(super) fn retry_unpersisted(&mut self) -> Result<(), Fatal> {
        let now = Instant::now();
        let Some(mut held) = self.unpersisted.take() else {
            return Ok(());
        };
        if now < held.next_retry {
            self.unpersisted = Some(held);
            return Ok(());
        }
        held.attempts += 1;
        let hard_state = held.hard_state;
        let result = self
            .storage
            .recover()
            .and_then(|()| self.write_durably(hard_state, &held.entries));
        match result {
            Ok(()) => {
                self.space_is_back(held, now);
                Ok(())
            }
            Err(e) if self.storage.health() == Health::NoSpace => {
                self.still_full(held, &e, now);
                Ok(())
            }
            Err(e) => Err(Fatal::Storage(e)),
        }
    }

    /// What was held is written: it goes out, and writes are taken again.
    fn space_is_back(&mut self, mut held: Unpersisted, now: Instant) {
        info!(
            "disk space is back: wrote the {} log entries{} held for {:.1} s \
             ({} attempts); taking writes again",
            held.entries.len(),
            if held.hard_state.is_some() {
                " and the hard state"
            } else {
                ""
            },
            now.duration_since(held.since).as_secs_f64(),
            held.attempts
        );
        if held.dropped > 0 {
            info!(
                "{} votes and acknowledgements held meanwhile were dropped (Raft resends)",
                held.dropped
            );
        }
        self.persisted(&held.entries, std::mem::take(&mut held.messages));
    }

    /// A retry found the disk still full: wait longer, remind, hand off.
    fn still_full(&mut self, mut held: Unpersisted, e: &StorageError, now: Instant) {
        held.error = e.to_string();
        held.backoff = (held.backoff * 2).min(NO_SPACE_RETRY_MAX);
        held.next_retry = now + held.backoff;
        if now >= held.next_reminder {
            held.next_reminder = now + NO_SPACE_REMINDER;
            warn!(
                "NO_SPACE for {:.0} s: {e}; {} log entries wait to be written",
                now.duration_since(held.since).as_secs_f64(),
                held.entries.len()
            );
        }
        let attempts = held.attempts;
        self.unpersisted = Some(held);
        self.hand_off_leadership(attempts);
    }

    /// A leader that cannot write hands leadership to its most up-to-date
    /// follower (thesis 3.10), so a cluster whose majority has space keeps
    /// taking writes. Until that node takes over this one answers writes
    /// with NO_SPACE; it cannot win an election back while its disk is full,
    /// since its vote for itself would have to be durable first. Called again
    /// with each failed retry (`attempt`), it goes round the followers that
    /// tie for the highest match index, in case one of them cannot take
    /// over (its disk is full too, or it is cut off).
    fn hand_off_leadership(&mut self, attempt: u64) {
        if self.raft.role() != Role::Leader {
            return;
        }
        let status = self.raft.status();
        let best = status.followers.iter().map(|f| f.match_index).max();
        let candidates: Vec<(NodeId, u64)> = status
            .followers
            .iter()
            .filter(|f| Some(f.match_index) == best)
            .map(|f| (f.id, f.match_index))
            .collect();
        if candidates.is_empty() {
            return; // a single-node cluster: nobody to hand to
        }
        let (to, match_index) = candidates[(attempt % candidates.len() as u64) as usize];
        if self.raft.transfer_leadership(to).is_ok() {
            let line =
                format!("NO_SPACE: handing leadership to node {to} (match index {match_index})");
            if attempt == 0 {
                info!("{line}");
            } else {
                debug!("{line}, attempt {attempt}");
            }
        }
    }
}

fn log_role_change(rd: &Ready) {
    if let Some(ss) = rd.soft_state {
        match (ss.role, ss.leader_id) {
            (Role::Leader, _) => info!("became leader in term {}", ss.term),
            (role, Some(leader)) => {
                info!("{role} in term {}; leader is node {leader}", ss.term)
            }
            (role, None) => info!("{role} in term {}; no leader known", ss.term),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poncho_protocol::{AppendEntriesReply, EntryKind, RaftMessage};

    /// Found in review: a follower whose disk is full holds an
    /// acknowledgement of entries of term 1, then a term-2 leader's entry
    /// replaces one of them. The held acknowledgement must not leave once
    /// space is back: the disk would no longer hold what it acknowledges.
    #[test]
    fn a_held_acknowledgement_of_a_term_the_node_has_left_is_dropped() {
        let entry = |index, term| Entry {
            index,
            term,
            kind: EntryKind::Command,
            data: "x".into(),
        };
        let ack = |to, term, index| Outbound {
            to,
            message: RaftMessage::AppendEntriesReply(AppendEntriesReply {
                term,
                request_term: term,
                success: true,
                index,
                conflict_term: 0,
                conflict_index: 0,
                read_round: 0,
            }),
        };
        let mut held = Unpersisted::new("disk full".into(), Instant::now());
        let hs = |term| Some(HardState { term, vote: None });
        held.merge(hs(1), vec![entry(11, 1), entry(12, 1)], vec![ack(2, 1, 12)]);
        held.merge(hs(2), vec![entry(11, 2)], vec![ack(3, 2, 11)]);
        let left: Vec<(NodeId, u64)> = held
            .messages
            .iter()
            .map(|o| (o.to, o.message.term()))
            .collect();
        assert_eq!(
            left,
            vec![(3, 2)],
            "only the term-2 acknowledgement is held"
        );
        assert_eq!(
            held.entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(11, 2)]
        );
    }
}
