//! Start-up: lock the data directory, recover the snapshot, the log and the
//! hard state and make them agree, build the core and the state machine,
//! bind the listener and the signals, and print the start banner.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpListener;
use mio::{Interest, Poll};
use poncho_protocol::{Entry, Member, Membership, NodeId};

use super::admission::{self, Admission};
use super::clients::Clients;
use super::conn::Conns;
use super::handshake::PeerTrust;
use super::membership;
use super::peers::Peers;
use super::snapshots::{self, Snapshots};
use super::tls::Tls;
use super::{Node, NodeConfig, LISTENER, PEER_LISTENER, SIGNALS};
use poncho_tls::TlsError;

use crate::datadir::{self, DirLock, LockError};
use crate::kv::KvStore;
use crate::peer_auth::{initial_cluster_id, recorded_cluster_id, ClusterIdError};
use crate::raft::{bootstrap_entry, Config, HardState, Raft};
use crate::storage::{Storage, StorageError, StorageOptions};

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    CreateDir {
        dir: PathBuf,
        error: io::Error,
    },
    Lock(LockError),
    /// The snapshots could not be read, or the newest valid one loaded.
    Snapshots(snapshots::Error),
    OpenStorage {
        dir: PathBuf,
        error: StorageError,
    },
    /// A snapshot is there but the hard state is not: the term and vote
    /// this node reached are unknown.
    MissingHardState {
        dir: PathBuf,
        path: PathBuf,
        index: u64,
        term: u64,
    },
    /// The log starts after the snapshot ends: committed entries are lost.
    LogGap {
        first_index: u64,
        snapshot_index: u64,
    },
    ResetLog(StorageError),
    /// The core refused its configuration.
    Raft(String),
    /// Peers, and neither a cluster secret nor `--insecure`.
    NoPeerAuth,
    /// The cluster id could not be read or recorded.
    ClusterId(ClusterIdError),
    /// The configuration to start from could not be read or recorded.
    Membership(String),
    /// Writing a new cluster's first entry, or `--force-new-cluster`'s,
    /// failed.
    WriteLog(StorageError),
    /// A TLS flag's file could not be used.
    Tls(TlsError),
    /// Setting up the poll, the listener or the signals failed (`what`).
    Socket {
        what: String,
        error: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::CreateDir { dir, error } => {
                write!(f, "cannot create data directory {}: {error}", dir.display())
            }
            StartError::Lock(e) => write!(f, "{e}"),
            StartError::Snapshots(e) => write!(f, "{e}"),
            StartError::Raft(e) => write!(f, "{e}"),
            StartError::OpenStorage { dir, error } => {
                write!(f, "cannot open data directory {}: {error}", dir.display())
            }
            StartError::MissingHardState {
                dir,
                path,
                index,
                term,
            } => write!(
                f,
                "cannot open data directory {}: {} is missing, but snapshot {index} \
                 (term {term}) is there: the term and vote it held are unknown, and \
                 starting without them could vote twice in a term; restore the file, or \
                 move the whole data directory aside and resync this node",
                dir.display(),
                path.display()
            ),
            StartError::LogGap {
                first_index,
                snapshot_index,
            } => write!(
                f,
                "the log starts at index {first_index} but the newest valid snapshot ends at \
                 {snapshot_index}: entries in between are lost; restore this node from a \
                 healthy member"
            ),
            StartError::ResetLog(e) => write!(f, "cannot reset the log: {e}"),
            StartError::NoPeerAuth => write!(
                f,
                "this node has peers and no way to tell them from impostors: any program that \
                 can reach its port could speak for a member and rewrite the cluster's data. \
                 Give every member the same --cluster-secret-file (make one with `openssl rand \
                 -hex 32 > FILE; chmod 600 FILE`), or a peer port with client certificates \
                 of the cluster's peer CA (--peer-addr, --peer-cert-file, --peer-key-file, \
                 --peer-trusted-ca-file, --peer-client-cert-auth), or accept the risk with \
                 --insecure"
            ),
            StartError::ClusterId(e) => write!(f, "{e}"),
            StartError::Membership(e) => write!(f, "{e}"),
            StartError::WriteLog(e) => write!(f, "cannot write the log: {e}"),
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Socket { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What recovery found on disk, made to agree.
struct Recovered {
    lock: DirLock,
    storage: Storage,
    snapshots: Snapshots,
    /// The latest snapshot's state, if there is one.
    kv: Option<KvStore>,
    hard_state: HardState,
    /// (index, term) of the latest snapshot's last entry; (0, 0) if none.
    snapshot: (u64, u64),
    /// The log after the snapshot.
    entries: Vec<Entry>,
}

/// The sockets the loop polls.
struct Bound {
    poll: Poll,
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
}

impl Node {
    /// Opens storage, recovers, binds the listener. Prints the startup banner.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        let (tls, warnings) = Tls::new(
            &config.tls,
            &config.peer_tls,
            !config.peers.is_empty(),
            config.peer_addr.is_some(),
        )
        .map_err(StartError::Tls)?;
        let proven = config.cluster_secret.is_some() || tls.peer_mtls;
        let clustered = !config.peers.is_empty() || config.join.is_some();
        if clustered && !proven && !config.insecure {
            return Err(StartError::NoPeerAuth);
        }
        for w in warnings {
            warn!("{w}");
        }
        let mut recovered = recover(&config)?;
        let base = starting_membership(&config, &mut recovered)?;
        if config.force_new_cluster {
            force_new_cluster(&config, &mut recovered, &base)?;
        }
        let raft = Raft::with_snapshot(
            raft_config(&config),
            recovered.hard_state,
            recovered.snapshot,
            base,
            recovered.entries,
            seed(config.id),
        )
        .map_err(StartError::Raft)?;
        let kv = state_machine(recovered.kv, &config);
        let admission = Admission::new(&config, Instant::now());
        let bound = bind(&config)?;
        // Only once the node can start for sure: a first start that fails
        // (a mistyped address, say) must not fix the cluster id for good.
        let cluster_id = cluster_id(&config)?;
        let local = bound
            .listener
            .local_addr()
            .map_err(|error| StartError::Socket {
                what: "listener address".into(),
                error,
            })?;
        print_banner(&config, local);
        let now = Instant::now();
        let mut config = config;
        let watches = super::watch::Watches::new(
            config.max_watches,
            config.watch_buffer_bytes,
            config.watch_progress,
        );
        config.port = local.port();
        let logins =
            super::Logins::start(bound.poll.registry(), super::PASSWORDS).map_err(|error| {
                StartError::Socket {
                    what: "password worker".into(),
                    error,
                }
            })?;
        Ok(Node {
            logins,
            trust: PeerTrust::new(
                cluster_id,
                config.cluster_secret.clone(),
                config.peer_addr.is_some(),
            ),
            tls,
            alerts: Default::default(),
            members: Default::default(),
            next_tick: now + config.tick,
            conns: Conns::new(config.max_line_bytes),
            peers: Peers::new(
                raft.membership(),
                config.id,
                config.peer_routes.clone(),
                config.bootstrap_leader,
                now,
            ),
            clients: Clients::new(now),
            config,
            poll: bound.poll,
            listener: bound.listener,
            peer_listener: bound.peer_listener,
            signals: bound.signals,
            admission,
            raft,
            storage: recovered.storage,
            kv,
            watches,
            leases: Default::default(),
            snapshots: recovered.snapshots,
            unpersisted: None,
            shutting_down: false,
            _lock: recovered.lock,
        })
    }
}

