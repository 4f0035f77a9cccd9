//! Users and roles through the log: changes applied as entries, every write
//! checked again when applied, sessions owned by their user, listings
//! filtered, and all of it carried by snapshots.

use super::*;
use crate::kv::auth::ROOT;
use poncho_protocol::{Access, KeySpec};

pub(super) fn as_user(f: &mut Feed, user: Option<&str>, op: Op) -> ApplyResult {
    f.command(Command {
        op,
        client_id: None,
        seq: None,
        user: user.map(str::to_string),
        ts_ms: 0,
    })
}

fn auth(f: &mut Feed, user: Option<&str>, auth: AuthOp) -> ApplyResult {
    as_user(f, user, Op::Auth { auth })
}

fn ok(result: ApplyResult) {
    assert!(!matches!(result, ApplyResult::Error(_)), "{result:?}");
}

fn prefix(p: &str) -> KeySpec {
    KeySpec {
        key: None,
        prefix: Some(p.into()),
    }
}

/// root (root), alice (app: readwrite app/), bob (none); auth enabled.
pub(super) fn cluster_with_users() -> Feed {
    let mut f = Feed::new();
    for name in ["root", "alice", "bob"] {
        let password_hash = format!("$argon2id$hash-of-{name}");
        ok(auth(
            &mut f,
            None,
            AuthOp::UserAdd {
                name: name.into(),
                password_hash,
            },
        ));
    }
    ok(auth(
        &mut f,
        None,
        AuthOp::UserGrantRole {
            name: "root".into(),
            role: ROOT.into(),
        },
    ));
    ok(auth(&mut f, None, AuthOp::RoleAdd { name: "app".into() }));
    ok(auth(
        &mut f,
        None,
        AuthOp::RoleGrant {
            name: "app".into(),
            keys: prefix("app/"),
            access: Access::Readwrite,
        },
    ));
    ok(auth(
        &mut f,
        None,
        AuthOp::UserGrantRole {
            name: "alice".into(),
            role: "app".into(),
        },
    ));
    ok(auth(&mut f, None, AuthOp::Enable));
    assert!(f.store.auth().enabled);
    f
}

#[test]
fn writes_are_checked_when_applied() {
    let mut f = cluster_with_users();
    ok(as_user(&mut f, Some("alice"), set("app/x", "1")));
    for (user, key, code) in [
        (Some("alice"), "other", ErrorCode::PermissionDenied),
        (Some("bob"), "app/x", ErrorCode::PermissionDenied),
        (None, "app/x", ErrorCode::Unauthenticated),
        (Some("mallory"), "app/x", ErrorCode::Unauthenticated),
    ] {
        assert_eq!(
            error_code(&as_user(&mut f, user, set(key, "2"))),
            code,
            "{user:?} {key}"
        );
    }
    assert_eq!(
        f.store.get("app/x"),
        Some("1"),
        "refused writes changed nothing"
    );
    assert_eq!(f.store.get("other"), None);
    ok(as_user(&mut f, Some("root"), set("other", "r")));

    // A revoke applies to every write after it in the log, whatever the
    // proposer's node believed when it took the write.
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleRevoke {
            name: "app".into(),
            keys: prefix("app/"),
        },
    ));
    let denied = as_user(&mut f, Some("alice"), set("app/x", "3"));
    assert_eq!(error_code(&denied), ErrorCode::PermissionDenied);
    assert_eq!(f.store.get("app/x"), Some("1"));

    // CAS tells the value, so it needs read as well as write.
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleGrant {
            name: "app".into(),
            keys: prefix("app/"),
            access: Access::Write,
        },
    ));
    ok(as_user(&mut f, Some("alice"), set("app/x", "4")));
    let cas = as_user(&mut f, Some("alice"), cas("app/x", Some("4"), Some("5")));
    assert_eq!(error_code(&cas), ErrorCode::PermissionDenied);

    // Once auth is off again, anyone writes anything.
    ok(auth(&mut f, Some("root"), AuthOp::Disable));
    ok(as_user(&mut f, None, set("other", "anyone")));
}

#[test]
fn only_root_changes_auth_while_it_is_on_and_root_cannot_be_lost() {
    let mut f = cluster_with_users();
    let by_alice = auth(&mut f, Some("alice"), AuthOp::RoleAdd { name: "x".into() });
    assert_eq!(error_code(&by_alice), ErrorCode::PermissionDenied);
    let unauthenticated = auth(&mut f, None, AuthOp::Disable);
    assert_eq!(error_code(&unauthenticated), ErrorCode::Unauthenticated);
    assert!(f.store.auth().enabled);
    let lockout = auth(
        &mut f,
        Some("root"),
        AuthOp::UserDelete {
            name: "root".into(),
        },
    );
    assert_eq!(error_code(&lockout), ErrorCode::BadRequest);
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::UserDelete { name: "bob".into() },
    ));
    assert!(f.store.auth().user_info("bob").is_err());
    let mut empty = Feed::new();
    let enable = auth(&mut empty, None, AuthOp::Enable);
    assert_eq!(
        error_code(&enable),
        ErrorCode::BadRequest,
        "no root user yet"
    );
    assert!(!empty.store.auth().enabled);
}

