//! The event loop: one thread, one mio `Poll`, hosting the Raft core.
//!
//! The loop owns the listener, every client and peer connection, the
//! storage, the key/value state machine and the Raft core. Each iteration:
//!
//! 1. wait for socket events or the next timer (the poll timeout);
//! 2. read what arrived, decode lines, hand requests to the core;
//! 3. tick the core for the time that passed;
//! 4. drive the core's `Ready`: send what may go now, write the log and hard
//!    state with one fsync for the whole iteration (group commit), then send
//!    what had to wait for it, apply committed entries and answer clients;
//! 5. flush output.
//!
//! The leader's AppendEntries are written to the sockets before its own fsync
//! (thesis 10.2.1), so followers persist in parallel with the leader.
//!
//! This file is the loop: its events, its timers and flushing. The rest
//! lives beside it, each an `impl Node` with the state it owns:
//!
//! - `clients`: client requests and their replies (`Clients`);
//! - `peers`: links to the other members and reconnects (`Peers`);
//! - `handshake`: the peer handshake, which a connection must pass before
//!   its Raft messages reach the core (`PeerTrust`);
//! - `ready`: the Ready driver (persist, send, apply) and what it holds
//!   while the disk is full (`Unpersisted`);
//! - `snapshots`: taking, streaming and installing snapshots;
//! - `startup`: recovery, start-up and the start banner;
//! - `admission`: which connections are taken, and for how long;
//! - `conn`: one connection, and the table of them (`Conns`);
//! - `tls`: TLS on the node's port and to peers (`Tls`);
//! - `log_limiter`: log lines a remote can cause, limited;
//! - `logins`: AUTHENTICATE and the passwords the leader hashes, on a
//!   worker thread (`Logins`).

mod admission;
mod clients;
mod conn;
mod fds;
mod handshake;
mod leases;
mod log_limiter;
mod logins;
mod membership;
mod peers;
mod ready;
mod snapshots;
mod startup;
mod tls;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use poncho_protocol::NodeId;
use poncho_tls::MaybeTls;

use self::admission::{Admission, Port};
use self::clients::Clients;
use self::conn::{ConnRole, Conns, FIRST_CONN, OUTPUT_DROP_BYTES};
use self::handshake::PeerTrust;
use self::logins::Logins;
use self::peers::Peers;
use self::ready::AlertLog;
use self::ready::Unpersisted;
use self::snapshots::Snapshots;
use self::tls::Tls;
pub use self::tls::TlsSettings;
use crate::datadir::DirLock;
use crate::kv::KvStore;
use crate::peer_auth::ClusterSecret;
use crate::raft::Raft;
use crate::storage::{Storage, StorageError};

pub use self::clients::MAX_KEYS_PER_REPLY;
pub use self::startup::StartError;
pub use self::watch::{MAX_WATCHES, WATCH_BUFFER_BYTES, WATCH_PROGRESS_INTERVAL};

const LISTENER: Token = Token(0);
const PEER_LISTENER: Token = Token(2);
const SIGNALS: Token = Token(1);
/// The password worker's wake-ups (`logins.rs`).
const PASSWORDS: Token = Token(3);

/// Bytes read from one connection per event before serving others.
const READ_BUDGET: usize = 1 << 20;