/// Locks the data directory and recovers the snapshot, the log and the hard
/// state, made to agree.
fn recover(config: &NodeConfig) -> Result<Recovered, StartError> {
    let dir = &config.data_dir;
    // Before anything in it is read or repaired: a second server on the
    // same directory would interleave its writes with ours.
    datadir::create_dir_durable(dir, config.fsync).map_err(|error| StartError::CreateDir {
        dir: dir.clone(),
        error,
    })?;
    if let Some(w) = datadir::access_warning(dir) {
        warn!("{w}");
    }
    let lock = DirLock::acquire(dir).map_err(StartError::Lock)?;
    let (snapshots, kv, warnings) =
        Snapshots::recover(dir, config.fsync).map_err(StartError::Snapshots)?;
    for w in &warnings {
        warn!("recovery: {w}");
    }
    let options = StorageOptions {
        fsync: config.fsync,
        segment_bytes: config.segment_bytes,
    };
    let (mut storage, recovered) =
        Storage::open(dir, options).map_err(|error| StartError::OpenStorage {
            dir: dir.clone(),
            error,
        })?;
    for w in &recovered.warnings {
        warn!("recovery: {w}");
    }
    let (index, term) = snapshots
        .latest
        .as_ref()
        .map_or((0, 0), |(m, _)| (m.index, m.term));
    // Storage refuses a log without its hard state; a snapshot without
    // one is as telling (this node reached a term) but only we see both.
    let hard_state = match recovered.hard_state {
        Some(hs) => hs,
        None if index > 0 => {
            return Err(StartError::MissingHardState {
                dir: dir.clone(),
                path: storage.hard_state_path().to_path_buf(),
                index,
                term,
            })
        }
        None => HardState::default(),
    };
    let entries = reconcile_log(
        &mut storage,
        recovered.first_index,
        recovered.entries,
        index,
        term,
    )?;
    info!(
        "recovered term {} vote {:?}, snapshot through {index}, {} log entries after it, from {}",
        hard_state.term,
        hard_state.vote,
        entries.len(),
        dir.display()
    );
    Ok(Recovered {
        lock,
        storage,
        snapshots,
        kv,
        hard_state,
        snapshot: (index, term),
        entries,
    })
}

