//! The follower: it takes entries and snapshot chunks from the leader of its
//! term and answers them; a leader's TimeoutNow starts an election at once.

use poncho_protocol::{
    AppendEntries, AppendEntriesReply, InstallSnapshot, InstallSnapshotReply, NodeId, RaftMessage,
};

use super::candidate::Campaign;
use super::{Alert, AppendOutcome, BrokenRule, Outbound, Raft};

impl Raft {
    /// A follower's message of its own term (vote requests are answered
    /// before the role's step, in `step`).
    pub(super) fn step_follower(&mut self, from: NodeId, message: RaftMessage) {
        match message {
            RaftMessage::AppendEntries(m) => self.handle_append_entries(from, m),
            RaftMessage::InstallSnapshot(m) => self.handle_install_snapshot(from, m),
            // The leader hands over leadership (thesis 3.10).
            RaftMessage::TimeoutNow(_) => self.campaign(Campaign::Transfer),
            // Answers to a role this node no longer holds.
            RaftMessage::RequestVoteReply(_)
            | RaftMessage::AppendEntriesReply(_)
            | RaftMessage::InstallSnapshotReply(_)
            | RaftMessage::RequestVote(_)
            | RaftMessage::LeaseKeepalive(_)
            | RaftMessage::LeaseKeepaliveReply(_) => {}
        }
    }

    /// Follows `from`, the leader of this term, if it did not already.
    fn follow(&mut self, from: NodeId) {
        if self.leader_id != Some(from) {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.election_elapsed = 0;
    }

    fn handle_append_entries(&mut self, from: NodeId, m: AppendEntries) {
        self.follow(from);
        let first_entry = m.entries.first().map(|e| e.term);
        let reply = match self
            .log
            .try_append(m.prev_log_index, m.prev_log_term, &m.entries)
        {
            AppendOutcome::Matched(index) => {
                self.log.commit_to(m.leader_commit.min(index));
                AppendEntriesReply {
                    term: self.term,
                    request_term: m.term,
                    success: true,
                    index,
                    conflict_term: 0,
                    conflict_index: 0,
                    read_round: m.read_round,
                }
            }
            // Not answered: a leader that asks this is broken, and a reply
            // could only lead it further. The driver reports it.
            AppendOutcome::WouldOverwriteCommitted { index, term } => {
                self.alerts.push(Alert::OverwriteCommitted {
                    leader: from,
                    leader_term: m.term,
                    index,
                    term,
                    their_term: first_entry.unwrap_or(0),
                });
                return;
            }
            // Not answered either: a leader's configuration every node must
            // be able to read. The driver reports it.
            AppendOutcome::BadConfig { index, error } => {
                self.alerts.push(Alert::BadConfig {
                    leader: from,
                    index,
                    error,
                });
                return;
            }
            AppendOutcome::Conflict {
                conflict_term,
                conflict_index,
            } => AppendEntriesReply {
                term: self.term,
                request_term: m.term,
                success: false,
                index: m.prev_log_index,
                conflict_term,
                conflict_index,
                read_round: m.read_round,
            },
        };
        let message = RaftMessage::AppendEntriesReply(reply);
        if self.broken(|r| r == BrokenRule::AckBeforeDurable) {
            self.outbox.push(Outbound { to: from, message });
            return;
        }
        self.send(from, message);
    }

    fn handle_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot) {
        self.follow(from);
        if m.last_included_index <= self.log.committed() {
            // We already hold everything the snapshot covers.
            let reply = InstallSnapshotReply {
                term: self.term,
                request_term: m.term,
                last_included_index: self.log.committed(),
                next_offset: 0,
                installed: true,
            };
            self.send(from, RaftMessage::InstallSnapshotReply(reply));
            return;
        }
        self.snapshot_chunks.push((from, m));
    }
}
