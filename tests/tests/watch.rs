//! Watches on real processes (issue 14): every change of a range in
//! revision order, from now or from a past revision, with previous values,
//! the events of one transaction together, a list then a watch in one
//! request, followers serving watches, resuming on another node without a
//! gap or a duplicate, cancellation, COMPACTED, and a slow watcher
//! canceled without harm to the node.

use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn ask(client: &mut Client, msg_type: &str, payload: Value) -> Value {
    client
        .request(&json!({"msg_type": msg_type, "req_id": 1, "payload": payload}))
        .expect("a reply")
}

/// Creates a watch; its id and the revision it was created at.
fn watch(client: &mut Client, payload: Value) -> (u64, u64) {
    let mut payload = payload;
    payload["op"] = json!("create");
    let r = ask(client, "WATCH", payload);
    assert_eq!(r["payload"]["created"], true, "{r}");
    (
        r["payload"]["watch_id"].as_u64().expect("watch_id"),
        r["payload"]["revision"].as_u64().expect("revision"),
    )
}

/// The next message without a req_id (a watch's news).
fn news(client: &mut Client) -> Value {
    loop {
        let m = client.read_reply().expect("a watch message");
        if m.get("req_id").is_none() {
            assert_eq!(m["msg_type"], "WATCH", "{m}");
            return m["payload"].clone();
        }
    }
}

/// (revision, [(type, key, value)]) of an events message.
fn events(m: &Value) -> (u64, Vec<(String, String, Option<String>)>) {
    let evs = m["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {m}"));
    (
        m["revision"].as_u64().expect("revision"),
        evs.iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["kv"]["key"].as_str().unwrap_or_default().to_string(),
                    e["kv"]["value"].as_str().map(str::to_string),
                )
            })
            .collect(),
    )
}

fn put(k: &str, v: &str) -> (String, String, Option<String>) {
    ("put".into(), k.into(), Some(v.into()))
}

#[test]
fn a_watch_sees_every_change_in_order_from_now_or_the_past_and_transactions_together() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut w = Client::connect(cluster.addr(leader)).expect("leader");
    w.set_read_timeout(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    let first = c.set("app/a", "1").expect("set");
    let a1 = first["payload"]["index"].as_u64().expect("index");
    let (id, created_at) = watch(
        &mut w,
        json!({"key": "app/", "prefix": true, "prev_kv": true}),
    );
    assert!(created_at >= a1);
    c.set("other", "x").expect("set outside the prefix");
    let second = c.set("app/a", "2").expect("set");
    let a2 = second["payload"]["index"].as_u64().expect("index");
    let m = news(&mut w);
    assert_eq!(m["watch_id"].as_u64(), Some(id));
    assert_eq!(events(&m), (a2, vec![put("app/a", "2")]));
    assert_eq!(m["events"][0]["prev_kv"]["value"], "1", "{m}");
    assert_eq!(m["events"][0]["kv"]["version"], 2);
    // A transaction's changes come in one message, at its revision.
    let t = ask(
        &mut c,
        "TXN",
        json!({"success": [{"type": "put", "key": "app/b", "value": "1"},
                           {"type": "delete", "key": "app/a"}]}),
    );
    let t_rev = t["payload"]["revision"].as_u64().expect("revision");
    let m = news(&mut w);
    let (rev, evs) = events(&m);
    assert_eq!(rev, t_rev);
    assert_eq!(
        evs,
        vec![put("app/b", "1"), ("delete".into(), "app/a".into(), None)]
    );
    assert_eq!(m["events"][1]["kv"]["mod_revision"].as_u64(), Some(t_rev));
    assert_eq!(m["events"][1]["prev_kv"]["value"], "2");

    // From a past revision, on a follower: the same changes, in order.
    let follower = if leader == 1 { 2 } else { 1 };
    let mut f = Client::connect(cluster.addr(follower)).expect("follower");
    f.set_read_timeout(TIMEOUT);
    let (_, _) = watch(
        &mut f,
        json!({"key": "app/", "prefix": true, "start_revision": a1}),
    );
    assert_eq!(events(&news(&mut f)), (a1, vec![put("app/a", "1")]));
    assert_eq!(events(&news(&mut f)), (a2, vec![put("app/a", "2")]));
    assert_eq!(events(&news(&mut f)).0, t_rev);
    // Then live.
    let third = c.set("app/c", "3").expect("set");
    let c3 = third["payload"]["index"].as_u64().expect("index");
    assert_eq!(events(&news(&mut f)), (c3, vec![put("app/c", "3")]));
    assert_eq!(events(&news(&mut w)), (c3, vec![put("app/c", "3")]));

    // Cancel: no more news for it.
    let r = ask(&mut w, "WATCH", json!({"op": "cancel", "watch_id": id}));
    assert_eq!(r["payload"]["canceled"], true, "{r}");
    let r = ask(&mut w, "WATCH", json!({"op": "cancel", "watch_id": id}));
    assert_eq!(r["payload"]["code"], "BAD_REQUEST", "{r}");
    c.set("app/d", "4").expect("set");
    let (_, now) = watch(&mut w, json!({"key": "zzz"}));
    assert!(now > c3);
    w.set_read_timeout(Duration::from_millis(500));
    assert!(w.read_reply().is_err(), "a canceled watch sends nothing");
}

