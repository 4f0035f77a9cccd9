//! Transactions (issue 14): comparisons read before the branch runs, one
//! revision for everything a branch writes, ordered operations, exactly
//! once in a session, and the whole transaction checked against the user.

use poncho_protocol::{
    Compare, CompareOp, CompareTarget, CompareValue, ErrorCode, RangeRequest, Txn, TxnOp,
    TxnOpReply, TxnReply,
};

use super::auth::{as_user, cluster_with_users};
use super::*;

fn cmp(key: &str, target: CompareTarget, op: CompareOp, value: CompareValue) -> Compare {
    Compare {
        key: key.into(),
        target,
        op,
        value,
    }
}

fn version_is(key: &str, version: u64) -> Compare {
    cmp(
        key,
        CompareTarget::Version,
        CompareOp::Equal,
        CompareValue::Number(version),
    )
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn range(key: &str, prefix: bool) -> TxnOp {
    TxnOp::Range(RangeRequest {
        key: key.into(),
        prefix,
        ..RangeRequest::default()
    })
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Op {
    Op::Txn(Txn {
        compare,
        success,
        failure,
    })
}

fn txn_reply(result: ApplyResult) -> TxnReply {
    match result {
        ApplyResult::Txn(r) => r,
        other => panic!("a TXN gave {other:?}"),
    }
}

fn values(reply: &TxnOpReply) -> Vec<(String, String, u64)> {
    match reply {
        TxnOpReply::Range(r) => r
            .kvs
            .iter()
            .map(|kv| {
                let value = kv.value.clone().unwrap_or_default();
                (kv.key.clone(), value, kv.mod_revision)
            })
            .collect(),
        other => panic!("not a range reply: {other:?}"),
    }
}

#[test]
fn a_branch_runs_whole_at_one_revision_after_compares_read_the_state_before_it() {
    let mut f = Feed::new();
    f.plain(set("a", "1")); // 1
                            // 2: a exists (version 1) and b is absent, so success runs.
    let r = txn_reply(f.plain(txn(
        vec![version_is("a", 1), version_is("b", 0)],
        vec![put("a", "2"), put("b", "1"), range("", true)],
        vec![put("failed", "yes")],
    )));
    assert!(r.succeeded);
    assert_eq!((r.revision, r.index), (2, 2));
    assert_eq!(r.responses.len(), 3);
    assert_eq!(r.responses[0], TxnOpReply::Put {});
    // The read sees the branch's own writes, at the transaction's revision.
    assert_eq!(
        values(&r.responses[2]),
        vec![("a".into(), "2".into(), 2), ("b".into(), "1".into(), 2)]
    );
    assert_eq!(f.store.revision(), 2);
    assert_eq!(f.store.get("failed"), None);
    let a = f.store.get_reply("a".into());
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (Some(1), Some(2), Some(2))
    );
    // 3: the same compares now fail (a is at version 2): failure runs.
    let r = txn_reply(f.plain(txn(
        vec![version_is("a", 1), version_is("b", 0)],
        vec![put("a", "3")],
        vec![put("failed", "yes"), range("a", false)],
    )));
    assert!(!r.succeeded);
    assert_eq!(values(&r.responses[1]), vec![("a".into(), "2".into(), 2)]);
    assert_eq!(
        (f.store.get("a"), f.store.get("failed")),
        (Some("2"), Some("yes"))
    );
    assert_eq!(r.revision, 3);
    // 4: a branch that writes nothing leaves the revision where it was.
    let r = txn_reply(f.plain(txn(
        vec![version_is("zz", 7)],
        vec![],
        vec![range("a", false)],
    )));
    assert_eq!((r.succeeded, r.revision, f.store.revision()), (false, 3, 3));
    // A past read at 1 sees both keys as they were before the transaction.
    let past = f
        .store
        .range(
            None,
            &RangeRequest {
                rev: Some(1),
                ..RangeRequest::prefix("")
            },
        )
        .expect("revision 1 is held");
    let keys: Vec<(&str, Option<&str>)> = past
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_deref()))
        .collect();
    assert_eq!(keys, vec![("a", Some("1"))]);
}

#[test]
fn every_comparison_target_and_operator_and_an_absent_key_compare_as_documented() {
    let mut f = Feed::new();
    f.plain(set("k", "m")); // 1
    f.plain(set("k", "m")); // 2: version 2, create 1, mod 2
    use CompareOp::*;
    use CompareTarget::*;
    let text = |s: &str| CompareValue::Text(s.into());
    let n = CompareValue::Number;
    let cases = [
        (cmp("k", Value, Equal, text("m")), true),
        (cmp("k", Value, Less, text("n")), true),
        (cmp("k", Value, Greater, text("n")), false),
        (cmp("k", Value, NotEqual, text("m")), false),
        (cmp("k", Version, Equal, n(2)), true),
        (cmp("k", Version, Greater, n(1)), true),
        (cmp("k", CreateRevision, Equal, n(1)), true),
        (cmp("k", ModRevision, Less, n(2)), false),
        (cmp("k", ModRevision, NotEqual, n(1)), true),
        // An absent key: every number is 0, and no value compares.
        (cmp("gone", Version, Equal, n(0)), true),
        (cmp("gone", CreateRevision, Less, n(1)), true),
        (cmp("gone", Value, NotEqual, text("x")), false),
        (cmp("gone", Value, Equal, text("")), false),
        // A number against a value (refused on the wire) compares false.
        (cmp("k", Value, Equal, n(0)), false),
    ];
    for (c, want) in cases {
        let r = txn_reply(f.plain(txn(vec![c.clone()], vec![], vec![])));
        assert_eq!(r.succeeded, want, "{c:?}");
    }
    assert_eq!(f.store.revision(), 2, "no branch wrote");
}