/// The configuration the log starts from (see `node/membership.rs`): the
/// snapshot's, or the one recorded in the data directory, recorded first
/// if this is its first start: none for a node that joins, none for a
/// founding member either, which writes the first configuration (from
/// `--peers`) as its log's first entry, and `--peers`' for a data
/// directory from before configurations were logged.
fn starting_membership(
    config: &NodeConfig,
    recovered: &mut Recovered,
) -> Result<Membership, StartError> {
    let dir = &config.data_dir;
    let base = match membership::read_base(dir).map_err(StartError::Membership)? {
        Some(base) => base,
        None => {
            let fresh = recovered.snapshot.0 == 0
                && recovered.entries.is_empty()
                && recovered.hard_state == HardState::default();
            let base = if fresh && config.join.is_some() {
                Membership::default()
            } else if fresh {
                let entry = bootstrap_entry(&config.bootstrap_membership());
                write_log(recovered, HardState::default(), entry)?;
                Membership::default()
            } else {
                config.bootstrap_membership()
            };
            membership::write_base(dir, &base, config.fsync).map_err(StartError::Membership)?;
            base
        }
    };
    let snapshot = recovered.snapshots.latest.as_ref();
    Ok(snapshot
        .and_then(|(meta, _)| meta.membership.clone())
        .unwrap_or(base))
}

/// Makes `entry` (and `hard_state` first) durable in the recovered log.
fn write_log(
    recovered: &mut Recovered,
    hard_state: HardState,
    entry: Entry,
) -> Result<(), StartError> {
    let storage = &mut recovered.storage;
    storage
        .save_hard_state(hard_state)
        .and_then(|()| storage.append(std::slice::from_ref(&entry)))
        .and_then(|()| storage.sync())
        .map_err(StartError::WriteLog)?;
    recovered.hard_state = hard_state;
    recovered.entries.push(entry);
    Ok(())
}

/// `--force-new-cluster`: this node becomes its cluster's only voter.
fn force_new_cluster(
    config: &NodeConfig,
    recovered: &mut Recovered,
    base: &Membership,
) -> Result<(), StartError> {
    let latest = membership::latest_in(&recovered.entries, base).map_err(StartError::Membership)?;
    let last = recovered
        .entries
        .last()
        .map_or(recovered.snapshot, |e| (e.index, e.term));
    let own = Member {
        id: config.id,
        addr: config.addr(),
        peer_addr: config.peer_addr,
        learner: false,
    };
    let Some((entry, hard_state, forced)) =
        membership::forced_configuration(&latest, own, recovered.hard_state, last)
    else {
        info!("--force-new-cluster: this node is its cluster's only voter already");
        return Ok(());
    };
    warn!(
        "--force-new-cluster: node {} is now the only voter (entry {}, term {}); removed: {:?}. \
         Grow the cluster again with `member add`",
        config.id, entry.index, entry.term, forced.removed
    );
    write_log(recovered, hard_state, entry)
}

/// The cluster id recorded in the data directory, recorded first if this is
/// a new one (derived from the token and the members); `None` for a node
/// that joins and has not met its cluster yet (its first proven peer tells
/// it).
fn cluster_id(config: &NodeConfig) -> Result<Option<String>, StartError> {
    let recorded = config
        .data_dir
        .join(crate::peer_auth::CLUSTER_ID_FILE)
        .exists();
    if config.join.is_some() && !recorded {
        return Ok(None);
    }
    let members: BTreeSet<NodeId> = config.peers.keys().copied().chain([config.id]).collect();
    let initial = initial_cluster_id(&config.cluster_token, &members);
    let (id, new) = recorded_cluster_id(&config.data_dir, &initial, config.fsync)
        .map_err(StartError::ClusterId)?;
    if new {
        info!("cluster id {id}, recorded in {}", config.data_dir.display());
    } else if id != initial {
        info!(
            "this data directory belongs to cluster {id}; the token and members given would \
                 name a new cluster {initial}, and only name a new data directory's"
        );
    }
    Ok(Some(id))
}