#[test]
fn a_session_is_its_users_alone() {
    let mut f = cluster_with_users();
    let registered = as_user(&mut f, Some("alice"), Op::RegisterClient);
    let ApplyResult::Register(r) = registered else {
        panic!("{registered:?}");
    };
    let in_session = |f: &mut Feed, user: &str, seq: u64, op: Op| {
        f.command(Command {
            op,
            client_id: Some(r.client_id),
            seq: Some(seq),
            user: Some(user.into()),
            ts_ms: 0,
        })
    };
    let first = in_session(&mut f, "alice", 1, set("app/a", "1"));
    ok(first.clone());
    // root may write anything, but not in alice's session, nor read its
    // cached reply by replaying her seq: for root it is not open.
    for seq in [1, 2] {
        let replay = in_session(&mut f, "root", seq, set("app/a", "2"));
        assert_eq!(error_code(&replay), ErrorCode::SessionExpired);
    }
    assert_eq!(in_session(&mut f, "alice", 1, set("app/a", "1")), first);
    assert_eq!(f.store.get("app/a"), Some("1"));
    // A denied write in a session does not use up its seq.
    let denied = in_session(&mut f, "alice", 2, set("nope", "1"));
    assert_eq!(error_code(&denied), ErrorCode::PermissionDenied);
    ok(in_session(&mut f, "alice", 2, set("app/b", "1")));
    let unregistered = as_user(&mut f, None, Op::RegisterClient);
    assert_eq!(error_code(&unregistered), ErrorCode::Unauthenticated);
}

/// A write denied when applied (its permission revoked after it was
/// proposed) leaves the session as it was: later writes, expiry and
/// eviction find the session index whole. (It was once moved in the
/// session and not in the index, and eviction then panicked on every node.)
#[test]
fn a_write_denied_in_a_session_leaves_the_session_index_whole() {
    let mut f = cluster_with_users();
    f.store.max_sessions = 3;
    let register = |f: &mut Feed| match as_user(f, Some("alice"), Op::RegisterClient) {
        ApplyResult::Register(r) => r.client_id,
        other => panic!("{other:?}"),
    };
    let id = register(&mut f);
    let write = |f: &mut Feed, seq: u64| {
        f.command(Command {
            op: set("app/s", "v"),
            client_id: Some(id),
            seq: Some(seq),
            user: Some("alice".into()),
            ts_ms: 0,
        })
    };
    ok(write(&mut f, 1));
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleRevoke {
            name: "app".into(),
            keys: prefix("app/"),
        },
    ));
    for seq in 2..5 {
        assert_eq!(error_code(&write(&mut f, seq)), ErrorCode::PermissionDenied);
    }
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleGrant {
            name: "app".into(),
            keys: prefix("app/"),
            access: Access::Readwrite,
        },
    ));
    ok(write(&mut f, 10));
    // More sessions than the cap: the oldest are evicted, ours among them.
    for _ in 0..4 {
        register(&mut f);
    }
    assert_eq!(f.store.session_count(), 3);
    assert_eq!(error_code(&write(&mut f, 11)), ErrorCode::SessionExpired);
}

