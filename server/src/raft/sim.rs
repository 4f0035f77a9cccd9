//! A deterministic cluster simulator for the Raft core.
//!
//! One seeded RNG drives everything: the network (delay, loss, duplication,
//! reordering, symmetric and one-way partitions), the disks (writes complete
//! after a random delay; a crash loses every write not yet complete), crashes
//! and restarts, membership changes (`membership_nemesis`: nodes added with
//! new ids, promoted, removed, replaced), and clients that propose and read
//! throughout. After every step the `Checker` asserts Raft's safety
//! properties (across configurations: see `Checker::check_decision`), so a
//! failing seed names the first step at which something went wrong, and
//! rerunning the seed replays it exactly.
//!
//! Time is counted in units; a node ticks every `TICK` units, each node at its
//! own phase so they do not move in lockstep.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use poncho_protocol::{
    Entry, EntryKind, InstallSnapshot, Member, MemberChange, Membership, NodeId, RaftMessage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ChangeError, Config, HardState, ProposeError, Raft, Ready, Restored, Role};

pub const TICK: u64 = 10;

/// See `Sim::filter`.
pub type MessageFilter = Box<dyn FnMut(NodeId, NodeId, &mut RaftMessage) -> bool>;

/// What a simulation found wrong. Carries the time and a description.
pub type Violation = String;

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Delivery delay in time units, uniform in [min, max].
    pub min_delay: u64,
    pub max_delay: u64,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// A disk write completes after a delay uniform in [0, max].
    pub max_persist_delay: u64,
    /// The chance that a message is held up far longer than `max_delay`:
    /// uniform in [max_delay, long_delay_max], which may span several
    /// elections, so replies to requests of older terms reach nodes that have
    /// moved on (and may lead again).
    pub long_delay_probability: f64,
    pub long_delay_max: u64,
}

impl NetConfig {
    pub fn reliable() -> NetConfig {
        NetConfig {
            min_delay: 1,
            max_delay: 5,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            max_persist_delay: 3,
            long_delay_probability: 0.0,
            long_delay_max: 0,
        }
    }

    pub fn unreliable() -> NetConfig {
        NetConfig {
            min_delay: 1,
            max_delay: 25,
            drop_probability: 0.1,
            duplicate_probability: 0.05,
            max_persist_delay: 8,
            long_delay_probability: 0.0,
            long_delay_max: 0,
        }
    }
}

/// A write handed to the simulated disk and the messages that wait for it.
struct PendingWrite {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    after: Vec<Held>,
    due: u64,
}

/// A message the core handed out, with the term its sender's log held at the
/// index an acknowledgement names, read when the core made the message: what
/// the disk must hold when the message leaves, even if by then the log in
/// memory has moved on (a later leader replaced the entry).
struct Held {
    out: super::Outbound,
    acked_term: Option<u64>,
}

/// A snapshot: the applied prefix of the state machine through `index`,
/// and the configuration then.
#[derive(Clone)]
struct SimSnapshot {
    index: u64,
    term: u64,
    applied: Vec<(u64, Arc<str>)>,
    membership: Membership,
}

impl SimSnapshot {
    /// The bytes a leader streams: the configuration's line, then one
    /// "term data" line per entry.
    fn encode(&self) -> String {
        let mut out = self.membership.encode();
        out.push('\n');
        for (t, d) in &self.applied {
            out.push_str(&format!("{t} {d}\n"));
        }
        out
    }

    fn decode(index: u64, term: u64, text: &str) -> Option<SimSnapshot> {
        let (membership, text) = text.split_once('\n')?;
        let membership = Membership::decode(membership).ok()?;
        let applied: Option<Vec<(u64, Arc<str>)>> = text
            .lines()
            .map(|l| {
                l.split_once(' ')
                    .and_then(|(t, d)| Some((t.parse().ok()?, Arc::from(d))))
            })
            .collect();
        let applied = applied?;
        (applied.len() as u64 == index).then_some(SimSnapshot {
            index,
            term,
            applied,
            membership,
        })
    }
}

/// Snapshotting in a simulated cluster, off unless set.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// Take a snapshot when this many entries were applied since the last.
    pub every_entries: u64,
    /// Entries kept in the log behind the snapshot.
    pub keep_tail: u64,
    /// Largest chunk a leader streams.
    pub max_chunk_bytes: usize,
}

struct Node {
    raft: Option<Raft>,
    durable_hard_state: HardState,
    /// Durable log entries; `durable_log[0]` is at index `durable_first`.
    durable_log: Vec<Entry>,
    durable_first: u64,
    durable_snapshot: Option<SimSnapshot>,
    /// A local snapshot being written, durable at the given time.
    snapshot_write: Option<(u64, SimSnapshot)>,
    /// A snapshot arriving from the leader: (leader, index, term, bytes).
    receiving: Option<(NodeId, u64, u64, String)>,
    /// In completion order; a crash discards them all.
    writes: VecDeque<PendingWrite>,
    /// The state machine: the applied entries, index i at position i - 1.
    applied: Vec<(u64, Arc<str>)>,
    tick_phase: u64,
    boots: u64,
    /// The configuration before its log's first entry, when it has no
    /// snapshot: the founders' for a founder, empty for a node added later.
    base: Membership,
    /// Stopped for good (removed from the cluster, or never added): it is
    /// never restarted.
    retired: bool,
    /// When the sim first saw this node's removal committed.
    removed_at: Option<u64>,
}

struct Client {
    target: NodeId,
    seq: u64,
    pending: Option<Command>,
}

struct Command {
    data: Arc<str>,
    /// (node, index, term, time) of the latest attempt.
    attempt: Option<(NodeId, u64, u64, u64)>,
}

#[derive(Default)]
pub struct Stats {
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub commands_acknowledged: u64,
    pub reads_served: u64,
    pub elections_won: u64,
    pub crashes: u64,
    /// Membership changes the core took (`propose_change` returned an
    /// index; not all of them commit), and those it refused, by reason.
    pub changes_accepted: u64,
    pub changes_refused: BTreeMap<&'static str, u64>,
    pub nodes_added: u64,
    pub nodes_retired: u64,
    /// Commit advances and elections checked against the configuration.
    pub decisions_checked: u64,
    /// Configurations committed, replacements completed (new node a voter,
    /// old one removed), and removals of the leader taken.
    pub configs_committed: u64,
    pub replacements: u64,
    pub leader_removals: u64,
}

pub struct Sim {
    pub seed: u64,
    rng: StdRng,
    pub now: u64,
    net: NetConfig,
    nodes: Vec<Node>,
    config_for: Box<dyn Fn(NodeId, Vec<NodeId>) -> Config>,
    in_flight: BTreeMap<(u64, u64), (NodeId, NodeId, RaftMessage)>,
    message_seq: u64,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    checker: Checker,
    clients: Vec<Client>,
    reads: HashMap<u64, (NodeId, u64)>,
    next_read_id: u64,
    pub served_reads: Vec<u64>,
    pub failed_reads: Vec<u64>,
    pub stats: Stats,
    /// Extra chance per tick, in percent, that `random_run` crashes or
    /// restarts a node, on top of its usual faults.
    pub churn_percent: u32,
    pub snapshots: Option<SnapshotPolicy>,
    /// Snapshot transfers in progress: (leader, follower) -> (snapshot bytes
    /// with its index and term). The leader's open file, in a real node.
    transfers: HashMap<(NodeId, NodeId), (u64, u64, Arc<str>)>,
    /// SIM_TRACE_NODE=n: print every message to or from node n and its disk
    /// writes. Read once: the send path is hot.
    trace_node: Option<NodeId>,
    /// Optional filter run on each message before it enters the network: it
    /// may change the message, or return false to drop it. Scripted
    /// scenarios use it.
    pub filter: Option<MessageFilter>,
    /// Every answer a voter gave: (voter, candidate, term asked for,
    /// pre-vote, granted). A candidate may count only answers from here.
    vote_answers: HashSet<(NodeId, NodeId, u64, bool, bool)>,
    /// Percent chance that a node crashes right after a received snapshot
    /// is durable and before its log is made to agree (recovery's case).
    pub install_crash_percent: u32,
    /// `random_run` moves leadership around on purpose: it cuts the newest
    /// leader off, heals, and transfers leadership, each often, and sends a
    /// read every tick. With long message delays this is where replies to
    /// requests of older terms meet a node that leads again.
    pub leader_churn: bool,
    /// `random_run` changes the membership: it adds learners (new ids),
    /// promotes them, removes members (the leader too) and replaces them,
    /// keeping 3 to `MAX_MEMBERS` members (see `churn_membership`).
    pub membership_nemesis: bool,
    /// A replacement under way: (old, new).
    replacing: Option<(NodeId, NodeId)>,
    /// The leader (and term) the nemesis last saw: a new one draws a
    /// change at once, before its term's first commit.
    nemesis_saw: Option<(NodeId, u64)>,
}

