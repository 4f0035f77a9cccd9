//! End-to-end tests of `poncho-shell`: the real binary against real
//! clusters, in its three modes (a script on stdin, one command on the
//! command line, and the interactive REPL on a pseudo-terminal).
//!
//! Every test bounds its own time: a shell that hangs is killed and the test
//! fails. The harness kills the servers on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::pty::{wait_bounded, Pty};
use poncho_tests::{workspace_bin, Client, Cluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
/// The longest any one shell run may take here.
const RUN: Duration = Duration::from_secs(20);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

fn shell_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("poncho-shell"));
    cmd.args(args)
        .env_remove("PONCHO_CLUSTER")
        .env_remove("PONCHO_HISTFILE");
    cmd
}

/// Starts the shell with pipes for stdin (so: scripted mode), stdout and
/// stderr.
fn spawn_piped(args: &[&str]) -> Child {
    shell_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn poncho-shell")
}

/// Runs the shell with `stdin` as its input (a pipe: scripted mode).
/// Each line of `--json` output, parsed.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn run_shell(args: &[&str], stdin: &str) -> Run {
    let mut child = spawn_piped(args);
    let mut input = child.stdin.take().expect("stdin");
    let script = stdin.to_string();
    let writer = std::thread::spawn(move || {
        // The shell may stop reading early (--stop-on-error): ignore EPIPE.
        let _ = input.write_all(script.as_bytes());
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, RUN);
    let _ = writer.join();
    Run {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn cluster_arg(cluster: &Cluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|&id| cluster.addr(id).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A linearizable GET at the leader, straight over the protocol.
fn leader_get(cluster: &mut Cluster, key: &str) -> Value {
    let leader = cluster.wait_for_leader(ELECTION);
    let reply = Client::connect(cluster.addr(leader))
        .and_then(|mut c| c.get(key))
        .expect("GET at the leader");
    assert_eq!(reply["msg_type"], "GET", "{reply}");
    reply["payload"]["value"].clone()
}

#[test]
fn a_script_prints_one_line_per_command_and_exits_zero() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let script = r#"# a comment, then a blank line

set greeting "hello world"
get greeting
set "my key" 'single quoted'
get "my key"
get missing
delete greeting
delete greeting
cas lock nil me
cas lock nil you
get lock
cas lock me nil
get lock
cas n "nil" x
set a/1 x
set a/2 "two\nlines"
get a/2
keys a/
keys
   # an indented comment
keys nothing-here
"#;
    let run = run_shell(&["--cluster", &cluster_arg(&cluster, &[1, 2, 3])], script);
    let expected = [
        "OK",
        "hello world",
        "OK",
        "single quoted",
        "(nil)",
        "1",
        "0",
        "1",
        "0",
        "me",
        "1",
        "(nil)",
        "0",
        "OK",
        "OK",
        "\"two\\nlines\"",
        "a/1 a/2",
        "a/1 a/2 \"my key\"",
        "",
    ];
    assert_eq!(run.stdout, expected.join("\n") + "\n", "{run}");
    assert_eq!(run.stderr, "", "{run}");
    assert_eq!(run.status.code(), Some(0), "{run}");
    assert_eq!(leader_get(&mut cluster, "my key"), "single quoted");
    assert_eq!(leader_get(&mut cluster, "a/2"), "two\nlines");

    // --json: one object per command, in the same order.
    let run = run_shell(
        &["--cluster", &cluster_arg(&cluster, &[1, 2, 3]), "--json"],
        "get \"my key\"\ndelete a/1\nkeys a/\n",
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 3, "{run}");
    let get = &lines[0];
    assert_eq!(
        (
            &get["ok"],
            &get["command"],
            &get["line"],
            &get["key"],
            &get["value"]
        ),
        (
            &json!(true),
            &json!("get"),
            &json!(1),
            &json!("my key"),
            &json!("single quoted")
        ),
        "{run}"
    );
    // With the key's revisions: written once.
    assert_eq!(get["version"], 1, "{run}");
    assert_eq!(get["create_revision"], get["mod_revision"], "{run}");
    assert!(
        get["revision"].as_u64() >= get["mod_revision"].as_u64(),
        "{run}"
    );
    assert_eq!(lines[1]["command"], "delete");
    assert_eq!(lines[1]["deleted"], true);
    assert!(lines[1]["index"].as_u64().is_some(), "{run}");
    assert_eq!(lines[2]["keys"], json!(["a/2"]));
}

#[test]
fn one_shot_commands_at_a_follower_follow_the_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let follower = cluster.addr(followers[0]).to_string();
    let at_follower = |args: &[&str]| {
        let mut all = vec!["--cluster", follower.as_str()];
        all.extend_from_slice(args);
        run_shell(&all, "")
    };

    // The write goes to the follower, which redirects; --verbose shows it.
    let run = at_follower(&["--verbose", "set", "k", "value with spaces"]);
    assert_eq!(run.status.code(), Some(0), "{run}");
    assert_eq!(run.stdout, "OK\n", "{run}");
    assert!(run.stderr.contains("\"code\":\"NOT_LEADER\""), "{run}");
    assert!(
        run.stderr
            .contains(&format!("redirect to {}", cluster.addr(leader))),
        "{run}"
    );
    assert!(run.stderr.contains("<- {\"msg_type\":\"SET\""), "{run}");
    assert_eq!(leader_get(&mut cluster, "k"), "value with spaces");

    let run = at_follower(&["get", "k"]);
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "value with spaces\n"),
        "{run}"
    );

    // The prototype's `client healthcheck 127.0.0.1:8002`.
    let run = at_follower(&["health"]);
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "ok\n"),
        "{run}"
    );
    let run = at_follower(&["leader"]);
    assert_eq!(run.stdout, format!("{}\n", cluster.addr(leader)), "{run}");

    // Probes get the node's term and are rejected.
    let term = cluster.status(followers[0]).expect("status")["term"].clone();
    for (command, msg_type, field) in [
        ("append", "APPEND_ENTRY_REPLY", "success"),
        ("vote", "REQUEST_VOTE_REPLY", "vote_granted"),
    ] {
        let run = at_follower(&[command]);
        assert_eq!(run.status.code(), Some(0), "{run}");
        let reply: Value = serde_json::from_str(run.stdout.trim()).expect("the reply line");
        assert_eq!(reply["msg_type"], msg_type, "{run}");
        assert_eq!(reply["payload"]["term"], term, "{run}");
        assert_eq!(reply["payload"][field], false, "{run}");
    }

    // status: a row per node; a dead node is unreachable.
    cluster.kill(followers[1]);
    let run = at_follower(&["status"]);
    assert_eq!(run.status.code(), Some(0), "{run}");
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{run}");
    assert!(rows[0].starts_with("ID  ADDRESS"), "{run}");
    for id in 1..=3u64 {
        let row = rows[id as usize];
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], id.to_string(), "{run}");
        assert_eq!(cells[1], cluster.addr(id).to_string(), "{run}");
        let role = if id == leader {
            "leader"
        } else if id == followers[1] {
            "unreachable"
        } else {
            "follower"
        };
        assert_eq!(cells[2], role, "{run}");
    }
    let run = at_follower(&["--json", "status"]);
    let status: Value = serde_json::from_str(run.stdout.trim()).expect("JSON status");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{run}");
    assert_eq!(nodes[(followers[1] - 1) as usize]["reachable"], false);
    assert_eq!(nodes[(leader - 1) as usize]["lag"], 0);
}

