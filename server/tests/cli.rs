//! The command line: help, argument errors, and the startup banner.
//! (Also makes `cargo test` build the `poncho-server` binary that the
//! end-to-end tests in tests/ run.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poncho-server"))
}

#[test]
fn help_lists_the_flags_and_the_is_leader_hint() {
    let out = server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--host",
        "--port",
        "--peers",
        "--data-dir",
        "--log-level",
        "is_leader",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let out = server().args(["--peers", "2=nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not IP:PORT"));
    let out = server().arg("is_follower").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_lone_node_prints_the_prototype_banner_then_its_id_peers_and_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .arg("is_leader")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    let rest: Vec<String> = lines.by_ref().take(3).map(Result::unwrap).collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        banner.starts_with("TCP Listener on address: 127.0.0.1, port: "),
        "{banner}"
    );
    assert_eq!(rest[0], "Node id: 1");
    assert!(rest[1].starts_with("Peers: none"), "{}", rest[1]);
    assert!(rest[2].contains(&dir.path().display().to_string()));
}
