//! End-to-end: a data directory belongs to one running server. Each test
//! bounds its own time and stops every process it started.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{workspace_bin, write_with_retry, Cluster};
use serde_json::json;

const ELECTION: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(15);
/// How long a server that must refuse to start may take to exit.
const REFUSAL: Duration = Duration::from_secs(10);

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
