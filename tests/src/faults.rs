//! The fault-injection harness: real `poncho-server` processes with a
//! [`Proxy`] between every ordered pair of nodes, clients that record every
//! operation into a history, nemesis helpers (kill -9, SIGSTOP, restart,
//! partitions, latency), and the end of a run: heal, final reads, and the
//! linearizability check.
//!
//! A run that fails (a violation or any panic) keeps its directory: node
//! logs, data directories and `history.jsonl`, and prints where it is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::auth::{add_role, add_user, enable_auth, Login, StatusPoller};
use crate::linearizability::{check, Op, Operation, Outcome};
use crate::proxy::Proxy;
use crate::txn_check::{self, Cond, Step, TxnOperation, TxnOutcome, TxnSpec};
use crate::watchers::{self, Watchers};
use crate::{launch_all, leader_of, wait_for_leader, Client, NodeProc};
use poncho_client::{in_session, registered_id, Connection, Reply, Session, Tls};
use poncho_protocol::{
    encode_request, AuthenticateRequest, CasReply, CasRequest, ClientRequest, Compare, CompareOp,
    CompareTarget, CompareValue, ErrorCode, GetReply, GetRequest, Password, RangeReply,
    RangeRequest, SessionFields, SetRequest, Txn, TxnOp, TxnOpReply, TxnReply, TxnRequest,
};
use poncho_tls::rustls::ClientConfig;

/// A client gives up on a reply after this long and records `Unknown`.
/// Longer than the servers' `--request-timeout-ms` (see [`SERVER_ARGS`]), so
/// a slow commit usually comes back as the server's own TIMEOUT.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Server flags every scenario uses: default election timing (300-600 ms,
/// fast but not flaky on a loaded 2-core machine) and a request timeout short
/// enough that clients stuck behind a dead leader move on.
pub const SERVER_ARGS: [&str; 2] = ["--request-timeout-ms", "1000"];

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A node of a [`FaultCluster`]: the shared launcher. Its `addr` is the
/// real address: clients connect there, never through a proxy.
pub type Node = NodeProc;

/// N nodes, each on its own loopback IP (127.0.0.10+id: connections to a
/// node come from 127.0.0.1, so a dead node's port can never be taken as a
/// connection's local port, nor can a proxy connect to itself), with a
/// proxy for every ordered pair.
pub struct FaultCluster {
    pub nodes: Vec<Node>,
    proxies: BTreeMap<(u64, u64), Proxy>,
    dir: Option<tempfile::TempDir>,
    /// Faults injected so far (kills, pauses, partitions, latency changes).
    pub faults: usize,
    /// What the harness's connections speak: TLS with this, or plain.
    tls: Option<Arc<ClientConfig>>,
    /// How the harness asks for STATUS (as root, once auth is on).
    poller: StatusPoller,
    /// Whom the clients log in as, once auth is on.
    login: Option<Login>,
    /// Nodes made ready to join (addresses, proxies, routes) and not yet
    /// started: the membership nemesis adds them one by one.
    spares: BTreeSet<u64>,
    /// Nodes removed from the cluster and stopped for good.
    retired: BTreeSet<u64>,
}

impl FaultCluster {
    pub fn start(n: usize, args: &[&str]) -> FaultCluster {
        FaultCluster::start_with_spares(n, 0, args)
    }

    /// `n` founding members, and `spares` more nodes (ids after theirs)
    /// that are not started: [`add_spare`](Self::add_spare) starts one with
    /// `--join` and adds it. Every node has a proxy to every other one,
    /// spares included.
    pub fn start_with_spares(n: usize, spares: usize, args: &[&str]) -> FaultCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids: Vec<u64> = (1..=(n + spares) as u64).collect();
        let addrs: Vec<SocketAddr> = ids
            .iter()
            .map(|&id| {
                let ip = [127, 0, 0, 10 + id as u8];
                // A port free on this IP now; only this node binds this IP.
                let port = TcpListener::bind(SocketAddr::from((ip, 0)))
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                SocketAddr::from((ip, port))
            })
            .collect();
        let mut proxies = BTreeMap::new();
        for &from in &ids {
            for (&to, &to_addr) in ids.iter().zip(&addrs) {
                if from != to {
                    let proxy = Proxy::start(to_addr).expect("start proxy");
                    proxies.insert((from, to), proxy);
                }
            }
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // Every node names every member by its own address (the founding
        // configuration is the same on all), and reaches peer j through
        // proxy (id->j): `--peer-route`.
        let peers: Vec<String> = ids
            .iter()
            .zip(&addrs)
            .take(n)
            .map(|(j, a)| format!("{j}={a}"))
            .collect();
        let mut nodes: Vec<Node> = ids
            .iter()
            .zip(&addrs)
            .map(|(&id, &addr)| {
                let routes: Vec<String> = ids
                    .iter()
                    .filter_map(|&j| proxies.get(&(id, j)).map(|p| format!("{j}={}", p.addr())))
                    .collect();
                let mut args = args.clone();
                args.extend(["--peer-route".to_string(), routes.join(",")]);
                if id as usize > n {
                    args.extend(["--join".to_string(), addrs[0].to_string()]);
                    return Node::new(id, addr, dir.path(), Vec::new(), &args);
                }
                Node::new(id, addr, dir.path(), peers.clone(), &args)
            })
            .collect();
        launch_all(&mut nodes[..n]);
        FaultCluster {
            nodes,
            proxies,
            dir: Some(dir),
            faults: 0,
            tls: None,
            poller: StatusPoller::default(),
            login: None,
            spares: (n as u64 + 1..=(n + spares) as u64).collect(),
            retired: BTreeSet::new(),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn log(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize].log()
    }

    /// Running and not paused: worth asking for STATUS.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].is_up()
    }