/// Everything a node needs to start, from the command line.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub host: IpAddr,
    pub port: u16,
    /// The other members.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub data_dir: PathBuf,
    pub bootstrap_leader: bool,
    pub tick: Duration,
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    pub max_entries_per_message: usize,
    pub max_bytes_per_message: usize,
    pub max_inflight_messages: usize,
    pub request_timeout: Duration,
    pub max_line_bytes: usize,
    pub fsync: bool,
    /// Take a snapshot after this many entries are applied since the last.
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, so followers slightly
    /// behind get entries rather than a whole snapshot.
    pub snapshot_keep_tail: u64,
    /// A follower that needs a snapshot is sent one at most this many
    /// entries older than the leader's state: an older one is rebuilt first,
    /// so a new member replays less of the log after it.
    pub snapshot_transfer_max_age: u64,
    /// The changes the history keeps for reads at past revisions: at most
    /// this many, and this many bytes (see `kv::history`).
    pub history_events: usize,
    pub history_bytes: usize,
    /// Watches served at once, unsent output that cancels a synced watch,
    /// and how often an idle watch that asked hears the revision (see
    /// `watch.rs`).
    pub max_watches: usize,
    pub watch_buffer_bytes: usize,
    pub watch_progress: Duration,
    /// WAL segment size: compaction deletes whole segments.
    pub segment_bytes: u64,
    /// Client sessions expire after this much idle log time, and at most
    /// `max_sessions` are kept (least recently used evicted). Part of the
    /// state machine: every node must use the same values.
    pub session_timeout_ms: u64,
    pub max_sessions: usize,
    /// Client connections served at once (see `admission`).
    pub max_clients: usize,
    /// A request line must be complete this long after its first byte.
    pub partial_request_timeout: Duration,
    /// A client connection with nothing asked or pending this long is
    /// closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// What peers prove membership with (`handshake.rs`); `None` with
    /// `insecure`, or for a node without peers.
    pub cluster_secret: Option<ClusterSecret>,
    /// Peers without a secret: allowed only when the operator says so.
    pub insecure: bool,
    /// `--initial-cluster-token`: what a new data directory's cluster id is
    /// derived from (with the members and the secret).
    pub cluster_token: String,
    /// TLS on the node's port (clients and peers), and to peers.
    pub tls: TlsSettings,
    /// `--peer-addr`: a port of its own for peers (else peers use `port`).
    pub peer_addr: Option<SocketAddr>,
    /// `--join`: a brand-new data directory joins a cluster (at this
    /// member) instead of founding one from `peers`.
    pub join: Option<SocketAddr>,
    /// `--force-new-cluster`: restart as the only voter, keeping the data.
    pub force_new_cluster: bool,
    /// `--peer-route`: members dialled at another address than their
    /// configured one.
    pub peer_routes: BTreeMap<NodeId, SocketAddr>,
    /// The members' peer ports, for those that have one (`--peers
    /// ID=CLIENT/PEER`); the others take peers on their client address.
    pub peer_ports: BTreeMap<NodeId, SocketAddr>,
    /// TLS on the peer port and to the peers' ports (`--peer-*` flags);
    /// only with `peer_addr`.
    pub peer_tls: TlsSettings,
}

impl NodeConfig {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The configuration `--peers` describes: this node and its peers,
    /// every one a voter, with their addresses.
    pub fn bootstrap_membership(&self) -> poncho_protocol::Membership {
        let own = poncho_protocol::Member {
            id: self.id,
            addr: self.addr(),
            peer_addr: self.peer_addr,
            learner: false,
        };
        let peers = self
            .peers
            .iter()
            .map(|(&id, &addr)| poncho_protocol::Member {
                id,
                addr,
                peer_addr: self.peer_ports.get(&id).copied(),
                learner: false,
            });
        poncho_protocol::Membership::bootstrap(peers.chain([own]))
    }
}

/// Why a running node stopped: it cannot go on without durable storage.
#[derive(Debug)]
pub enum Fatal {
    Poll(io::Error),
    /// Writing the log or the hard state failed other than for a full disk.
    Storage(StorageError),
    FinalSync(StorageError),
    /// A received snapshot is durable but the log could not be made to
    /// agree with it.
    SnapshotReset {
        index: u64,
        error: StorageError,
    },
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Poll(e) => write!(f, "poll failed: {e}"),
            Fatal::Storage(e) => write!(
                f,
                "cannot write the log or hard state durably: {e}. Stopping rather than guess \
                 what reached the disk (only a full disk is waited out); restarting recovers \
                 from what the disk holds"
            ),
            Fatal::FinalSync(e) => write!(f, "final sync failed: {e}"),
            Fatal::SnapshotReset { index, error } => {
                write!(f, "cannot reset the log for snapshot {index}: {error}")
            }
        }
    }
}

impl std::error::Error for Fatal {}

