//! Fault injection with real processes: `poncho-server` nodes talking
//! through fault-injecting proxies, five concurrent clients recording every
//! read, write and CAS, a nemesis that kills, pauses and partitions nodes for
//! a few seconds, then a heal, a final read of every key by every client,
//! and a linearizability check of the whole history.
//!
//! A failing scenario keeps its directory (node logs, data, history.jsonl)
//! and prints its path. Scenarios run one at a time (see `serial`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::certs::TestCa;
use poncho_tests::faults::{Config, Expect, FaultCluster, Run};
use poncho_tests::Client;
use poncho_tls::TlsFiles;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

/// How long each nemesis runs.
const NEMESIS: Duration = Duration::from_secs(7);

/// Each scenario runs 3-5 servers and 5 busy clients; two at once on a
/// 2-core machine would starve each other's heartbeats into spurious
/// elections, and the timings below assume a machine to themselves.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Long enough for any election the nemesis provokes (300-600 ms of timeout
/// plus a PreVote and a vote round), with room for a loaded machine.
const ELECTION: Duration = Duration::from_secs(3);

fn others(c: &FaultCluster, id: u64) -> Vec<u64> {
    c.ids().into_iter().filter(|&i| i != id).collect()
}

fn rand_ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    ms(rng.gen_range(lo..=hi))
}

/// The current leader and its term, or None after a short pause (an
/// election is under way), so a nemesis step never spins.
fn leader(c: &FaultCluster) -> Option<(u64, u64)> {
    let leader = c.leader();
    if leader.is_none() {
        sleep(ms(50));
    }
    leader
}

#[test]
fn leader_kill_loop() {
    let _serial = serial();
    let mut run = Run::start("leader_kill_loop", Config::nodes(3));
    run.nemesis(NEMESIS, |c, _| {
        let Some((l, _)) = leader(c) else { return };
        c.kill(l);
        sleep(ms(500));
        c.restart(l);
        sleep(ms(500));
    });
    run.finish(Expect {
        min_faults: 4,
        min_elections: 3,
        min_ok: 300,
    });
}

/// Nodes that speak TLS to clients and peers (peers through the proxies),
/// their certificates in `dir`; the clients trust their CA.
fn over_tls(dir: &Path) -> Config {
    let ca = TestCa::new(dir, "fault-ca");
    // The nodes listen on 127.0.0.11.. and the proxies on 127.0.0.1.
    let node = ca.leaf(
        "node",
        &["127.0.0.1", "127.0.0.11", "127.0.0.12", "127.0.0.13"],
    );
    let mut config = Config::nodes(3);
    config.server_args = [
        "--cert-file",
        &node.cert.display().to_string(),
        "--key-file",
        &node.key.display().to_string(),
        "--trusted-ca-file",
        &ca.cert_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let files = TlsFiles {
        cert: None,
        key: None,
        trusted_ca: Some(ca.cert_file.clone()),
    };
    config.tls = Some(poncho_tls::client_config(&files, "test").unwrap().0);
    config
}

/// One nemesis round: the leader is killed and restarted, or partitioned
/// off and healed.
fn kill_or_partition_leader(c: &mut FaultCluster, rng: &mut StdRng) {
    let Some((l, _)) = leader(c) else { return };
    if rng.gen_bool(0.5) {
        c.kill(l);
        sleep(ms(500));
        c.restart(l);
    } else {
        let rest = others(c, l);
        c.partition(&[vec![l], rest]);
        sleep(ms(700));
        c.heal();
    }
    sleep(ms(400));
}

/// The fault run over TLS: clients and peers (through the proxies) speak
/// TLS, leaders are killed and partitioned off, and the history must still
/// check as linearizable.
#[test]
fn leader_kill_and_partition_over_tls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let name = "leader_kill_and_partition_over_tls";
    let mut run = Run::start(name, over_tls(dir.path()));
    run.nemesis(NEMESIS, kill_or_partition_leader);
    run.finish(Expect {
        min_faults: 4,
        min_elections: 3,
        min_ok: 200,
    });
}

/// The same with auth on as well: every client logs in (as a user with
/// readwrite on the workload's keys) on each new connection before its
/// session and writes, and the harness as root.
#[test]
fn leader_kill_and_partition_over_tls_with_auth() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut config = over_tls(dir.path());
    config.auth = true;
    let mut run = Run::start("leader_kill_and_partition_over_tls_with_auth", config);
    run.nemesis(NEMESIS, kill_or_partition_leader);
    run.finish(Expect {
        min_faults: 4,
        min_elections: 3,
        min_ok: 200,
    });
    // Auth was on throughout: a connection that has not logged in is refused.
    let leader = run.cluster.wait_for_leader(Duration::from_secs(10));
    let mut anon = run.cluster.client(leader, Duration::from_secs(5)).unwrap();
    let reply = anon.get("k0").unwrap();
    assert_eq!(reply["payload"]["code"], "UNAUTHENTICATED", "{reply}");
}

