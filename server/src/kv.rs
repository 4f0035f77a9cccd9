//! The replicated key/value state machine.
//!
//! [`KvStore::apply`] takes committed log entries in index order and turns
//! each into the reply its client gets. Every node applies the same entries in
//! the same order, so the store must be a pure function of the log: it reads
//! no clock, draws no random numbers, and keeps everything in ordered maps so
//! no hash order can leak into a result (or, later, into a snapshot).
//!
//! # Exactly-once writes (Raft thesis 6.3)
//! A client that does not hear back retries, and the retry may reach a new
//! leader after the first attempt was already committed. A write that carries
//! `client_id` and `seq` is therefore applied at most once: the store keeps,
//! per client, the last `seq` it applied and that write's result.
//!
//! - `seq` equal to the last: the retry gets the cached result; nothing is
//!   applied again.
//! - `seq` below the last: [`ErrorCode::StaleSequence`]; nothing changes.
//! - `seq` above the last (or a client not seen before): applied and cached.
//!
//! Clients issue one write at a time per `client_id`, so one cached result per
//! client is enough.
//!
//! # Session expiry, deterministic
//! Sessions cannot be kept forever. The store's only clock is the `ts_ms` the
//! leader wrote into each command, taken as the maximum seen so far (leaders'
//! clocks may disagree a little, and the clock must never run backwards). A
//! session idle for [`SESSION_TIMEOUT_MS`] of that log time is dropped when a
//! later command is applied. [`MAX_SESSIONS`] and [`MAX_SESSION_BYTES`] bound
//! memory: past either, the least recently used session goes. Because the
//! clock, the order and the limits are all functions of the log, every node
//! drops the same sessions at the same index.
//!
//! A client whose session was dropped is a new client: a retry of its last
//! write would be applied again. Exactly-once therefore holds for retries
//! within [`SESSION_TIMEOUT_MS`] while the caps are not reached.

use std::collections::BTreeMap;
use std::ops::Bound;

use poncho_protocol::{
    CasReply, ClientRequest, DeleteReply, Entry, EntryKind, ErrorCode, ErrorReply, SessionFields,
    SetReply, MAX_CLIENT_ID_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use serde::{Deserialize, Serialize};

/// How long a client session survives without use, in log time (the maximum
/// `ts_ms` applied so far). Ten minutes is far longer than any client keeps
/// retrying one write (the shell gives up after seconds), yet short enough
/// that sessions of clients that went away do not pile up.
///
/// These limits are part of the state machine's definition: every node must
/// use the same values, or nodes would drop different sessions and a retry
/// could be applied on one node and deduplicated on another.
pub const SESSION_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// The most sessions kept at once. A session costs about 100 bytes plus its
/// cached reply, so 100,000 typical sessions take on the order of 20 MB; past
/// that, the least recently used is dropped, so a flood of one-off client ids
/// cannot grow memory without bound within the timeout.
pub const MAX_SESSIONS: usize = 100_000;

/// The most bytes of cached replies (client id, key and CAS value, see
/// `session_bytes`) kept at once. A CAS reply can carry a 256 KiB value, so the
/// count cap alone would allow 25 GB; past this budget the least recently used
/// session is dropped.
pub const MAX_SESSION_BYTES: usize = 128 << 20;

/// Fixed bookkeeping charged to every session besides its strings: the maps'
/// entries, the sequence number and timestamps.
const SESSION_OVERHEAD_BYTES: usize = 96;

// The session just used must always fit, or the budget would evict it at once.
const _: () = assert!(MAX_SESSIONS >= 1);
const _: () = assert!(
    MAX_SESSION_BYTES
        >= 16 * (SESSION_OVERHEAD_BYTES + MAX_CLIENT_ID_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES)
);

/// A write as stored in a log entry's `data` (JSON text). The leader builds it
/// from a client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Leader's wall clock in ms when proposed; the only notion of time the
    /// state machine has (used for session expiry), so expiry is deterministic
    /// because it is in the log.
    pub ts_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Builds a command from a client write request; `None` for reads,
    /// HEALTHCHECK, STATUS and KEYS, which never enter the log.
    pub fn from_request(request: &ClientRequest, ts_ms: u64) -> Option<Command> {
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
    /// A stale sequence number, or an entry whose data is not a valid command.
    Error(ErrorReply),
}

impl ApplyResult {
    /// The reply's wire `msg_type`.
    pub fn msg_type(&self) -> &'static str {
        match self {
            ApplyResult::Set(_) => "SET",
            ApplyResult::Delete(_) => "DELETE",
            ApplyResult::Cas(_) => "CAS",
            ApplyResult::Error(_) => "ERROR",
        }
    }
}