#[test]
fn killing_the_leader_mid_script_applies_every_write_exactly_once() {
    const STEPS: usize = 300;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    // A counter advanced by compare-and-set: a write applied twice would
    // make its retry (or the next step) print 0 instead of 1.
    let mut script = String::from("cas counter nil 1\n");
    for i in 1..STEPS {
        script.push_str(&format!("cas counter {i} {}\nset key-{i} {i}\n", i + 1));
    }
    script.push_str("get counter\n");

    // --verbose shows every line sent, to check what a retry sends.
    let mut child = spawn_piped(&[
        "--cluster",
        &cluster_arg(&cluster, &[1, 2, 3]),
        "--timeout",
        "15s",
        "--verbose",
    ]);
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || input.write_all(script.as_bytes()));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + RUN;
    let mut lines = Vec::new();
    let mut killed_at = None;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
        if lines.len() == STEPS / 2 && killed_at.is_none() {
            cluster.kill(leader);
            killed_at = Some(Instant::now());
        }
    }
    let status = wait_bounded(&mut child, Duration::from_secs(5));
    writer
        .join()
        .expect("writer")
        .expect("the shell read the whole script");
    let stderr = err_reader.join().expect("stderr reader");
    let killed_at = killed_at.expect("the leader was killed mid-script");

    let mut expected = vec!["1".to_string()];
    for _ in 1..STEPS {
        expected.push("1".into());
        expected.push("OK".into());
    }
    expected.push(STEPS.to_string());
    assert_eq!(lines, expected, "stderr:\n{stderr}");
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    check_retries_reuse_the_session(&stderr);
    eprintln!(
        "the script finished {:?} after the leader was killed",
        killed_at.elapsed()
    );
    let new_leader = cluster.wait_for_leader(ELECTION);
    assert_ne!(new_leader, leader);
    assert_eq!(leader_get(&mut cluster, "counter"), STEPS.to_string());
    assert_eq!(leader_get(&mut cluster, "key-299"), "299");
}

/// From a --verbose transcript: every write carries one client_id and a
/// seq that grows with each new write, a retry sends exactly the same line,
/// and at least one write was retried (the kill happened mid-write).
fn check_retries_reuse_the_session(stderr: &str) {
    let mut sent: Vec<(u64, String)> = Vec::new(); // (req_id, line), in order
    for line in stderr.lines() {
        assert!(
            line.starts_with("-> ") || line.starts_with("<- ") || line.starts_with("-- "),
            "not a --verbose line: {line}"
        );
        if let Some(request) = line.strip_prefix("-> ") {
            let v: Value = serde_json::from_str(request).expect("a JSON request");
            let req_id = v["req_id"].as_u64().expect("req_id");
            sent.push((req_id, request.to_string()));
        }
    }
    let mut client_id = None;
    let mut last_seq = 0;
    let mut retried = 0;
    for (i, (req_id, line)) in sent.iter().enumerate() {
        let v: Value = serde_json::from_str(line).expect("JSON");
        if i > 0 && sent[i - 1].0 == *req_id {
            assert_eq!(&sent[i - 1].1, line, "a retry changed the request");
            retried += 1;
            continue;
        }
        if v["msg_type"] == "GET" {
            continue;
        }
        if v["msg_type"] == "REGISTER_CLIENT" {
            assert!(client_id.is_none(), "a second session: {line}");
            continue;
        }
        let id = v["payload"]["client_id"].as_u64().expect("client_id");
        assert_eq!(*client_id.get_or_insert(id), id, "one client_id per run");
        let seq = v["payload"]["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq {seq} after {last_seq}: {line}");
        last_seq = seq;
    }
    assert!(retried > 0, "no request was retried:\n{stderr}");
}

