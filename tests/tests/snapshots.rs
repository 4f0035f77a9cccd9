//! Snapshots and log compaction with real processes: a follower that missed
//! tens of thousands of writes, or lost its disk, catches up through
//! InstallSnapshot; restarts after compaction keep the state; the data
//! directory stays bounded while writes go on.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use poncho_tests::{workspace_bin, write_with_retry, Cluster};
use serde_json::json;

const ELECTION: Duration = Duration::from_secs(10);
const SNAPSHOT_ARGS: [&str; 6] = [
    "--snapshot-entries",
    "5000",
    "--snapshot-keep-tail",
    "500",
    "--segment-bytes",
    "1048576",
];

fn bench_writes(cluster: &Cluster, leader: u64, count: u64) {
    let out = Command::new(workspace_bin("poncho-bench"))
        .args([
            "--cluster",
            &cluster.addr(leader).to_string(),
            "--clients",
            "32",
            "--keys",
            "1000",
            "--quiet",
        ])
        .args(["--requests", &count.to_string(), "--duration", "60"])
        .output()
        .expect("run poncho-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "poncho-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("total: {count} ops")) && text.contains(", 0 errors"),
        "{text}"
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn stale_get(cluster: &Cluster, id: u64, key: &str) -> serde_json::Value {
    let mut c = cluster.client(id);
    let reply = c
        .request(&json!({"msg_type": "GET", "payload": {"key": key, "stale": true}}))
        .unwrap();
    reply["payload"]["value"].clone()
}

fn wait_for_value(cluster: &Cluster, id: u64, key: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stale_get(cluster, id, key) != want {
        assert!(
            Instant::now() < deadline,
            "node {id} never saw {key}={want}\n{}",
            cluster.log(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn marker(cluster: &Cluster, key: &str, value: &str) {
    write_with_retry(
        cluster,
        &json!({"msg_type": "SET", "payload": {"key": key, "value": value}}),
        ELECTION,
    );
}

#[test]
fn a_follower_that_missed_50000_writes_or_lost_its_disk_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, &SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader(ELECTION);
    let away = if leader == 3 { 2 } else { 3 };
    marker(&cluster, "first", "1");
    cluster.kill(away);
    bench_writes(&cluster, leader, 50_000);
    marker(&cluster, "last", "1");
    assert!(
        cluster.log(leader).contains("log compacted through"),
        "the leader compacted its log"
    );

    cluster.restart(away);
    wait_for_value(&cluster, away, "last", "1", Duration::from_secs(20));
    assert!(
        cluster
            .log(away)
            .contains("installed snapshot through index"),
        "{}",
        cluster.log(away)
    );
    assert_eq!(stale_get(&cluster, away, "first"), "1");
    assert_ne!(
        stale_get(&cluster, away, "key:00000999"),
        serde_json::Value::Null
    );

    // A brand-new empty data directory for an existing node id.
    let other = (1..=3).find(|&i| i != leader && i != away).unwrap();
    cluster.kill(other);
    std::fs::remove_dir_all(&cluster.nodes[(other - 1) as usize].data_dir).unwrap();
    marker(&cluster, "after-wipe", "1");
    cluster.restart(other);
    wait_for_value(&cluster, other, "after-wipe", "1", Duration::from_secs(20));
    assert!(cluster
        .log(other)
        .contains("installed snapshot through index"));
    assert_eq!(stale_get(&cluster, other, "first"), "1");
}

#[test]
fn restart_after_compaction_keeps_the_state_and_the_data_directory_stays_bounded() {
    let mut cluster = Cluster::start_with(3, &SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader(ELECTION);
    let mut largest = 0;
    for round in 0..5 {
        bench_writes(&cluster, leader, 10_000);
        marker(&cluster, "round", &round.to_string());
        for node in &cluster.nodes {
            largest = largest.max(dir_bytes(&node.data_dir));
        }
    }
    // 50,000 entries of ~170 bytes would be ~9 MB of log per node without
    // compaction; with it, at most a few 1 MiB segments and two snapshots.
    assert!(
        largest < 6 << 20,
        "a data directory grew to {largest} bytes"
    );
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(ELECTION);
    for id in 1..=3 {
        wait_for_value(&cluster, id, "round", "4", Duration::from_secs(10));
        assert_ne!(
            stale_get(&cluster, id, "key:00000000"),
            serde_json::Value::Null,
            "node {id}"
        );
    }
}
