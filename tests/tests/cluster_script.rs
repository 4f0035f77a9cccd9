//! End-to-end tests of `scripts/cluster.sh`, the quickstart: the real script
//! starting real nodes, on a pseudo-terminal as a person runs it, or in a
//! process group of its own.
//!
//! The nodes it starts are not this test's children (and live in sessions of
//! their own, which is the point), so every test kills the ones it saw by PID
//! when it ends, passing or failing.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use poncho_tests::pty::{wait_bounded, Pty};
use poncho_tests::{spawn_server, wait_listening, workspace_bin, Client, ServerSpec};
use serde_json::json;

/// The longest the script may take to start a cluster (it waits up to 10 s
/// per node and for a leader).
const START: Duration = Duration::from_secs(40);
const NODES: usize = 3;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `bash scripts/cluster.sh ARGS`, using the binaries this test uses.
fn script(args: &[&str]) -> Command {
    let server = workspace_bin("poncho-server");
    workspace_bin("poncho-shell");
    let target = server
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/poncho-server");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/cluster.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("PONCHO_CLUSTER")
        .env_remove("PONCHO_HISTFILE");
    cmd
}

/// Runs a short `cluster.sh` command (stop, clean, restart) to its end.
fn run_script(args: &[&str]) -> Output {
    run_script_within(args, Duration::from_secs(30))
}