#[test]
fn bad_commands_give_usage_and_a_nonzero_exit() {
    // No cluster is needed to reject a command: the address is never used.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let args = ["--cluster", nowhere.as_str(), "--timeout", "300ms"];
    let run = run_shell(&args, "frobnicate 1 2\nset onlykey\nhelp get\nget \"open\n");
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(run.stdout.starts_with("usage: get KEY [--prefix]"), "{run}");
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        errors,
        [
            "line 1: unknown command frobnicate: type help for the list",
            "line 2: usage: set KEY VALUE [--lease ID]",
            "line 4: unterminated \" quote",
        ],
        "{run}"
    );

    let mut stop = args.to_vec();
    stop.push("--stop-on-error");
    let run = run_shell(&stop, "help\nset onlykey\nhelp\n");
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert_eq!(run.stdout.matches("Commands:").count(), 1, "{run}");
    assert_eq!(
        run.stderr, "line 2: usage: set KEY VALUE [--lease ID]\n",
        "{run}"
    );

    let mut json = args.to_vec();
    json.push("--json");
    let run = run_shell(&json, "cas k v\n");
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert_eq!(run.stdout, "", "{run}");
    let error: Value = serde_json::from_str(run.stderr.trim()).expect("a JSON error");
    assert_eq!(
        error,
        json!({"ok": false, "command": "cas", "line": 1,
               "error": {"code": "USAGE", "message": "usage: cas KEY EXPECTED NEW"}})
    );

    // One-shot: usage errors exit 2, an unreachable cluster exits 1.
    let mut one = args.to_vec();
    one.extend(["set", "k"]);
    let run = run_shell(&one, "");
    assert_eq!(
        (run.status.code(), run.stderr.as_str()),
        (Some(2), "usage: set KEY VALUE [--lease ID]\n"),
        "{run}"
    );
    let mut one = args.to_vec();
    one.extend(["get", "k"]);
    let started = Instant::now();
    let run = run_shell(&one, "");
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.starts_with("error: UNREACHABLE: "), "{run}");
    assert!(started.elapsed() < Duration::from_secs(3), "{run}");
    let run = run_shell(&["--cluster", "not-an-address", "health"], "");
    assert_eq!(run.status.code(), Some(2), "{run}");
}

// ------------------------------------------------------ the interactive REPL

/// The shell on a pseudo-terminal, as a person would run it.
fn shell_on_pty(args: &[&str], home: &Path) -> Pty {
    let mut cmd = shell_command(args);
    cmd.env("HOME", home).env("TERM", "xterm");
    Pty::spawn(cmd)
}

#[test]
fn the_interactive_shell_has_a_prompt_completion_hints_and_history() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let home = tempfile::tempdir().expect("temp home");
    let addr = cluster.addr(1).to_string();
    let args = ["--cluster", addr.as_str()];
    let prompt = format!("poncho {addr} (leader)> ");

    let mut shell = shell_on_pty(&args, home.path());
    shell.expect("Type help");
    shell.expect(&prompt);
    // Tab completes the command; then the hint shows the argument left.
    shell.send("se\t");
    shell.expect("set ");
    shell.send("greeting");
    shell.expect("greeting VALUE");
    shell.send(" \"hello world\"\r");
    shell.expect("OK  (");
    shell.expect(" ms)");
    shell.expect(&prompt);
    shell.send("frob\r");
    shell.expect("unknown command frob");
    shell.expect(&prompt);
    // Ctrl-C drops the line being typed, not the shell.
    shell.send("set half-typed");
    shell.expect("half-typed");
    shell.send("\x03");
    shell.expect(&prompt);
    // Tab after a command that takes a key completes key names from the cluster.
    shell.send("get gree\t");
    shell.expect("get greeting ");
    shell.send("\r");
    shell.expect("\"hello world\"  (");
    shell.expect(&prompt);
    shell.send("\x04"); // Ctrl-D
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
    drop(shell);

    let history =
        std::fs::read_to_string(home.path().join(".poncho_history")).expect("history file");
    assert!(
        history.contains("set greeting \"hello world\"") && history.contains("get greeting"),
        "{history}"
    );
    assert!(!history.contains("half-typed"), "{history}");

    // The next run recalls the last command with Up; Enter runs it again.
    let mut shell = shell_on_pty(&args, home.path());
    shell.expect(&prompt);
    shell.send("\x1b[A");
    shell.expect("get greeting");
    shell.send("\r");
    shell.expect("\"hello world\"  (");
    shell.expect(&prompt);
    shell.send("exit\r");
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
    // Sanity check that the shell used the cluster, not a stale state.
    assert_eq!(leader_get(&mut cluster, "greeting"), "hello world");
}

