//! Snapshots: restore, isolation from later writes, the line format.

use super::*;

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
        user: None,
        ts_ms,
    };
    let plain_at = |ts_ms: u64, op: Op| Command {
        op,
        client_id: None,
        seq: None,
        user: None,
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
            r#"{"format":5,"last_applied":6,"clock_ms":1700000000005,"session_timeout_ms":600000,"max_sessions":100000,"max_session_bytes":134217728,"keys":2,"sessions":3,"auth_enabled":false,"roles":0,"users":0,"revision":4,"leases":0}"#,
            r#"{"k":"a","v":"1","c":2,"m":2,"ver":1}"#,
            "{\"k\":\"b\",\"v\":\"2\\n\\\"x\u{e9}\",\"c\":4,\"m\":4,\"ver\":1}",
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
            user: None,
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
            user: None,
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
            with(0, &store_line.replace(r#""format":5"#, r#""format":6"#)),
            "line 1: format 6",
        ),
        (
            "format 1, from before sessions were registered",
            with(0, &store_line.replace(r#""format":5"#, r#""format":1"#)),
            "line 1: format 1 is not supported (this build reads formats 2 to 5)",
        ),
        (
            "missing store field",
            with(0, &store_line.replace(r#""clock_ms":3000,"#, "")),
            "line 1",
        ),
        (
            "keys out of order",
            with(2, r#"{"k":"0","v":"2","c":4,"m":4,"ver":1}"#),
            "line 3: key \"0\" is out of order",
        ),
        (
            "a key without revisions in format 4",
            with(1, r#"{"k":"a","v":"1"}"#),
            "line 2: key \"a\" has revisions None/None/None",
        ),
        (
            "a key changed after the store's revision",
            with(1, r#"{"k":"a","v":"1","c":2,"m":5,"ver":2}"#),
            "line 2: key \"a\" has revisions",
        ),
        (
            "a key changed before it was created",
            with(1, r#"{"k":"a","v":"1","c":3,"m":2,"ver":2}"#),
            "line 2: key \"a\" has revisions",
        ),
        (
            "a key at version 0",
            with(1, r#"{"k":"a","v":"1","c":2,"m":2,"ver":0}"#),
            "line 2: key \"a\" has revisions",
        ),
        (
            "a revision past last_applied",
            with(0, &store_line.replace(r#""revision":4"#, r#""revision":7"#)),
            "line 1: revision 7 is past last_applied",
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
