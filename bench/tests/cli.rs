//! The command line of poncho-bench. (Also makes `cargo test` build the
//! binary, which the end-to-end tests in tests/ use to generate load.)

use std::process::Command;

#[test]
fn help_names_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cluster",
        "--clients",
        "--duration",
        "--requests",
        "--mix",
        "--keys",
        "--value-size",
        "--pipeline",
        "--json",
        "--target",
        "--preload",
        "--idle",
        "--stalled",
        "--interval",
        "--phase-file",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn a_bad_mix_or_an_unreachable_cluster_fails_with_a_reason() {
    let bin = env!("CARGO_BIN_EXE_poncho-bench");
    let out = Command::new(bin)
        .args(["--mix", "frob:1", "--cluster", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown op"));
    let out = Command::new(bin)
        .args(["--cluster", "127.0.0.1:1", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no leader found"));
}

/// A stand-in for etcd's gRPC gateway: answers status, put (Content-Length),
/// range (chunked, in two chunks) and txn (an error), and counts what it saw.
fn fake_gateway() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Serve every complete request buffered (pipelined ones too).
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body =
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                        buf.drain(..end + 4 + len);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let reply = match path.as_str() {
                            "/v3/maintenance/status" => {
                                let b = r#"{"header":{"member_id":"5"},"leader":"5"}"#;
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                            }
                            "/v3/kv/put" => {
                                let b = r#"{"header":{"revision":"2"}}"#;
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                            }
                            "/v3/kv/range" => {
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                 5\r\n{\"hea\r\n12\r\nder\":{},\"count\":1}\r\n0\r\n\r\n"
                                    .to_string()
                            }
                            _ => {
                                let b = r#"{"error":"boom","code":3}"#;
                                format!(
                                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{b}",
                                    b.len()
                                )
                            }
                        };
                        log.lock().unwrap().push(format!("{path} {body}"));
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn the_etcd_target_speaks_the_gateway_and_counts_failed_replies_as_errors() {
    let (addr, seen) = fake_gateway();
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .args(["--target", "etcd", "--cluster", &addr.to_string()])
        .args([
            "--clients",
            "3",
            "--pipeline",
            "4",
            "--keys",
            "50",
            "--preload",
        ])
        .args(["--requests", "300", "--duration", "30", "--stale"])
        .args(["--mix", "set:1,get:1,cas:1", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |op: &str| summary["by_op"][op]["count"].as_u64().unwrap_or(0);
    assert_eq!(summary["target"], "etcd");
    assert!(count("set") > 50 && count("get") > 50, "{summary}");
    assert_eq!(count("cas"), 0, "{summary}");
    assert_eq!(
        summary["ops"].as_u64().unwrap(),
        count("set") + count("get")
    );
    assert_eq!(
        summary["ops"].as_u64().unwrap() + summary["errors"].as_u64().unwrap(),
        300
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("first error: HTTP 400"));
    let seen = seen.lock().unwrap();
    // The preload wrote key:00000000 to key:00000049, each once, first.
    let puts: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with("/v3/kv/put"))
        .collect();
    assert!(puts.len() >= 50);
    // base64("v" x 100) is "dnZ2" x 33 and "dg==".
    let preloaded = format!(
        r#"/v3/kv/put {{"key":"a2V5OjAwMDAwMDQ5","value":"{}dg=="}}"#,
        "dnZ2".repeat(33)
    );
    assert!(seen.contains(&preloaded), "{:?}", &seen[..3]);
    assert!(seen
        .iter()
        .filter(|r| r.starts_with("/v3/kv/range"))
        .all(|r| r.ends_with(r#","serializable":true}"#)));
    assert!(seen
        .iter()
        .any(|r| r.starts_with(r#"/v3/kv/txn {"compare":[{"key":"#)));
}

#[test]
fn intervals_and_phases_report_the_run_over_time_and_stop_ends_it() {
    let (addr, _) = fake_gateway();
    let dir = tempfile::tempdir().unwrap();
    let phase_file = dir.path().join("phase");
    let set_phase = |name: &str| {
        let tmp = dir.path().join("phase.tmp");
        std::fs::write(&tmp, format!("{name}\n")).unwrap();
        std::fs::rename(&tmp, &phase_file).unwrap();
    };
    set_phase("warmup");
    let bench = Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .args(["--target", "etcd", "--cluster", &addr.to_string()])
        .args(["--clients", "2", "--duration", "60", "--interval", "0.2"])
        .args(["--phase-file", phase_file.to_str().unwrap(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(700));
    set_phase("measured");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // An empty file (a shell's `>` before it writes) changes nothing.
    std::fs::write(&phase_file, "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    set_phase("stop");
    let out = bench.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, intervals) = lines.split_last().unwrap();
    assert!(intervals.len() >= 6, "{intervals:?}");
    let phase_of = |i: &serde_json::Value| i["phase"].as_str().unwrap().to_string();
    assert_eq!(phase_of(&intervals[0]), "warmup");
    assert_eq!(phase_of(intervals.last().unwrap()), "measured");
    for i in intervals {
        assert!(i["ops"].as_u64().unwrap() > 0, "{i}");
        assert!(i["p99_ms"].as_f64().unwrap() >= i["p50_ms"].as_f64().unwrap());
    }
    let phases = summary["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["warmup", "measured"]);
    let (warmup, measured) = (&phases[0], &phases[1]);
    let secs = |p: &serde_json::Value| p["seconds"].as_f64().unwrap();
    assert!((0.5..1.5).contains(&secs(warmup)), "{warmup}");
    assert!((1.1..2.5).contains(&secs(measured)), "{measured}");
    let ops = |p: &serde_json::Value| p["ops"].as_u64().unwrap();
    assert_eq!(
        ops(warmup) + ops(measured),
        summary["ops"].as_u64().unwrap()
    );
    assert_eq!(measured["by_op"]["set"]["count"], measured["ops"]);
}

#[test]
fn a_bad_interval_is_refused_with_the_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .args(["--interval", "0", "--cluster", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval 0: give seconds"));
}
