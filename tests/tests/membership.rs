//! Membership changes on real processes (issue 13): grow and shrink a live
//! cluster through `MEMBER`, learners that catch up before they vote, a
//! learner that is behind refused promotion, the leader removed, a node
//! whose disk is gone replaced under a new id, removed nodes that cannot
//! disrupt, every node restarted (configuration from the log and from a
//! snapshot), and `--force-new-cluster`.

use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

/// Sends `payload` as `msg_type` to whichever node leads, again while it is
/// refused with one of `retry_on` (or NOT_LEADER, NO_LEADER, or the
/// connection is lost), for up to `TIMEOUT`: the last reply.
fn at_leader(cluster: &mut Cluster, msg_type: &str, payload: Value, retry_on: &[&str]) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader = cluster.wait_for_leader(TIMEOUT);
        let reply = Client::connect(cluster.addr(leader))
            .and_then(|mut c| c.request(&json!({"msg_type": msg_type, "payload": payload})));
        let code = match &reply {
            Ok(r) if r["msg_type"] == "ERROR" => r["payload"]["code"].as_str().map(str::to_owned),
            Ok(_) => return reply.unwrap(),
            Err(_) => Some("connection".into()),
        };
        let again = code.as_deref().is_some_and(|c| {
            retry_on.contains(&c) || c == "NOT_LEADER" || c == "NO_LEADER" || c == "connection"
        });
        if !again {
            return reply.unwrap();
        }
        assert!(Instant::now() < deadline, "{msg_type} {payload}: {reply:?}");
        sleep(Duration::from_millis(100));
    }
}

/// A membership change, retried while another is in flight: its reply.
fn change(cluster: &mut Cluster, payload: Value) -> Value {
    let reply = at_leader(cluster, "MEMBER", payload.clone(), &["CHANGE_IN_PROGRESS"]);
    assert_eq!(reply["msg_type"], "MEMBER", "{payload}: {reply}");
    reply["payload"].clone()
}

/// Adds node `id` as a learner and promotes it once it has caught up.
fn add_and_promote(cluster: &mut Cluster, id: u64) {
    let addr = cluster.addr(id).to_string();
    change(
        cluster,
        json!({"op": "add", "id": id, "addr": addr, "learner": true}),
    );
    let promoted = at_leader(
        cluster,
        "MEMBER",
        json!({"op": "promote", "id": id}),
        &["CHANGE_IN_PROGRESS", "LEARNER_NOT_READY"],
    );
    assert_eq!(promoted["msg_type"], "MEMBER", "{promoted}");
}

/// Waits until the leader's `member list` shows every member healthy: the
/// strict check refuses a removal while the remaining voters include one
/// not yet heard from (a follower still connecting after the start).
fn wait_all_healthy(cluster: &mut Cluster) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list = at_leader(cluster, "MEMBER", json!({"op": "list"}), &[]);
        let members = list["payload"]["members"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !members.is_empty() && members.iter().all(|m| m["healthy"] == true) {
            return;
        }
        assert!(Instant::now() < deadline, "members not all healthy: {list}");
        sleep(Duration::from_millis(50));
    }
}

/// The voters and learners `member list` shows at the leader.
fn members(cluster: &mut Cluster) -> (Vec<u64>, Vec<u64>) {
    let list = at_leader(cluster, "MEMBER", json!({"op": "list"}), &[]);
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for m in list["payload"]["members"].as_array().expect("members") {
        let id = m["id"].as_u64().expect("id");
        if m["learner"] == true {
            learners.push(id);
        } else {
            voters.push(id);
        }
    }
    (voters, learners)
}

fn set_at_leader(cluster: &mut Cluster, key: &str, value: &str) {
    let reply = at_leader(
        cluster,
        "SET",
        json!({"key": key, "value": value}),
        &["TIMEOUT", "LEADERSHIP_LOST"],
    );
    assert_eq!(reply["msg_type"], "SET", "{reply}");
}

/// `key`'s value as node `id` has applied it (a stale read of its own
/// state), once it has `want`.
fn wait_value(cluster: &Cluster, id: u64, key: &str, want: &str) {
    wait_until(&format!("node {id} to hold {key}={want}"), TIMEOUT, || {
        Client::connect(cluster.addr(id))
            .and_then(|mut c| {
                c.request(&json!({"msg_type": "GET", "payload": {"key": key, "stale": true}}))
            })
            .is_ok_and(|r| r["payload"]["value"] == want)
    });
}

