//! `poncho-bench`: a closed-loop load generator for a poncho cluster, or,
//! with `--target etcd`, for an etcd 3.4 cluster through its HTTP/JSON
//! gateway (see `etcd.rs`), so that both can be driven with one workload.
//!
//! One thread and one mio poll drive every connection, so the generator
//! itself costs little CPU (it reports how much it used). Each connection
//! keeps `--pipeline` requests outstanding; a request's latency runs from
//! the moment it is written until its reply is read. Replies come back in
//! request order per connection (poncho's protocol guarantees it, and so does
//! HTTP/1.1), so they are matched first-in, first-out.
//!
//! With `--cacert` (and `--cert`/`--key`), poncho connections speak TLS:
//! each is opened, its handshake done and its session registered blocking,
//! then driven nonblocking through [`MaybeTls`]; a plaintext run keeps plain
//! sockets (`MaybeTls::Plain`).
//!
//! With `--user NAME` (the password from `$PONCHO_PASSWORD`), every poncho
//! connection logs in (`AUTHENTICATE`) before it opens its session, and so
//! does each STATUS that finds the leader.

mod etcd;
mod idle;
mod report;
mod watch;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use poncho_client::{ClientError, Connection, Credentials, MaybeTls, OpenError, Tls, TlsFiles};
use poncho_protocol::{ErrorCode, LineBuffer, ReplyEnvelope};
use rand::rngs::StdRng as SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use etcd::HttpResponses;
use report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// poncho's JSON Lines protocol.
    Poncho,
    /// etcd 3.4's gRPC gateway (HTTP/1.1 + JSON) on its client URLs.
    Etcd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Poncho => "poncho",
            Target::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KeepaliveNodes {
    /// Every connection goes to the leader.
    Leader,
    /// Connections round-robin over all --cluster nodes (the leader first).
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "poncho-bench",
    version,
    about = "Load generator for a poncho cluster (or, with --target etcd, an etcd 3.4 cluster)"
)]
struct Args {
    /// What the cluster runs. etcd is driven through its gRPC gateway
    /// (HTTP/1.1 + JSON), which costs it transcoding work that its native
    /// gRPC clients do not pay.
    #[arg(long, value_enum, default_value_t = Target::Poncho)]
    target: Target,
    /// Cluster addresses (for etcd, its client URLs as HOST:PORT); the leader
    /// is found through STATUS (etcd: /v3/maintenance/status) and every
    /// connection goes to it.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8002")]
    cluster: Vec<SocketAddr>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds to run (after connecting).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many operations instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Operation mix as OP:WEIGHT,... with OP in set, get, cas, txn
    /// (2 compares and 2 puts on two distinct keys: run with --preload) and
    /// keepalive (needs --leases). Default set:1, or keepalive:1 with
    /// --leases.
    #[arg(long)]
    mix: Option<String>,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Requests outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Serve GETs from any node's local state (not linearizable; for etcd,
    /// a serializable range).
    #[arg(long)]
    stale: bool,
    /// Before the measured run, write each of the --keys keys once, in
    /// order (not measured), so that reads find every key.
    #[arg(long)]
    preload: bool,
    /// Before the run, open this many more connections to the server and
    /// hold them, unused, until it ends.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Of the --idle connections, this many send half a request line and
    /// stop there.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// poncho over TLS: trust node certificates this CA signed (PEM).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// With --key: a client certificate (PEM), for nodes that check them.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// poncho with auth enabled: every connection logs in as this user,
    /// with the password in $PONCHO_PASSWORD.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Before the run, grant this many leases (not measured) for the
    /// `keepalive` op to renew, at random.
    #[arg(long, default_value_t = 0)]
    leases: usize,
    /// The TTL of the --leases, in seconds.
    #[arg(long, default_value_t = 60)]
    lease_ttl: u64,
    /// Where keepalives go: every client connection to the leader, or the
    /// connections spread over all --cluster nodes (then the mix may only
    /// hold keepalive; the leases are granted at the leader).
    #[arg(long, value_enum, default_value_t = KeepaliveNodes::Leader)]
    keepalive_nodes: KeepaliveNodes,
    /// Watch fan-out: this many watches of --watch-prefix, created before
    /// the run, while the --clients write; values then start with their
    /// send time, and the summary gives events delivered per second and
    /// put-to-event latency.
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// The connections (poncho) or HTTP watch streams (etcd) that carry
    /// the --watchers, each N/S watches, spread over the --watch-nodes.
    /// Default: one watch per connection, up to 1,000 connections; at most
    /// 1,000 watches per connection.
    #[arg(long, value_name = "S")]
    watch_streams: Option<usize>,
    /// Nodes the watch streams go to, round-robin (default: every
    /// --cluster address; watches are served by any node).
    #[arg(long, value_delimiter = ',')]
    watch_nodes: Vec<SocketAddr>,
    /// The prefix watched (the bench's keys are key:NNNNNNNN).
    #[arg(long, default_value = "key:")]
    watch_prefix: String,
    /// After the writers are done, how long the watchers may go on reading
    /// the events still on their way (timed, and counted apart from the
    /// rate); it ends early once every write reached every watch, or after
    /// a second without events.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    watch_drain: f64,
    /// Threads reading the watch streams (each its own mio poll).
    #[arg(long, default_value_t = 1)]
    watch_threads: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Every SECS seconds, print the interval's throughput, p50 and p99 (all
    /// operations) and its phase, on stdout (with --json, one JSON object a
    /// line, before the summary's). Replaces the progress line.
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
    /// Phases of the run: the first line of FILE names the current one
    /// (read every 50 ms; while the file is missing or empty the phase stays
    /// as it was). The summary then gives each phase's throughput and
    /// latency; the phase `stop` ends the run. Write the file atomically
    /// (write another, then `mv` it over).
    #[arg(long, value_name = "FILE")]
    phase_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Set,
    Get,
    Cas,
    Txn,
    Keepalive,
    /// A lease grant, before the run (not in --mix).
    Grant,
}

const OPS: [Op; 6] = [Op::Set, Op::Get, Op::Cas, Op::Txn, Op::Keepalive, Op::Grant];

/// The operations --mix may name.
const MIX_OPS: [Op; 5] = [Op::Set, Op::Get, Op::Cas, Op::Txn, Op::Keepalive];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            Op::Cas => "cas",
            Op::Txn => "txn",
            Op::Keepalive => "keepalive",
            Op::Grant => "grant",
        }
    }
}

/// The --mix asked for: as given, or set:1 (keepalive:1 with --leases).
fn mix_spec(args: &Args) -> &str {
    match (&args.mix, args.leases) {
        (Some(mix), _) => mix,
        (None, 0) => "set:1",
        (None, _) => "keepalive:1",
    }
}

