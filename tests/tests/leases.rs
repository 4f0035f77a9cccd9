//! Leases on real processes (issue 14): a lease kept alive (through a
//! follower, and through a kill of the leader) never expires; one left
//! alone expires no earlier than its TTL and no later than its TTL plus a
//! bound, and its keys are gone on every node at the same revision.

use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);
/// How late an expiry may come after the TTL on a healthy cluster: the
/// leader's timer runs every tick, then one commit.
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

fn ask(client: &mut Client, msg_type: &str, payload: Value) -> Value {
    client
        .request(&json!({"msg_type": msg_type, "req_id": 1, "payload": payload}))
        .expect("a reply")
}

/// Sends `payload` to the nodes in turn until one answers other than with
/// a retryable error; that answer.
fn ask_any(cluster: &Cluster, ids: &[u64], msg_type: &str, payload: Value) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for &id in ids {
            let Ok(mut c) = Client::connect_timeout(cluster.addr(id), Duration::from_secs(1))
            else {
                continue;
            };
            c.set_read_timeout(Duration::from_secs(3));
            let Ok(r) = c.request(&json!({"msg_type": msg_type, "req_id": 1, "payload": payload}))
            else {
                continue;
            };
            let code = r["payload"]["code"].as_str().unwrap_or_default();
            if !matches!(
                code,
                "NOT_LEADER" | "NO_LEADER" | "TIMEOUT" | "LEADERSHIP_LOST"
            ) {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node answered {msg_type} {payload}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn grant(cluster: &Cluster, ids: &[u64], ttl: u64) -> u64 {
    let r = ask_any(cluster, ids, "LEASE", json!({"op": "grant", "ttl": ttl}));
    r["payload"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("grant: {r}"))
}

#[test]
fn a_lease_left_alone_expires_after_its_ttl_and_its_keys_go_at_one_revision_everywhere() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut c = Client::connect(cluster.addr(leader)).expect("leader");
    let r = ask(&mut c, "LEASE", json!({"op": "grant", "ttl": 2}));
    let id = r["payload"]["id"].as_u64().expect("id");
    let granted = Instant::now();
    for k in ["svc/a", "svc/b"] {
        let r = ask(&mut c, "SET", json!({"key": k, "value": "up", "lease": id}));
        assert_eq!(r["msg_type"], "SET", "{r}");
    }
    let r = ask(
        &mut c,
        "SET",
        json!({"key": "svc/none", "value": "x", "lease": 999_999}),
    );
    assert_eq!(r["payload"]["code"], "LEASE_NOT_FOUND", "{r}");
    let ttl = ask(
        &mut c,
        "LEASE",
        json!({"op": "ttl", "id": id, "keys": true}),
    );
    assert_eq!(ttl["payload"]["keys"], json!(["svc/a", "svc/b"]), "{ttl}");
    assert_eq!(ttl["payload"]["granted_ttl"], 2);
    // Watch the prefix on a follower to learn the revision of the expiry.
    let follower = if leader == 1 { 2 } else { 1 };
    let mut w = Client::connect(cluster.addr(follower)).expect("follower");
    w.set_read_timeout(TIMEOUT);
    let created = ask(
        &mut w,
        "WATCH",
        json!({"op": "create", "key": "svc/", "prefix": true}),
    );
    assert_eq!(created["payload"]["created"], true, "{created}");
    // (The follower may apply the puts after the watch was created: they
    // come first then.)
    let m = loop {
        let m = w.read_reply().expect("the expiry's events");
        if m.get("req_id").is_none() && m["payload"]["events"][0]["type"] == "delete" {
            break m;
        }
    };
    let waited = granted.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "expired after {waited:?}, before its TTL"
    );
    assert!(
        waited <= Duration::from_secs(2) + EXPIRY_SLACK,
        "expired after {waited:?}"
    );
    let events = m["payload"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "both keys in one revision: {m}");
    assert!(events.iter().all(|e| e["type"] == "delete"), "{m}");
    let revision = m["payload"]["revision"].as_u64().expect("revision");
    // Every node: the keys gone, and the revision where they went.
    for id in 1..=3 {
        let mut n = Client::connect(cluster.addr(id)).expect("node");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let r = ask(
                &mut n,
                "RANGE",
                json!({"key": "svc/", "prefix": true, "stale": true}),
            );
            if r["payload"]["revision"].as_u64() >= Some(revision) {
                assert_eq!(r["payload"]["count"], 0, "node {id}: {r}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never applied the expiry"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The history shows both deletes at that one revision.
        let past = ask(
            &mut n,
            "RANGE",
            json!({"key": "svc/", "prefix": true, "stale": true, "rev": revision - 1}),
        );
        assert_eq!(past["payload"]["count"], 2, "node {id}: {past}");
    }
    let r = ask(&mut c, "LEASE", json!({"op": "keepalive", "id": id}));
    assert_eq!(r["payload"]["code"], "LEASE_NOT_FOUND", "{r}");
}

#[test]
fn a_lease_kept_alive_through_a_follower_and_a_leader_kill_never_expires() {
    let mut cluster = Cluster::start(3);
    let first = cluster.wait_for_leader(TIMEOUT);
    let all = [1, 2, 3];
    let id = grant(&cluster, &all, 3);
    let r = ask_any(
        &cluster,
        &all,
        "SET",
        json!({"key": "lock", "value": "me", "lease": id}),
    );
    assert_eq!(r["msg_type"], "SET", "{r}");
    // Keep it alive through a follower for longer than its TTL.
    let follower = if first == 1 { 2 } else { 1 };
    let mut f = Client::connect(cluster.addr(follower)).expect("follower");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let r = ask(&mut f, "LEASE", json!({"op": "keepalive", "id": id}));
        assert_eq!(r["payload"]["ttl"], 3, "a follower forwards it: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Kill the leader and keep going on the survivors.
    cluster.kill(first);
    let survivors: Vec<u64> = all.iter().copied().filter(|&n| n != first).collect();
    let until = Instant::now() + Duration::from_secs(6);
    let mut renewed = 0;
    while Instant::now() < until {
        let r = ask_any(
            &cluster,
            &survivors,
            "LEASE",
            json!({"op": "keepalive", "id": id}),
        );
        assert_eq!(r["payload"]["ttl"], 3, "kept alive: {r}");
        renewed += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(renewed >= 5);
    let r = ask_any(&cluster, &survivors, "GET", json!({"key": "lock"}));
    assert_eq!(r["payload"]["value"], "me", "the lease never expired: {r}");
    // Revoked: the key goes at once.
    let r = ask_any(
        &cluster,
        &survivors,
        "LEASE",
        json!({"op": "revoke", "id": id}),
    );
    assert_eq!(r["payload"]["deleted"], 1, "{r}");
    let r = ask_any(&cluster, &survivors, "GET", json!({"key": "lock"}));
    assert_eq!(r["payload"]["value"], Value::Null, "{r}");
}

#[test]
fn revisions_leases_and_the_history_survive_kill_9_of_every_node() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "40"]);
    cluster.wait_for_leader(TIMEOUT);
    let all = [1, 2, 3];
    let id = grant(&cluster, &all, 4);
    let r = ask_any(
        &cluster,
        &all,
        "SET",
        json!({"key": "svc/a", "value": "up", "lease": id}),
    );
    assert_eq!(r["msg_type"], "SET", "{r}");
    // Enough writes for every node to snapshot, then some after it.
    for i in 0..60 {
        let r = ask_any(
            &cluster,
            &all,
            "SET",
            json!({"key": "n", "value": format!("{i}")}),
        );
        assert_eq!(r["msg_type"], "SET", "{r}");
    }
    let before = ask_any(&cluster, &all, "GET", json!({"key": "n"}));
    let b = &before["payload"];
    for id in all {
        cluster.kill(id);
    }
    for id in all {
        cluster.restart(id);
    }
    cluster.wait_for_leader(TIMEOUT);
    let restarted = Instant::now();
    let after = ask_any(&cluster, &all, "GET", json!({"key": "n"}));
    let a = &after["payload"];
    for field in [
        "value",
        "create_revision",
        "mod_revision",
        "version",
        "revision",
    ] {
        assert_eq!(a[field], b[field], "{field}: {before} then {after}");
    }
    // The lease and its key are still there, with their TTL.
    let ttl = ask_any(
        &cluster,
        &all,
        "LEASE",
        json!({"op": "ttl", "id": id, "keys": true}),
    );
    assert_eq!(ttl["payload"]["granted_ttl"], 4, "{ttl}");
    assert_eq!(ttl["payload"]["keys"], json!(["svc/a"]), "{ttl}");
    // The history holds what the log replayed after each node's snapshot:
    // a watch from the last write's revision is served on every node.
    let last = b["mod_revision"].as_u64().expect("mod_revision");
    for node in all {
        let mut c = Client::connect(cluster.addr(node)).expect("node");
        c.set_read_timeout(TIMEOUT);
        let r = ask(
            &mut c,
            "WATCH",
            json!({"op": "create", "key": "n", "start_revision": last}),
        );
        assert_eq!(r["payload"]["created"], true, "node {node}: {r}");
        let m = c.read_reply().expect("the replayed change");
        assert_eq!(
            m["payload"]["revision"].as_u64(),
            Some(last),
            "node {node}: {m}"
        );
        // And from revision 1: a node that restarted from a snapshot says
        // COMPACTED, naming where its history starts; one that replayed
        // its whole log still holds the first write.
        let r = ask(
            &mut c,
            "WATCH",
            json!({"op": "create", "key": "n", "start_revision": 1}),
        );
        if r["payload"]["created"] == true {
            let m = c.read_reply().expect("the first write");
            assert_eq!(
                m["payload"]["events"][0]["kv"]["value"], "0",
                "node {node}: {m}"
            );
        } else {
            assert_eq!(r["payload"]["code"], "COMPACTED", "node {node}: {r}");
            assert!(r["payload"]["compact_revision"].as_u64() > Some(1), "{r}");
        }
    }
    // Not kept alive, it expires: no earlier than its TTL after the new
    // leader took over.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = ask_any(&cluster, &all, "GET", json!({"key": "svc/a"}));
        if r["payload"]["value"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        restarted.elapsed() >= Duration::from_secs(3),
        "expired {:?} after the restart, before its TTL of 4 s could have run",
        restarted.elapsed()
    );
}