/// [`run_script`] for a command that may take up to `timeout` (`add`
/// waits up to a minute for its learner).
fn run_script_within(args: &[&str], timeout: Duration) -> Output {
    let child = script(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cluster.sh");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.expect("cluster.sh output"),
        Err(_) => {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("cluster.sh {args:?} did not finish within {timeout:?}");
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A base port P with P+1..=P+NODES+2 free on 127.0.0.1 (two to spare for
/// `add`), outside the ephemeral range the other tests' ports come from.
fn free_base_port() -> u16 {
    // Distinct for each test of this process (they run at once) and each
    // process.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let seed =
        ((std::process::id() as u64) << 20) ^ nanos ^ (CALLS.fetch_add(1, Ordering::SeqCst) * 1031);
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 97) % 10_000) as u16;
        let free =
            (1..=NODES as u16 + 2).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of {NODES} ports");
}

/// Whether `pid` is a running poncho-server (not a process reusing the PID).
fn is_server(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("poncho-server"))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("the node's command line")
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The PIDs of the nodes the script started: killed when the test ends.
#[derive(Default)]
struct Nodes(Vec<u32>);

impl Nodes {
    fn add(&mut self, pid: u32) {
        self.0.push(pid);
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if is_server(pid) {
                // SAFETY: kill(2) of a poncho-server this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Each node of the script's banner, `  node K  ADDR  pid PID  ...`: K and
/// its PID.
fn banner_nodes(banner: &str) -> Vec<(usize, u32)> {
    banner
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["node", k, _addr, "pid", pid, ..] => Some((
                    k.parse().expect("a node number"),
                    pid.parse().expect("a PID"),
                )),
                _ => None,
            }
        })
        .collect()
}

/// Node K's PID from the script's banner, for K in 1..=NODES.
fn node_pids(banner: &str) -> Vec<u32> {
    let nodes = banner_nodes(banner);
    let pids: Vec<u32> = (1..=NODES)
        .filter_map(|k| nodes.iter().find(|n| n.0 == k).map(|n| n.1))
        .collect();
    assert_eq!(
        pids.len(),
        NODES,
        "the banner names every node's PID:\n{banner}"
    );
    pids
}

fn addrs(base: u16) -> Vec<SocketAddr> {
    (1..=NODES as u16)
        .map(|k| SocketAddr::from(([127, 0, 0, 1], base + k)))
        .collect()
}

/// Waits until some node reports itself leader.
fn wait_for_leader(addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = addrs.iter().any(|&a| {
            Client::connect_timeout(a, Duration::from_millis(500))
                .and_then(|mut c| c.request(&json!({"msg_type": "STATUS"})))
                .is_ok_and(|r| r["payload"]["role"] == "leader")
        });
        if leader {
            return;
        }
        assert!(Instant::now() < deadline, "no leader among {addrs:?}");
        sleep(Duration::from_millis(50));
    }
}

/// Waits up to 10 s for every PID to stop being a running server.
fn wait_gone(pids: &[u32]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| is_server(p)) {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
    true
}

/// A temporary directory for a cluster's data, and free ports for it.
struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    base: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("cluster");
        Setup {
            dir,
            data,
            base: free_base_port(),
        }
    }

    fn data_arg(&self) -> &str {
        self.data.to_str().expect("utf-8 path")
    }

    /// The script starting a cluster here, with `extra` arguments.
    fn start(&self, extra: &[&str]) -> Command {
        let (nodes, base) = (NODES.to_string(), self.base.to_string());
        let mut args = vec!["--nodes", &nodes, "--base-port", &base];
        args.extend(["--data", self.data_arg(), "--no-build"]);
        args.extend(extra);
        script(&args)
    }

    fn log(&self, k: usize) -> String {
        std::fs::read_to_string(self.data.join(format!("node-{k}.log"))).unwrap_or_default()
    }

    /// The script with `--no-shell` (and a server flag, to see it kept),
    /// in a process group of its own, once its banner is out: the script,
    /// its output as it comes, and the nodes' PIDs (added to `nodes`).
    fn start_in_background(&self, nodes: &mut Nodes) -> (Child, Arc<Mutex<String>>, Vec<u32>) {
        let mut child = self
            .start(&["--no-shell", "--", "--request-timeout-ms", "1234"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn cluster.sh");
        let out = collect(&mut child);
        let banner = wait_for_text(&out, "press Ctrl-C to stop", START);
        let pids = node_pids(&banner);
        pids.iter().for_each(|&p| nodes.add(p));
        (child, out, pids)
    }

    /// The quickstart on a terminal, once its shell prompts; the nodes'
    /// PIDs (added to `nodes`).
    fn start_in_terminal(&self, nodes: &mut Nodes) -> (Pty, Vec<u32>) {
        let mut cmd = self.start(&[]);
        cmd.env("HOME", self.dir.path()).env("TERM", "xterm");
        let mut term = Pty::spawn(cmd);
        let banner = term.expect_within("Type help", START);
        let pids = node_pids(&banner);
        pids.iter().for_each(|&p| nodes.add(p));
        term.expect("> ");
        (term, pids)
    }
}

#[test]
fn ctrl_c_in_the_quickstart_shell_leaves_the_nodes_running_and_exit_stops_them() {
    let setup = Setup::new();
    let mut nodes = Nodes::default();
    let (mut term, pids) = setup.start_in_terminal(&mut nodes);

    // Ctrl-C as the terminal sends it: SIGINT to its foreground group, the
    // script's (the shell runs in it).
    let group = term.interrupt();
    assert_eq!(
        group,
        term.pid() as libc::pid_t,
        "the script leads the group"
    );
    // A node that took the SIGINT logs it and exits within milliseconds.
    sleep(Duration::from_secs(1));
    for (k, &pid) in pids.iter().enumerate() {
        let log = setup.log(k + 1);
        assert!(
            is_server(pid),
            "node {} (pid {pid}) stopped on the terminal's Ctrl-C:\n{log}\n--- terminal\n{}",
            k + 1,
            term.screen()
        );
        assert!(!log.contains("received signal"), "node {}:\n{log}", k + 1);
    }
    // The shell took it too, and goes on.
    term.send("set after-ctrl-c yes\r");
    term.expect_within("OK", Duration::from_secs(10));
    term.expect("> ");
    term.send("get after-ctrl-c\r");
    term.expect_within("yes", Duration::from_secs(10));
    term.expect("> ");

    // Leaving the shell stops every node.
    term.send("exit\r");
    term.expect_within("stopping nodes:", Duration::from_secs(10));
    let status = term.wait_within(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", term.screen());
    assert!(wait_gone(&pids), "nodes still run after the script exited");
    for k in 1..=NODES {
        let log = setup.log(k);
        assert!(
            log.contains("received signal 15"),
            "node {k} was stopped by SIGTERM:\n{log}"
        );
    }
}

/// Collects a child's stdout lines as they come.
fn collect(child: &mut Child) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&out);
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut s = sink.lock().expect("output");
            s.push_str(&line);
            s.push('\n');
        }
    });
    out
}

fn wait_for_text(out: &Mutex<String>, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s = out.lock().expect("output").clone();
        if s.contains(text) {
            return s;
        }
        assert!(Instant::now() < deadline, "{text:?} did not appear:\n{s}");
        sleep(Duration::from_millis(20));
    }
}

/// The script's own Ctrl-C (`--no-shell`): SIGINT to its process group;
/// it stops every node and exits 130.
fn interrupt_script(child: &mut Child, out: &Mutex<String>) {
    // SAFETY: kill(2) of the script's own process group.
    assert_eq!(
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) },
        0
    );
    let status = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{}", out.lock().expect("output"));
}

/// `node K restarted: pid PID on ...`
fn restarted_pid(output: &Output) -> u32 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("restarted: pid "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new PID:\n{}", text(output)))
}

