//! The in-memory view of a node's Raft log.
//!
//! The log knows which of its entries have been handed out for persistence
//! (`unstable_from`), which the driver has reported durable (`persisted`),
//! which are committed and which have been handed out to be applied. It never
//! touches a disk: the driver writes what `take_unstable` returns.

use poncho_protocol::{Entry, EntryKind, Membership};

use super::membership::Configs;

#[derive(Debug)]
pub struct RaftLog {
    /// `entries[i]` has index `first_index + i`. Everything before
    /// `first_index` is covered by the snapshot, whose last entry is at
    /// `first_index - 1` with `snapshot_term` (index 0, term 0 for a log that
    /// was never compacted).
    entries: Vec<Entry>,
    first_index: u64,
    snapshot_term: u64,
    /// The first index not yet handed to the driver for persistence.
    unstable_from: u64,
    /// The highest index the driver has reported durable.
    persisted: u64,
    /// The highest index known to be committed.
    committed: u64,
    /// The highest index handed out to be applied.
    applied: u64,
    /// The configuration each index belongs to.
    configs: Configs,
}

/// What a follower found when checking an AppendEntries' previous entry.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The log now matches the leader's up to this index.
    Matched(u64),
    /// The previous entry did not match: the reply's backtracking hint.
    Conflict {
        conflict_term: u64,
        conflict_index: u64,
    },
    /// The entries conflict with a committed one at `index` (of `term` here):
    /// a leader that asks this breaks Raft's guarantees, so nothing was
    /// changed. The log is as it was.
    WouldOverwriteCommitted { index: u64, term: u64 },
    /// The `CONFIG` entry at `index` does not hold a valid configuration:
    /// nothing was changed.
    BadConfig { index: u64, error: String },
}

/// The configuration an entry holds, if it is a `CONFIG` entry.
fn config_of(e: &Entry) -> Option<Result<Membership, String>> {
    (e.kind == EntryKind::Config).then(|| Membership::decode(&e.data))
}

