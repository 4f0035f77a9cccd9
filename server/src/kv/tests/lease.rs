//! Leases (issue 14) in the state machine: a grant's id is its index, keys
//! attach with a put, a revoke or an expiry deletes them at one revision,
//! a put naming a lease that does not exist is refused, and leases with
//! their keys survive a snapshot.

use poncho_protocol::{ErrorCode, LeaseReply, TxnOp};

use super::auth::{as_user, cluster_with_users};
use super::*;

fn grant(f: &mut Feed, ttl: u64) -> u64 {
    match f.plain(Op::LeaseGrant { ttl }) {
        ApplyResult::Lease(LeaseReply {
            id: Some(id),
            granted_ttl: Some(t),
            ..
        }) if t == ttl => id,
        other => panic!("grant gave {other:?}"),
    }
}

fn set_with(key: &str, value: &str, lease: u64) -> Op {
    Op::Set {
        key: key.into(),
        value: value.into(),
        lease: Some(lease),
    }
}

#[test]
fn ending_a_lease_deletes_its_keys_at_one_revision_and_only_its_keys() {
    let mut f = Feed::new();
    let lease = grant(&mut f, 10); // 1
    assert_eq!(lease, 1, "a lease's id is its grant's index");
    f.plain(set_with("a", "1", lease)); // 2
    f.plain(set_with("b", "1", lease)); // 3
    f.plain(set_with("moved", "1", lease)); // 4
    f.plain(set("moved", "2")); // 5: a put without the lease detaches it
    f.plain(set("plain", "1")); // 6
    assert_eq!(
        f.store.lease_keys(lease, 10),
        (vec!["a".into(), "b".into()], false)
    );
    let before = f.store.revision();
    let r = f.plain(Op::LeaseExpire { id: lease }); // 7
    assert!(
        matches!(
            r,
            ApplyResult::Lease(LeaseReply {
                deleted: Some(2),
                index: Some(7),
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(f.store.revision(), 7);
    assert!(before < 7);
    assert_eq!((f.store.get("a"), f.store.get("b")), (None, None));
    assert_eq!(
        (f.store.get("moved"), f.store.get("plain")),
        (Some("2"), Some("1"))
    );
    assert_eq!(f.store.lease_ttl(lease), None);
    // Both deletes are one revision in the history.
    let changes = f.store.changes_from(7, 100).expect("held");
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.revision == 7));
    // Gone: a revoke, a put and a transaction naming it are refused.
    assert_eq!(
        error_code(&f.plain(Op::LeaseRevoke { id: lease })),
        ErrorCode::LeaseNotFound
    );
    assert_eq!(
        error_code(&f.plain(set_with("c", "1", lease))),
        ErrorCode::LeaseNotFound
    );
    let txn = Op::Txn(poncho_protocol::Txn {
        success: vec![
            TxnOp::Put {
                key: "d".into(),
                value: "1".into(),
                lease: None,
            },
            TxnOp::Put {
                key: "e".into(),
                value: "1".into(),
                lease: Some(lease),
            },
        ],
        ..Default::default()
    });
    assert_eq!(error_code(&f.plain(txn)), ErrorCode::LeaseNotFound);
    assert_eq!(
        f.store.get("d"),
        None,
        "nothing of a refused transaction is applied"
    );
    // A revoke of a lease with no keys changes no key.
    let empty = grant(&mut f, 5);
    let rev = f.store.revision();
    f.plain(Op::LeaseRevoke { id: empty });
    assert_eq!(f.store.revision(), rev);
}

#[test]
fn leases_and_their_keys_survive_a_snapshot() {
    let mut f = Feed::new();
    let a = grant(&mut f, 10);
    let b = grant(&mut f, 60);
    f.plain(set_with("x", "1", a));
    f.plain(set_with("y", "1", b));
    let restored = round_trip(&f.store);
    assert_eq!(restored, f.store);
    assert_eq!(
        restored.leases().collect::<Vec<_>>(),
        vec![(a, 10), (b, 60)]
    );
    assert_eq!(restored.lease_keys(a, 10).0, vec!["x".to_string()]);
    let lines = snapshot_lines(&f.store);
    assert!(
        lines.iter().any(|l| l == r#"{"lease":1,"ttl":10}"#),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains(r#""k":"x""#) && l.contains(r#""l":1"#)));
    // A key naming a lease the snapshot lacks is refused.
    let broken: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with(r#"{"lease":1,"#))
        .map(|l| l.replace(r#""leases":2"#, r#""leases":1"#))
        .collect();
    let e = restore_lines(&broken).expect_err("missing lease");
    assert!(e.contains("lease 1"), "{e}");
}

#[test]
fn a_revoke_needs_write_access_to_every_key_of_the_lease() {
    let mut f = cluster_with_users();
    let root = Some("root");
    let lease = match as_user(&mut f, root, Op::LeaseGrant { ttl: 10 }) {
        ApplyResult::Lease(r) => r.id.expect("id"),
        other => panic!("{other:?}"),
    };
    as_user(&mut f, root, set_with("secret", "1", lease));
    as_user(&mut f, root, set_with("app/x", "1", lease));
    let r = as_user(&mut f, Some("alice"), Op::LeaseRevoke { id: lease });
    assert_eq!(error_code(&r), ErrorCode::PermissionDenied);
    assert_eq!(f.store.get("secret"), Some("1"));
    let r = as_user(&mut f, root, Op::LeaseRevoke { id: lease });
    assert!(matches!(r, ApplyResult::Lease(_)), "{r:?}");
}