#[test]
fn restart_keeps_a_nodes_flags_and_clean_refuses_while_a_node_holds_its_directory() {
    let setup = Setup::new();
    let (data, data_arg, base) = (&setup.data, setup.data_arg(), setup.base);
    let mut nodes = Nodes::default();
    let (mut child, out, pids) = setup.start_in_background(&mut nodes);

    // restart K: the same flags, a new process (node 1 without its
    // bootstrap hint).
    for k in [2usize, 1] {
        let before = cmdline(pids[k - 1]);
        assert!(before
            .windows(2)
            .any(|w| w == ["--request-timeout-ms", "1234"]));
        let restart = run_script(&["restart", &k.to_string(), "--data", data_arg]);
        assert_eq!(restart.status.code(), Some(0), "{}", text(&restart));
        let new = restarted_pid(&restart);
        nodes.add(new);
        assert_ne!(new, pids[k - 1]);
        assert!(!is_server(pids[k - 1]), "the old node {k} is stopped");
        let expected: Vec<String> = before.into_iter().filter(|a| a != "is_leader").collect();
        assert_eq!(cmdline(new), expected, "node {k} restarted with its flags");
    }
    wait_for_leader(&addrs(base));
    let records = std::fs::read_to_string(data.join("cluster.pids")).expect("pid file");

    // clean refuses while the cluster runs.
    let clean = run_script(&["clean", "--data", data_arg]);
    assert_eq!(clean.status.code(), Some(1), "{}", text(&clean));
    assert!(data.exists());

    // The script's own Ctrl-C (--no-shell) stops every node, the
    // restarted ones too, with SIGTERM.
    interrupt_script(&mut child, &out);
    let all: Vec<u32> = records
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(all.len(), NODES, "{records}");
    assert!(wait_gone(&all), "nodes still run after Ctrl-C: {records}");

    // A server started by hand on node 1's data directory: clean refuses,
    // naming it, though the script did not start it.
    let node_dir = data.join("node-1");
    let addr = addrs(base)[0];
    let peers = [format!("1={addr}")];
    let spec = ServerSpec {
        id: 1,
        addr,
        peers: &peers,
        data_dir: &node_dir,
        args: &[],
    };
    let log = setup.dir.path().join("by-hand.log");
    let mut by_hand = Some(spawn_server(&spec, &log, true));
    let by_hand_pid = by_hand.as_ref().map_or(0, Child::id);
    nodes.add(by_hand_pid);
    wait_listening(1, addr, &mut by_hand, &log);
    let clean = run_script(&["clean", "--data", data_arg]);
    assert_eq!(clean.status.code(), Some(1), "{}", text(&clean));
    assert!(
        String::from_utf8_lossy(&clean.stderr).contains(&format!("node-1 (pid {by_hand_pid})")),
        "{}",
        text(&clean)
    );
    assert!(node_dir.join("LOCK").exists() && data.join("node-2").exists());
    if let Some(mut c) = by_hand.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let clean = run_script(&["clean", "--data", data_arg]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(!data.exists());
}

#[test]
fn closing_the_terminal_stops_the_nodes() {
    let setup = Setup::new();
    let mut nodes = Nodes::default();
    let (mut term, pids) = setup.start_in_terminal(&mut nodes);
    term.hang_up();
    let status = term.wait_within(Duration::from_secs(15));
    assert_eq!(status.code(), Some(129), "{}", term.screen());
    assert!(
        wait_gone(&pids),
        "nodes still run after the terminal closed"
    );
    for k in 1..=NODES {
        let log = setup.log(k);
        assert!(log.contains("received signal 15"), "node {k}:\n{log}");
    }
}

/// `poncho-shell --cluster CLUSTER ARGS...` run to its end: what it printed
/// on stdout, if it succeeded.
fn shell_says(cluster: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(workspace_bin("poncho-shell"))
        .args(["--cluster", cluster, "--timeout", "5s"])
        .args(args)
        .env_remove("PONCHO_CLUSTER")
        .stdin(Stdio::null())
        .output()
        .expect("run poncho-shell");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(text(&output)),
    }
}

/// `node K added: pid PID on ADDR (a voter)`: K and PID.
fn added(output: &Output) -> (usize, u32) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("node ") && l.contains(" added: pid "))
        .unwrap_or_else(|| panic!("no new node:\n{}", text(output)));
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        ["node", k, "added:", "pid", pid, ..] => (
            k.parse().expect("a node number"),
            pid.parse().expect("a PID"),
        ),
        _ => panic!("{line}"),
    }
}

