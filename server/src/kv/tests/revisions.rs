//! Revisions (issue 14): every change to a key has its entry's index as its
//! revision, per key `create_revision`, `mod_revision` and `version`, and
//! `RANGE` over keys, prefixes and ranges with paging.

use poncho_protocol::{ErrorCode, ErrorReply, KeyValue, RangeRequest, MAX_RANGE_LIMIT};

use super::*;

fn kv(store: &KvStore, key: &str) -> Option<(u64, u64, u64)> {
    let r = store.get_reply(key.to_string());
    assert_eq!(r.revision, Some(store.revision()));
    Some((r.create_revision?, r.mod_revision?, r.version?))
}

#[test]
fn a_change_moves_the_revision_to_its_index_and_anything_else_does_not() {
    let mut f = Feed::new();
    assert_eq!(f.store.revision(), 0);
    f.plain(set("a", "1")); // 1
    assert_eq!(
        (f.store.revision(), kv(&f.store, "a")),
        (1, Some((1, 1, 1)))
    );
    f.plain(set("a", "2")); // 2
    assert_eq!(kv(&f.store, "a"), Some((1, 2, 2)));
    f.store.apply(&noop_entry(3));
    f.plain(delete("missing")); // 4: deleted nothing
    f.plain(cas("a", Some("no"), Some("x"))); // 5: did not swap
    f.register(); // 6
    assert_eq!(f.store.revision(), 2, "no key changed since index 2");
    f.plain(cas("a", Some("2"), Some("3"))); // 7
    assert_eq!(
        (f.store.revision(), kv(&f.store, "a")),
        (7, Some((1, 7, 3)))
    );
    f.plain(delete("a")); // 8
    assert_eq!((f.store.revision(), kv(&f.store, "a")), (8, None));
    // Written again, the key starts a new history.
    f.plain(set("a", "new")); // 9
    assert_eq!(kv(&f.store, "a"), Some((9, 9, 1)));
    let c = f.register(); // 10
    f.session(c, 1, 0, set("b", "1")); // 11
    assert_eq!(
        (f.store.revision(), kv(&f.store, "b")),
        (11, Some((11, 11, 1)))
    );
    // A retried write in a session is not applied again.
    f.session(c, 1, 0, set("b", "1")); // 12
    assert_eq!(
        (f.store.revision(), kv(&f.store, "b")),
        (11, Some((11, 11, 1)))
    );
}

#[test]
fn revisions_survive_a_snapshot_and_an_old_format_reads_as_written_once_at_its_index() {
    let mut f = Feed::new();
    f.plain(set("a", "1"));
    f.plain(set("a", "2"));
    f.plain(set("b", "1"));
    f.plain(delete("missing"));
    let restored = round_trip(&f.store);
    assert_eq!(restored.revision(), 3);
    assert_eq!(kv(&restored, "a"), Some((1, 2, 2)));
    assert_eq!(restored, f.store);
    // Format 3, before revisions.
    let lines = [
        r#"{"format":3,"last_applied":9,"clock_ms":5,"session_timeout_ms":600000,"max_sessions":100000,"max_session_bytes":134217728,"keys":1,"sessions":0,"auth_enabled":false,"roles":0,"users":0}"#.to_string(),
        r#"{"k":"a","v":"1"}"#.to_string(),
    ];
    let old = restore_lines(&lines).expect("format 3 reads");
    assert_eq!((old.revision(), kv(&old, "a")), (9, Some((9, 9, 1))));
}

fn store_with(keys: &[&str]) -> KvStore {
    let mut f = Feed::new();
    for k in keys {
        f.plain(set(k, &format!("v-{k}")));
    }
    f.store
}

fn keys_of(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|k| k.key.as_str()).collect()
}

#[test]
fn a_range_reads_one_key_a_prefix_or_from_key_to_range_end() {
    let store = store_with(&["a", "b", "b/1", "b/2", "c", "d"]);
    let read = |r: RangeRequest| store.range(None, &r).expect("current");
    let one = read(RangeRequest {
        key: "b".into(),
        ..RangeRequest::default()
    });
    assert_eq!(
        (keys_of(&one.kvs), one.count, one.more),
        (vec!["b"], 1, false)
    );
    assert_eq!(one.kvs[0].value.as_deref(), Some("v-b"));
    assert_eq!(one.revision, 6);
    let prefix = read(RangeRequest::prefix("b/"));
    assert_eq!(keys_of(&prefix.kvs), ["b/1", "b/2"]);
    let range = read(RangeRequest {
        key: "b".into(),
        range_end: Some("d".into()),
        ..RangeRequest::default()
    });
    assert_eq!(keys_of(&range.kvs), ["b", "b/1", "b/2", "c"]);
    let to_the_end = read(RangeRequest {
        key: "c".into(),
        range_end: Some(String::new()),
        ..RangeRequest::default()
    });
    assert_eq!(keys_of(&to_the_end.kvs), ["c", "d"]);
    let all = read(RangeRequest::prefix(""));
    assert_eq!(all.count, 6);
    let missing = read(RangeRequest {
        key: "zz".into(),
        ..RangeRequest::default()
    });
    assert_eq!((missing.kvs.len(), missing.count), (0, 0));
}