    // --- process faults ---

    /// `kill -9`. Counts as a fault.
    pub fn kill(&mut self, id: u64) {
        if self.node(id).kill() {
            self.faults += 1;
        }
    }

    /// Starts a killed node again (its data directory is kept); never a
    /// spare not yet added, nor a node removed and retired.
    pub fn restart(&mut self, id: u64) {
        if self.spares.contains(&id) || self.retired.contains(&id) {
            return;
        }
        if self.node(id).pid().is_none() {
            self.node(id).restart(false);
        }
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections) but answers nothing until [`resume`](Self::resume).
    pub fn pause(&mut self, id: u64) {
        if self.node(id).pause() {
            self.faults += 1;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        self.node(id).resume();
    }

    // --- network faults ---

    /// `to` stops hearing `from` (one-way loss).
    pub fn block(&mut self, from: u64, to: u64) {
        self.proxies[&(from, to)].set_blocked(true);
    }

    /// Neither hears the other.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.block(a, b);
        self.block(b, a);
    }

    /// Nodes in different sides cannot talk; one fault.
    pub fn partition(&mut self, sides: &[Vec<u64>]) {
        for (i, side) in sides.iter().enumerate() {
            for other in &sides[i + 1..] {
                for &a in side {
                    for &b in other {
                        self.cut(a, b);
                    }
                }
            }
        }
        self.faults += 1;
    }

    /// Cuts `id` from everyone.
    pub fn isolate(&mut self, id: u64) {
        let rest = self.ids().into_iter().filter(|&i| i != id).collect();
        self.partition(&[vec![id], rest]);
    }

    /// Adds latency to messages `from` -> `to`; one fault unless zero.
    pub fn delay(&mut self, from: u64, to: u64, latency: Duration) {
        self.proxies[&(from, to)].set_latency(latency);
        if !latency.is_zero() {
            self.faults += 1;
        }
    }

    /// Every link open, no added latency.
    pub fn heal_network(&mut self) {
        for p in self.proxies.values() {
            p.set_blocked(false);
            p.set_latency(Duration::ZERO);
        }
    }

    /// Heals everything: network, paused and killed nodes. A node that
    /// exited without being killed is a bug: fail.
    pub fn heal(&mut self) {
        self.heal_network();
        for id in self.ids() {
            self.resume(id);
            let log = self.log(id);
            if let Some(status) = self.node(id).exited() {
                panic!("node {id} exited on its own ({status}):\n{log}");
            }
            self.restart(id);
        }
    }

    // --- observation ---

    /// STATUS of a node that is up, with a short timeout.
    pub fn status(&self, id: u64) -> Option<Value> {
        if !self.is_up(id) {
            return None;
        }
        let addr = self.nodes[(id - 1) as usize].addr;
        let timeout = Duration::from_millis(300);
        self.poller.status(addr, || self.client(id, timeout))
    }

    /// A harness connection to node `id` (TLS if the nodes speak it), not
    /// logged in; `timeout` for the connect and each reply.
    pub fn client(&self, id: u64, timeout: Duration) -> std::io::Result<Client> {
        let addr = self.nodes[(id - 1) as usize].addr;
        match &self.tls {
            None => Client::connect_timeout(addr, timeout),
            Some(tls) => Client::connect_tls_timeout(addr, tls.clone(), timeout),
        }
    }

    /// Enables auth (at the leader, before the clients start): `root`, whom
    /// the harness asks STATUS as, and the clients' user `worker`, with
    /// readwrite on every key that starts with `k` (the workload's).
    fn set_up_auth(&mut self, leader: u64) {
        let mut admin = self
            .client(leader, Duration::from_secs(10))
            .expect("connect to the leader");
        let root = Login::new("root", "fault-root-pw");
        enable_auth(&mut admin, &root);
        add_role(&mut admin, "kv", &[("prefix", "k")], "readwrite");
        let worker = Login::new("worker", "fault-worker-pw");
        add_user(&mut admin, &worker, &["kv"]);
        self.poller.log_in_as(root);
        self.login = Some(worker);
    }

    /// The node claiming leadership in the highest term, and that term (a
    /// deposed leader on the wrong side of a partition may still claim an
    /// older one).
    pub fn leader(&self) -> Option<(u64, u64)> {
        self.leader_among(&self.ids())
    }

    fn leader_among(&self, ids: &[u64]) -> Option<(u64, u64)> {
        leader_of(ids.iter().filter_map(|&id| Some((id, self.status(id)?))))
    }

    pub fn wait_for_leader(&self, timeout: Duration) -> u64 {
        wait_for_leader(timeout, || self.leader(), String::new)
    }

    /// Waits until one of `among` leads in a term after `term`, so a
    /// nemesis holds a fault until the election it provokes is over (or
    /// `timeout`: under heavy load the election may take longer; the run's
    /// term check catches a nemesis that provoked too few).
    pub fn wait_for_new_leader(&self, term: u64, among: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.leader_among(among).is_some_and(|(_, t)| t > term) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        false
    }