/// A write whose reply was lost, retried after its session expired: the
/// shell says its outcome is unknown (it was applied once, and must not be
/// applied again), then goes on in a new session.
#[test]
fn a_write_retried_after_its_session_expired_is_reported_as_outcome_unknown() {
    let session_timeout = Duration::from_millis(1_000);
    let mut cluster = Cluster::start_with(
        1,
        &[
            "--session-timeout-ms",
            &session_timeout.as_millis().to_string(),
        ],
    );
    cluster.wait_for_leader(ELECTION);
    // The shell reaches the node only through the proxy, whose replies the
    // test can drop.
    let proxy = poncho_tests::proxy::Proxy::start(cluster.addr(1)).expect("proxy");
    let mut child = spawn_piped(&["--cluster", &proxy.addr().to_string(), "--timeout", "15s"]);
    let mut input = child.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, pipe)| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(format!("{}{line}", ["out: ", "err: "][i]));
            }
        })
    })
    .collect();
    let next_line = || {
        rx.recv_timeout(RUN)
            .expect("poncho-shell printed nothing in time")
    };
    let mut send = move |line: &str| {
        input
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to poncho-shell");
    };
    let mut node = cluster.client(1);

    // The first write opens the session.
    send("set a 1");
    assert_eq!(next_line(), "out: OK");
    // The next one reaches the node and is applied, but its reply is lost.
    proxy.set_replies_dropped(true);
    send("set k v");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("k").unwrap()["payload"]["value"] != "v" {
        assert!(Instant::now() < deadline, "set k v never applied");
        sleep(Duration::from_millis(10));
    }
    // Another client writes after it: a second application would undo this.
    assert_eq!(node.set("k", "other").unwrap()["msg_type"], "SET");
    // The shell's connection breaks; it retries until the proxy lets it
    // through again, past the session timeout.
    proxy.set_blocked(true);
    sleep(session_timeout + Duration::from_millis(300));
    proxy.set_replies_dropped(false);
    proxy.set_blocked(false);
    let reported = next_line();
    assert!(
        reported
            .starts_with("err: line 2: OUTCOME_UNKNOWN: the outcome of this command is unknown"),
        "{reported}"
    );
    assert_eq!(node.get("k").unwrap()["payload"]["value"], "other");

    // The shell goes on, in a new session.
    send("set b 2");
    assert_eq!(next_line(), "out: OK");
    send("get k");
    assert_eq!(next_line(), "out: other");
    drop(send); // closes the shell's stdin: the script ends
    let status = wait_bounded(&mut child, RUN);
    assert_eq!(status.code(), Some(1), "a command failed");
    for reader in readers {
        reader.join().expect("reader");
    }
    assert_eq!(node.get("b").unwrap()["payload"]["value"], "2");
}

/// `get --prefix`, `--range`, `--limit`, `--keys-only` and `--count` read a
/// prefix or a range through RANGE, in key order.
#[test]
fn get_reads_a_prefix_or_a_range_in_key_order() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(Duration::from_secs(10));
    let arg = cluster_arg(&cluster, &[1]);
    let mut script = String::new();
    for i in 0..25 {
        script.push_str(&format!("set k{i:02} v{i}\n"));
    }
    script.push_str("set other x\n");
    let run = run_shell(&["--cluster", &arg], &script);
    assert_eq!(run.status.code(), Some(0), "{run}");
    let run = run_shell(
        &["--cluster", &arg],
        "get k --prefix --count\nget k --prefix --keys-only --limit 3\nget k05 --range k07\nget k2 --prefix\n",
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "25",
            "k00 k01 k02",
            "k05",
            "v5",
            "k06",
            "v6",
            "k20",
            "v20",
            "k21",
            "v21",
            "k22",
            "v22",
            "k23",
            "v23",
            "k24",
            "v24"
        ],
        "{run}"
    );
}

/// `txn`, in one line and with its body on the lines after it: the branch
/// that ran, each operation's result, and nothing of a refused one applied.
#[test]
fn txn_runs_one_line_and_interactive_transactions() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let arg = cluster_arg(&cluster, &[1, 2, 3]);
    let script = r#"set cfg x
set old/1 a
set old/2 b
txn 'version(lock) = 0' 'value(cfg) = "x"' then 'set lock me' 'del old/ --prefix' 'get lock' else 'get lock'
txn 'version(lock) = 0' then 'set lock you' else 'get lock' 'get old/ --prefix --count'
txn
version(lock) > 0
# a comment in the body
value(lock) = me

set "my key" "two words"
get lock --keys-only
get nothing

set never ran

get lock
txn then 'set a 1' 'set a 2'
txn 'verion(lock) = 0' then 'set x y'
txn
value(lock) = nil

set inside oops

get lock

get "my key"
"#;
    let run = run_shell(&["--cluster", &arg], script);
    let expected = [
        "OK",
        "OK",
        "OK",
        // Line 4: the comparisons held.
        "SUCCESS",
        "OK",
        "2",
        "me",
        // Line 5: version(lock) is 1 now.
        "FAILURE",
        "me",
        "0",
        // Line 6, interactive.
        "SUCCESS",
        "OK",
        "lock",
        "(nil)",
        // Line 17, after the body.
        "me",
        // Line 27, after the body of the refused one.
        "two words",
    ];
    assert_eq!(run.stdout, expected.join("\n") + "\n", "{run}");
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(errors.len(), 3, "{run}");
    assert!(
        errors[0].starts_with("line 18: BAD_REQUEST: ") && errors[0].contains("one key twice"),
        "{run}"
    );
    let usage = "usage: txn [COMPARE...] [then OP...] [else OP...]";
    assert_eq!(
        errors[1],
        format!(
            "line 19: in \"verion(lock) = 0\": verion is not value, version, create or mod; {usage}"
        ),
        "{run}"
    );
    assert_eq!(
        errors[2],
        format!(
            "line 20: in \"value(lock) = nil\": an unquoted nil is no value; \
             compare version(lock) = 0 for an absent key; {usage}"
        ),
        "{run}"
    );
    assert_eq!(run.status.code(), Some(1), "the first failure: {run}");
    assert_eq!(leader_get(&mut cluster, "lock"), "me");
    assert_eq!(leader_get(&mut cluster, "my key"), "two words");
    for never in ["old/1", "never", "a", "x", "inside"] {
        assert_eq!(leader_get(&mut cluster, never), Value::Null, "{never}");
    }

    // --json: a read-only one is answered as a read (index 0); one that
    // writes has the index it was applied at.
    let run = run_shell(
        &["--cluster", &arg, "--json"],
        "txn 'value(lock) = \"me\"' then 'get lock'\ntxn\nmod(lock) > 0\n\ndel lock\n\n",
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 2, "{run}");
    let read = &lines[0];
    assert_eq!(
        (
            &read["command"],
            &read["line"],
            &read["succeeded"],
            &read["index"]
        ),
        (&json!("txn"), &json!(1), &json!(true), &json!(0)),
        "{run}"
    );
    assert_eq!(read["responses"][0]["type"], "range", "{run}");
    assert_eq!(read["responses"][0]["kvs"][0]["value"], "me", "{run}");
    let write = &lines[1];
    assert_eq!(write["line"], 2, "{run}");
    assert_eq!(write["succeeded"], true, "{run}");
    assert_eq!(
        write["responses"],
        json!([{"type": "delete", "deleted": 1}]),
        "{run}"
    );
    assert!(write["index"].as_u64().is_some_and(|i| i > 0), "{run}");
    assert_eq!(write["revision"], write["index"], "{run}");
    assert_eq!(leader_get(&mut cluster, "lock"), Value::Null);

    // One-shot: the words as your shell split them; or the body on stdin.
    let run = run_shell(
        &[
            "--cluster",
            &arg,
            "txn",
            "version(lock) = 0",
            "then",
            "set lock 'one shot'",
        ],
        "",
    );
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "SUCCESS\nOK\n"),
        "{run}"
    );
    let run = run_shell(
        &["--cluster", &arg, "txn"],
        "value(lock) != \"one shot\"\n\nset lock other\n\nget lock\n",
    );
    assert_eq!(
        (run.status.code(), run.stdout.as_str(), run.stderr.as_str()),
        (Some(0), "FAILURE\none shot\n", ""),
        "{run}"
    );
}

