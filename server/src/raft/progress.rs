//! The leader's view of one follower's log: a small state machine.
//!
//! - `Probe`: the leader does not know where the follower's log matches its
//!   own. It sends one AppendEntries at a time and waits for the answer (or the
//!   next heartbeat) before sending another, moving `next_index` back by the
//!   follower's hint on each rejection.
//! - `Replicate`: the logs match up to `match_index`. The leader streams
//!   entries without waiting, up to `max_inflight` unacknowledged messages.
//!
//! - `Snapshot`: the follower needs entries the leader has compacted away.
//!   The driver streams it a snapshot; no entries are sent until the follower
//!   reports it installed, or the transfer stalls and is given up.
//!
//! A rejection in `Replicate` (a lost or reordered message left a gap) drops
//! back to `Probe`.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    /// In `Probe`: a message is out and we wait for its answer.
    pub probe_sent: bool,
    /// In `Replicate`: the last index of each unacknowledged message, oldest first.
    inflight: VecDeque<u64>,
    /// Heard from this follower since the last CheckQuorum round.
    pub recent_active: bool,
    /// When the leader last heard from it (`LeaderState::ticks`).
    pub heard_at: Option<u64>,
    /// The highest ReadIndex round this follower has answered in this term.
    pub read_round: u64,
    /// In `Snapshot`: ticks since the transfer last made progress.
    pub snapshot_stalled_ticks: u64,
    /// In `Snapshot`: the snapshot being sent (0 until the first
    /// acknowledgement names it) and the offset the follower last asked for.
    pub snapshot_index: u64,
    pub snapshot_offset: u64,
}

impl Progress {
    pub fn new(next_index: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            heard_at: None,
            read_round: 0,
            snapshot_stalled_ticks: 0,
            snapshot_index: 0,
            snapshot_offset: 0,
        }
    }

    /// Whether the leader may send this follower more entries now.
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot => true,
        }
    }

    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Records that a message carrying entries up to `last_index` was sent.
    pub fn sent(&mut self, last_index: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                self.next_index = last_index + 1;
                self.inflight.push_back(last_index);
            }
            ProgressState::Snapshot => {}
        }
    }

    pub fn become_snapshot(&mut self) {
        self.state = ProgressState::Snapshot;
        self.inflight.clear();
        self.probe_sent = false;
        self.snapshot_stalled_ticks = 0;
        self.snapshot_index = 0;
        self.snapshot_offset = 0;
    }

    /// A follower acknowledged snapshot bytes up to `next_offset`. Returns
    /// whether this is news (duplicates and reordered acknowledgements are
    /// not, so they do not start parallel streams). A follower that lost its
    /// partial copy (it restarted) asks for offset 0 again, which is news.
    pub fn snapshot_acknowledged(&mut self, index: u64, next_offset: u64) -> bool {
        let news = index != self.snapshot_index
            || next_offset > self.snapshot_offset
            || (next_offset == 0 && self.snapshot_offset > 0);
        if news {
            self.snapshot_index = index;
            self.snapshot_offset = next_offset;
            self.snapshot_stalled_ticks = 0;
        }
        news
    }

    /// A successful reply: the follower matches up to `index`. Returns whether
    /// `match_index` moved.
    pub fn acknowledge(&mut self, index: u64) -> bool {
        self.probe_sent = false;
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.next_index = self.next_index.max(index + 1);
        if self.state != ProgressState::Replicate {
            self.state = ProgressState::Replicate;
            self.next_index = index + 1;
        }
        true
    }

    /// A rejection of the message whose previous entry was `rejected_index`,
    /// with the follower's hint. Returns false if the rejection is stale.
    pub fn reject(&mut self, rejected_index: u64, next_hint: u64) -> bool {
        if rejected_index <= self.match_index {
            return false; // answers a message older than what we know matches
        }
        if self.state == ProgressState::Snapshot
            || (self.state == ProgressState::Probe && rejected_index + 1 != self.next_index)
        {
            return false; // not the probe we are waiting for, or mid-snapshot
        }
        self.become_probe();
        self.next_index = next_hint.clamp(
            self.match_index + 1,
            rejected_index.max(self.match_index + 1),
        );
        true
    }

    /// The follower's log ends at `last_index`, below what it acknowledged:
    /// it lost its disk (or was replaced by an empty node with the same id).
    /// Start over from what it has. Returns whether this applied.
    pub fn follower_lost_entries(&mut self, rejected_index: u64, last_index: u64) -> bool {
        if last_index >= self.match_index || rejected_index < self.match_index {
            return false;
        }
        self.match_index = last_index;
        self.become_probe();
        true
    }

    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_message_then_waits() {
        let mut p = Progress::new(5);
        assert!(!p.is_paused(4));
        p.sent(7);
        assert!(p.is_paused(4));
        assert_eq!(p.next_index, 5, "probe does not advance optimistically");
    }

    #[test]
    fn a_success_moves_probe_to_replicate_which_pipelines_up_to_the_bound() {
        let mut p = Progress::new(5);
        p.sent(4);
        assert!(p.acknowledge(4));
        assert_eq!(p.state, ProgressState::Replicate);
        p.sent(6);
        p.sent(8);
        assert!(p.is_paused(2));
        assert_eq!(p.next_index, 9);
        p.acknowledge(6);
        assert!(!p.is_paused(2));
        assert_eq!(p.inflight_count(), 1);
    }

    #[test]
    fn stale_rejections_are_ignored_and_current_ones_back_up_to_the_hint() {
        let mut p = Progress::new(10);
        p.sent(9);
        p.acknowledge(6);
        assert!(
            !p.reject(5, 1),
            "rejection of an index we know matches is stale"
        );
        p.sent(12);
        assert!(p.reject(8, 7));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 7);
        assert!(!p.reject(10, 2), "not the probe we wait for");
    }

    #[test]
    fn the_hint_never_goes_below_the_match_or_above_the_rejected_index() {
        let mut p = Progress::new(10);
        p.acknowledge(3);
        p.sent(20);
        assert!(p.reject(15, 1));
        assert_eq!(p.next_index, 4);
        let mut q = Progress::new(10);
        q.acknowledge(3);
        q.sent(20);
        assert!(q.reject(15, 99));
        assert_eq!(q.next_index, 15, "a hint past the rejected entry is capped");
    }
}