/// One client's exactly-once state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    last_seq: u64,
    /// The reply to `last_seq`, returned again to a retry.
    result: ApplyResult,
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
    data: BTreeMap<String, String>,
    /// An ordered map rather than a HashMap, so nothing derived from the
    /// sessions (today: eviction; later: snapshots) can depend on hash order.
    sessions: BTreeMap<String, Session>,
    /// Client ids by the index that last used them, oldest first. The log
    /// clock never decreases along the log, so this order is also the order
    /// of `last_used_ts_ms`: the front is both the least recently used session
    /// and the first to expire, and expiry and eviction only ever pop it.
    sessions_by_use: BTreeMap<u64, String>,
    session_bytes: usize,
    last_applied: u64,
    /// The largest `ts_ms` applied so far: the log clock.
    clock_ms: u64,
    // The limits, fields so tests can shrink them; always the constants
    // otherwise.
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
        KvStore {
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
            sessions_by_use: BTreeMap::new(),
            session_bytes: 0,
            last_applied: 0,
            clock_ms: 0,
            session_timeout_ms: SESSION_TIMEOUT_MS,
            max_sessions: MAX_SESSIONS,
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
        let result = match (command.client_id, command.seq) {
            (None, None) => self.apply_op(index, command.op),
            (Some(client_id), Some(seq)) => {
                self.apply_in_session(index, client_id, seq, command.op)
            }
            _ => ApplyResult::Error(ErrorReply::bad_request(
                "client_id and seq go together; the command was not applied",
            )),
        };
        self.expire_sessions();
        result
    }

    fn apply_in_session(&mut self, index: u64, client_id: String, seq: u64, op: Op) -> ApplyResult {
        if let Some(session) = self.sessions.get(&client_id) {
            if seq < session.last_seq {
                return ApplyResult::Error(ErrorReply::new(
                    ErrorCode::StaleSequence,
                    format!(
                        "client {client_id:?} sent seq {seq}, but seq {} was already applied; \
                         the command was not applied (use a larger seq for a new write)",
                        session.last_seq
                    ),
                ));
            }
            if seq == session.last_seq {
                // A retry: answer as the first time, and count it as use.
                let result = session.result.clone();
                self.touch_session(&client_id, index);
                return result;
            }
        }
        let result = self.apply_op(index, op);
        self.record_session(client_id, seq, index, result.clone());
        result
    }

    fn apply_op(&mut self, index: u64, op: Op) -> ApplyResult {
        match op {
            Op::Set { key, value } => {
                self.data.insert(key.clone(), value);
                ApplyResult::Set(SetReply { key, index })
            }
            Op::Delete { key } => {
                let deleted = self.data.remove(&key).is_some();
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
                let swapped = self.data.get(&key).map(String::as_str) == expected.as_deref();
                if swapped {
                    match &value {
                        Some(v) => self.data.insert(key.clone(), v.clone()),
                        None => self.data.remove(&key),
                    };
                }
                let current = self.data.get(&key).cloned();
                ApplyResult::Cas(CasReply {
                    key,
                    swapped,
                    current,
                    index,
                })
            }
        }
    }

    /// Marks a session used by the entry at `index`: it moves to the back of
    /// `sessions_by_use`.
    fn touch_session(&mut self, client_id: &str, index: u64) {
        let Some(session) = self.sessions.get_mut(client_id) else {
            return;
        };
        let moved = self.sessions_by_use.remove(&session.last_used_index);
        debug_assert_eq!(moved.as_deref(), Some(client_id));
        session.last_used_index = index;
        session.last_used_ts_ms = self.clock_ms;
        self.sessions_by_use.insert(index, client_id.to_owned());
    }

    /// Stores `result` as the reply to `client_id`'s `seq`, then drops least
    /// recently used sessions while over a cap.
    fn record_session(&mut self, client_id: String, seq: u64, index: u64, result: ApplyResult) {
        let bytes = session_bytes(&client_id, &result);
        let session = Session {
            last_seq: seq,
            result,
            last_used_index: index,
            last_used_ts_ms: self.clock_ms,
            bytes,
        };
        if let Some(old) = self.sessions.insert(client_id.clone(), session) {
            self.sessions_by_use.remove(&old.last_used_index);
            self.session_bytes -= old.bytes;
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
        while let Some((_, client_id)) = self.sessions_by_use.first_key_value() {
            let idle_ms = self.clock_ms - self.sessions[client_id].last_used_ts_ms;
            if idle_ms < self.session_timeout_ms {
                break;
            }
            self.drop_least_recently_used();
        }
    }

    fn drop_least_recently_used(&mut self) {
        if let Some((_, client_id)) = self.sessions_by_use.pop_first() {
            let session = self
                .sessions
                .remove(&client_id)
                .expect("every entry of sessions_by_use names a session");
            self.session_bytes -= session.bytes;
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Sorted keys with this prefix, at most `limit` of them.
    pub fn keys(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.data
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
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
}

/// What a session counts against `MAX_SESSION_BYTES`: its strings plus a
/// fixed overhead.
fn session_bytes(client_id: &str, result: &ApplyResult) -> usize {
    let reply_bytes = match result {
        ApplyResult::Set(r) => r.key.len(),
        ApplyResult::Delete(r) => r.key.len(),
        ApplyResult::Cas(r) => r.key.len() + r.current.as_ref().map_or(0, String::len),
        ApplyResult::Error(e) => e.message.len(),
    };
    SESSION_OVERHEAD_BYTES + client_id.len() + reply_bytes
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

        fn session(&mut self, client_id: &str, seq: u64, ts_ms: u64, op: Op) -> ApplyResult {
            self.command(Command {
                op,
                client_id: Some(client_id.into()),
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
        let first = f.session("c1", 1, 0, set("k", "from c1"));
        assert_eq!(first, set_reply("k", 1));
        f.plain(set("k", "from someone else"));
        // The retry of (c1, 1) arrives after another write to the key.
        assert_eq!(f.session("c1", 1, 0, set("k", "from c1")), first);
        assert_eq!(f.store.get("k"), Some("from someone else"));
        assert_eq!(f.store.last_applied(), 3);

        // A CAS retried after it succeeded must still report success, not
        // re-evaluate against the value it wrote.
        let swapped = f.session("c1", 2, 0, cas("n", None, Some("1")));
        assert_eq!(swapped, cas_reply("n", true, Some("1"), 4));
        assert_eq!(f.session("c1", 2, 0, cas("n", None, Some("1"))), swapped);
        // A DELETE retried reports `deleted: true` although the key is gone.
        let deleted = f.session("c1", 3, 0, delete("n"));
        assert_eq!(f.session("c1", 3, 0, delete("n")), deleted);
        assert!(matches!(
            deleted,
            ApplyResult::Delete(DeleteReply { deleted: true, .. })
        ));

        // The next seq applies again; another client's seq 1 is its own.
        assert_eq!(
            f.session("c1", 4, 0, set("k", "c1 again")),
            set_reply("k", 8)
        );
        assert_eq!(f.session("c2", 1, 0, set("k", "c2")), set_reply("k", 9));
        assert_eq!(f.store.get("k"), Some("c2"));
        assert_eq!(f.store.session_count(), 2);
    }

    #[test]
    fn an_older_seq_is_refused_with_stale_sequence_and_changes_nothing() {
        let mut f = Feed::new();
        f.session("c1", 5, 0, set("k", "five"));
        let before = f.store.clone();
        let stale = f.session("c1", 4, 0, set("k", "four"));
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
        assert_eq!(f.session("c1", 5, 0, set("k", "x")), set_reply("k", 1));
    }

    #[test]
    fn client_id_without_seq_is_refused_without_applying() {
        let mut f = Feed::new();
        let r = f.command(Command {
            op: set("k", "v"),
            client_id: Some("c1".into()),
            seq: None,
            ts_ms: 0,
        });
        assert_eq!(error_code(&r), ErrorCode::BadRequest);
        assert_eq!(f.store.get("k"), None);
        assert_eq!(f.store.session_count(), 0);
    }

    #[test]
    fn sessions_expire_after_the_timeout_in_log_time() {
        let minute = 60_000;
        let mut f = Feed::new();
        f.session("old", 1, 0, set("k", "old"));
        f.session("young", 1, 5 * minute, set("k", "young"));
        // A leader with a slower clock cannot move log time backwards: the
        // clock stays at 5 minutes, so nothing expires yet...
        f.plain_at(set("x", "1"), 3 * minute);
        assert_eq!(f.store.session_count(), 2);
        // ...and one millisecond short of the timeout is still alive.
        f.plain_at(set("x", "2"), SESSION_TIMEOUT_MS - 1);
        assert_eq!(f.store.session_count(), 2);
        f.plain_at(set("x", "3"), SESSION_TIMEOUT_MS);
        assert_eq!(f.store.session_count(), 1, "idle for the timeout: dropped");
        // The expired client is new again: its retry is applied a second time.
        assert_eq!(
            f.session("old", 1, SESSION_TIMEOUT_MS, set("k", "old")),
            set_reply("k", 6)
        );
        // Use keeps a session alive: "young" used again at 14 minutes lives
        // until 24.
        f.session("young", 2, 14 * minute, set("y", "1"));
        f.plain_at(set("x", "4"), 23 * minute);
        assert!(f.store.sessions.contains_key("young"));
        assert!(
            !f.store.sessions.contains_key("old"),
            "idle since 10 minutes"
        );
        f.plain_at(set("x", "5"), 24 * minute);
        assert_eq!(f.store.session_count(), 0);
        // Bookkeeping went with them.
        assert!(f.store.sessions_by_use.is_empty());
        assert_eq!(f.store.session_bytes, 0);
    }

    #[test]
    fn a_retry_refreshes_its_session() {
        let minute = 60_000;
        let mut f = Feed::new();
        f.session("a", 1, 0, set("k", "a"));
        f.session("b", 1, 0, set("k", "b"));
        // "a" retries at 9 minutes; at 10 only "b" has been idle that long.
        let retry = f.session("a", 1, 9 * minute, set("k", "a"));
        assert_eq!(retry, set_reply("k", 1));
        f.plain_at(set("x", "1"), 10 * minute);
        assert!(f.store.sessions.contains_key("a"));
        assert!(!f.store.sessions.contains_key("b"));
    }

    #[test]
    fn the_session_cap_drops_the_least_recently_used() {
        let mut f = Feed::new();
        for i in 0..MAX_SESSIONS {
            f.session(&format!("c{i}"), 1, 0, set("k", "v"));
        }
        assert_eq!(f.store.session_count(), MAX_SESSIONS);
        // c0 is the oldest, but using it again makes c1 the least recent.
        f.session("c0", 2, 0, set("k", "v"));
        f.session("new", 1, 0, set("k", "v"));
        assert_eq!(f.store.session_count(), MAX_SESSIONS);
        assert!(f.store.sessions.contains_key("c0"));
        assert!(!f.store.sessions.contains_key("c1"));
        assert!(f.store.sessions.contains_key("c2"));
        assert!(f.store.sessions.contains_key("new"));
        assert_eq!(f.store.sessions_by_use.len(), MAX_SESSIONS);
        // c1 is now unknown, so its seq 1 is applied again rather than
        // answered from the cache.
        let index = f.store.last_applied() + 1;
        assert_eq!(f.session("c1", 1, 0, set("k", "v")), set_reply("k", index));
        assert!(!f.store.sessions.contains_key("c2"));
    }

    #[test]
    fn the_byte_budget_drops_the_least_recently_used() {
        let mut f = Feed::new();
        let value = "v".repeat(1000);
        let one_session = SESSION_OVERHEAD_BYTES + 2 + 1 + value.len(); // "cN", "k", current
        f.store.max_session_bytes = 3 * one_session;
        for i in 0..3 {
            f.session(&format!("c{i}"), 1, 0, cas("k", None, Some(&value)));
            f.plain(delete("k"));
        }
        assert_eq!(f.store.session_count(), 3);
        assert_eq!(f.store.session_bytes, 3 * one_session);
        f.session("c3", 1, 0, cas("k", None, Some(&value)));
        assert_eq!(f.store.session_count(), 3);
        assert!(!f.store.sessions.contains_key("c0"));
        assert_eq!(f.store.session_bytes, 3 * one_session);
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
        (1..=len)
            .map(|index| {
                let r = next();
                let key = format!("k{}", r % 13);
                let ts_ms = index * 20_000 + (r % 7) * 1_000; // leaders' clocks jitter
                let op = match r % 5 {
                    0 => delete(&key),
                    1 => cas(&key, Some("v1"), None),
                    2 => cas(&key, None, Some(&format!("v{}", r % 3))),
                    _ => set(&key, &format!("v{}", r % 3)),
                };
                let client = (r >> 8) as usize % 10;
                let (client_id, seq) = if client < seqs.len() {
                    // Mostly a new seq, sometimes a retry or a stale one.
                    match (r >> 16) % 6 {
                        0 => {}
                        1 => seqs[client] = seqs[client].saturating_sub(1),
                        _ => seqs[client] += 1,
                    }
                    (Some(format!("client-{client}")), Some(seqs[client].max(1)))
                } else {
                    (None, None)
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
        assert!(results_a.iter().any(Option::is_none), "no-ops");
        assert!(!a.is_empty());
        assert!(
            a.session_count() < 8,
            "sessions expired: {}",
            a.session_count()
        );
        assert_eq!(a.sessions.len(), a.sessions_by_use.len());
        let bytes: usize = a.sessions.values().map(|s| s.bytes).sum();
        assert_eq!(bytes, a.session_bytes);
    }

    #[test]
    fn a_noop_changes_nothing_but_advances_last_applied() {
        let mut f = Feed::new();
        f.session("c1", 1, 7, set("k", "v"));
        let before = f.store.clone();
        assert_eq!(f.store.apply(&noop_entry(2)), None);
        assert_eq!(f.store.last_applied(), 2);
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
            client_id: Some("c1".into()),
            seq: Some(3),
            ts_ms: 1_700_000_000_000,
        };
        let text = command.encode();
        assert_eq!(
            text,
            "{\"op\":{\"type\":\"CAS\",\"key\":\"k\",\"expected\":null,\"value\":\"v\"},\
             \"client_id\":\"c1\",\"seq\":3,\"ts_ms\":1700000000000}"
        );
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
            client_id: Some("c1".into()),
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
                client_id: Some("c1".into()),
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
        // End to end: a SET line, through the log, to its reply.
        let line =
            r#"{"msg_type":"SET","payload":{"key":"k","value":"v","client_id":"c","seq":1}}"#;
        let command = Command::from_request(&request(line), 1).unwrap();
        let mut store = KvStore::new();
        assert_eq!(
            store.apply(&command_entry(1, &command)),
            Some(set_reply("k", 1))
        );
        assert_eq!(store.session_count(), 1);
    }
}