/// At the prompt, `txn` alone asks for its three parts by their titles,
/// and Ctrl-C cancels it.
#[test]
fn the_interactive_shell_asks_for_a_txn_body() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let home = tempfile::tempdir().expect("temp home");
    let addr = cluster.addr(1).to_string();
    let prompt = format!("poncho {addr} (leader)> ");
    let mut shell = shell_on_pty(&["--cluster", addr.as_str()], home.path());
    shell.expect(&prompt);
    // One line at a time, each sent once the next `> ` is up: the line
    // editor drops keys typed ahead past the end of a line.
    let line = |shell: &mut poncho_tests::pty::Pty, text: &str| {
        shell.send(&format!("{text}\r"));
        shell.expect("\n> ");
    };
    line(&mut shell, "txn");
    assert!(
        shell.screen().ends_with("compares:\n> "),
        "{}",
        shell.screen()
    );
    line(&mut shell, "version(k) = 0");
    line(&mut shell, "");
    assert!(
        shell
            .screen()
            .ends_with("\nsuccess requests (get, set, del):\n> "),
        "{}",
        shell.screen()
    );
    line(&mut shell, "set k v");
    line(&mut shell, "get k");
    line(&mut shell, "");
    assert!(
        shell
            .screen()
            .ends_with("\nfailure requests (get, set, del):\n> "),
        "{}",
        shell.screen()
    );
    line(&mut shell, "get k");
    shell.send("\r");
    shell.expect("\nSUCCESS (revision ");
    shell.expect("\n1) set k v: OK\n2) get k: \"v\"\n(");
    shell.expect(&prompt);
    // Ctrl-C in the body cancels the transaction, not the shell.
    line(&mut shell, "txn");
    line(&mut shell, "version(k) > 0");
    line(&mut shell, "");
    shell.send("set k never");
    shell.expect("set k never");
    shell.send("\x03");
    shell.expect("cancelled: nothing was sent");
    shell.expect(&prompt);
    shell.send("exit\r");
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
    assert_eq!(leader_get(&mut cluster, "k"), "v");
}

// ------------------------------------------------------------------ watch

/// A shell running in the background, its stdout and stderr read line by
/// line as they come.
struct Streaming {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    out: Vec<String>,
    err: Vec<String>,
}

impl Streaming {
    fn spawn(args: &[&str]) -> Streaming {
        let mut child = spawn_piped(args);
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Streaming {
            child,
            stdout,
            stderr,
            out: Vec::new(),
            err: Vec::new(),
        }
    }

    fn drain(&mut self) {
        self.out.extend(self.stdout.try_iter());
        self.err.extend(self.stderr.try_iter());
    }

    /// Waits (within [`RUN`]) until stderr has a line containing `text`.
    fn wait_stderr(&mut self, text: &str) -> String {
        let deadline = Instant::now() + RUN;
        loop {
            self.drain();
            if let Some(line) = self.err.iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no {text:?} on stderr:\n{self}");
            sleep(Duration::from_millis(10));
        }
    }

    /// Waits (within [`RUN`]) until stdout has `n` lines.
    fn wait_stdout(&mut self, n: usize) {
        let deadline = Instant::now() + RUN;
        while self.out.len() < n {
            self.drain();
            assert!(
                Instant::now() < deadline,
                "not {n} lines on stdout:\n{self}"
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the shell to exit, and for the rest of its output.
    fn finish(&mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child, RUN);
        // The readers end at EOF, now that the shell is gone.
        self.out.extend(self.stdout.iter());
        self.err.extend(self.stderr.iter());
        status
    }
}

impl std::fmt::Display for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- stdout\n{}\n--- stderr\n{}",
            self.out.join("\n"),
            self.err.join("\n")
        )
    }
}