/// The rows of `member list` as (id, role) pairs.
fn members(cluster: &str) -> Vec<(String, String)> {
    let table = shell_says(cluster, &["member", "list"]).expect("member list");
    table
        .lines()
        .skip(1)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[3].to_string())
        })
        .collect()
}

#[test]
fn add_starts_a_node_that_joins_and_is_promoted_and_remove_stops_it() {
    let setup = Setup::new();
    let (data_arg, base) = (setup.data_arg(), setup.base);
    let mut nodes = Nodes::default();
    let (mut child, out, _) = setup.start_in_background(&mut nodes);
    let cluster = addrs(base)
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");

    let add = run_script_within(&["add", "--data", data_arg], Duration::from_secs(90));
    assert_eq!(add.status.code(), Some(0), "{}", text(&add));
    let (k, pid) = added(&add);
    nodes.add(pid);
    assert_eq!(k, NODES + 1, "the next number");
    let first = format!("127.0.0.1:{}", base + 1);
    let args = cmdline(pid);
    assert!(
        args.windows(2).any(|w| w == ["--join", first.as_str()]),
        "{args:?}"
    );
    assert!(args
        .windows(2)
        .any(|w| w == ["--port", &(base + 4).to_string()]));
    assert!(args
        .windows(2)
        .any(|w| w == ["--request-timeout-ms", "1234"]));
    assert!(
        args.iter().any(|a| a == "--cluster-secret-file"),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a == "--peers" || a == "is_leader"),
        "{args:?}"
    );
    let roles = members(&cluster);
    assert!(roles.contains(&("4".into(), "voter".into())), "{roles:?}");

    let remove = run_script(&["remove", "4", "--data", data_arg]);
    assert_eq!(remove.status.code(), Some(0), "{}", text(&remove));
    assert!(wait_gone(&[pid]), "node 4 still runs after its removal");
    assert!(
        setup.log(4).contains("received signal 15"),
        "{}",
        setup.log(4)
    );
    let roles = members(&cluster);
    assert!(!roles.iter().any(|(id, _)| id == "4"), "{roles:?}");
    // A removed node is not restarted nor removed again, and its number
    // is not given to the next node.
    for args in [&["restart", "4"][..], &["remove", "4"]] {
        let again = run_script(&[args, &["--data", data_arg]].concat());
        assert_eq!(again.status.code(), Some(1), "{}", text(&again));
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("removed"),
            "{}",
            text(&again)
        );
    }
    assert!(!is_server(pid));

    // The next node is 5, and a start from the data starts it again (with
    // the arguments it was added with), not the removed node 4.
    let add = run_script_within(&["add", "--data", data_arg], Duration::from_secs(90));
    assert_eq!(add.status.code(), Some(0), "{}", text(&add));
    let (k, pid) = added(&add);
    nodes.add(pid);
    assert_eq!(k, NODES + 2);
    interrupt_script(&mut child, &out);
    assert!(wait_gone(&[pid]), "node 5 still runs after Ctrl-C");
    let (mut child, out, _) = setup.start_in_background(&mut nodes);
    let banner = out.lock().expect("output").clone();
    let started = banner_nodes(&banner);
    started.iter().for_each(|&(_, pid)| nodes.add(pid));
    let numbers: Vec<usize> = started.iter().map(|n| n.0).collect();
    assert_eq!(numbers, [1, 2, 3, 5], "{banner}");
    let roles = members(&cluster);
    assert!(roles.contains(&("5".into(), "voter".into())), "{roles:?}");
    interrupt_script(&mut child, &out);
}

#[test]
fn add_and_remove_refuse_without_a_cluster_or_a_node_number() {
    let setup = Setup::new();
    let data_arg = setup.data_arg();
    for (args, code, says) in [
        (&["add"][..], 1, "start the cluster first"),
        (&["remove"], 2, "remove takes a node number"),
        (&["remove", "two"], 2, "remove takes a node number"),
        (&["remove", "3"], 1, "node 3 was never started"),
    ] {
        let run = run_script(&[args, &["--data", data_arg]].concat());
        assert_eq!(run.status.code(), Some(code), "{args:?}: {}", text(&run));
        assert!(
            String::from_utf8_lossy(&run.stderr).contains(says),
            "{args:?}: {}",
            text(&run)
        );
    }
    let help = run_script(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for usage in [
        "scripts/cluster.sh add",
        "scripts/cluster.sh remove K",
        "--join",
    ] {
        assert!(help.contains(usage), "{usage}: {help}");
    }
    assert!(!help.contains("set -euo"), "{help}");
}
