//! The replicated key/value state machine.
//!
//! [`KvStore::apply`] takes committed log entries in index order and turns
//! each into the reply its client gets. Every node applies the same entries in
//! the same order, so the store must be a pure function of the log: it reads
//! no clock, draws no random numbers, and keeps everything in ordered maps so
//! no hash order can leak into a result or a snapshot.
//!
//! # Exactly-once writes (Raft thesis 6.3)
//! A client that does not hear back retries, and the retry may reach a new
//! leader after the first attempt was already committed. A client therefore
//! opens a session first: `REGISTER_CLIENT` goes through the log like a
//! write, and the session's id (`client_id`) is the log index of that entry.
//! The cluster, not the client, picks the id, because an index is unique for
//! the cluster's life: no two clients can share a session by choosing the
//! same id, and an id that expired is never handed out again, so a session
//! that is gone stays gone (a client-chosen id could be registered afresh and
//! its old retries applied again).
//!
//! A write that carries `client_id` and `seq` is applied at most once: the
//! store keeps, per session, the last `seq` it applied and that write's
//! result.
//!
//! - `seq` equal to the last: the retry gets the cached result; nothing is
//!   applied again.
//! - `seq` below the last: [`ErrorCode::StaleSequence`]; nothing changes.
//! - `seq` above the last: applied and cached.
//! - a `client_id` the store does not hold (expired, evicted, or never
//!   registered): [`ErrorCode::SessionExpired`]; nothing is applied. The
//!   store cannot tell a retry of an applied write from a new write once the
//!   session is gone, so it applies neither, and the client learns that the
//!   outcome of the write it was retrying is unknown.
//!
//! Clients issue one write at a time per `client_id`, so one cached result per
//! session is enough. Writes without `client_id` and `seq` are applied once
//! per entry: a client that resends one may have it applied twice.
//!
//! # Session expiry and eviction, deterministic
//! Sessions cannot be kept forever. The store's only clock is the `ts_ms` the
//! leader wrote into each command, taken as the maximum seen so far (leaders'
//! clocks may disagree a little, and the clock must never run backwards).
//! Before each command is applied, every session idle for
//! [`SESSION_TIMEOUT_MS`] of that log time is dropped, so whether a session is
//! alive for a command depends only on the command's place in the log.
//! [`MAX_SESSIONS`] and [`MAX_SESSION_BYTES`] bound memory: past either, the
//! least recently used session goes. Because the clock, the order and the
//! limits are all functions of the log, every node drops the same sessions at
//! the same index, and a dropped session's next write gets `SESSION_EXPIRED`
//! on every node alike: expiry and eviction are never silent.
//!
//! # Snapshots
//! The maps are persistent B-trees ([`imbl::OrdMap`]): a clone shares every
//! node with the original, and a later write copies only the nodes on its
//! path. [`KvStore::snapshot`] is therefore O(1) and the event loop can take
//! one between two applies, hand the [`KvSnapshot`] to a background thread to
//! serialize with [`KvSnapshot::write_lines`], and keep applying. Keys, values
//! and cached replies are behind `Arc`s, so the copies a write makes while a
//! snapshot still shares its nodes are reference-count increments, not string
//! copies.
//!
//! A snapshot is JSON Lines (compact JSON, so no line contains `\n`), in this
//! order; [`KvStore::restore`] reads it back and rejects anything else:
//!
//! 1. One store line, with every store-level field apply depends on, and how
//!    many key and session lines follow (so a truncated snapshot is detected):
//!    `{"format":2,"last_applied":9,"clock_ms":1700000000000,"session_timeout_ms":600000,`
//!    `"max_sessions":100000,"max_session_bytes":134217728,"keys":2,"sessions":1}`
//! 2. One line per key, in key order: `{"k":"a","v":"1"}`
//! 3. One line per session, in `client_id` order, with the cached reply in the
//!    shape of its wire reply plus its `type` (a session that has not written
//!    yet has `last_seq` 0 and its registration's reply):
//!    `{"client_id":3,"last_seq":4,"reply":{"type":"SET","key":"a","index":7},`
//!    `"last_used_index":9,"last_used_ts_ms":1700000000000}`
//!
//! The same entries always give byte-identical snapshot lines.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use poncho_protocol::{
    CasReply, ClientRequest, DeleteReply, Entry, EntryKind, ErrorCode, ErrorReply,
    RegisterClientReply, ReplyPayload, SessionFields, SetReply, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// How long a client session survives without use, in log time (the maximum
/// `ts_ms` applied so far). Ten minutes is far longer than any client keeps
/// retrying one write (the shell gives up after seconds), yet short enough
/// that sessions of clients that went away do not pile up.
///
/// These limits are part of the state machine's definition: every node must
/// use the same values, or nodes would drop different sessions and a retry
/// could be applied on one node and deduplicated on another. A snapshot
/// records the limits its store ran with, and a restored store keeps them.
pub const SESSION_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// The most sessions kept at once. A session costs about 100 bytes plus its
/// cached reply, so 100,000 typical sessions take on the order of 20 MB; past
/// that, the least recently used is dropped, so a flood of one-off client ids
/// cannot grow memory without bound within the timeout.
pub const MAX_SESSIONS: usize = 100_000;

/// The most bytes of cached replies (key and CAS value, see
/// `session_bytes`) kept at once. A CAS reply can carry a 256 KiB value, so the
/// count cap alone would allow 25 GB; past this budget the least recently used
/// session is dropped.
pub const MAX_SESSION_BYTES: usize = 128 << 20;

/// Fixed bookkeeping charged to every session besides its strings: the maps'
/// entries, the id, the sequence number and timestamps.
const SESSION_OVERHEAD_BYTES: usize = 96;

/// The version in a snapshot's store line. Raise it whenever the line format
/// or the meaning of a field changes; [`KvStore::restore`] refuses any other.
/// Format 2: sessions are keyed by the numeric id `REGISTER_CLIENT` gave
/// (format 1 had client-chosen string ids, which this build cannot honour).
pub const SNAPSHOT_FORMAT: u32 = 2;

// The session just used must always fit, or the budget would evict it at once.
const _: () = assert!(MAX_SESSIONS >= 1);
const _: () =
    assert!(MAX_SESSION_BYTES >= 16 * (SESSION_OVERHEAD_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES));

/// A write as stored in a log entry's `data` (JSON text). The leader builds it
/// from a client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CommandWire")]
pub struct Command {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Leader's wall clock in ms when proposed; the only notion of time the
    /// state machine has (used for session expiry), so expiry is deterministic
    /// because it is in the log.
    pub ts_ms: u64,
}

/// Written as an internally tagged object (`{"type":"SET","key":..}`); read
/// through [`OpWire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// `expected: None`: the key must be absent. `value: None`: delete it.
    Cas {
        key: String,
        expected: Option<String>,
        value: Option<String>,
    },
    /// Opens a session whose id is this entry's index.
    RegisterClient,
}

// Every node decodes every entry, so decoding is on the apply path of each
// write. An internally tagged enum makes serde buffer the object before
// reading it (about half of the decoding time); these flat twins read the
// same JSON in one pass.
#[derive(Deserialize)]
struct CommandWire {
    op: OpWire,
    #[serde(default)]
    client_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct OpWire {
    #[serde(rename = "type")]
    kind: OpKind,
    key: Option<String>,
    value: Option<String>,
    expected: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum OpKind {
    Set,
    Delete,
    Cas,
    RegisterClient,
}

impl TryFrom<CommandWire> for Command {
    type Error = String;

    fn try_from(w: CommandWire) -> Result<Command, String> {
        let OpWire {
            kind,
            key,
            value,
            expected,
        } = w.op;
        let key = key.ok_or("missing field `key` in op");
        let op = match kind {
            OpKind::Set => Op::Set {
                key: key?,
                value: value.ok_or("missing field `value` in a SET op")?,
            },
            OpKind::Delete => Op::Delete { key: key? },
            OpKind::Cas => Op::Cas {
                key: key?,
                expected,
                value,
            },
            OpKind::RegisterClient => Op::RegisterClient,
        };
        Ok(Command {
            op,
            client_id: w.client_id,
            seq: w.seq,
            ts_ms: w.ts_ms,
        })
    }
}

impl Command {
    /// Compact JSON, as stored in [`Entry::data`].
    pub fn encode(&self) -> String {
        // Only strings and integers, no maps with non-string keys: this cannot
        // fail.
        serde_json::to_string(self).expect("a Command serializes")
    }

    pub fn decode(data: &str) -> Result<Command, String> {
        serde_json::from_str(data).map_err(|e| e.to_string())
    }

    /// Builds a command from a client write request or a REGISTER_CLIENT;
    /// `None` for reads, HEALTHCHECK, STATUS and KEYS, which never enter the
    /// log.
    pub fn from_request(request: &ClientRequest, ts_ms: u64) -> Option<Command> {
        let no_session = SessionFields::default();
        let (op, session) = match request {
            ClientRequest::Set(r) => (
                Op::Set {
                    key: r.key.clone(),
                    value: r.value.clone(),
                },
                &r.session,
            ),
            ClientRequest::Delete(r) => (Op::Delete { key: r.key.clone() }, &r.session),
            ClientRequest::Cas(r) => (
                Op::Cas {
                    key: r.key.clone(),
                    expected: r.expected.clone(),
                    value: r.value.clone(),
                },
                &r.session,
            ),
            ClientRequest::RegisterClient => (Op::RegisterClient, &no_session),
            ClientRequest::Healthcheck
            | ClientRequest::Status
            | ClientRequest::Get(_)
            | ClientRequest::Keys(_) => return None,
        };
        let SessionFields { client_id, seq } = session.clone();
        Some(Command {
            op,
            client_id,
            seq,
            ts_ms,
        })
    }
}

/// The result of applying one entry, as the reply a client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    Set(SetReply),
    Delete(DeleteReply),
    Cas(CasReply),
    Register(RegisterClientReply),
    /// A stale sequence number, a session the store does not hold, or an
    /// entry whose data is not a valid command.
    Error(ErrorReply),
}

impl ApplyResult {
    /// The reply's wire `msg_type`.
    pub fn msg_type(&self) -> &'static str {
        match self {
            ApplyResult::Set(_) => SetReply::MSG_TYPE,
            ApplyResult::Delete(_) => DeleteReply::MSG_TYPE,
            ApplyResult::Cas(_) => CasReply::MSG_TYPE,
            ApplyResult::Register(_) => RegisterClientReply::MSG_TYPE,
            ApplyResult::Error(_) => ErrorReply::MSG_TYPE,
        }
        .name()
    }
}

