//! End-to-end: real `poncho-server` processes on loopback, killed with -9
//! and restarted. Each test bounds its own time and stops every process it
//! started (the harness kills them on drop).

use std::time::{Duration, Instant};

use poncho_tests::{write_with_retry, Client, Cluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(15);

fn set(key: &str, value: &str) -> Value {
    json!({"msg_type": "SET", "payload": {"key": key, "value": value}})
}

/// A linearizable GET at the current leader, retried across elections.
fn read(cluster: &mut Cluster, key: &str) -> Value {
    let deadline = Instant::now() + WRITE;
    loop {
        let leader = cluster.wait_for_leader(ELECTION);
        if let Ok(reply) = Client::connect(cluster.addr(leader)).and_then(|mut c| c.get(key)) {
            if reply["msg_type"] == "GET" {
                return reply["payload"]["value"].clone();
            }
        }
        assert!(Instant::now() < deadline, "no linearizable read of {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stale_read(cluster: &Cluster, id: u64, key: &str) -> Value {
    let mut c = cluster.client(id);
    let reply = c
        .request(&json!({"msg_type": "GET", "payload": {"key": key, "stale": true}}))
        .unwrap();
    assert_eq!(reply["msg_type"], "GET", "{reply}");
    reply["payload"]["value"].clone()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_three_node_cluster_elects_the_hinted_leader_and_redirects_follower_writes() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    assert_eq!(leader, 1, "node 1 has the is_leader hint");
    assert!(
        cluster
            .log(1)
            .contains("TCP Listener on address: 127.0.0.1, port: "),
        "{}",
        cluster.log(1)
    );

    let follower = 2;
    // The leader knows it won before the followers hear from it; until its
    // first AppendEntries arrives a follower rightly answers NO_LEADER.
    wait_until("node 2 learning the leader", ELECTION, || {
        cluster
            .status(follower)
            .is_some_and(|s| s["leader_id"] == 1)
    });
    let reply = cluster.client(follower).set("k", "v").unwrap();
    assert_eq!(reply["msg_type"], "ERROR");
    assert_eq!(reply["payload"]["code"], "NOT_LEADER");
    assert_eq!(reply["payload"]["leader_id"], 1);
    assert_eq!(reply["payload"]["leader_addr"], cluster.addr(1).to_string());

    let reply = cluster.client(1).set("k", "v").unwrap();
    assert_eq!(reply["msg_type"], "SET", "{reply}");
    assert_eq!(read(&mut cluster, "k"), "v");
    // Followers serve stale reads once they have applied the write.
    for id in [2, 3] {
        wait_until(
            "followers applying the write",
            Duration::from_secs(5),
            || stale_read(&cluster, id, "k") == "v",
        );
    }
    let status = cluster.status(2).unwrap();
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write_and_it_catches_up_on_restart() {
    let mut cluster = Cluster::start(3);
    let first = cluster.wait_for_leader(ELECTION);
    for i in 0..50 {
        write_with_retry(&cluster, &set(&format!("k{i}"), &format!("v{i}")), WRITE);
    }
    cluster.kill(first);
    let second = cluster.wait_for_leader(ELECTION);
    assert_ne!(second, first);
    for i in 0..50 {
        assert_eq!(
            read(&mut cluster, &format!("k{i}")),
            format!("v{i}"),
            "k{i} after leader kill"
        );
    }
    for i in 50..60 {
        write_with_retry(&cluster, &set(&format!("k{i}"), &format!("v{i}")), WRITE);
    }
    cluster.restart(first);
    wait_until(
        "the old leader catching up",
        Duration::from_secs(10),
        || stale_read(&cluster, first, "k59") == "v59",
    );
    assert_eq!(stale_read(&cluster, first, "k0"), "v0");
}

#[test]
fn kill_9_of_every_node_then_restart_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let mut acknowledged = Vec::new();
    for i in 0..100 {
        let key = format!("key{i}");
        write_with_retry(&cluster, &set(&key, &i.to_string()), WRITE);
        acknowledged.push(key);
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(ELECTION);
    for (i, key) in acknowledged.iter().enumerate() {
        assert_eq!(
            read(&mut cluster, key),
            i.to_string(),
            "{key} lost after kill -9 of every node"
        );
    }
}

#[test]
fn a_retried_write_with_the_same_client_id_and_seq_is_applied_once() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    let registered = c.request(&json!({"msg_type": "REGISTER_CLIENT"})).unwrap();
    assert_eq!(registered["msg_type"], "REGISTER_CLIENT", "{registered}");
    let alice = registered["payload"]["client_id"]
        .as_u64()
        .expect("client_id");
    let first = json!({"msg_type": "SET", "req_id": 1,
        "payload": {"key": "x", "value": "first", "client_id": alice, "seq": 1}});
    let reply1 = c.request(&first).unwrap();
    assert_eq!(reply1["msg_type"], "SET", "{reply1}");
    assert_eq!(c.set("x", "second").unwrap()["msg_type"], "SET");
    // The retry (a client that timed out) must not overwrite "second".
    let reply2 = c.request(&first).unwrap();
    assert_eq!(
        reply2["payload"], reply1["payload"],
        "a retry answers with the first result"
    );
    assert_eq!(read(&mut cluster, "x"), "second");
    // An older seq than the session's last is refused.
    let next = json!({"msg_type": "DELETE", "payload": {"key": "x", "client_id": alice, "seq": 2}});
    assert_eq!(c.request(&next).unwrap()["payload"]["deleted"], true);
    let reply3 = c.request(&first).unwrap();
    assert_eq!(reply3["payload"]["code"], "STALE_SEQUENCE", "{reply3}");
}

#[test]
fn cas_delete_and_keys_work_end_to_end() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(1);
    let cas = |expected: Value, value: Value| json!({"msg_type": "CAS", "payload": {"key": "lock", "expected": expected, "value": value}});
    let r = c.request(&cas(Value::Null, json!("me"))).unwrap();
    assert_eq!(
        (
            r["payload"]["swapped"].clone(),
            r["payload"]["current"].clone()
        ),
        (json!(true), json!("me"))
    );
    let r = c.request(&cas(Value::Null, json!("you"))).unwrap();
    assert_eq!(
        (
            r["payload"]["swapped"].clone(),
            r["payload"]["current"].clone()
        ),
        (json!(false), json!("me"))
    );
    for k in ["a/1", "a/2", "b/1"] {
        c.set(k, "x").unwrap();
    }
    let r = c
        .request(&json!({"msg_type": "KEYS", "payload": {"prefix": "a/"}}))
        .unwrap();
    assert_eq!(r["payload"]["keys"], json!(["a/1", "a/2"]));
    let r = c
        .request(&json!({"msg_type": "DELETE", "payload": {"key": "a/1"}}))
        .unwrap();
    assert_eq!(r["payload"]["deleted"], true);
    let r = c
        .request(&json!({"msg_type": "DELETE", "payload": {"key": "a/1"}}))
        .unwrap();
    assert_eq!(r["payload"]["deleted"], false);
    assert_eq!(c.get("a/1").unwrap()["payload"]["value"], Value::Null);
}

#[test]
fn pipelined_requests_get_one_reply_each_in_order() {
    // One node (a read is confirmed at once, so only the read-your-writes
    // rule makes it wait for the SET) and three (a heartbeat round).
    for nodes in [1, 3] {
        pipeline_in_order(nodes);
    }
}

fn pipeline_in_order(nodes: usize) {
    let mut cluster = Cluster::start(nodes);
    let leader = cluster.wait_for_leader(ELECTION);
    let mut c = cluster.client(leader);
    let mut batch = Vec::new();
    for i in 0..200u64 {
        let line = if i % 3 == 2 {
            json!({"msg_type": "GET", "req_id": i, "payload": {"key": "p"}})
        } else if i % 3 == 1 {
            json!({"msg_type": "HEALTHCHECK", "req_id": i})
        } else {
            json!({"msg_type": "SET", "req_id": i, "payload": {"key": "p", "value": i.to_string()}})
        };
        batch.extend(serde_json::to_vec(&line).unwrap());
        batch.push(b'\n');
    }
    c.send_raw(&batch).unwrap();
    for i in 0..200u64 {
        let reply = c.read_reply().unwrap();
        assert_eq!(reply["req_id"], i, "replies arrive in request order");
        assert_ne!(reply["msg_type"], "ERROR", "{reply}");
        if i % 3 == 2 {
            // Read-your-writes on a connection: the GET sees at least the
            // SET sent just before it, though it did not wait for its reply
            // (it may see later ones too: they were concurrent with it).
            let seen: u64 = reply["payload"]["value"].as_str().unwrap().parse().unwrap();
            assert!(
                seen >= i - 2,
                "GET {i} saw {seen}, before the SET {} it follows",
                i - 2
            );
        }
    }
}

#[test]
fn probes_without_a_sender_get_the_current_term_and_change_nothing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let term = cluster.status(leader).unwrap()["term"].clone();
    let probed = if leader == 2 { 3 } else { 2 };
    wait_until("the probed node knowing the leader", ELECTION, || {
        cluster
            .status(probed)
            .is_some_and(|s| s["leader_id"] == leader)
    });
    let mut c = cluster.client(probed);
    let vote = json!({"msg_type": "REQUEST_VOTE",
        "payload": {"term": 0, "candidate_id": 9, "last_log_index": 0, "last_log_term": 0}});
    let reply = c.request(&vote).unwrap();
    assert_eq!(reply["msg_type"], "REQUEST_VOTE_REPLY");
    assert_eq!(reply["payload"]["vote_granted"], false);
    assert_eq!(reply["payload"]["term"], term);
    let append = json!({"msg_type": "APPEND_ENTRY",
        "payload": {"term": 99, "leader_id": 9, "prev_log_index": 0, "prev_log_term": 0, "leader_commit": 0}});
    let reply = c.request(&append).unwrap();
    assert_eq!(reply["msg_type"], "APPEND_ENTRY_REPLY");
    assert_eq!(reply["payload"]["success"], false);
    assert_eq!(
        reply["payload"]["term"], term,
        "a probe with a higher term changes nothing"
    );
    assert_eq!(cluster.status(leader).unwrap()["term"], term);
    assert_eq!(cluster.wait_for_leader(ELECTION), leader);
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_data_survives() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    cluster.client(1).set("persist", "yes").unwrap();
    assert_eq!(
        cluster.stop(1),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        cluster.log(1)
    );
    assert!(cluster.log(1).contains("shutting down"));
    cluster.restart(1);
    assert_eq!(read(&mut cluster, "persist"), "yes");
}

#[test]
fn nodes_on_their_own_loopback_ips_connect_to_peers_from_those_ips() {
    let mut cluster = Cluster::start_on_distinct_ips(3, &["-v"]);
    let leader = cluster.wait_for_leader(ELECTION);
    write_with_retry(&cluster, &set("k", "v"), WRITE);
    assert_eq!(read(&mut cluster, "k"), "v");
    // Node 1 sees its peers' connections come from their own addresses, so
    // a firewall rule on 127.0.0.N applies to that node's peer traffic.
    for peer in [2, 3] {
        let from = format!(" from 127.0.0.{peer}:");
        // A peer that started before node 1 listened reconnects with backoff.
        wait_until(
            &format!("a connection{from} in node 1's log (leader {leader})"),
            WRITE,
            || cluster.log(1).contains(&from),
        );
    }
}