fn set_at(client: &mut Client, key: &str, value: &str) -> u64 {
    let reply = client.set(key, value).expect("SET");
    reply["payload"]["index"].as_u64().expect("index")
}

#[test]
fn watch_prints_each_change_of_a_prefix_as_it_happens() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let all = cluster_arg(&cluster, &[1, 2, 3]);
    // --verbose says when the watch is created: the writes come after.
    let mut watch = Streaming::spawn(&[
        "--cluster",
        &all,
        "--verbose",
        "watch",
        "app/",
        "--prefix",
        "--count",
        "3",
        "--timeout",
        "15s",
    ]);
    watch.wait_stderr("-- watch 1 created on ");
    let mut c = cluster.client(leader);
    let first = set_at(&mut c, "app/a", "1");
    set_at(&mut c, "other", "not watched");
    set_at(&mut c, "app/b", "two words");
    let reply = c
        .request(&json!({"msg_type": "DELETE", "payload": {"key": "app/a"}}))
        .expect("DELETE");
    assert_eq!(reply["msg_type"], "DELETE", "{reply}");
    set_at(&mut c, "app/c", "after the count");
    let status = watch.finish();
    assert_eq!(
        watch.out,
        ["PUT app/a 1", "PUT app/b \"two words\"", "DELETE app/a"],
        "{watch}"
    );
    assert_eq!(status.code(), Some(0), "{watch}");

    // A script, from a past revision, with --prev and --json: an object
    // per change, then the command's own.
    let script = format!("watch app/ --prefix --rev {first} --prev --count 3\nget app/b\n");
    let run = run_shell(&["--cluster", &all, "--json"], &script);
    assert_eq!(run.status.code(), Some(0), "{run}");
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 5, "{run}");
    let kinds: Vec<(&Value, &Value, &Value)> = lines[..3]
        .iter()
        .map(|l| (&l["type"], &l["key"], &l["value"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("put"), &json!("app/a"), &json!("1")),
            (&json!("put"), &json!("app/b"), &json!("two words")),
            (&json!("delete"), &json!("app/a"), &Value::Null),
        ],
        "{run}"
    );
    assert_eq!(lines[0]["revision"], first, "{run}");
    assert!(lines[0]["revision"].as_u64() < lines[1]["revision"].as_u64());
    assert!(lines[1]["revision"].as_u64() < lines[2]["revision"].as_u64());
    assert_eq!(lines[0]["prev_kv"], Value::Null, "{run}");
    assert_eq!(lines[2]["prev_kv"]["value"], "1", "{run}");
    assert_eq!(
        (
            &lines[3]["ok"],
            &lines[3]["command"],
            &lines[3]["events"],
            &lines[3]["line"]
        ),
        (&json!(true), &json!("watch"), &json!(3), &json!(1)),
        "{run}"
    );
    assert_eq!(lines[3]["revision"], lines[2]["revision"], "{run}");
    assert_eq!(lines[4]["value"], "two words", "{run}");

    // --list: the keys as they are, then the changes after; --timeout ends
    // it when nothing more comes.
    let run = run_shell(
        &[
            "--cluster",
            &all,
            "watch",
            "app/",
            "--prefix",
            "--list",
            "--timeout",
            "500ms",
        ],
        "",
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    assert_eq!(
        run.stdout, "LIST app/b \"two words\"\nLIST app/c \"after the count\"\n",
        "{run}"
    );

    // A script's watch must end on its own.
    let run = run_shell(&["--cluster", &all], "watch app/ --prefix\nget app/b\n");
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(
        run.stderr
            .starts_with("line 1: in a script, watch needs --count N or --timeout D"),
        "{run}"
    );
    assert_eq!(run.stdout, "two words\n", "{run}");
}

#[test]
fn watch_goes_on_on_another_node_when_its_node_is_killed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    // The watch starts on a follower (first in --cluster): killing it
    // leaves the leader to take the writes.
    let watched = (1..=3).find(|&id| id != leader).expect("a follower");
    let others: Vec<u64> = (1..=3).filter(|&id| id != watched).collect();
    let cluster_list = cluster_arg(&cluster, &[watched, others[0], others[1]]);
    let mut watch = Streaming::spawn(&[
        "--cluster",
        &cluster_list,
        "--verbose",
        "watch",
        "app/",
        "--prefix",
        "--count",
        "6",
    ]);
    let watched_addr = cluster.addr(watched).to_string();
    watch.wait_stderr(&format!("-- watch 1 created on {watched_addr}"));
    let mut c = cluster.client(leader);
    let mut revisions = Vec::new();
    for i in 1..=2 {
        revisions.push(set_at(&mut c, &format!("app/{i}"), &i.to_string()));
    }
    watch.wait_stdout(2);
    // The third may or may not have reached the watcher when its node dies;
    // the rest are written while it finds another.
    revisions.push(set_at(&mut c, "app/3", "3"));
    cluster.kill(watched); // SIGKILL, to its process's PID
    for i in 4..=6 {
        revisions.push(set_at(&mut c, &format!("app/{i}"), &i.to_string()));
    }
    let status = watch.finish();
    let expected: Vec<String> = (1..=6).map(|i| format!("PUT app/{i} {i}")).collect();
    assert_eq!(
        watch.out, expected,
        "no gap, no duplicate, in order\n{watch}"
    );
    assert_eq!(status.code(), Some(0), "{watch}");
    let lost = watch
        .err
        .iter()
        .any(|l| l.starts_with(&format!("-- lost the watch on {watched_addr}")));
    assert!(lost, "{watch}");
    let resumed = watch
        .err
        .iter()
        .find(|l| {
            l.starts_with("-- watch ") && l.contains(" created on ") && !l.contains(&watched_addr)
        })
        .unwrap_or_else(|| panic!("not resumed elsewhere\n{watch}"))
        .clone();
    // It resumed right after the last revision it had printed.
    let from: u64 = resumed
        .rsplit("from revision ")
        .next()
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!(
        from == revisions[1] + 1 || from == revisions[2] + 1,
        "resumed from {from}; writes at {revisions:?}\n{watch}"
    );
}