/// One client's exactly-once state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// 0 until the session's first write (sequence numbers start at 1).
    last_seq: u64,
    /// The reply to `last_seq` (for 0, the registration's), returned again to
    /// a retry. Shared, so copying
    /// a session (as a write does to a tree node a snapshot still holds) does
    /// not copy the reply's strings.
    result: Arc<ApplyResult>,
    /// Index of the entry that last used this session: its key in
    /// `KvStore::sessions_by_use`.
    last_used_index: u64,
    /// The log clock when the session was last used.
    last_used_ts_ms: u64,
    /// What this session counts against `MAX_SESSION_BYTES`.
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStore {
    /// Persistent ordered maps (see the module doc, "Snapshots"): ordered so
    /// that nothing derived from them (eviction, `keys`, snapshots) can depend
    /// on hash order, persistent so that a snapshot costs O(1). Keys of up to
    /// 23 bytes live inline in the tree's nodes (`SmolStr`), so a lookup's
    /// comparisons do not each chase a pointer.
    data: OrdMap<SmolStr, Arc<str>>,
    /// The sum of the lengths of every key and value in `data`.
    data_bytes: usize,
    /// By `client_id`, the index of the session's registration.
    sessions: OrdMap<u64, Session>,
    /// Client ids by the index that last used them, oldest first. The log
    /// clock never decreases along the log, so this order is also the order
    /// of `last_used_ts_ms`: the front is both the least recently used session
    /// and the first to expire, and expiry and eviction only ever pop it.
    sessions_by_use: OrdMap<u64, u64>,
    session_bytes: usize,
    last_applied: u64,
    /// The largest `ts_ms` applied so far: the log clock.
    clock_ms: u64,
    // The limits, fields so tests can shrink them; always the constants
    // otherwise (or, after a restore, the values the snapshot recorded).
    session_timeout_ms: u64,
    max_sessions: usize,
    max_session_bytes: usize,
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
            data: OrdMap::new(),
            data_bytes: 0,
            sessions: OrdMap::new(),
            sessions_by_use: OrdMap::new(),
            session_bytes: 0,
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
            EntryKind::Noop => None,
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
        match (command.client_id, command.seq, command.op) {
            (None, None, Op::RegisterClient) => self.register(index),
            (_, _, Op::RegisterClient) => ApplyResult::Error(ErrorReply::bad_request(
                "REGISTER_CLIENT carries no client_id or seq; no session was opened",
            )),
            (None, None, op) => self.apply_op(index, op),
            (Some(_), Some(0), _) => ApplyResult::Error(ErrorReply::bad_request(
                "seq starts at 1; the command was not applied",
            )),
            (Some(client_id), Some(seq), op) => self.apply_in_session(index, client_id, seq, op),
            _ => ApplyResult::Error(ErrorReply::bad_request(
                "client_id and seq go together; the command was not applied",
            )),
        }
    }

    /// Opens the session `index`: nothing written yet, so `last_seq` 0, with
    /// the registration's reply as its cached result.
    fn register(&mut self, index: u64) -> ApplyResult {
        let result = ApplyResult::Register(RegisterClientReply { client_id: index });
        self.record_session(index, 0, index, result.clone());
        result
    }

    fn apply_in_session(&mut self, index: u64, client_id: u64, seq: u64, op: Op) -> ApplyResult {
        let Some(session) = self.sessions.get(&client_id) else {
            return ApplyResult::Error(ErrorReply::new(
                ErrorCode::SessionExpired,
                format!(
                    "client session {client_id} is not open: it expired (unused for {} ms of log \
                     time), was evicted (more than {} sessions), or was never registered; the \
                     command was not applied, and if it retries an earlier attempt, that \
                     attempt's outcome is unknown. Open a new session with REGISTER_CLIENT",
                    self.session_timeout_ms, self.max_sessions
                ),
            ));
        };
        if seq < session.last_seq {
            return ApplyResult::Error(ErrorReply::new(
                ErrorCode::StaleSequence,
                format!(
                    "client {client_id} sent seq {seq}, but seq {} was already applied; \
                     the command was not applied (use a larger seq for a new write)",
                    session.last_seq
                ),
            ));
        }
        if seq == session.last_seq {
            // A retry: answer as the first time, and count it as use.
            let result = ApplyResult::clone(&session.result);
            self.touch_session(client_id, index);
            return result;
        }
        let result = self.apply_op(index, op);
        self.record_session(client_id, seq, index, result.clone());
        result
    }

    fn apply_op(&mut self, index: u64, op: Op) -> ApplyResult {
        match op {
            Op::Set { key, value } => {
                self.put(&key, Arc::from(value));
                ApplyResult::Set(SetReply { key, index })
            }
            Op::Delete { key } => {
                let deleted = self.take(&key);
                ApplyResult::Delete(DeleteReply {
                    key,
                    deleted,
                    index,
                })
            }
            Op::Cas {
                key,
                expected,
                value,
            } => {
                let swapped = self.get(&key) == expected.as_deref();
                let current = if swapped {
                    match value {
                        Some(v) => {
                            self.put(&key, Arc::from(v.as_str()));
                            Some(v)
                        }
                        None => {
                            self.take(&key);
                            None
                        }
                    }
                } else {
                    self.get(&key).map(str::to_owned)
                };
                ApplyResult::Cas(CasReply {
                    key,
                    swapped,
                    current,
                    index,
                })
            }
            // `apply_command` takes registrations before this.
            Op::RegisterClient => ApplyResult::Error(ErrorReply::bad_request(
                "REGISTER_CLIENT is not a key/value operation",
            )),
        }
    }

    /// Sets `key` to `value`, keeping `data_bytes`. An existing key keeps its
    /// shared string.
    fn put(&mut self, key: &str, value: Arc<str>) {
        match self.data.get_mut(key) {
            Some(slot) => {
                self.data_bytes = self.data_bytes - slot.len() + value.len();
                *slot = value;
            }
            None => {
                self.data_bytes += key.len() + value.len();
                self.data.insert(SmolStr::new(key), value);
            }
        }
    }

    /// Removes `key`, keeping `data_bytes`; whether it was there.
    fn take(&mut self, key: &str) -> bool {
        match self.data.remove(key) {
            Some(value) => {
                self.data_bytes -= key.len() + value.len();
                true
            }
            None => false,
        }
    }

    /// Marks a session used by the entry at `index`: it moves to the back of
    /// `sessions_by_use`.
    fn touch_session(&mut self, client_id: u64, index: u64) {
        let clock_ms = self.clock_ms;
        let Some(session) = self.sessions.get_mut(&client_id) else {
            return;
        };
        let moved = self.sessions_by_use.remove(&session.last_used_index);
        debug_assert_eq!(moved, Some(client_id));
        session.last_used_index = index;
        session.last_used_ts_ms = clock_ms;
        self.sessions_by_use.insert(index, client_id);
    }

    /// Stores `result` as the reply to `client_id`'s `seq`, then drops least
    /// recently used sessions while over a cap.
    fn record_session(&mut self, client_id: u64, seq: u64, index: u64, result: ApplyResult) {
        let bytes = session_bytes(&result);
        let clock_ms = self.clock_ms;
        let result = Arc::new(result);
        // A known session is updated where it is (cheaper than replacing it).
        let replaced = match self.sessions.get_mut(&client_id) {
            Some(session) => {
                session.last_seq = seq;
                session.result = result;
                session.last_used_ts_ms = clock_ms;
                Some((
                    std::mem::replace(&mut session.last_used_index, index),
                    std::mem::replace(&mut session.bytes, bytes),
                ))
            }
            None => {
                let session = Session {
                    last_seq: seq,
                    result,
                    last_used_index: index,
                    last_used_ts_ms: clock_ms,
                    bytes,
                };
                self.sessions.insert(client_id, session);
                None
            }
        };
        if let Some((old_index, old_bytes)) = replaced {
            self.sessions_by_use.remove(&old_index);
            self.session_bytes -= old_bytes;
        }
        self.sessions_by_use.insert(index, client_id);
        self.session_bytes += bytes;
        while self.sessions.len() > self.max_sessions || self.session_bytes > self.max_session_bytes
        {
            self.drop_least_recently_used();
        }
    }

    /// Drops sessions idle for the timeout. Each call looks only at the front
    /// of `sessions_by_use`, so the cost is one lookup plus one removal per
    /// session dropped: amortized O(log n) per apply.
    fn expire_sessions(&mut self) {
        while let Some((_, client_id)) = self.sessions_by_use.get_min() {
            let idle_ms = self.clock_ms - self.sessions[client_id].last_used_ts_ms;
            if idle_ms < self.session_timeout_ms {
                break;
            }
            self.drop_least_recently_used();
        }
    }

    fn drop_least_recently_used(&mut self) {
        let Some(&(index, _)) = self.sessions_by_use.get_min() else {
            return;
        };
        if let Some(client_id) = self.sessions_by_use.remove(&index) {
            let session = self
                .sessions
                .remove(&client_id)
                .expect("every entry of sessions_by_use names a session");
            self.session_bytes -= session.bytes;
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(|v| &**v)
    }

    /// Sorted keys with this prefix, at most `limit` of them.
    pub fn keys(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.data
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .map(|k| k.to_string())
            .collect()
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
        self.data_bytes + self.session_bytes
    }

    /// The whole state as of now, for a background thread to serialize while
    /// this store goes on applying. O(1): the snapshot shares the maps' nodes,
    /// and later writes to this store copy the nodes they change.
    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            data: self.data.clone(),
            sessions: self.sessions.clone(),
            store: StoreLine {
                format: SNAPSHOT_FORMAT,
                last_applied: self.last_applied,
                clock_ms: self.clock_ms,
                session_timeout_ms: self.session_timeout_ms,
                max_sessions: self.max_sessions as u64,
                max_session_bytes: self.max_session_bytes as u64,
                keys: self.data.len() as u64,
                sessions: self.sessions.len() as u64,
            },
        }
    }

    /// Rebuilds the store a [`KvSnapshot::write_lines`] wrote: same data, same
    /// sessions, same clock, limits and `last_applied`, so it answers and
    /// applies every later entry exactly as the snapshotted store would.
    ///
    /// `lines` are the snapshot's lines without their line endings (as
    /// [`std::io::BufRead::lines`] gives them). Anything but a complete,
    /// well-formed snapshot, including a read error, gives an `Err` naming
    /// the line; it never panics.
    pub fn restore<I, E>(lines: I) -> Result<KvStore, String>
    where
        I: Iterator<Item = Result<String, E>>,
        E: fmt::Display,
    {
        let mut lines = NumberedLines { lines, number: 0 };
        let Some(line) = lines.next()? else {
            return Err("snapshot line 1: missing: a snapshot starts with the store line".into());
        };
        let store: StoreLine = serde_json::from_str(&line)
            .map_err(|e| format!("snapshot line 1: not a store line: {e}"))?;
        if store.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "snapshot line 1: format {} is not supported (this build reads format \
                 {SNAPSHOT_FORMAT})",
                store.format
            ));
        }
        let limit = |name: &str, value: u64| {
            usize::try_from(value)
                .map_err(|_| format!("snapshot line 1: {name} {value} does not fit in memory"))
        };
        let mut kv = KvStore {
            last_applied: store.last_applied,
            clock_ms: store.clock_ms,
            session_timeout_ms: store.session_timeout_ms,
            max_sessions: limit("max_sessions", store.max_sessions)?,
            max_session_bytes: limit("max_session_bytes", store.max_session_bytes)?,
            ..KvStore::new()
        };
        let missing = |number: u64| {
            format!(
                "snapshot line {number}: missing: the store line announces {} keys and {} \
                 sessions (a truncated snapshot?)",
                store.keys, store.sessions
            )
        };

        let mut previous: Option<SmolStr> = None;
        for _ in 0..store.keys {
            let Some(line) = lines.next()? else {
                return Err(missing(lines.number + 1));
            };
            let n = lines.number;
            let KeyLine { k, v } = serde_json::from_str(&line)
                .map_err(|e| format!("snapshot line {n}: not a key line: {e}"))?;
            if previous.as_deref().is_some_and(|p| p >= &*k) {
                return Err(format!(
                    "snapshot line {n}: key {k:?} is out of order (keys must be sorted and \
                     unique)"
                ));
            }
            let key = SmolStr::new(k);
            kv.data_bytes += key.len() + v.len();
            kv.data.insert(key.clone(), Arc::from(v));
            previous = Some(key);
        }

        // (last_used_index, last_used_ts_ms, line) of each session, for the
        // checks across lines below.
        let mut uses = Vec::new();
        let mut previous: Option<u64> = None;
        for _ in 0..store.sessions {
            let Some(line) = lines.next()? else {
                return Err(missing(lines.number + 1));
            };
            let n = lines.number;
            let s: SessionLineIn = serde_json::from_str(&line)
                .map_err(|e| format!("snapshot line {n}: not a session line: {e}"))?;
            let id = s.client_id;
            if previous.is_some_and(|p| p >= id) {
                return Err(format!(
                    "snapshot line {n}: client {id} is out of order (sessions must be sorted \
                     by client_id and unique)"
                ));
            }
            // Expiry subtracts a session's last use from the clock: it must
            // not be later than the clock (nor than the last index applied).
            if s.last_used_index > store.last_applied || s.last_used_ts_ms > store.clock_ms {
                return Err(format!(
                    "snapshot line {n}: client {id} was last used at index {}, time {}: after \
                     the store's last_applied {} or clock {}",
                    s.last_used_index, s.last_used_ts_ms, store.last_applied, store.clock_ms
                ));
            }
            // A session's id is the index of its registration, which is its
            // first use; its reply is the registration's until it writes.
            let result = ApplyResult::from(s.reply);
            if id == 0 || id > s.last_used_index {
                return Err(format!(
                    "snapshot line {n}: client {id} was last used at index {}: before it was \
                     registered (a client_id is its registration's index, from 1)",
                    s.last_used_index
                ));
            }
            let registration = ApplyResult::Register(RegisterClientReply { client_id: id });
            if (s.last_seq == 0) != (result == registration) {
                return Err(format!(
                    "snapshot line {n}: client {id} has last_seq {} with a {} reply (a session \
                     holds its registration's reply exactly while last_seq is 0)",
                    s.last_seq,
                    result.msg_type()
                ));
            }
            let bytes = session_bytes(&result);
            uses.push((s.last_used_index, s.last_used_ts_ms, n));
            kv.sessions_by_use.insert(s.last_used_index, id);
            kv.sessions.insert(
                id,
                Session {
                    last_seq: s.last_seq,
                    result: Arc::new(result),
                    last_used_index: s.last_used_index,
                    last_used_ts_ms: s.last_used_ts_ms,
                    bytes,
                },
            );
            kv.session_bytes += bytes;
            previous = Some(id);
        }
        if lines.next()?.is_some() {
            return Err(format!(
                "snapshot line {}: unexpected: the store line announces {} keys and {} sessions, \
                 all read already",
                lines.number, store.keys, store.sessions
            ));
        }

        // What apply keeps true of sessions must hold for restored ones: each
        // has its own slot in `sessions_by_use`, and along it the log time of
        // last use never decreases (expiry looks only at the front).
        uses.sort_unstable();
        for (a, b) in uses.iter().zip(uses.iter().skip(1)) {
            let ((a_index, a_ts, a_line), (b_index, b_ts, b_line)) = (a, b);
            if a_index == b_index {
                return Err(format!(
                    "snapshot line {b_line}: last used at index {b_index}, like the session on \
                     line {a_line}"
                ));
            }
            if a_ts > b_ts {
                return Err(format!(
                    "snapshot line {b_line}: last used at index {b_index}, time {b_ts}, but the \
                     session on line {a_line} was last used earlier in the log (index \
                     {a_index}) at a later time ({a_ts})"
                ));
            }
        }
        if kv.sessions.len() > kv.max_sessions || kv.session_bytes > kv.max_session_bytes {
            return Err(format!(
                "snapshot line 1: its {} sessions, {} bytes, exceed the limits it records \
                 ({} sessions, {} bytes)",
                kv.sessions.len(),
                kv.session_bytes,
                kv.max_sessions,
                kv.max_session_bytes
            ));
        }
        Ok(kv)
    }
}

