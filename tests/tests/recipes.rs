//! etcd's concurrency recipes end to end: `poncho-shell lock` and `elect`
//! (the client library's `recipes`) as real processes against a real
//! 3-node cluster: mutual exclusion with growing fencing revisions, a
//! killed holder's lock passing on once its lease expires, and an election
//! that passes from a resigning leader to the next, seen by a listener.
//!
//! Every process is bounded in time and stopped by its PID (the guard
//! kills whatever is left when a test fails).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use poncho_tests::pty::{wait_bounded, Pty};
use poncho_tests::{workspace_bin, Cluster};

const ELECTION: Duration = Duration::from_secs(10);
const RUN: Duration = Duration::from_secs(40);

/// A shell process with its stdout read line by line; killed on drop if
/// still running.
struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Shell {
    fn spawn(cluster: &Cluster, args: &[&str], stdin: bool) -> Shell {
        let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id).to_string()).collect();
        let mut child = Command::new(workspace_bin("poncho-shell"))
            .arg("--cluster")
            .arg(addrs.join(","))
            .args(args)
            .env_remove("PONCHO_CLUSTER")
            .env_remove("PONCHO_HISTFILE")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn poncho-shell");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Shell {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next line of stdout, within `timeout`, and when it came.
    fn line_within(&mut self, timeout: Duration) -> Option<(Instant, String)> {
        let got = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(got.1.clone());
        Some(got)
    }

    fn line(&mut self, timeout: Duration) -> String {
        match self.line_within(timeout) {
            Some((_, l)) => l,
            None => panic!(
                "poncho-shell {} printed no line within {timeout:?} (so far: {:?})",
                self.child.id(),
                self.seen
            ),
        }
    }

    /// Closes stdin: a one-shot hold ends there.
    fn close_stdin(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
    }

    fn wait(&mut self) -> ExitStatus {
        wait_bounded(&mut self.child, RUN)
    }

    /// Everything else it printed, once it has exited.
    fn rest(&mut self) -> Vec<String> {
        let rest: Vec<String> = self.lines.try_iter().map(|(_, l)| l).collect();
        self.seen.extend(rest.iter().cloned());
        rest
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `KEY REVISION`, the line a lock or a campaign prints once acquired.
fn key_and_revision(line: &str) -> (String, u64) {
    let mut words = line.split_whitespace();
    let (Some(key), Some(rev), None) = (words.next(), words.next(), words.next()) else {
        panic!("not KEY REVISION: {line:?}");
    };
    (
        key.to_string(),
        rev.parse()
            .unwrap_or_else(|_| panic!("no revision: {line:?}")),
    )
}

#[test]
fn four_shells_locking_at_once_run_their_commands_one_at_a_time_with_growing_revisions() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("log");
    let script = format!(
        "echo \"start $PONCHO_LOCK_KEY $PONCHO_LOCK_REV\" >> '{f}'; sleep 0.2; \
         echo \"end $PONCHO_LOCK_KEY $PONCHO_LOCK_REV\" >> '{f}'",
        f = file.display()
    );
    let mut shells: Vec<Shell> = (0..4)
        .map(|_| Shell::spawn(&cluster, &["lock", "jobs", "sh", "-c", &script], false))
        .collect();
    let mut printed = Vec::new();
    for shell in &mut shells {
        let line = shell.line(RUN);
        let status = shell.wait();
        assert!(
            status.success(),
            "a locker failed: {status:?} {:?}",
            shell.seen
        );
        printed.push(key_and_revision(&line));
        assert!(shell.rest().is_empty(), "{:?}", shell.seen);
    }
    let log = std::fs::read_to_string(&file).expect("the commands' log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 8, "{log}");
    let mut revisions = Vec::new();
    for pair in lines.chunks(2) {
        let start = pair[0]
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("{log}"));
        let end = pair[1]
            .strip_prefix("end ")
            .unwrap_or_else(|| panic!("{log}"));
        assert_eq!(start, end, "interleaved:\n{log}");
        let (key, rev) = key_and_revision(start);
        assert!(key.starts_with("jobs/"), "{key}");
        revisions.push(rev);
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "fencing revisions must grow from holder to holder: {revisions:?}"
    );
    let mut from_stdout: Vec<u64> = printed.iter().map(|(_, r)| *r).collect();
    from_stdout.sort_unstable();
    assert_eq!(
        from_stdout, revisions,
        "what was printed is what the commands saw"
    );
    let mut keys: Vec<&String> = printed.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "a key per lease: {printed:?}");
}

