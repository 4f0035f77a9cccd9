//! Exactly-once sessions: retries, stale sequences, expiry and eviction.

use super::*;

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
            user: None,
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