fn role(cluster: &Cluster, id: u64) -> String {
    cluster
        .status(id)
        .and_then(|s| s["role"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_cluster_grows_from_three_to_five_and_shrinks_back_keeping_every_write() {
    let mut cluster = Cluster::start(3);
    set_at_leader(&mut cluster, "before", "grow");
    let four = cluster.start_joining();
    let five = cluster.start_joining();
    assert_eq!(role(&cluster, four), "joining");
    add_and_promote(&mut cluster, four);
    set_at_leader(&mut cluster, "between", "adds");
    add_and_promote(&mut cluster, five);
    assert_eq!(members(&mut cluster), (vec![1, 2, 3, 4, 5], vec![]));
    set_at_leader(&mut cluster, "after", "grow");
    for id in 1..=5 {
        wait_value(&cluster, id, "before", "grow");
        wait_value(&cluster, id, "after", "grow");
    }
    // Shrink back to three, the leader first (it hands over and steps down).
    let leader = cluster.wait_for_leader(TIMEOUT);
    wait_all_healthy(&mut cluster);
    change(&mut cluster, json!({"op": "remove", "id": leader}));
    wait_until("the removed leader to say it was removed", TIMEOUT, || {
        role(&cluster, leader) == "removed"
    });
    let next = cluster.wait_for_leader(TIMEOUT);
    assert_ne!(next, leader, "a removed leader must not lead again");
    let other = (1..=5)
        .find(|&id| id != leader && id != next)
        .expect("a third");
    wait_all_healthy(&mut cluster);
    change(&mut cluster, json!({"op": "remove", "id": other}));
    let (voters, learners) = members(&mut cluster);
    assert_eq!(voters.len(), 3, "{voters:?}");
    assert!(learners.is_empty() && !voters.contains(&leader) && !voters.contains(&other));
    set_at_leader(&mut cluster, "after", "shrink");
    for &id in &voters {
        wait_value(&cluster, id, "between", "adds");
        wait_value(&cluster, id, "after", "shrink");
    }
    // A removed node serves nothing, and its id is never reused.
    let refused = Client::connect(cluster.addr(leader))
        .and_then(|mut c| c.get("before"))
        .expect("the removed node answers");
    assert_eq!(refused["payload"]["code"], "REMOVED", "{refused}");
    let old_addr = cluster.addr(leader).to_string();
    let again = at_leader(
        &mut cluster,
        "MEMBER",
        json!({"op": "add", "id": leader, "addr": old_addr}),
        &["CHANGE_IN_PROGRESS"],
    );
    assert_eq!(again["payload"]["code"], "MEMBERSHIP_REFUSED", "{again}");
}

#[test]
fn a_learner_far_behind_is_refused_promotion_until_it_catches_up() {
    let mut cluster = Cluster::start(3);
    let four = cluster.start_joining();
    // Stopped (SIGSTOP) right after it is added, it cannot catch up.
    assert!(cluster.nodes[(four - 1) as usize].pause());
    let addr = cluster.addr(four).to_string();
    change(
        &mut cluster,
        json!({"op": "add", "id": four, "addr": addr, "learner": true}),
    );
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut client = Client::connect(cluster.addr(leader)).expect("leader");
    for i in 0..1200 {
        let reply = client.set(&format!("k{i}"), "v").expect("set");
        assert_eq!(reply["msg_type"], "SET", "{reply}");
    }
    let refused = at_leader(
        &mut cluster,
        "MEMBER",
        json!({"op": "promote", "id": four}),
        &["CHANGE_IN_PROGRESS"],
    );
    assert_eq!(refused["payload"]["code"], "LEARNER_NOT_READY", "{refused}");
    let message = refused["payload"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("behind"), "{message}");
    // A learner's absence never costs the voters their quorum.
    set_at_leader(&mut cluster, "still", "writable");
    cluster.nodes[(four - 1) as usize].resume();
    let promoted = at_leader(
        &mut cluster,
        "MEMBER",
        json!({"op": "promote", "id": four}),
        &["CHANGE_IN_PROGRESS", "LEARNER_NOT_READY"],
    );
    assert_eq!(promoted["msg_type"], "MEMBER", "{promoted}");
    wait_value(&cluster, four, "k1199", "v");
}

#[test]
fn a_node_whose_disk_is_gone_is_replaced_under_a_new_id() {
    let mut cluster = Cluster::start(3);
    set_at_leader(&mut cluster, "kept", "yes");
    let leader = cluster.wait_for_leader(TIMEOUT);
    let lost = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.kill(lost);
    std::fs::remove_dir_all(cluster.data_dir(lost)).expect("wipe its data");
    // Past an election timeout (300 ms), the leader counts it unhealthy.
    sleep(Duration::from_secs(1));
    // Adding a voter with one of three down would leave 2 healthy of 4
    // voters, short of the 3 a quorum needs: refused unless forced.
    let new = cluster.start_joining();
    let addr = cluster.addr(new).to_string();
    let unsafe_add = at_leader(
        &mut cluster,
        "MEMBER",
        json!({"op": "add", "id": new, "addr": addr}),
        &["CHANGE_IN_PROGRESS"],
    );
    assert_eq!(
        unsafe_add["payload"]["code"], "UNSAFE_CHANGE",
        "{unsafe_add}"
    );
    change(&mut cluster, json!({"op": "remove", "id": lost}));
    add_and_promote(&mut cluster, new);
    let (voters, _) = members(&mut cluster);
    assert!(
        voters.contains(&new) && !voters.contains(&lost),
        "{voters:?}"
    );
    wait_value(&cluster, new, "kept", "yes");
    // The old node, restarted empty with its old id, is not let back in.
    cluster.restart(lost);
    sleep(Duration::from_secs(1));
    assert_ne!(role(&cluster, lost), "leader");
    set_at_leader(&mut cluster, "after", "replace");
    wait_value(&cluster, new, "after", "replace");
}

#[test]
fn a_removed_node_left_running_raises_no_term_and_wins_no_election() {
    let mut cluster = Cluster::start(3);
    set_at_leader(&mut cluster, "k", "1");
    let leader = cluster.wait_for_leader(TIMEOUT);
    let gone = (1..=3).find(|&id| id != leader).expect("a follower");
    wait_all_healthy(&mut cluster);
    change(&mut cluster, json!({"op": "remove", "id": gone}));
    wait_until("the removed node to know", TIMEOUT, || {
        role(&cluster, gone) == "removed"
    });
    let term = |c: &Cluster, id: u64| c.status(id).and_then(|s| s["term"].as_u64());
    let before = term(&cluster, leader);
    // Many election timeouts (30 ticks of 10 ms each) later, nothing moved.
    sleep(Duration::from_secs(3));
    assert_eq!(term(&cluster, leader), before, "the term moved");
    assert_eq!(cluster.wait_for_leader(TIMEOUT), leader);
    assert!(cluster.log(gone).contains("was removed from the cluster"));
}

#[test]
fn every_node_restarted_after_changes_recovers_the_configuration_from_log_and_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-entries", "20", "--snapshot-keep-tail", "5"],
    );
    let four = cluster.start_joining();
    add_and_promote(&mut cluster, four);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let other = (1..=3).find(|&id| id != leader).expect("a follower");
    wait_all_healthy(&mut cluster);
    change(&mut cluster, json!({"op": "remove", "id": other}));
    // Enough writes that every node snapshots past the changes.
    for i in 0..60 {
        set_at_leader(&mut cluster, &format!("k{i}"), "v");
    }
    let expected = members(&mut cluster);
    for id in 1..=4 {
        if id != other {
            assert!(
                cluster.log(id).contains("snapshot through index"),
                "node {id} took no snapshot"
            );
        }
    }
    for id in 1..=4 {
        cluster.kill(id);
    }
    for id in 1..=4 {
        if id != other {
            cluster.restart(id);
        }
    }
    assert_eq!(members(&mut cluster), expected);
    set_at_leader(&mut cluster, "after", "restart");
    wait_value(&cluster, four, "after", "restart");
}

#[test]
fn force_new_cluster_restarts_a_survivor_as_a_one_node_cluster_that_grows_again() {
    let mut cluster = Cluster::start(3);
    set_at_leader(&mut cluster, "survives", "yes");
    cluster.kill(2);
    cluster.kill(3);
    cluster.restart_with(1, &["--force-new-cluster"]);
    assert_eq!(cluster.wait_for_leader(TIMEOUT), 1);
    assert_eq!(members(&mut cluster), (vec![1], vec![]));
    wait_value(&cluster, 1, "survives", "yes");
    set_at_leader(&mut cluster, "alone", "yes");
    // Restarted without the flag, it keeps its one-node configuration.
    cluster.restart_with(1, &[]);
    assert_eq!(members(&mut cluster), (vec![1], vec![]));
    let four = cluster.start_joining();
    add_and_promote(&mut cluster, four);
    wait_value(&cluster, four, "alone", "yes");
    assert!(cluster.log(1).contains("--force-new-cluster"));
}

#[test]
fn membership_changes_and_transfers_need_root_and_a_list_needs_a_login() {
    use poncho_tests::auth::{add_role, add_user, enable_auth, log_in, Login};
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let mut root = Client::connect(cluster.addr(leader)).expect("leader");
    let root_login = Login::new("root", "rootpw");
    add_role(&mut root, "rw", &[("prefix", "")], "readwrite");
    add_user(&mut root, &Login::new("alice", "alicepw"), &["rw"]);
    enable_auth(&mut root, &root_login);
    cluster.log_in_as(root_login.clone());
    let ask = |client: &mut Client, msg_type: &str, payload: Value| {
        let reply = client
            .request(&json!({"msg_type": msg_type, "payload": payload}))
            .expect("reply");
        reply["payload"]["code"].as_str().map(str::to_owned)
    };
    let mut anonymous = Client::connect(cluster.addr(leader)).expect("leader");
    assert_eq!(
        ask(&mut anonymous, "MEMBER", json!({"op": "list"})).as_deref(),
        Some("UNAUTHENTICATED")
    );
    let mut alice = Client::connect(cluster.addr(leader)).expect("leader");
    assert!(log_in(&mut alice, &Login::new("alice", "alicepw")).expect("login"));
    assert_eq!(ask(&mut alice, "MEMBER", json!({"op": "list"})), None);
    let other = (1..=3).find(|&id| id != leader).expect("a follower");
    for (msg_type, payload) in [
        ("MEMBER", json!({"op": "remove", "id": other})),
        (
            "MEMBER",
            json!({"op": "add", "id": 9, "addr": "127.0.0.1:1", "learner": true}),
        ),
        (
            "MEMBER",
            json!({"op": "update", "id": other, "addr": "127.0.0.1:2"}),
        ),
        ("TRANSFER_LEADER", json!({"to": other})),
    ] {
        assert_eq!(
            ask(&mut alice, msg_type, payload.clone()).as_deref(),
            Some("PERMISSION_DENIED"),
            "{msg_type} {payload}"
        );
    }
    let list = root
        .request(&json!({"msg_type": "MEMBER", "payload": {"op": "list"}}))
        .expect("reply");
    let ids: Vec<u64> = list["payload"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "nothing changed: {list}");
    // Root may: a transfer is answered once the target leads.
    let moved = root
        .request(&json!({"msg_type": "TRANSFER_LEADER", "payload": {"to": other}}))
        .expect("reply");
    assert_eq!(moved["payload"]["leader_id"], other, "{moved}");
}

#[test]
fn a_member_moved_with_update_is_reached_at_its_new_address() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(TIMEOUT);
    let moved = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.stop(moved);
    let new_addr = cluster.free_addr(moved);
    let updated = change(
        &mut cluster,
        json!({"op": "update", "id": moved, "addr": new_addr.to_string()}),
    );
    let listed = updated["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == moved)
        .map(|m| m["addr"].clone());
    assert_eq!(listed, Some(json!(new_addr.to_string())), "{updated}");
    cluster.nodes[(moved - 1) as usize].move_to(new_addr);
    cluster.restart(moved);
    set_at_leader(&mut cluster, "after", "move");
    wait_value(&cluster, moved, "after", "move");
}

/// The index in the first line of `log` that contains `before`, right
/// after `before` (for lines like "... snapshot through index 123 ...").
fn index_after(log: &str, before: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.split(before).nth(1))
        .find_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
}

