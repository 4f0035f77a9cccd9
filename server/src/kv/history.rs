//! The history of changes to keys (issue 14): every put and delete with the
//! key's state before and after it, in revision order, for a bounded window.
//! Reads at a past revision undo it from the current state; watches behind
//! the present replay it (`watch.rs`, `node/watch.rs`).
//!
//! It is this node's cache of what its applied log did, not part of the
//! replicated state: its bounds are this node's flags, it starts over at the
//! snapshot's revision when a snapshot is installed or loaded (the log
//! replayed after the snapshot fills it again), and two stores are equal
//! whatever their histories hold. Every node that holds a revision in its
//! window answers a read there with the same keys, since they come from the
//! same committed log; one that no longer holds it says `COMPACTED`.
//!
//! A ring buffer: a snapshot leaves it out (`Data::without_history`), so
//! the snapshot's clone of the store stays O(1) and the history needs no
//! persistent structure (an `imbl::Vector` made each write 0.9 us dearer,
//! `cargo bench --bench kv_snapshot`).

use std::collections::VecDeque;

use smol_str::SmolStr;

use super::store::Stored;

/// Changes kept by default (`--history-events`).
pub const HISTORY_EVENTS: usize = 100_000;
/// Bytes of keys and values kept by default (`--history-bytes`), counting
/// [`EVENT_OVERHEAD_BYTES`] for each change.
pub const HISTORY_BYTES: usize = 64 << 20;
/// What a change costs besides its strings, roughly.
pub const EVENT_OVERHEAD_BYTES: usize = 128;

/// One key changed at one revision.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub(super) revision: u64,
    pub(super) key: SmolStr,
    /// The key before it; `None` if it did not exist. A put moves the
    /// replaced value here without touching its reference count.
    pub(super) before: Option<Stored>,
    /// The key after it; `None` for a delete. Its value is shared with the
    /// map (and later with the next change's `before`), so it costs a
    /// reference count, not a copy, and is not counted in the bytes again.
    pub(super) after: Option<Stored>,
}

impl Event {
    fn bytes(&self) -> usize {
        let before = self.before.as_ref().map_or(0, |s| s.value.len());
        EVENT_OVERHEAD_BYTES + self.key.len() + before
    }
}

#[derive(Debug, Clone)]
pub(super) struct History {
    events: VecDeque<Event>,
    bytes: usize,
    /// Every change at or before this revision has been dropped (or was
    /// never seen: the revision of the snapshot the store started from).
    compacted: u64,
    max_events: usize,
    max_bytes: usize,
}

impl Default for History {
    fn default() -> History {
        History {
            events: VecDeque::new(),
            bytes: 0,
            compacted: 0,
            max_events: HISTORY_EVENTS,
            max_bytes: HISTORY_BYTES,
        }
    }
}

/// A cache, not state: see the module's documentation.
impl PartialEq for History {
    fn eq(&self, _: &History) -> bool {
        true
    }
}

impl Eq for History {}

impl History {
    /// Keeps at most `max_events` changes and `max_bytes` (at least one
    /// revision's worth is always kept), dropping the oldest now if over.
    pub(super) fn set_limits(&mut self, max_events: usize, max_bytes: usize) {
        self.max_events = max_events;
        self.max_bytes = max_bytes;
        self.trim();
    }

    /// Forgets everything: the store now starts at `revision` (a snapshot's).
    pub(super) fn start_at(&mut self, revision: u64) {
        self.events = VecDeque::new();
        self.bytes = 0;
        self.compacted = revision;
    }

    pub(super) fn record(&mut self, event: Event) {
        self.bytes += event.bytes();
        self.events.push_back(event);
        self.trim();
    }

    /// Drops the oldest revisions, a whole revision at a time, while over a
    /// bound and more than the newest revision is held.
    fn trim(&mut self) {
        let newest = self.events.back().map_or(0, |e| e.revision);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            if oldest == newest {
                break;
            }
            while self.events.front().is_some_and(|e| e.revision == oldest) {
                if let Some(e) = self.events.pop_front() {
                    self.bytes -= e.bytes();
                }
            }
            self.compacted = oldest;
        }
    }

    /// The revision before the oldest change held: a read may ask for any
    /// revision from this one on.
    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// Every change held, oldest first.
    pub(super) fn events(&self) -> &VecDeque<Event> {
        &self.events
    }

    /// The changes after `revision`, newest first.
    pub(super) fn newest_after(&self, revision: u64) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .rev()
            .take_while(move |e| e.revision > revision)
    }
}
