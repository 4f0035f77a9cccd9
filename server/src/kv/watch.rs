//! What watches read of the store (issue 14): the changes from a revision
//! on, each with the key before and after it, and the keys of a range as
//! they were at one revision (a `list` watch's first part). The watches
//! themselves (which connection, how far each has been sent) are the
//! node's (`node/watch.rs`).

use poncho_protocol::{Event, EventType, KeyValue, RangeRequest};

use super::store::{Data, KvStore, Stored};

/// One key changed at one revision, as a watch sends it.
pub struct Change<'a> {
    pub revision: u64,
    pub key: &'a str,
    before: Option<&'a Stored>,
    /// `None`: deleted.
    after: Option<&'a Stored>,
}

impl Change<'_> {
    /// The event a watch sends for it (`prev_kv`: with the key before it).
    pub fn event(&self, prev_kv: bool) -> Event {
        let prev_kv = prev_kv
            .then(|| self.before.map(|s| s.key_value(self.key, true)))
            .flatten();
        match self.after {
            Some(after) => Event {
                kind: EventType::Put,
                kv: after.key_value(self.key, true),
                prev_kv,
            },
            None => Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: self.key.to_string(),
                    value: None,
                    create_revision: 0,
                    mod_revision: self.revision,
                    version: 0,
                },
                prev_kv,
            },
        }
    }
}

impl KvStore {
    /// The changes at revision `from` and after, oldest first: at least
    /// `max_events` of them if there are as many (the last revision's are
    /// all there, so a revision is never cut in two). `Err` with the
    /// history's compacted revision if it no longer holds `from` (every
    /// change after the compacted revision is held).
    ///
    /// Each change holds the key before and after it, so the cost is that
    /// of the changes returned (and a binary search for `from`).
    pub fn changes_from(&self, from: u64, max_events: usize) -> Result<Vec<Change<'_>>, u64> {
        let history = &self.data.history;
        let compacted = history.compacted();
        if from <= compacted {
            return Err(compacted);
        }
        let events = history.events();
        let start = events.partition_point(|e| e.revision < from);
        let mut end = start.saturating_add(max_events).min(events.len());
        if end > start {
            let last = events[end - 1].revision;
            while end < events.len() && events[end].revision == last {
                end += 1;
            }
        }
        Ok(events
            .range(start..end)
            .map(|e| Change {
                revision: e.revision,
                key: &e.key,
                before: e.before.as_ref(),
                after: e.after.as_ref(),
            })
            .collect())
    }

    /// Whether the history holds the changes from revision `from` on;
    /// `Err` with its compacted revision if not.
    pub fn history_holds(&self, from: u64) -> Result<(), u64> {
        let compacted = self.data.history.compacted();
        if from <= compacted {
            Err(compacted)
        } else {
            Ok(())
        }
    }

    /// The keys as they are now, held (O(1): the map is persistent) for a
    /// `list` watch to page through while the store moves on.
    pub fn keys_now(&self) -> KeysAt {
        KeysAt {
            data: self.data.without_history(),
        }
    }
}

/// The keys at one revision (see [`KvStore::keys_now`]).
pub struct KeysAt {
    data: Data,
}

impl KeysAt {
    pub fn revision(&self) -> u64 {
        self.data.revision
    }

    /// A page of `range`'s keys from `from` (or its start) that `may_read`
    /// lets through: at most `limit` keys and, past the first, `max_bytes`
    /// of keys and values; and the key the next page starts at, if any.
    pub fn page(
        &self,
        range: &RangeRequest,
        from: Option<&str>,
        limit: usize,
        max_bytes: usize,
        may_read: impl Fn(&str) -> bool,
    ) -> (Vec<KeyValue>, Option<String>) {
        let bounds = range.bounds();
        let start = from.filter(|f| *f > bounds.start).unwrap_or(bounds.start);
        let mut kvs = Vec::new();
        let mut bytes = 0;
        for (key, stored) in self.data.from(start) {
            if !bounds.admits(key) {
                break;
            }
            if !may_read(key) {
                continue;
            }
            let size = key.len() + stored.value.len();
            if kvs.len() >= limit || (!kvs.is_empty() && bytes + size > max_bytes) {
                return (kvs, Some(key.to_string()));
            }
            bytes += size;
            kvs.push(stored.key_value(key, true));
        }
        (kvs, None)
    }
}
