//! Client sessions with real processes (Raft thesis 6.3): a session opened
//! with REGISTER_CLIENT deduplicates retries, and once it is gone (expired or
//! evicted) a retry of its last write is refused with SESSION_EXPIRED on
//! every node, never applied a second time. The hidden server flags
//! `--session-timeout-ms` and `--max-sessions` shrink the limits so each test
//! runs in seconds.

use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);

fn register(c: &mut Client) -> u64 {
    let reply = c.request(&json!({"msg_type": "REGISTER_CLIENT"})).unwrap();
    assert_eq!(reply["msg_type"], "REGISTER_CLIENT", "{reply}");
    reply["payload"]["client_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no client_id: {reply}"))
}

fn set_in(client_id: u64, seq: u64, key: &str, value: &str) -> Value {
    json!({"msg_type": "SET",
        "payload": {"key": key, "value": value, "client_id": client_id, "seq": seq}})
}

fn value(c: &mut Client, key: &str) -> Value {
    let reply = c.get(key).unwrap();
    assert_eq!(reply["msg_type"], "GET", "{reply}");
    reply["payload"]["value"].clone()
}

/// Every node answers a stale GET of `key` with `expected` within 10 s:
/// each applied the same entries, the refused retry included, alike.
fn every_node_holds(cluster: &Cluster, key: &str, expected: &str) {
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = cluster.client(node.id);
            let reply = c
                .request(&json!({"msg_type": "GET", "payload": {"key": key, "stale": true}}))
                .unwrap();
            if reply["payload"]["value"] == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: {key} is {reply}, not {expected:?}",
                node.id
            );
            sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_retry_after_the_session_expired_is_refused_and_not_applied_twice() {
    // Long enough that the in-session retry below lands within it even on a
    // loaded machine; the test then waits it out.
    let timeout = Duration::from_millis(4_000);
    let mut cluster = Cluster::start_with(
        3,
        &["--session-timeout-ms", &timeout.as_millis().to_string()],
    );
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    let id = register(&mut c);
    let write = set_in(id, 1, "x", "first");
    let first = c.request(&write).unwrap();
    assert_eq!(first["msg_type"], "SET", "{first}");
    // Within the timeout a retry gets the first reply and changes nothing.
    let again = c.request(&write).unwrap();
    assert_eq!(again["payload"], first["payload"], "{again}");
    assert_eq!(c.set("x", "second").unwrap()["msg_type"], "SET");

    // Log time is the leader's clock as written into each entry: a retry
    // sent after the timeout is stamped past it.
    sleep(timeout + Duration::from_millis(300));
    let retry = c.request(&write).unwrap();
    assert_eq!(retry["msg_type"], "ERROR", "{retry}");
    assert_eq!(retry["payload"]["code"], "SESSION_EXPIRED", "{retry}");
    // Applied once: the retry did not overwrite the later write.
    assert_eq!(value(&mut c, "x"), "second");
    every_node_holds(&cluster, "x", "second");
    // A new write in the expired session is refused too; a new session works.
    let next = c.request(&set_in(id, 2, "x", "third")).unwrap();
    assert_eq!(next["payload"]["code"], "SESSION_EXPIRED", "{next}");
    let fresh = register(&mut c);
    assert!(fresh > id, "a new id, never an old one: {fresh} after {id}");
    let ok = c.request(&set_in(fresh, 1, "x", "fourth")).unwrap();
    assert_eq!(ok["msg_type"], "SET", "{ok}");
    assert_eq!(value(&mut c, "x"), "fourth");
}

#[test]
fn a_retry_after_the_session_was_evicted_is_refused_and_not_applied_twice() {
    let mut cluster = Cluster::start_with(3, &["--max-sessions", "2"]);
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    let a = register(&mut c);
    let write = set_in(a, 1, "y", "a");
    let first = c.request(&write).unwrap();
    assert_eq!(first["msg_type"], "SET", "{first}");
    assert_eq!(c.set("y", "other").unwrap()["msg_type"], "SET");
    // Two newer sessions: past the cap, the least recently used (a) goes.
    let b = register(&mut c);
    let d = register(&mut c);
    let retry = c.request(&write).unwrap();
    assert_eq!(retry["payload"]["code"], "SESSION_EXPIRED", "{retry}");
    assert_eq!(value(&mut c, "y"), "other");
    every_node_holds(&cluster, "y", "other");
    // The live sessions were not disturbed.
    for (id, v) in [(b, "b"), (d, "d")] {
        let r = c.request(&set_in(id, 1, "y", v)).unwrap();
        assert_eq!(r["msg_type"], "SET", "{r}");
        assert_eq!(
            c.request(&set_in(id, 1, "y", v)).unwrap()["payload"],
            r["payload"]
        );
    }
    assert_eq!(value(&mut c, "y"), "d");
}

#[test]
fn unregistered_sessions_are_refused_and_writes_without_one_still_work() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(1);
    // A write without client_id/seq, as `printf ... | nc` sends it.
    c.send_raw(b"{\"msg_type\":\"SET\",\"payload\":{\"key\":\"k\",\"value\":\"plain\"}}\n")
        .unwrap();
    let plain = c.read_reply().unwrap();
    assert_eq!(plain["msg_type"], "SET", "{plain}");
    let index = plain["payload"]["index"].as_u64().expect("index");
    // Its index is a write's, not a session's; and 9999 was never issued.
    for id in [index, 9_999] {
        let r = c.request(&set_in(id, 1, "k", "sneaky")).unwrap();
        assert_eq!(r["payload"]["code"], "SESSION_EXPIRED", "{r}");
    }
    // A client-chosen string id (the old protocol) is not a session id.
    let r = c
        .request(&json!({"msg_type": "SET",
            "payload": {"key": "k", "value": "sneaky", "client_id": "alice", "seq": 1}}))
        .unwrap();
    assert_eq!(r["payload"]["code"], "BAD_REQUEST", "{r}");
    assert_eq!(value(&mut c, "k"), "plain");
}

#[test]
fn sessions_survive_a_snapshot_and_a_restart_of_every_node() {
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-entries", "20", "--snapshot-keep-tail", "5"],
    );
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    let id = register(&mut c);
    let write = set_in(id, 1, "z", "session");
    let first = c.request(&write).unwrap();
    assert_eq!(first["msg_type"], "SET", "{first}");
    // Enough entries after it for a snapshot that covers the session.
    for i in 0..60 {
        assert_eq!(
            c.set("z", &format!("later-{i}")).unwrap()["msg_type"],
            "SET"
        );
    }
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_dir(&node.data_dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        {
            assert!(Instant::now() < deadline, "node {}: no snapshot", node.id);
            sleep(Duration::from_millis(20));
        }
    }
    drop(c);
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    // The session came back from the snapshot: the retry gets the cached
    // reply and is not applied again.
    let retry = c.request(&write).unwrap();
    assert_eq!(retry["payload"], first["payload"], "{retry}");
    assert_eq!(value(&mut c, "z"), "later-59");
}
