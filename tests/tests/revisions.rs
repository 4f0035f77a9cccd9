//! Revisions and RANGE on real processes (issue 14): writes move the
//! cluster's revision, GET and RANGE return each key's revisions, RANGE
//! pages through a prefix, a follower's stale RANGE agrees once caught up,
//! and bad requests get clear errors.

use std::time::Duration;

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn ask(client: &mut Client, msg_type: &str, payload: Value) -> Value {
    client
        .request(&json!({"msg_type": msg_type, "payload": payload}))
        .expect("a reply")
}

#[test]
fn writes_carry_revisions_and_range_pages_through_a_prefix() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    let first = ask(&mut c, "SET", json!({"key": "app/a", "value": "1"}));
    let a1 = first["payload"]["index"].as_u64().expect("index");
    let second = ask(&mut c, "SET", json!({"key": "app/a", "value": "2"}));
    let a2 = second["payload"]["index"].as_u64().expect("index");
    for i in 0..5 {
        ask(
            &mut c,
            "SET",
            json!({"key": format!("app/k{i}"), "value": "v"}),
        );
    }
    // A delete of nothing changes nothing.
    let none = ask(&mut c, "DELETE", json!({"key": "app/none"}));
    assert_eq!(none["payload"]["deleted"], false);
    let get = ask(&mut c, "GET", json!({"key": "app/a"}));
    let g = &get["payload"];
    assert_eq!(g["value"], "2");
    assert_eq!(
        (g["create_revision"].as_u64(), g["mod_revision"].as_u64()),
        (Some(a1), Some(a2))
    );
    assert_eq!(g["version"], 2);
    let revision = g["revision"].as_u64().expect("revision");
    assert!(revision > a2, "{get}");

    // Pages of two, to the end, every key once.
    let mut keys = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut payload = json!({"key": "app/", "prefix": true, "limit": 2});
        if let Some(f) = &from {
            payload["from"] = json!(f);
        }
        let page = ask(&mut c, "RANGE", payload);
        assert_eq!(page["msg_type"], "RANGE", "{page}");
        let p = &page["payload"];
        assert_eq!(p["revision"].as_u64(), Some(revision));
        for kv in p["kvs"].as_array().expect("kvs") {
            keys.push(kv["key"].as_str().expect("key").to_string());
            assert!(kv["mod_revision"].as_u64().is_some() && kv["version"].as_u64().is_some());
        }
        match p["next_key"].as_str() {
            Some(next) => {
                assert_eq!(p["more"], true);
                from = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(
        keys,
        ["app/a", "app/k0", "app/k1", "app/k2", "app/k3", "app/k4"]
    );
    let count = ask(
        &mut c,
        "RANGE",
        json!({"key": "app/", "prefix": true, "count_only": true}),
    );
    assert_eq!(count["payload"]["count"], 6);
    assert_eq!(count["payload"]["kvs"], json!([]));

    // A follower's stale read agrees once it has applied the writes.
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let mut f = Client::connect(cluster.addr(follower)).expect("follower");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let r = ask(
            &mut f,
            "RANGE",
            json!({"key": "app/", "prefix": true, "stale": true, "keys_only": true}),
        );
        if r["payload"]["revision"].as_u64() == Some(revision) {
            assert_eq!(r["payload"]["kvs"].as_array().map(Vec::len), Some(6));
            assert!(r["payload"]["kvs"][0].get("value").is_none(), "{r}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_range_requests_get_clear_errors() {
    let mut cluster = Cluster::start(1);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    for (payload, says) in [
        (
            json!({"key": "a", "prefix": true, "range_end": "b"}),
            "not both",
        ),
        (
            json!({"key": "a", "keys_only": true, "count_only": true}),
            "exclude each other",
        ),
        (json!({"key": "a", "limit": -1}), "expected u64"),
        (json!({"key": "a", "sorted": true}), "sorted"),
        (json!({"key": "k".repeat(2000)}), "the limit is 1024"),
    ] {
        let r = ask(&mut c, "RANGE", payload.clone());
        assert_eq!(r["msg_type"], "ERROR", "{payload}: {r}");
        assert_eq!(r["payload"]["code"], "BAD_REQUEST", "{payload}: {r}");
        let message = r["payload"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{payload}: {message}");
    }
}

#[test]
fn a_range_at_a_past_revision_and_one_the_history_no_longer_holds() {
    let mut cluster = Cluster::start_with(1, &["--history-events", "3"]);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    let mut revisions = Vec::new();
    for i in 1..=5 {
        let r = ask(&mut c, "SET", json!({"key": "k", "value": i.to_string()}));
        revisions.push(r["payload"]["index"].as_u64().expect("index"));
    }
    // The value as of the fourth write, the history holding the last three.
    let at = |c: &mut Client, rev: u64| ask(c, "RANGE", json!({"key": "k", "rev": rev}));
    let fourth = at(&mut c, revisions[3]);
    assert_eq!(fourth["payload"]["kvs"][0]["value"], "4", "{fourth}");
    assert_eq!(fourth["payload"]["revision"].as_u64(), Some(revisions[3]));
    let gone = at(&mut c, revisions[0]);
    assert_eq!(gone["payload"]["code"], "COMPACTED", "{gone}");
    assert_eq!(
        gone["payload"]["compact_revision"].as_u64(),
        Some(revisions[1]),
        "{gone}"
    );
    let ahead = at(&mut c, revisions[4] + 100);
    assert_eq!(ahead["payload"]["code"], "FUTURE_REVISION", "{ahead}");
}

#[test]
fn a_transaction_writes_at_one_revision_is_applied_once_and_a_read_only_one_needs_no_log() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    let reg = ask(&mut c, "REGISTER_CLIENT", Value::Null);
    let client_id = reg["payload"]["client_id"].as_u64().expect("client_id");
    let txn = json!({
        "compare": [{"key": "lock", "target": "version", "op": "=", "value": 0}],
        "success": [
            {"type": "put", "key": "lock", "value": "me"},
            {"type": "put", "key": "owner", "value": "me"},
            {"type": "range", "key": "", "prefix": true}
        ],
        "failure": [{"type": "range", "key": "lock"}],
        "client_id": client_id, "seq": 1
    });
    let first = ask(&mut c, "TXN", txn.clone());
    assert_eq!(first["msg_type"], "TXN", "{first}");
    let p = &first["payload"];
    assert_eq!(p["succeeded"], true, "{first}");
    let index = p["index"].as_u64().expect("index");
    assert_eq!(p["revision"].as_u64(), Some(index));
    let kvs = p["responses"][2]["kvs"].as_array().expect("kvs").clone();
    assert_eq!(kvs.len(), 2, "{first}");
    for kv in &kvs {
        assert_eq!(kv["mod_revision"].as_u64(), Some(index), "{kv}");
    }
    // The retry is answered as the first attempt, and writes nothing.
    let retry = ask(&mut c, "TXN", txn.clone());
    assert_eq!(retry["payload"], first["payload"]);
    let get = ask(&mut c, "GET", json!({"key": "lock"}));
    assert_eq!(get["payload"]["version"], 1, "{get}");
    // A new seq finds the lock taken: failure runs.
    let mut again = txn;
    again["seq"] = json!(2);
    let second = ask(&mut c, "TXN", again);
    assert_eq!(second["payload"]["succeeded"], false, "{second}");
    assert_eq!(second["payload"]["responses"][0]["kvs"][0]["value"], "me");
    // Read-only: answered without a log entry (index 0), at the revision.
    let status = ask(&mut c, "STATUS", Value::Null);
    let last = status["payload"]["last_log_index"].as_u64();
    let read = ask(
        &mut c,
        "TXN",
        json!({"compare": [{"key": "owner", "target": "value", "op": "=", "value": "me"}],
               "success": [{"type": "range", "key": "lock", "count_only": true}]}),
    );
    assert_eq!(
        (
            read["payload"]["index"].as_u64(),
            read["payload"]["succeeded"].as_bool()
        ),
        (Some(0), Some(true)),
        "{read}"
    );
    assert_eq!(read["payload"]["responses"][0]["count"], 1);
    let status = ask(&mut c, "STATUS", Value::Null);
    assert_eq!(status["payload"]["last_log_index"].as_u64(), last);
    // Bad ones are refused with the reason, and the connection stays open.
    for (payload, why) in [
        (
            json!({"success": [{"type": "put", "key": "a", "value": "1"},
                               {"type": "delete", "key": "a"}]}),
            "writes one key twice",
        ),
        (
            json!({"compare": [{"key": "a", "target": "mod_revision", "op": "=", "value": "1"}]}),
            "compares a number",
        ),
        (
            json!({"success": [{"type": "range", "key": "a", "rev": 2}]}),
            "no `rev`",
        ),
    ] {
        let r = ask(&mut c, "TXN", payload);
        assert_eq!(r["payload"]["code"], "BAD_REQUEST", "{r}");
        let message = r["payload"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message}");
    }
    // A follower sends a transaction to the leader, like any write.
    let follower = if leader == 1 { 2 } else { 1 };
    let mut f = Client::connect(cluster.addr(follower)).expect("follower");
    let r = ask(
        &mut f,
        "TXN",
        json!({"success": [{"type": "range", "key": "a"}]}),
    );
    assert_eq!(r["payload"]["code"], "NOT_LEADER", "{r}");
}
