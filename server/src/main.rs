//! `poncho-server`: one node of a poncho cluster.
//!
//! `poncho-server --port 8002 is_leader` alone runs a working single-node
//! cluster with its data in `./poncho-data/node-1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use poncho_protocol::{NodeId, MAX_LINE_BYTES};
use poncho_server::log::Level;
use poncho_server::node::{Node, NodeConfig, TlsSettings};
use poncho_server::peer_auth::ClusterSecret;
use poncho_server::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "poncho-server",
    version,
    about = "A node of a poncho Raft key/value cluster"
)]
struct Args {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, default_value_t = 1)]
    id: NodeId,
    /// The IP address to listen on and to connect to peers from.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The TCP port for clients and peers.
    #[arg(long, default_value_t = 8002)]
    port: u16,
    /// The other members, as ID=IP:PORT,... (this node may be listed too).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where the log and hard state live [default: ./poncho-data/node-ID].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Milliseconds per Raft tick.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Minimum election timeout in ticks (each wait is drawn from [N, 2N)).
    #[arg(long, default_value_t = 30)]
    election_ticks: u64,
    /// Heartbeat interval in ticks.
    #[arg(long, default_value_t = 5)]
    heartbeat_ticks: u64,
    /// Most entries in one AppendEntries.
    #[arg(long, default_value_t = 1024)]
    max_batch_entries: usize,
    /// Most bytes of entries in one AppendEntries.
    #[arg(long, default_value_t = 1 << 20)]
    max_batch_bytes: usize,
    /// Unacknowledged AppendEntries allowed per follower.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// Milliseconds a client write or read may wait before a TIMEOUT reply.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Take a snapshot and compact the log after this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    snapshot_keep_tail: u64,
    /// A follower that needs a snapshot gets one at most this many entries
    /// older than the leader's state; an older one is rebuilt first (once
    /// per transfer), so the follower replays less of the log after it.
    #[arg(long, default_value_t = 100_000)]
    snapshot_transfer_max_age: u64,
    /// Changes to keys kept for reads at past revisions (RANGE `rev`).
    #[arg(long, default_value_t = poncho_server::kv::HISTORY_EVENTS)]
    history_events: usize,
    /// Bytes of keys and values those changes may hold (128 more counted
    /// for each change).
    #[arg(long, default_value_t = poncho_server::kv::HISTORY_BYTES)]
    history_bytes: usize,
    /// Watches this node serves at once (each connection holds at most
    /// 1,000).
    #[arg(long, default_value_t = poncho_server::node::MAX_WATCHES)]
    max_watches: usize,
    /// A watch that is up to date is canceled (SLOW_WATCHER) when its
    /// connection holds this many bytes its client has not read.
    #[arg(long, default_value_t = poncho_server::node::WATCH_BUFFER_BYTES)]
    watch_buffer_bytes: usize,
    /// How often a watch with progress_notify that has sent nothing hears
    /// the node's revision, in milliseconds.
    #[arg(long, default_value_t = poncho_server::node::WATCH_PROGRESS_INTERVAL.as_millis() as u64)]
    watch_progress_ms: u64,
    /// Size of one write-ahead log segment file, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    segment_bytes: u64,
    /// Longest request line accepted, in bytes.
    #[arg(long, default_value_t = MAX_LINE_BYTES)]
    max_line_bytes: usize,
    /// For tests: client sessions expire after this many ms without use, in
    /// log time. Part of the state machine: every node must be given the
    /// same value, and a node started from a snapshot keeps the snapshot's.
    #[arg(long, hide = true, default_value_t = poncho_server::kv::SESSION_TIMEOUT_MS)]
    session_timeout_ms: u64,
    /// For tests: the most client sessions kept (least recently used
    /// evicted past it); the same on every node, like --session-timeout-ms.
    #[arg(long, hide = true, default_value_t = poncho_server::kv::MAX_SESSIONS)]
    max_sessions: usize,
    /// Client connections served at once; more get OVERLOADED and are
    /// closed. Peers' connections have room of their own past it. Lowered,
    /// with a warning, if the open-file limit cannot be raised to cover it.
    #[arg(long, default_value_t = 50_000)]
    max_clients: usize,
    /// Milliseconds a request line may take from its first byte to its
    /// newline; a connection that stalls mid-line longer gets BAD_REQUEST
    /// and is closed.
    #[arg(long, default_value_t = 30_000)]
    partial_request_timeout_ms: u64,
    /// Close a client connection that sent nothing and has nothing pending
    /// for this many milliseconds; 0: never (like Redis's `timeout 0`).
    #[arg(long, default_value_t = 0)]
    idle_timeout_ms: u64,
    /// Skip fsync. UNSAFE: acknowledged writes can be lost on a crash. For
    /// throwaway experiments only.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// A file holding the cluster's shared secret (at least 32 bytes; make
    /// one with `openssl rand -hex 32`). A connection from another node is
    /// taken as a member's only once it has proven it knows the secret (a
    /// challenge-response handshake; the secret is never sent). Every member
    /// needs the same secret.
    #[arg(long, value_name = "PATH")]
    cluster_secret_file: Option<PathBuf>,
    /// Run a cluster with no peer authentication: any program that can
    /// reach a node's port can then speak for a member and rewrite the
    /// cluster's data. A node with peers refuses to start without a cluster
    /// secret unless given this.
    #[arg(long)]
    insecure: bool,
    /// Names the cluster a brand-new data directory joins: the cluster id
    /// derives from it and the member ids, and is recorded in
    /// the data directory on first start. Give each cluster its own (as
    /// with etcd's flag); nodes of clusters with different ids refuse each
    /// other.
    #[arg(long, value_name = "TOKEN", default_value = poncho_server::peer_auth::DEFAULT_CLUSTER_TOKEN)]
    initial_cluster_token: String,
    /// This node's TLS certificate (PEM, with its chain): with --key-file,
    /// the node's port speaks TLS only, to clients and peers alike, and the
    /// node's connections to its peers speak TLS (etcd's flag names).
    #[arg(long, value_name = "PATH")]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The CA that signed the members' certificates (peers are checked
    /// against it) and, with --client-cert-auth, the clients'.
    #[arg(long, value_name = "PATH")]
    trusted_ca_file: Option<PathBuf>,
    /// Every connection must present a certificate signed by
    /// --trusted-ca-file.
    #[arg(long)]
    client_cert_auth: bool,
    /// A port of its own for peers (as etcd's 2380), so that client and
    /// peer traffic can be firewalled apart; every member then lists it in
    /// --peers as ID=CLIENT_IP:PORT/PEER_IP:PORT. Clients are refused there.
    #[arg(long, value_name = "IP:PORT")]
    peer_addr: Option<SocketAddr>,
    /// TLS on the peer port and to the peers' ports: this node's
    /// certificate as a peer (needs --peer-addr).
    #[arg(long, value_name = "PATH")]
    peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file.
    #[arg(long, value_name = "PATH")]
    peer_key_file: Option<PathBuf>,
    /// The CA of the members' peer certificates.
    #[arg(long, value_name = "PATH")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Peers must present a certificate of --peer-trusted-ca-file: then a
    /// certificate proves membership, and no cluster secret is needed.
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// With --peer-client-cert-auth: a peer's certificate must also have
    /// this common name (etcd's flag).
    #[arg(long, value_name = "CN")]
    peer_cert_allowed_cn: Option<String>,
    /// Join an existing cluster instead of founding one: with an empty data
    /// directory and no --peers, the node starts as no member, waits to be
    /// added (`member add ID ADDR --learner` on the cluster, for example at
    /// this member, HOST:PORT), then catches up from the leader. Its first
    /// proven peer tells it the cluster id. Ignored once it has data.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "peers")]
    join: Option<SocketAddr>,
    /// Disaster recovery (etcd's flag): restart this node as the only voter
    /// of its cluster, keeping its data, when a majority of the members is
    /// lost for good. Every other member is removed by a configuration entry
    /// the node appends to its own log; grow the cluster again with `member
    /// add`. Give it once, on one node; never while the other members run.
    #[arg(long)]
    force_new_cluster: bool,
    /// Reach member ID at IP:PORT instead of the peer address the
    /// configuration gives it (a proxy, a NAT, or a test harness's fault
    /// injector): ID=IP:PORT, comma-separated. The configured address still
    /// names the member (its TLS certificate is checked against it).
    #[arg(long, value_name = "ID=IP:PORT,...", value_delimiter = ',')]
    peer_route: Vec<String>,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info")]
    log_level: Level,
    /// Shorthand for --log-level debug.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// The bootstrap hint: campaign at once on start, so a fresh cluster has
    /// a predictable first leader (it still needs a majority of votes).
    #[arg(value_parser = ["is_leader"])]
    is_leader: Option<String>,
}