#[test]
fn deletes_of_a_key_a_prefix_and_a_range_count_what_they_removed() {
    let mut f = Feed::new();
    for k in ["a", "p/1", "p/2", "q", "r", "s"] {
        f.plain(set(k, "v"));
    }
    let r = txn_reply(f.plain(txn(
        vec![],
        vec![
            TxnOp::Delete {
                key: "a".into(),
                range_end: None,
                prefix: false,
            },
            TxnOp::Delete {
                key: "p/".into(),
                range_end: None,
                prefix: true,
            },
            TxnOp::Delete {
                key: "q".into(),
                range_end: Some("s".into()),
                prefix: false,
            },
            TxnOp::Delete {
                key: "missing".into(),
                range_end: None,
                prefix: false,
            },
            range("", true),
        ],
        vec![],
    )));
    let deleted: Vec<u64> = r.responses[..4]
        .iter()
        .map(|d| match d {
            TxnOpReply::Delete { deleted } => *deleted,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(deleted, vec![1, 2, 2, 0]);
    assert_eq!(values(&r.responses[4]), vec![("s".into(), "v".into(), 6)]);
    assert_eq!((r.revision, f.store.len()), (7, 1));
}

#[test]
fn a_transaction_in_a_session_is_applied_once_and_a_retry_gets_the_first_reply() {
    let mut f = Feed::new();
    let c = f.register(); // 1
    let op = || {
        txn(
            vec![version_is("n", 0)],
            vec![put("n", "first")],
            vec![put("n", "second")],
        )
    };
    let first = txn_reply(f.session(c, 1, 0, op())); // 2
    assert!(first.succeeded);
    let retry = txn_reply(f.session(c, 1, 0, op())); // 3
    assert_eq!(retry, first, "the retry is answered as the first attempt");
    assert_eq!(f.store.get("n"), Some("first"));
    assert_eq!(f.store.get_reply("n".into()).version, Some(1));
    let next = txn_reply(f.session(c, 2, 0, op())); // 4
    assert!(!next.succeeded);
    assert_eq!(f.store.get("n"), Some("second"));
    // The cached reply survives a snapshot.
    let restored = round_trip(&f.store);
    assert_eq!(restored, f.store);
}

#[test]
fn a_transaction_needs_every_key_and_range_it_touches() {
    // alice may read and write app/ only.
    let mut f = cluster_with_users();
    let alice = Some("alice");
    let ok = txn(
        vec![version_is("app/a", 0)],
        vec![
            put("app/a", "1"),
            range("app/", true),
            TxnOp::Range(RangeRequest {
                key: "app/a".into(),
                range_end: Some("app/z".into()),
                ..RangeRequest::default()
            }),
        ],
        vec![],
    );
    assert!(txn_reply(as_user(&mut f, alice, ok)).succeeded);
    let before = f.store.revision();
    let denied = [
        // Compares a key she may not read.
        txn(
            vec![version_is("secret", 0)],
            vec![put("app/b", "1")],
            vec![],
        ),
        // Writes outside app/ in the branch that would not even run.
        txn(vec![], vec![put("app/b", "1")], vec![put("other", "1")]),
        // Reads a range that leaves app/.
        txn(
            vec![],
            vec![TxnOp::Range(RangeRequest {
                key: "app/a".into(),
                range_end: Some("b".into()),
                ..RangeRequest::default()
            })],
            vec![],
        ),
        // Reads everything (a RANGE would filter; a transaction refuses).
        txn(vec![], vec![range("", true)], vec![]),
        // Deletes a prefix wider than hers.
        txn(
            vec![],
            vec![TxnOp::Delete {
                key: "app".into(),
                range_end: None,
                prefix: true,
            }],
            vec![],
        ),
    ];
    for op in denied {
        let result = as_user(&mut f, alice, op.clone());
        assert_eq!(error_code(&result), ErrorCode::PermissionDenied, "{op:?}");
    }
    assert_eq!(f.store.revision(), before, "nothing denied was applied");
    assert_eq!(f.store.get("app/b"), None);
    // Read-only, outside the log, the same check.
    let Op::Txn(read) = txn(vec![], vec![range("", true)], vec![]) else {
        unreachable!()
    };
    assert_eq!(
        f.store
            .read_txn(alice, &read)
            .map(|_| ())
            .map_err(|e| e.code),
        Err(ErrorCode::PermissionDenied)
    );
    let Op::Txn(read) = txn(
        vec![version_is("app/a", 1)],
        vec![range("app/", true)],
        vec![],
    ) else {
        unreachable!()
    };
    let r = f.store.read_txn(alice, &read).expect("hers to read");
    assert_eq!((r.succeeded, r.index), (true, 0));
    assert_eq!(values(&r.responses[0]).len(), 1);
}