pub struct Node {
    config: NodeConfig,
    poll: Poll,
    listener: TcpListener,
    /// `--peer-addr`'s listener, if the node has one.
    peer_listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
    conns: Conns,
    admission: Admission,
    peers: Peers,
    clients: Clients,
    raft: Raft,
    storage: Storage,
    kv: KvStore,
    watches: watch::Watches,
    /// When each lease expires, by this node's clock (the leader's counts).
    leases: leases::LeaseClock,
    snapshots: Snapshots,
    trust: PeerTrust,
    tls: Tls,
    logins: Logins,
    /// The core's alerts (a peer asked what breaks Raft), logged limited.
    alerts: AlertLog,
    /// Membership requests waiting, and what the peer links follow.
    members: membership::MemberRequests,
    next_tick: Instant,
    /// Set while the disk is full: what waits to be made durable.
    unpersisted: Option<Unpersisted>,
    shutting_down: bool,
    /// Held for the node's life, which is the process's; declared last so
    /// it is released last.
    _lock: DirLock,
}

impl Node {
    /// Runs until SIGINT or SIGTERM. An error here is fatal for the node
    /// (the disk failed): Raft cannot continue without durable storage.
    pub fn run(&mut self) -> Result<(), Fatal> {
        let mut events = Events::with_capacity(1024);
        self.drive_raft()?;
        self.follow_membership();
        while !self.shutting_down {
            let now = Instant::now();
            let timeout = self.next_deadline().saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Fatal::Poll(e));
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(Port::Client),
                    PEER_LISTENER => self.accept(Port::Peer),
                    PASSWORDS => self.on_passwords_done(Instant::now()),
                    SIGNALS => {
                        for signal in self.signals.pending() {
                            info!("received signal {signal}; shutting down");
                            self.shutting_down = true;
                        }
                    }
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        if event.is_writable() {
                            self.on_writable(key);
                        }
                        if event.is_read_closed() || event.is_error() {
                            self.on_hangup(key);
                            self.on_readable(key, false);
                        } else if event.is_readable() {
                            self.on_readable(key, cfg!(target_os = "linux"));
                        }
                    }
                }
            }
            self.on_timers();
            self.retry_unpersisted()?;
            self.drive_raft()?;
            self.follow_membership();
            self.sync_watches();
            self.flush_dirty();
        }
        self.stop()
    }

    /// After the loop: leaves the disk as the next start wants it, and
    /// writes out what is buffered.
    fn stop(&mut self) -> Result<(), Fatal> {
        if let Some(held) = &self.unpersisted {
            // Cut what the failed write left past the last whole record (it
            // only shrinks a file), so the next start has nothing to repair.
            // What is held was never reported durable, so never
            // acknowledged by this node.
            let _ = self.storage.recover();
            warn!(
                "stopping with the disk still full: {} log entries and {} hard state \
                 were never written",
                held.entries.len(),
                if held.hard_state.is_some() { "a" } else { "no" }
            );
        } else {
            self.storage.sync().map_err(Fatal::FinalSync)?;
        }
        for key in self.conns.keys() {
            if let Some(c) = self.conns.get_mut(key) {
                let _ = c.flush();
            }
        }
        info!("stopped");
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        if self.watches.busy {
            return Instant::now();
        }
        let mut deadline = self.next_tick;
        if let Some(retry) = self.admission.accept_retry {
            deadline = deadline.min(retry);
        }
        if let Some(attempt) = self.peers.next_attempt() {
            deadline = deadline.min(attempt);
        }
        if let Some(due) = self.logins.next_due() {
            deadline = deadline.min(due);
        }
        deadline
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        // Catch up on missed ticks, but never more than an election timeout's
        // worth: after a long stall (a paused process), ticking a hundred
        // times at once would only cause a needless election.
        let mut ticks = 0;
        while self.next_tick <= now {
            if ticks < self.config.election_timeout_ticks {
                self.raft.tick();
                ticks += 1;
            }
            self.next_tick += self.config.tick;
        }
        self.connect_peers(now);
        if self.admission.accept_retry.is_some_and(|t| t <= now) {
            self.accept(Port::Client);
            self.accept(Port::Peer);
        }
        self.scan_connections(now);
        self.expire_requests(now);
        self.lease_timers(now);
        self.expire_member_requests(now);
        self.finish_logins(now);
        self.snapshot_housekeeping();
        self.maybe_bootstrap();
    }

    // ------------------------------------------------------------ sockets

    fn add_conn(
        &mut self,
        stream: MaybeTls<TcpStream>,
        role: ConnRole,
        interest: Interest,
    ) -> Option<usize> {
        match self.conns.add(self.poll.registry(), stream, role, interest) {
            Ok(key) => {
                self.admission.tally(role, true);
                Some(key)
            }
            Err(e) => {
                warn!("cannot register connection: {e}");
                None
            }
        }
    }

    fn close(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.remove(self.poll.registry(), key) else {
            return;
        };
        self.admission.tally(conn.role, false);
        if conn.watches > 0 {
            self.watches.drop_conn(key);
        }
        if let ConnRole::Outbound(peer, _) = conn.role {
            self.peers.link_closed(peer, key, why);
        } else if conn.stream.tls_error().is_some() {
            let from = conn
                .stream
                .get_ref()
                .peer_addr()
                .map_or("?".into(), |a| a.ip().to_string());
            let line = format!("refused a TLS connection from {from}: {why}");
            self.tls.log.warn(&format!("{from} {why}"), &line);
        } else {
            debug!("connection {key} closed: {why}");
        }
    }

    fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.connecting {
            // A nonblocking connect finished, one way or the other.
            match conn.stream.get_ref().take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(key, &e.to_string()),
            }
            if let Err(e) = conn.stream.get_ref().peer_addr() {
                if e.kind() == io::ErrorKind::NotConnected {
                    return; // spurious wake-up: still connecting
                }
                return self.close(key, &e.to_string());
            }
            conn.connecting = false;
            let _ = conn.stream.get_ref().set_nodelay(true);
        }
        self.flush_and_resume(key);
    }

    /// Flushes, and resumes reading a client paused for backpressure once
    /// its output has drained below the mark.
    fn flush_and_resume(&mut self, key: usize) {
        self.flush_conn(key);
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.read_paused && c.wants_input())
        {
            self.on_readable(key, false);
        }
    }

    fn on_readable(&mut self, key: usize, short_read_drains: bool) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.wants_input() {
                conn.read_paused = true;
                return;
            }
            let resumed = std::mem::take(&mut conn.read_paused);
            let more = match self.conns.read(key, READ_BUDGET, short_read_drains) {
                Some(Ok(more)) => more,
                Some(Err(e)) => return self.close(key, &e.to_string()),
                None => return,
            };
            let completed = self.process_lines(key);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.note_input(Instant::now(), completed || resumed);
            if conn.peer_eof && !conn.is_inbound() {
                return self.close(key, "closed by peer");
            }
            if conn.hung_up_logging_in() {
                return self.close(key, "closed by client while logging in");
            }
            if conn.peer_eof {
                // Answer what was asked before the client hung up; reads and
                // writes in flight are answered into a closed connection.
                if !conn.has_unsent() && conn.pending_replies() == 0 {
                    return self.close(key, "closed by client");
                }
                self.conns.mark_dirty(key);
                return;
            }
            if !more {
                return;
            }
        }
    }

    fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.connecting {
            return;
        }
        if let Err(e) = conn.flush() {
            return self.close(key, &e.to_string());
        }
        let drained = !conn.has_unsent();
        // Replies to requests before the oversized line still go out first.
        if drained && (conn.close_after_flush || conn.peer_eof) && conn.pending_replies() == 0 {
            return self.close(key, "done");
        }
        if conn.is_inbound() && conn.output_bytes() > OUTPUT_DROP_BYTES {
            self.close(key, "client is not reading its replies");
        }
    }

    /// Writes out what is buffered for the connections that have replies,
    /// without reading more from any (that waits for `flush_dirty` at the end
    /// of the iteration, so no new input reaches the core mid-Ready).
    fn flush_replies(&mut self) {
        let dirty = self.conns.take_dirty();
        for &key in &dirty {
            self.flush_conn(key);
        }
        // They stay marked for `flush_dirty`, with anything marked meanwhile.
        self.conns.put_back(dirty);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = self.conns.take_dirty();
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            self.flush_and_resume(key);
        }
        self.conns.put_back(dirty);
    }
}
