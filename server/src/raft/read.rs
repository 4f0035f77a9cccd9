//! ReadIndex reads (thesis 6.4): the leader's confirmation rounds and the
//! reads waiting on them.
//!
//! A read arrives; the leader notes its commit index as the read index and
//! waits until a quorum has answered a heartbeat round started after the
//! read arrived. Every AppendEntries carries the current round number and a
//! follower echoes it in its reply (`Progress::read_round`), so one round
//! confirms every read queued before it started. Until an entry of its own
//! term commits, the leader does not know the commit index (step 1), so reads
//! wait for that first.

use std::collections::VecDeque;

use super::ReadState;

/// A read that a quorum's answer to `round` will confirm; it may then be
/// served once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnconfirmedRead {
    round: u64,
    index: u64,
    id: u64,
}

/// The leader's ReadIndex rounds and the reads not yet confirmed by one.
#[derive(Debug, Default)]
pub(super) struct ReadRounds {
    /// The current round, carried by every AppendEntries of this term.
    round: u64,
    /// A new round must start at the next ready (reads are waiting for one).
    round_wanted: bool,
    /// Reads received before this term's first entry committed.
    awaiting_term_commit: Vec<u64>,
    /// Reads waiting for their round, in round order.
    unconfirmed: VecDeque<UnconfirmedRead>,
}

impl ReadRounds {
    /// The round an AppendEntries sent now carries.
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    pub(super) fn round_wanted(&self) -> bool {
        self.round_wanted
    }

    /// Queues read `id`. `term_commit` is the commit index if an entry of the
    /// current term has committed, else `None`.
    pub(super) fn push(&mut self, id: u64, term_commit: Option<u64>) {
        match term_commit {
            Some(index) => self.push_unconfirmed(id, index),
            None => self.awaiting_term_commit.push(id),
        }
    }

    /// An entry of the current term committed, through `committed`: the
    /// reads that waited for one join the next round.
    pub(super) fn term_committed(&mut self, committed: u64) {
        for id in std::mem::take(&mut self.awaiting_term_commit) {
            self.push_unconfirmed(id, committed);
        }
    }

    fn push_unconfirmed(&mut self, id: u64, index: u64) {
        self.unconfirmed.push_back(UnconfirmedRead {
            round: self.round + 1,
            index,
            id,
        });
        self.round_wanted = true;
    }

    /// Starts the next round if one is wanted; returns whether it did.
    pub(super) fn start_round(&mut self) -> bool {
        if !self.round_wanted {
            return false;
        }
        self.round_wanted = false;
        self.round += 1;
        true
    }

    /// A quorum has answered every round through `confirmed`: moves the reads
    /// those rounds confirm to `out`.
    pub(super) fn confirm_through(&mut self, confirmed: u64, out: &mut VecDeque<ReadState>) {
        while let Some(read) = self.unconfirmed.front().copied() {
            if read.round > confirmed {
                break;
            }
            self.unconfirmed.pop_front();
            out.push_back(ReadState {
                id: read.id,
                index: read.index,
            });
        }
    }

    /// Leadership was lost: every read not yet confirmed fails, its id moved
    /// to `failed`. (Reads already confirmed stay valid: leadership was
    /// proven after they arrived, so serving them once applied is still
    /// linearizable.)
    pub(super) fn fail_all(&mut self, failed: &mut Vec<u64>) {
        failed.append(&mut self.awaiting_term_commit);
        failed.extend(self.unconfirmed.drain(..).map(|read| read.id));
        self.round_wanted = false;
    }
}
