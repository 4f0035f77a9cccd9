//! End-to-end: a data directory belongs to one running server, and only to
//! its user. Each test bounds its own time and stops every process it started.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{workspace_bin, write_with_retry, Cluster};
use serde_json::json;

const ELECTION: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(15);
/// How long a server that must refuse to start may take to exit.
const REFUSAL: Duration = Duration::from_secs(10);
/// How long a node may take to write its first snapshot.
const SNAPSHOT: Duration = Duration::from_secs(20);
/// Small enough that a few writes make every node snapshot.
const SNAPSHOT_ARGS: [&str; 4] = ["--snapshot-entries", "10", "--snapshot-keep-tail", "2"];
/// The start-up warning about a data directory others can read.
const OPEN_DIR_WARNING: &str = "group or others can access data directory";

/// The exit code of `child` once it exits within `timeout`; kills it and
/// returns `None` if it is still running then.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_server_on_a_data_directory_in_use_refuses_and_the_first_keeps_serving() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let set = |key: &str, value: &str| json!({"msg_type": "SET", "payload": {"key": key, "value": value}});
    write_with_retry(&cluster, &set("before", "1"), WRITE);
    let first_pid = cluster.nodes[0].pid().expect("node 1 runs");
    let data_dir = cluster.nodes[0].data_dir.clone();

    // Same id, same directory, another port: what a second `poncho-server
    // --id 1` with the default directory would do.
    let scratch = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (scratch.path().join("out"), scratch.path().join("err"));
    let mut second = Command::new(workspace_bin("poncho-server"))
        .args(["--id", "1", "--port", "0", "--data-dir"])
        .arg(&data_dir)
        .arg("is_leader")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let code = wait_exit(&mut second, REFUSAL);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let code = code.unwrap_or_else(|| panic!("the second server kept running:\n{stdout}{stderr}"));
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("data directory {} is in use", data_dir.display())),
        "the refusal must name the directory on stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("PID {first_pid}")),
        "the refusal must name the PID holding it ({first_pid}):\n{stderr}"
    );
    assert!(
        !stdout.contains("TCP Listener"),
        "it must refuse before serving:\n{stdout}"
    );

    // The first server never noticed: it holds the lock and keeps serving.
    assert!(cluster.is_running(1), "{}", cluster.log(1));
    let lock = std::fs::read_to_string(data_dir.join("LOCK")).unwrap();
    assert_eq!(lock, format!("{first_pid}\n"));
    write_with_retry(&cluster, &set("after", "2"), WRITE);
    let mut client = cluster.client(1);
    for (key, want) in [("before", "1"), ("after", "2")] {
        let reply = client.get(key).unwrap();
        assert_eq!(reply["payload"]["value"], want, "{reply}");
    }
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Whether `dir` holds a snapshot file.
fn has_snapshot(dir: &Path) -> bool {
    has_file(dir, |name| {
        name.starts_with("snap-") && name.ends_with(".snap")
    })
}

/// Whether `dir` holds a file whose name `wanted` accepts.
fn has_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| wanted(&e.file_name().to_string_lossy()))
}

/// Fails unless `dir` and everything in it is its owner's alone.
fn assert_private(dir: &Path) {
    assert_eq!(
        mode(dir) & 0o077,
        0,
        "{} is mode {:o}",
        dir.display(),
        mode(dir)
    );
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let m = mode(&path);
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            m & 0o077,
            0,
            "{} is mode {m:o}, want {want:o}",
            path.display()
        );
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for kind in ["LOCK", "hardstate", "cluster-id", "wal-", "snap-"] {
        assert!(
            names.iter().any(|n| n.starts_with(kind)),
            "no {kind} file in {}: {names:?}",
            dir.display()
        );
    }
}

#[test]
fn a_data_directory_and_every_file_in_it_are_for_its_owner_only() {
    let mut cluster = Cluster::start_with(3, &SNAPSHOT_ARGS);
    cluster.wait_for_leader(ELECTION);
    let deadline = Instant::now() + SNAPSHOT;
    let mut n = 0;
    // Every kind of file on every node: a snapshot, and a WAL segment (a
    // node that has just installed a snapshot writes its next segment with
    // the next entry it gets).
    let every_kind = |dir: &Path| has_snapshot(dir) && has_file(dir, |n| n.starts_with("wal-"));
    while !(1..=3).all(|id| every_kind(&cluster.data_dir(id))) {
        assert!(
            Instant::now() < deadline,
            "no snapshot on every node\n{}",
            cluster.all_logs()
        );
        let set = json!({"msg_type": "SET", "payload": {"key": format!("k{n}"), "value": "v"}});
        write_with_retry(&cluster, &set, WRITE);
        n += 1;
    }
    for id in 1..=3 {
        assert_private(&cluster.data_dir(id));
        assert!(
            !cluster.log(id).contains(OPEN_DIR_WARNING),
            "{}",
            cluster.log(id)
        );
    }

    // A directory an operator made (or an older version left) readable is
    // not changed behind their back: one warning, naming it and the fix.
    let dir = cluster.data_dir(1);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    cluster.restart(1);
    cluster.wait_for_leader(ELECTION);
    let log = cluster.log(1);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(OPEN_DIR_WARNING))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN"), "{log}");
    assert!(warnings[0].contains(&dir.display().to_string()), "{log}");
    assert!(
        warnings[0].contains(&format!("chmod -R go-rwx {}", dir.display())),
        "{log}"
    );
    assert_eq!(
        mode(&dir),
        0o755,
        "the directory's mode is the operator's to change"
    );
}