/// The most members (voters and learners) the membership nemesis grows a
/// cluster to, and the fewest voters it shrinks one to.
pub const MAX_MEMBERS: usize = 7;
pub const MIN_VOTERS: usize = 3;
/// The most nodes a run may create (founders and added ones, removed ones
/// included): what bounds a run's memory.
pub const MAX_NODES: usize = 24;
/// How long a removed node keeps running once its removal is committed,
/// before the sim stops it for good.
pub const REMOVED_LINGER_TICKS: u64 = 40;

impl Node {
    fn new(tick_phase: u64, base: Membership) -> Node {
        Node {
            raft: None,
            durable_hard_state: HardState::default(),
            durable_log: Vec::new(),
            durable_first: 1,
            durable_snapshot: None,
            snapshot_write: None,
            receiving: None,
            writes: VecDeque::new(),
            applied: Vec::new(),
            tick_phase,
            boots: 0,
            base,
            retired: false,
            removed_at: None,
        }
    }
}

/// How the sim addresses node `id` in a configuration (as `voters_of`).
pub fn member(id: NodeId, learner: bool) -> Member {
    Member {
        id,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + id as u16)),
        peer_addr: None,
        learner,
    }
}

/// A node's state before an input, to tell which decisions the input made.
#[derive(Clone, Copy)]
struct Before {
    leader: bool,
    term: u64,
    commit: u64,
}

impl Sim {
    pub fn new(nodes: usize, seed: u64, net: NetConfig) -> Sim {
        Sim::with_config(nodes, seed, net, |id, _members| {
            let mut c = Config::new(id);
            c.heartbeat_interval_ticks = 2;
            c.election_timeout_ticks = 10;
            c
        })
    }

