//! End-to-end tests of membership through `poncho-shell`: real servers, the
//! real shell in scripted mode. A new node joins (`--join`), is added as a
//! learner, promoted, listed, given the leadership and removed; refused
//! changes say what to do next and exit non-zero.
//!
//! Every shell run is bounded; the harness kills the servers on drop.

use std::fs::File;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::pty::wait_bounded;
use poncho_tests::{workspace_bin, Cluster};

const ELECTION: Duration = Duration::from_secs(10);
/// The longest one shell run may take.
const RUN: Duration = Duration::from_secs(30);
/// How long a new learner may take to catch up on an idle cluster.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Well past an election timeout (300 to 600 ms by default): by then the
/// leader no longer counts a node it has not heard from as healthy.
const UNHEALTHY_AFTER: Duration = Duration::from_millis(1500);

/// What a run printed on stdout.
fn out(run: &Output) -> String {
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// What a run printed on stderr.
fn err(run: &Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

/// `poncho-shell --cluster CLUSTER < script`, its output through files.
fn shell(cluster: &str, script: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("in"), script).expect("write the script");
    let mut child = Command::new(workspace_bin("poncho-shell"))
        .args(["--cluster", cluster, "--timeout", "10s"])
        .env_remove("PONCHO_CLUSTER")
        .env_remove("PONCHO_HISTFILE")
        .stdin(File::open(file("in")).expect("the script"))
        .stdout(File::create(file("out")).expect("stdout file"))
        .stderr(File::create(file("err")).expect("stderr file"))
        .spawn()
        .expect("spawn poncho-shell");
    let status = wait_bounded(&mut child, RUN);
    let read = |name: &str| std::fs::read(file(name)).unwrap_or_default();
    Output {
        status,
        stdout: read("out"),
        stderr: read("err"),
    }
}

fn cluster_arg(cluster: &Cluster, ids: &[u64]) -> String {
    let addrs: Vec<String> = ids.iter().map(|&id| cluster.addr(id).to_string()).collect();
    addrs.join(",")
}

/// Runs `member promote ID` until it succeeds (it is refused with
/// LEARNER_NOT_READY until the learner has caught up); the last run.
fn promote_when_ready(cluster: &str, id: u64) -> Output {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let run = shell(cluster, &format!("member promote {id}\n"));
        if run.status.success() || Instant::now() > deadline {
            return run;
        }
        assert!(
            err(&run).contains("LEARNER_NOT_READY") || err(&run).contains("CHANGE_IN_PROGRESS"),
            "{run:?}"
        );
        sleep(Duration::from_millis(200));
    }
}

/// The rows of `member list`'s table, split into cells. A cell may hold a
/// parenthesised note (MATCH `0 (2 behind)`): it stays with its cell.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip_while(|l| !l.starts_with("ID "))
        .skip(1)
        .take_while(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            let mut cells: Vec<String> = Vec::new();
            let mut open = false;
            for word in l.split_whitespace() {
                match cells.last_mut() {
                    Some(cell) if open || word.starts_with('(') => {
                        cell.push(' ');
                        cell.push_str(word);
                    }
                    _ => cells.push(word.to_string()),
                }
                if word.starts_with('(') {
                    open = true;
                }
                if word.ends_with(')') {
                    open = false;
                }
            }
            cells
        })
        .collect()
}

/// Member `id`'s row: id, address, peer address, role, then the rest.
fn row(table: &str, id: u64) -> Option<Vec<String>> {
    rows(table).into_iter().find(|r| r[0] == id.to_string())
}