impl RaftLog {
    /// A log recovered from durable storage: a snapshot through
    /// (`snapshot_index`, `snapshot_term`), whose state the driver has
    /// loaded and whose configuration is `base`, and the durable `entries`
    /// after it. An error if one of them is a configuration that does not
    /// decode.
    pub fn new(
        snapshot_index: u64,
        snapshot_term: u64,
        base: Membership,
        entries: Vec<Entry>,
    ) -> Result<RaftLog, String> {
        let first_index = snapshot_index + 1;
        let mut configs = Configs::new(snapshot_index, base);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, first_index + i as u64, "durable log has a gap");
            if let Some(config) = config_of(e) {
                let config = config.map_err(|error| {
                    format!("log entry {}: bad configuration: {error}", e.index)
                })?;
                configs.push(e.index, config);
            }
        }
        let last = snapshot_index + entries.len() as u64;
        Ok(RaftLog {
            entries,
            first_index,
            snapshot_term,
            unstable_from: last + 1,
            persisted: last,
            committed: snapshot_index,
            applied: snapshot_index,
            configs,
        })
    }

    pub(super) fn configs(&self) -> &Configs {
        &self.configs
    }

    /// The last index covered by the snapshot (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.first_index - 1
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    /// Drops entries through `index`, now covered by a durable snapshot of
    /// the applied state. Only applied, persisted entries can be dropped.
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index() {
            return;
        }
        assert!(
            index <= self.applied && index <= self.persisted,
            "compacting unapplied entry {index}"
        );
        let term = self.term(index).expect("a compacted index is in the log");
        self.entries
            .drain(..(index + 1 - self.first_index) as usize);
        self.first_index = index + 1;
        self.snapshot_term = term;
        self.configs.compact(index);
    }

    /// Installs a snapshot received from the leader (section 7): if the log
    /// holds the snapshot's last entry, the entries after it are kept;
    /// otherwise the whole log is discarded, and `membership`, the
    /// snapshot's, is the configuration from then on. Returns whether it was.
    pub fn restore(&mut self, index: u64, term: u64, membership: Membership) -> bool {
        if self.term(index) == Some(term) {
            self.committed = self.committed.max(index);
            self.applied = self.applied.max(index);
            self.persisted = self.persisted.max(index);
            self.unstable_from = self.unstable_from.max(index + 1);
            self.compact(index);
            return false;
        }
        self.entries.clear();
        self.configs.reset(index, membership);
        self.first_index = index + 1;
        self.snapshot_term = term;
        self.committed = index;
        self.applied = index;
        self.persisted = index;
        self.unstable_from = index + 1;
        true
    }

    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The term of the entry at `index`, or `None` if the log has no such
    /// entry (beyond the end, or compacted into the snapshot).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Section 5.4.1: a candidate's log is at least as up to date as ours if
    /// its last term is greater, or equal with an index at least as large.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Whether a log ending at (`last_index`, `last_term`) is strictly more
    /// up to date than ours: it holds something ours does not, perhaps a
    /// configuration this node has not seen yet.
    pub fn is_behind(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index > self.last_index())
    }

    /// Entries from `from` on, at most `max_count` of them and, after the first,
    /// at most `max_bytes` in total. Empty if `from` is past the end.
    pub fn slice(&self, from: u64, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let Some(start) = from.checked_sub(self.first_index) else {
            return Vec::new();
        };
        let start = start as usize;
        if start >= self.entries.len() {
            return Vec::new();
        }
        let mut bytes = 0;
        let mut out = Vec::new();
        for e in self.entries[start..].iter().take(max_count) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// The index of the last entry with `term`. Terms never decrease along
    /// the log, so this is a binary search.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        let after = self.entries.partition_point(|e| e.term <= term);
        match after.checked_sub(1).map(|i| &self.entries[i]) {
            Some(e) if e.term == term => Some(e.index),
            _ => (term == self.snapshot_term && self.snapshot_index() > 0)
                .then(|| self.snapshot_index()),
        }
    }

    /// Appends a new entry at the end (the leader's path); a configuration
    /// comes with `config`, what its data holds.
    pub fn append(&mut self, entry: Entry, config: Option<Membership>) {
        assert_eq!(entry.index, self.last_index() + 1, "append leaves a gap");
        assert!(entry.term >= self.last_term(), "append goes back in term");
        assert_eq!(
            entry.kind == EntryKind::Config,
            config.is_some(),
            "a configuration entry comes with its configuration"
        );
        if let Some(config) = config {
            self.configs.push(entry.index, config);
        }
        self.entries.push(entry);
    }

    /// The follower's side of AppendEntries (Figure 2, receiver steps 2-4):
    /// checks the previous entry, skips entries it already has, truncates at
    /// the first conflict and appends the rest. It never truncates an entry
    /// that matches, so a stale or reordered message cannot undo progress.
    pub fn try_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: &[Entry],
    ) -> AppendOutcome {
        let snapshot_index = self.snapshot_index();
        if prev_index < snapshot_index {
            // Everything through the snapshot is committed, so it matches the
            // leader's log: skip the entries the snapshot already covers.
            let last = prev_index + entries.len() as u64;
            if last <= snapshot_index {
                return AppendOutcome::Matched(last);
            }
            let skip = (snapshot_index - prev_index) as usize;
            return self.try_append(snapshot_index, self.snapshot_term, &entries[skip..]);
        }
        // Every configuration is checked before anything changes.
        let mut configs = Vec::new();
        for e in entries {
            match config_of(e) {
                Some(Ok(config)) => configs.push((e.index, config)),
                Some(Err(error)) => {
                    return AppendOutcome::BadConfig {
                        index: e.index,
                        error,
                    }
                }
                None => {}
            }
        }
        match self.term(prev_index) {
            Some(t) if t == prev_term => {}
            Some(t) => {
                // Fast backup: skip back over the whole conflicting term.
                let mut first = prev_index;
                while first > self.committed.max(snapshot_index) + 1
                    && self.term(first - 1) == Some(t)
                {
                    first -= 1;
                }
                return AppendOutcome::Conflict {
                    conflict_term: t,
                    conflict_index: first,
                };
            }
            None => {
                return AppendOutcome::Conflict {
                    conflict_term: 0,
                    conflict_index: self.last_index() + 1,
                }
            }
        }
        for (i, e) in entries.iter().enumerate() {
            debug_assert_eq!(e.index, prev_index + 1 + i as u64);
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                // Nothing was changed yet: only matching entries came before.
                Some(term) if e.index <= self.committed => {
                    return AppendOutcome::WouldOverwriteCommitted {
                        index: e.index,
                        term,
                    }
                }
                Some(_) => self.truncate_from(e.index),
                None => {}
            }
            self.entries.extend_from_slice(&entries[i..]);
            for (index, config) in configs {
                if index >= e.index {
                    self.configs.push(index, config);
                }
            }
            break;
        }
        AppendOutcome::Matched(prev_index + entries.len() as u64)
    }

    fn truncate_from(&mut self, index: u64) {
        self.entries.truncate((index - self.first_index) as usize);
        self.configs.truncate_from(index);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Entries not yet handed out for persistence; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = (self.unstable_from - self.first_index) as usize;
        let out = self.entries[from..].to_vec();
        self.unstable_from = self.last_index() + 1;
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// The driver reports that everything up to (`index`, `term`) is durable.
    /// Ignored if the log has since been truncated below that point: a later
    /// report will cover it.
    pub fn persisted_to(&mut self, index: u64, term: u64) {
        if index > self.persisted && index < self.unstable_from && self.term(index) == Some(term) {
            self.persisted = index;
        }
    }

    pub fn commit_to(&mut self, index: u64) -> bool {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond log end");
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Committed entries not yet handed out to be applied; marks them handed out.
    pub fn take_committed(&mut self) -> Vec<Entry> {
        if self.applied >= self.committed {
            return Vec::new();
        }
        let from = (self.applied + 1 - self.first_index) as usize;
        let to = (self.committed + 1 - self.first_index) as usize;
        self.applied = self.committed;
        self.entries[from..to].to_vec()
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.applied < self.committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poncho_protocol::Member;

    /// A log recovered from `entries`, in a one-node cluster.
    fn recovered(entries: Vec<Entry>) -> RaftLog {
        let one = Membership::bootstrap([Member {
            id: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
            peer_addr: None,
            learner: false,
        }]);
        RaftLog::new(0, 0, one, entries).unwrap()
    }

    pub fn entries(terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                index: i as u64 + 1,
                term,
                kind: EntryKind::Command,
                data: format!("{}-{}", i + 1, term).into(),
            })
            .collect()
    }

    #[test]
    fn up_to_date_compares_last_term_then_length_section_5_4_1() {
        let log = recovered(entries(&[1, 1, 2]));
        assert!(
            log.is_up_to_date(1, 3),
            "higher last term wins even if shorter"
        );
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(4, 2));
        assert!(!log.is_up_to_date(2, 2), "same term, shorter log");
        assert!(
            !log.is_up_to_date(9, 1),
            "lower last term loses even if longer"
        );
    }

    #[test]
    fn append_rejects_a_missing_previous_entry_with_the_log_end_as_hint() {
        let mut log = recovered(entries(&[1, 1]));
        let out = log.try_append(5, 1, &[]);
        assert_eq!(
            out,
            AppendOutcome::Conflict {
                conflict_term: 0,
                conflict_index: 3
            }
        );
    }

    #[test]
    fn append_rejects_a_mismatched_term_and_points_at_the_first_entry_of_that_term() {
        let mut log = recovered(entries(&[1, 2, 2, 2, 3]));
        let out = log.try_append(4, 4, &[]);
        assert_eq!(
            out,
            AppendOutcome::Conflict {
                conflict_term: 2,
                conflict_index: 2
            }
        );
    }

    #[test]
    fn append_truncates_at_the_first_conflict_only() {
        let mut log = recovered(entries(&[1, 1, 2, 2]));
        let _ = log.take_unstable();
        let new = vec![
            Entry {
                index: 2,
                term: 1,
                kind: EntryKind::Command,
                data: "2-1".into(),
            },
            Entry {
                index: 3,
                term: 3,
                kind: EntryKind::Command,
                data: "x".into(),
            },
        ];
        assert_eq!(log.try_append(1, 1, &new), AppendOutcome::Matched(3));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(
            log.persisted(),
            2,
            "the truncated entries are no longer durable"
        );
        let unstable = log.take_unstable();
        assert_eq!(unstable.len(), 1);
        assert_eq!(unstable[0].index, 3);
    }

    #[test]
    fn a_stale_shorter_append_does_not_truncate_matching_entries() {
        let mut log = recovered(entries(&[1, 1, 1, 1]));
        let old = entries(&[1, 1])[1..].to_vec();
        assert_eq!(log.try_append(1, 1, &old), AppendOutcome::Matched(2));
        assert_eq!(
            log.last_index(),
            4,
            "entries 3 and 4 must survive a reordered message"
        );
    }

    #[test]
    fn persisted_report_for_a_truncated_suffix_is_ignored() {
        let mut log = recovered(Vec::new());
        log.try_append(0, 0, &entries(&[1, 1, 1]));
        let handed = log.take_unstable();
        let last = handed.last().unwrap().clone();
        // Before the write completes, a new leader overwrites index 2..
        let newer = vec![Entry {
            index: 2,
            term: 2,
            kind: EntryKind::Command,
            data: "n".into(),
        }];
        log.try_append(1, 1, &newer);
        log.persisted_to(last.index, last.term);
        assert_eq!(log.persisted(), 0);
        let handed = log.take_unstable();
        assert_eq!(handed[0].index, 2);
        log.persisted_to(2, 2);
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    fn slice_respects_count_and_bytes_but_always_returns_one() {
        let log = recovered(entries(&[1; 10]));
        assert_eq!(log.slice(3, 4, usize::MAX).len(), 4);
        assert_eq!(log.slice(3, 100, 1).len(), 1);
        assert_eq!(log.slice(9, 100, usize::MAX).len(), 2);
        assert!(log.slice(11, 100, usize::MAX).is_empty());
    }

    #[test]
    fn committed_entries_are_handed_out_once_in_order() {
        let mut log = recovered(entries(&[1, 1, 1]));
        assert!(log.commit_to(2));
        let c = log.take_committed();
        assert_eq!(c.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(log.take_committed().is_empty());
        assert!(!log.commit_to(1), "commit never goes back");
        log.commit_to(3);
        assert_eq!(log.take_committed()[0].index, 3);
    }
}
