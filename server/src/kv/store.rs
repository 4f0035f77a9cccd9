//! The store, and how a committed entry reaches it.
//!
//! [`KvStore::apply`] routes a committed entry: a no-op only advances
//! `last_applied`; a command is decoded, the log clock advanced and idle
//! sessions expired (`session.rs`), and then it is a registration, a write
//! in a session (applied at most once), or a plain write. What each write
//! does is `Data::apply`, in `ops.rs`; [`Data`] here is the map and its
//! primitives.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use poncho_protocol::{
    Entry, EntryKind, ErrorCode, ErrorReply, GetReply, KeyValue, RangeReply, RangeRequest, Txn,
    TxnReply, MAX_RANGE_REPLY_BYTES,
};
use smol_str::SmolStr;

use super::auth::{AuthStore, KeyRange, Need, Readable};
use super::command::Command;
use super::history::{Event, History};
use super::ops::{ApplyResult, Op};
use super::session::{Session, MAX_SESSIONS, MAX_SESSION_BYTES, SESSION_TIMEOUT_MS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStore {
    /// Persistent ordered maps (see `snapshot.rs`): ordered so that nothing
    /// derived from them (eviction, `keys`, snapshots) can depend on hash
    /// order, persistent so that a snapshot costs O(1).
    pub(super) data: Data,
    /// By `client_id`, the index of the session's registration.
    pub(super) sessions: OrdMap<u64, Session>,
    /// Client ids by the index that last used them, oldest first. The log
    /// clock never decreases along the log, so this order is also the order
    /// of `last_used_ts_ms`: the front is both the least recently used session
    /// and the first to expire, and expiry and eviction only ever pop it.
    pub(super) sessions_by_use: OrdMap<u64, u64>,
    pub(super) session_bytes: usize,
    /// Users, roles and whether auth is on. Shared with snapshots, copied
    /// on a change (rare).
    pub(super) auth: Arc<AuthStore>,
    pub(super) last_applied: u64,
    /// The largest `ts_ms` applied so far: the log clock.
    pub(super) clock_ms: u64,
    // The limits, fields so tests can shrink them; always the constants
    // otherwise (or, after a restore, the values the snapshot recorded).
    pub(super) session_timeout_ms: u64,
    pub(super) max_sessions: usize,
    pub(super) max_session_bytes: usize,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new()
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::with_session_limits(SESSION_TIMEOUT_MS, MAX_SESSIONS)
    }

    /// A store that expires sessions after `session_timeout_ms` of log time
    /// and keeps at most `max_sessions` (at least 1) of them: for tests that
    /// must see expiry and eviction in seconds. Every node of a cluster must
    /// use the same values (see [`SESSION_TIMEOUT_MS`]).
    pub fn with_session_limits(session_timeout_ms: u64, max_sessions: usize) -> KvStore {
        KvStore {
            data: Data::default(),
            sessions: OrdMap::new(),
            sessions_by_use: OrdMap::new(),
            session_bytes: 0,
            auth: Arc::default(),
            last_applied: 0,
            clock_ms: 0,
            session_timeout_ms,
            max_sessions: max_sessions.max(1),
            max_session_bytes: MAX_SESSION_BYTES,
        }
    }

    /// Applies the entry at `entry.index`, which must be `last_applied() + 1`.
    ///
    /// Returns the client's reply for a command, `None` for a no-op. An entry
    /// at or below `last_applied()` was applied already (a replay after a
    /// restart, say): it is ignored and gives `None`. Data that is not a valid
    /// command still consumes its index and gives an `Error`; it never panics,
    /// since every node must come to the same verdict on the same bytes.
    pub fn apply(&mut self, entry: &Entry) -> Option<ApplyResult> {
        if entry.index <= self.last_applied {
            return None;
        }
        debug_assert_eq!(
            entry.index,
            self.last_applied + 1,
            "entries must be applied in order without gaps"
        );
        self.last_applied = entry.index;
        match entry.kind {
            // Configurations are the Raft core's: the node reads them there.
            EntryKind::Noop | EntryKind::Config => None,
            EntryKind::Command => Some(match Command::decode(&entry.data) {
                Ok(command) => self.apply_command(entry.index, command),
                Err(e) => ApplyResult::Error(ErrorReply::bad_request(format!(
                    "log entry {} is not a valid command: {e}",
                    entry.index
                ))),
            }),
        }
    }

    fn apply_command(&mut self, index: u64, command: Command) -> ApplyResult {
        self.clock_ms = self.clock_ms.max(command.ts_ms);
        // Before the command: a session idle for the timeout at this point of
        // the log is gone for it, whatever came in between.
        self.expire_sessions();
        let user = command.user;
        match (command.client_id, command.seq, command.op) {
            (None, None, Op::RegisterClient) => self.register(index, user),
            (None, None, op) => {
                if let Err(denied) = self.check_op(user.as_deref(), &op) {
                    return ApplyResult::Error(denied);
                }
                match op {
                    Op::Auth { auth } => Arc::make_mut(&mut self.auth).apply(index, auth),
                    op => self.data.apply(index, op),
                }
            }
            (_, _, Op::RegisterClient | Op::Auth { .. }) => {
                ApplyResult::Error(ErrorReply::bad_request(
                    "REGISTER_CLIENT and AUTH carry no client_id or seq; not applied",
                ))
            }
            (Some(_), Some(0), _) => ApplyResult::Error(ErrorReply::bad_request(
                "seq starts at 1; the command was not applied",
            )),
            (Some(client_id), Some(seq), op) => {
                self.apply_in_session(index, client_id, seq, op, user)
            }
            _ => ApplyResult::Error(ErrorReply::bad_request(
                "client_id and seq go together; the command was not applied",
            )),
        }
    }

    /// Whether `user` may have `op` applied: what `Op::needs` says, and for
    /// a revoke, writing every key attached to the lease.
    pub(super) fn check_op(&self, user: Option<&str>, op: &Op) -> Result<(), ErrorReply> {
        self.auth.check(user, op.needs())?;
        if let (Op::LeaseRevoke { id }, true) = (op, self.auth.enabled) {
            for key in self.lease_key_set(*id).into_iter().flatten() {
                self.auth.check(user, Need::Write(key))?;
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key)
    }

    /// The revision of the last change to any key (see `poncho_protocol::kv`).
    pub fn revision(&self) -> u64 {
        self.data.revision
    }

    /// GET's reply for `key`: its value and revisions if it exists, and the
    /// revision the read saw.
    pub fn get_reply(&self, key: String) -> GetReply {
        let stored = self.data.get_stored(&key);
        GetReply {
            value: stored.map(|s| s.value.to_string()),
            create_revision: stored.map(|s| s.create_revision),
            mod_revision: stored.map(|s| s.mod_revision),
            version: stored.map(|s| s.version),
            revision: Some(self.data.revision),
            key,
        }
    }

    /// Sorted keys with this prefix, at most `limit` of them.
    pub fn keys(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.data.keys(prefix, prefix, limit)
    }

    /// Like [`KvStore::keys`] from `from` on (a page of a longer listing),
    /// but only the keys `user` may read (all of them while auth is off),
    /// and the first key left out past `limit`, if any. It reads only the
    /// ranges the user's roles grant, so its cost is that of what it may
    /// list.
    pub fn readable_keys(
        &self,
        user: Option<&str>,
        prefix: &str,
        from: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, Option<String>) {
        let start = from.unwrap_or(prefix).max(prefix);
        let mut keys = match self.auth.readable(user, prefix) {
            Readable::All => self.data.keys(prefix, start, limit + 1),
            Readable::Ranges(ranges) => {
                // Disjoint and in key order: each range's keys follow the last's.
                let mut keys = Vec::new();
                for range in &ranges {
                    if keys.len() > limit {
                        break;
                    }
                    let want = limit + 1 - keys.len();
                    match range {
                        KeyRange::Key(k) if k.as_str() >= start && self.data.get(k).is_some() => {
                            keys.push(k.clone())
                        }
                        KeyRange::Key(_) => {}
                        KeyRange::Prefix(p) => keys.extend(self.data.keys(p, start, want)),
                    }
                }
                keys
            }
        };
        let next = (keys.len() > limit).then(|| keys.swap_remove(limit));
        keys.truncate(limit);
        (keys, next)
    }

    /// Keeps at most `events` changes and `bytes` in the history (this
    /// node's flags; see `history.rs`).
    pub fn set_history_limits(&mut self, events: usize, bytes: usize) {
        self.data.history.set_limits(events, bytes);
    }

    /// The oldest revision a read may ask for, and how many changes the
    /// history holds.
    #[cfg(test)]
    pub fn history_window(&self) -> (u64, usize) {
        (self.data.history.compacted(), self.data.history.len())
    }

    /// `RANGE`: the keys of the request's range `user` may read, a page of
    /// them, and how many there are from where the page starts; at the
    /// request's `rev` if it names a past revision the history still holds.
    pub fn range(
        &self,
        user: Option<&str>,
        request: &RangeRequest,
    ) -> Result<RangeReply, ErrorReply> {
        let current = self.data.revision;
        let bounds = request.bounds();
        let rev = match request.rev {
            None | Some(0) => current,
            Some(rev) if rev > current => {
                return Err(ErrorReply::new(
                    ErrorCode::FutureRevision,
                    format!("revision {rev} is ahead of the current revision {current}"),
                ))
            }
            Some(rev) => rev,
        };
        if rev == current {
            let keys = self.data.from(bounds.start).map(|(k, s)| (k.as_str(), s));
            return Ok(self.page(user, request, keys, current));
        }
        let compacted = self.data.history.compacted();
        if rev < compacted {
            return Err(ErrorReply::compacted(
                compacted,
                format!(
                    "revision {rev} is no longer held: this node's history starts at revision \
                     {compacted}"
                ),
            ));
        }
        // The state at `rev`: the current keys, with every change after it
        // undone (newest first, so each key ends as it was before the
        // oldest change after `rev`).
        let mut undone: BTreeMap<&str, Option<&Stored>> = BTreeMap::new();
        for e in self.data.history.newest_after(rev) {
            if e.key.as_str() >= bounds.start && bounds.admits(&e.key) {
                undone.insert(&e.key, e.before.as_ref());
            }
        }
        let now = self.data.from(bounds.start).map(|(k, s)| (k.as_str(), s));
        Ok(self.page(user, request, merge(now, undone), rev))
    }

    /// A page of `keys` (in key order, from the page's start) for `user`.
    fn page<'a>(
        &self,
        user: Option<&str>,
        request: &RangeRequest,
        keys: impl Iterator<Item = (&'a str, &'a Stored)>,
        revision: u64,
    ) -> RangeReply {
        let everything = self.auth.may_read_everything(user);
        let may_read = |key: &str| everything || self.auth.may_read(user, key);
        page(request, keys, revision, may_read, MAX_RANGE_REPLY_BYTES)
    }

    /// A transaction that writes nothing, answered from the applied state
    /// for `user` (who must be allowed all of it, as for one applied).
    pub fn read_txn(&self, user: Option<&str>, txn: &Txn) -> Result<TxnReply, ErrorReply> {
        self.auth.check(user, Need::Txn(txn))?;
        Ok(self.data.read_txn(txn))
    }

    /// Users, roles and whether auth is on, as applied so far.
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Index of the last entry applied, no-ops included.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The session timeout (ms of log time) and the session cap in force.
    pub fn session_limits(&self) -> (u64, usize) {
        (self.session_timeout_ms, self.max_sessions)
    }

    /// The state's size in bytes, roughly: every key and value's length plus
    /// what the sessions count against [`MAX_SESSION_BYTES`] (their strings
    /// and a fixed overhead each). Kept as entries are applied, so O(1). It
    /// leaves out the maps' own overhead, and is not the snapshot's size.
    pub fn approximate_bytes(&self) -> usize {
        self.data.bytes + self.session_bytes
    }
}