/// At the prompt, `watch` prints each change with its revision until
/// Ctrl-C, which ends the watch and not the shell.
#[test]
fn the_interactive_shell_watches_until_ctrl_c() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let home = tempfile::tempdir().expect("temp home");
    let addr = cluster.addr(1).to_string();
    let prompt = format!("poncho {addr} (leader)> ");
    let mut shell = shell_on_pty(&["--cluster", addr.as_str(), "--verbose"], home.path());
    shell.expect(&prompt);
    shell.send("watch k --prev\r");
    shell.expect("-- watch 1 created on ");
    let mut c = cluster.client(1);
    let first = set_at(&mut c, "k", "v 1");
    shell.expect(&format!("\n{first}: PUT k = \"v 1\"  (was absent)"));
    let second = set_at(&mut c, "k", "2");
    shell.expect(&format!("\n{second}: PUT k = \"2\"  (was \"v 1\")"));
    shell.send("\x03");
    shell.expect(&format!(
        "(2 changes, up to revision {second}; ended by Ctrl-C)"
    ));
    shell.expect(&prompt);
    shell.send("get k\r");
    shell.expect("\"2\"");
    shell.expect(&prompt);
    shell.send("exit\r");
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
}

// ------------------------------------------------------------------ leases

/// Grants a lease with a one-shot `lease grant TTL` (a script cannot carry
/// the id it prints to a later line); its id, which is all it prints.
fn grant_lease(arg: &str, ttl: u64) -> u64 {
    let run = run_shell(&["--cluster", arg, "lease", "grant", &ttl.to_string()], "");
    assert_eq!(
        (run.status.code(), run.stderr.as_str()),
        (Some(0), ""),
        "{run}"
    );
    let id: u64 = run
        .stdout
        .trim_end_matches('\n')
        .parse()
        .unwrap_or_else(|_| panic!("grant prints just the id: {run}"));
    assert_eq!(run.stdout, format!("{id}\n"), "{run}");
    id
}

/// `lease` in a script: a key attached with `set --lease`, the lease's TTL
/// and keys, a keepalive, the list, a revoke that deletes the key; then the
/// errors for a lease that is gone, a TTL out of bounds and a keepalive
/// that would never end.
#[test]
fn leases_in_a_script_attach_keys_renew_list_and_revoke() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let arg = cluster_arg(&cluster, &[1, 2, 3]);
    let id = grant_lease(&arg, 5);
    let script = format!(
        "set svc/a up --lease {id}
set svc/b \"--lease\"
lease ttl {id} --keys
lease keepalive {id} --once
lease list
lease revoke {id}
get svc/a
get svc/b
lease ttl {id}
lease keepalive {id} --once
lease grant 1
lease keepalive {id}
set svc/c x --lease {id}
lease revoke {id}
"
    );
    let run = run_shell(&["--cluster", &arg], &script);
    let out: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(out.len(), 8, "{run}");
    assert_eq!(out[..2], ["OK", "OK"], "{run}");
    // Seconds left (of 5, just granted), the TTL granted, the key.
    let ttl: Vec<&str> = out[2].split(' ').collect();
    assert_eq!(ttl[1..], ["5", "svc/a"], "{run}");
    let left: u64 = ttl[0].parse().expect("seconds left");
    assert!((1..=5).contains(&left), "{run}");
    assert_eq!(out[3], "5", "keepalive: the full TTL again: {run}");
    assert_eq!(out[4], id.to_string(), "the only lease: {run}");
    assert_eq!(out[5], "1", "revoke deleted svc/a: {run}");
    assert_eq!(out[6..], ["(nil)", "--lease"], "{run}");
    let errors: Vec<&str> = run.stderr.lines().collect();
    let gone = format!("LEASE_NOT_FOUND: lease {id} does not exist");
    assert_eq!(errors.len(), 6, "{run}");
    assert!(errors[0].starts_with(&format!("line 9: {gone}")), "{run}");
    assert!(errors[1].starts_with(&format!("line 10: {gone}")), "{run}");
    assert!(
        errors[2].starts_with("line 11: BAD_REQUEST: ")
            && errors[2].contains("ttl is 1 seconds; it must be at least 2"),
        "{run}"
    );
    assert_eq!(
        errors[3],
        "line 12: in a script, lease keepalive needs --once or --count N \
         (without, it runs until Ctrl-C)",
        "{run}"
    );
    assert!(errors[4].starts_with(&format!("line 13: {gone}")), "{run}");
    assert!(errors[5].starts_with(&format!("line 14: {gone}")), "{run}");
    assert_eq!(run.status.code(), Some(1), "the first failure: {run}");
    assert_eq!(leader_get(&mut cluster, "svc/a"), Value::Null);
    assert_eq!(leader_get(&mut cluster, "svc/b"), "--lease");
    assert_eq!(leader_get(&mut cluster, "svc/c"), Value::Null);

    // A transaction's set attaches its key too; revoking deletes it.
    let id = grant_lease(&arg, 60);
    let run = run_shell(
        &["--cluster", &arg],
        &format!(
            "txn 'version(job) = 0' then 'set job me --lease {id}' 'set plain x'\n\
             lease ttl {id} --keys\nlease revoke {id}\nget job\nget plain\n"
        ),
    );
    let out: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(run.status.code(), Some(0), "{run}");
    assert_eq!(out[..3], ["SUCCESS", "OK", "OK"], "{run}");
    assert!(out[3].ends_with(" 60 job"), "only job is attached: {run}");
    assert_eq!(out[4..], ["1", "(nil)", "x"], "{run}");
}

