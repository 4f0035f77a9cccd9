//! The store, and how a committed entry reaches it.
//!
//! [`KvStore::apply`] routes a committed entry: a no-op only advances
//! `last_applied`; a command is decoded, the log clock advanced and idle
//! sessions expired (`session.rs`), and then it is a registration, a write
//! in a session (applied at most once), or a plain write. What each write
//! does is `Data::apply`, in `ops.rs`; [`Data`] here is the map and its
//! primitives.

use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use poncho_protocol::{Entry, EntryKind, ErrorReply};
use smol_str::SmolStr;

use super::auth::{AuthStore, KeyRange, Readable};
use super::command::Command;
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
                if let Err(denied) = self.auth.check(user.as_deref(), op.needs()) {
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

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key)
    }

    /// Sorted keys with this prefix, at most `limit` of them.
    pub fn keys(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.data.keys(prefix, limit)
    }

    /// Like [`KvStore::keys`], but only the keys `user` may read (all of
    /// them while auth is off). It reads only the ranges the user's roles
    /// grant, so its cost is that of what it may list.
    pub fn readable_keys(&self, user: Option<&str>, prefix: &str, limit: usize) -> Vec<String> {
        let ranges = match self.auth.readable(user, prefix) {
            Readable::All => return self.keys(prefix, limit),
            Readable::Ranges(ranges) => ranges,
        };
        // Disjoint and in key order: each range's keys follow the last's.
        let mut keys = Vec::new();
        for range in &ranges {
            if keys.len() >= limit {
                break;
            }
            match range {
                KeyRange::Key(k) if self.data.get(k).is_some() => keys.push(k.clone()),
                KeyRange::Key(_) => {}
                KeyRange::Prefix(p) => keys.extend(self.data.keys(p, limit - keys.len())),
            }
        }
        keys
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

/// The keys and their values, with their total size. Keys of up to 23 bytes
/// live inline in the tree's nodes (`SmolStr`), so a lookup's comparisons do
/// not each chase a pointer; values are shared (`Arc`), so the copies a write
/// makes of nodes a snapshot still holds are reference-count increments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Data {
    map: OrdMap<SmolStr, Arc<str>>,
    /// The sum of the lengths of every key and value in `map`.
    bytes: usize,
}

impl Data {
    /// Sets `key` to `value`, keeping `bytes`. An existing key keeps its
    /// shared string.
    pub(super) fn put(&mut self, key: &str, value: Arc<str>) {
        match self.map.get_mut(key) {
            Some(slot) => {
                self.bytes = self.bytes - slot.len() + value.len();
                *slot = value;
            }
            None => self.insert_new(SmolStr::new(key), value),
        }
    }

    /// Adds a key that is not in the map (a restore adds keys this way).
    pub(super) fn insert_new(&mut self, key: SmolStr, value: Arc<str>) {
        self.bytes += key.len() + value.len();
        self.map.insert(key, value);
    }

    /// Removes `key`, keeping `bytes`; whether it was there.
    pub(super) fn take(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(value) => {
                self.bytes -= key.len() + value.len();
                true
            }
            None => false,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|v| &**v)
    }

    fn keys(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.map
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
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
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SmolStr, &Arc<str>)> {
        self.map.iter()
    }
}