/// Checks that the mix, --leases, --keys and --keepalive-nodes fit.
fn check_mix(args: &Args, mix: &[(Op, u32)]) -> Result<(), String> {
    let has = |op: Op| mix.iter().any(|&(o, w)| o == op && w > 0);
    if has(Op::Keepalive) && args.leases == 0 {
        return Err("--mix keepalive needs --leases".into());
    }
    if has(Op::Txn) && args.keys < 2 {
        return Err("--mix txn needs --keys 2 or more (two distinct keys)".into());
    }
    if args.keepalive_nodes == KeepaliveNodes::All
        && mix.iter().any(|&(o, w)| o != Op::Keepalive && w > 0)
    {
        return Err(
            "--keepalive-nodes all sends to followers: the --mix may only hold keepalive".into(),
        );
    }
    if args.leases > 0 && args.lease_ttl < 2 {
        return Err("--lease-ttl: at least 2 seconds".into());
    }
    Ok(())
}

fn parse_mix(spec: &str) -> Result<Vec<(Op, u32)>, String> {
    let mut mix = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once(':').unwrap_or((part, "1"));
        let op = MIX_OPS
            .iter()
            .copied()
            .find(|o| o.name() == name)
            .ok_or_else(|| format!("unknown op {name:?} in --mix"))?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| format!("bad weight {weight:?} in --mix"))?;
        mix.push((op, weight));
    }
    if mix.iter().map(|m| m.1).sum::<u32>() == 0 {
        return Err("--mix needs a positive weight".into());
    }
    Ok(mix)
}

/// How replies are framed on a connection.
enum Input {
    /// poncho: one JSON object per line.
    Lines(LineBuffer),
    /// etcd's gateway: HTTP/1.1 responses.
    Http(HttpResponses),
}

struct Conn {
    stream: MaybeTls<TcpStream>,
    out: Vec<u8>,
    written: usize,
    input: Input,
    /// When each request was sent, and its operation (`None`: a
    /// REGISTER_CLIENT, not measured).
    inflight: VecDeque<(Instant, Option<Op>)>,
    /// poncho: the session this connection's writes carry and its last
    /// seq; `None` while a new one is being registered.
    session: Option<u64>,
    seq: u64,
    /// Whether this connection goes to the leader (preloads and grants go
    /// only on those).
    at_leader: bool,
}

#[derive(Clone)]
struct Stats {
    histograms: Vec<Histogram<u64>>,
    errors: u64,
    error_sample: Option<String>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            histograms: OPS.iter().map(|_| Stats::empty_histogram()).collect(),
            errors: 0,
            error_sample: None,
        }
    }

    /// Latencies in microseconds, up to a minute.
    fn empty_histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
    }

    fn total(&self) -> u64 {
        self.histograms.iter().map(Histogram::len).sum()
    }

    fn record(&mut self, op: Op, latency: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let micros = latency.as_micros().max(1) as u64;
                let _ = self.histograms[op as usize].record(micros);
            }
            Err(e) => {
                self.errors += 1;
                self.error_sample.get_or_insert(e);
            }
        }
    }
}

const REGISTER_LINE: &[u8] = b"{\"msg_type\":\"REGISTER_CLIENT\"}\n";

fn client_id_of(reply: &ReplyEnvelope) -> Result<u64, String> {
    reply.payload["client_id"].as_u64().ok_or_else(|| {
        format!(
            "REGISTER_CLIENT reply without a client_id: {}",
            reply.payload
        )
    })
}