#[test]
fn random_minority_kill_and_restart() {
    let _serial = serial();
    let mut run = Run::start("random_minority_kill_and_restart", Config::nodes(5));
    let mut round = 0;
    run.nemesis(NEMESIS, |c, rng| {
        // Every other round the leader is among the victims, so there are
        // elections; the others kill followers only, or whoever.
        let mut victims: Vec<u64> = c.ids();
        victims.shuffle(rng);
        victims.truncate(rng.gen_range(1..=2));
        round += 1;
        if round % 2 == 1 {
            let Some((l, _)) = leader(c) else { return };
            if !victims.contains(&l) {
                victims[0] = l;
            }
        }
        for &v in &victims {
            c.kill(v);
        }
        sleep(rand_ms(rng, 300, 900));
        for &v in &victims {
            c.restart(v);
        }
        sleep(rand_ms(rng, 200, 600));
    });
    run.finish(Expect {
        min_faults: 5,
        min_elections: 2,
        min_ok: 300,
    });
}

#[test]
fn leader_pause_and_resume() {
    let _serial = serial();
    let mut run = Run::start("leader_pause_and_resume", Config::nodes(3));
    run.nemesis(NEMESIS, |c, rng| {
        let Some((l, term)) = leader(c) else { return };
        // Paused until the others have elected a new leader, while the old
        // one still believes it leads; it wakes up a little later with
        // clients' requests in its socket buffers.
        c.pause(l);
        c.wait_for_new_leader(term, &others(c, l), ELECTION);
        sleep(rand_ms(rng, 0, 400));
        c.resume(l);
        sleep(ms(500));
    });
    run.finish(Expect {
        min_faults: 3,
        min_elections: 3,
        min_ok: 300,
    });
}

#[test]
fn minority_and_majority_partitions() {
    let _serial = serial();
    let mut run = Run::start("minority_and_majority_partitions", Config::nodes(5));
    let mut round = 0;
    run.nemesis(NEMESIS, |c, rng| {
        let mut ids = c.ids();
        ids.shuffle(rng);
        let mut minority: Vec<u64> = ids.drain(..rng.gen_range(1..=2)).collect();
        // Every other round the leader is on the minority side (it must
        // step down and the majority elect); otherwise the split is random.
        round += 1;
        if round % 2 == 1 {
            let Some((l, term)) = leader(c) else { return };
            if let Some(i) = ids.iter().position(|&x| x == l) {
                std::mem::swap(&mut minority[0], &mut ids[i]);
            }
            c.partition(&[minority, ids.clone()]);
            c.wait_for_new_leader(term, &ids, ELECTION);
            sleep(rand_ms(rng, 200, 600));
        } else {
            c.partition(&[minority, ids]);
            sleep(rand_ms(rng, 700, 1300));
        }
        c.heal_network();
        sleep(rand_ms(rng, 300, 600));
    });
    run.finish(Expect {
        min_faults: 3,
        min_elections: 2,
        min_ok: 300,
    });
}

#[test]
fn bridge_partition() {
    let _serial = serial();
    let mut run = Run::start("bridge_partition", Config::nodes(5));
    run.nemesis(NEMESIS, |c, rng| {
        // {a,b} and {d,e} cannot talk; m talks to everyone. Alone this is
        // stable (any leader keeps a majority), so the leader is killed
        // midway: the election then runs across the bridge.
        let mut ids = c.ids();
        ids.shuffle(rng);
        let (a, b, d, e) = (ids[0], ids[1], ids[3], ids[4]);
        for (x, y) in [(a, d), (a, e), (b, d), (b, e)] {
            c.cut(x, y);
        }
        c.faults += 1;
        sleep(rand_ms(rng, 400, 800));
        if let Some((l, term)) = leader(c) {
            c.kill(l);
            c.wait_for_new_leader(term, &others(c, l), ELECTION);
            sleep(rand_ms(rng, 200, 500));
            c.restart(l);
        }
        c.heal_network();
        sleep(ms(300));
    });
    run.finish(Expect {
        min_faults: 4,
        min_elections: 2,
        min_ok: 300,
    });
}