/// Makes the recovered log continue the snapshot through (`index`, `term`):
/// entries the snapshot covers are dropped; a log that does not hold the
/// snapshot's last entry (a crash between installing a snapshot and
/// resetting the log) is discarded. A log that starts after the snapshot
/// ends has lost committed entries: that is fatal.
fn reconcile_log(
    storage: &mut Storage,
    first_index: u64,
    entries: Vec<Entry>,
    index: u64,
    term: u64,
) -> Result<Vec<Entry>, StartError> {
    if first_index > index + 1 {
        return Err(StartError::LogGap {
            first_index,
            snapshot_index: index,
        });
    }
    let holds_snapshot_end = index == 0
        || first_index == index + 1
        || entries.iter().any(|e| e.index == index && e.term == term);
    if !holds_snapshot_end {
        warn!("recovery: the log does not continue snapshot {index} (term {term}); discarding it");
        storage.reset(index + 1).map_err(StartError::ResetLog)?;
        return Ok(Vec::new());
    }
    Ok(entries.into_iter().filter(|e| e.index > index).collect())
}

/// The core's configuration, from the node's.
fn raft_config(config: &NodeConfig) -> Config {
    let mut raft_config = Config::new(config.id);
    raft_config.election_timeout_ticks = config.election_timeout_ticks;
    raft_config.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
    raft_config.max_entries_per_message = config.max_entries_per_message;
    raft_config.max_bytes_per_message = config.max_bytes_per_message;
    raft_config.max_inflight_messages = config.max_inflight_messages;
    // The hint is carried out by the loop once a quorum of peers is
    // connected (`maybe_bootstrap`): vote requests sent before then
    // would be dropped and the first election left to chance.
    raft_config.bootstrap_leader = false;
    // A stalled transfer is retried after about two election timeouts.
    raft_config.snapshot_stall_ticks = 2 * config.election_timeout_ticks.max(1) * 2;
    raft_config
}

/// The only randomness the core gets: a seed, different per process.
fn seed(id: NodeId) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ id
}

/// The state machine: the snapshot's if there is one, else an empty one.
fn state_machine(restored: Option<KvStore>, config: &NodeConfig) -> KvStore {
    let mut kv = match restored {
        Some(kv) => kv,
        None => KvStore::with_session_limits(config.session_timeout_ms, config.max_sessions),
    };
    kv.set_history_limits(config.history_events, config.history_bytes);
    // A snapshot keeps the session limits it was taken with: they are part
    // of the state every node must agree on (a new store has the flags').
    let (timeout_ms, max_sessions) = kv.session_limits();
    if (timeout_ms, max_sessions) != (config.session_timeout_ms, config.max_sessions) {
        warn!(
            "the snapshot's session limits ({timeout_ms} ms, {max_sessions} \
             sessions) differ from the flags ({} ms, {} sessions); keeping the \
             snapshot's",
            config.session_timeout_ms, config.max_sessions
        );
    }
    kv
}

/// Creates the poll, and binds and registers the listener and the signals.
fn bind(config: &NodeConfig) -> Result<Bound, StartError> {
    let socket = |what: String| move |error| StartError::Socket { what, error };
    let poll = Poll::new().map_err(socket("cannot create poll".into()))?;
    let mut listener = admission::listen(config.addr())
        .map_err(socket(format!("cannot listen on {}", config.addr())))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(socket("cannot register listener".into()))?;
    let peer_listener = match config.peer_addr {
        None => None,
        Some(addr) => {
            let mut l =
                admission::listen(addr).map_err(socket(format!("cannot listen on {addr}")))?;
            poll.registry()
                .register(&mut l, PEER_LISTENER, Interest::READABLE)
                .map_err(socket("cannot register the peer listener".into()))?;
            Some(l)
        }
    };
    let mut signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(socket("cannot install signal handlers".into()))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(socket("cannot register signals".into()))?;
    Ok(Bound {
        poll,
        listener,
        peer_listener,
        signals,
    })
}