/// The other members from `--peers`: their client addresses, and their peer
/// ports where they have one.
#[derive(Debug, Default)]
struct Members {
    clients: BTreeMap<NodeId, SocketAddr>,
    peer_ports: BTreeMap<NodeId, SocketAddr>,
}

/// Reads `--peers` (`ID=IP:PORT` or `ID=IP:PORT/PEER_IP:PORT`), skipping this
/// node's entry after checking it against `own` and `own_peer`.
fn parse_peers(
    id: NodeId,
    own: SocketAddr,
    own_peer: Option<SocketAddr>,
    specs: &[String],
) -> Result<Members, String> {
    let mut members = Members::default();
    for spec in specs.iter().filter(|s| !s.trim().is_empty()) {
        let (peer_id, addrs) = spec
            .split_once('=')
            .ok_or_else(|| format!("--peers entry {spec:?} is not ID=IP:PORT"))?;
        let peer_id: NodeId = peer_id
            .trim()
            .parse()
            .map_err(|_| format!("--peers entry {spec:?}: {peer_id:?} is not a node id"))?;
        let parse = |addr: &str| -> Result<SocketAddr, String> {
            addr.trim()
                .parse()
                .map_err(|_| format!("--peers entry {spec:?}: {addr:?} is not IP:PORT"))
        };
        let (addr, peer_port) = match addrs.split_once('/') {
            Some((client, peer)) => (parse(client)?, Some(parse(peer)?)),
            None => (parse(addrs)?, None),
        };
        if peer_id == 0 {
            return Err("node ids start at 1".into());
        }
        if peer_id == id {
            if addr != own {
                return Err(format!(
                    "--peers lists this node ({id}) at {addr}, but it listens on {own}"
                ));
            }
            if peer_port.is_some() && peer_port != own_peer {
                return Err(format!(
                    "--peers gives this node ({id}) the peer port {}, but its --peer-addr is \
                     {own_peer:?}",
                    peer_port.map_or(String::new(), |p| p.to_string())
                ));
            }
            continue;
        }
        if members.clients.insert(peer_id, addr).is_some() {
            return Err(format!("--peers lists node {peer_id} twice"));
        }
        if let Some(p) = peer_port {
            members.peer_ports.insert(peer_id, p);
        }
    }
    Ok(members)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = if args.verbose {
        Level::Debug
    } else {
        args.log_level
    };
    poncho_server::log::init(level, args.id);
    let config = match node_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("poncho-server: {e}");
            return ExitCode::from(2);
        }
    };
    if !config.fsync {
        eprintln!(
            "poncho-server: WARNING: --unsafe-no-fsync: acknowledged writes can be lost on a crash"
        );
    }
    let mut node = match Node::start(config) {
        Ok(n) => n,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match node.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("fatal: {e}");
            info!("stopping: a node that cannot write durably must not keep acknowledging");
            ExitCode::FAILURE
        }
    }
}