#[test]
fn a_learner_joins_is_promoted_leads_and_a_removed_id_is_not_reused() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(ELECTION);
    let all = cluster_arg(&cluster, &[1, 2, 3]);
    let four = cluster.start_joining();
    assert_eq!(four, 4);
    let four_addr = cluster.addr(four);

    let run = shell(
        &all,
        &format!("member add 4 {} --learner\nmember list\n", four_addr),
    );
    assert!(run.status.success(), "{run:?}");
    assert!(out(&run).starts_with("OK\nID "), "{run:?}");
    let learner = row(&out(&run), 4).unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(learner[1], four_addr.to_string());
    assert_eq!(learner[3], "learner", "{run:?}");
    let leaders = rows(&out(&run))
        .iter()
        .filter(|r| r.last().is_some_and(|c| c == "yes"))
        .count();
    assert_eq!(leaders, 1, "one member leads: {run:?}");

    let run = promote_when_ready(&all, 4);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(out(&run), "OK\n", "{run:?}");
    let with_four = format!("{all},{}", four_addr);
    let run = shell(&with_four, "member list\n");
    let voter = row(&out(&run), 4).unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(voter[3], "voter", "{run:?}");
    assert_eq!(voter[5], "yes", "healthy: {run:?}");

    // The leadership moves to the new voter.
    let run = shell(&with_four, "transfer-leader 4\nleader\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(out(&run), format!("OK\n{}\n", four_addr), "{run:?}");

    // Remove node 2; its id is not given to its replacement.
    let run = shell(&with_four, "member remove 2\nmember list\n");
    assert!(run.status.success(), "{run:?}");
    assert!(row(&out(&run), 2).is_none(), "{run:?}");
    let run = shell(
        &with_four,
        &format!("member add 2 {} --learner\n", cluster.addr(2)),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        err(&run).contains("line 1: MEMBERSHIP_REFUSED: ") && err(&run).contains("under a new id"),
        "{run:?}"
    );
}

#[test]
fn refused_changes_say_what_to_do_next_and_fail_the_script() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let all = cluster_arg(&cluster, &[1, 2, 3]);

    // A voter is not a learner; an unknown id is not a member, nor a voter
    // to hand leadership to.
    let script = "member promote 1\nmember remove 9\nmember list\ntransfer-leader 9\n";
    let run = shell(&all, script);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stderr = err(&run);
    let errors: Vec<&str> = stderr.lines().collect();
    assert!(
        errors.len() == 3
            && errors[0].starts_with("line 1: MEMBERSHIP_REFUSED: ")
            && errors[1].starts_with("line 2: MEMBERSHIP_REFUSED: ")
            && errors[2].starts_with("line 4: MEMBERSHIP_REFUSED: ")
            && errors[2].contains("`member list` shows who votes"),
        "{run:?}"
    );
    assert_eq!(rows(&out(&run)).len(), 3, "the list still ran: {run:?}");

    // With one follower down, removing the other would leave one healthy
    // voter of two: refused, with --force and its risk.
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (down, other) = (followers[0], followers[1]);
    cluster.kill(down);
    // Long enough for the leader to stop counting it as healthy.
    sleep(UNHEALTHY_AFTER);
    let run = shell(&all, &format!("member remove {other}\n"));
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        err(&run).contains("UNSAFE_CHANGE: ") && err(&run).contains("--force"),
        "{run:?}"
    );
    let run = shell(&all, "member list\n");
    assert!(row(&out(&run), other).is_some(), "not removed: {run:?}");
    let unhealthy = row(&out(&run), down).unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(unhealthy[5], "no", "{run:?}");

    // A usage error is exit status 2, and nothing is sent.
    let run = shell(&all, "member add 4 nowhere --learner\n");
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(err(&run).contains("not an address IP:PORT"), "{run:?}");
}

#[test]
fn the_leader_can_be_removed_and_the_others_go_on() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(ELECTION);
    let all = cluster_arg(&cluster, &[1, 2, 3]);
    // The strict check refuses the removal until the other two have been
    // heard from (a follower still connecting is not yet healthy).
    let deadline = std::time::Instant::now() + ELECTION;
    loop {
        let run = shell(&all, "member list\n");
        let healthy = [1, 2, 3]
            .iter()
            .all(|&id| row(&out(&run), id).is_some_and(|r| r[5] == "yes"));
        if healthy {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{run:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = shell(&all, &format!("member remove {leader}\n"));
    assert!(run.status.success(), "{run:?}");
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let rest = cluster_arg(&cluster, &others);
    let run = shell(&rest, "member list\nset after removal\nget after\n");
    assert!(run.status.success(), "{run:?}");
    assert!(row(&out(&run), leader).is_none(), "{run:?}");
    assert_eq!(rows(&out(&run)).len(), 2, "{run:?}");
    assert!(out(&run).ends_with("OK\nremoval\n"), "{run:?}");
}
