//! The leader: replication to each follower (`Progress`), commitment
//! (Figure 8), ReadIndex rounds, CheckQuorum, snapshot transfers and
//! leadership transfer. Everything here exists only while a node leads and
//! goes when it steps down.

use std::collections::BTreeMap;
use std::sync::Arc;

use poncho_protocol::{
    AppendEntries, AppendEntriesReply, EntryKind, InstallSnapshotReply, NodeId, RaftMessage,
    TimeoutNow,
};

use super::read::ReadRounds;
use super::{BrokenRule, Progress, ProgressState, Raft, RoleState, SnapshotAck};

/// What only a leader keeps.
#[derive(Debug)]
pub(super) struct LeaderState {
    /// Each follower's replication state, by id.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// ReadIndex: the confirmation rounds and the reads waiting on them.
    pub(super) reads: ReadRounds,
    /// Ticks since the last heartbeat went out.
    heartbeat_elapsed: u64,
    /// A leadership transfer under way (proposals are refused meanwhile).
    pub(super) transfer: Option<Transfer>,
    /// Ticks since this node became leader: the clock `Progress::heard_at`
    /// is read against.
    pub(super) ticks: u64,
}

/// A leadership transfer under way (thesis 3.10).
#[derive(Clone, Copy, Debug)]
pub(super) struct Transfer {
    pub(super) to: NodeId,
    /// Ticks since the transfer began. Its own clock: CheckQuorum's
    /// (`election_elapsed`) is never reset by a transfer.
    elapsed: u64,
}

impl LeaderState {
    fn new(peers: &[NodeId], next_index: u64) -> LeaderState {
        LeaderState {
            progress: peers
                .iter()
                .map(|&p| (p, Progress::new(next_index)))
                .collect(),
            reads: ReadRounds::default(),
            heartbeat_elapsed: 0,
            transfer: None,
            ticks: 0,
        }
    }

    /// Hands leadership to `to`; a transfer to the same node keeps its clock.
    pub(super) fn start_transfer(&mut self, to: NodeId) {
        if self.transfer.is_none_or(|t| t.to != to) {
            self.transfer = Some(Transfer { to, elapsed: 0 });
        }
    }

    /// What a quorum of `voters` has reached: the `quorum`-th highest of
    /// their values, the leader's being `own` (counted only if the leader
    /// is one of them: a leader on its way out does not count itself) and
    /// each follower's `value`. Learners never count.
    fn quorum_reached(
        &self,
        voters: &[NodeId],
        leader: NodeId,
        own: u64,
        value: impl Fn(&Progress) -> u64,
    ) -> u64 {
        let mut values: Vec<u64> = voters
            .iter()
            .map(|v| match self.progress.get(v) {
                _ if *v == leader => own,
                Some(p) => value(p),
                None => 0,
            })
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = voters.len() / 2 + 1;
        values.get(quorum - 1).copied().unwrap_or(0)
    }

    fn transferring_to(&self, id: NodeId) -> bool {
        self.transfer.is_some_and(|t| t.to == id)
    }
}