/// How long opening one connection (TLS handshake and session included)
/// may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a session on a new (blocking) connection to `leader`, over TLS if
/// `tls` says so and logged in first with `credentials` if there are any,
/// which the bench then drives on its own: the stream and the session's
/// client_id.
fn register(
    std: StdTcpStream,
    leader: SocketAddr,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Result<(MaybeTls<StdTcpStream>, u64), String> {
    let failed = |e: String| format!("cannot open a client session: {e}");
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut conn = Connection::on_stream(std, &leader.to_string(), deadline, tls)
        .map_err(|e| format!("connect {leader}: {e}"))?;
    if let Some(credentials) = credentials {
        poncho_client::authenticate(&mut conn, credentials, deadline, None, false).map_err(
            |e| match e {
                OpenError::Conn(e) => format!("logging in at {leader}: {e}"),
                OpenError::Refused(e) => e.message(),
            },
        )?;
    }
    let client_id = poncho_client::register(&mut conn, deadline).map_err(|e| match e {
        // The error reply as the server sent it.
        ClientError::Server(e) => failed(serde_json::to_string(&e).unwrap_or_default()),
        e => failed(e.message()),
    })?;
    let stream = conn.into_inner().map_err(|e| failed(e.to_string()))?;
    Ok((stream, client_id))
}

/// A new (blocking) connection to `node`, over TLS if `tls` says so and
/// logged in first with `credentials` if there are any, with no session.
fn open_unregistered(
    std: StdTcpStream,
    node: SocketAddr,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Result<MaybeTls<StdTcpStream>, String> {
    if tls.is_none() && credentials.is_none() {
        return Ok(MaybeTls::Plain(std));
    }
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut conn = Connection::on_stream(std, &node.to_string(), deadline, tls)
        .map_err(|e| format!("connect {node}: {e}"))?;
    if let Some(credentials) = credentials {
        poncho_client::authenticate(&mut conn, credentials, deadline, None, false).map_err(
            |e| match e {
                OpenError::Conn(e) => format!("logging in at {node}: {e}"),
                OpenError::Refused(e) => e.message(),
            },
        )?;
    }
    conn.into_inner().map_err(|e| e.to_string())
}

/// The TLS --cacert, --cert and --key ask for (`None`: plaintext); a key
/// file others may read is warned about.
fn tls_from(args: &Args) -> Result<Option<Tls>, String> {
    let files = TlsFiles {
        trusted_ca: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    if files == TlsFiles::default() {
        return Ok(None);
    }
    if args.target != Target::Poncho {
        return Err("--cacert, --cert and --key are for --target poncho".into());
    }
    if args.idle > 0 {
        return Err("--idle connections are plaintext: not with --cacert".into());
    }
    let (tls, warning) = Tls::from_files(&files).map_err(|e| format!("TLS: {e}"))?;
    if let Some(w) = warning {
        eprintln!("poncho-bench: warning: {w}");
    }
    Ok(Some(tls))
}

/// The credentials `--user` asks for, the password from `password` (the
/// value of $PONCHO_PASSWORD); `None` without `--user`.
fn credentials_from(args: &Args, password: Option<String>) -> Result<Option<Credentials>, String> {
    let Some(user) = &args.user else {
        return Ok(None);
    };
    if args.target != Target::Poncho {
        return Err("--user is for --target poncho".into());
    }
    match password.filter(|p| !p.is_empty()) {
        Some(password) => Ok(Some(Credentials::new(user.clone(), password))),
        None => Err(format!(
            "--user {user}: set $PONCHO_PASSWORD to the user's password"
        )),
    }
}

/// Finds the leader through STATUS on any reachable member (logged in
/// first with `credentials`, if any).
fn find_leader(
    cluster: &[SocketAddr],
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Result<SocketAddr, String> {
    let addrs: Vec<String> = cluster.iter().map(SocketAddr::to_string).collect();
    poncho_client::find_leader_as(&addrs, LEADER_TIMEOUT, tls, credentials)
        .and_then(|leader| leader.parse().ok())
        .ok_or_else(|| {
            // Why, node by node (a TLS refusal, say), asked once more.
            let why: Vec<String> = addrs
                .iter()
                .map(
                    |a| match poncho_client::status_as(a, LEADER_TIMEOUT, tls, credentials).0 {
                        Ok(status) => format!("{a}: a {} that knows no leader", status.role),
                        Err(e) => format!("{a}: {e}"),
                    },
                )
                .collect();
            format!("no leader found among {cluster:?} ({})", why.join("; "))
        })
}

/// How long finding the leader may ask each node.
const LEADER_TIMEOUT: Duration = Duration::from_secs(2);

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

struct Generator {
    target: Target,
    /// The Host header of etcd requests.
    host: String,
    rng: SmallRng,
    mix: Vec<(Op, u32)>,
    total_weight: u32,
    keys: u64,
    value: String,
    value_base64: String,
    stale: bool,
    /// While preloading: the next key to write, in order, instead of a
    /// random operation on a random key.
    sequential: Option<u64>,
    /// While granting the --leases: every request is a grant.
    granting: bool,
    /// The leases granted, which keepalives pick from.
    leases: Vec<u64>,
    lease_ttl: u64,
    /// With --watchers: every written value starts with its send time.
    stamp: bool,
    value_size: usize,
    key_base64: String,
    key2_base64: String,
    body: String,
}

impl Generator {
    fn new(args: &Args, leader: SocketAddr, mix: Vec<(Op, u32)>) -> Generator {
        let value = "v".repeat(args.value_size);
        let mut value_base64 = String::new();
        etcd::base64(value.as_bytes(), &mut value_base64);
        Generator {
            target: args.target,
            host: leader.to_string(),
            rng: SmallRng::seed_from_u64(0x9e37_79b9),
            total_weight: mix.iter().map(|m| m.1).sum(),
            mix,
            keys: args.keys.max(1),
            value,
            value_base64,
            stale: args.stale,
            sequential: None,
            granting: false,
            leases: Vec::new(),
            lease_ttl: args.lease_ttl,
            stamp: args.watchers > 0,
            value_size: args.value_size,
            key_base64: String::new(),
            key2_base64: String::new(),
            body: String::new(),
        }
    }

    /// Before a write: with --watchers, the value becomes the time now, a
    /// colon and padding (base64-encoded too for etcd).
    fn restamp(&mut self) {
        if !self.stamp {
            return;
        }
        watch::stamped_value(watch::now_nanos(), self.value_size, &mut self.value);
        if self.target == Target::Etcd {
            self.value_base64.clear();
            etcd::base64(self.value.as_bytes(), &mut self.value_base64);
        }
    }

    /// A second key for a transaction, other than `first`.
    fn other_key(&mut self, first: u64) -> u64 {
        let k = self.rng.gen_range(0..self.keys - 1);
        if k >= first {
            k + 1
        } else {
            k
        }
    }

    fn pick(&mut self) -> (Op, u64) {
        if self.granting {
            return (Op::Grant, 0);
        }
        if let Some(next) = self.sequential.as_mut() {
            *next += 1;
            return (Op::Set, *next - 1);
        }
        let mut pick = self.rng.gen_range(0..self.total_weight);
        let mut op = self.mix[0].0;
        for &(o, w) in &self.mix {
            if pick < w {
                op = o;
                break;
            }
            pick -= w;
        }
        if op == Op::Keepalive {
            let lease = self.leases[self.rng.gen_range(0..self.leases.len())];
            return (op, lease);
        }
        (op, self.rng.gen_range(0..self.keys))
    }

    /// Appends the next request to `out`; a poncho write carries the
    /// session `client_id` and the next `seq`.
    fn next(&mut self, out: &mut Vec<u8>, client_id: u64, seq: &mut u64) -> Op {
        let (op, n) = self.pick();
        let key = format!("key:{n:08}");
        if matches!(op, Op::Set | Op::Txn) {
            self.restamp();
        }
        let key2 = match op {
            Op::Txn => format!("key:{:08}", self.other_key(n)),
            _ => String::new(),
        };
        match self.target {
            Target::Poncho => {
                let line = match op {
                    Op::Txn => {
                        *seq += 1;
                        let compare = |k: &str| json!({"key": k, "target": "mod_revision", "op": ">", "value": 0});
                        let put = |k: &str| json!({"type": "put", "key": k, "value": self.value});
                        let puts = json!([put(&key), put(&key2)]);
                        json!({"msg_type": "TXN", "payload": {"compare": [compare(&key), compare(&key2)], "success": puts, "failure": puts, "client_id": client_id, "seq": *seq}})
                    }
                    Op::Keepalive => {
                        json!({"msg_type": "LEASE", "payload": {"op": "keepalive", "id": n}})
                    }
                    Op::Grant => {
                        *seq += 1;
                        json!({"msg_type": "LEASE", "payload": {"op": "grant", "ttl": self.lease_ttl, "client_id": client_id, "seq": *seq}})
                    }
                    Op::Set => {
                        *seq += 1;
                        json!({"msg_type": "SET", "payload": {"key": key, "value": self.value, "client_id": client_id, "seq": *seq}})
                    }
                    Op::Get => {
                        json!({"msg_type": "GET", "payload": {"key": key, "stale": self.stale}})
                    }
                    Op::Cas => {
                        *seq += 1;
                        json!({"msg_type": "CAS", "payload": {"key": key, "expected": self.value, "value": self.value, "client_id": client_id, "seq": *seq}})
                    }
                };
                serde_json::to_writer(&mut *out, &line).expect("json to vec");
                out.push(b'\n');
            }
            Target::Etcd => {
                self.key_base64.clear();
                etcd::base64(key.as_bytes(), &mut self.key_base64);
                let (k, v) = (&self.key_base64, &self.value_base64);
                self.body.clear();
                // Writing to a String cannot fail.
                let path = match op {
                    Op::Set => {
                        let _ = write!(self.body, r#"{{"key":"{k}","value":"{v}"}}"#);
                        "/v3/kv/put"
                    }
                    Op::Get if self.stale => {
                        let _ = write!(self.body, r#"{{"key":"{k}","serializable":true}}"#);
                        "/v3/kv/range"
                    }
                    Op::Get => {
                        let _ = write!(self.body, r#"{{"key":"{k}"}}"#);
                        "/v3/kv/range"
                    }
                    Op::Cas => {
                        let _ = write!(
                            self.body,
                            r#"{{"compare":[{{"key":"{k}","target":"VALUE","result":"EQUAL","value":"{v}"}}],"success":[{{"request_put":{{"key":"{k}","value":"{v}"}}}}]}}"#
                        );
                        "/v3/kv/txn"
                    }
                    Op::Txn => {
                        self.key2_base64.clear();
                        etcd::base64(key2.as_bytes(), &mut self.key2_base64);
                        let k2 = &self.key2_base64;
                        let compare = |k: &str| {
                            format!(
                                r#"{{"key":"{k}","target":"MOD","result":"GREATER","mod_revision":"0"}}"#
                            )
                        };
                        let puts = format!(
                            r#"[{{"request_put":{{"key":"{k}","value":"{v}"}}}},{{"request_put":{{"key":"{k2}","value":"{v}"}}}}]"#
                        );
                        let _ = write!(
                            self.body,
                            r#"{{"compare":[{},{}],"success":{puts},"failure":{puts}}}"#,
                            compare(k),
                            compare(k2)
                        );
                        "/v3/kv/txn"
                    }
                    Op::Keepalive => {
                        let _ = write!(self.body, r#"{{"ID":"{n}"}}"#);
                        "/v3/lease/keepalive"
                    }
                    Op::Grant => {
                        let _ = write!(self.body, r#"{{"TTL":"{}"}}"#, self.lease_ttl);
                        "/v3/lease/grant"
                    }
                };
                etcd::write_post(out, &self.host, path, &self.body);
            }
        }
        op
    }
}

/// What a run measured.
struct Outcome {
    stats: Stats,
    elapsed: Duration,
    cpu: f64,
    /// The node every connection went to.
    server: SocketAddr,
    /// The --idle connections: how many, how many stalled, and how many the
    /// server had closed by the end.
    idle: (usize, usize, idle::IdleState),
    /// With --phase-file: each phase, in order.
    phases: Vec<report::PhaseResult>,
    /// With --watchers: what they saw, and how they were spread.
    watch: Option<WatchOutcome>,
    /// With --leases: how many were granted.
    leases: usize,
}

struct WatchOutcome {
    stats: watch::WatchStats,
    watchers: usize,
    streams: usize,
    nodes: usize,
}

/// The --interval asked for, checked.
fn interval_from(args: &Args) -> Result<Option<Duration>, String> {
    let Some(secs) = args.interval else {
        return Ok(None);
    };
    let min = report::MIN_INTERVAL.as_secs_f64();
    if !secs.is_finite() || secs < min || secs > args.duration.max(min) {
        return Err(format!(
            "--interval {secs}: give seconds from {min} to the --duration ({})",
            args.duration
        ));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

fn run(args: &Args) -> Result<Outcome, String> {
    let mix = parse_mix(mix_spec(args))?;
    check_mix(args, &mix)?;
    let per_stream = watch::spread(args.watchers, args.watch_streams)?;
    let interval = interval_from(args)?;
    let tls = tls_from(args)?;
    let credentials = credentials_from(args, std::env::var("PONCHO_PASSWORD").ok())?;
    let leader = match args.target {
        Target::Poncho => find_leader(&args.cluster, tls.as_ref(), credentials.as_ref())?,
        Target::Etcd => etcd::find_leader(&args.cluster)?,
    };
    let mut generator = Generator::new(args, leader, mix);
    let held = hold_idle(args, leader)?;
    if !per_stream.is_empty() {
        idle::raise_open_file_limit((args.clients + per_stream.len()) as u64 + 256)?;
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(args.clients);
    // The leader first, then the other nodes.
    let mut nodes = vec![leader];
    if args.keepalive_nodes == KeepaliveNodes::All {
        nodes.extend(args.cluster.iter().filter(|&&a| a != leader));
    }
    for i in 0..args.clients {
        conns.push(Conn::open(
            args.target,
            (nodes[i % nodes.len()], i % nodes.len() == 0),
            tls.as_ref(),
            credentials.as_ref(),
            &poll,
            Token(i),
        )?);
    }
    if args.preload {
        preload(args, &mut poll, &mut conns, &mut generator)?;
    }
    if args.leases > 0 {
        grant_leases(args, &mut poll, &mut conns, &mut generator)?;
    }
    let watchers = if per_stream.is_empty() {
        None
    } else {
        let plan = watch::Plan {
            target: args.target,
            nodes: if args.watch_nodes.is_empty() {
                args.cluster.clone()
            } else {
                args.watch_nodes.clone()
            },
            per_stream,
            prefix: args.watch_prefix.clone(),
            threads: args.watch_threads,
        };
        let opening = Instant::now();
        let w = watch::start(&plan, tls.as_ref(), credentials.as_ref())?;
        if !args.quiet {
            eprintln!(
                "{} watches of {:?} created on {} streams over {} nodes in {:.1} s",
                w.watchers,
                args.watch_prefix,
                w.streams,
                w.nodes,
                opening.elapsed().as_secs_f64()
            );
        }
        Some(w)
    };
    if let Some(w) = &watchers {
        w.measure();
    }
    let limit = args.requests.unwrap_or(u64::MAX);
    let duration = Duration::from_secs_f64(args.duration);
    let mut report = Report::new(interval, args.phase_file.clone(), args.json);
    let (stats, elapsed, cpu) = drive(
        args,
        &mut poll,
        &mut conns,
        &mut generator,
        (limit, duration),
        &mut report,
    )?;
    let watch = watchers.map(|w| {
        let (watchers, streams, nodes) = (w.watchers, w.streams, w.nodes);
        let expected = writes_of(&stats) * watchers as u64;
        let drain = Duration::from_secs_f64(args.watch_drain.max(0.0));
        WatchOutcome {
            stats: w.drain(expected, drain),
            watchers,
            streams,
            nodes,
        }
    });
    Ok(Outcome {
        stats,
        elapsed,
        cpu,
        server: leader,
        idle: (held.count(), held.stalled, held.state()),
        phases: report.phases,
        watch,
        leases: generator.leases.len(),
    })
}

/// --leases: grants them at the leader, unmeasured, for the keepalives.
fn grant_leases(
    args: &Args,
    poll: &mut Poll,
    conns: &mut [Conn],
    generator: &mut Generator,
) -> Result<(), String> {
    generator.granting = true;
    let limit = args.leases as u64;
    let (stats, elapsed, _) = drive(
        args,
        poll,
        conns,
        generator,
        (limit, PRELOAD_TIMEOUT),
        &mut Report::new(None, None, false),
    )?;
    generator.granting = false;
    if generator.leases.len() < args.leases {
        return Err(format!(
            "granting {limit} leases: {} granted, {} errors; first error: {}",
            generator.leases.len(),
            stats.errors,
            stats.error_sample.as_deref().unwrap_or("none")
        ));
    }
    if !args.quiet {
        eprintln!(
            "granted {} leases (TTL {} s) in {:.1} s",
            args.leases,
            args.lease_ttl,
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// Opens the --idle connections (the first --stalled of them stopped
/// mid-line), held until the run ends.
fn hold_idle(args: &Args, leader: SocketAddr) -> Result<idle::Idle, String> {
    if args.stalled > args.idle {
        return Err("--stalled counts among --idle connections: at most --idle".into());
    }
    let opening = Instant::now();
    let held = idle::Idle::open(leader, args.idle, args.stalled, args.clients)?;
    if !args.quiet && held.count() > 0 {
        eprintln!(
            "holding {} idle connections to {leader} ({} stalled mid-line), opened in {:.1} s",
            held.count(),
            held.stalled,
            opening.elapsed().as_secs_f64()
        );
    }
    Ok(held)
}

/// The longest a --preload may take.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// --preload: writes each key once, in order, unmeasured.
fn preload(
    args: &Args,
    poll: &mut Poll,
    conns: &mut [Conn],
    generator: &mut Generator,
) -> Result<(), String> {
    generator.sequential = Some(0);
    let limit = generator.keys;
    let (stats, elapsed, _) = drive(
        args,
        poll,
        conns,
        generator,
        (limit, PRELOAD_TIMEOUT),
        &mut Report::new(None, None, false),
    )?;
    if stats.total() < limit {
        return Err(format!(
            "preloading {limit} keys: {} written, {} errors; first error: {}",
            stats.total(),
            stats.errors,
            stats.error_sample.as_deref().unwrap_or("none")
        ));
    }
    if !args.quiet {
        eprintln!("preloaded {limit} keys in {:.1} s", elapsed.as_secs_f64());
    }
    generator.sequential = None;
    Ok(())
}

impl Conn {
    /// Connects to `leader` (a poncho connection in a session of its own,
    /// over TLS if `tls` is given, logged in with `credentials` if given)
    /// and registers the stream with `poll` under `token`.
    ///
    /// A poncho connection to a follower (`at_leader` false, with
    /// --keepalive-nodes all) opens no session: it sends only keepalives.
    fn open(
        target: Target,
        (node, at_leader): (SocketAddr, bool),
        tls: Option<&Tls>,
        credentials: Option<&Credentials>,
        poll: &Poll,
        token: Token,
    ) -> Result<Conn, String> {
        let std = StdTcpStream::connect(node).map_err(|e| format!("connect {node}: {e}"))?;
        let (std, session) = match target {
            Target::Poncho if at_leader => {
                register(std, node, tls, credentials).map(|(s, id)| (s, Some(id)))?
            }
            Target::Poncho => (open_unregistered(std, node, tls, credentials)?, Some(0)),
            Target::Etcd => (MaybeTls::Plain(std), None),
        };
        let sock = std.get_ref();
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut stream = std.map_socket(TcpStream::from_std);
        poll.registry()
            .register(
                stream.get_mut(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            out: Vec::new(),
            written: 0,
            input: match target {
                Target::Poncho => Input::Lines(LineBuffer::new(1 << 24)),
                Target::Etcd => Input::Http(HttpResponses::new(1 << 24)),
            },
            inflight: VecDeque::new(),
            session,
            seq: 0,
            at_leader,
        })
    }

    /// Writes what the socket takes of the pending requests (under TLS,
    /// the records rustls holds first).
    fn flush(&mut self) -> Result<(), String> {
        self.stream
            .flush_records()
            .map_err(|e| format!("write: {e}"))?;
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Reads what a readiness event announced into the reply framing.
    fn read_available(&mut self, chunk: &mut [u8], read_closed: bool) -> Result<(), String> {
        // A short read emptied the socket; on Linux the next arrival is a
        // new event (see the server's `Conn::read_some`). A close is
        // read to the end so it is not missed.
        // Under TLS, only if the socket's own read was short too.
        let short_read_drains = cfg!(target_os = "linux") && !read_closed;
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return Err("the server closed a connection".into()),
                Ok(n) => {
                    match &mut self.input {
                        Input::Lines(lines) => lines.extend(&chunk[..n]),
                        Input::Http(responses) => responses.extend(&chunk[..n]),
                    }
                    if short_read_drains
                        && n < chunk.len()
                        && self.stream.short_read_emptied_socket()
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Matches every complete buffered reply with its request and records
    /// it at `now`; the ids of granted leases go to `granted`.
    fn take_replies(
        &mut self,
        stats: &mut Stats,
        now: Instant,
        granted: &mut Vec<u64>,
    ) -> Result<(), String> {
        loop {
            let op = self.inflight.front().and_then(|f| f.1);
            let outcome = match &mut self.input {
                Input::Lines(lines) => match lines.next_line() {
                    None => return Ok(()),
                    Some(line) => {
                        let line = line.map_err(|_| "reply too long".to_string())?;
                        let reply: ReplyEnvelope =
                            serde_json::from_slice(line).map_err(|e| format!("bad reply: {e}"))?;
                        if self.took_session(&reply)? {
                            continue;
                        }
                        let outcome = self.judge(&reply, now);
                        match (outcome, op) {
                            (Ok(()), Some(Op::Grant)) => match reply.payload["id"].as_u64() {
                                Some(id) => {
                                    granted.push(id);
                                    Ok(())
                                }
                                None => {
                                    Err(format!("a grant reply without an id: {}", reply.payload))
                                }
                            },
                            (outcome, _) => outcome,
                        }
                    }
                },
                Input::Http(responses) => match responses.next_response()? {
                    None => return Ok(()),
                    Some(response) => match op {
                        Some(Op::Keepalive) => etcd::check_keepalive(&response),
                        Some(Op::Grant) => {
                            etcd::granted_lease(&response).map(|id| granted.push(id))
                        }
                        _ => etcd::check_reply(&response),
                    },
                },
            };
            // (A REGISTER_CLIENT's reply was taken above.)
            let Some((sent, Some(op))) = self.inflight.pop_front() else {
                return Err("a reply nobody asked for".into());
            };
            stats.record(op, now - sent, outcome);
        }
    }

    /// Takes `reply` as the new session if the oldest request is a
    /// REGISTER_CLIENT: true if it was.
    fn took_session(&mut self, reply: &ReplyEnvelope) -> Result<bool, String> {
        if !matches!(self.inflight.front(), Some((_, None))) {
            return Ok(false);
        }
        if reply.msg_type != "REGISTER_CLIENT" {
            return Err(format!(
                "cannot open a new client session: {}",
                reply.payload
            ));
        }
        self.session = Some(client_id_of(reply)?);
        self.seq = 0;
        self.inflight.pop_front();
        Ok(true)
    }

    /// A poncho reply's outcome; on SESSION_EXPIRED, queues a
    /// REGISTER_CLIENT for a new session.
    fn judge(&mut self, reply: &ReplyEnvelope, now: Instant) -> Result<(), String> {
        match reply.error() {
            Some(e) if e.code == ErrorCode::SessionExpired => {
                // Counted as an error; later writes go in a new session (the
                // ones already sent in this one get SESSION_EXPIRED too).
                if self.session.take().is_some() {
                    self.out.extend_from_slice(REGISTER_LINE);
                    self.inflight.push_back((now, None));
                }
                Err(reply.payload.to_string())
            }
            _ if reply.msg_type == "ERROR" => Err(reply.payload.to_string()),
            _ => Ok(()),
        }
    }
}

/// How many requests a run may issue, until when, and how many it has.
struct Budget {
    pipeline: usize,
    limit: u64,
    deadline: Instant,
    issued: u64,
}

impl Budget {
    /// Tops `c` up to --pipeline outstanding requests while the budget
    /// lasts.
    fn fill(&mut self, c: &mut Conn, generator: &mut Generator, now: Instant) {
        // A poncho connection waits for its new session (etcd has none).
        if c.session.is_none() && generator.target == Target::Poncho {
            return;
        }
        // Preloads and grants go to the leader only.
        if (generator.granting || generator.sequential.is_some()) && !c.at_leader {
            return;
        }
        while c.inflight.len() < self.pipeline && self.issued < self.limit && now < self.deadline {
            let op = generator.next(&mut c.out, c.session.unwrap_or(0), &mut c.seq);
            c.inflight.push_back((now, Some(op)));
            self.issued += 1;
        }
    }

    fn spent(&self, now: Instant) -> bool {
        now >= self.deadline || self.issued >= self.limit
    }
}

/// The progress line, redrawn once a second.
struct Progress {
    started: Instant,
    next: Instant,
    last_total: u64,
}

impl Progress {
    fn tick(&mut self, now: Instant, stats: &Stats) {
        if now < self.next {
            return;
        }
        let total = stats.total();
        eprint!(
            "\r{:>5.1}s  {:>9} ops/s  {:>10} total  {} errors   ",
            (now - self.started).as_secs_f64(),
            total - self.last_total,
            total,
            stats.errors
        );
        self.last_total = total;
        self.next += Duration::from_secs(1);
    }
}

/// Runs the closed loop until `limit` operations were issued, `duration`
/// passed or `report`'s phase file said `stop`, and every reply is in (or
/// 10 s more passed).
fn drive(
    args: &Args,
    poll: &mut Poll,
    conns: &mut [Conn],
    generator: &mut Generator,
    (limit, duration): (u64, Duration),
    report: &mut Report,
) -> Result<(Stats, Duration, f64), String> {
    let mut stats = Stats::new();
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    report.start(started, &stats);
    let mut budget = Budget {
        pipeline: args.pipeline,
        limit,
        deadline: started + duration,
        issued: 0,
    };
    let mut progress = Progress {
        started,
        next: started + Duration::from_secs(1),
        last_total: 0,
    };
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 << 10];
    let now = Instant::now();
    for c in conns.iter_mut() {
        budget.fill(c, generator, now);
    }
    loop {
        let now = Instant::now();
        if report.enabled() && report.tick(now, &stats) {
            budget.deadline = budget.deadline.min(now);
        }
        let done = budget.spent(now) && conns.iter().all(|c| c.inflight.is_empty());
        if done || now > budget.deadline + Duration::from_secs(10) {
            break;
        }
        if !args.quiet && args.interval.is_none() {
            progress.tick(now, &stats);
        }
        for c in conns.iter_mut() {
            c.flush()?;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            c.read_available(&mut chunk, event.is_read_closed())?;
            let now = Instant::now();
            c.take_replies(&mut stats, now, &mut generator.leases)?;
            budget.fill(c, generator, now);
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_start;
    report.finish(Instant::now(), &stats);
    if !args.quiet && args.interval.is_none() {
        eprintln!();
    }
    Ok((stats, elapsed, cpu))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poncho-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        print_json(&args, &outcome);
    } else {
        print_text(&args, &outcome);
    }
    if let Some(sample) = &outcome.stats.error_sample {
        eprintln!("poncho-bench: first error: {sample}");
    }
    if let Some(sample) = outcome
        .watch
        .as_ref()
        .and_then(|w| w.stats.error_sample.as_ref())
    {
        eprintln!("poncho-bench: first watch error: {sample}");
    }
    ExitCode::SUCCESS
}

/// A histogram's value at quantile `q`, in milliseconds.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Stats {
    /// The histograms of the operations that ran, in `OPS` order.
    fn by_op(&self) -> Vec<(Op, &Histogram<u64>)> {
        OPS.iter()
            .map(|&o| (o, &self.histograms[o as usize]))
            .filter(|(_, h)| !h.is_empty())
            .collect()
    }
}

/// --json: the summary as one JSON object.
fn print_json(args: &Args, outcome: &Outcome) {
    let (stats, cpu, (idle, stalled, idle_end)) = (&outcome.stats, outcome.cpu, &outcome.idle);
    let (secs, total) = (outcome.elapsed.as_secs_f64(), stats.total());
    let ops = by_op_json(stats, secs);
    let phases: Vec<serde_json::Value> = outcome.phases.iter().map(|p| p.json()).collect();
    let mut summary = json!({
        "target": args.target.name(), "server": outcome.server.to_string(),
        "clients": args.clients, "pipeline": args.pipeline, "keys": args.keys, "value_size": args.value_size,
        "mix": mix_spec(args), "stale": args.stale, "seconds": secs, "ops": total, "ops_per_sec": total as f64 / secs,
        "errors": stats.errors, "by_op": ops, "bench_cpu_percent": 100.0 * cpu / secs,
        "idle": idle, "stalled": stalled, "idle_open_at_end": idle_end.open,
    });
    if args.phase_file.is_some() {
        summary["phases"] = phases.into();
    }
    if args.leases > 0 {
        summary["leases"] = outcome.leases.into();
        summary["lease_ttl"] = args.lease_ttl.into();
        summary["keepalive_nodes"] = format!("{:?}", args.keepalive_nodes).to_lowercase().into();
    }
    if let Some(w) = &outcome.watch {
        summary["watch"] = watch_json(w, stats, secs);
    }
    println!("{summary}");
}

/// The events a watch run should deliver: every key written during the
/// run (a set writes one, a transaction two), to every watch.
fn expected_events(w: &WatchOutcome, stats: &Stats) -> u64 {
    writes_of(stats) * w.watchers as u64
}

/// The keys written successfully: a set writes one, a transaction two.
fn writes_of(stats: &Stats) -> u64 {
    stats.histograms[Op::Set as usize].len() + 2 * stats.histograms[Op::Txn as usize].len()
}

/// --watchers, for --json.
fn watch_json(w: &WatchOutcome, stats: &Stats, secs: f64) -> serde_json::Value {
    let (s, h) = (&w.stats, &w.stats.latency);
    let expected = expected_events(w, stats);
    json!({
        "watchers": w.watchers, "streams": w.streams, "nodes": w.nodes,
        "events": s.events, "events_per_sec": s.events as f64 / secs,
        "expected_events": expected,
        "drained_events": s.drained, "drain_seconds": s.drain_seconds,
        "delivered_during_run": if expected > 0 { s.events as f64 / expected as f64 } else { 0.0 },
        "delivered_fraction": if expected > 0 { (s.events + s.drained) as f64 / expected as f64 } else { 0.0 },
        "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99),
        "p999_ms": ms(h, 0.999), "max_ms": h.max() as f64 / 1000.0,
        "errors": s.errors, "streams_lost": s.streams_lost,
    })
}

/// Each operation's count, rate and latencies over `secs`, for --json.
fn by_op_json(stats: &Stats, secs: f64) -> serde_json::Map<String, serde_json::Value> {
    stats
        .by_op()
        .iter()
        .map(|(o, h)| {
            (
                o.name().to_string(),
                json!({
                    "count": h.len(), "per_sec": h.len() as f64 / secs,
                    "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99),
                    "p999_ms": ms(h, 0.999), "max_ms": h.max() as f64 / 1000.0,
                }),
            )
        })
        .collect()
}

/// The summary as a table.
fn print_text(args: &Args, outcome: &Outcome) {
    let stats = &outcome.stats;
    let secs = outcome.elapsed.as_secs_f64();
    let total = stats.total();
    let target = match args.target {
        Target::Poncho => String::new(),
        Target::Etcd => format!(" (etcd at {})", outcome.server),
    };
    println!(
        "poncho-bench{target}: {} clients, pipeline {}, {} keys, {}-byte values, mix {}{}, {:.1} s",
        args.clients,
        args.pipeline,
        args.keys,
        args.value_size,
        mix_spec(args),
        if args.stale { " (stale reads)" } else { "" },
        secs
    );
    println!(
        "  total: {total} ops, {:.0} ops/s, {} errors",
        total as f64 / secs,
        stats.errors
    );
    println!(
        "  {:<9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "op", "count", "ops/s", "p50 ms", "p90", "p99", "p99.9", "max"
    );
    for (o, h) in &stats.by_op() {
        println!(
            "  {:<9} {:>10} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            o.name(),
            h.len(),
            h.len() as f64 / secs,
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            ms(h, 0.999),
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "  load generator CPU: {:.0}% of one core",
        100.0 * outcome.cpu / secs
    );
    let (idle, stalled, idle_end) = &outcome.idle;
    if *idle > 0 {
        println!(
            "  idle connections: {idle} held ({stalled} stalled mid-line); at the end {} open, \
             {} closed by the server",
            idle_end.open, idle_end.closed
        );
    }
    if args.leases > 0 {
        println!(
            "  leases: {} granted before the run (TTL {} s), keepalives sent to {}",
            outcome.leases,
            args.lease_ttl,
            match args.keepalive_nodes {
                KeepaliveNodes::Leader => "the leader",
                KeepaliveNodes::All => "every node",
            }
        );
    }
    if let Some(w) = &outcome.watch {
        println!("{}", watch_text(w, stats, secs));
    }
    for phase in &outcome.phases {
        println!("{}", phase.text());
    }
}

/// --watchers, for the summary table.
fn watch_text(w: &WatchOutcome, stats: &Stats, secs: f64) -> String {
    let (s, h) = (&w.stats, &w.stats.latency);
    let expected = expected_events(w, stats);
    let percent = |n: u64| {
        if expected > 0 {
            format!("{:.1}%", 100.0 * n as f64 / expected as f64)
        } else {
            "-".into()
        }
    };
    format!(
        "  watch: {} watchers on {} streams over {} nodes: {} events during the run, {:.0} \
         events/s ({} of writes x watchers); {} more in {:.1} s after it ({} in all); \
         {} errors, {} streams lost\n  \
         put-to-event ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        w.watchers,
        w.streams,
        w.nodes,
        s.events,
        s.events as f64 / secs,
        percent(s.events),
        s.drained,
        s.drain_seconds,
        percent(s.events + s.drained),
        s.errors,
        s.streams_lost,
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    fn parse(extra: &[&str]) -> Args {
        Args::try_parse_from(["poncho-bench"].iter().chain(extra)).unwrap()
    }

    #[test]
    fn the_mix_takes_txn_and_keepalive_and_checks_what_they_need() {
        assert_eq!(
            parse_mix("txn:2,keepalive:1,set"),
            Ok(vec![(Op::Txn, 2), (Op::Keepalive, 1), (Op::Set, 1)])
        );
        assert!(parse_mix("grant:1").is_err());
        assert_eq!(mix_spec(&parse(&[])), "set:1");
        assert_eq!(mix_spec(&parse(&["--leases", "10"])), "keepalive:1");
        assert_eq!(
            mix_spec(&parse(&["--leases", "10", "--mix", "get:1"])),
            "get:1"
        );
        let check = |extra: &[&str]| {
            let args = parse(extra);
            check_mix(&args, &parse_mix(mix_spec(&args)).unwrap())
        };
        assert!(check(&["--leases", "10"]).is_ok());
        assert!(check(&["--mix", "keepalive:1"]).is_err());
        assert!(check(&["--mix", "txn:1", "--keys", "1"]).is_err());
        assert!(check(&["--leases", "10", "--keepalive-nodes", "all"]).is_ok());
        assert!(check(&[
            "--leases",
            "1",
            "--keepalive-nodes",
            "all",
            "--mix",
            "keepalive:1,set:1"
        ])
        .is_err());
        assert!(check(&["--leases", "1", "--lease-ttl", "1"]).is_err());
    }

    /// The requests a generator for `extra` writes, one per line (etcd: the
    /// bodies).
    fn requests(extra: &[&str], ops: usize, leases: &[u64]) -> Vec<String> {
        let args = parse(extra);
        let mix = parse_mix(mix_spec(&args)).unwrap();
        let mut g = Generator::new(&args, "127.0.0.1:1".parse().unwrap(), mix);
        g.leases = leases.to_vec();
        let mut seq = 0;
        (0..ops)
            .map(|_| {
                let mut out = Vec::new();
                g.next(&mut out, 7, &mut seq);
                let text = String::from_utf8(out).unwrap();
                match args.target {
                    Target::Poncho => text,
                    Target::Etcd => {
                        let (head, body) = text.split_once("\r\n\r\n").unwrap();
                        format!("{} {body}", head.lines().next().unwrap())
                    }
                }
            })
            .collect()
    }

    #[test]
    fn a_txn_compares_and_puts_two_distinct_keys_in_both_branches() {
        for line in requests(&["--mix", "txn:1", "--keys", "2"], 20, &[]) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["msg_type"], "TXN");
            let p = &v["payload"];
            assert_eq!(p["client_id"], 7);
            let (a, b) = (&p["compare"][0], &p["compare"][1]);
            assert_ne!(a["key"], b["key"]);
            for c in [a, b] {
                assert_eq!(
                    (&c["target"], &c["op"], &c["value"]),
                    (&json!("mod_revision"), &json!(">"), &json!(0))
                );
            }
            assert_eq!(p["success"], p["failure"]);
            assert_eq!(p["success"][0]["key"], a["key"]);
            assert_eq!(p["success"][1]["key"], b["key"]);
            assert_eq!(p["success"][0]["type"], "put");
        }
        for request in requests(
            &["--target", "etcd", "--mix", "txn:1", "--keys", "2"],
            20,
            &[],
        ) {
            let (line, body) = request
                .split_once(' ')
                .map(|(m, rest)| (m.to_string(), rest))
                .unwrap();
            assert_eq!(line, "POST");
            let (path, body) = body.split_once(' ').unwrap();
            assert_eq!(path, "/v3/kv/txn");
            let body = body.split_once(' ').unwrap().1;
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let (a, b) = (&v["compare"][0], &v["compare"][1]);
            assert_ne!(a["key"], b["key"]);
            assert_eq!(
                (&a["target"], &a["result"], &a["mod_revision"]),
                (&json!("MOD"), &json!("GREATER"), &json!("0"))
            );
            assert_eq!(v["success"], v["failure"]);
            assert_eq!(v["success"][1]["request_put"]["key"], b["key"]);
        }
    }

    #[test]
    fn keepalives_pick_granted_leases_and_grants_carry_the_ttl() {
        let leases = [11, 22, 33];
        for line in requests(&["--leases", "3"], 10, &leases) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                (&v["msg_type"], &v["payload"]["op"]),
                (&json!("LEASE"), &json!("keepalive"))
            );
            assert!(
                leases.contains(&v["payload"]["id"].as_u64().unwrap()),
                "{line}"
            );
        }
        let etcd = requests(&["--target", "etcd", "--leases", "3"], 3, &leases);
        assert!(
            etcd.iter()
                .all(|r| r.starts_with("POST /v3/lease/keepalive HTTP/1.1 {\"ID\":\"")),
            "{etcd:?}"
        );
        let args = parse(&["--leases", "1", "--lease-ttl", "30"]);
        let mut g = Generator::new(
            &args,
            "127.0.0.1:1".parse().unwrap(),
            vec![(Op::Keepalive, 1)],
        );
        g.granting = true;
        let (mut out, mut seq) = (Vec::new(), 0);
        assert_eq!(g.next(&mut out, 7, &mut seq), Op::Grant);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["payload"],
            json!({"op": "grant", "ttl": 30, "client_id": 7, "seq": 1})
        );
    }

    #[test]
    fn with_watchers_written_values_carry_their_send_time() {
        let before = watch::now_nanos();
        for line in requests(&["--watchers", "1", "--value-size", "40"], 3, &[]) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let value = v["payload"]["value"].as_str().unwrap();
            assert_eq!(value.len(), 40);
            let stamp = watch::stamp_of(value.as_bytes()).unwrap();
            assert!(stamp >= before && stamp <= watch::now_nanos());
        }
        let plain = requests(&["--value-size", "4"], 1, &[]);
        assert!(plain[0].contains(r#""value":"vvvv""#), "{}", plain[0]);
    }

    #[test]
    fn user_needs_the_password_from_the_environment_and_the_poncho_target() {
        let args =
            |extra: &[&str]| Args::try_parse_from(["poncho-bench"].iter().chain(extra)).unwrap();
        assert_eq!(credentials_from(&args(&[]), None), Ok(None));
        let alice = args(&["--user", "alice"]);
        assert_eq!(
            credentials_from(&alice, Some("pw".into())),
            Ok(Some(Credentials::new("alice", "pw")))
        );
        for missing in [None, Some(String::new())] {
            let e = credentials_from(&alice, missing).unwrap_err();
            assert!(e.contains("PONCHO_PASSWORD"), "{e}");
        }
        let etcd = args(&["--user", "alice", "--target", "etcd"]);
        assert!(credentials_from(&etcd, Some("pw".into())).is_err());
    }

    #[test]
    fn a_connection_logs_in_before_it_opens_its_session() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let node = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).lines();
            let mut seen = Vec::new();
            for reply in [
                r#"{"msg_type":"AUTHENTICATE","req_id":0,"payload":{"user":"alice"}}"#,
                r#"{"msg_type":"REGISTER_CLIENT","payload":{"client_id":12}}"#,
            ] {
                seen.push(lines.next().unwrap().unwrap());
                writer.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
            seen
        });
        let credentials = Credentials::new("alice", "pw-secret");
        let std = StdTcpStream::connect(addr).unwrap();
        let (_, client_id) = register(std, addr, None, Some(&credentials)).unwrap();
        assert_eq!(client_id, 12);
        let seen = node.join().unwrap();
        assert!(
            seen[0].contains(r#""msg_type":"AUTHENTICATE""#),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains(r#""user":"alice""#), "{}", seen[0]);
        assert!(
            seen[1].contains(r#""msg_type":"REGISTER_CLIENT""#),
            "{}",
            seen[1]
        );
    }
}