/// The start banner on stdout (tests and scripts read the port from it).
fn print_banner(config: &NodeConfig, local: std::net::SocketAddr) {
    println!(
        "TCP Listener on address: {}, port: {}",
        local.ip(),
        local.port()
    );
    println!("Node id: {}", config.id);
    let peer_list: Vec<String> = config
        .peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    println!(
        "Peers: {}",
        if peer_list.is_empty() {
            "none (single-node cluster)".to_string()
        } else {
            peer_list.join(",")
        }
    );
    println!("Data directory: {}", config.data_dir.display());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::node::TlsSettings;
    use crate::snapshot::SnapshotMeta;

    fn config(data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            id: 1,
            host: "127.0.0.1".parse().unwrap(),
            port: 0,
            peers: BTreeMap::new(),
            data_dir,
            bootstrap_leader: false,
            tick: Duration::from_millis(10),
            election_timeout_ticks: 30,
            heartbeat_interval_ticks: 5,
            max_entries_per_message: 64,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 8,
            request_timeout: Duration::from_secs(1),
            max_line_bytes: 1 << 20,
            fsync: false,
            snapshot_entries: 1_000,
            snapshot_keep_tail: 100,
            snapshot_transfer_max_age: 100_000,
            history_events: crate::kv::HISTORY_EVENTS,
            history_bytes: crate::kv::HISTORY_BYTES,
            max_watches: crate::node::watch::MAX_WATCHES,
            watch_buffer_bytes: crate::node::watch::WATCH_BUFFER_BYTES,
            watch_progress: crate::node::watch::WATCH_PROGRESS_INTERVAL,
            segment_bytes: 1 << 20,
            session_timeout_ms: crate::kv::SESSION_TIMEOUT_MS,
            max_sessions: crate::kv::MAX_SESSIONS,
            max_clients: 100,
            partial_request_timeout: Duration::from_secs(30),
            idle_timeout: None,
            cluster_secret: None,
            insecure: false,
            cluster_token: crate::peer_auth::DEFAULT_CLUSTER_TOKEN.into(),
            tls: TlsSettings::default(),
            peer_addr: None,
            join: None,
            force_new_cluster: false,
            peer_routes: BTreeMap::new(),
            peer_ports: BTreeMap::new(),
            peer_tls: TlsSettings::default(),
        }
    }

    #[test]
    fn a_first_start_that_cannot_bind_records_no_cluster_id() {
        let dir = tempfile::TempDir::new().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = config(dir.path().join("n"));
        c.port = taken.local_addr().unwrap().port();
        let err = Node::start(c.clone()).err().expect("the port is taken");
        assert!(matches!(err, StartError::Socket { .. }), "{err}");
        let id_file = c.data_dir.join(crate::peer_auth::CLUSTER_ID_FILE);
        assert!(
            !id_file.exists(),
            "a failed first start fixed the cluster id"
        );
        drop(taken);
        c.port = 0;
        assert!(Node::start(c).is_ok());
        assert!(id_file.exists());
    }

    #[test]
    fn a_node_with_peers_and_no_secret_refuses_to_start_unless_insecure() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut c = config(dir.path().join("n"));
        c.peers.insert(2, "127.0.0.1:1".parse().unwrap());
        let err = Node::start(c.clone()).err().expect("refused");
        assert!(matches!(err, StartError::NoPeerAuth), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
        c.insecure = true;
        assert!(Node::start(c).is_ok());
    }

    #[test]
    fn a_snapshot_without_its_hard_state_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let meta = SnapshotMeta {
            index: 10,
            term: 2,
            membership: None,
        };
        let mut writer = crate::snapshot::SnapshotWriter::create(dir.path(), &meta, false).unwrap();
        KvStore::default()
            .snapshot()
            .write_lines(|line| writer.write_line(line).map_err(io::Error::other))
            .unwrap();
        writer.finish().unwrap();
        let err = Node::start(config(dir.path().to_path_buf()))
            .err()
            .expect("a snapshot without a hard state must not start");
        assert!(
            matches!(
                err,
                StartError::MissingHardState {
                    index: 10,
                    term: 2,
                    ..
                }
            ),
            "{err}"
        );
        let hard_state = dir.path().join("hardstate");
        let err = err.to_string();
        assert!(
            err.contains(&format!(
                "{} is missing, but snapshot 10",
                hard_state.display()
            )),
            "{err}"
        );
        // An empty directory is a new node, and starts.
        let empty = tempfile::TempDir::new().unwrap();
        assert!(Node::start(config(empty.path().to_path_buf())).is_ok());
    }
}