#[test]
fn a_list_watch_gives_the_range_then_every_change_after_it() {
    let mut cluster = Cluster::start(1);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("node");
    for i in 0..2_500 {
        c.set(&format!("l/{i:05}"), "v").expect("set");
    }
    let mut w = Client::connect(cluster.addr(leader)).expect("node");
    w.set_read_timeout(TIMEOUT);
    let (_, at) = watch(&mut w, json!({"key": "l/", "prefix": true, "list": true}));
    // Written while the list is sent: must come after it, as events.
    let late = c.set("l/late", "x").expect("set");
    let late_rev = late["payload"]["index"].as_u64().expect("index");
    let mut listed = Vec::new();
    loop {
        let m = news(&mut w);
        assert_eq!(m["revision"].as_u64(), Some(at), "{m}");
        for kv in m["kvs"].as_array().expect("kvs") {
            listed.push(kv["key"].as_str().unwrap_or_default().to_string());
        }
        if m.get("more").is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 2_500, "every key once");
    assert!(listed.windows(2).all(|p| p[0] < p[1]), "in key order");
    assert!(!listed.contains(&"l/late".to_string()));
    assert_eq!(events(&news(&mut w)), (late_rev, vec![put("l/late", "x")]));
}

#[test]
fn a_watch_from_a_compacted_revision_is_refused_and_a_slow_watcher_is_canceled() {
    let mut cluster = Cluster::start_with(
        1,
        &["--history-events", "10", "--watch-buffer-bytes", "65536"],
    );
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("node");
    for i in 0..30 {
        c.set("k", &format!("{i}")).expect("set");
    }
    let r = ask(
        &mut c,
        "WATCH",
        json!({"op": "create", "key": "k", "start_revision": 2}),
    );
    assert_eq!(r["payload"]["code"], "COMPACTED", "{r}");
    let oldest = r["payload"]["compact_revision"]
        .as_u64()
        .expect("compact_revision");
    assert!(oldest > 2, "{r}");
    let mut from_oldest = Client::connect(cluster.addr(leader)).expect("node");
    from_oldest.set_read_timeout(TIMEOUT);
    let (_, _) = watch(
        &mut from_oldest,
        json!({"key": "k", "start_revision": oldest}),
    );
    assert_eq!(events(&news(&mut from_oldest)).0, oldest);

    // A watcher that never reads, with 1 KiB values: canceled once 64 KiB
    // wait for it, while the node goes on serving.
    let mut slow = Client::connect(cluster.addr(leader)).expect("node");
    let (id, _) = watch(&mut slow, json!({"key": "big"}));
    let value = "x".repeat(1024);
    let deadline = Instant::now() + TIMEOUT;
    let mut writes = 0;
    let mut w2 = Client::connect(cluster.addr(leader)).expect("node");
    while writes < 4_000 && Instant::now() < deadline {
        w2.set("big", &value).expect("set");
        writes += 1;
    }
    // The node still serves everyone else.
    assert_eq!(c.get("k").expect("get")["payload"]["value"], "29");
    // Now read: events, then the cancellation, then nothing more.
    slow.set_read_timeout(TIMEOUT);
    let mut seen = 0;
    let mut last_seen = 0;
    let cancel = loop {
        let m = news(&mut slow);
        if m["canceled"] == true {
            break m;
        }
        seen += 1;
        last_seen = m["revision"].as_u64().expect("revision");
    };
    // The cancellation names the last revision sent: resume after it.
    assert_eq!(cancel["revision"].as_u64(), Some(last_seen), "{cancel}");
    assert!(
        seen < writes,
        "canceled before all {writes} changes were sent"
    );
    assert_eq!(cancel["watch_id"].as_u64(), Some(id));
    assert_eq!(cancel["error"]["code"], "SLOW_WATCHER", "{cancel}");
    let message = cancel["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("resume"), "{message}");
}