impl Raft {
    pub(super) fn leader(&self) -> Option<&LeaderState> {
        match &self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub(super) fn leader_mut(&mut self) -> Option<&mut LeaderState> {
        match &mut self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub(super) fn become_leader(&mut self) {
        self.role = RoleState::Leader(LeaderState::new(&self.peers, self.log.last_index() + 1));
        self.leader_id = Some(self.config.id);
        self.election_elapsed = 0;
        // The no-op lets the leader commit, and so learn, everything before it.
        self.propose_entry(EntryKind::Noop, Arc::from(""))
            .expect("a new leader can always append its no-op");
    }

    pub(super) fn tick_leader(&mut self) {
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if !self.check_quorum() {
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
        }
        let timeout = self.config.election_timeout_ticks;
        let heartbeat_interval = self.config.heartbeat_interval_ticks;
        let Some(leader) = self.leader_mut() else {
            return;
        };
        leader.ticks += 1;
        if let Some(t) = &mut leader.transfer {
            // A transfer that has not finished within an election timeout
            // has failed; take proposals again.
            t.elapsed += 1;
            if t.elapsed >= timeout {
                leader.transfer = None;
            }
        }
        leader.heartbeat_elapsed += 1;
        let heartbeat = leader.heartbeat_elapsed >= heartbeat_interval;
        if heartbeat {
            leader.heartbeat_elapsed = 0;
        }
        self.tick_snapshot_transfers();
        if heartbeat {
            for peer in self.peers.clone() {
                self.send_append(peer, true);
            }
        }
    }

    /// CheckQuorum (thesis 9.6), once per election timeout: whether a
    /// majority was heard from since the last round. A leader cut off from
    /// one steps down instead of accepting writes it can never commit.
    fn check_quorum(&mut self) -> bool {
        if !self.config.check_quorum {
            return true;
        }
        let quorum = self.quorum;
        let own = self.config.id;
        let RoleState::Leader(leader) = &mut self.role else {
            return true;
        };
        let active = self
            .voters
            .iter()
            .filter(|&&v| v == own || leader.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        if active < quorum {
            return false;
        }
        for p in leader.progress.values_mut() {
            p.recent_active = false;
        }
        true
    }

    /// A snapshot chunk or its acknowledgement may be lost: resend from the
    /// last acknowledged offset every few heartbeats, and give the transfer
    /// up if it makes no progress for `snapshot_stall_ticks`.
    fn tick_snapshot_transfers(&mut self) {
        let stall_limit = self.config.snapshot_stall_ticks;
        let resend_every = 2 * self.config.heartbeat_interval_ticks + 1;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        for (&id, p) in leader.progress.iter_mut() {
            if p.state != ProgressState::Snapshot {
                continue;
            }
            p.snapshot_stalled_ticks += 1;
            if p.snapshot_stalled_ticks > stall_limit {
                p.become_probe(); // the next append finds out what it needs
            } else if p.snapshot_stalled_ticks % resend_every == 0 {
                if p.snapshot_index == 0 {
                    self.snapshots_to_send.push(id);
                } else {
                    self.snapshot_acks.push(SnapshotAck {
                        to: id,
                        index: p.snapshot_index,
                        next_offset: p.snapshot_offset,
                    });
                }
            }
        }
    }

    /// A leader's message of its own term (vote requests are answered
    /// before the role's step, in `step`).
    pub(super) fn step_leader(&mut self, from: NodeId, message: RaftMessage) {
        match message {
            RaftMessage::AppendEntriesReply(m) => self.handle_append_reply(from, m),
            RaftMessage::InstallSnapshotReply(m) => self.handle_install_snapshot_reply(from, m),
            // Another leader of this term: only possible where a vote was
            // given twice in a term (a broken rule, or a node that lost its
            // disk). Follow it, as a candidate would.
            RaftMessage::AppendEntries(_) | RaftMessage::InstallSnapshot(_) => {
                let term = self.term;
                self.become_follower(term, Some(from));
                self.step_follower(from, message);
            }
            RaftMessage::RequestVoteReply(_)
            | RaftMessage::TimeoutNow(_)
            | RaftMessage::RequestVote(_)
            | RaftMessage::LeaseKeepalive(_)
            | RaftMessage::LeaseKeepaliveReply(_) => {}
        }
    }

    fn handle_append_reply(&mut self, from: NodeId, m: AppendEntriesReply) {
        // A reply to a message of an earlier term (this node may have led
        // then too) proves nothing about this term: its read round numbers a
        // round of that term, and its rejection carries no log position.
        let current = m.request_term == self.term;
        let old_rounds = self.broken(|r| r == BrokenRule::ReadRoundsFromOlderTerms);
        let old_progress = self.broken(|r| r == BrokenRule::ProgressFromOlderTerms);
        if !(current || old_rounds || old_progress) {
            return;
        }
        let Some(leader) = self.leader_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let Some(pr) = leader.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.heard_at = Some(ticks);
        if m.read_round > pr.read_round && (current || old_rounds) {
            pr.read_round = m.read_round;
            self.confirm_reads();
        }
        if !(current || old_progress) {
            return;
        }
        if m.success {
            let Some(leader) = self.leader_mut() else {
                return;
            };
            let moved = leader
                .progress
                .get_mut(&from)
                .is_some_and(|pr| pr.acknowledge(m.index));
            let transferring = leader.transferring_to(from);
            if moved {
                self.maybe_commit();
                if transferring {
                    self.maybe_send_timeout_now(from);
                }
            }
        } else {
            self.handle_append_rejection(from, m);
        }
    }

    fn handle_append_rejection(&mut self, from: NodeId, m: AppendEntriesReply) {
        let next_hint = if m.conflict_term > 0 {
            // If we have entries of the follower's conflicting term, the
            // logs agree up to our last one of them; else skip the term.
            match self.log.last_index_of_term(m.conflict_term) {
                Some(i) if i < m.index => i + 1,
                _ => m.conflict_index,
            }
        } else {
            m.conflict_index
        };
        let Some(pr) = self.leader_mut().and_then(|l| l.progress.get_mut(&from)) else {
            return;
        };
        // Only a follower that lost state rejects with a log shorter than
        // what it acknowledged (messages on one connection arrive in
        // order; in the simulator a reordered reply only costs a resend).
        let lost = m.conflict_term == 0
            && pr.follower_lost_entries(m.index, m.conflict_index.saturating_sub(1));
        if lost || pr.reject(m.index, next_hint) {
            self.send_append(from, false);
        }
    }

    fn handle_install_snapshot_reply(&mut self, from: NodeId, m: InstallSnapshotReply) {
        if m.request_term != self.term {
            return;
        }
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ticks = leader.ticks;
        let Some(pr) = leader.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.heard_at = Some(ticks);
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if m.installed {
            pr.acknowledge(m.last_included_index);
            pr.become_probe();
            self.send_append(from, false);
        } else if pr.snapshot_acknowledged(m.last_included_index, m.next_offset) {
            self.snapshot_acks.push(SnapshotAck {
                to: from,
                index: m.last_included_index,
                next_offset: m.next_offset,
            });
        }
    }

    // ----------------------------------------------------------- replication

    pub(super) fn can_send_entries(&self, to: NodeId) -> bool {
        self.leader()
            .and_then(|l| l.progress.get(&to))
            .is_some_and(|p| {
                !p.is_paused(self.config.max_inflight_messages)
                    && p.next_index <= self.log.last_index()
            })
    }

    /// Sends `to` the entries it needs next, if its progress allows. A
    /// heartbeat is sent even when there is nothing new or the follower is
    /// paused, and it resends a probe that may have been lost. Returns whether
    /// entries were sent.
    pub(super) fn send_append(&mut self, to: NodeId, heartbeat: bool) -> bool {
        let max_inflight = self.config.max_inflight_messages;
        let RoleState::Leader(leader) = &mut self.role else {
            return false;
        };
        let Some(pr) = leader.progress.get_mut(&to) else {
            return false;
        };
        if pr.state == ProgressState::Snapshot {
            return false; // the snapshot transfer keeps its own pace
        }
        if heartbeat && pr.state == ProgressState::Probe {
            pr.probe_sent = false;
        }
        let paused = pr.is_paused(max_inflight);
        if paused && !heartbeat {
            return false;
        }
        let prev_log_index = pr.next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            // The entries this follower needs are compacted away.
            pr.become_snapshot();
            self.snapshots_to_send.push(to);
            return false;
        };
        let entries = if paused {
            Vec::new()
        } else {
            self.log.slice(
                pr.next_index,
                self.config.max_entries_per_message,
                self.config.max_bytes_per_message,
            )
        };
        if entries.is_empty() && !heartbeat {
            return false;
        }
        match entries.last() {
            Some(last) => pr.sent(last.index),
            None if pr.state == ProgressState::Probe => pr.probe_sent = true,
            None => {}
        }
        let sent_entries = !entries.is_empty();
        let message = RaftMessage::AppendEntries(AppendEntries {
            term: self.term,
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.committed(),
            read_round: leader.reads.round(),
        });
        self.send(to, message);
        sent_entries
    }

    /// Figure 8: commit the highest index stored on a majority, but only if
    /// its entry is from the current term. Earlier entries commit with it.
    pub(super) fn maybe_commit(&mut self) {
        let by_counting = self.broken(|r| r == BrokenRule::CommitOlderTermByCounting);
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let candidate =
            leader.quorum_reached(&self.voters, self.config.id, self.log.persisted(), |p| {
                p.match_index
            });
        if self.log.term(candidate) != Some(self.term) && !by_counting {
            return;
        }
        if self.log.commit_to(candidate) && self.log.term(candidate) == Some(self.term) {
            leader.reads.term_committed(self.log.committed());
            self.step_down_if_removed();
        }
    }

    /// A leader that the committed configuration no longer counts as a
    /// voter (thesis 4.2.2: it led the change that removed it) hands over
    /// to the voter whose log matches its own, if one does, and steps down.
    fn step_down_if_removed(&mut self) {
        let (index, latest) = self.log.configs().latest();
        if index > self.log.committed() || latest.is_voter(self.config.id) {
            return;
        }
        let last = self.log.last_index();
        let heir = self.leader().and_then(|l| {
            self.voters
                .iter()
                .copied()
                .find(|v| l.progress.get(v).is_some_and(|p| p.match_index == last))
        });
        if let Some(heir) = heir {
            self.send(
                heir,
                RaftMessage::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader_id: self.config.id,
                }),
            );
        }
        let term = self.term;
        self.become_follower(term, None);
    }

    /// Moves reads whose round a majority has answered to the confirmed queue.
    pub(super) fn confirm_reads(&mut self) {
        let without_quorum = self.broken(|r| r == BrokenRule::ReadWithoutQuorum);
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let own_round = leader.reads.round();
        let mut confirmed =
            leader.quorum_reached(&self.voters, self.config.id, own_round, |p| p.read_round);
        if without_quorum {
            confirmed = leader.reads.round();
        }
        leader
            .reads
            .confirm_through(confirmed, &mut self.reads_confirmed);
    }

    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId) {
        let caught_up = self
            .leader()
            .and_then(|l| l.progress.get(&to))
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(
                to,
                RaftMessage::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader_id: self.config.id,
                }),
            );
        } else {
            self.send_append(to, false);
        }
    }
}