/// `lease keepalive --count N` keeps a lease alive past its TTL; `--json`
/// gives each renewal as an object, as it comes; one-shot at a follower
/// works (keepalive is forwarded, ttl and list go to the leader).
#[test]
fn lease_keepalive_keeps_a_lease_alive_and_works_at_a_follower() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let arg = cluster_arg(&cluster, &[1, 2, 3]);
    let id = grant_lease(&arg, 2);
    let run = run_shell(
        &["--cluster", &arg],
        &format!("set svc/k up --lease {id}\n"),
    );
    assert_eq!(run.stdout, "OK\n", "{run}");
    // 6 renewals, 2/3 s apart: 3.3 s, past the TTL and its expiry's
    // slack (a lease not kept alive would be gone by then).
    let started = Instant::now();
    let run = run_shell(
        &["--cluster", &arg, "--json"],
        &format!("lease keepalive {id} --count 6\nget svc/k\n"),
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    assert!(started.elapsed() >= Duration::from_millis(3300), "{run}");
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 7, "{run}");
    for renewal in &lines[..6] {
        assert_eq!(
            renewal,
            &json!({"ok": true, "command": "lease keepalive", "line": 1, "id": id, "ttl": 2}),
            "{run}"
        );
    }
    assert_eq!(lines[6]["value"], "up", "kept alive: {run}");
    assert_eq!(leader_get(&mut cluster, "svc/k"), "up");

    let follower = (1..=3).find(|&n| n != leader).expect("a follower");
    let at_follower = cluster.addr(follower).to_string();
    let one = |words: &[&str]| {
        let mut all = vec!["--cluster", at_follower.as_str()];
        all.extend_from_slice(words);
        run_shell(&all, "")
    };
    let id_arg = id.to_string();
    let run = one(&["lease", "keepalive", &id_arg, "--once"]);
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "2\n"),
        "{run}"
    );
    let run = one(&["lease", "list"]);
    assert_eq!(run.stdout, format!("{id}\n"), "{run}");
    let run = one(&["--json", "lease", "ttl", &id_arg, "--keys"]);
    let ttl: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(
        (
            &ttl["command"],
            &ttl["id"],
            &ttl["granted_ttl"],
            &ttl["keys"]
        ),
        (
            &json!("lease ttl"),
            &json!(id),
            &json!(2),
            &json!(["svc/k"])
        ),
        "{run}"
    );
    // Left alone now, it expires, and so does its key.
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_get(&mut cluster, "svc/k") != Value::Null {
        assert!(Instant::now() < deadline, "the lease never expired");
        sleep(Duration::from_millis(100));
    }
    let run = one(&["lease", "keepalive", &id_arg, "--once"]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: LEASE_NOT_FOUND: lease {id} does not exist"
        )),
        "{run}"
    );
    let run = one(&["lease", "grant", "0"]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.starts_with("error: BAD_REQUEST: "), "{run}");
}

/// At the prompt, `lease keepalive` renews until Ctrl-C, and stops with
/// an error when the lease is revoked under it; one-shot, Ctrl-C ends it
/// as it ends any program.
#[test]
fn lease_keepalive_runs_until_ctrl_c_or_the_lease_is_gone() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let addr = cluster.addr(1).to_string();
    let id = grant_lease(&addr, 3);
    let home = tempfile::tempdir().expect("temp home");
    let prompt = format!("poncho {addr} (leader)> ");
    let mut shell = shell_on_pty(&["--cluster", addr.as_str()], home.path());
    shell.expect(&prompt);
    shell.send(&format!("lease keepalive {id}\r"));
    let renewed = format!("lease {id} keepalived with TTL(3)\n");
    // One at once, the next a second later.
    shell.expect(&renewed);
    shell.expect(&renewed);
    shell.interrupt();
    shell.expect(&format!("keepalive of lease {id} stopped (Ctrl-C) after "));
    shell.expect(&prompt);
    // The shell goes on; the lease was kept alive.
    shell.send(&format!("lease ttl {id}\r"));
    shell.expect(&format!("lease {id} granted with TTL(3s), remaining("));
    shell.expect(&prompt);

    // Revoked by someone else while it is kept alive: a clear error.
    shell.send(&format!("lease keepalive {id}\r"));
    shell.expect(&renewed);
    let mut c = cluster.client(1);
    let r = c
        .request(&json!({"msg_type": "LEASE", "req_id": 1,
                         "payload": {"op": "revoke", "id": id}}))
        .expect("revoke");
    assert_eq!(r["payload"]["deleted"], 0, "{r}");
    shell.expect(&format!(
        "(error) LEASE_NOT_FOUND: lease {id} does not exist"
    ));
    shell.expect("; keepalive stopped after ");
    shell.expect(&prompt);
    shell.send("exit\r");
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
    drop(shell);

    // One-shot on a terminal: it runs until Ctrl-C (SIGINT) ends it.
    let id = grant_lease(&addr, 3);
    let mut one = shell_on_pty(
        &[
            "--cluster",
            addr.as_str(),
            "lease",
            "keepalive",
            &id.to_string(),
        ],
        home.path(),
    );
    one.expect("3\n");
    one.expect("3\n");
    one.interrupt();
    let status = one.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{}", one.screen());
}
