//! End-to-end: a full disk. Each node's data directory is put on a small
//! tmpfs the test mounts (this needs root, as CI runs; elsewhere the tests
//! say why and skip), filled with a filler file, and freed again. Every test
//! bounds its own time and stops every process it started.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{write_with_retry, Cluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(20);
/// How long a node may take to notice a full disk, or freed space.
const NOTICE: Duration = Duration::from_secs(20);
/// Writes sent at most to fill what a node preallocated (64 KiB segments).
const MAX_FILL_WRITES: usize = 400;
/// Small segments and snapshots, so rotation and snapshots meet the full disk.
const ARGS: &[&str] = &["--segment-bytes", "65536", "--snapshot-entries", "100"];

/// A tmpfs of a few MiB mounted over a directory, unmounted on drop.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// Mounts it at `path` (an empty directory); `None` if that is not
    /// possible here (not root), after saying so.
    fn mount(path: &Path) -> Option<SmallFs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs {
                path: path.to_path_buf(),
            }),
            Ok(o) => skip(format!(
                "cannot mount a tmpfs at {} (this test needs root): {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => skip(format!("cannot run mount: {e}")),
        }
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        let mut file = fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // What is left in a partial page, byte by byte.
        while let Ok(1) = file.write(&[0xa5]) {}
    }

    fn free(&self) {
        fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Stops every node, moves each data directory onto its own tmpfs, and
/// starts them again. `None` if tmpfs cannot be mounted here.
fn onto_small_filesystems(cluster: &mut Cluster) -> Option<Vec<SmallFs>> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let mut mounts = Vec::new();
    for &id in &ids {
        assert_eq!(cluster.stop(id), Some(0), "node {id} stops cleanly");
        let dir = cluster.nodes[(id - 1) as usize].data_dir.clone();
        let aside = dir.with_extension("orig");
        fs::rename(&dir, &aside).unwrap();
        fs::create_dir(&dir).unwrap();
        mounts.push(SmallFs::mount(&dir)?);
        for item in fs::read_dir(&aside).unwrap() {
            let path = item.unwrap().path();
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    for &id in &ids {
        cluster.restart(id);
    }
    Some(mounts)
}

fn set(key: &str, value: &str) -> Value {
    json!({"msg_type": "SET", "payload": {"key": key, "value": value}})
}

fn value(i: usize) -> String {
    format!("{i:06}-{}", "v".repeat(2000))
}

/// Polls node `id`'s STATUS until `ok` holds, for at most `NOTICE`.
fn wait_status(cluster: &Cluster, id: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + NOTICE;
    loop {
        if let Some(s) = cluster.status(id) {
            if ok(&s) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: {what} not seen within {NOTICE:?}; last STATUS {:?}\n{}",
            cluster.status(id),
            cluster.all_logs()
        );
        sleep(Duration::from_millis(50));
    }
}

fn stale_get(cluster: &Cluster, id: u64, key: &str) -> Value {
    let request = json!({"msg_type": "GET", "payload": {"key": key, "stale": true}});
    cluster.client(id).request(&request).expect("stale GET")
}

/// Stops every node, starts them all again, and checks that every write in
/// `acked` reads back (linearizably) with its value.
fn restart_all_and_check(cluster: &mut Cluster, acked: &[(String, String)]) {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    for &id in &ids {
        assert_eq!(cluster.stop(id), Some(0), "node {id} stops cleanly");
    }
    for &id in &ids {
        cluster.restart(id);
    }
    cluster.wait_for_leader(ELECTION);
    for (key, want) in acked {
        let got = read_with_retry(cluster, key);
        assert_eq!(got["value"].as_str(), Some(want.as_str()), "key {key}");
    }
}

/// A linearizable GET of `key`, at whichever node leads, within `WRITE`.
fn read_with_retry(cluster: &Cluster, key: &str) -> Value {
    poncho_tests::read_with_retry(cluster, key, WRITE)
}

/// The cluster writes `count` keys from `from` through its leader, each of
/// which must be acknowledged.
fn write_all(cluster: &Cluster, from: usize, count: usize) -> Vec<(String, String)> {
    (from..from + count)
        .map(|i| {
            let (key, value) = (format!("k{i}"), value(i));
            write_with_retry(cluster, &set(&key, &value), WRITE);
            (key, value)
        })
        .collect()
}

/// Writes until node `full` reports `no_space` in STATUS; all of them must
/// be acknowledged, since the other two nodes have space.
fn write_until_no_space(cluster: &Cluster, full: u64, from: usize) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    for i in from..from + MAX_FILL_WRITES {
        acked.extend(write_all(cluster, i, 1));
        if cluster
            .status(full)
            .is_some_and(|s| s["storage"] == "no_space")
        {
            return acked;
        }
    }
    panic!(
        "node {full} never reported no_space after {MAX_FILL_WRITES} writes\n{}",
        cluster.all_logs()
    );
}

/// Frees node `full`'s file system and waits for it to resume by itself and
/// catch up with the leader; then the cluster takes more writes, and after
/// a restart of every node every acknowledged write reads back.
fn free_and_catch_up(
    cluster: &mut Cluster,
    mounts: &[SmallFs],
    full: u64,
    acked: &mut Vec<(String, String)>,
) {
    mounts[(full - 1) as usize].free();
    let leader = cluster.wait_for_leader(ELECTION);
    let commit = cluster.status(leader).expect("leader STATUS")["commit_index"]
        .as_u64()
        .unwrap_or(u64::MAX);
    wait_status(cluster, full, "storage ok and caught up", |s| {
        s["storage"] == "ok" && s["last_applied"].as_u64().is_some_and(|a| a >= commit)
    });
    assert!(cluster.log(full).contains("disk space is back"));
    acked.extend(write_all(cluster, 2000, 10));
    restart_all_and_check(cluster, acked);
}

#[test]
fn a_full_follower_leaves_the_cluster_writing_and_catches_up_once_space_is_freed() {
    let mut cluster = Cluster::start_with(3, ARGS);
    cluster.wait_for_leader(ELECTION);
    let mut acked = write_all(&cluster, 0, 10);
    let Some(mounts) = onto_small_filesystems(&mut cluster) else {
        return;
    };
    let leader = cluster.wait_for_leader(ELECTION);
    let full = if leader == 1 { 2 } else { 1 };
    mounts[(full - 1) as usize].fill();

    acked.extend(write_until_no_space(&cluster, full, 10));
    // More writes go on being acknowledged by the two nodes with space.
    acked.extend(write_all(&cluster, 1000, 20));
    let s = cluster.status(full).expect("the full node answers STATUS");
    assert_eq!(s["storage"], "no_space", "{s}");
    let error = s["storage_error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{s}");
    assert!(cluster.is_running(full));
    assert!(
        cluster.log(full).contains("NO_SPACE"),
        "{}",
        cluster.log(full)
    );
    // It still serves what needs no disk.
    assert_eq!(
        stale_get(&cluster, full, "k0")["payload"]["value"],
        value(0)
    );
    let health = cluster
        .client(full)
        .request(&json!({"msg_type": "HEALTHCHECK"}));
    assert_eq!(health.expect("HEALTHCHECK")["payload"], "ok");

    free_and_catch_up(&mut cluster, &mounts, full, &mut acked);
    drop(cluster);
    drop(mounts);
}

#[test]
fn a_full_leader_hands_over_so_the_cluster_keeps_writing_and_it_resumes_once_space_is_freed() {
    let mut cluster = Cluster::start_with(3, ARGS);
    cluster.wait_for_leader(ELECTION);
    let mut acked = write_all(&cluster, 0, 10);
    let Some(mounts) = onto_small_filesystems(&mut cluster) else {
        return;
    };
    let full = cluster.wait_for_leader(ELECTION);
    mounts[(full - 1) as usize].fill();

    acked.extend(write_until_no_space(&cluster, full, 10));
    // It handed leadership to a node that can write, so writes go on.
    let s = wait_status(&cluster, full, "another leader", |s| {
        s["role"] != "leader" && s["leader_id"].as_u64().is_some_and(|l| l != full)
    });
    assert_eq!(s["storage"], "no_space", "{s}");
    acked.extend(write_all(&cluster, 1000, 20));
    assert!(
        cluster
            .log(full)
            .contains("NO_SPACE: handing leadership to node"),
        "{}",
        cluster.log(full)
    );
    // A write sent to it is refused, never taken.
    let reply = cluster
        .client(full)
        .request(&set("refused", "x"))
        .expect("reply");
    let code = &reply["payload"]["code"];
    assert!(code == "NO_SPACE" || code == "NOT_LEADER", "{reply}");
    assert_eq!(
        stale_get(&cluster, full, "k0")["payload"]["value"],
        value(0)
    );

    free_and_catch_up(&mut cluster, &mounts, full, &mut acked);
    drop(cluster);
    drop(mounts);
}

#[test]
fn a_full_single_node_answers_no_space_serves_reads_starts_full_and_resumes_by_itself() {
    let mut cluster = Cluster::start_with(1, ARGS);
    cluster.wait_for_leader(ELECTION);
    let mut acked = write_all(&cluster, 0, 10);
    let Some(mounts) = onto_small_filesystems(&mut cluster) else {
        return;
    };
    cluster.wait_for_leader(ELECTION);
    mounts[0].fill();

    // Writes until one is refused with NO_SPACE. The write that found the
    // disk full cannot commit (this node is the majority) and times out:
    // its outcome is unknown, and it is written once space is back.
    let mut client = cluster.client(1);
    let mut unknown = Vec::new();
    let mut refused = None;
    for i in 10..10 + MAX_FILL_WRITES {
        let (key, value) = (format!("k{i}"), value(i));
        let reply = client.request(&set(&key, &value)).expect("reply");
        match reply["payload"]["code"].as_str() {
            None => acked.push((key, value)),
            Some("TIMEOUT") => unknown.push((key, value)),
            Some("NO_SPACE") => {
                refused = Some(reply);
                break;
            }
            Some(_) => panic!("unexpected reply {reply}"),
        }
    }
    let refused = refused.expect("a write refused with NO_SPACE");
    assert!(
        refused["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left on device")),
        "{refused}"
    );
    let s = cluster.status(1).expect("STATUS");
    assert_eq!(
        (s["storage"].as_str(), s["role"].as_str()),
        (Some("no_space"), Some("leader"))
    );
    // Linearizable reads need no disk: still served by the full leader (on
    // another connection: this one waits to read its own timed-out write).
    drop(client);
    let mut client = cluster.client(1);
    let reply = client.get("k0").expect("GET");
    assert_eq!(reply["payload"]["value"], value(0), "{reply}");
    let (last_key, last_value) = acked.last().cloned().expect("acked writes");
    assert_eq!(
        client.get(&last_key).expect("GET")["payload"]["value"],
        last_value
    );
    let keys = client
        .request(&json!({"msg_type": "KEYS", "payload": {"prefix": "k1"}}))
        .expect("KEYS");
    assert!(
        keys["payload"]["keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty()),
        "{keys}"
    );
    drop(client);

    // Stopped and started again with the disk still full: it starts and
    // answers. Its vote for itself cannot be made durable, so it cannot
    // become a leader that commits, and it applies nothing until it can
    // (the commit index is learnt, not stored): a stale read is answered
    // from what it has applied.
    assert_eq!(cluster.stop(1), Some(0), "a node on a full disk stops");
    cluster.restart(1);
    // It stopped with its files in step: nothing half-written to cut.
    assert!(
        !cluster.log(1).contains("cut torn record"),
        "{}",
        cluster.log(1)
    );
    wait_status(&cluster, 1, "no_space after a start on a full disk", |s| {
        s["storage"] == "no_space"
    });
    assert_eq!(stale_get(&cluster, 1, "k0")["msg_type"], "GET");
    let health = cluster
        .client(1)
        .request(&json!({"msg_type": "HEALTHCHECK"}));
    assert_eq!(health.expect("HEALTHCHECK")["payload"], "ok");
    assert!(cluster.is_running(1));

    mounts[0].free();
    wait_status(&cluster, 1, "storage ok", |s| s["storage"] == "ok");
    acked.extend(write_all(&cluster, 2000, 10));
    // Everything written before the disk filled, and the writes whose
    // outcome was unknown were either applied whole or not at all.
    let mut client = cluster.client(1);
    for (key, want) in &unknown {
        let got = client.get(key).expect("GET")["payload"]["value"].clone();
        assert!(got.is_null() || got == want.as_str(), "{key}: {got}");
    }
    drop(client);
    restart_all_and_check(&mut cluster, &acked);
    drop(cluster);
    drop(mounts);
}

/// Outside CI a developer without root may skip these tests; CI (which sets
/// `CI`, as `.ci/run` does, and runs as root) must never pass them by skipping.
fn skip(why: String) -> Option<SmallFs> {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so this test may not be skipped: {why}"
    );
    eprintln!("SKIPPED: {why}");
    None
}