/// A node that needs a snapshot is not sent one older than
/// `--snapshot-transfer-max-age` entries: the leader writes a fresh one
/// first, so the learner installs a snapshot of about the leader's state
/// now, not of the one 100 writes ago, and replays little after it.
#[test]
fn a_new_member_gets_a_fresh_snapshot_when_the_latest_is_too_old() {
    let max_age = 20;
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries",
            "100",
            "--snapshot-keep-tail",
            "0",
            "--snapshot-transfer-max-age",
            &max_age.to_string(),
        ],
    );
    for i in 0..110 {
        set_at_leader(&mut cluster, &format!("k{i}"), "v");
    }
    let leader = cluster.wait_for_leader(TIMEOUT);
    wait_until("the leader's first snapshot", TIMEOUT, || {
        cluster.log(leader).contains("written; log compacted")
    });
    let first = index_after(&cluster.log(leader), "snapshot through index ").expect("first");
    // Not so many that the next snapshot is due (100 after the first).
    for i in 110..170 {
        set_at_leader(&mut cluster, &format!("k{i}"), "v");
    }
    let applied = cluster
        .status(leader)
        .and_then(|s| s["commit_index"].as_u64());
    let applied = applied.expect("commit index");
    assert!(
        applied > first + 2 * max_age && applied < first + 100,
        "applied {applied}, snapshot {first}"
    );
    let four = cluster.start_joining();
    add_and_promote(&mut cluster, four);
    wait_value(&cluster, four, "k169", "v");
    let installed = index_after(&cluster.log(four), "installed snapshot through index ")
        .expect("the learner installed a snapshot");
    assert!(
        installed + max_age >= applied,
        "the learner installed the snapshot through {installed}, while the leader had applied \
         {applied} (its earlier snapshot: through {first})"
    );
    assert!(cluster
        .log(leader)
        .contains("entries old: sending a fresh one once it is written"));
}