    pub fn with_config(
        count: usize,
        seed: u64,
        net: NetConfig,
        config_for: impl Fn(NodeId, Vec<NodeId>) -> Config + 'static,
    ) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let founders: Vec<NodeId> = (1..=count as NodeId).collect();
        let base = super::voters_of(&founders);
        let nodes = (0..count)
            .map(|_| Node::new(rng.gen_range(0..TICK), base.clone()))
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            net,
            nodes,
            config_for: Box::new(config_for),
            in_flight: BTreeMap::new(),
            message_seq: 0,
            cut: BTreeSet::new(),
            checker: Checker::new(base),
            clients: Vec::new(),
            reads: HashMap::new(),
            next_read_id: 1,
            served_reads: Vec::new(),
            failed_reads: Vec::new(),
            stats: Stats::default(),
            churn_percent: 0,
            snapshots: None,
            transfers: HashMap::new(),
            trace_node: std::env::var("SIM_TRACE_NODE")
                .ok()
                .and_then(|v| v.parse().ok()),
            filter: None,
            vote_answers: HashSet::new(),
            install_crash_percent: 0,
            leader_churn: false,
            membership_nemesis: false,
            replacing: None,
            nemesis_saw: None,
        };
        for id in sim.ids() {
            sim.start(id);
        }
        sim
    }

    pub fn ids(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as NodeId).collect()
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.nodes[(id - 1) as usize].raft.as_ref()
    }

    pub fn raft_mut(&mut self, id: NodeId) -> Option<&mut Raft> {
        self.node(id).raft.as_mut()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.raft(id).is_some()
    }

    fn start(&mut self, id: NodeId) {
        let members = self.ids();
        let config = (self.config_for)(id, members.clone());
        let raft_seed = self.rng.gen();
        let discarded = reconcile_durable(self.node(id));
        if let Err(e) = self.checker.check_truncation(&discarded) {
            panic!("{}", self.violation(format!("recovery of node {id}: {e}")));
        }
        let node = self.node(id);
        node.boots += 1;
        let (snap_index, snap_term) = node
            .durable_snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.index, s.term));
        let base = node
            .durable_snapshot
            .as_ref()
            .map_or_else(|| node.base.clone(), |s| s.membership.clone());
        node.applied = node
            .durable_snapshot
            .as_ref()
            .map_or_else(Vec::new, |s| s.applied.clone());
        let entries: Vec<Entry> = node
            .durable_log
            .iter()
            .filter(|e| e.index > snap_index)
            .cloned()
            .collect();
        let raft = Raft::with_snapshot(
            config,
            node.durable_hard_state,
            (snap_index, snap_term),
            base,
            entries,
            raft_seed,
        )
        .expect("simulator config is valid");
        node.raft = Some(raft);
    }

    /// Crashes `id`: it loses its memory and every write not yet durable.
    /// Messages it already sent stay in the network.
    pub fn crash(&mut self, id: NodeId) {
        self.power_off(id);
        self.stats.crashes += 1;
    }

    fn power_off(&mut self, id: NodeId) {
        let node = self.node(id);
        node.raft = None;
        node.writes.clear();
        node.snapshot_write = None;
        node.receiving = None;
    }

    /// Founds the cluster as a real one is founded: each founder's log
    /// starts with the founders' configuration as its first entry
    /// (`bootstrap_entry`, index 1, term 0) and has none before it, so a
    /// node added later learns it from the log, as it learns every later
    /// one. Call before the first step.
    pub fn found_with_entry(&mut self) {
        let entry = super::bootstrap_entry(self.checker.latest_config());
        for id in self.ids() {
            let node = self.node(id);
            node.base = Membership::default();
            node.durable_log = vec![entry.clone()];
            node.durable_first = 1;
            node.raft = None;
            self.start(id);
        }
    }

    pub fn is_retired(&self, id: NodeId) -> bool {
        self.nodes[(id - 1) as usize].retired
    }

    /// Starts a node that is to join: a new id, an empty disk, and no
    /// configuration of its own (it learns the cluster's from the leader's
    /// log or snapshot once added). Returns its id.
    pub fn add_node(&mut self) -> NodeId {
        let phase = self.rng.gen_range(0..TICK);
        self.nodes.push(Node::new(phase, Membership::default()));
        self.stats.nodes_added += 1;
        let id = self.nodes.len() as NodeId;
        self.start(id);
        id
    }

    /// Stops `id` for good: it is never restarted.
    pub fn retire(&mut self, id: NodeId) {
        self.power_off(id);
        let node = self.node(id);
        if !node.retired {
            node.retired = true;
            self.stats.nodes_retired += 1;
        }
    }

    /// Proposes `change` at `leader`, counting what the core answers.
    pub fn propose_change(
        &mut self,
        leader: NodeId,
        change: &MemberChange,
        force: bool,
    ) -> Result<u64, ChangeError> {
        let result = match self.raft_mut(leader) {
            Some(r) => r.propose_change(change, force),
            None => Err(ChangeError::NotLeader { leader_id: None }),
        };
        match &result {
            Ok(_) => self.stats.changes_accepted += 1,
            Err(e) => {
                *self
                    .stats
                    .changes_refused
                    .entry(refusal_name(e))
                    .or_default() += 1
            }
        }
        result
    }

    /// The configuration at the highest index any leader has committed.
    pub fn committed_membership(&self) -> Arc<Membership> {
        Arc::clone(self.checker.latest_config())
    }

    /// The members of the committed configuration that still run or may
    /// be restarted: the nodes that must converge after healing.
    pub fn members(&self) -> Vec<NodeId> {
        let m = self.committed_membership();
        m.ids()
            .into_iter()
            .filter(|&id| !self.is_retired(id))
            .collect()
    }

    /// Replaces the durable state of `id` and restarts it from there.
    pub fn set_durable(&mut self, id: NodeId, hard_state: HardState, log: Vec<Entry>) {
        let node = self.node(id);
        node.raft = None;
        node.writes.clear();
        node.durable_hard_state = hard_state;
        node.durable_first = log.first().map_or(1, |e| e.index);
        node.durable_log = log;
        node.durable_snapshot = None;
        self.start(id);
    }

    pub fn restart(&mut self, id: NodeId) {
        if !self.is_up(id) && !self.is_retired(id) {
            self.start(id);
        }
    }

    /// Cuts every link between nodes in different groups, both ways.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a.iter() {
                        for &y in b.iter() {
                            self.cut.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.ids().into_iter().filter(|&x| x != id).collect();
        self.partition(&[&[id], &others]);
    }

    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn set_net(&mut self, net: NetConfig) {
        self.net = net;
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.raft(id).map(|r| (id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<(u64, u64), ProposeError> {
        match self.raft_mut(id) {
            Some(r) => r.propose(data.to_string()),
            None => Err(ProposeError::NotLeader { leader_id: None }),
        }
    }

    /// The data of the state machine of `id`, in order.
    pub fn applied(&self, id: NodeId) -> Vec<String> {
        self.nodes[(id - 1) as usize]
            .applied
            .iter()
            .map(|(_, d)| d.to_string())
            .collect()
    }

    pub fn durable_log(&self, id: NodeId) -> &[Entry] {
        &self.nodes[(id - 1) as usize].durable_log
    }

    /// Whether `id` holds `e` durably: in its log, or covered by its snapshot
    /// (whose contents were checked against the committed log when taken).
    fn holds_durably(&self, id: NodeId, index: u64, term: u64, data: &str) -> bool {
        let node = &self.nodes[(id - 1) as usize];
        if node
            .durable_snapshot
            .as_ref()
            .is_some_and(|s| s.index >= index)
        {
            return true;
        }
        let position = index.checked_sub(node.durable_first);
        position
            .and_then(|p| node.durable_log.get(p as usize))
            .is_some_and(|e| e.term == term && *e.data == *data)
    }

    /// Whether the command `data` is committed (seen applied on any node).
    pub fn is_committed(&self, data: &str) -> bool {
        self.checker
            .committed
            .iter()
            .any(|c| c.as_ref().is_some_and(|(_, d)| **d == *data))
    }

    // ------------------------------------------------------------- running

    pub fn run_ticks(&mut self, ticks: u64) -> Result<(), Violation> {
        for _ in 0..ticks * TICK {
            self.step()?;
        }
        Ok(())
    }

    /// Runs until `done` holds or `max_ticks` pass; fails if it never holds.
    pub fn run_until(
        &mut self,
        max_ticks: u64,
        what: &str,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Result<(), Violation> {
        for _ in 0..max_ticks * TICK {
            if done(self) {
                return Ok(());
            }
            self.step()?;
        }
        if done(self) {
            Ok(())
        } else {
            Err(self.violation(format!(
                "liveness: {what} did not happen within {max_ticks} ticks\n{}",
                self.describe()
            )))
        }
    }

    /// One line per node: its role, term, vote, log and commit.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            match self.raft(id) {
                None => out.push_str(&format!("  node {id}: down\n")),
                Some(r) => {
                    let s = r.status();
                    let followers: Vec<_> = s
                        .followers
                        .iter()
                        .map(|f| (f.id, f.match_index, f.next_index))
                        .collect();
                    let (learners, voters): (Vec<_>, Vec<_>) =
                        r.membership().members.iter().partition(|x| x.learner);
                    let ids = |ms: Vec<&Member>| ms.into_iter().map(|x| x.id).collect::<Vec<_>>();
                    let (voters, learners) = (ids(voters), ids(learners));
                    out.push_str(&format!(
                        "  node {id}: {} term {} vote {:?} leader {:?} last {} (term {}) \
                         commit {} persisted {} followers {followers:?} voters {voters:?} \
                         learners {learners:?} (config of index {})\n",
                        s.role,
                        s.term,
                        s.vote,
                        s.leader_id,
                        s.last_log_index,
                        s.last_log_term,
                        s.commit_index,
                        s.persisted_index,
                        r.membership_index(),
                    ));
                }
            }
        }
        out
    }

    pub fn wait_for_leader(&mut self, max_ticks: u64) -> Result<NodeId, Violation> {
        self.run_until(max_ticks, "leader election", |s| s.leader().is_some())?;
        Ok(self.leader().expect("checked"))
    }

    /// Proposes `data` at the leader and runs until it is committed. Like a
    /// client, proposes again whenever a different leader (or term) appears.
    pub fn commit(&mut self, data: &str, max_ticks: u64) -> Result<(), Violation> {
        let mut proposed_to = None;
        for _ in 0..max_ticks * TICK {
            if self.is_committed(data) {
                return Ok(());
            }
            if let Some(leader) = self.leader() {
                let term = self.raft(leader).map(|r| r.term());
                if proposed_to != Some((leader, term)) && self.propose(leader, data).is_ok() {
                    proposed_to = Some((leader, term));
                }
            }
            self.step()?;
        }
        Err(self.violation(format!(
            "liveness: commit of {data} did not happen within {max_ticks} ticks"
        )))
    }

    fn violation(&self, what: String) -> Violation {
        format!(
            "seed {} at time {} (tick {}): {what}",
            self.seed,
            self.now,
            self.now / TICK
        )
    }

    /// One unit of time: deliver due messages, complete due writes, tick the
    /// nodes whose tick falls now, run clients, then collect every node's
    /// Ready and check the invariants.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, msg) = entry.remove();
            self.deliver(from, to, msg)?;
        }
        for id in self.ids() {
            self.complete_writes(id, false)?;
            self.take_snapshot(id);
        }
        let now = self.now;
        for id in self.ids() {
            if now % TICK == self.node(id).tick_phase {
                let was = self.before(id);
                if let Some(r) = self.raft_mut(id) {
                    r.tick();
                }
                self.check_decisions(id, was)?;
            }
        }
        self.run_clients();
        for id in self.ids() {
            self.process_ready(id)?;
        }
        self.check_vote_tallies()?;
        self.check_config_agreement()?;
        let leaders: Vec<(NodeId, u64)> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                self.raft(id)
                    .filter(|r| r.role() == Role::Leader)
                    .map(|r| (id, r.term()))
            })
            .collect();
        self.checker
            .check_leaders(&leaders)
            .map_err(|e| self.violation(e))
    }

    /// Steps `to` with a message from `from`. A reply that answers a request
    /// of an older term than the one its receiver leads in is no answer in
    /// this term: it must leave the leader's view of the follower as it was.
    fn deliver(&mut self, from: NodeId, to: NodeId, msg: RaftMessage) -> Result<(), Violation> {
        let was = self.before(to);
        let removed = self.checker.latest_config().was_removed(from);
        let Some(raft) = self.raft_mut(to) else {
            return Ok(());
        };
        // Thesis 4.2.3: a node whose removal is committed, or a non-voter
        // asking for votes, must not raise the term of a member that knows
        // it for what it is: one whose log holds all the candidate's does
        // (a longer one may hold the change that made it a voter).
        let outsider = {
            let m = raft.membership();
            (removed && m.was_removed(from))
                || matches!(&msg, RaftMessage::RequestVote(v)
                    if m.contains(to)
                        && !m.is_voter(from)
                        && !raft.log().is_behind(v.last_log_index, v.last_log_term))
        };
        let disrupts = outsider && msg.term() > raft.term();
        let what = disrupts.then(|| format!("{msg:?}").chars().take(160).collect::<String>());
        let answers = match &msg {
            RaftMessage::AppendEntriesReply(m) => Some(m.request_term),
            RaftMessage::InstallSnapshotReply(m) => Some(m.request_term),
            _ => None,
        };
        let term = raft.term();
        let late =
            answers.is_some_and(|t| t < term) && msg.term() <= term && raft.role() == Role::Leader;
        let progress = |r: &Raft| r.status().followers.into_iter().find(|f| f.id == from);
        let before = late.then(|| progress(raft));
        raft.step(from, msg);
        if let Some(what) = what.filter(|_| raft.term() > term) {
            let raised = raft.term();
            return Err(self.violation(format!(
                "node {from}, removed or not a voter in node {to}'s configuration, raised its \
                 term from {term} to {raised} with {what}"
            )));
        }
        if let Some(before) = before {
            let after = progress(raft);
            if after != before {
                return Err(self.violation(format!(
                    "a reply from node {from} to a request of term {} moved leader {to}'s progress \
                     for it in term {term}: {before:?} -> {after:?}",
                    answers.unwrap_or(0)
                )));
            }
        }
        self.check_decisions(to, was)
    }

    fn before(&self, id: NodeId) -> Option<Before> {
        self.raft(id).map(|r| Before {
            leader: r.role() == Role::Leader,
            term: r.term(),
            commit: r.log().committed(),
        })
    }

    /// Checks what `id` decided in the input it just took (it was `was`
    /// before): an election won, or a commit index advanced as leader. Each
    /// is made by a quorum of the node's latest configuration, which must
    /// be the current one or one change from it (`Checker::check_decision`);
    /// a commit also needs the entry durable on a majority of those voters.
    fn check_decisions(&mut self, id: NodeId, was: Option<Before>) -> Result<(), Violation> {
        let (Some(was), Some(r)) = (was, self.raft(id)) else {
            return Ok(());
        };
        let (term, commit) = (r.term(), r.log().committed());
        let leads = r.role() == Role::Leader;
        let led = was.leader && was.term == term;
        let elected = leads && !led;
        let committed = (leads || led) && commit > was.commit;
        if !elected && !committed {
            return Ok(());
        }
        let voters = r.membership().voters();
        if elected {
            self.stats.decisions_checked += 1;
            if !voters.contains(&id) {
                return Err(self.violation(format!(
                    "node {id} won term {term} but is no voter of its configuration {voters:?}"
                )));
            }
            self.checker
                .check_decision("an election won", id, term, &voters)
                .map_err(|e| self.violation(e))?;
        }
        if committed {
            self.stats.decisions_checked += 1;
            let what = format!("a commit through {commit}");
            self.checker
                .check_decision(&what, id, term, &voters)
                .map_err(|e| self.violation(e))?;
            self.check_commit_durable(id, commit, &voters)?;
            let r = self.raft(id).expect("checked");
            let from = self.checker.committed_index.max(r.log().snapshot_index()) + 1;
            let newly: Vec<(u64, u64, Option<Arc<Membership>>)> = (from..=commit)
                .map(|i| {
                    let e = r.log().entry(i).expect("a leader holds what it commits");
                    let config = (e.kind == EntryKind::Config).then(|| r.membership_at(i));
                    (i, e.term, config)
                })
                .collect();
            self.checker.record_commits(newly);
        }
        Ok(())
    }

    /// A commit needs the entry durable on a majority of the voters that
    /// made it: memory may run ahead of disk on a follower, not that far.
    fn check_commit_durable(
        &self,
        id: NodeId,
        index: u64,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), Violation> {
        let Some(e) = self.raft(id).and_then(|r| r.log().entry(index)) else {
            return Ok(());
        };
        let copies = voters
            .iter()
            .filter(|&&n| self.holds_durably(n, e.index, e.term, &e.data))
            .count();
        if copies > voters.len() / 2 {
            return Ok(());
        }
        let disks: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "node {}: disk {}..{} snapshot {:?} pending writes {}",
                    i + 1,
                    n.durable_first,
                    n.durable_first + n.durable_log.len() as u64,
                    n.durable_snapshot.as_ref().map(|s| s.index),
                    n.writes.len()
                )
            })
            .collect();
        Err(self.violation(format!(
            "entry {} (term {}) committed by node {id} with only {copies} durable copies among \
             the voters {voters:?}\n{}\n{}",
            e.index,
            e.term,
            disks.join("\n"),
            self.describe()
        )))
    }

    /// Every node agrees on the configuration of each committed index: a
    /// node's configuration at its commit index is the cluster's there.
    fn check_config_agreement(&self) -> Result<(), Violation> {
        for id in self.ids() {
            let Some(r) = self.raft(id) else { continue };
            let index = r.log().committed().min(self.checker.committed_index);
            if index == 0 {
                continue; // no entry: a node that is to join knows none
            }
            let theirs = self.checker.config_at(index);
            let ours = r.membership_at(index);
            if *ours != **theirs {
                return Err(self.violation(format!(
                    "configuration agreement: node {id} has {ours:?} at committed index {index}, \
                     the cluster {theirs:?}"
                )));
            }
        }
        Ok(())
    }

    fn process_ready(&mut self, id: NodeId) -> Result<(), Violation> {
        let Some(raft) = self.raft_mut(id) else {
            return Ok(());
        };
        if !raft.has_ready() {
            return Ok(());
        }
        let mut rd: Ready = raft.ready();
        let hold = |out: super::Outbound| {
            let acked_term = match &out.message {
                RaftMessage::AppendEntriesReply(m) if m.success => raft.log().term(m.index),
                _ => None,
            };
            Held { out, acked_term }
        };
        let now: Vec<Held> = std::mem::take(&mut rd.messages)
            .into_iter()
            .map(hold)
            .collect();
        let after: Vec<Held> = std::mem::take(&mut rd.messages_after_persist)
            .into_iter()
            .map(hold)
            .collect();
        let prev_term_of_first = rd
            .entries
            .first()
            .map(|e| raft.log().term(e.index - 1).unwrap_or(0));
        if let Some(ss) = rd.soft_state {
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("t{} node {id}: {:?}", self.now / TICK, ss);
            }
            if ss.role == Role::Leader {
                self.stats.elections_won += 1;
                self.checker
                    .check_leader_completeness(self, id)
                    .map_err(|e| self.violation(e))?;
            }
        }
        if let Some(prev_term) = prev_term_of_first {
            self.checker
                .check_new_entries(prev_term, &rd.entries)
                .map_err(|e| self.violation(e))?;
        }
        let must_persist = rd.must_persist();
        for held in now {
            self.send(id, held)?;
        }
        let due = self.now + self.rng.gen_range(0..=self.net.max_persist_delay);
        let node = self.node(id);
        if must_persist || !node.writes.is_empty() {
            // Messages after persistence wait for this write and every earlier one.
            let due = node.writes.back().map_or(due, |w| w.due.max(due));
            node.writes.push_back(PendingWrite {
                hard_state: rd.hard_state,
                entries: rd.entries,
                after,
                due,
            });
        } else {
            for held in after {
                self.send(id, held)?;
            }
        }
        self.apply(id, rd.committed_entries)?;
        for to in rd.snapshots_to_send {
            self.start_snapshot_transfer(id, to);
        }
        for ack in rd.snapshot_acks {
            self.continue_snapshot_transfer(id, ack.to, ack.index, ack.next_offset);
        }
        for (leader, chunk) in rd.snapshot_chunks {
            self.receive_snapshot_chunk(id, leader, chunk)?;
        }
        for read in rd.reads {
            self.serve_read(id, read.id, read.index)?;
        }
        for read_id in rd.failed_reads {
            self.reads.remove(&read_id);
            self.failed_reads.push(read_id);
        }
        Ok(())
    }

    /// Local compaction: snapshot the applied state when enough entries were
    /// applied since the last snapshot; the write completes after a delay (a
    /// crash before then loses it), then the log is compacted behind it.
    fn take_snapshot(&mut self, id: NodeId) {
        let Some(policy) = self.snapshots else { return };
        let now = self.now;
        let delay = self.rng.gen_range(0..=self.net.max_persist_delay * 3);
        let node = self.node(id);
        if node.raft.is_none() {
            return;
        }
        if let Some((due, _)) = &node.snapshot_write {
            if *due > now {
                return;
            }
            let (_, snapshot) = node.snapshot_write.take().expect("checked");
            let index = snapshot.index;
            if node
                .durable_snapshot
                .as_ref()
                .is_some_and(|s| s.index >= index)
            {
                return; // a snapshot installed from the leader meanwhile is newer
            }
            node.durable_snapshot = Some(snapshot);
            let raft = node.raft.as_mut().expect("checked");
            let compacted = raft.compact(index.saturating_sub(policy.keep_tail));
            // The core may already be compacted further (an install not yet
            // durable): the disk keeps what its own snapshot does not cover,
            // and what writes still on their way to it will overwrite.
            let pending_from = node
                .writes
                .iter()
                .filter_map(|w| w.entries.first())
                .map(|e| e.index)
                .min();
            let limit = pending_from.map_or(u64::MAX, |i| i - 1);
            compact_durable(node, compacted.min(index).min(limit));
            self.stats.snapshots_taken += 1;
            return;
        }
        let applied = node.applied.len() as u64;
        let last = node.durable_snapshot.as_ref().map_or(0, |s| s.index);
        if applied >= last + policy.every_entries {
            let term = node.applied.last().map_or(0, |(t, _)| *t);
            let Some(raft) = node.raft.as_ref() else {
                return;
            };
            let membership = (*raft.membership_at(applied)).clone();
            let snapshot = SimSnapshot {
                index: applied,
                term,
                applied: node.applied.clone(),
                membership,
            };
            node.snapshot_write = Some((now + delay, snapshot));
        }
    }

    fn start_snapshot_transfer(&mut self, leader: NodeId, to: NodeId) {
        let Some(snapshot) = self.nodes[(leader - 1) as usize].durable_snapshot.as_ref() else {
            return; // cannot happen: the log is compacted only behind a snapshot
        };
        let (index, term) = (snapshot.index, snapshot.term);
        let bytes: Arc<str> = snapshot.encode().into();
        self.transfers.insert((leader, to), (index, term, bytes));
        self.continue_snapshot_transfer(leader, to, index, 0);
    }

    fn continue_snapshot_transfer(&mut self, leader: NodeId, to: NodeId, index: u64, offset: u64) {
        let Some(policy) = self.snapshots else { return };
        let Some((sent_index, term, bytes)) = self.transfers.get(&(leader, to)).cloned() else {
            return;
        };
        if sent_index != index || offset as usize > bytes.len() {
            return;
        }
        let chunk = self
            .rng
            .gen_range(policy.max_chunk_bytes / 2..=policy.max_chunk_bytes)
            .max(1);
        let end = (offset as usize + chunk).min(bytes.len());
        let data = bytes[offset as usize..end].to_string();
        let done = end == bytes.len();
        if let Some(raft) = self.raft_mut(leader) {
            raft.send_snapshot_chunk(to, index, term, offset, data, done);
        }
    }

    /// A follower's side of a transfer: collect chunks in memory (lost on a
    /// crash), acknowledge each, and install once complete.
    fn receive_snapshot_chunk(
        &mut self,
        id: NodeId,
        leader: NodeId,
        m: InstallSnapshot,
    ) -> Result<(), Violation> {
        let node = self.node(id);
        if m.offset == 0 {
            node.receiving = Some((
                leader,
                m.last_included_index,
                m.last_included_term,
                String::new(),
            ));
        }
        let expected = match &mut node.receiving {
            Some((l, index, _, buf)) if *l == leader && *index == m.last_included_index => {
                if m.offset == buf.len() as u64 {
                    buf.push_str(&m.data);
                }
                buf.len() as u64
            }
            _ => 0, // not the transfer we know: ask for it from the start
        };
        let complete = m.done && expected == m.offset + m.data.len() as u64;
        if !complete {
            if let Some(raft) = self.raft_mut(id) {
                raft.snapshot_chunk_received(leader, m.last_included_index, expected);
            }
            return Ok(());
        }
        let (_, index, term, bytes) = self.node(id).receiving.take().expect("complete transfer");
        let Some(snapshot) = SimSnapshot::decode(index, term, &bytes) else {
            return Err(self.violation(format!(
                "node {id} received a malformed snapshot through {index}"
            )));
        };
        for (i, (t, d)) in snapshot.applied.iter().enumerate() {
            let e = Entry {
                index: i as u64 + 1,
                term: *t,
                kind: poncho_protocol::EntryKind::Command,
                data: d.clone(),
            };
            self.checker
                .check_applied(&e)
                .map_err(|err| self.violation(format!("installed snapshot: {err}")))?;
        }
        // The contract: the snapshot is durable, then `restore_snapshot`. A
        // real driver writes it synchronously, behind every write it already
        // handed its disk, so those complete first.
        self.complete_writes(id, true)?;
        let node = self.node(id);
        if node
            .durable_snapshot
            .as_ref()
            .is_none_or(|s| s.index < index)
        {
            node.durable_snapshot = Some(snapshot.clone());
        }
        if self.rng.gen_range(0..100) < self.install_crash_percent {
            // Down before the log agrees with the snapshot: recovery's case.
            self.crash(id);
            return Ok(());
        }
        let Some(raft) = self.raft_mut(id) else {
            return Ok(());
        };
        let restored = raft.restore_snapshot(leader, index, term, snapshot.membership.clone());
        let node = self.node(id);
        match restored {
            Restored::Stale => return Ok(()),
            Restored::KeptLog => compact_durable(node, index),
            Restored::DiscardedLog => {
                let discarded = discard_durable_log(node, index);
                self.checker
                    .check_truncation(&discarded)
                    .map_err(|e| self.violation(format!("snapshot install on node {id}: {e}")))?;
            }
        }
        let node = self.node(id);
        node.applied = snapshot.applied;
        if let Some(raft) = self.raft_mut(id) {
            raft.advance_applied(index);
        }
        self.stats.snapshots_installed += 1;
        Ok(())
    }

    /// Completes the writes of `id` that are due (or, with `all`, every one
    /// of them, in order: a synchronous write must wait for them).
    fn complete_writes(&mut self, id: NodeId, all: bool) -> Result<(), Violation> {
        let trace = self.trace_node == Some(id);
        loop {
            let now = self.now;
            let node = self.node(id);
            if node.writes.front().is_none_or(|w| w.due > now && !all) {
                return Ok(());
            }
            let write = node.writes.pop_front().expect("checked");
            if let Some(hs) = write.hard_state {
                node.durable_hard_state = hs;
            }
            if let Some(first) = write.entries.first() {
                if node.durable_log.is_empty() {
                    // Everything before is covered by the snapshot (checked
                    // below: a write never lands past a gap).
                    node.durable_first = first.index;
                }
                let covered = node.durable_snapshot.as_ref().map_or(0, |s| s.index);
                assert!(
                    first.index
                        <= (node.durable_first + node.durable_log.len() as u64).max(covered + 1),
                    "node {id} writes from {} past the end of its disk",
                    first.index
                );
                assert!(
                    first.index >= node.durable_first,
                    "a write below the durable log: node {id} writes from {} but its disk starts at {} \
                     (snapshot {:?})",
                    first.index,
                    node.durable_first,
                    node.durable_snapshot.as_ref().map(|s| s.index)
                );
                let keep = (first.index - node.durable_first) as usize;
                let removed: Vec<Entry> = node
                    .durable_log
                    .drain(keep.min(node.durable_log.len())..)
                    .collect();
                node.durable_log.extend(write.entries.iter().cloned());
                if trace {
                    eprintln!(
                        "t{now} node {id} wrote {}..={} (removed {}), disk now {}..{}",
                        first.index,
                        write.entries.last().map_or(0, |e| e.index),
                        removed.len(),
                        node.durable_first,
                        node.durable_first + node.durable_log.len() as u64
                    );
                }
                self.checker
                    .check_truncation(&removed)
                    .map_err(|e| self.violation(e))?;
            }
            let last = write.entries.last().map(|e| (e.index, e.term));
            for held in write.after {
                self.send(id, held)?;
            }
            if let Some((index, term)) = last {
                let was = self.before(id);
                if let Some(raft) = self.raft_mut(id) {
                    raft.on_persisted(index, term);
                }
                self.check_decisions(id, was)?;
            }
        }
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) -> Result<(), Violation> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in entries {
            let node = self.node(id);
            assert_eq!(
                e.index,
                node.applied.len() as u64 + 1,
                "applied out of order"
            );
            node.applied.push((e.term, e.data.clone()));
            // First applied anywhere or not, it was checked when its
            // leader committed it (`check_commit_durable`).
            self.checker
                .check_applied(&e)
                .map_err(|err| self.violation(err))?;
            self.acknowledge(id, &e);
        }
        if let Some(r) = self.raft_mut(id) {
            r.advance_applied(last);
        }
        Ok(())
    }

    fn acknowledge(&mut self, id: NodeId, e: &Entry) {
        for c in &mut self.clients {
            let hit = c.pending.as_ref().is_some_and(|cmd| {
                cmd.data == e.data
                    && cmd
                        .attempt
                        .is_some_and(|(n, i, t, _)| n == id && i == e.index && t == e.term)
            });
            if hit {
                c.pending = None;
                self.checker.max_acknowledged = self.checker.max_acknowledged.max(e.index);
                self.stats.commands_acknowledged += 1;
            }
        }
    }

    /// A served read returns the state machine of `id` as it is now, through
    /// `applied`. Linearizable: it reflects every write acknowledged and
    /// every state any read returned before this read began.
    fn serve_read(&mut self, id: NodeId, read_id: u64, index: u64) -> Result<(), Violation> {
        let Some((node, must_see)) = self.reads.remove(&read_id) else {
            return Ok(());
        };
        assert_eq!(node, id, "read served by a node it was not sent to");
        let applied = self.nodes[(id - 1) as usize].applied.len() as u64;
        if index < must_see || applied < must_see || applied < index {
            return Err(self.violation(format!(
                "stale read on node {id}: read index {index}, state machine at {applied}, \
                 but index {must_see} was acknowledged or returned by a read before this \
                 read began\n{}",
                self.describe()
            )));
        }
        self.checker.max_returned = self.checker.max_returned.max(applied);
        self.stats.reads_served += 1;
        self.served_reads.push(read_id);
        Ok(())
    }

    /// A message leaves `from`: first check that its disk backs what the
    /// message promises, then hand it to the network.
    fn send(&mut self, from: NodeId, held: Held) -> Result<(), Violation> {
        let Held { out, acked_term } = held;
        let (to, mut msg) = (out.to, out.message);
        self.check_durable_at_send(from, to, &msg, acked_term)
            .map_err(|e| self.violation(e))?;
        if let RaftMessage::RequestVoteReply(m) = &msg {
            self.vote_answers
                .insert((from, to, m.request_term, m.pre_vote, m.vote_granted));
        }
        if let Some(who) = self.trace_node {
            if who == to || who == from {
                let m = match &msg {
                    RaftMessage::AppendEntries(a) => format!(
                        "AE prev {} ({}) n {} commit {}",
                        a.prev_log_index,
                        a.prev_log_term,
                        a.entries.len(),
                        a.leader_commit
                    ),
                    other => format!("{other:?}"),
                };
                eprintln!("t{} {from}->{to} {m}", self.now);
            }
        }
        if let Some(f) = self.filter.as_mut() {
            if !f(from, to, &mut msg) {
                return Ok(());
            }
        }
        if self.cut.contains(&(from, to)) || self.rng.gen_bool(self.net.drop_probability) {
            return Ok(());
        }
        let copies = if self.rng.gen_bool(self.net.duplicate_probability) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let long = self.net.long_delay_probability > 0.0
                && self.rng.gen_bool(self.net.long_delay_probability);
            let delay = if long {
                self.rng
                    .gen_range(self.net.max_delay..=self.net.long_delay_max.max(self.net.max_delay))
            } else {
                self.rng.gen_range(self.net.min_delay..=self.net.max_delay)
            };
            self.message_seq += 1;
            self.in_flight.insert(
                (self.now + delay, self.message_seq),
                (from, to, msg.clone()),
            );
        }
        Ok(())
    }

    /// What a node sends must be backed by its disk: every message promises
    /// the sender's term; a candidate's request and a granted vote promise
    /// the vote; an acknowledgement promises the entries it acknowledges.
    /// Checked as the message leaves, so anything sent before the write that
    /// backs it has completed is caught (a crash then would break the promise).
    fn check_durable_at_send(
        &self,
        from: NodeId,
        to: NodeId,
        msg: &RaftMessage,
        acked_term: Option<u64>,
    ) -> Result<(), String> {
        let node = &self.nodes[(from - 1) as usize];
        let disk = node.durable_hard_state;
        let promised_term = match msg {
            // A pre-vote asks about a term the sender is not in yet, and a
            // granted one names that term back; neither changes a term.
            RaftMessage::RequestVote(m) if m.pre_vote => m.term.saturating_sub(1),
            RaftMessage::RequestVoteReply(m) if m.pre_vote && m.vote_granted => 0,
            m => m.term(),
        };
        if disk.term < promised_term {
            return Err(format!(
                "node {from} sent {to} a message of term {promised_term} with term {} on disk: {msg:?}",
                disk.term
            ));
        }
        // A durable later term backs a vote too: the node can vote in no
        // earlier term again, even if this vote itself never reached the disk.
        let vote_backed = |term: u64, vote: NodeId| {
            disk.term > term
                || disk
                    == (HardState {
                        term,
                        vote: Some(vote),
                    })
        };
        match msg {
            RaftMessage::RequestVote(m) if !m.pre_vote && !vote_backed(m.term, from) => {
                return Err(format!(
                    "node {from} asked for votes in term {} before its vote for itself was durable (disk {disk:?})",
                    m.term
                ));
            }
            RaftMessage::RequestVoteReply(m)
                if !m.pre_vote && m.vote_granted && !vote_backed(m.term, to) =>
            {
                return Err(format!(
                    "node {from} granted node {to} its vote in term {} before the vote was durable (disk {disk:?})",
                    m.term
                ));
            }
            RaftMessage::AppendEntriesReply(m) if m.success => {
                let in_snapshot = node
                    .durable_snapshot
                    .as_ref()
                    .is_some_and(|s| s.index >= m.index);
                let on_disk = m
                    .index
                    .checked_sub(node.durable_first)
                    .and_then(|p| node.durable_log.get(p as usize))
                    .map(|e| e.term);
                let backed = m.index == 0
                    || in_snapshot
                    || on_disk.is_some_and(|t| acked_term.is_none_or(|a| a == t));
                if !backed {
                    return Err(format!(
                        "node {from} acknowledged entries through {} to node {to} before they were durable \
                         (disk {}..{}, term there {on_disk:?}, acknowledged {acked_term:?})",
                        m.index,
                        node.durable_first,
                        node.durable_first + node.durable_log.len() as u64
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A (pre-)candidate counts only answers voters gave to the election it
    /// is running: each one it counts must be among the answers sent, from
    /// a voter of its configuration (a learner's vote never counts).
    fn check_vote_tallies(&self) -> Result<(), Violation> {
        for id in self.ids() {
            let Some(r) = self.raft(id) else { continue };
            let (pre_vote, asked) = match r.role() {
                Role::PreCandidate => (true, r.term() + 1),
                Role::Candidate => (false, r.term()),
                _ => continue,
            };
            for (&voter, &granted) in r.votes_counted() {
                if !r.membership().is_voter(voter) {
                    return Err(self.violation(format!(
                        "node {id}, campaigning for term {asked} (pre-vote {pre_vote}), counts \
                         an answer from node {voter}, no voter of its configuration"
                    )));
                }
                if voter != id
                    && !self
                        .vote_answers
                        .contains(&(voter, id, asked, pre_vote, granted))
                {
                    return Err(self.violation(format!(
                        "node {id}, campaigning for term {asked} (pre-vote {pre_vote}), counts \
                         {} from node {voter}, which never gave that answer in this election",
                        if granted { "a grant" } else { "a rejection" }
                    )));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------- clients

    pub fn add_clients(&mut self, count: usize) {
        for _ in 0..count {
            let target = self.rng.gen_range(1..=self.nodes.len() as NodeId);
            self.clients.push(Client {
                target,
                seq: 0,
                pending: None,
            });
        }
    }

    /// Clients with nothing pending start a new command.
    pub fn start_commands(&mut self) {
        for (i, c) in self.clients.iter_mut().enumerate() {
            if c.pending.is_none() {
                c.seq += 1;
                c.pending = Some(Command {
                    data: format!("c{i}-{}", c.seq).into(),
                    attempt: None,
                });
            }
        }
    }

    pub fn all_commands_acknowledged(&self) -> bool {
        self.clients.iter().all(|c| c.pending.is_none())
    }

    fn run_clients(&mut self) {
        let timeout = 40 * TICK;
        let n = self.nodes.len() as NodeId;
        for i in 0..self.clients.len() {
            let now = self.now;
            let (target, data) = {
                let c = &self.clients[i];
                let Some(cmd) = c.pending.as_ref() else {
                    continue;
                };
                if cmd.attempt.is_some_and(|(_, _, _, at)| now < at + timeout) {
                    continue; // waiting for the outcome
                }
                (c.target, cmd.data.clone())
            };
            let result = self.propose(target, &data);
            let c = &mut self.clients[i];
            match result {
                Ok((index, term)) => {
                    if let Some(cmd) = c.pending.as_mut() {
                        cmd.attempt = Some((target, index, term, now));
                    }
                }
                Err(ProposeError::NotLeader { leader_id: Some(l) }) => c.target = l,
                Err(_) => c.target = self.rng.gen_range(1..=n),
            }
        }
    }

    /// Sends a linearizable read to a node that believes it leads. When
    /// several do, half the time to one that is not the newest: a deposed or
    /// partitioned leader that has not noticed is exactly the node that must
    /// not answer with stale data.
    pub fn issue_read(&mut self) {
        let mut leaders: Vec<(u64, NodeId)> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.raft(id).map(|r| (r.term(), r.role(), id)))
            .filter(|&(_, role, _)| role == Role::Leader)
            .map(|(term, _, id)| (term, id))
            .collect();
        leaders.sort_unstable();
        if leaders.len() > 1 && self.rng.gen_bool(if self.leader_churn { 0.9 } else { 0.5 }) {
            leaders.pop(); // the newest
        }
        if leaders.is_empty() {
            return;
        }
        let pick = leaders[self.rng.gen_range(0..leaders.len())].1;
        let _ = self.read_at(pick);
    }

    /// Sends a linearizable read to `node`; returns its id if accepted. Its
    /// fate shows in `served_reads` or `failed_reads`.
    pub fn read_at(&mut self, node: NodeId) -> Option<u64> {
        let id = self.next_read_id;
        self.next_read_id += 1;
        let must_see = self.checker.max_acknowledged.max(self.checker.max_returned);
        let accepted = self.raft_mut(node)?.read_index(id).is_ok();
        accepted.then(|| {
            self.reads.insert(id, (node, must_see));
            id
        })
    }

    // -------------------------------------------------------- random runs

    /// `leader_churn`'s faults, drawn once a tick.
    fn churn_leadership(&mut self) {
        let n = self.nodes.len() as NodeId;
        let roll = self.rng.gen_range(0..100);
        let Some(leader) = self.leader() else { return };
        match roll {
            0..=5 => self.isolate(leader),
            6..=8 => self.heal(),
            9..=11 => {
                let to = self.rng.gen_range(1..=n);
                let _ = self.raft_mut(leader).map(|r| r.transfer_leadership(to));
            }
            _ => {}
        }
    }

    /// A random run: faults for `fault_ticks`, then heal and require that a
    /// leader emerges and every client's command commits.
    pub fn random_run(&mut self, fault_ticks: u64) -> Result<(), Violation> {
        self.add_clients(5);
        for _ in 0..fault_ticks {
            self.start_commands();
            if self.rng.gen_bool(0.3) {
                self.issue_read();
            }
            if self.leader_churn {
                self.churn_leadership();
            }
            if self.membership_nemesis {
                self.churn_membership();
            }
            self.random_fault();
            self.run_ticks(1)?;
        }
        self.heal();
        self.install_crash_percent = 0;
        for id in self.ids() {
            self.restart(id);
        }
        self.set_net(NetConfig::reliable());
        self.wait_for_leader(60)?;
        self.run_until(200, "every client's command committing", |s| {
            s.all_commands_acknowledged()
        })?;
        if self.membership_nemesis {
            self.settle_membership()?;
        }
        self.run_until(300, "every node holding the committed log", |s| {
            s.checker.all_hold_committed(s)
        })
    }

    /// One tick's draw of crashes, restarts, partitions and transfers.
    fn random_fault(&mut self) {
        let n = self.nodes.len() as NodeId;
        let roll = self.rng.gen_range(0..100);
        let node = self.rng.gen_range(1..=n);
        if roll < self.churn_percent {
            if self.is_up(node) {
                self.crash(node);
            } else {
                self.restart(node);
            }
        }
        match roll {
            0..=1 => self.crash(node),
            2..=5 => self.restart(node),
            6 => {
                let mut ids = self.ids();
                let cut_at = self.rng.gen_range(1..ids.len());
                for k in (1..ids.len()).rev() {
                    ids.swap(k, self.rng.gen_range(0..=k));
                }
                let (a, b) = ids.split_at(cut_at);
                self.partition(&[a, b]);
            }
            7 => {
                let other = self.rng.gen_range(1..=n);
                if other != node {
                    self.cut_one_way(node, other);
                }
            }
            8..=9 => self.heal(),
            10 => {
                if let Some(l) = self.leader() {
                    self.crash(l);
                }
            }
            11 => {
                if let Some(l) = self.leader() {
                    let _ = self.raft_mut(l).map(|r| r.transfer_leadership(node));
                }
            }
            _ => {}
        }
        // Keep enough nodes up often enough that progress is possible.
        let alive: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|&i| !self.is_retired(i))
            .collect();
        let down = alive.iter().filter(|&&i| !self.is_up(i)).count();
        if alive.len() - down < alive.len() / 2 + 1 && self.rng.gen_bool(0.2) {
            let id = self.rng.gen_range(1..=n);
            self.restart(id);
        }
    }

    // ---------------------------------------------------- membership nemesis

    /// `membership_nemesis`'s changes, drawn once a tick: sometimes one
    /// random change at the leader, and at once after a new leader appears
    /// (half the time), before its term's first commit; a quarter of the
    /// time a second change right after the first, while it is in flight.
    /// Changes the core refuses are counted (`Stats::changes_refused`).
    fn churn_membership(&mut self) {
        self.retire_removed();
        let Some(leader) = self.leader() else { return };
        let term = self.raft(leader).map_or(0, |r| r.term());
        let new_leader = self.nemesis_saw != Some((leader, term));
        self.nemesis_saw = Some((leader, term));
        if !self.rng.gen_bool(if new_leader { 0.5 } else { 0.15 }) {
            return;
        }
        self.random_change(leader);
        if self.rng.gen_bool(0.25) {
            self.random_change(leader);
        }
    }

    /// Stops for good each node whose removal has been committed for
    /// `REMOVED_LINGER_TICKS` (until then it runs, and must disrupt no one).
    fn retire_removed(&mut self) {
        let committed = self.committed_membership();
        let now = self.now;
        for id in self.ids() {
            let node = self.node(id);
            if node.retired || !committed.was_removed(id) {
                continue;
            }
            match node.removed_at {
                None => node.removed_at = Some(now),
                Some(at) if now >= at + REMOVED_LINGER_TICKS * TICK => self.retire(id),
                Some(_) => {}
            }
        }
    }

    /// Proposes one random change at `leader`: the next step of a
    /// replacement under way, add a learner (or, now and then, a voter),
    /// promote a learner, remove a member (the leader too), update an
    /// address, or start a replacement; forced one time in ten. Keeps
    /// `MIN_VOTERS` voters and at most `MAX_MEMBERS` members.
    fn random_change(&mut self, leader: NodeId) {
        let Some(m) = self.raft(leader).map(|r| r.membership().clone()) else {
            return;
        };
        let voters: Vec<NodeId> = m.voters().into_iter().collect();
        let learners: Vec<NodeId> = m.learners().into_iter().collect();
        let room = m.members.len() < MAX_MEMBERS;
        let roll = self.rng.gen_range(0..100);
        let change = match roll {
            _ if roll < 40 && self.replacing.is_some() => self.replacement_step(&m),
            0..=39 if room => self.joiner(&m).map(|id| {
                let learner = self.rng.gen_bool(0.9);
                MemberChange::Add(member(id, learner))
            }),
            40..=59 => self.pick(&learners).map(MemberChange::Promote),
            60..=84 => {
                let mut removable = learners.clone();
                if voters.len() > MIN_VOTERS {
                    removable.extend(&voters);
                }
                self.pick(&removable).map(MemberChange::Remove)
            }
            85..=89 => self.pick(&voters).map(|id| MemberChange::Update {
                id,
                addr: std::net::SocketAddr::from(([127, 0, 0, 2], 10_000 + id as u16)),
                peer_addr: None,
            }),
            90..=99 if room && self.replacing.is_none() => {
                let old = self.pick(&voters);
                let new = self.joiner(&m);
                self.replacing = old.zip(new);
                self.replacement_step(&m)
            }
            _ => None,
        };
        if let Some(change) = change {
            let force = self.rng.gen_bool(0.1);
            let taken = self.propose_change(leader, &change, force).is_ok();
            if taken && change == MemberChange::Remove(leader) {
                self.stats.leader_removals += 1;
            }
        }
    }

    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        (!ids.is_empty()).then(|| ids[self.rng.gen_range(0..ids.len())])
    }

    /// A node to add under `m`: one started to join and not a member (an
    /// earlier add was refused or lost), else a new one, within `MAX_NODES`.
    fn joiner(&mut self, m: &Membership) -> Option<NodeId> {
        let waiting = self.ids().into_iter().find(|&id| {
            let node = &self.nodes[(id - 1) as usize];
            node.base.members.is_empty() && !node.retired && !m.contains(id) && !m.was_removed(id)
        });
        waiting.or_else(|| (self.nodes.len() < MAX_NODES).then(|| self.add_node()))
    }

    /// The next step of the replacement under way, judged by `m`: add the
    /// new node as a learner, promote it, remove the old one; none once
    /// done (or once the new one was removed meanwhile), which ends it.
    fn replacement_step(&mut self, m: &Membership) -> Option<MemberChange> {
        let (old, new) = self.replacing?;
        let step = if m.was_removed(new) || self.is_retired(new) {
            None
        } else if !m.contains(new) {
            Some(MemberChange::Add(member(new, true)))
        } else if m.is_learner(new) {
            Some(MemberChange::Promote(new))
        } else if m.contains(old) {
            Some(MemberChange::Remove(old))
        } else {
            self.stats.replacements += 1;
            None
        };
        if step.is_none() {
            self.replacing = None;
        }
        step
    }

    /// After healing, with the final configuration: its changes commit,
    /// nodes never added stop, a new command commits, and every member
    /// ends with the leader's configuration.
    fn settle_membership(&mut self) -> Result<(), Violation> {
        self.replacing = None;
        self.run_until(200, "the latest configuration committing", |s| {
            s.leader().and_then(|l| s.raft(l)).is_some_and(|r| {
                r.role() == Role::Leader && r.membership_index() <= r.log().committed()
            })
        })?;
        let final_config = self.committed_membership();
        for id in self.ids() {
            if !final_config.contains(id) && self.nodes[(id - 1) as usize].base.members.is_empty() {
                self.retire(id); // started to join, never added
            }
        }
        self.commit("after healing", 200)?;
        // Past the founders' (index 0, and the first entry's).
        self.stats.configs_committed =
            self.checker.configs.iter().filter(|c| c.0 > 1).count() as u64;
        self.run_until(300, "every member holding the final configuration", |s| {
            let Some(want) = s.leader().and_then(|l| s.raft(l)).map(|r| r.membership()) else {
                return false;
            };
            s.members()
                .into_iter()
                .all(|id| s.raft(id).is_some_and(|r| r.membership() == want))
        })
    }
}

/// A short name for each refusal, for `Stats::changes_refused`.
fn refusal_name(e: &ChangeError) -> &'static str {
    match e {
        ChangeError::NotLeader { .. } => "NotLeader",
        ChangeError::TransferInProgress => "TransferInProgress",
        ChangeError::ChangeInProgress { .. } => "ChangeInProgress",
        ChangeError::TermNotCommitted => "TermNotCommitted",
        ChangeError::Invalid(_) => "Invalid",
        ChangeError::LearnerBehind { .. } => "LearnerBehind",
        ChangeError::Unsafe { .. } => "Unsafe",
    }
}

fn discard_durable_log(node: &mut Node, index: u64) -> Vec<Entry> {
    let removed = node
        .durable_log
        .drain(..)
        .filter(|e| e.index > index)
        .collect();
    node.durable_first = index + 1;
    removed
}

/// Start-up, as the server's recovery does: a durable log that does not hold
/// the durable snapshot's last entry (a crash between installing a snapshot
/// and resetting the log) is discarded. Returns what was removed after the
/// snapshot.
fn reconcile_durable(node: &mut Node) -> Vec<Entry> {
    let Some((index, term)) = node.durable_snapshot.as_ref().map(|s| (s.index, s.term)) else {
        return Vec::new();
    };
    assert!(
        node.durable_log.is_empty() || node.durable_first <= index + 1,
        "the durable log starts at {} after the snapshot through {index}: entries lost",
        node.durable_first
    );
    let holds_end = node.durable_log.is_empty()
        || node.durable_first == index + 1
        || node
            .durable_log
            .iter()
            .any(|e| e.index == index && e.term == term);
    if holds_end {
        Vec::new()
    } else {
        discard_durable_log(node, index)
    }
}

/// Drops durable log entries through `index` (covered by a durable snapshot).
fn compact_durable(node: &mut Node, index: u64) {
    if index >= node.durable_first {
        let drop = ((index + 1 - node.durable_first) as usize).min(node.durable_log.len());
        node.durable_log.drain(..drop);
        node.durable_first = index + 1;
    }
}

/// The global view of what has happened, against which every step is checked.
struct Checker {
    /// term -> the node that won it.
    leaders: HashMap<u64, NodeId>,
    /// (index, term) -> (data, term of the previous entry): Log Matching.
    entries: HashMap<(u64, u64), (Arc<str>, u64)>,
    /// The committed log as seen by any node, index i at position i - 1.
    committed: Vec<Option<(u64, Arc<str>)>>,
    /// The highest index acknowledged to a client so far.
    max_acknowledged: u64,
    /// The furthest state (applied index) any served read has returned.
    max_returned: u64,
    /// The highest index any leader has committed.
    committed_index: u64,
    /// The committed configurations in index order: (index, term of its
    /// entry, configuration); the first is the founders' at index 0.
    configs: Vec<(u64, u64, Arc<Membership>)>,
    /// The committed log's terms, as runs: (first index, term).
    term_runs: Vec<(u64, u64)>,
}

impl Checker {
    fn new(founders: Membership) -> Checker {
        Checker {
            leaders: HashMap::new(),
            entries: HashMap::new(),
            committed: Vec::new(),
            max_acknowledged: 0,
            max_returned: 0,
            committed_index: 0,
            configs: vec![(0, 0, Arc::new(founders))],
            term_runs: Vec::new(),
        }
    }

    /// A leader committed these entries past `committed_index`: (index,
    /// term, configuration if a `CONFIG` entry), in order.
    fn record_commits(&mut self, entries: Vec<(u64, u64, Option<Arc<Membership>>)>) {
        for (index, term, config) in entries {
            debug_assert_eq!(index, self.committed_index + 1);
            self.committed_index = index;
            if self.term_runs.last().is_none_or(|&(_, t)| t != term) {
                self.term_runs.push((index, term));
            }
            if let Some(config) = config {
                self.configs.push((index, term, config));
            }
        }
    }

    fn latest_config(&self) -> &Arc<Membership> {
        &self.configs.last().expect("never empty").2
    }

    /// The committed configuration in effect at `index`.
    fn config_at(&self, index: u64) -> &Arc<Membership> {
        let after = self.configs.partition_point(|(i, _, _)| *i <= index);
        &self.configs[after.saturating_sub(1)].2
    }

    /// The configuration current for a decision of `term`, and the index
    /// it is judged at: the one in effect at the highest committed index
    /// whose entry is of `term` or earlier. A leader of an older term, cut
    /// off, may still commit with late acknowledgements of its term (Raft
    /// allows it: each acknowledging node held the entry before it voted
    /// in any later term) while later terms changed the configuration
    /// twice; nothing of those later terms can be known to it.
    fn current(&self, term: u64) -> (u64, &Arc<Membership>) {
        let through = self
            .term_runs
            .iter()
            .find(|&&(_, t)| t > term)
            .map_or(self.committed_index, |&(first, _)| first - 1);
        (through, self.config_at(through))
    }

    /// Configuration safety: a decision of `term` (an election won, a
    /// commit) is made by the voters of the current configuration or of
    /// one single-server change from it (the one change that may be in
    /// flight); any other voter set may not overlap every quorum of the
    /// current one.
    fn check_decision(
        &self,
        what: &str,
        id: NodeId,
        term: u64,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), String> {
        let (through, current) = self.current(term);
        let theirs = current.voters();
        if voters.symmetric_difference(&theirs).count() <= 1 {
            return Ok(());
        }
        Err(format!(
            "configuration safety: node {id} made a decision ({what}) in term {term} with the \
             voters {voters:?}, more than one change from {theirs:?}, those of the configuration \
             in effect at index {through} (the highest committed by term {term})"
        ))
    }

    /// Election Safety: at most one leader per term.
    fn check_leaders(&mut self, leaders: &[(NodeId, u64)]) -> Result<(), String> {
        for &(id, term) in leaders {
            let winner = *self.leaders.entry(term).or_insert(id);
            if winner != id {
                return Err(format!(
                    "election safety: two leaders in term {term}: {winner} and {id}"
                ));
            }
        }
        Ok(())
    }

    /// Log Matching, checked inductively: every entry ever written at
    /// (index, term) has the same data and the same previous term, so two
    /// logs that agree on an entry agree on everything before it.
    fn check_new_entries(
        &mut self,
        prev_term_of_first: u64,
        entries: &[Entry],
    ) -> Result<(), String> {
        let mut prev_term = prev_term_of_first;
        for e in entries {
            let seen = self
                .entries
                .entry((e.index, e.term))
                .or_insert_with(|| (e.data.clone(), prev_term));
            if seen.0 != e.data || seen.1 != prev_term {
                return Err(format!(
                    "log matching: entry ({}, term {}) is {:?} after term {prev_term} here, {:?} after term {} elsewhere",
                    e.index, e.term, e.data, seen.0, seen.1
                ));
            }
            prev_term = e.term;
        }
        Ok(())
    }

    /// State Machine Safety: every node applies the same entry at an index.
    fn check_applied(&mut self, e: &Entry) -> Result<(), String> {
        let slot = (e.index - 1) as usize;
        if self.committed.len() <= slot {
            self.committed.resize(slot + 1, None);
        }
        match &self.committed[slot] {
            None => {
                self.committed[slot] = Some((e.term, e.data.clone()));
                Ok(())
            }
            Some((t, d)) if *t == e.term && *d == e.data => Ok(()),
            Some((t, d)) => Err(format!(
                "state machine safety: index {} applied as ({}, {:?}) here but ({t}, {d:?}) elsewhere",
                e.index, e.term, e.data
            )),
        }
    }

    /// Leader Completeness: a new leader holds every committed entry.
    fn check_leader_completeness(&self, sim: &Sim, id: NodeId) -> Result<(), String> {
        let log = sim.raft(id).expect("a leader is up").log();
        // Entries through the snapshot were checked when applied.
        let covered = log.snapshot_index() as usize;
        for (i, c) in self.committed.iter().enumerate().skip(covered) {
            if let Some((term, _)) = c {
                let index = i as u64 + 1;
                if log.term(index) != Some(*term) {
                    return Err(format!(
                        "leader completeness: node {id} leads without committed entry {index} (term {term})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// No committed entry is ever removed from a disk.
    fn check_truncation(&self, removed: &[Entry]) -> Result<(), String> {
        for e in removed {
            if let Some(Some((term, data))) = self.committed.get((e.index - 1) as usize) {
                if *term == e.term && *data == e.data {
                    return Err(format!(
                        "committed entry {} (term {}) was truncated from a disk",
                        e.index, e.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether every node's durable log holds the whole committed log. A
    /// lagging node may hold stale entries at committed indexes for a while;
    /// after healing, each must catch up.
    fn all_hold_committed(&self, sim: &Sim) -> bool {
        sim.members().into_iter().all(|id| {
            self.committed.iter().enumerate().all(|(i, c)| match c {
                Some((term, data)) => {
                    let held = sim.holds_durably(id, i as u64 + 1, *term, data);
                    if !held && std::env::var("SIM_TRACE").is_ok() {
                        let n = &sim.nodes[(id - 1) as usize];
                        eprintln!(
                            "node {id} does not hold committed entry {} durably: log from {} ({} entries: {:?}), snapshot {:?}",
                            i + 1,
                            n.durable_first,
                            n.durable_log.len(),
                            n.durable_log.iter().map(|e| (e.index, e.term)).take(8).collect::<Vec<_>>(),
                            n.durable_snapshot.as_ref().map(|s| s.index)
                        );
                    }
                    held
                }
                None => true,
            })
        })
    }
}
