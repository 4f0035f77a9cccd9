//! The state machine's tests: operations, sessions, the command codec and
//! snapshots, driven through `KvStore::apply` as the node drives it.

use std::io;
use std::sync::Arc;

use poncho_protocol::{
    decode_request, CasReply, CasRequest, ClientRequest, DeleteReply, DeleteRequest, Entry,
    EntryKind, ErrorCode, ErrorReply, RegisterClientReply, Request, SessionFields, SetReply,
    SetRequest,
};

use super::session::{session_bytes, Session, SESSION_OVERHEAD_BYTES};
use super::snapshot::{KeyLine, SessionLine};
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
        count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::StaleSequence)) > 0
    );
    assert!(count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::BadRequest)) > 0);
    assert!(count(&|r| matches!(r, ApplyResult::Cas(c) if c.swapped)) > 0);
    assert!(
        count(&|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::SessionExpired)) > 0
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
            assert!(results
                .iter()
                .flatten()
                .any(|r| matches!(r, ApplyResult::Error(e) if e.code == ErrorCode::StaleSequence)));
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
    assert!(lines[6].contains(r#""reply":{"type":"DELETE","key":"k","deleted":true,"index":2}"#));
    assert!(lines[7].contains(r#""reply":{"type":"ERROR","code":"BAD_REQUEST","message":"no"}"#));
    // (These two break rules restore checks; the point here is only
    // that the replies parse.)
    for line in &lines[3..] {
        serde_json::from_str::<SessionLine>(line).expect(line);
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
            let session: SessionLine = serde_json::from_str(line).expect(line);
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