/// The keys and their values, with their total size and revisions (see
/// `poncho_protocol::kv`). Keys of up to 23 bytes live inline in the tree's
/// nodes (`SmolStr`), so a lookup's comparisons do not each chase a pointer;
/// values are shared (`Arc`), so the copies a write makes of nodes a
/// snapshot still holds are reference-count increments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Data {
    map: OrdMap<SmolStr, Stored>,
    /// The sum of the lengths of every key and value in `map`.
    bytes: usize,
    /// The revision of the last change to any key: the index of its entry.
    pub(super) revision: u64,
    /// The changes of a recent window (this node's cache, not state).
    pub(super) history: History,
    /// The leases, by id (see `lease.rs`).
    pub(super) leases: OrdMap<u64, Lease>,
}

/// A lease: its TTL and the keys attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) ttl_secs: u64,
    pub(super) keys: imbl::OrdSet<SmolStr>,
}

/// A key's value and where it stands in its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) value: Arc<str>,
    pub(super) create_revision: u64,
    pub(super) mod_revision: u64,
    /// Writes since it was created, 1 at first.
    pub(super) version: u64,
    /// The lease it is attached to; 0 for none.
    pub(super) lease: u64,
}

impl Stored {
    pub(super) fn key_value(&self, key: &str, with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: with_value.then(|| self.value.to_string()),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

impl Data {
    /// Sets `key` to `value` at `revision`, attached to `lease` (0: none;
    /// it must exist), keeping `bytes`. An existing key keeps its shared
    /// key string and its creation.
    pub(super) fn put(&mut self, key: &str, value: Arc<str>, revision: u64, lease: u64) {
        self.revision = revision;
        // The value the history says this change wrote: shared with the
        // map (a reference count), so a watch reads it without a search.
        let written = value.clone();
        let (key, before) = match self.map.get_mut(key) {
            Some(slot) => {
                self.bytes = self.bytes - slot.value.len() + value.len();
                let before = Stored {
                    value: std::mem::replace(&mut slot.value, value),
                    ..*slot
                };
                slot.mod_revision = revision;
                slot.version += 1;
                slot.lease = lease;
                let key = SmolStr::new(key);
                if before.lease != lease {
                    self.detach(before.lease, &key);
                    self.attach(lease, &key);
                }
                (key, Some(before))
            }
            None => {
                let key = SmolStr::new(key);
                let stored = Stored {
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease,
                };
                self.insert_new(key.clone(), stored);
                self.attach(lease, &key);
                (key, None)
            }
        };
        let after = Stored {
            value: written,
            create_revision: before.as_ref().map_or(revision, |b| b.create_revision),
            mod_revision: revision,
            version: before.as_ref().map_or(1, |b| b.version + 1),
            lease,
        };
        self.history.record(Event {
            revision,
            key,
            before,
            after: Some(after),
        });
    }

    /// Adds a key that is not in the map (a restore adds keys this way).
    pub(super) fn insert_new(&mut self, key: SmolStr, stored: Stored) {
        self.bytes += key.len() + stored.value.len();
        self.map.insert(key, stored);
    }

    /// Removes `key` at `revision`, keeping `bytes`; whether it was there
    /// (only then does the revision move).
    pub(super) fn take(&mut self, key: &str, revision: u64) -> bool {
        match self.map.remove_with_key(key) {
            Some((key, stored)) => {
                self.bytes -= key.len() + stored.value.len();
                self.revision = revision;
                self.detach(stored.lease, &key);
                self.history.record(Event {
                    revision,
                    key,
                    before: Some(stored),
                    after: None,
                });
                true
            }
            None => false,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|v| &*v.value)
    }

    pub(super) fn get_stored(&self, key: &str) -> Option<&Stored> {
        self.map.get(key)
    }

    /// The keys from `start` on, in key order.
    pub(super) fn from(&self, start: &str) -> impl Iterator<Item = (&SmolStr, &Stored)> {
        self.map
            .range::<_, str>((Bound::Included(start), Bound::Unbounded))
    }

    fn keys(&self, prefix: &str, start: &str, limit: usize) -> Vec<String> {
        self.from(start.max(prefix))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .map(|k| k.to_string())
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key and value, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SmolStr, &Stored)> {
        self.map.iter()
    }

    /// A copy of the keys (O(1): the map is persistent) with an empty
    /// history, for a snapshot, which holds no history.
    pub(super) fn without_history(&self) -> Data {
        Data {
            map: self.map.clone(),
            bytes: self.bytes,
            revision: self.revision,
            history: History::default(),
            leases: self.leases.clone(),
        }
    }

    pub(super) fn attach(&mut self, lease: u64, key: &SmolStr) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
    }

    fn detach(&mut self, lease: u64, key: &str) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }
}