/// `--peer-route`'s `ID=IP:PORT` entries.
fn parse_routes(specs: &[String]) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut routes = BTreeMap::new();
    for spec in specs.iter().filter(|s| !s.is_empty()) {
        let parsed = spec.split_once('=').and_then(|(id, addr)| {
            Some((id.trim().parse::<NodeId>().ok()?, addr.trim().parse().ok()?))
        });
        let Some((id, addr)) = parsed else {
            return Err(format!("--peer-route entry {spec:?} is not ID=IP:PORT"));
        };
        if routes.insert(id, addr).is_some() {
            return Err(format!("--peer-route names node {id} twice"));
        }
    }
    Ok(routes)
}

/// The node's configuration from the command line, or what is wrong with it.
fn node_config(args: Args) -> Result<NodeConfig, String> {
    let own = SocketAddr::new(args.host, args.port);
    let members = parse_peers(args.id, own, args.peer_addr, &args.peers)?;
    if args.id == 0 || args.tick_ms == 0 || args.max_sessions == 0 {
        return Err("--id, --tick-ms and --max-sessions must be at least 1".into());
    }
    let cluster_secret = match &args.cluster_secret_file {
        None => None,
        Some(path) => {
            let (secret, warning) = ClusterSecret::load(path).map_err(|e| e.to_string())?;
            if let Some(w) = warning {
                eprintln!("poncho-server: WARNING: {w}");
            }
            Some(secret)
        }
    };
    Ok(NodeConfig {
        id: args.id,
        host: args.host,
        port: args.port,
        peers: members.clients,
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("poncho-data/node-{}", args.id))),
        bootstrap_leader: args.is_leader.is_some(),
        join: args.join,
        force_new_cluster: args.force_new_cluster,
        peer_routes: parse_routes(&args.peer_route)?,
        tick: Duration::from_millis(args.tick_ms),
        election_timeout_ticks: args.election_ticks,
        heartbeat_interval_ticks: args.heartbeat_ticks,
        max_entries_per_message: args.max_batch_entries,
        max_bytes_per_message: args.max_batch_bytes,
        max_inflight_messages: args.max_inflight,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_line_bytes: args.max_line_bytes,
        fsync: !args.unsafe_no_fsync,
        snapshot_entries: args.snapshot_entries.max(1),
        snapshot_keep_tail: args.snapshot_keep_tail,
        snapshot_transfer_max_age: args.snapshot_transfer_max_age,
        history_events: args.history_events,
        history_bytes: args.history_bytes,
        max_watches: args.max_watches,
        watch_buffer_bytes: args.watch_buffer_bytes,
        watch_progress: Duration::from_millis(args.watch_progress_ms.max(1)),
        segment_bytes: args.segment_bytes.max(4096),
        session_timeout_ms: args.session_timeout_ms,
        max_sessions: args.max_sessions,
        max_clients: args.max_clients,
        partial_request_timeout: Duration::from_millis(args.partial_request_timeout_ms.max(1)),
        idle_timeout: (args.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(args.idle_timeout_ms)),
        cluster_secret,
        insecure: args.insecure,
        cluster_token: args.initial_cluster_token,
        tls: TlsSettings {
            cert_file: args.cert_file,
            key_file: args.key_file,
            trusted_ca_file: args.trusted_ca_file,
            client_cert_auth: args.client_cert_auth,
            allowed_cn: None,
        },
        peer_addr: args.peer_addr,
        peer_ports: members.peer_ports,
        peer_tls: TlsSettings {
            cert_file: args.peer_cert_file,
            key_file: args.peer_key_file,
            trusted_ca_file: args.peer_trusted_ca_file,
            client_cert_auth: args.peer_client_cert_auth,
            allowed_cn: args.peer_cert_allowed_cn,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_skip_this_node() {
        let own: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let specs = vec![
            "1=127.0.0.1:8001".to_string(),
            "2=127.0.0.2:8002".to_string(),
        ];
        let peers = parse_peers(1, own, None, &specs).unwrap().clients;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[&2], "127.0.0.2:8002".parse().unwrap());
    }

    #[test]
    fn peer_ports_parse_and_this_nodes_must_be_its_peer_addr() {
        let own: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let own_peer: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let specs = vec![
            "1=127.0.0.1:8001/127.0.0.1:9001".to_string(),
            "2=127.0.0.2:8002/127.0.0.2:9002".to_string(),
            "3=127.0.0.3:8003".to_string(),
        ];
        let m = parse_peers(1, own, Some(own_peer), &specs).unwrap();
        assert_eq!(m.clients.len(), 2);
        assert_eq!(m.peer_ports[&2], "127.0.0.2:9002".parse().unwrap());
        assert!(!m.peer_ports.contains_key(&3));
        let err = parse_peers(1, own, None, &specs).unwrap_err();
        assert!(err.contains("--peer-addr"), "{err}");
        let bad = ["2=127.0.0.2:8002/nowhere".to_string()];
        assert!(parse_peers(1, own, None, &bad)
            .unwrap_err()
            .contains("not IP:PORT"));
    }

    #[test]
    fn bad_peer_specs_are_refused_with_a_reason() {
        let own: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        for (spec, reason) in [
            ("2", "not ID=IP:PORT"),
            ("x=127.0.0.1:1", "not a node id"),
            ("2=localhost", "not IP:PORT"),
            ("1=127.0.0.1:9999", "listens on"),
            ("0=127.0.0.1:1", "start at 1"),
        ] {
            let err = parse_peers(1, own, None, &[spec.to_string()]).unwrap_err();
            assert!(err.contains(reason), "{spec}: {err}");
        }
        let twice = ["2=127.0.0.1:1".to_string(), "2=127.0.0.1:2".to_string()];
        assert!(parse_peers(1, own, None, &twice)
            .unwrap_err()
            .contains("twice"));
    }
}