#[test]
fn listings_show_only_what_the_user_may_read() {
    let mut f = cluster_with_users();
    for key in ["app/1", "app/2", "apple", "config", "z"] {
        ok(as_user(&mut f, Some("root"), set(key, "v")));
    }
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleAdd { name: "cfg".into() },
    ));
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::RoleGrant {
            name: "cfg".into(),
            keys: KeySpec {
                key: Some("config".into()),
                prefix: None,
            },
            access: Access::Read,
        },
    ));
    ok(auth(
        &mut f,
        Some("root"),
        AuthOp::UserGrantRole {
            name: "alice".into(),
            role: "cfg".into(),
        },
    ));
    let keys = |user: Option<&str>, p: &str, limit| f.store.readable_keys(user, p, None, limit).0;
    assert_eq!(keys(Some("alice"), "", 100), ["app/1", "app/2", "config"]);
    assert_eq!(keys(Some("alice"), "ap", 100), ["app/1", "app/2"]);
    assert_eq!(keys(Some("alice"), "app/2", 100), ["app/2"]);
    assert_eq!(keys(Some("alice"), "", 2), ["app/1", "app/2"]);
    assert_eq!(keys(Some("bob"), "", 100), Vec::<String>::new());
    assert_eq!(keys(None, "", 100), Vec::<String>::new());
    // A page says where the next starts, from the keys the user may read.
    let page = |from: Option<&str>, limit| f.store.readable_keys(Some("alice"), "", from, limit);
    assert_eq!(
        page(None, 2),
        (vec!["app/1".into(), "app/2".into()], Some("config".into()))
    );
    assert_eq!(page(Some("config"), 2), (vec!["config".into()], None));
    assert_eq!(
        page(Some("app/10"), 1),
        (vec!["app/2".into()], Some("config".into()))
    );
    // RANGE shows the same: only what the user may read, counted as such.
    let range = |user| {
        let r = f
            .store
            .range(user, &poncho_protocol::RangeRequest::prefix(""))
            .expect("current");
        let keys: Vec<String> = r.kvs.into_iter().map(|k| k.key).collect();
        (keys, r.count)
    };
    assert_eq!(
        range(Some("alice")),
        (vec!["app/1".into(), "app/2".into(), "config".into()], 3)
    );
    assert_eq!(range(Some("bob")), (Vec::new(), 0));
    assert_eq!(range(Some("root")).1, 5);
    assert_eq!(keys(Some("root"), "", 100).len(), 5);
}

#[test]
fn snapshots_carry_users_roles_and_session_owners() {
    let mut f = cluster_with_users();
    as_user(&mut f, Some("alice"), Op::RegisterClient);
    let lines = snapshot_lines(&f.store);
    assert!(
        lines[0].contains(r#""auth_enabled":true,"roles":1,"users":3"#),
        "{}",
        lines[0]
    );
    assert!(lines
        .iter()
        .any(|l| l.contains(r#""user":"alice""#) && l.contains("client_id")));
    assert!(lines.contains(
        &r#"{"role":"app","permissions":[{"prefix":"app/","access":"readwrite"}]}"#.to_string()
    ));
    let restored = round_trip(&f.store);
    assert_eq!(restored, f.store);
    assert_eq!(snapshot_lines(&restored), lines, "byte for byte");

    // Broken auth lines are refused, naming the line.
    let n = lines.len();
    // The snapshot with the line that starts with `start` edited.
    let edit = |start: &str, from: &str, to: &str| {
        let i = lines.iter().position(|l| l.starts_with(start)).unwrap();
        let mut l = lines.clone();
        l[i] = lines[i].replace(from, to);
        l
    };
    let alice = r#"{"user":"alice""#;
    let mut out_of_order = lines.clone();
    out_of_order[n - 1] = lines.iter().find(|l| l.starts_with(alice)).unwrap().clone();
    let cases = [
        ("users out of order", out_of_order, "is out of order"),
        (
            "a user with a role that does not exist",
            edit(alice, r#"["app"]"#, r#"["ghost"]"#),
            "no role \"ghost\"",
        ),
        (
            "a permission with both a key and a prefix",
            edit(r#"{"role":"app""#, r#""prefix""#, r#""key":"k","prefix""#),
            "either `key` or `prefix`",
        ),
        (
            "auth on without root",
            edit(r#"{"user":"root""#, r#"["root"]"#, "[]"),
            "auth is enabled, but",
        ),
    ];
    for (what, lines, expected) in cases {
        match restore_lines(&lines) {
            Ok(_) => panic!("{what}: restored"),
            Err(e) => assert!(e.contains(expected), "{what}: {e}"),
        }
    }
}

#[test]
fn a_format_2_snapshot_still_restores_without_users() {
    let lines = [
        r#"{"format":2,"last_applied":2,"clock_ms":5,"session_timeout_ms":600000,"max_sessions":100000,"max_session_bytes":134217728,"keys":1,"sessions":1}"#,
        r#"{"k":"a","v":"1"}"#,
        r#"{"client_id":1,"last_seq":0,"reply":{"type":"REGISTER_CLIENT","client_id":1},"last_used_index":1,"last_used_ts_ms":5}"#,
    ]
    .map(String::from);
    let store = restore_lines(&lines).expect("format 2 restores");
    assert_eq!(store.get("a"), Some("1"));
    assert!(!store.auth().enabled);
    assert_eq!(store.auth().user_count(), 0);
    let bad = lines[0].replace(r#""sessions":1"#, r#""sessions":1,"users":1"#);
    let e = restore_lines(&[bad, lines[1].clone(), lines[2].clone()]).unwrap_err();
    assert!(e.contains("format 2 has no users"), "{e}");
}