/// A page of `keys` (in key order, from the page's start): those of the
/// request's range that `may_read` lets through, up to its limit and, past
/// its first key, up to `max_bytes` of keys and values.
pub(super) fn page<'a>(
    request: &RangeRequest,
    keys: impl Iterator<Item = (&'a str, &'a Stored)>,
    revision: u64,
    may_read: impl Fn(&str) -> bool,
    max_bytes: usize,
) -> RangeReply {
    let bounds = request.bounds();
    let limit = request.page_limit();
    let mut reply = RangeReply {
        kvs: Vec::new(),
        count: 0,
        more: false,
        next_key: None,
        revision,
    };
    let mut bytes = 0;
    for (key, stored) in keys {
        if !bounds.admits(key) {
            break;
        }
        if !may_read(key) {
            continue;
        }
        reply.count += 1;
        if request.count_only || reply.next_key.is_some() {
            continue;
        }
        let size = key.len()
            + if request.keys_only {
                0
            } else {
                stored.value.len()
            };
        let fits = reply.kvs.is_empty() || bytes + size <= max_bytes;
        if reply.kvs.len() < limit && fits {
            bytes += size;
            reply.kvs.push(stored.key_value(key, !request.keys_only));
        } else {
            reply.next_key = Some(key.to_string());
            reply.more = true;
        }
    }
    reply
}

/// The keys of `now` (in key order), with those in `undone` as it says
/// instead (`None`: absent then), `undone`'s other keys added in order.
fn merge<'a>(
    now: impl Iterator<Item = (&'a str, &'a Stored)>,
    undone: BTreeMap<&'a str, Option<&'a Stored>>,
) -> impl Iterator<Item = (&'a str, &'a Stored)> {
    let mut now = now.peekable();
    let mut undone = undone.into_iter().peekable();
    std::iter::from_fn(move || loop {
        let next = match (now.peek(), undone.peek()) {
            (None, None) => return None,
            (Some(_), None) => now.next(),
            (None, Some(_)) => undone.next().and_then(|(k, s)| s.map(|s| (k, s))),
            (Some(&(a, _)), Some(&(b, _))) => {
                if a < b {
                    now.next()
                } else {
                    if a == b {
                        now.next();
                    }
                    undone.next().and_then(|(k, s)| s.map(|s| (k, s)))
                }
            }
        };
        if next.is_some() {
            return next;
        }
    })
}