    // --- membership ---

    /// `MEMBER` `payload` at the leader: its reply, or why there is none.
    pub fn member(&self, payload: Value) -> Result<Value, String> {
        let leader = self.leader().ok_or("no leader")?.0;
        let mut client = self
            .client(leader, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        client
            .request(&json!({"msg_type": "MEMBER", "payload": payload}))
            .map_err(|e| e.to_string())
    }

    /// The voters and learners the leader lists.
    pub fn members(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        let list = self.member(json!({"op": "list"})).ok()?;
        let members = list["payload"]["members"].as_array()?;
        let ids = |learner: bool| {
            members
                .iter()
                .filter(|m| m["learner"] == learner)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        };
        Some((ids(false), ids(true)))
    }

    /// Starts the next spare with `--join`, adds it as a learner and
    /// promotes it once it has caught up (retrying for up to `patience`).
    /// Its id once it votes; `Err` says how far it got (it may have been
    /// added as a learner: a later `members` tells).
    pub fn add_spare(&mut self, patience: Duration) -> Result<u64, String> {
        let id = *self.spares.iter().next().ok_or("no spare left")?;
        self.spares.remove(&id);
        self.node(id).launch(false);
        self.node(id).wait_listening();
        let addr = self.nodes[(id - 1) as usize].addr.to_string();
        let deadline = Instant::now() + patience;
        let mut added = false;
        while Instant::now() < deadline {
            let op = if added {
                json!({"op": "promote", "id": id})
            } else {
                json!({"op": "add", "id": id, "addr": addr, "learner": true})
            };
            match self.member(op) {
                Ok(r) if r["msg_type"] == "MEMBER" && added => return Ok(id),
                Ok(r) if r["msg_type"] == "MEMBER" => added = true,
                Ok(r) if r["payload"]["code"] == "MEMBERSHIP_REFUSED" && !added => {
                    added = true; // an earlier attempt's reply was lost
                }
                _ => sleep(Duration::from_millis(100)),
            }
        }
        Err(format!("node {id}: added {added}, not promoted in time"))
    }

    /// Removes member `id` and, once the removal is committed, stops it for
    /// good. Whether it was removed.
    pub fn remove_member(&mut self, id: u64) -> bool {
        let removed = self
            .member(json!({"op": "remove", "id": id}))
            .is_ok_and(|r| r["msg_type"] == "MEMBER");
        if removed {
            self.node(id).kill();
            self.retired.insert(id);
        }
        removed
    }

    /// The highest term any reachable node reports.
    pub fn max_term(&self) -> u64 {
        self.ids()
            .into_iter()
            .filter_map(|id| self.status(id))
            .filter_map(|s| s["term"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Keeps the directory (logs, data, history) past the cluster's drop.
    fn keep_dir(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    fn path(&self) -> PathBuf {
        self.dir.as_ref().expect("dir").path().to_path_buf()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill(); // SIGKILL ends a stopped process too
        }
        self.proxies.clear(); // joins every proxy thread
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

type History = Arc<Mutex<Vec<Operation>>>;
type TxnHistory = Arc<Mutex<Vec<TxnOperation>>>;

fn lock<T>(history: &Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    history.lock().unwrap_or_else(|e| e.into_inner())
}

/// The transactions' key space: one object for the multi-key checker,
/// apart from the registers' keys (`k0`, `k1`, ...), and within the `k`
/// prefix the clients' role may use while auth is on.
pub const TXN_PREFIX: &str = "kt/";
/// Keys of [`TXN_PREFIX`] the transactions touch.
const TXN_KEYS: usize = 3;

/// One client: one operation at a time, each recorded with its outcome.
/// It speaks through poncho-client's [`Connection`] and [`Session`], but
/// does not use its [`poncho_client::ClusterClient`]: that one retries, and
/// here a retry is a new operation of the history. So it follows the leader
/// itself, by id (`leader_addr` in errors is a proxy address here), and
/// moves to a random node after other errors, to spread its operations.
/// Writes go in a session it registers first, each with the next `seq`.
struct Worker {
    id: u64,
    addrs: Vec<SocketAddr>,
    target: usize,
    conn: Option<(usize, Connection)>,
    rng: StdRng,
    /// The latest value this client saw per key: CAS expects it, so CAS
    /// often succeeds.
    seen: HashMap<String, Option<String>>,
    next_value: u64,
    next_req: u64,
    /// The session writes carry, once registered, and its last seq.
    session: Session,
    tls: Option<Tls>,
    /// Sent as AUTHENTICATE first on every new connection, if set.
    login: Option<Login>,
    history: History,
    /// The transactions' history, and the keys of [`TXN_PREFIX`] as this
    /// client last read them (what its comparisons expect).
    txn_history: TxnHistory,
    txn_seen: BTreeMap<String, String>,
    epoch: Instant,
}

impl Worker {
    fn new(
        id: u64,
        cluster: &FaultCluster,
        (history, txn_history): (History, TxnHistory),
        epoch: Instant,
        seed: u64,
    ) -> Worker {
        let addrs = cluster.addrs();
        let mut rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Worker {
            id,
            tls: cluster.tls.clone().map(Tls::from_config),
            login: cluster.login.clone(),
            target: rng.gen_range(0..addrs.len()),
            addrs,
            conn: None,
            rng,
            seen: HashMap::new(),
            next_value: 0,
            next_req: 0,
            session: Session::default(),
            history,
            txn_history,
            txn_seen: BTreeMap::new(),
            epoch,
        }
    }

    /// A random transaction on [`TXN_PREFIX`]: comparisons of one or two
    /// keys against what this client last saw (so both branches run
    /// often), puts of unique values, now and then a delete of a key or of
    /// the whole prefix, and reads of the prefix; sometimes read-only
    /// (answered outside the log), sometimes a plain `RANGE`.
    fn random_txn(&mut self) -> (TxnSpec, bool) {
        let key = |w: &mut Worker| format!("{TXN_PREFIX}{}", w.rng.gen_range(0..TXN_KEYS));
        let read = Step::ReadPrefix(TXN_PREFIX.to_string());
        let kind = self.rng.gen_range(0..10);
        if kind == 0 {
            let spec = TxnSpec {
                success: vec![read],
                ..TxnSpec::default()
            };
            return (spec, true);
        }
        let mut compare = Vec::new();
        for _ in 0..self.rng.gen_range(1..=2) {
            let k = key(self);
            let cond = match self.txn_seen.get(&k) {
                Some(v) => Cond::Equals(v.clone()),
                None => Cond::Absent,
            };
            if !compare.iter().any(|(c, _)| *c == k) {
                compare.push((k, cond));
            }
        }
        if kind == 1 {
            let spec = TxnSpec {
                compare,
                success: vec![read.clone()],
                failure: vec![read],
            };
            return (spec, false);
        }
        let mut success = Vec::new();
        let mut written = BTreeSet::new();
        for _ in 0..self.rng.gen_range(1..=2) {
            let k = key(self);
            if written.insert(k.clone()) {
                let v = self.unique_value();
                success.push(Step::Put(k, v));
            }
        }
        match self.rng.gen_range(0..12) {
            0 => success = vec![Step::DeletePrefix(TXN_PREFIX.to_string())],
            1 | 2 => {
                let k = key(self);
                if written.insert(k.clone()) {
                    success.push(Step::Delete(k));
                }
            }
            _ => {}
        }
        success.push(read.clone());
        let failure = if self.rng.gen_bool(0.2) {
            let k = key(self);
            let v = self.unique_value();
            vec![Step::Put(k, v), read]
        } else {
            vec![read]
        };
        let spec = TxnSpec {
            compare,
            success,
            failure,
        };
        (spec, false)
    }

    /// Runs a transaction (or, `plain_range`, a `RANGE` of the prefix),
    /// records it, and learns the prefix's keys from its last read.
    fn invoke_txn(&mut self, spec: TxnSpec, plain_range: bool) -> TxnOutcome {
        let request = if plain_range {
            ClientRequest::Range(RangeRequest::prefix(TXN_PREFIX))
        } else {
            ClientRequest::Txn(TxnRequest {
                txn: wire_txn(&spec),
                session: SessionFields::default(),
            })
        };
        let start_us = self.now_us();
        let outcome = if spec.is_read_only() {
            self.call_txn(&request)
        } else if !self.ensure_session() {
            TxnOutcome::Failed
        } else {
            match self.session.next_fields() {
                Some(fields) => self.call_txn(&in_session(&request, fields)),
                None => TxnOutcome::Failed,
            }
        };
        let end_us = self.now_us();
        if let TxnOutcome::Done { reads, .. } = &outcome {
            if let Some(last) = reads.last() {
                self.txn_seen = last.iter().cloned().collect();
            }
        }
        lock(&self.txn_history).push(TxnOperation {
            client: self.id,
            txn: spec,
            start_us,
            end_us,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn call_txn(&mut self, request: &ClientRequest) -> TxnOutcome {
        let reply = match self.send(request) {
            Ok(reply) => reply,
            Err(Outcome::Unknown) => return TxnOutcome::Unknown,
            Err(_) => return TxnOutcome::Failed,
        };
        if reply.envelope.msg_type == "ERROR" {
            return match self.on_error(request, &reply) {
                Outcome::Unknown => TxnOutcome::Unknown,
                _ => TxnOutcome::Failed,
            };
        }
        assert_eq!(
            reply.envelope.msg_type,
            request.msg_type().name(),
            "reply to {request:?}: {}",
            reply.line
        );
        let pairs = |r: RangeReply| -> Vec<(String, String)> {
            assert!(!r.more, "a range of {TXN_KEYS} keys fits one reply");
            r.kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value.unwrap_or_default()))
                .collect()
        };
        match request {
            ClientRequest::Range(_) => TxnOutcome::Done {
                succeeded: true,
                reads: vec![pairs(payload::<RangeReply>(request, reply))],
            },
            _ => {
                let r: TxnReply = payload(request, reply);
                let reads = r
                    .responses
                    .into_iter()
                    .filter_map(|op| match op {
                        TxnOpReply::Range(range) => Some(pairs(range)),
                        TxnOpReply::Put {} | TxnOpReply::Delete { .. } => None,
                    })
                    .collect();
                TxnOutcome::Done {
                    succeeded: r.succeeded,
                    reads,
                }
            }
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn unique_value(&mut self) -> String {
        self.next_value += 1;
        format!("c{}-{}", self.id, self.next_value)
    }

    fn random_op(&mut self, key: &str) -> Op {
        match self.rng.gen_range(0..10) {
            0..=3 => Op::Read,
            4..=6 => Op::Write(self.unique_value()),
            _ => {
                let expected = self.seen.get(key).cloned().flatten();
                // Sometimes delete through CAS, so "absent" recurs.
                let new = (self.rng.gen_range(0..10) != 0).then(|| self.unique_value());
                Op::Cas { expected, new }
            }
        }
    }

    fn other_node(&mut self) {
        self.target = self.rng.gen_range(0..self.addrs.len());
    }

    /// Runs `op`, records it, and returns its outcome.
    fn invoke(&mut self, key: &str, op: Op) -> Outcome {
        let owned = key.to_string();
        let request = match &op {
            Op::Read => ClientRequest::Get(GetRequest {
                key: owned,
                stale: false,
            }),
            Op::Write(v) => ClientRequest::Set(SetRequest {
                key: owned,
                value: v.clone(),
                lease: None,
                session: SessionFields::default(),
            }),
            Op::Cas { expected, new } => ClientRequest::Cas(CasRequest {
                key: owned,
                expected: expected.clone(),
                value: new.clone(),
                session: SessionFields::default(),
            }),
        };
        let start_us = self.now_us();
        let outcome = match op {
            Op::Read => self.call(&request),
            // A write that could not get a session was never sent.
            _ if !self.ensure_session() => Outcome::Failed,
            _ => match self.session.next_fields() {
                Some(fields) => self.call(&in_session(&request, fields)),
                None => Outcome::Failed,
            },
        };
        let end_us = self.now_us();
        match (&op, &outcome) {
            (Op::Read, Outcome::Read(v)) => {
                self.seen.insert(key.to_string(), v.clone());
            }
            (Op::Write(v), Outcome::Written) => {
                self.seen.insert(key.to_string(), Some(v.clone()));
            }
            (Op::Cas { new, .. }, Outcome::Cas(true)) => {
                self.seen.insert(key.to_string(), new.clone());
            }
            _ => {}
        }
        lock(&self.history).push(Operation {
            client: self.id,
            key: key.to_string(),
            op,
            start_us,
            end_us,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Opens a session if there is none; whether there is one now. A
    /// registration that fails is not an operation of the history.
    fn ensure_session(&mut self) -> bool {
        if self.session.client_id().is_some() {
            return true;
        }
        let request = ClientRequest::RegisterClient;
        match self.send(&request) {
            Ok(reply) if reply.envelope.msg_type == "REGISTER_CLIENT" => {
                match registered_id(&reply) {
                    Ok(id) => self.session.open(id),
                    Err(e) => panic!("REGISTER_CLIENT reply: {e}"),
                }
                true
            }
            Ok(reply) => {
                self.on_error(&request, &reply);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends `request` to the target node: its reply, or the outcome when
    /// there is none.
    fn send(&mut self, request: &ClientRequest) -> Result<Reply, Outcome> {
        let node = self.target;
        if self.conn.as_ref().map(|(n, _)| *n) != Some(node) && !self.connect(node) {
            // Never sent: definitely not applied. The node is down (or
            // has not applied the clients' user yet); pause rather than
            // spin while the cluster notices.
            self.conn = None;
            self.other_node();
            sleep(Duration::from_millis(10));
            return Err(Outcome::Failed);
        }
        self.exchange(request).ok_or_else(|| {
            // Timed out or dropped: it may have been applied. The
            // connection is dropped so a late reply cannot be taken for the
            // next request's.
            self.conn = None;
            self.other_node();
            Outcome::Unknown
        })
    }

    /// Connects to `node` and, with auth on, logs in; whether both worked.
    fn connect(&mut self, node: usize) -> bool {
        let addr = self.addrs[node].to_string();
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        match Connection::connect(&addr, deadline, self.tls.as_ref()) {
            Ok(c) => self.conn = Some((node, c)),
            Err(_) => return false,
        }
        let Some(login) = &self.login else {
            return true;
        };
        let request = ClientRequest::Authenticate(AuthenticateRequest {
            user: login.user.clone(),
            password: Password(login.password.clone()),
        });
        self.exchange(&request)
            .is_some_and(|reply| reply.envelope.msg_type == "AUTHENTICATE")
    }

    /// Sends `request` on the open connection and reads its reply; None if
    /// it timed out or the connection dropped.
    fn exchange(&mut self, request: &ClientRequest) -> Option<Reply> {
        self.next_req += 1;
        let mut line = Vec::new();
        encode_request(&mut line, Some(self.next_req), request);
        let (_, conn) = self.conn.as_mut().expect("connected");
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        // The next reply, whatever its req_id: one to another request would
        // be a bug the assert below catches.
        let reply = conn
            .send(&line, deadline)
            .and_then(|()| conn.read_reply(deadline, None))
            .ok()?;
        assert_eq!(
            reply.envelope.req_id,
            Some(self.next_req),
            "reply to {request:?}: {}",
            reply.line
        );
        Some(reply)
    }

    /// What an ERROR reply says of the request, after following the leader.
    fn on_error(&mut self, request: &ClientRequest, reply: &Reply) -> Outcome {
        let Some(error) = reply.envelope.error() else {
            panic!("unexpected error to {request:?}: {}", reply.line)
        };
        match error.code {
            ErrorCode::NotLeader => {
                match error.leader_id {
                    Some(id) if (1..=self.addrs.len() as u64).contains(&id) => {
                        self.target = (id - 1) as usize
                    }
                    _ => self.other_node(),
                }
                Outcome::Failed
            }
            // A node removed from the cluster: ask another.
            ErrorCode::Removed => {
                self.other_node();
                Outcome::Failed
            }
            ErrorCode::NoLeader | ErrorCode::Overloaded => {
                self.other_node();
                sleep(Duration::from_millis(20)); // an election is under way
                Outcome::Failed
            }
            ErrorCode::BadRequest | ErrorCode::StaleSequence => Outcome::Failed,
            // Not applied, and since this client sends each seq once, no
            // other attempt of it exists: Failed, which the checker holds
            // the cluster to (the write must never be seen). The next write
            // opens a new session.
            ErrorCode::SessionExpired => {
                self.session.forget();
                Outcome::Failed
            }
            ErrorCode::Timeout | ErrorCode::LeadershipLost => {
                self.other_node();
                Outcome::Unknown
            }
            _ => panic!("unexpected error to {request:?}: {}", reply.line),
        }
    }

    fn call(&mut self, request: &ClientRequest) -> Outcome {
        let reply = match self.send(request) {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        if reply.envelope.msg_type == "ERROR" {
            return self.on_error(request, &reply);
        }
        assert_eq!(
            reply.envelope.msg_type,
            request.msg_type().name(),
            "reply to {request:?}: {}",
            reply.line
        );
        match request {
            ClientRequest::Get(_) => Outcome::Read(payload::<GetReply>(request, reply).value),
            ClientRequest::Cas(_) => {
                let r: CasReply = payload(request, reply);
                if !r.swapped {
                    // What the CAS compared against: worth expecting next.
                    self.seen.insert(r.key, r.current);
                }
                Outcome::Cas(r.swapped)
            }
            _ => Outcome::Written,
        }
    }

    /// A `RANGE` of [`TXN_PREFIX`] that succeeds, retried (each attempt
    /// recorded) until `deadline`.
    fn final_txn_read(&mut self, deadline: Instant) {
        let read = TxnSpec {
            success: vec![Step::ReadPrefix(TXN_PREFIX.to_string())],
            ..TxnSpec::default()
        };
        while !matches!(self.invoke_txn(read.clone(), true), TxnOutcome::Done { .. }) {
            assert!(
                Instant::now() < deadline,
                "client {}: no final read of {TXN_PREFIX}",
                self.id
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// A linearizable read that succeeds, retried (each attempt recorded)
    /// until `deadline`.
    fn final_read(&mut self, key: &str, deadline: Instant) {
        while !matches!(self.invoke(key, Op::Read), Outcome::Read(_)) {
            assert!(
                Instant::now() < deadline,
                "client {}: no final read of {key}",
                self.id
            );
            sleep(Duration::from_millis(20));
        }
    }
}

/// The request for a transaction of the checker's model.
fn wire_txn(spec: &TxnSpec) -> Txn {
    let op = |step: &Step| match step {
        Step::Put(k, v) => TxnOp::Put {
            key: k.clone(),
            value: v.clone(),
            lease: None,
        },
        Step::Delete(k) => TxnOp::Delete {
            key: k.clone(),
            range_end: None,
            prefix: false,
        },
        Step::DeletePrefix(p) => TxnOp::Delete {
            key: p.clone(),
            range_end: None,
            prefix: true,
        },
        Step::ReadPrefix(p) => TxnOp::Range(RangeRequest::prefix(p)),
    };
    Txn {
        compare: spec
            .compare
            .iter()
            .map(|(key, cond)| match cond {
                Cond::Absent => Compare {
                    key: key.clone(),
                    target: CompareTarget::Version,
                    op: CompareOp::Equal,
                    value: CompareValue::Number(0),
                },
                Cond::Equals(v) => Compare {
                    key: key.clone(),
                    target: CompareTarget::Value,
                    op: CompareOp::Equal,
                    value: CompareValue::Text(v.clone()),
                },
            })
            .collect(),
        success: spec.success.iter().map(op).collect(),
        failure: spec.failure.iter().map(op).collect(),
    }
}

/// A success reply's payload as `T`; anything else is a bug of the server.
fn payload<T: serde::de::DeserializeOwned>(request: &ClientRequest, reply: Reply) -> T {
    serde_json::from_value(reply.envelope.payload)
        .unwrap_or_else(|e| panic!("reply to {request:?}: {e}: {}", reply.line))
}

// ---------------------------------------------------------------------------
// A run: cluster + clients + nemesis + check
// ---------------------------------------------------------------------------

pub struct Config {
    pub nodes: usize,
    /// Extra server flags (besides [`SERVER_ARGS`]).
    pub server_args: Vec<String>,
    /// The clients' and the harness's TLS, for nodes started with TLS flags.
    pub tls: Option<Arc<ClientConfig>>,
    /// Auth on before the clients start, each client logging in on every
    /// new connection (see [`FaultCluster::set_up_auth`]).
    pub auth: bool,
    pub clients: usize,
    pub keys: usize,
    /// Each client pauses up to this long between operations: clients
    /// flat out would take CPU the servers' heartbeats need on 2 cores.
    pub think: Duration,
    /// Nodes ready to be added (see [`FaultCluster::start_with_spares`]).
    pub spares: usize,
}

impl Config {
    pub fn nodes(n: usize) -> Config {
        Config {
            nodes: n,
            server_args: Vec::new(),
            tls: None,
            auth: false,
            clients: 5,
            keys: 3,
            think: Duration::from_millis(4),
            spares: 0,
        }
    }
}

/// What a run must show so it cannot pass vacuously.
pub struct Expect {
    pub min_faults: usize,
    /// Terms the cluster moved through (each election bumps the term).
    pub min_elections: u64,
    /// Operations that completed successfully (reads, writes, CAS).
    pub min_ok: usize,
}

pub struct Summary {
    pub ops: usize,
    pub ok: usize,
    pub ok_writes: usize,
    pub failed: usize,
    pub unknown: usize,
    pub faults: usize,
    pub terms: (u64, u64),
    pub check_ms: u128,
    pub secs: f64,
}

pub struct Run {
    pub name: String,
    pub cluster: FaultCluster,
    pub rng: StdRng,
    seed: u64,
    keys: Vec<String>,
    clients: u64,
    history: History,
    txn_history: TxnHistory,
    /// One watcher per node following the workload's keys (prefix `k`).
    watchers: Option<Watchers>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    epoch: Instant,
    start_term: u64,
}

impl Run {
    /// Starts the cluster, waits for a leader, and starts the clients.
    pub fn start(name: &str, config: Config) -> Run {
        let mut args: Vec<&str> = SERVER_ARGS.to_vec();
        args.extend(config.server_args.iter().map(String::as_str));
        let mut cluster = FaultCluster::start_with_spares(config.nodes, config.spares, &args);
        cluster.tls = config.tls.clone();
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::thread_rng().gen());
        eprintln!("{name}: seed {seed} (FAULT_SEED={seed} repeats the nemesis choices)");
        let epoch = Instant::now();
        let mut run = Run {
            name: name.to_string(),
            rng: StdRng::seed_from_u64(seed),
            seed,
            keys: (0..config.keys).map(|k| format!("k{k}")).collect(),
            clients: config.clients as u64,
            history: Arc::new(Mutex::new(Vec::new())),
            txn_history: Arc::new(Mutex::new(Vec::new())),
            watchers: None,
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            epoch,
            start_term: 0,
            cluster,
        };
        let leader = run.cluster.wait_for_leader(Duration::from_secs(10));
        if config.auth {
            run.cluster.set_up_auth(leader);
        }
        run.start_term = run.cluster.max_term();
        run.watchers = Some(Watchers::start(
            run.cluster.addrs(),
            "k",
            run.cluster.tls.clone().map(Tls::from_config),
            run.cluster.login.clone(),
        ));
        for id in 1..=config.clients as u64 {
            let histories = (run.history.clone(), run.txn_history.clone());
            let mut w = Worker::new(id, &run.cluster, histories, epoch, seed);
            let (stop, keys, think) = (run.stop.clone(), run.keys.clone(), config.think);
            run.workers.push(thread::spawn(move || {
                while !stop.load(SeqCst) {
                    // A quarter of the operations are transactions.
                    if w.rng.gen_range(0..4) == 0 {
                        let (spec, plain_range) = w.random_txn();
                        w.invoke_txn(spec, plain_range);
                    } else {
                        let key = keys[w.rng.gen_range(0..keys.len())].clone();
                        let op = w.random_op(&key);
                        w.invoke(&key, op);
                    }
                    let pause = w.rng.gen_range(Duration::ZERO..=think);
                    sleep(pause);
                }
            }));
        }
        run
    }

    /// Calls `step` until `duration` has passed; each step is one round of
    /// faults (inject, wait, undo...), and should take a second or so.
    pub fn nemesis(
        &mut self,
        duration: Duration,
        mut step: impl FnMut(&mut FaultCluster, &mut StdRng),
    ) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            step(&mut self.cluster, &mut self.rng);
        }
    }

    fn stop_clients(&mut self) {
        self.stop.store(true, SeqCst);
        for w in self.workers.drain(..) {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Stops the clients, heals everything, has every client read every
    /// key, checks the history and `expect`, and prints a summary.
    pub fn finish(&mut self, expect: Expect) -> Summary {
        let began = Instant::now();
        self.stop_clients();
        self.cluster.heal();
        self.cluster.wait_for_leader(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(20);
        // Each client's final reads come after its last operation ended.
        for id in 1..=self.clients {
            let histories = (self.history.clone(), self.txn_history.clone());
            let mut w = Worker::new(id, &self.cluster, histories, self.epoch, self.seed);
            for key in self.keys.clone() {
                w.final_read(&key, deadline);
            }
            w.final_txn_read(deadline);
        }
        let end_term = self.cluster.max_term();
        let history = lock(&self.history).clone();
        let txns = lock(&self.txn_history).clone();
        let checked = Instant::now();
        if let Err(v) = check(&history) {
            panic!("{}: not linearizable: {v}", self.name);
        }
        if let Err(v) = txn_check::check(&txns) {
            panic!("{}: transactions not linearizable: {v}", self.name);
        }
        let (watched, resumes) = self.check_watchers();
        let txn_count = |f: fn(&TxnOperation) -> bool| txns.iter().filter(|o| f(o)).count();
        let txn_ok = txn_count(|o| matches!(o.outcome, TxnOutcome::Done { .. }));
        let txn_won = txn_count(|o| {
            matches!(
                o.outcome,
                TxnOutcome::Done {
                    succeeded: true,
                    ..
                }
            ) && !o.txn.is_read_only()
        });
        let txn_unknown = txn_count(|o| matches!(o.outcome, TxnOutcome::Unknown));
        let count = |f: fn(&Operation) -> bool| history.iter().filter(|o| f(o)).count();
        let summary = Summary {
            ops: history.len(),
            ok: count(|o| !matches!(o.outcome, Outcome::Failed | Outcome::Unknown)),
            ok_writes: count(|o| matches!(o.outcome, Outcome::Written | Outcome::Cas(true))),
            failed: count(|o| matches!(o.outcome, Outcome::Failed)),
            unknown: count(|o| matches!(o.outcome, Outcome::Unknown)),
            faults: self.cluster.faults,
            terms: (self.start_term, end_term),
            check_ms: checked.elapsed().as_millis(),
            secs: self.epoch.elapsed().as_secs_f64(),
        };
        eprintln!(
            "{}: {} ops: {} ok ({} writes/CAS applied), {} failed, {} unknown; \
             {} transactions: {txn_ok} ok ({txn_won} took the success branch and wrote), \
             {txn_unknown} unknown; watchers saw {watched} revisions, resumed {resumes} times; \
             {} faults; terms {} -> {}; check {} ms; {:.1} s (heal, final reads, check {:.1} s)",
            self.name,
            summary.ops,
            summary.ok,
            summary.ok_writes,
            summary.failed,
            summary.unknown,
            txns.len(),
            summary.faults,
            summary.terms.0,
            summary.terms.1,
            summary.check_ms,
            summary.secs,
            began.elapsed().as_secs_f64()
        );
        assert!(
            summary.faults >= expect.min_faults,
            "{}: only {} faults injected",
            self.name,
            summary.faults
        );
        assert!(
            end_term >= self.start_term + expect.min_elections,
            "{}: terms went {} -> {end_term}, want {} elections",
            self.name,
            self.start_term,
            expect.min_elections
        );
        assert!(
            summary.ok >= expect.min_ok && summary.ok_writes > 0,
            "{}: only {} successful operations ({} writes)",
            self.name,
            summary.ok,
            summary.ok_writes
        );
        assert!(
            txn_ok >= expect.min_ok / 10 && txn_won > 0,
            "{}: only {txn_ok} transactions completed ({txn_won} wrote)",
            self.name
        );
        summary
    }

    /// Stops the watchers once they have caught up with the last write and
    /// checks what they saw against each other and the final state (see
    /// `watchers.rs`): the revisions seen, and how often they resumed.
    fn check_watchers(&mut self) -> (usize, u64) {
        let Some(watchers) = self.watchers.take() else {
            return (0, 0);
        };
        let leader = self.cluster.wait_for_leader(Duration::from_secs(10));
        let mut client = Worker::new(
            0,
            &self.cluster,
            (self.history.clone(), self.txn_history.clone()),
            self.epoch,
            self.seed,
        );
        client.target = (leader - 1) as usize;
        // A linearizable read of the prefix after the last write (the final
        // reads are done): its revision and keys are where watchers end.
        let deadline = Instant::now() + Duration::from_secs(20);
        let request = ClientRequest::Range(RangeRequest::prefix("k"));
        let reply = loop {
            match client.send(&request) {
                Ok(r) if r.envelope.msg_type == "RANGE" => {
                    break payload::<RangeReply>(&request, r)
                }
                Ok(r) => {
                    client.on_error(&request, &r);
                }
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "{}: no final RANGE", self.name);
            sleep(Duration::from_millis(50));
        };
        assert!(!reply.more, "the workload's keys fit one page");
        let state: BTreeMap<String, String> = reply
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value.unwrap_or_default()))
            .collect();
        let records = watchers.finish(reply.revision, Duration::from_secs(20));
        let resumes = records.iter().map(|r| r.resumes).sum();
        match watchers::check(&records, reply.revision, &state) {
            Ok(seen) => (seen, resumes),
            Err(e) => panic!("{}: watchers: {e}", self.name),
        }
    }

    /// Whether a node logged `needle` (e.g. "installed snapshot through index").
    pub fn log_contains(&self, id: u64, needle: &str) -> bool {
        self.cluster.log(id).contains(needle)
    }

    /// The history as JSON Lines, into the run's directory.
    fn write_history(&self) -> std::io::Result<PathBuf> {
        let path = self.cluster.path().join("history.jsonl");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for op in lock(&self.history).iter() {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        let txn_path = self.cluster.path().join("history-txn.jsonl");
        let mut out = std::io::BufWriter::new(std::fs::File::create(txn_path)?);
        for op in lock(&self.txn_history).iter() {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(path)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // FAULT_KEEP=1 keeps a passing run's directory too, for a look.
        let failed = thread::panicking();
        if failed || std::env::var_os("FAULT_KEEP").is_some() {
            let written = self.write_history();
            if let Some(dir) = self.cluster.keep_dir() {
                eprintln!(
                    "{} {} (seed {}): node logs, data and history ({}) kept in {}",
                    self.name,
                    if failed { "FAILED" } else { "passed" },
                    self.seed,
                    match written {
                        Ok(_) => "history.jsonl, history-txn.jsonl".to_string(),
                        Err(e) => format!("history not written: {e}"),
                    },
                    dir.display()
                );
            }
        }
    }
}