#[test]
fn pages_say_where_the_next_starts_and_together_hold_every_key_once() {
    let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let store = store_with(&refs);
    let mut request = RangeRequest {
        limit: Some(10),
        ..RangeRequest::prefix("k")
    };
    let mut seen = Vec::new();
    let mut counts = Vec::new();
    loop {
        let page = store.range(None, &request).expect("current");
        assert!(page.kvs.len() <= 10);
        counts.push(page.count);
        seen.extend(page.kvs.iter().map(|k| k.key.clone()));
        assert_eq!(page.more, page.next_key.is_some());
        match page.next_key {
            Some(next) => request.from = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, keys);
    // The count is of the keys from where the page starts.
    assert_eq!(counts, [25, 15, 5]);
}

#[test]
fn keys_only_count_only_and_the_limits() {
    let store = store_with(&["a", "b", "c"]);
    let keys_only = store
        .range(
            None,
            &RangeRequest {
                keys_only: true,
                ..RangeRequest::prefix("")
            },
        )
        .expect("current");
    assert!(keys_only.kvs.iter().all(|k| k.value.is_none()));
    assert_eq!(keys_only.kvs.len(), 3);
    let count = store
        .range(
            None,
            &RangeRequest {
                count_only: true,
                ..RangeRequest::prefix("")
            },
        )
        .expect("current");
    assert_eq!((count.kvs.len(), count.count, count.more), (0, 3, false));
    // More keys than one reply may hold: cut, and said.
    let many: Vec<String> = (0..MAX_RANGE_LIMIT + 5)
        .map(|i| format!("{i:06}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let big = store_with(&refs);
    let page = big
        .range(
            None,
            &RangeRequest {
                limit: Some(u64::MAX),
                ..RangeRequest::prefix("")
            },
        )
        .expect("current");
    assert_eq!(page.kvs.len() as u64, MAX_RANGE_LIMIT);
    assert!(page.more);
    assert_eq!(
        page.next_key.as_deref(),
        Some(many[MAX_RANGE_LIMIT as usize].as_str())
    );
    assert_eq!(page.count, MAX_RANGE_LIMIT + 5);
}

#[test]
fn a_reply_stops_at_its_byte_limit_but_always_holds_one_key() {
    let big = "x".repeat(poncho_protocol::MAX_VALUE_BYTES);
    let mut f = Feed::new();
    let n = poncho_protocol::MAX_RANGE_REPLY_BYTES / big.len() + 3;
    for i in 0..n {
        f.plain(set(&format!("k{i:03}"), &big));
    }
    let page = f
        .store
        .range(None, &RangeRequest::prefix("k"))
        .expect("current");
    let bytes: usize = page
        .kvs
        .iter()
        .map(|k| k.key.len() + k.value.as_ref().map_or(0, String::len))
        .sum();
    assert!(bytes <= poncho_protocol::MAX_RANGE_REPLY_BYTES, "{bytes}");
    assert!(page.more && page.kvs.len() < n);
    // Keys only: the values do not count.
    let keys = f
        .store
        .range(
            None,
            &RangeRequest {
                keys_only: true,
                ..RangeRequest::prefix("k")
            },
        )
        .expect("current");
    assert_eq!((keys.kvs.len(), keys.more), (n, false));
}

fn at(
    store: &KvStore,
    rev: u64,
    request: RangeRequest,
) -> Result<Vec<(String, String, u64)>, ErrorReply> {
    let reply = store.range(
        None,
        &RangeRequest {
            rev: Some(rev),
            ..request
        },
    )?;
    assert_eq!(
        reply.revision,
        if rev == 0 { store.revision() } else { rev }
    );
    Ok(reply
        .kvs
        .into_iter()
        .map(|k| (k.key, k.value.unwrap_or_default(), k.version))
        .collect())
}

fn kvs(items: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    items
        .iter()
        .map(|(k, v, n)| (k.to_string(), v.to_string(), *n))
        .collect()
}

#[test]
fn a_read_at_a_past_revision_sees_the_keys_as_they_were() {
    let mut f = Feed::new();
    f.plain(set("a", "1")); // 1
    f.plain(set("b", "1")); // 2
    f.plain(set("a", "2")); // 3
    f.plain(delete("b")); // 4
    f.plain(set("c", "1")); // 5
    f.plain(set("b", "again")); // 6
    let all = || RangeRequest::prefix("");
    assert_eq!(
        at(&f.store, 0, all()),
        Ok(kvs(&[("a", "2", 2), ("b", "again", 1), ("c", "1", 1)]))
    );
    assert_eq!(at(&f.store, 1, all()), Ok(kvs(&[("a", "1", 1)])));
    assert_eq!(
        at(&f.store, 2, all()),
        Ok(kvs(&[("a", "1", 1), ("b", "1", 1)]))
    );
    assert_eq!(
        at(&f.store, 3, all()),
        Ok(kvs(&[("a", "2", 2), ("b", "1", 1)]))
    );
    assert_eq!(at(&f.store, 4, all()), Ok(kvs(&[("a", "2", 2)])));
    assert_eq!(
        at(&f.store, 5, all()),
        Ok(kvs(&[("a", "2", 2), ("c", "1", 1)]))
    );
    // One key, a range, paging and counting work at a past revision too.
    let one = RangeRequest {
        key: "b".into(),
        ..RangeRequest::default()
    };
    assert_eq!(at(&f.store, 3, one.clone()), Ok(kvs(&[("b", "1", 1)])));
    assert_eq!(at(&f.store, 4, one), Ok(Vec::new()));
    let paged = f
        .store
        .range(
            None,
            &RangeRequest {
                rev: Some(3),
                limit: Some(1),
                ..all()
            },
        )
        .expect("held");
    assert_eq!((paged.count, paged.next_key.as_deref()), (2, Some("b")));
    // Ahead of now: refused.
    let future = at(&f.store, 7, all()).expect_err("ahead");
    assert_eq!(future.code, ErrorCode::FutureRevision);
}

#[test]
fn a_revision_the_history_no_longer_holds_is_refused_with_the_oldest_it_does() {
    let mut f = Feed::new();
    f.store.set_history_limits(3, usize::MAX);
    for i in 1..=6 {
        f.plain(set("k", &i.to_string()));
    }
    // Changes at 4, 5 and 6 are held: reads from revision 3 on.
    assert_eq!(f.store.history_window(), (3, 3));
    assert_eq!(
        at(&f.store, 3, RangeRequest::prefix("")),
        Ok(kvs(&[("k", "3", 3)]))
    );
    let old = at(&f.store, 2, RangeRequest::prefix("")).expect_err("compacted");
    assert_eq!(
        (old.code, old.compact_revision),
        (ErrorCode::Compacted, Some(3))
    );
    // By bytes: a change costs its strings and the overhead.
    f.store
        .set_history_limits(1000, 2 * super::super::history::EVENT_OVERHEAD_BYTES + 10);
    assert_eq!(f.store.history_window().1, 2);
    // A restored store holds no history: only its own revision reads.
    let restored = round_trip(&f.store);
    assert_eq!(restored.history_window(), (6, 0));
    assert!(at(&restored, 6, RangeRequest::prefix("")).is_ok());
    assert_eq!(
        at(&restored, 5, RangeRequest::prefix(""))
            .expect_err("before")
            .code,
        ErrorCode::Compacted
    );
}

#[test]
fn the_history_gives_each_change_with_the_key_before_and_after_it() {
    use poncho_protocol::EventType;
    let mut f = Feed::new();
    f.plain(set("a", "1")); // 1
    f.plain(set("a", "2")); // 2
    f.plain(delete("a")); // 3
    f.plain(set("a", "3")); // 4
    f.plain(set("b", "x")); // 5
    let changes = f.store.changes_from(1, 100).expect("held");
    // (revision, kind, value, version, create_revision, previous value)
    type Seen = (u64, EventType, Option<String>, u64, u64, Option<String>);
    let seen: Vec<Seen> = changes
        .iter()
        .map(|c| {
            let e = c.event(true);
            (
                c.revision,
                e.kind,
                e.kv.value.clone(),
                e.kv.version,
                e.kv.create_revision,
                e.prev_kv.and_then(|p| p.value),
            )
        })
        .collect();
    use EventType::{Delete, Put};
    assert_eq!(
        seen,
        vec![
            (1, Put, Some("1".into()), 1, 1, None),
            (2, Put, Some("2".into()), 2, 1, Some("1".into())),
            (3, Delete, None, 0, 0, Some("2".into())),
            (4, Put, Some("3".into()), 1, 4, None),
            (5, Put, Some("x".into()), 1, 5, None),
        ]
    );
    // A chunk in the middle is the same changes, whole revisions only.
    let middle = f.store.changes_from(2, 2).expect("held");
    assert_eq!(
        middle.iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // The put's after-state is what a read at its revision shows.
    let at2 = f
        .store
        .range(
            None,
            &RangeRequest {
                rev: Some(2),
                ..RangeRequest::prefix("a")
            },
        )
        .expect("held");
    assert_eq!(at2.kvs[0].version, 2);
    assert_eq!(at2.kvs[0].value.as_deref(), Some("2"));
}