#[test]
fn a_killed_holders_lock_passes_to_the_next_waiter_once_its_lease_expires() {
    let ttl = Duration::from_secs(3);
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    // Held until its stdin ends, which it never does: it is killed.
    let mut holder = Shell::spawn(&cluster, &["lock", "--ttl", "3", "db"], true);
    let (held_key, held_rev) = key_and_revision(&holder.line(RUN));
    let mut waiter = Shell::spawn(&cluster, &["lock", "db", "true"], false);
    // It waits while the holder keeps its lease alive (past a TTL).
    assert!(
        waiter.line_within(ttl + Duration::from_secs(1)).is_none(),
        "the waiter got a held lock: {:?}",
        waiter.seen
    );
    let killed = Instant::now();
    // SIGKILL, by PID: no release, the lease must expire.
    holder.child.kill().expect("kill the holder");
    holder.wait();
    let Some((at, line)) = waiter.line_within(ttl + Duration::from_secs(5)) else {
        panic!("the waiter did not get the lock within the TTL and 5 s of the kill");
    };
    let after = at - killed;
    // The holder kept the lease alive every TTL/3: it expires no sooner
    // than 2/3 of a TTL after the kill.
    assert!(
        after >= ttl / 2,
        "the lock passed {after:?} after the kill: before its lease could expire"
    );
    let (key, rev) = key_and_revision(&line);
    assert_ne!(key, held_key);
    assert!(rev > held_rev, "{rev} after {held_rev}");
    assert!(waiter.wait().success(), "{:?}", waiter.seen);
}

#[test]
fn an_election_passes_to_the_next_candidate_when_the_leader_resigns_and_a_listener_sees_both() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let mut first = Shell::spawn(&cluster, &["elect", "web", "one"], true);
    let (_, first_rev) = key_and_revision(&first.line(RUN));
    let mut listener = Shell::spawn(
        &cluster,
        &[
            "elect",
            "--listen",
            "web",
            "--count",
            "2",
            "--timeout",
            "30s",
        ],
        false,
    );
    assert_eq!(listener.line(RUN), "one");
    let mut second = Shell::spawn(&cluster, &["elect", "web", "two"], true);
    assert!(
        second.line_within(Duration::from_secs(2)).is_none(),
        "two leaders at once: {:?}",
        second.seen
    );
    // The end of its stdin: the first resigns and exits.
    first.close_stdin();
    assert!(first.wait().success(), "{:?}", first.seen);
    let (_, second_rev) = key_and_revision(&second.line(Duration::from_secs(10)));
    assert!(second_rev > first_rev);
    assert_eq!(listener.line(Duration::from_secs(10)), "two");
    assert!(listener.wait().success());
    second.close_stdin();
    assert!(second.wait().success(), "{:?}", second.seen);
}

#[test]
fn a_script_may_not_hold_a_lock_without_an_end() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let mut shell = Shell::spawn(&cluster, &[], true);
    if let Some(mut stdin) = shell.stdin.take() {
        stdin
            .write_all(b"lock a\nlock a --for 200ms\nelect --listen e\nlock a 'exit 3'\n")
            .expect("write the script");
    }
    let status = shell.wait();
    // The first failure's status: the usage error's.
    assert_eq!(status.code(), Some(2), "{:?}", shell.rest());
    let out = shell.rest();
    // `lock a --for` and `lock a 'exit 3'` each printed their key.
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|l| l.starts_with("a/")), "{out:?}");
}

#[test]
fn at_the_prompt_a_lock_is_held_until_ctrl_c_then_released() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(ELECTION);
    let home = tempfile::tempdir().expect("temp home");
    let addr = cluster.addr(1).to_string();
    let prompt = format!("poncho {addr} (leader)> ");
    let mut cmd = Command::new(workspace_bin("poncho-shell"));
    cmd.args(["--cluster", addr.as_str()])
        .env_remove("PONCHO_CLUSTER")
        .env_remove("PONCHO_HISTFILE")
        .env("HOME", home.path())
        .env("TERM", "xterm");
    let mut shell = Pty::spawn(cmd);
    shell.expect(&prompt);
    shell.send("lock --ttl 4 jobs\r");
    shell.expect("acquired lock \"jobs\": key jobs/");
    shell.expect("holding it until Ctrl-C");
    shell.send("\x03");
    shell.expect("(released lock \"jobs\" after ");
    shell.expect("Ctrl-C)");
    shell.expect(&prompt);
    // Released: the prefix is empty, and a new lock is had at once.
    shell.send("get jobs/ --prefix --count\r");
    shell.expect("\n0");
    shell.expect(&prompt);
    shell.send("elect web one --for 300ms\r");
    shell.expect("elected in \"web\" with \"one\"");
    shell.expect("(resigned from \"web\" after ");
    shell.expect(&prompt);
    shell.send("exit\r");
    assert_eq!(shell.wait().code(), Some(0), "{}", shell.screen());
}