/// A point-in-time copy of a [`KvStore`] from [`KvStore::snapshot`]. It owns
/// (shares, copy-on-write) the store's maps, so it can move to another thread
/// and outlive any number of later writes to the store.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    data: OrdMap<SmolStr, Arc<str>>,
    sessions: OrdMap<u64, Session>,
    /// The store line, counts included.
    store: StoreLine,
}

// The event loop hands snapshots to a background thread.
const _: () = {
    const fn send_static<T: Send + Sync + 'static>() {}
    send_static::<KvSnapshot>();
};

impl KvSnapshot {
    /// Index of the last entry the snapshot includes.
    pub fn last_applied(&self) -> u64 {
        self.store.last_applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Calls `f` with each line of the snapshot in order (see the module doc
    /// for the format), without its line ending; stops at the first error `f`
    /// returns and returns it. A line never contains `\n`.
    ///
    /// One buffer is reused for every line, so the cost is one pass over the
    /// state and no allocation per key.
    pub fn write_lines<F>(&self, mut f: F) -> io::Result<()>
    where
        F: FnMut(&str) -> io::Result<()>,
    {
        let mut buffer = Vec::with_capacity(256);
        emit_line(&mut buffer, &self.store, &mut f)?;
        for (k, v) in self.data.iter() {
            let line = KeyLine {
                k: Cow::Borrowed(&**k),
                v: Cow::Borrowed(&**v),
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        for (client_id, session) in self.sessions.iter() {
            let line = SessionLineOut {
                client_id: *client_id,
                last_seq: session.last_seq,
                reply: ReplyRef::from(&*session.result),
                last_used_index: session.last_used_index,
                last_used_ts_ms: session.last_used_ts_ms,
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        Ok(())
    }
}

fn emit_line<T, F>(buffer: &mut Vec<u8>, value: &T, f: &mut F) -> io::Result<()>
where
    T: Serialize,
    F: FnMut(&str) -> io::Result<()>,
{
    buffer.clear();
    serde_json::to_writer(&mut *buffer, value)?;
    // serde_json writes UTF-8, and compact output escapes every control
    // character, so the line holds no newline.
    let line = std::str::from_utf8(buffer).map_err(io::Error::other)?;
    f(line)
}

/// Lines with their 1-based numbers, a read error turned into a message.
struct NumberedLines<I> {
    lines: I,
    /// The number of the line returned last.
    number: u64,
}

impl<I, E> NumberedLines<I>
where
    I: Iterator<Item = Result<String, E>>,
    E: fmt::Display,
{
    fn next(&mut self) -> Result<Option<String>, String> {
        match self.lines.next() {
            None => Ok(None),
            Some(line) => {
                self.number += 1;
                line.map(Some)
                    .map_err(|e| format!("snapshot line {}: cannot read it: {e}", self.number))
            }
        }
    }
}

/// A snapshot's first line. Integers are `u64` so the format does not depend
/// on the width of `usize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreLine {
    format: u32,
    last_applied: u64,
    clock_ms: u64,
    session_timeout_ms: u64,
    max_sessions: u64,
    max_session_bytes: u64,
    /// How many key lines follow, then how many session lines.
    keys: u64,
    sessions: u64,
}

/// One key; borrowed from the line when it has no escapes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(borrow)]
    v: Cow<'a, str>,
}

/// One session, as written.
#[derive(Serialize)]
struct SessionLineOut<'a> {
    client_id: u64,
    last_seq: u64,
    reply: ReplyRef<'a>,
    last_used_index: u64,
    last_used_ts_ms: u64,
}

/// One session, as read: the same fields as [`SessionLineOut`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionLineIn {
    client_id: u64,
    last_seq: u64,
    reply: ReplyOwned,
    last_used_index: u64,
    last_used_ts_ms: u64,
}

/// A cached reply as written: the wire reply's fields plus its `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum ReplyRef<'a> {
    Set(&'a SetReply),
    Delete(&'a DeleteReply),
    Cas(&'a CasReply),
    RegisterClient(&'a RegisterClientReply),
    Error(&'a ErrorReply),
}

impl<'a> From<&'a ApplyResult> for ReplyRef<'a> {
    fn from(result: &'a ApplyResult) -> Self {
        match result {
            ApplyResult::Set(r) => ReplyRef::Set(r),
            ApplyResult::Delete(r) => ReplyRef::Delete(r),
            ApplyResult::Cas(r) => ReplyRef::Cas(r),
            ApplyResult::Register(r) => ReplyRef::RegisterClient(r),
            ApplyResult::Error(r) => ReplyRef::Error(r),
        }
    }
}

/// A cached reply as read: the same shape as [`ReplyRef`].
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum ReplyOwned {
    Set(SetReply),
    Delete(DeleteReply),
    Cas(CasReply),
    RegisterClient(RegisterClientReply),
    Error(ErrorReply),
}

impl From<ReplyOwned> for ApplyResult {
    fn from(reply: ReplyOwned) -> Self {
        match reply {
            ReplyOwned::Set(r) => ApplyResult::Set(r),
            ReplyOwned::Delete(r) => ApplyResult::Delete(r),
            ReplyOwned::Cas(r) => ApplyResult::Cas(r),
            ReplyOwned::RegisterClient(r) => ApplyResult::Register(r),
            ReplyOwned::Error(r) => ApplyResult::Error(r),
        }
    }
}

/// What a session counts against `MAX_SESSION_BYTES`: its reply's strings
/// plus a fixed overhead.
fn session_bytes(result: &ApplyResult) -> usize {
    let reply_bytes = match result {
        ApplyResult::Set(r) => r.key.len(),
        ApplyResult::Delete(r) => r.key.len(),
        ApplyResult::Cas(r) => r.key.len() + r.current.as_ref().map_or(0, String::len),
        ApplyResult::Register(_) => 0,
        ApplyResult::Error(e) => e.message.len(),
    };
    SESSION_OVERHEAD_BYTES + reply_bytes
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use poncho_protocol::{decode_request, CasRequest, DeleteRequest, Request, SetRequest};

    use super::*;

    fn set(key: &str, value: &str) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn delete(key: &str) -> Op {
        Op::Delete { key: key.into() }
    }

    fn cas(key: &str, expected: Option<&str>, value: Option<&str>) -> Op {
        Op::Cas {
            key: key.into(),
            expected: expected.map(Into::into),
            value: value.map(Into::into),
        }
    }

    fn command_entry(index: u64, command: &Command) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Command,
            data: Arc::from(command.encode()),
        }
    }

    fn noop_entry(index: u64) -> Entry {
        Entry {
            index,
            term: 2,
            kind: EntryKind::Noop,
            data: Arc::from(""),
        }
    }

    /// Feeds commands to a store, numbering entries after `last_applied`.
    struct Feed {
        store: KvStore,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                store: KvStore::new(),
            }
        }

        fn command(&mut self, command: Command) -> ApplyResult {
            let index = self.store.last_applied() + 1;
            self.store
                .apply(&command_entry(index, &command))
                .expect("a command entry gives a result")
        }

        fn plain(&mut self, op: Op) -> ApplyResult {
            self.plain_at(op, 0)
        }

        fn plain_at(&mut self, op: Op, ts_ms: u64) -> ApplyResult {
            self.command(Command {
                op,
                client_id: None,
                seq: None,
                ts_ms,
            })
        }

        fn with_session_limits(session_timeout_ms: u64, max_sessions: usize) -> Feed {
            Feed {
                store: KvStore::with_session_limits(session_timeout_ms, max_sessions),
            }
        }

        /// Opens a session at log time `ts_ms`: its id.
        fn register_at(&mut self, ts_ms: u64) -> u64 {
            let index = self.store.last_applied() + 1;
            match self.plain_at(Op::RegisterClient, ts_ms) {
                ApplyResult::Register(r) => {
                    assert_eq!(r.client_id, index, "a session's id is its entry's index");
                    r.client_id
                }
                other => panic!("REGISTER_CLIENT gave {other:?}"),
            }
        }

        fn register(&mut self) -> u64 {
            self.register_at(0)
        }

        fn session(&mut self, client_id: u64, seq: u64, ts_ms: u64, op: Op) -> ApplyResult {
            self.command(Command {
                op,
                client_id: Some(client_id),
                seq: Some(seq),
                ts_ms,
            })
        }
    }

    fn set_reply(key: &str, index: u64) -> ApplyResult {
        ApplyResult::Set(SetReply {
            key: key.into(),
            index,
        })
    }

    fn cas_reply(key: &str, swapped: bool, current: Option<&str>, index: u64) -> ApplyResult {
        ApplyResult::Cas(CasReply {
            key: key.into(),
            swapped,
            current: current.map(Into::into),
            index,
        })
    }

    fn error_code(result: &ApplyResult) -> ErrorCode {
        match result {
            ApplyResult::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn set_stores_the_value_and_replies_with_its_index() {
        let mut f = Feed::new();
        assert_eq!(f.plain(set("a", "1")), set_reply("a", 1));
        assert_eq!(f.store.get("a"), Some("1"));
        assert_eq!(f.plain(set("a", "2")), set_reply("a", 2));
        assert_eq!(f.store.get("a"), Some("2"));
        assert_eq!(f.store.get("b"), None);
        assert_eq!(f.store.len(), 1);
        assert!(!f.store.is_empty());
        assert_eq!(f.store.last_applied(), 2);
        assert_eq!(f.plain(set("a", "2")).msg_type(), "SET");
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut f = Feed::new();
        f.plain(set("a", "1"));
        let deleted = f.plain(delete("a"));
        assert_eq!(deleted.msg_type(), "DELETE");
        assert_eq!(
            deleted,
            ApplyResult::Delete(DeleteReply {
                key: "a".into(),
                deleted: true,
                index: 2
            })
        );
        assert_eq!(f.store.get("a"), None);
        assert!(f.store.is_empty());
        assert_eq!(
            f.plain(delete("a")),
            ApplyResult::Delete(DeleteReply {
                key: "a".into(),
                deleted: false,
                index: 3
            })
        );
    }

    #[test]
    fn cas_swaps_only_on_a_match_and_reports_the_value_after() {
        let mut f = Feed::new();
        // expected null: create only if absent.
        assert_eq!(
            f.plain(cas("k", None, Some("1"))),
            cas_reply("k", true, Some("1"), 1)
        );
        assert_eq!(
            f.plain(cas("k", None, Some("2"))),
            cas_reply("k", false, Some("1"), 2)
        );
        assert_eq!(f.store.get("k"), Some("1"));
        // A mismatch changes nothing and shows the current value.
        assert_eq!(
            f.plain(cas("k", Some("9"), Some("2"))),
            cas_reply("k", false, Some("1"), 3)
        );
        assert_eq!(
            f.plain(cas("k", Some("1"), Some("2"))),
            cas_reply("k", true, Some("2"), 4)
        );
        assert_eq!(f.store.get("k"), Some("2"));
        // value null: delete on a match.
        assert_eq!(
            f.plain(cas("k", Some("1"), None)),
            cas_reply("k", false, Some("2"), 5)
        );
        assert_eq!(
            f.plain(cas("k", Some("2"), None)),
            cas_reply("k", true, None, 6)
        );
        assert_eq!(f.store.get("k"), None);
        // Absent and expected to be absent, value null: a swap that leaves it absent.
        assert_eq!(f.plain(cas("k", None, None)), cas_reply("k", true, None, 7));
        // Expecting a value of an absent key fails.
        let r = f.plain(cas("k", Some("2"), Some("3")));
        assert_eq!(r, cas_reply("k", false, None, 8));
        assert_eq!(r.msg_type(), "CAS");
        assert!(f.store.is_empty());
    }

    #[test]
    fn keys_are_sorted_filtered_by_prefix_and_limited() {
        let mut f = Feed::new();
        for key in ["b/2", "a/1", "b/1", "b", "b/10", "c/1", "b0"] {
            f.plain(set(key, "v"));
        }
        assert_eq!(f.store.keys("b/", 10), vec!["b/1", "b/10", "b/2"]);
        assert_eq!(f.store.keys("b/", 2), vec!["b/1", "b/10"]);
        assert_eq!(f.store.keys("b", 10), vec!["b", "b/1", "b/10", "b/2", "b0"]);
        assert_eq!(
            f.store.keys("", 100),
            vec!["a/1", "b", "b/1", "b/10", "b/2", "b0", "c/1"]
        );
        assert_eq!(f.store.keys("", 0), Vec::<String>::new());
        assert_eq!(f.store.keys("d", 10), Vec::<String>::new());
        assert_eq!(f.store.keys("a/1/", 10), Vec::<String>::new());
    }

    #[test]
    fn a_retried_seq_returns_the_first_result_and_is_not_applied_twice() {
        let mut f = Feed::new();
        let c1 = f.register();
        assert_eq!(c1, 1);
        let first = f.session(c1, 1, 0, set("k", "from c1"));
        assert_eq!(first, set_reply("k", 2));
        f.plain(set("k", "from someone else"));
        // The retry of (c1, 1) arrives after another write to the key.
        assert_eq!(f.session(c1, 1, 0, set("k", "from c1")), first);
        assert_eq!(f.store.get("k"), Some("from someone else"));
        assert_eq!(f.store.last_applied(), 4);

        // A CAS retried after it succeeded must still report success, not
        // re-evaluate against the value it wrote.
        let swapped = f.session(c1, 2, 0, cas("n", None, Some("1")));
        assert_eq!(swapped, cas_reply("n", true, Some("1"), 5));
        assert_eq!(f.session(c1, 2, 0, cas("n", None, Some("1"))), swapped);
        // A DELETE retried reports `deleted: true` although the key is gone.
        let deleted = f.session(c1, 3, 0, delete("n"));
        assert_eq!(f.session(c1, 3, 0, delete("n")), deleted);
        assert!(matches!(
            deleted,
            ApplyResult::Delete(DeleteReply { deleted: true, .. })
        ));

        // The next seq applies again; another session's seq 1 is its own.
        assert_eq!(f.session(c1, 4, 0, set("k", "c1 again")), set_reply("k", 9));
        let c2 = f.register();
        assert_eq!(f.session(c2, 1, 0, set("k", "c2")), set_reply("k", 11));
        assert_eq!(f.store.get("k"), Some("c2"));
        assert_eq!(f.store.session_count(), 2);
    }

    #[test]
    fn an_older_seq_is_refused_with_stale_sequence_and_changes_nothing() {
        let mut f = Feed::new();
        let c1 = f.register();
        f.session(c1, 5, 0, set("k", "five"));
        let before = f.store.clone();
        let stale = f.session(c1, 4, 0, set("k", "four"));
        assert_eq!(error_code(&stale), ErrorCode::StaleSequence);
        assert!(stale.msg_type() == "ERROR");
        match &stale {
            ApplyResult::Error(e) => {
                assert!(e.message.contains("seq 4"), "{}", e.message);
                assert!(e.message.contains("seq 5"), "{}", e.message);
            }
            _ => unreachable!(),
        }
        assert_eq!(f.store.get("k"), Some("five"));
        // Only the applied index moved.
        assert_eq!(f.store.last_applied(), before.last_applied() + 1);
        assert_eq!(f.store.sessions, before.sessions);
        // The session still deduplicates its last seq.
        assert_eq!(f.session(c1, 5, 0, set("k", "x")), set_reply("k", 2));
    }

    #[test]
    fn client_id_without_seq_is_refused_without_applying() {
        let mut f = Feed::new();
        let c1 = f.register();
        let before = f.store.sessions.clone();
        let malformed = [
            (Some(c1), None, set("k", "v")),
            (None, Some(1), set("k", "v")),
            // seq starts at 1: a seq 0 must not be taken for a retry of the
            // registration.
            (Some(c1), Some(0), set("k", "v")),
            // A registration carries no session.
            (Some(c1), Some(1), Op::RegisterClient),
            (None, Some(1), Op::RegisterClient),
        ];
        for (client_id, seq, op) in malformed {
            let r = f.command(Command {
                op: op.clone(),
                client_id,
                seq,
                ts_ms: 0,
            });
            assert_eq!(
                error_code(&r),
                ErrorCode::BadRequest,
                "{client_id:?} {seq:?} {op:?}"
            );
        }
        assert_eq!(f.store.get("k"), None);
        assert_eq!(f.store.sessions, before);
    }

    #[test]
    fn sessions_expire_after_the_timeout_in_log_time() {
        let minute = 60_000;
        let mut f = Feed::new();
        let old = f.register_at(0);
        f.session(old, 1, 0, set("k", "old"));
        let young = f.register_at(5 * minute);
        f.session(young, 1, 5 * minute, set("k", "young"));
        // A leader with a slower clock cannot move log time backwards: the
        // clock stays at 5 minutes, so nothing expires yet...
        f.plain_at(set("x", "1"), 3 * minute);
        assert_eq!(f.store.session_count(), 2);
        // ...and one millisecond short of the timeout is still alive.
        f.plain_at(set("x", "2"), SESSION_TIMEOUT_MS - 1);
        assert_eq!(f.store.session_count(), 2);
        // At the timeout, the retry of "old"'s last write finds its session
        // gone: refused, not applied a second time (it would overwrite
        // "young"'s later write).
        let retry = f.session(old, 1, SESSION_TIMEOUT_MS, set("k", "old"));
        assert_eq!(error_code(&retry), ErrorCode::SessionExpired);
        match &retry {
            ApplyResult::Error(e) => assert!(
                e.message.contains("session 1 is not open") && e.message.contains("unknown"),
                "{}",
                e.message
            ),
            _ => unreachable!(),
        }
        assert_eq!(f.store.get("k"), Some("young"));
        assert_eq!(f.store.session_count(), 1, "idle for the timeout: dropped");
        // So is a new write in the expired session.
        let index = f.store.last_applied() + 1;
        let new_write = f.session(old, 2, SESSION_TIMEOUT_MS, set("k", "old 2"));
        assert_eq!(error_code(&new_write), ErrorCode::SessionExpired);
        assert_eq!(f.store.get("k"), Some("young"));
        assert_eq!(f.store.last_applied(), index);
        // Use keeps a session alive: "young" used again at 14 minutes lives
        // until 24.
        f.session(young, 2, 14 * minute, set("y", "1"));
        f.plain_at(set("x", "4"), 23 * minute);
        assert!(f.store.sessions.contains_key(&young));
        assert!(!f.store.sessions.contains_key(&old));
        f.plain_at(set("x", "5"), 24 * minute);
        assert_eq!(f.store.session_count(), 0);
        // Bookkeeping went with them.
        assert!(f.store.sessions_by_use.is_empty());
        assert_eq!(f.store.session_bytes, 0);
        // A new session gets a new id: the old ones never come back.
        let again = f.register_at(24 * minute);
        assert!(again > young);
        assert_eq!(
            error_code(&f.session(young, 2, 24 * minute, set("y", "1"))),
            ErrorCode::SessionExpired
        );
    }

    #[test]
    fn an_unregistered_client_id_is_refused_with_session_expired() {
        let mut f = Feed::new();
        f.plain(set("k", "1")); // index 1: a write, not a registration
        let c = f.register(); // index 2
        let before = f.store.clone();
        // Index 1 and ids past the log were never sessions; 0 never is.
        for id in [0, 1, 3, 99, u64::MAX] {
            let r = f.session(id, 1, 0, set("k", "unregistered"));
            assert_eq!(error_code(&r), ErrorCode::SessionExpired, "client {id}");
        }
        assert_eq!(f.store.get("k"), Some("1"));
        assert_eq!(f.store.sessions, before.sessions);
        assert_eq!(f.store.data, before.data);
        // The registered one works.
        assert_eq!(f.session(c, 1, 0, set("k", "2")), set_reply("k", 8));
    }

    #[test]
    fn a_retry_refreshes_its_session() {
        let minute = 60_000;
        let mut f = Feed::new();
        let a = f.register();
        let b = f.register();
        f.session(a, 1, 0, set("k", "a"));
        f.session(b, 1, 0, set("k", "b"));
        // "a" retries at 9 minutes; at 10 only "b" has been idle that long.
        let retry = f.session(a, 1, 9 * minute, set("k", "a"));
        assert_eq!(retry, set_reply("k", 3));
        f.plain_at(set("x", "1"), 10 * minute);
        assert!(f.store.sessions.contains_key(&a));
        assert!(!f.store.sessions.contains_key(&b));
        assert_eq!(
            error_code(&f.session(b, 1, 10 * minute, set("k", "b"))),
            ErrorCode::SessionExpired
        );
        assert_eq!(f.store.get("k"), Some("b"));
    }

    #[test]
    fn the_session_cap_drops_the_least_recently_used() {
        // The production cap, and a small one to see it act.
        assert_eq!(
            KvStore::new().session_limits(),
            (SESSION_TIMEOUT_MS, MAX_SESSIONS)
        );
        let mut f = Feed::with_session_limits(SESSION_TIMEOUT_MS, 3);
        let c: Vec<u64> = (0..3).map(|_| f.register()).collect();
        for (i, &id) in c.iter().enumerate() {
            f.session(id, 1, 0, set("k", &format!("c{i}")));
        }
        assert_eq!(f.store.session_count(), 3);
        // c0 is the oldest, but using it again makes c1 the least recent.
        f.session(c[0], 2, 0, set("k", "c0 again"));
        let new = f.register();
        assert_eq!(f.store.session_count(), 3);
        assert!(f.store.sessions.contains_key(&c[0]));
        assert!(!f.store.sessions.contains_key(&c[1]));
        assert!(f.store.sessions.contains_key(&c[2]));
        assert!(f.store.sessions.contains_key(&new));
        assert_eq!(f.store.sessions_by_use.len(), 3);
        // c1 was evicted: the retry of its last write is refused, not
        // applied a second time (it would overwrite "c0 again").
        let retry = f.session(c[1], 1, 0, set("k", "c1"));
        assert_eq!(error_code(&retry), ErrorCode::SessionExpired);
        assert_eq!(f.store.get("k"), Some("c0 again"));
        assert_eq!(f.store.session_count(), 3);
        // A burst of registrations evicts every live session, and each one's
        // next write says so rather than being taken for a new client's.
        for _ in 0..3 {
            f.register();
        }
        for id in [c[0], c[2], new] {
            let r = f.session(id, 3, 0, set("k", "late"));
            assert_eq!(error_code(&r), ErrorCode::SessionExpired, "client {id}");
        }
        assert_eq!(f.store.get("k"), Some("c0 again"));
    }

    #[test]
    fn the_byte_budget_drops_the_least_recently_used() {
        let mut f = Feed::new();
        let value = "v".repeat(1000);
        let one_session = SESSION_OVERHEAD_BYTES + 1 + value.len(); // "k", current
        f.store.max_session_bytes = 3 * one_session;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = f.register();
            f.session(id, 1, 0, cas("k", None, Some(&value)));
            f.plain(delete("k"));
            ids.push(id);
        }
        assert_eq!(f.store.session_count(), 3);
        assert_eq!(f.store.session_bytes, 3 * one_session);
        // A registration costs the overhead: over budget, the LRU goes.
        let c3 = f.register();
        assert!(!f.store.sessions.contains_key(&ids[0]));
        f.session(c3, 1, 0, cas("k", None, Some(&value)));
        assert_eq!(f.store.session_count(), 3);
        assert_eq!(f.store.session_bytes, 3 * one_session);
        let retry = f.session(ids[0], 1, 0, cas("k", None, Some(&value)));
        assert_eq!(error_code(&retry), ErrorCode::SessionExpired);
    }

    /// A deterministic mix of every kind of entry: writes with and without
    /// sessions, retries, stale sequences, no-ops, garbage, and clock jumps
    /// that expire sessions.
    fn mixed_log(len: u64) -> Vec<Entry> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seqs = [0u64; 8];
        // Each client's session: the index of its registration (which the
        // entry kinds below sometimes turn into a no-op or garbage, so the
        // client then writes in a session that was never opened).
        let mut ids: [Option<u64>; 8] = [None; 8];
        (1..=len)
            .map(|index| {
                let r = next();
                let key = format!("k{}", r % 13);
                let ts_ms = index * 20_000 + (r % 7) * 1_000; // leaders' clocks jitter
                let mut op = match r % 5 {
                    0 => delete(&key),
                    1 => cas(&key, Some("v1"), None),
                    2 => cas(&key, None, Some(&format!("v{}", r % 3))),
                    _ => set(&key, &format!("v{}", r % 3)),
                };
                let client = (r >> 8) as usize % 10;
                let (client_id, seq) = if client >= seqs.len() {
                    (None, None)
                } else if ids[client].is_none() || (r >> 32) % 12 == 0 {
                    // A new session (sometimes while the old one lives on).
                    ids[client] = Some(index);
                    seqs[client] = 0;
                    op = Op::RegisterClient;
                    (None, None)
                } else {
                    // Mostly a new seq, sometimes a retry or a stale one.
                    match (r >> 16) % 6 {
                        0 => {}
                        1 => seqs[client] = seqs[client].saturating_sub(1),
                        _ => seqs[client] += 1,
                    }
                    (ids[client], Some(seqs[client].max(1)))
                };
                match (r >> 24) % 20 {
                    0 => noop_entry(index),
                    1 => Entry {
                        index,
                        term: 1,
                        kind: EntryKind::Command,
                        data: Arc::from("{\"op\":"),
                    },
                    _ => command_entry(
                        index,
                        &Command {
                            op,
                            client_id,
                            seq,
                            ts_ms,
                        },
                    ),
                }
            })
            .collect()
    }

    #[test]
    fn two_stores_fed_the_same_entries_end_identical() {
        let log = mixed_log(3_000);
        let mut a = KvStore::new();
        a.session_timeout_ms = 200_000; // so sessions do expire within the log
        let mut b = a.clone();
        let results_a: Vec<_> = log.iter().map(|e| a.apply(e)).collect();
        // b sees every entry, plus replays of entries already applied (as
        // after a restart), which must change nothing.
        let mut results_b = Vec::new();
        for (i, entry) in log.iter().enumerate() {
            results_b.push(b.apply(entry));
            if i % 97 == 0 {
                for old in &log[i.saturating_sub(5)..=i] {
                    assert_eq!(b.apply(old), None, "replay of {}", old.index);
                }
            }
        }
        assert_eq!(results_a, results_b);
        assert_eq!(a, b);
        assert_eq!(a.last_applied(), 3_000);
        // The log exercised what it is meant to.
        let count =
            |f: &dyn Fn(&ApplyResult) -> bool| results_a.iter().flatten().filter(|r| f(r)).count();
        assert!(
            count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::StaleSequence))
                > 0
        );
        assert!(
            count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::BadRequest)) > 0
        );
        assert!(count(&|r| matches!(r, ApplyResult::Cas(c) if c.swapped)) > 0);
        assert!(
            count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::SessionExpired))
                > 0
        );
        let registered = count(&|r| matches!(r, ApplyResult::Register(_)));
        assert!(results_a.iter().any(Option::is_none), "no-ops");
        assert!(!a.is_empty());
        assert!(
            a.session_count() < registered / 10,
            "sessions expired: {} of {registered}",
            a.session_count()
        );
        assert_eq!(a.sessions.len(), a.sessions_by_use.len());
        let bytes: usize = a.sessions.values().map(|s| s.bytes).sum();
        assert_eq!(bytes, a.session_bytes);
    }

    #[test]
    fn a_noop_changes_nothing_but_advances_last_applied() {
        let mut f = Feed::new();
        let c1 = f.register_at(7);
        f.session(c1, 1, 7, set("k", "v"));
        let before = f.store.clone();
        assert_eq!(f.store.apply(&noop_entry(3)), None);
        assert_eq!(f.store.last_applied(), 3);
        f.store.last_applied = before.last_applied;
        assert_eq!(f.store, before);
    }

    #[test]
    fn an_index_already_applied_is_ignored() {
        let mut f = Feed::new();
        f.plain(set("k", "1"));
        f.plain(set("k", "2"));
        let before = f.store.clone();
        let replay = command_entry(
            1,
            &Command {
                op: set("k", "1"),
                client_id: None,
                seq: None,
                ts_ms: 0,
            },
        );
        assert_eq!(f.store.apply(&replay), None);
        assert_eq!(f.store.apply(&noop_entry(2)), None);
        assert_eq!(f.store, before);
        assert_eq!(f.store.get("k"), Some("2"));
    }

    #[test]
    fn garbage_entry_data_is_an_error_not_a_panic() {
        let mut store = KvStore::new();
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let garbage = [
            "",
            "not json",
            "{\"op\":{\"type\":\"FROB\",\"key\":\"k\"},\"ts_ms\":1}",
            "{\"op\":{\"type\":\"DELETE\"},\"ts_ms\":1}",
            "{\"op\":{\"type\":\"SET\",\"key\":\"k\",\"value\":null},\"ts_ms\":1}",
            "{\"op\":{\"key\":\"k\"},\"ts_ms\":1}",
            "{\"op\":{\"type\":\"DELETE\",\"key\":\"k\"},\"client_id\":\"c1\",\"seq\":1,\"ts_ms\":1}",
            "{\"op\":{\"type\":\"SET\",\"key\":\"k\"},\"ts_ms\":1}",
            "{\"op\":{\"type\":\"SET\",\"key\":\"k\",\"value\":\"v\"}}",
            "[1,2,3]",
            deep.as_str(),
        ];
        for (i, data) in garbage.iter().enumerate() {
            let index = i as u64 + 1;
            let entry = Entry {
                index,
                term: 1,
                kind: EntryKind::Command,
                data: Arc::from(*data),
            };
            let result = store.apply(&entry).expect("a command entry gives a result");
            assert_eq!(error_code(&result), ErrorCode::BadRequest, "{data:.40}");
            match result {
                ApplyResult::Error(e) => {
                    assert!(
                        e.message.contains(&format!("log entry {index}")),
                        "{}",
                        e.message
                    )
                }
                _ => unreachable!(),
            }
            assert_eq!(store.last_applied(), index);
        }
        assert!(store.is_empty());
        assert_eq!(store.session_count(), 0);
    }

    #[test]
    fn commands_round_trip_through_compact_json() {
        let command = Command {
            op: cas("k", None, Some("v")),
            client_id: Some(12),
            seq: Some(3),
            ts_ms: 1_700_000_000_000,
        };
        let text = command.encode();
        assert_eq!(
            text,
            "{\"op\":{\"type\":\"CAS\",\"key\":\"k\",\"expected\":null,\"value\":\"v\"},\
             \"client_id\":12,\"seq\":3,\"ts_ms\":1700000000000}"
        );
        let register = Command {
            op: Op::RegisterClient,
            client_id: None,
            seq: None,
            ts_ms: 5,
        };
        assert_eq!(
            register.encode(),
            "{\"op\":{\"type\":\"REGISTER_CLIENT\"},\"ts_ms\":5}"
        );
        assert_eq!(Command::decode(&register.encode()), Ok(register));
        assert_eq!(Command::decode(&text), Ok(command));
        let plain = Command {
            op: delete("k"),
            client_id: None,
            seq: None,
            ts_ms: 5,
        };
        assert_eq!(
            plain.encode(),
            "{\"op\":{\"type\":\"DELETE\",\"key\":\"k\"},\"ts_ms\":5}"
        );
        assert_eq!(Command::decode(&plain.encode()), Ok(plain));
        assert!(Command::decode("{").is_err());
    }

    #[test]
    fn from_request_builds_commands_for_writes_only() {
        let request = |line: &str| match decode_request(line.as_bytes()).unwrap() {
            Request::Client { request, .. } => request,
            other => panic!("{other:?}"),
        };
        let session = SessionFields {
            client_id: Some(1),
            seq: Some(2),
        };
        assert_eq!(
            Command::from_request(
                &ClientRequest::Set(SetRequest {
                    key: "k".into(),
                    value: "v".into(),
                    session: session.clone(),
                }),
                9
            ),
            Some(Command {
                op: set("k", "v"),
                client_id: Some(1),
                seq: Some(2),
                ts_ms: 9
            })
        );
        assert_eq!(
            Command::from_request(
                &ClientRequest::Delete(DeleteRequest {
                    key: "k".into(),
                    session: SessionFields::default(),
                }),
                9
            ),
            Some(Command {
                op: delete("k"),
                client_id: None,
                seq: None,
                ts_ms: 9
            })
        );
        assert_eq!(
            Command::from_request(
                &ClientRequest::Cas(CasRequest {
                    key: "k".into(),
                    expected: Some("a".into()),
                    value: None,
                    session,
                }),
                9
            )
            .map(|c| c.op),
            Some(cas("k", Some("a"), None))
        );
        for line in [
            r#"{"msg_type":"HEALTHCHECK"}"#,
            r#"{"msg_type":"STATUS"}"#,
            r#"{"msg_type":"GET","payload":{"key":"k"}}"#,
            r#"{"msg_type":"KEYS"}"#,
        ] {
            assert_eq!(Command::from_request(&request(line), 9), None, "{line}");
        }
        assert_eq!(
            Command::from_request(&ClientRequest::RegisterClient, 9),
            Some(Command {
                op: Op::RegisterClient,
                client_id: None,
                seq: None,
                ts_ms: 9
            })
        );
        // End to end: a registration and a SET line, through the log, to
        // their replies.
        let mut store = KvStore::new();
        let register = Command::from_request(&request(r#"{"msg_type":"REGISTER_CLIENT"}"#), 1);
        assert_eq!(
            store.apply(&command_entry(1, &register.unwrap())),
            Some(ApplyResult::Register(RegisterClientReply { client_id: 1 }))
        );
        let line = r#"{"msg_type":"SET","payload":{"key":"k","value":"v","client_id":1,"seq":1}}"#;
        let command = Command::from_request(&request(line), 1).unwrap();
        assert_eq!(
            store.apply(&command_entry(2, &command)),
            Some(set_reply("k", 2))
        );
        assert_eq!(store.session_count(), 1);
    }

    // ------------------------------------------------------------ snapshots

    /// The snapshot's lines, as a background thread would write them.
    fn snapshot_lines(store: &KvStore) -> Vec<String> {
        let mut lines = Vec::new();
        store
            .snapshot()
            .write_lines(|line| {
                lines.push(line.to_owned());
                Ok(())
            })
            .expect("collecting lines cannot fail");
        lines
    }

    fn restore_lines(lines: &[String]) -> Result<KvStore, String> {
        KvStore::restore(lines.iter().cloned().map(Ok::<_, std::convert::Infallible>))
    }

    /// Snapshot to bytes as a file would hold them, then restore through
    /// `BufRead::lines`, as a node reading the file would.
    fn round_trip(store: &KvStore) -> KvStore {
        use std::io::{BufRead, Write};
        let mut file = Vec::new();
        store
            .snapshot()
            .write_lines(|line| {
                assert!(!line.contains('\n'), "{line}");
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")
            })
            .expect("writing to a Vec cannot fail");
        KvStore::restore(std::io::Cursor::new(file).lines()).expect("a snapshot restores")
    }

    fn apply_all(store: &mut KvStore, entries: &[Entry]) -> Vec<Option<ApplyResult>> {
        entries.iter().map(|e| store.apply(e)).collect()
    }

    #[test]
    fn a_restored_store_applies_later_entries_exactly_like_the_original() {
        let log = mixed_log(3_000);
        for split in [0, 1, 450, 1_500, 2_999, 3_000] {
            let mut original = KvStore::new();
            original.session_timeout_ms = 200_000; // so sessions do expire within the log
            apply_all(&mut original, &log[..split]);
            let mut restored = round_trip(&original);
            // Equal in every field: data, sessions and their use order, byte
            // counts, clock, limits, last_applied.
            assert_eq!(restored, original, "split {split}");
            assert_eq!(restored.approximate_bytes(), original.approximate_bytes());
            assert_eq!(restored.keys("", usize::MAX), original.keys("", usize::MAX));

            let mut sessions_dropped = 0;
            let mut results = Vec::new();
            for entry in &log[split..] {
                let before = original.session_count();
                results.push(original.apply(entry));
                sessions_dropped += before.saturating_sub(original.session_count());
            }
            assert_eq!(
                apply_all(&mut restored, &log[split..]),
                results,
                "split {split}"
            );
            assert_eq!(restored, original, "split {split}");
            assert_eq!(snapshot_lines(&restored), snapshot_lines(&original));

            if split == 1_500 {
                // The tail exercised what it must: cached replies to retries
                // (their index is the first attempt's), stale sequences, and
                // sessions dropped by expiry (the count cap is not reached).
                let cached = log[split..]
                    .iter()
                    .zip(&results)
                    .filter(|(entry, result)| {
                        let index = match result {
                            Some(ApplyResult::Set(r)) => r.index,
                            Some(ApplyResult::Delete(r)) => r.index,
                            Some(ApplyResult::Cas(r)) => r.index,
                            _ => return false,
                        };
                        index != entry.index
                    })
                    .count();
                assert!(cached > 0, "no retry answered from a session");
                assert!(results.iter().flatten().any(
                    |r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::StaleSequence)
                ));
                assert!(sessions_dropped > 0, "no session expired");
            }
        }
    }

    #[test]
    fn a_restored_store_retries_expires_and_evicts_like_the_original() {
        let minute = 60_000;
        let mut f = Feed::with_session_limits(SESSION_TIMEOUT_MS, 3);
        let a = f.register_at(0); // 1
        f.session(a, 1, 0, cas("n", None, Some("1"))); // 2
        let b = f.register_at(minute); // 3
        f.session(b, 4, minute, set("k", "b")); // 4
        f.plain_at(set("k", "plain"), 2 * minute); // 5
        let c = f.register_at(3 * minute); // 6
        f.session(c, 1, 3 * minute, delete("k")); // 7
        f.plain(set("big", &"x".repeat(1_000))); // 8: the clock stays at 3 minutes
        let mut g = Feed {
            store: round_trip(&f.store),
        };
        assert_eq!(g.store, f.store);
        assert_eq!(g.store.session_count(), 3);
        assert_eq!(g.store.session_limits(), (SESSION_TIMEOUT_MS, 3));

        let session = |client_id: u64, seq: u64, ts_ms: u64, op: Op| Command {
            op,
            client_id: Some(client_id),
            seq: Some(seq),
            ts_ms,
        };
        let plain_at = |ts_ms: u64, op: Op| Command {
            op,
            client_id: None,
            seq: None,
            ts_ms,
        };
        let d = 12;
        let later = [
            // 9: a retry of a's CAS gets the cached reply; evaluated again it
            // would fail, since "n" now holds "1".
            session(a, 1, 4 * minute, cas("n", None, Some("1"))),
            // 10: an older seq is stale.
            session(b, 3, 4 * minute, set("k", "stale")),
            // 11: c's DELETE retried still reports the key it deleted.
            session(c, 1, 4 * minute, delete("k")),
            // 12: a fourth session evicts the least recently used: b (the
            // stale seq did not count as use).
            plain_at(5 * minute, Op::RegisterClient),
            // 13: so b's retry of seq 4 is refused, not applied again.
            session(b, 4, 5 * minute, set("k", "b")),
            // 14: d writes.
            session(d, 1, 5 * minute, set("d", "1")),
            // 15: one ms short of a's and c's timeout; 16: they (used at 4
            // minutes) expire.
            plain_at(4 * minute + SESSION_TIMEOUT_MS - 1, set("t", "1")),
            plain_at(4 * minute + SESSION_TIMEOUT_MS, set("t", "2")),
            // 17: so a's next write is refused.
            session(a, 2, 4 * minute + SESSION_TIMEOUT_MS, set("n", "2")),
            // 18: and then d, used at 5 minutes, expires.
            plain_at(5 * minute + SESSION_TIMEOUT_MS, set("t", "3")),
        ];
        let run = |f: &mut Feed| -> Vec<(ApplyResult, Vec<String>)> {
            later
                .iter()
                .map(|command| {
                    let result = f.command(command.clone());
                    let sessions = f.store.sessions.keys().map(|id| id.to_string()).collect();
                    (result, sessions)
                })
                .collect()
        };
        let expected = run(&mut f);
        assert_eq!(run(&mut g), expected);
        assert_eq!(g.store, f.store);

        // The scenario did what its comments say.
        let results: Vec<_> = expected.iter().map(|(r, _)| r.clone()).collect();
        let sessions: Vec<_> = expected.iter().map(|(_, s)| s.join(",")).collect();
        assert_eq!(results[0], cas_reply("n", true, Some("1"), 2));
        assert_eq!(error_code(&results[1]), ErrorCode::StaleSequence);
        assert_eq!(
            results[2],
            ApplyResult::Delete(DeleteReply {
                key: "k".into(),
                deleted: true,
                index: 7
            })
        );
        assert_eq!(
            results[3],
            ApplyResult::Register(RegisterClientReply { client_id: d })
        );
        assert_eq!(sessions[3], "1,6,12");
        assert_eq!(error_code(&results[4]), ErrorCode::SessionExpired);
        assert_eq!(f.store.get("k"), None, "b's retry was not applied");
        assert_eq!(results[5], set_reply("d", 14));
        assert_eq!(sessions[6], "1,6,12");
        assert_eq!(sessions[7], "12");
        assert_eq!(error_code(&results[8]), ErrorCode::SessionExpired);
        assert_eq!(f.store.get("n"), Some("1"));
        assert_eq!(sessions[9], "");
    }

    #[test]
    fn a_snapshot_does_not_see_later_writes() {
        let mut f = Feed::new();
        let clients: Vec<u64> = (0..5).map(|_| f.register()).collect();
        for i in 0..200u64 {
            let key = format!("k{i:03}");
            f.session(
                clients[i as usize % 5],
                i / 5 + 1,
                i * 1_000,
                set(&key, "old"),
            );
        }
        let frozen = f.store.clone();
        let expected = snapshot_lines(&frozen);
        let on_thread = f.store.snapshot();
        let kept = f.store.snapshot();
        // One snapshot is written on another thread while the store goes on
        // applying; the other only once every write below is done.
        let writer = std::thread::spawn(move || {
            let mut lines = Vec::new();
            on_thread
                .write_lines(|line| {
                    lines.push(line.to_owned());
                    Ok(())
                })
                .map(|()| lines)
        });
        for i in 0..200u64 {
            let key = format!("k{i:03}");
            if i % 2 == 0 {
                f.plain(delete(&key));
            } else {
                f.session(
                    clients[i as usize % 5],
                    1_000 + i,
                    300_000,
                    set(&key, "new"),
                );
            }
            f.plain(set(&format!("n{i}"), "new"));
        }
        f.plain_at(set("x", "1"), 300_000 + SESSION_TIMEOUT_MS); // expires every session
        assert_eq!(f.store.session_count(), 0);
        assert_eq!(f.store.get("k001"), Some("new"));

        let written = writer
            .join()
            .expect("no panic")
            .expect("collecting lines cannot fail");
        assert_eq!(written, expected);
        assert_eq!(kept.last_applied(), 205);
        assert_eq!(kept.len(), 200);
        assert!(!kept.is_empty());
        assert_eq!(kept.session_count(), 5);
        let mut lines = Vec::new();
        kept.write_lines(|line| {
            lines.push(line.to_owned());
            Ok(())
        })
        .expect("collecting lines cannot fail");
        assert_eq!(lines, expected);
        let restored = restore_lines(&lines).expect("restores");
        assert_eq!(restored, frozen);
        assert_eq!(restored.get("k001"), Some("old"));
        assert_eq!(restored.get("n0"), None);
    }

    #[test]
    fn write_lines_stops_at_the_first_error() {
        let mut f = Feed::new();
        f.plain(set("a", "1"));
        f.plain(set("b", "2"));
        let mut calls = 0;
        let result = f.store.snapshot().write_lines(|_| {
            calls += 1;
            if calls == 2 {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        });
        assert_eq!(result.map_err(|e| e.to_string()), Err("disk full".into()));
        assert_eq!(calls, 2);
    }

    #[test]
    fn the_snapshot_line_format() {
        let ts = 1_700_000_000_000;
        let mut f = Feed::new();
        let c1 = f.register_at(ts); // 1
        f.session(c1, 4, ts, set("a", "1")); // 2
        f.register_at(ts + 1); // 3: never writes
        f.plain_at(set("b", "2\n\"x\u{e9}"), ts + 5); // 4
        let c5 = f.register_at(ts + 3); // 5
        f.session(c5, 1, ts + 3, cas("z", Some("no"), None)); // 6
        assert_eq!(
            snapshot_lines(&f.store),
            [
                r#"{"format":2,"last_applied":6,"clock_ms":1700000000005,"session_timeout_ms":600000,"max_sessions":100000,"max_session_bytes":134217728,"keys":2,"sessions":3}"#,
                r#"{"k":"a","v":"1"}"#,
                "{\"k\":\"b\",\"v\":\"2\\n\\\"x\u{e9}\"}",
                r#"{"client_id":1,"last_seq":4,"reply":{"type":"SET","key":"a","index":2},"last_used_index":2,"last_used_ts_ms":1700000000000}"#,
                r#"{"client_id":3,"last_seq":0,"reply":{"type":"REGISTER_CLIENT","client_id":3},"last_used_index":3,"last_used_ts_ms":1700000000001}"#,
                r#"{"client_id":5,"last_seq":1,"reply":{"type":"CAS","key":"z","swapped":false,"current":null,"index":6},"last_used_index":6,"last_used_ts_ms":1700000000005}"#,
            ]
        );
        // Every reply type reads back, errors included (apply never caches
        // one today, but the format carries it).
        let mut store = round_trip(&f.store);
        assert_eq!(store, f.store);
        let error = ApplyResult::Error(ErrorReply::bad_request("no"));
        store.sessions.insert(
            8,
            Session {
                last_seq: 1,
                bytes: session_bytes(&error),
                result: Arc::new(error),
                last_used_index: 6,
                last_used_ts_ms: ts + 5,
            },
        );
        let deleted = ApplyResult::Delete(DeleteReply {
            key: "k".into(),
            deleted: true,
            index: 2,
        });
        store.sessions.insert(
            7,
            Session {
                last_seq: 1,
                bytes: session_bytes(&deleted),
                result: Arc::new(deleted),
                last_used_index: 2,
                last_used_ts_ms: ts,
            },
        );
        let lines = snapshot_lines(&store);
        assert!(
            lines[6].contains(r#""reply":{"type":"DELETE","key":"k","deleted":true,"index":2}"#)
        );
        assert!(
            lines[7].contains(r#""reply":{"type":"ERROR","code":"BAD_REQUEST","message":"no"}"#)
        );
        // (These two break rules restore checks; the point here is only
        // that the replies parse.)
        for line in &lines[3..] {
            serde_json::from_str::<SessionLineIn>(line).expect(line);
        }
    }

    #[test]
    fn the_same_entries_give_byte_identical_snapshots() {
        let log = mixed_log(3_000);
        let mut a = KvStore::new();
        a.session_timeout_ms = 200_000;
        let mut b = a.clone();
        apply_all(&mut a, &log);
        // b also sees replays of entries it applied, as after a restart.
        for (i, entry) in log.iter().enumerate() {
            b.apply(entry);
            if i % 97 == 0 {
                apply_all(&mut b, &log[i.saturating_sub(5)..=i]);
            }
        }
        let lines = snapshot_lines(&a);
        assert_eq!(lines, snapshot_lines(&b));
        // And a store rebuilt from a snapshot taken half-way, then fed the
        // rest.
        let mut c = KvStore::new();
        c.session_timeout_ms = 200_000;
        apply_all(&mut c, &log[..1_234]);
        let mut c = round_trip(&c);
        apply_all(&mut c, &log[1_234..]);
        assert_eq!(snapshot_lines(&c), lines);
        // Keys come in key order, then sessions in client order.
        let keys: Vec<String> = lines[1..=a.len()]
            .iter()
            .map(|line| {
                let key: KeyLine = serde_json::from_str(line).expect(line);
                key.k.into_owned()
            })
            .collect();
        assert_eq!(keys, a.keys("", usize::MAX));
        let clients: Vec<u64> = lines[1 + a.len()..]
            .iter()
            .map(|line| {
                let session: SessionLineIn = serde_json::from_str(line).expect(line);
                session.client_id
            })
            .collect();
        assert_eq!(clients.len(), a.session_count());
        assert!(clients.windows(2).all(|w| w[0] < w[1]), "{clients:?}");
    }

    #[test]
    fn restore_rejects_malformed_snapshots_naming_the_line() {
        let mut f = Feed::new();
        let c1 = f.register_at(1_000); // 1
        f.session(c1, 1, 1_000, set("a", "1")); // 2
        let c3 = f.register_at(2_000); // 3
        f.session(c3, 1, 2_000, set("b", "2")); // 4
        f.plain_at(delete("zz"), 3_000); // 5
        let good = snapshot_lines(&f.store);
        assert_eq!(good.len(), 5, "{good:#?}");
        assert_eq!(restore_lines(&good), Ok(f.store.clone()));
        let store_line = good[0].clone();
        let c1 = good[3].clone();
        let c2 = good[4].clone();

        let with = |i: usize, line: &str| {
            let mut lines = good.clone();
            lines[i] = line.to_owned();
            lines
        };
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases: Vec<(&str, Vec<String>, &str)> = vec![
            ("empty", vec![], "line 1: missing"),
            (
                "no store line",
                good[1..].to_vec(),
                "line 1: not a store line",
            ),
            ("garbage", with(2, "not json"), "line 3: not a key line"),
            ("blank", with(2, ""), "line 3"),
            ("deeply nested", with(1, &deep), "line 2"),
            (
                "deeply nested in a reply",
                with(4, &c2.replace(r#""key":"b""#, &format!(r#""key":{deep}"#))),
                "line 5: not a session line",
            ),
            (
                "a key line where a session goes",
                with(3, &good[1]),
                "line 4: not a session line",
            ),
            (
                "unknown field",
                with(1, r#"{"k":"a","v":"1","x":0}"#),
                "line 2",
            ),
            ("key not a string", with(1, r#"{"k":1,"v":"1"}"#), "line 2"),
            ("truncated", good[..4].to_vec(), "line 5: missing"),
            ("only the store line", good[..1].to_vec(), "line 2: missing"),
            (
                "extra line",
                [good.clone(), vec![c2.clone()]].concat(),
                "line 6: unexpected",
            ),
            (
                "extra blank line",
                [good.clone(), vec![String::new()]].concat(),
                "line 6",
            ),
            (
                "another format",
                with(0, &store_line.replace(r#""format":2"#, r#""format":3"#)),
                "line 1: format 3",
            ),
            (
                "format 1, from before sessions were registered",
                with(0, &store_line.replace(r#""format":2"#, r#""format":1"#)),
                "line 1: format 1 is not supported (this build reads format 2)",
            ),
            (
                "missing store field",
                with(0, &store_line.replace(r#""clock_ms":3000,"#, "")),
                "line 1",
            ),
            (
                "keys out of order",
                with(2, r#"{"k":"0","v":"2"}"#),
                "line 3: key \"0\" is out of order",
            ),
            ("duplicate key", with(2, &good[1]), "line 3"),
            ("duplicate session", with(4, &good[3]), "line 5"),
            (
                "used after the clock",
                with(
                    4,
                    &c2.replace(r#""last_used_ts_ms":2000"#, r#""last_used_ts_ms":3001"#),
                ),
                "line 5",
            ),
            (
                "used after last_applied",
                with(
                    4,
                    &c2.replace(r#""last_used_index":4"#, r#""last_used_index":6"#),
                ),
                "line 5",
            ),
            (
                "two sessions at one index",
                with(
                    3,
                    &c1.replace(r#""last_used_index":2"#, r#""last_used_index":4"#),
                ),
                "line 5: last used at index 4, like the session on line 4",
            ),
            (
                "log time running backwards",
                with(
                    4,
                    &c2.replace(r#""last_used_ts_ms":2000"#, r#""last_used_ts_ms":500"#),
                ),
                "line 5: last used at index 4, time 500",
            ),
            (
                "client 0",
                with(3, &c1.replace(r#""client_id":1"#, r#""client_id":0"#)),
                "line 4: client 0 was last used at index 2: before it was registered",
            ),
            (
                "registered after its last use",
                with(4, &c2.replace(r#""client_id":3"#, r#""client_id":5"#)),
                "line 5: client 5 was last used at index 4: before it was registered",
            ),
            (
                "a client-chosen id, as format 1 had",
                with(4, &c2.replace(r#""client_id":3"#, r#""client_id":"c3""#)),
                "line 5: not a session line",
            ),
            (
                "a written session holding its registration's reply",
                with(
                    4,
                    &c2.replace(
                        r#""reply":{"type":"SET","key":"b","index":4}"#,
                        r#""reply":{"type":"REGISTER_CLIENT","client_id":3}"#,
                    ),
                ),
                "line 5: client 3 has last_seq 1 with a REGISTER_CLIENT reply",
            ),
            (
                "an unwritten session holding another reply",
                with(4, &c2.replace(r#""last_seq":1"#, r#""last_seq":0"#)),
                "line 5: client 3 has last_seq 0 with a SET reply",
            ),
            (
                "another session's registration reply",
                with(
                    4,
                    &c2.replace(r#""last_seq":1"#, r#""last_seq":0"#).replace(
                        r#""reply":{"type":"SET","key":"b","index":4}"#,
                        r#""reply":{"type":"REGISTER_CLIENT","client_id":1}"#,
                    ),
                ),
                "line 5: client 3 has last_seq 0 with a REGISTER_CLIENT reply",
            ),
            (
                "unknown reply type",
                with(4, &c2.replace(r#""type":"SET""#, r#""type":"GET""#)),
                "line 5",
            ),
            (
                "over the session cap",
                with(
                    0,
                    &store_line.replace(r#""max_sessions":100000"#, r#""max_sessions":1"#),
                ),
                "line 1: its 2 sessions",
            ),
            (
                "a count far beyond the lines",
                with(
                    0,
                    &store_line.replace(r#""keys":2"#, &format!(r#""keys":{}"#, u64::MAX)),
                ),
                "line 4: not a key line",
            ),
        ];
        for (what, lines, expected) in cases {
            match restore_lines(&lines) {
                Ok(_) => panic!("{what}: restored"),
                Err(e) => assert!(e.contains(expected), "{what}: {e}"),
            }
        }

        // A read error is reported with its line.
        let lines = vec![Ok(store_line), Err("disk on fire")];
        let e = KvStore::restore(lines.into_iter()).expect_err("a read error");
        assert!(e.contains("line 2: cannot read it: disk on fire"), "{e}");
    }

    #[test]
    fn approximate_bytes_follows_keys_values_and_sessions() {
        let mut f = Feed::new();
        assert_eq!(f.store.approximate_bytes(), 0);
        let c1 = f.register();
        assert_eq!(f.store.approximate_bytes(), SESSION_OVERHEAD_BYTES);
        f.plain_at(delete("nothing"), SESSION_TIMEOUT_MS);
        assert_eq!(f.store.approximate_bytes(), 0);
        assert_eq!(
            error_code(&f.session(c1, 1, SESSION_TIMEOUT_MS, set("k", "v"))),
            ErrorCode::SessionExpired
        );
        let mut f = Feed::new();
        f.plain(set("ab", "cde"));
        assert_eq!(f.store.approximate_bytes(), 5);
        f.plain(set("ab", "x"));
        assert_eq!(f.store.approximate_bytes(), 3);
        f.plain(cas("ab", Some("x"), Some("xyz")));
        assert_eq!(f.store.approximate_bytes(), 5);
        let c1 = f.register();
        f.session(c1, 1, 0, set("k", "v"));
        assert_eq!(
            f.store.approximate_bytes(),
            5 + 2 + SESSION_OVERHEAD_BYTES + "k".len()
        );
        f.plain(delete("ab"));
        f.plain(cas("k", Some("v"), None));
        f.plain_at(delete("nothing"), SESSION_TIMEOUT_MS);
        assert_eq!(f.store.session_count(), 0);
        assert_eq!(f.store.approximate_bytes(), 0);

        // Over a long mixed log it always matches a recount.
        let mut store = KvStore::new();
        store.session_timeout_ms = 200_000;
        for entry in mixed_log(3_000) {
            store.apply(&entry);
            let data: usize = store.data.iter().map(|(k, v)| k.len() + v.len()).sum();
            let sessions: usize = store.sessions.values().map(|s| s.bytes).sum();
            assert_eq!(store.approximate_bytes(), data + sessions);
        }
        assert!(store.approximate_bytes() > 0);
        assert_eq!(
            round_trip(&store).approximate_bytes(),
            store.approximate_bytes()
        );
    }
}