#[test]
fn partition_during_snapshot_install() {
    let _serial = serial();
    let mut config = Config::nodes(3);
    // Snapshots every 200 entries with a 20-entry tail: a node cut off for
    // a few hundred writes can only catch up by InstallSnapshot.
    config.server_args = ["--snapshot-entries", "200", "--snapshot-keep-tail", "20"]
        .map(String::from)
        .to_vec();
    let mut run = Run::start("partition_during_snapshot_install", config);
    // 320 KiB of other keys make every snapshot three 128 KiB chunks, so a
    // transfer takes several round trips over the slowed links below and
    // the second cut can land in the middle of it.
    let (leader_id, _) = run.cluster.leader().expect("a leader");
    let mut bulk = Client::connect(run.cluster.addrs()[leader_id as usize - 1]).unwrap();
    let value = "v".repeat(1024);
    let mut batch = String::new();
    for i in 0..320 {
        let set =
            json!({"msg_type": "SET", "payload": {"key": format!("bulk/{i}"), "value": value}});
        batch.push_str(&format!("{set}\n"));
    }
    bulk.send_raw(batch.as_bytes()).unwrap();
    for _ in 0..320 {
        let reply = bulk.read_reply().unwrap();
        assert_eq!(reply["msg_type"], "SET", "{reply}");
    }
    let mut cut_off = Vec::new();
    // Nodes cut off after a snapshot transfer to them began, before it was installed.
    let mut interrupted = Vec::new();
    run.nemesis(NEMESIS, |c, rng| {
        let mut ids = c.ids();
        ids.shuffle(rng);
        // Every other round the leader is cut off: it is deposed, and comes
        // back with entries the new leader may have overwritten.
        if cut_off.len() % 2 == 0 {
            let Some((l, _)) = leader(c) else { return };
            let i = ids.iter().position(|&x| x == l).expect("a member");
            ids.swap(0, i);
        }
        let x = ids[0];
        let last = c.status(x).and_then(|s| s["last_log_index"].as_u64());
        let Some(last) = last else { return };
        c.isolate(x);
        cut_off.push(x);
        // Enough commits that the others' logs no longer reach back to x's.
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            let commit = ids[1..]
                .iter()
                .filter_map(|&i| c.status(i))
                .filter_map(|s| s["commit_index"].as_u64())
                .max()
                .unwrap_or(0);
            if commit > last + 450 {
                break;
            }
            sleep(ms(50));
        }
        // Rejoin over slow links; once a leader starts sending x a snapshot
        // (three chunks, a round trip of 60 ms or more each), cut x off
        // again: in the middle of the transfer, or of the install.
        let to_x = format!("to node {x}");
        let count_sends = |c: &FaultCluster| -> usize {
            c.ids()
                .iter()
                .map(|&i| {
                    let log = c.log(i);
                    log.lines()
                        .filter(|l| {
                            l.contains("sending snapshot through index") && l.ends_with(&to_x)
                        })
                        .count()
                })
                .sum()
        };
        let installs = |c: &FaultCluster| c.log(x).matches("installed snapshot").count();
        let (sends_before, installs_before) = (count_sends(c), installs(c));
        c.heal_network();
        for &o in &ids[1..] {
            c.delay(o, x, ms(30));
            c.delay(x, o, ms(30));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while count_sends(c) == sends_before && Instant::now() < deadline {
            sleep(ms(5));
        }
        sleep(rand_ms(rng, 0, 60));
        c.isolate(x);
        if count_sends(c) > sends_before && installs(c) == installs_before {
            interrupted.push(x);
        }
        sleep(ms(300));
        c.heal_network();
        sleep(ms(700));
    });
    run.finish(Expect {
        min_faults: 3,
        min_elections: 1,
        min_ok: 300,
    });
    eprintln!(
        "partition_during_snapshot_install: cut off {cut_off:?}, mid-transfer {interrupted:?}"
    );
    assert!(
        !interrupted.is_empty(),
        "no cut landed between the start of a snapshot transfer and its install"
    );
    // "installed snapshot through index I from node L (B bytes in C chunks, R out of turn)"
    interrupted.sort();
    interrupted.dedup();
    let installs: Vec<String> = interrupted
        .iter()
        .flat_map(|&id| {
            run.cluster
                .log(id)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|line| Some(line.split_once("installed snapshot ")?.1.to_owned()))
        .collect();
    eprintln!("partition_during_snapshot_install: their installs: {installs:#?}");
    let chunks: Vec<u64> = installs
        .iter()
        .filter_map(|line| {
            let (_, rest) = line.split_once(" bytes in ")?;
            rest.split_once(" chunks")?.0.parse().ok()
        })
        .collect();
    assert!(
        chunks.iter().any(|&c| c >= 2),
        "nodes {interrupted:?} cut off mid-transfer never installed a multi-chunk snapshot: {installs:?}"
    );
}

#[test]
fn kill_9_of_every_node_then_restart() {
    let _serial = serial();
    let mut run = Run::start("kill_9_of_every_node_then_restart", Config::nodes(3));
    run.nemesis(NEMESIS, |c, rng| {
        sleep(rand_ms(rng, 300, 800));
        for id in c.ids() {
            c.kill(id);
        }
        sleep(rand_ms(rng, 100, 400));
        for id in c.ids() {
            c.restart(id);
        }
        sleep(ms(500));
    });
    run.finish(Expect {
        min_faults: 6,
        min_elections: 2,
        min_ok: 300,
    });
}

#[test]
fn one_way_loss_and_latency() {
    let _serial = serial();
    let mut run = Run::start("one_way_loss_and_latency", Config::nodes(5));
    let mut round = 0;
    run.nemesis(NEMESIS, |c, rng| {
        round += 1;
        if round % 2 == 1 {
            // The leader goes deaf: it still sends, but hears nobody. It
            // must step down (CheckQuorum) while the others elect.
            let Some((l, term)) = leader(c) else { return };
            for o in others(c, l) {
                c.block(o, l);
            }
            c.faults += 1;
            c.wait_for_new_leader(term, &others(c, l), ELECTION);
            sleep(rand_ms(rng, 200, 500));
        } else {
            // A flaky network: some links lose everything one way, the
            // rest are slow.
            for a in c.ids() {
                for b in others(c, a) {
                    if rng.gen_range(0..4) == 0 {
                        c.block(a, b);
                        c.faults += 1;
                    } else {
                        c.delay(a, b, rand_ms(rng, 0, 30));
                    }
                }
            }
            sleep(rand_ms(rng, 700, 1200));
        }
        c.heal_network();
        sleep(ms(400));
    });
    run.finish(Expect {
        min_faults: 4,
        min_elections: 2,
        min_ok: 300,
    });
}

/// Membership changes while nodes are killed and partitioned: each round
/// either adds a node (a spare started with --join, added as a learner,
/// promoted once caught up), removes a voter (the leader half the time), or
/// replaces one (removes it, then adds a spare), with a random node killed
/// or cut off meanwhile; the clients' history must stay linearizable.
#[test]
fn membership_changes_while_nodes_are_killed_and_partitioned() {
    let _serial = serial();
    let mut config = Config::nodes(3);
    config.spares = 4;
    let mut run = Run::start(
        "membership_changes_while_nodes_are_killed_and_partitioned",
        config,
    );
    let (mut added, mut removed) = (0, 0);
    let began = Instant::now();
    // At least 12 s, and on until enough changes went through (faults make
    // many fail), for at most 40 s.
    while began.elapsed() < Duration::from_secs(40)
        && (added < 2 || removed < 1 || began.elapsed() < Duration::from_secs(12))
    {
        run.nemesis(Duration::from_secs(3), |c, rng| {
            let Some((voters, _)) = c.members() else {
                sleep(ms(200));
                return;
            };
            // A fault on a voter that stays, held while the change is made.
            let victim = *voters.choose(rng).expect("voters");
            let partition = rng.gen_bool(0.5);
            if partition {
                c.isolate(victim);
            } else {
                c.kill(victim);
            }
            let leader = leader(c).map(|(l, _)| l);
            let grow = voters.len() < 4 && rng.gen_bool(0.5);
            if grow || voters.len() <= 3 {
                match c.add_spare(Duration::from_secs(4)) {
                    Ok(_) => added += 1,
                    Err(e) => eprintln!("membership nemesis: {e}"),
                }
            } else {
                let target = match leader {
                    Some(l) if rng.gen_bool(0.5) && l != victim => l,
                    _ => *voters
                        .iter()
                        .find(|&&v| v != victim)
                        .expect("another voter"),
                };
                if c.remove_member(target) {
                    removed += 1;
                } else {
                    eprintln!("membership nemesis: node {target} not removed");
                }
            }
            sleep(rand_ms(rng, 200, 500));
            c.heal();
            sleep(rand_ms(rng, 300, 600));
        });
    }
    eprintln!("membership nemesis: {added} nodes added, {removed} removed");
    assert!(
        added >= 2 && removed >= 1,
        "too few changes: {added} added, {removed} removed"
    );
    run.finish(Expect {
        min_faults: 4,
        min_elections: 1,
        min_ok: 200,
    });
}

/// Locks under the nemesis (issue 14): four clients take turns on one
/// `lock` (the client library's recipe: a lease, a key under the lock's
/// prefix, a watch on the key before it) while leaders are killed and
/// partitioned off. Each holder writes a shared key twice, at the start and
/// at the end of its turn, in transactions fenced by its lock key's
/// create_revision (the fencing token). In revision order, every turn's
/// writes must come together: no other holder's write between a holder's
/// two, and turns in the order of their tokens.
#[test]
fn lock_holders_never_overlap_under_leader_kills_and_partitions() {
    use poncho_client::recipes::{lock, LeaseSession};
    use poncho_client::ClusterClient;
    use poncho_protocol::{
        ClientRequest, Compare, CompareOp, CompareTarget, CompareValue, Txn, TxnOp, TxnReply,
        TxnRequest,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let _serial = serial();
    let name = "lock_holders_never_overlap";
    let mut run = Run::start(name, Config::nodes(3));
    let addrs: Vec<String> = run.cluster.addrs().iter().map(|a| a.to_string()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // (token, revision of a fenced write that succeeded, client)
    let writes = Arc::new(Mutex::new(Vec::<(u64, u64, u64)>::new()));
    let turns = Arc::new(Mutex::new(0u64));
    let contenders: Vec<_> = (1..=4u64)
        .map(|id| {
            let (addrs, stop, writes, turns) =
                (addrs.clone(), stop.clone(), writes.clone(), turns.clone());
            std::thread::spawn(move || {
                let mut client = ClusterClient::new(addrs, Duration::from_secs(3), false);
                let fenced = |client: &mut ClusterClient, key: &str, token: u64, what: &str| {
                    let txn = Txn {
                        compare: vec![Compare {
                            key: key.to_string(),
                            target: CompareTarget::CreateRevision,
                            op: CompareOp::Equal,
                            value: CompareValue::Number(token),
                        }],
                        success: vec![TxnOp::Put {
                            key: "resource".into(),
                            value: format!("c{id}:{token}:{what}"),
                            lease: None,
                        }],
                        failure: vec![],
                    };
                    let reply = client.write(|session| {
                        ClientRequest::Txn(TxnRequest {
                            txn: txn.clone(),
                            session,
                        })
                    });
                    if let Ok(reply) = reply {
                        if let Ok(r) = serde_json::from_value::<TxnReply>(reply.envelope.payload) {
                            if r.succeeded {
                                let mut w = writes.lock().unwrap_or_else(|e| e.into_inner());
                                w.push((token, r.revision, id));
                            }
                        }
                    }
                };
                while !stop.load(Ordering::SeqCst) {
                    let Ok(session) = LeaseSession::grant(&mut client, Duration::from_secs(3))
                    else {
                        sleep(ms(100));
                        continue;
                    };
                    let deadline = Instant::now() + Duration::from_secs(5);
                    if let Ok(held) = lock(&mut client, &session, "jobs", Some(deadline)) {
                        let (key, token) = (held.key().to_string(), held.revision());
                        fenced(&mut client, &key, token, "start");
                        sleep(ms(50));
                        fenced(&mut client, &key, token, "end");
                        *turns.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        let _ = held.unlock(&mut client);
                    }
                    let _ = session.close();
                }
            })
        })
        .collect();
    run.nemesis(NEMESIS, kill_or_partition_leader);
    stop.store(true, Ordering::SeqCst);
    for c in contenders {
        c.join().expect("a contender");
    }
    run.finish(Expect {
        min_faults: 4,
        min_elections: 3,
        min_ok: 100,
    });
    let mut writes = writes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    writes.sort_by_key(|&(_, revision, _)| revision);
    let turns = *turns.lock().unwrap_or_else(|e| e.into_inner());
    let holders: std::collections::BTreeSet<u64> = writes.iter().map(|w| w.2).collect();
    eprintln!(
        "{name}: {turns} turns, {} fenced writes by {} clients",
        writes.len(),
        holders.len()
    );
    assert!(
        turns >= 5 && holders.len() >= 2,
        "too few turns to tell: {writes:?}"
    );
    // Turns in revision order: a token, once left, never comes back, and
    // tokens only grow.
    let mut done = std::collections::BTreeSet::new();
    for pair in writes.windows(2) {
        let ((a, ra, ca), (b, rb, cb)) = (pair[0], pair[1]);
        if a != b {
            assert!(
                b > a && done.insert(a),
                "holder c{cb} (token {b}) wrote at revision {rb} between or before the writes \
                 of holder c{ca} (token {a}, revision {ra}): {writes:?}"
            );
            assert!(
                !done.contains(&b),
                "token {b} wrote again after its turn: {writes:?}"
            );
        }
    }
}
