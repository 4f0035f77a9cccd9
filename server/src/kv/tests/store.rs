//! What SET, DELETE, CAS and KEYS do; no-ops, replays and bad entries;
//! determinism; the byte count.

use super::*;

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
            user: None,
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
        let data: usize = store
            .data
            .iter()
            .map(|(k, v)| k.len() + v.value.len())
            .sum();
        let sessions: usize = store.sessions.values().map(|s| s.bytes).sum();
        assert_eq!(store.approximate_bytes(), data + sessions);
    }
    assert!(store.approximate_bytes() > 0);
    assert_eq!(
        round_trip(&store).approximate_bytes(),
        store.approximate_bytes()
    );
}
