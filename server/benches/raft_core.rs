//! Throughput of the Raft core alone: a 3-node cluster in one thread, with
//! messages handed from node to node in memory and every write "durable" at
//! once. No sockets, no disk, no JSON: this measures the consensus logic and
//! its copying, the ceiling the real server can approach.
//!
//! Run: `cargo bench -p poncho-server --bench raft_core`
//! Options (environment): `BENCH_ENTRIES` (default 2,000,000), `BENCH_BATCH`
//! (proposals per loop iteration, default 256), `BENCH_PAYLOAD_BYTES` (100).

use std::collections::VecDeque;
use std::time::Instant;

use poncho_protocol::{Member, Membership, NodeId, RaftMessage};
use poncho_server::raft::{Config, HardState, Raft, Role};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Cluster {
    nodes: Vec<Raft>,
    inbox: VecDeque<(NodeId, NodeId, RaftMessage)>,
    applied_at_leader: u64,
    messages: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let members = [1, 2, 3];
        let membership = Membership::bootstrap(members.iter().map(|&id| Member {
            id,
            addr: ([127, 0, 0, 1], 8000 + id as u16).into(),
            peer_addr: None,
            learner: false,
        }));
        let nodes = members
            .iter()
            .map(|&id| {
                let mut config = Config::new(id);
                config.bootstrap_leader = id == 1;
                Raft::new(
                    config,
                    HardState::default(),
                    membership.clone(),
                    Vec::new(),
                    id,
                )
                .expect("valid config")
            })
            .collect();
        Cluster {
            nodes,
            inbox: VecDeque::new(),
            applied_at_leader: 0,
            messages: 0,
        }
    }

    /// Collects every node's Ready, "persists" it at once, and delivers all
    /// messages until the cluster is quiet.
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                let node = &mut self.nodes[i];
                if !node.has_ready() {
                    continue;
                }
                progressed = true;
                let from = node.id();
                let rd = node.ready();
                if let Some((index, term)) = rd.last_entry_id() {
                    node.on_persisted(index, term);
                }
                if let Some(last) = rd.committed_entries.last() {
                    node.advance_applied(last.index);
                    if from == 1 {
                        self.applied_at_leader += rd.committed_entries.len() as u64;
                    }
                }
                for out in rd.messages.into_iter().chain(rd.messages_after_persist) {
                    self.inbox.push_back((from, out.to, out.message));
                }
            }
            while let Some((from, to, msg)) = self.inbox.pop_front() {
                self.messages += 1;
                self.nodes[(to - 1) as usize].step(from, msg);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }
}

fn main() {
    let total = env_or("BENCH_ENTRIES", 2_000_000) as u64;
    let batch = env_or("BENCH_BATCH", 256);
    let payload = "x".repeat(env_or("BENCH_PAYLOAD_BYTES", 100));

    let mut cluster = Cluster::new();
    cluster.settle();
    assert_eq!(
        cluster.nodes[0].role(),
        Role::Leader,
        "node 1 leads after bootstrap"
    );
    let start_applied = cluster.applied_at_leader;

    let started = Instant::now();
    let mut proposed = 0u64;
    let mut ticks = 0u64;
    while proposed < total {
        for _ in 0..batch {
            cluster.nodes[0]
                .propose(payload.clone())
                .expect("leader accepts proposals");
        }
        proposed += batch as u64;
        cluster.settle();
        // A tick every iteration keeps heartbeats and CheckQuorum honest.
        ticks += 1;
        if ticks.is_multiple_of(4) {
            for n in &mut cluster.nodes {
                n.tick();
            }
        }
    }
    cluster.settle();
    let elapsed = started.elapsed();
    let committed = cluster.applied_at_leader - start_applied;
    assert!(
        committed >= proposed,
        "every proposal committed: {committed} of {proposed}"
    );
    let status = cluster.nodes[0].status();
    assert!(status
        .followers
        .iter()
        .all(|f| f.match_index == status.last_log_index));

    let per_second = committed as f64 / elapsed.as_secs_f64();
    println!(
        "raft core, 3 nodes in memory, {}-byte payloads, {batch} proposals per batch",
        payload.len()
    );
    println!("  committed entries:  {committed}");
    println!("  elapsed:            {:.3} s", elapsed.as_secs_f64());
    println!("  entries/s:          {per_second:.0}");
    println!(
        "  messages delivered: {} ({:.1} entries per message)",
        cluster.messages,
        committed as f64 / cluster.messages as f64
    );
    println!("  leader term:        {}", status.term);
}
