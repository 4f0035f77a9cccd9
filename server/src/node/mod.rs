//! The event loop: one thread, one mio `Poll`, hosting the Raft core.
//!
//! The loop owns the listener, every client and peer connection (in a slab),
//! the storage, the key/value state machine and the Raft core. Each iteration:
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

mod admission;
mod conn;
mod fds;
mod snapshots;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use poncho_protocol::{
    decode_request, encode_error, encode_peer, encode_reply, AppendEntriesReply, ClientRequest,
    Entry, ErrorCode, ErrorReply, FollowerProgress, GetReply, HealthcheckReply, KeysReply,
    MemberStatus, NodeId, RaftMessage, Request, RequestVoteReply, StatusReply,
};
use slab::Slab;

use self::admission::Admission;
use self::conn::{Conn, ConnRole, OUTPUT_DROP_BYTES, READ_CHUNK};
use self::snapshots::{Received, Snapshots};
use crate::datadir::{self, DirLock};
use crate::kv::{ApplyResult, Command, KvStore};
use crate::raft::{
    Config, HardState, Outbound, ProgressState, ProposeError, Raft, Ready, Restored, Role,
};
use crate::snapshot::SnapshotMeta;
use crate::storage::{Health, Storage, StorageError, StorageOptions};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: usize = 2;

/// A slow peer's unsent messages beyond this are dropped (Raft resends).
const PEER_OUTPUT_LIMIT: usize = 64 << 20;
/// Bytes read from one connection per event before serving others.
const READ_BUDGET: usize = 1 << 20;
/// Most keys one KEYS reply lists.
pub const MAX_KEYS_PER_REPLY: usize = 10_000;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
/// After a write found the disk full, the first retry waits this long; each
/// failed retry doubles the wait, up to `NO_SPACE_RETRY_MAX`.
const NO_SPACE_RETRY_MIN: Duration = Duration::from_millis(100);
const NO_SPACE_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often the log repeats that the disk is still full.
const NO_SPACE_REMINDER: Duration = Duration::from_secs(30);
/// Votes and acknowledgements held while the disk is full, newest kept: they
/// may only leave once durable, and Raft resends what is dropped.
const MAX_HELD_MESSAGES: usize = 4096;
/// After writing a snapshot failed, the next attempt waits this long.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

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
}

impl NodeConfig {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

struct PeerLink {
    addr: SocketAddr,
    /// Slab key of the outbound connection, when there is one.
    conn: Option<usize>,
    next_attempt: Instant,
    backoff: Duration,
    /// Whether we logged this peer as unreachable (log once, not per retry).
    reported_down: bool,
    /// When the current connection was established, until it has stayed up
    /// for `STABLE_CONNECTION`: only then is the backoff reset and the peer
    /// logged as reachable, so a peer (or a firewall, or a proxy) that
    /// accepts and at once closes does not get a reconnect storm.
    connected_at: Option<Instant>,
}

/// Where a reply must go: connection, its generation, and the reply slot.
#[derive(Clone, Copy)]
struct ReplyTo {
    conn: usize,
    generation: u64,
    slot: u64,
    req_id: Option<u64>,
}

struct PendingWrite {
    to: ReplyTo,
    term: u64,
    deadline: Instant,
}

/// What the core handed out to make durable since a write found the disk
/// full, retried until it is written. Readies are merged in the order they
/// came: the newest hard state, and entries as storage would store them (a
/// later batch replaces what it overlaps). Nothing here is reported
/// persisted, and none of `messages` leaves, until the write succeeds.
///
/// Bounded without a limit of its own: a leader refuses proposals while it
/// cannot write, and a follower only holds what its leader sent and got no
/// acknowledgement for (the core's in-flight window).
struct Unpersisted {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    messages: VecDeque<Outbound>,
    /// Held messages dropped at `MAX_HELD_MESSAGES`.
    dropped: u64,
    /// The latest error, for STATUS and the log.
    error: String,
    since: Instant,
    attempts: u64,
    next_retry: Instant,
    backoff: Duration,
    next_reminder: Instant,
}

impl Unpersisted {
    fn new(error: String, now: Instant) -> Unpersisted {
        Unpersisted {
            hard_state: None,
            entries: Vec::new(),
            messages: VecDeque::new(),
            dropped: 0,
            error,
            since: now,
            attempts: 0,
            next_retry: now + NO_SPACE_RETRY_MIN,
            backoff: NO_SPACE_RETRY_MIN,
            next_reminder: now + NO_SPACE_REMINDER,
        }
    }

    /// As the core does when it enters a term (`Raft::enter_term`): a held
    /// message of a term older than the newest hard state's is dropped. It
    /// may acknowledge entries that a later batch merged here replaced, so
    /// once the write lands the disk would no longer back it.
    fn merge(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        messages: Vec<Outbound>,
    ) {
        if let Some(hs) = hard_state {
            self.hard_state = hard_state;
            self.messages.retain(|out| out.message.term() >= hs.term);
        }
        if let Some(first) = entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(entries);
        }
        self.messages.extend(messages);
        while self.messages.len() > MAX_HELD_MESSAGES {
            self.messages.pop_front();
            self.dropped += 1;
        }
    }
}

enum ReadKind {
    Get(String),
    Keys(String),
}

struct PendingRead {
    to: ReplyTo,
    kind: ReadKind,
    deadline: Instant,
    /// Serve only once this index is applied (read-your-writes on a connection).
    min_index: u64,
}

pub struct Node {
    config: NodeConfig,
    poll: Poll,
    listener: TcpListener,
    signals: signal_hook_mio::v1_0::Signals,
    conns: Slab<Conn>,
    admission: Admission,
    next_generation: u64,
    peers: BTreeMap<NodeId, PeerLink>,
    raft: Raft,
    storage: Storage,
    kv: KvStore,
    snapshots: Snapshots,
    pending_writes: HashMap<u64, PendingWrite>,
    pending_reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for an earlier write of their connection.
    deferred_reads: Vec<PendingRead>,
    next_read_id: u64,
    next_tick: Instant,
    next_expiry_scan: Instant,
    /// Connections with output to flush or to close at the end of the iteration.
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    read_buffer: Box<[u8]>,
    /// The `is_leader` hint, not yet acted on.
    bootstrap_pending: bool,
    /// Set while the disk is full: what waits to be made durable.
    unpersisted: Option<Unpersisted>,
    /// No new snapshot is started before this (one failed to be written).
    snapshot_retry_at: Option<Instant>,
    shutting_down: bool,
    /// Held for the node's life, which is the process's; declared last so
    /// it is released last.
    _lock: DirLock,
}

impl Node {
    /// Opens storage, recovers, binds the listener. Prints the startup banner.
    pub fn start(config: NodeConfig) -> Result<Node, String> {
        let dir = &config.data_dir;
        // Before anything in it is read or repaired: a second server on the
        // same directory would interleave its writes with ours.
        datadir::create_dir_durable(dir, config.fsync)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let lock = DirLock::acquire(dir).map_err(|e| e.to_string())?;
        let (snapshots, restored_kv, warnings) = Snapshots::recover(dir, config.fsync)?;
        for w in &warnings {
            warn!("recovery: {w}");
        }
        let options = StorageOptions {
            fsync: config.fsync,
            segment_bytes: config.segment_bytes,
        };
        let (mut storage, recovered) = Storage::open(dir, options)
            .map_err(|e| format!("cannot open data directory {}: {e}", dir.display()))?;
        for w in &recovered.warnings {
            warn!("recovery: {w}");
        }
        let (snap_index, snap_term) = snapshots
            .latest
            .as_ref()
            .map_or((0, 0), |(m, _)| (m.index, m.term));
        // Storage refuses a log without its hard state; a snapshot without
        // one is as telling (this node reached a term) but only we see both.
        let hard_state = match recovered.hard_state {
            Some(hs) => hs,
            None if snap_index > 0 => {
                return Err(format!(
                    "cannot open data directory {}: {} is missing, but snapshot {snap_index} \
                     (term {snap_term}) is there: the term and vote it held are unknown, and \
                     starting without them could vote twice in a term; restore the file, or \
                     move the whole data directory aside and resync this node",
                    dir.display(),
                    storage.hard_state_path().display()
                ))
            }
            None => HardState::default(),
        };
        let entries = reconcile_log(
            &mut storage,
            recovered.first_index,
            recovered.entries,
            snap_index,
            snap_term,
        )?;
        info!(
            "recovered term {} vote {:?}, snapshot through {snap_index}, {} log entries after it, from {}",
            hard_state.term,
            hard_state.vote,
            entries.len(),
            dir.display()
        );
        let mut members: Vec<NodeId> = config.peers.keys().copied().collect();
        members.push(config.id);
        let mut raft_config = Config::new(config.id, members);
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
        // The only randomness the core gets: a seed, different per process.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ config.id;
        let raft = Raft::with_snapshot(
            raft_config,
            hard_state,
            (snap_index, snap_term),
            entries,
            seed,
        )?;
        let kv = match restored_kv {
            // A snapshot keeps the session limits it was taken with: they are
            // part of the state every node must agree on.
            Some(kv) => {
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
            None => KvStore::with_session_limits(config.session_timeout_ms, config.max_sessions),
        };

        let admission = Admission::new(&config, Instant::now());
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let mut listener = admission::listen(config.addr())
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr()))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("cannot register listener: {e}"))?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot register signals: {e}"))?;

        let local = listener
            .local_addr()
            .map_err(|e| format!("listener address: {e}"))?;
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

        let now = Instant::now();
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| {
                (
                    id,
                    PeerLink {
                        addr,
                        conn: None,
                        next_attempt: now,
                        backoff: RECONNECT_MIN,
                        reported_down: false,
                        connected_at: None,
                    },
                )
            })
            .collect();
        let bootstrap = config.bootstrap_leader;
        let mut config = config;
        config.port = local.port();
        Ok(Node {
            next_tick: now + config.tick,
            next_expiry_scan: now,
            config,
            poll,
            listener,
            signals,
            conns: Slab::new(),
            admission,
            next_generation: 0,
            peers,
            raft,
            storage,
            kv,
            snapshots,
            pending_writes: HashMap::new(),
            pending_reads: HashMap::new(),
            deferred_reads: Vec::new(),
            next_read_id: 1,
            dirty: Vec::new(),
            scratch: Vec::new(),
            read_buffer: vec![0; READ_CHUNK].into_boxed_slice(),
            bootstrap_pending: bootstrap,
            unpersisted: None,
            snapshot_retry_at: None,
            shutting_down: false,
            _lock: lock,
        })
    }

    /// Runs until SIGINT or SIGTERM. An error here is fatal for the node
    /// (the disk failed): Raft cannot continue without durable storage.
    pub fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        self.drive_raft()?;
        while !self.shutting_down {
            let now = Instant::now();
            let timeout = self.next_deadline().saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
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
            self.flush_dirty();
        }
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
            self.storage
                .sync()
                .map_err(|e| format!("final sync failed: {e}"))?;
        }
        for key in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            if let Some(c) = self.conns.get_mut(key) {
                let _ = c.flush();
            }
        }
        info!("stopped");
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_tick;
        if let Some(retry) = self.admission.accept_retry {
            deadline = deadline.min(retry);
        }
        for p in self.peers.values() {
            if p.conn.is_none() {
                deadline = deadline.min(p.next_attempt);
            }
        }
        deadline
    }

    // ------------------------------------------------------------ sockets

    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        role: ConnRole,
        interest: Interest,
    ) -> Option<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(key + FIRST_CONN), interest)
        {
            warn!("cannot register connection: {e}");
            return None;
        }
        self.next_generation += 1;
        entry.insert(Conn::new(
            stream,
            role,
            self.next_generation,
            self.config.max_line_bytes,
            Instant::now(),
        ));
        self.admission.tally(role, true);
        Some(key)
    }

    fn close(&mut self, key: usize, why: &str) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.admission.tally(conn.role, false);
        if let ConnRole::Outbound(peer) = conn.role {
            if let Some(link) = self.peers.get_mut(&peer) {
                if link.conn == Some(key) {
                    link.conn = None;
                    link.connected_at = None;
                    link.next_attempt = Instant::now() + link.backoff;
                    link.backoff = (link.backoff * 2).min(RECONNECT_MAX);
                    if !link.reported_down {
                        link.reported_down = true;
                        info!("peer {peer} at {} unreachable: {why}", link.addr);
                    }
                }
            }
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
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(key, &e.to_string()),
            }
            if let Err(e) = conn.stream.peer_addr() {
                if e.kind() == io::ErrorKind::NotConnected {
                    return; // spurious wake-up: still connecting
                }
                return self.close(key, &e.to_string());
            }
            conn.connecting = false;
            let _ = conn.stream.set_nodelay(true);
            if let ConnRole::Outbound(peer) = conn.role {
                if let Some(link) = self.peers.get_mut(&peer) {
                    link.connected_at = Some(Instant::now());
                }
            }
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
            if let ConnRole::Outbound(_) = conn.role {
                // Peers never write to our outbound connections; a read
                // event here means the peer closed it.
                let mut probe = [0u8; 1];
                match io::Read::read(&mut conn.stream, &mut probe) {
                    Ok(0) => return self.close(key, "closed by peer"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => return self.close(key, &e.to_string()),
                    Ok(_) => continue,
                }
            }
            if !conn.wants_input() {
                conn.read_paused = true;
                return;
            }
            let resumed = std::mem::take(&mut conn.read_paused);
            let more = match conn.read_some(READ_BUDGET, &mut self.read_buffer, short_read_drains) {
                Ok(more) => more,
                Err(e) => return self.close(key, &e.to_string()),
            };
            let completed = self.process_lines(key);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.note_input(Instant::now(), completed || resumed);
            if conn.peer_eof {
                // Answer what was asked before the client hung up; reads and
                // writes in flight are answered into a closed connection.
                if conn.output_bytes() == 0 && conn.pending_replies() == 0 {
                    return self.close(key, "closed by client");
                }
                self.mark_dirty(key);
                return;
            }
            if !more {
                return;
            }
        }
    }

    /// Handles the complete lines buffered; returns whether there were any.
    fn process_lines(&mut self, key: usize) -> bool {
        let mut lines = Vec::new();
        {
            let Some(conn) = self.conns.get_mut(key) else {
                return false;
            };
            while let Some(line) = conn.input.next_line() {
                match line {
                    Ok(bytes) => lines.push(Ok(bytes.to_vec())),
                    Err(too_long) => {
                        lines.push(Err(too_long.limit));
                        break;
                    }
                }
            }
        }
        let completed = !lines.is_empty();
        for line in lines {
            if self.conns.get(key).is_none_or(|c| c.close_after_flush) {
                break; // refused: what followed is not answered
            }
            match line {
                Ok(bytes) => self.handle_line(key, &bytes),
                Err(limit) => {
                    let error = ErrorReply::new(
                        ErrorCode::MessageTooLarge,
                        format!("line longer than {limit} bytes; closing the connection"),
                    );
                    self.reply_error_now(key, None, &error);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.close_after_flush = true;
                    }
                    return true;
                }
            }
        }
        self.mark_dirty(key);
        completed
    }

    fn handle_line(&mut self, key: usize, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return; // blank lines (a human at nc pressing enter) are ignored
        }
        let request = decode_request(line);
        let from = match &request {
            Ok(Request::Peer {
                src_id: Some(id), ..
            }) if self.peers.contains_key(id) => Some(*id),
            _ => None,
        };
        if !self.identify(key, from) {
            return;
        }
        match request {
            Err(e) => self.reply_error_now(key, e.req_id, &e.error),
            Ok(Request::Peer { src_id, message }) => self.handle_peer_message(key, src_id, message),
            Ok(Request::Client { req_id, request }) => {
                self.handle_client_request(key, req_id, request)
            }
        }
    }

    fn handle_peer_message(&mut self, key: usize, src_id: Option<NodeId>, message: RaftMessage) {
        match src_id {
            Some(id) if self.peers.contains_key(&id) => self.raft.step(id, message),
            _ => {
                // A probe (the shell's `append` / `vote`, or a node that is
                // not a member): answer with our term, rejected. The core
                // never sees it, so it changes nothing.
                let term = self.raft.term();
                let reply = match message {
                    RaftMessage::AppendEntries(m) => {
                        RaftMessage::AppendEntriesReply(AppendEntriesReply {
                            term,
                            request_term: m.term,
                            success: false,
                            index: m.prev_log_index,
                            conflict_term: 0,
                            conflict_index: 0,
                            read_round: m.read_round,
                        })
                    }
                    RaftMessage::RequestVote(m) => {
                        RaftMessage::RequestVoteReply(RequestVoteReply {
                            term,
                            request_term: m.term,
                            vote_granted: false,
                            pre_vote: m.pre_vote,
                        })
                    }
                    _ => {
                        let error = ErrorReply::bad_request(
                            "only APPEND_ENTRY and REQUEST_VOTE may be sent as probes",
                        );
                        return self.reply_error_now(key, None, &error);
                    }
                };
                self.scratch.clear();
                encode_peer(&mut self.scratch, None, None, &reply);
                self.reply_scratch_now(key);
            }
        }
    }

    fn handle_client_request(&mut self, key: usize, req_id: Option<u64>, request: ClientRequest) {
        match request {
            ClientRequest::Healthcheck => {
                self.scratch.clear();
                encode_reply(&mut self.scratch, req_id, &HealthcheckReply);
                self.reply_scratch_now(key);
            }
            ClientRequest::Status => {
                let status = self.status();
                self.scratch.clear();
                encode_reply(&mut self.scratch, req_id, &status);
                self.reply_scratch_now(key);
            }
            ClientRequest::Get(get) if get.stale => {
                let reply = GetReply {
                    value: self.kv.get(&get.key).map(str::to_owned),
                    key: get.key,
                };
                self.scratch.clear();
                encode_reply(&mut self.scratch, req_id, &reply);
                self.reply_scratch_now(key);
            }
            ClientRequest::Get(get) => self.start_read(key, req_id, ReadKind::Get(get.key)),
            ClientRequest::Keys(keys) => self.start_read(key, req_id, ReadKind::Keys(keys.prefix)),
            // A registration goes through the log like a write: the session
            // exists once it is applied, on every node at the same index.
            write @ (ClientRequest::Set(_)
            | ClientRequest::Delete(_)
            | ClientRequest::Cas(_)
            | ClientRequest::RegisterClient) => {
                if self.unpersisted.is_some() && self.raft.role() == Role::Leader {
                    let error = self.no_space_error();
                    return self.reply_error_now(key, req_id, &error);
                }
                let Some(command) = Command::from_request(&write, now_ms()) else {
                    return self.reply_error_now(
                        key,
                        req_id,
                        &ErrorReply::bad_request("not a write"),
                    );
                };
                match self.raft.propose(command.encode()) {
                    Ok((index, term)) => {
                        let Some(to) = self.reserve(key, req_id) else {
                            return;
                        };
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.last_write_index = index;
                        }
                        let deadline = Instant::now() + self.config.request_timeout;
                        self.pending_writes
                            .insert(index, PendingWrite { to, term, deadline });
                    }
                    Err(e) => {
                        let error = self.propose_error(&e);
                        self.reply_error_now(key, req_id, &error);
                    }
                }
            }
        }
    }

    fn start_read(&mut self, key: usize, req_id: Option<u64>, kind: ReadKind) {
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.raft.read_index(id) {
            Ok(()) => {
                let Some(to) = self.reserve(key, req_id) else {
                    return;
                };
                let deadline = Instant::now() + self.config.request_timeout;
                let min_index = self.conns.get(key).map_or(0, |c| c.last_write_index);
                self.pending_reads.insert(
                    id,
                    PendingRead {
                        to,
                        kind,
                        deadline,
                        min_index,
                    },
                );
            }
            Err(e) => {
                let error = self.propose_error(&e);
                self.reply_error_now(key, req_id, &error);
            }
        }
    }

    fn no_space_error(&self) -> ErrorReply {
        let next = if self.peers.is_empty() {
            "retry once space is freed"
        } else {
            "it is handing leadership to a node that can: retry shortly"
        };
        ErrorReply::new(
            ErrorCode::NoSpace,
            format!(
                "node {} cannot write to its disk ({}); the write was not applied; {next}",
                self.config.id,
                self.unpersisted.as_ref().map_or("", |u| u.error.as_str())
            ),
        )
    }

    fn propose_error(&self, e: &ProposeError) -> ErrorReply {
        match e {
            ProposeError::NotLeader {
                leader_id: Some(id),
            } => {
                let mut error = ErrorReply::new(
                    ErrorCode::NotLeader,
                    format!("node {} is not the leader; node {id} is", self.config.id),
                );
                error.leader_id = Some(*id);
                error.leader_addr = self.peers.get(id).map(|p| p.addr.to_string());
                error
            }
            ProposeError::NotLeader { leader_id: None } => ErrorReply::new(
                ErrorCode::NoLeader,
                "no leader is known; an election is under way or a quorum is unreachable",
            ),
            ProposeError::TransferInProgress => ErrorReply::new(
                ErrorCode::NoLeader,
                "leadership is being transferred; retry shortly",
            ),
            ProposeError::Overloaded => ErrorReply::new(
                ErrorCode::Overloaded,
                "too many writes waiting to commit; retry later",
            ),
        }
    }

    // ------------------------------------------------------------ replies

    fn reserve(&mut self, key: usize, req_id: Option<u64>) -> Option<ReplyTo> {
        let conn = self.conns.get_mut(key)?;
        Some(ReplyTo {
            conn: key,
            generation: conn.generation,
            slot: conn.reserve_slot(),
            req_id,
        })
    }

    /// Sends `self.scratch` as the reply to the request just read on `key`.
    fn reply_scratch_now(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let slot = conn.reserve_slot();
            conn.fill_slot(slot, &self.scratch);
            // Every path that queues output must get it flushed: the
            // oversized-line path returns before `process_lines` marks the
            // connection, and a reply with nothing pending before it would
            // otherwise wait for the next event on the connection.
            self.mark_dirty(key);
        }
    }

    fn reply_error_now(&mut self, key: usize, req_id: Option<u64>, error: &ErrorReply) {
        self.scratch.clear();
        encode_error(&mut self.scratch, req_id, error);
        self.reply_scratch_now(key);
    }

    /// Sends `self.scratch` to a reserved slot, if the connection still exists.
    fn complete(&mut self, to: ReplyTo) {
        if let Some(conn) = self.conns.get_mut(to.conn) {
            if conn.generation == to.generation {
                conn.fill_slot(to.slot, &self.scratch);
                self.mark_dirty(to.conn);
            }
        }
    }

    fn complete_error(&mut self, to: ReplyTo, error: &ErrorReply) {
        self.scratch.clear();
        encode_error(&mut self.scratch, to.req_id, error);
        self.complete(to);
    }

    fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
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
        let drained = conn.output_bytes() == 0;
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
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            self.flush_conn(key);
        }
        // They stay marked for `flush_dirty`, with anything marked meanwhile.
        let mut marked = std::mem::replace(&mut self.dirty, dirty);
        self.dirty.append(&mut marked);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            self.flush_and_resume(key);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    // ------------------------------------------------------------- timers

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
            self.accept();
        }
        self.scan_connections(now);
        if now >= self.next_expiry_scan {
            self.next_expiry_scan = now + Duration::from_millis(100);
            self.expire_requests(now);
        }
        self.snapshot_housekeeping();
        self.maybe_bootstrap();
    }

    /// Acts on the `is_leader` hint once enough peers are connected for the
    /// vote requests to reach a quorum.
    fn maybe_bootstrap(&mut self) {
        if !self.bootstrap_pending {
            return;
        }
        let connected = self
            .peers
            .values()
            .filter(|p| {
                p.conn
                    .and_then(|k| self.conns.get(k))
                    .is_some_and(|c| !c.connecting)
            })
            .count();
        if connected + 1 >= self.raft.quorum() {
            self.bootstrap_pending = false;
            info!("bootstrap hint: campaigning now ({connected} peers connected)");
            self.raft.campaign_now();
        }
    }

    /// Starts a snapshot when enough was applied since the last one, and
    /// compacts the log behind one that became durable.
    fn snapshot_housekeeping(&mut self) {
        match self.snapshots.poll_built() {
            None => {}
            Some(Err(e)) => {
                // The older snapshot and the log still hold everything.
                error!(
                    "writing a snapshot failed: {e}; the previous snapshot and the log are \
                     kept, and the next attempt waits {SNAPSHOT_RETRY:?}"
                );
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
            Some(Ok(meta)) => {
                let wanted = meta.index.saturating_sub(self.config.snapshot_keep_tail);
                let compacted = self.raft.compact(wanted).min(meta.index);
                // The disk keeps what its own snapshot does not cover.
                match self.storage.compact(compacted) {
                    Ok(()) => info!(
                        "snapshot through index {} written; log compacted through {compacted}",
                        meta.index
                    ),
                    Err(e) => error!("compacting the log through {compacted} failed: {e}"),
                }
            }
        }
        let applied = self.kv.last_applied();
        if self.snapshots.is_building()
            || applied < self.snapshots.latest_index() + self.config.snapshot_entries
            || self.unpersisted.is_some()
            || self.snapshot_retry_at.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let Some(term) = self.raft.log().term(applied) else {
            return;
        };
        let mut members: Vec<NodeId> = self.peers.keys().copied().collect();
        members.push(self.config.id);
        members.sort_unstable();
        let started = Instant::now();
        let meta = SnapshotMeta {
            index: applied,
            term,
            members,
        };
        self.snapshots.start(&self.kv, meta);
        info!(
            "snapshot through index {applied} started: {} keys, event loop paused {} us",
            self.kv.len(),
            started.elapsed().as_micros()
        );
    }

    fn connect_peers(&mut self, now: Instant) {
        for (peer, link) in self.peers.iter_mut() {
            if link
                .connected_at
                .is_some_and(|t| now.duration_since(t) >= STABLE_CONNECTION)
            {
                link.connected_at = None;
                link.backoff = RECONNECT_MIN;
                if link.reported_down {
                    link.reported_down = false;
                    info!("peer {peer} at {} reachable again", link.addr);
                }
            }
        }
        let due: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.is_none() && p.next_attempt <= now)
            .map(|(&id, p)| (id, p.addr))
            .collect();
        for (id, addr) in due {
            let result = connect_from(self.config.host, addr).map(|stream| {
                self.add_conn(
                    stream,
                    ConnRole::Outbound(id),
                    Interest::READABLE | Interest::WRITABLE,
                )
            });
            let link = self.peers.get_mut(&id).expect("peer exists");
            match result {
                Ok(Some(key)) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.connecting = true;
                    }
                    link.conn = Some(key);
                }
                Ok(None) | Err(_) => {
                    link.next_attempt = now + link.backoff;
                    link.backoff = (link.backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending_writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&i, _)| i)
            .collect();
        for index in expired {
            if let Some(w) = self.pending_writes.remove(&index) {
                let error = ErrorReply::new(
                    ErrorCode::Timeout,
                    "the write did not commit in time; its outcome is unknown: retry with the same client_id and seq",
                );
                self.complete_error(w.to, &error);
            }
        }
        let expired: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&i, _)| i)
            .collect();
        let mut timed_out: Vec<PendingRead> = expired
            .iter()
            .filter_map(|id| self.pending_reads.remove(id))
            .collect();
        let (late, waiting): (Vec<PendingRead>, Vec<PendingRead>) =
            std::mem::take(&mut self.deferred_reads)
                .into_iter()
                .partition(|r| r.deadline <= now);
        self.deferred_reads = waiting;
        timed_out.extend(late);
        for r in timed_out {
            let error = ErrorReply::new(
                ErrorCode::Timeout,
                "the read could not be served in time; retry",
            );
            self.complete_error(r.to, &error);
        }
    }

    // --------------------------------------------------------------- raft

    /// Carries out every Ready the core has, in the order the core requires.
    fn drive_raft(&mut self) -> Result<(), String> {
        while self.raft.has_ready() {
            let mut rd = self.raft.ready();
            self.log_role_change(&rd);
            // 1. Messages that may leave now, leaving now: followers persist
            //    while we do.
            for out in &rd.messages {
                self.send_to_peer(out.to, &out.message);
            }
            // 2. Committed entries are durable on a majority already, so
            //    they are applied and answered before this node's own fsync
            //    (the core allows it; the simulator applies before its
            //    writes complete). They all precede any snapshot installed
            //    below, which only ever moves the state machine forward.
            self.apply(&mut rd)?;
            self.flush_replies();
            // 3. Durability: hard state, entries, one fsync for all of it;
            // 4. then what had to wait for the disk.
            let entries = std::mem::take(&mut rd.entries);
            let after = std::mem::take(&mut rd.messages_after_persist);
            self.persist(rd.hard_state, entries, after)?;
            // 5. Snapshot transfers.
            self.handle_snapshot_outputs(&mut rd)?;
        }
        Ok(())
    }

    /// Makes a Ready's hard state and entries durable, then sends what waited
    /// for that and reports it persisted. If the disk is full, or was at an
    /// earlier Ready that is still not written, the whole lot is held
    /// (`Unpersisted`) and retried by `retry_unpersisted`; any other storage
    /// failure is fatal.
    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        messages: Vec<Outbound>,
    ) -> Result<(), String> {
        if let Some(held) = &mut self.unpersisted {
            held.merge(hard_state, entries, messages);
            return Ok(());
        }
        match self.write_durably(hard_state, &entries) {
            Ok(()) => {
                self.persisted(&entries, messages);
                Ok(())
            }
            Err(e) if self.storage.health() == Health::NoSpace => {
                let now = Instant::now();
                error!(
                    "NO_SPACE: {e}. Until space is freed this node writes nothing: it \
                     answers writes with NO_SPACE, sends no vote or acknowledgement, keeps \
                     serving reads, and retries every {NO_SPACE_RETRY_MIN:?} to \
                     {NO_SPACE_RETRY_MAX:?}; nothing acknowledged is lost"
                );
                let mut held = Unpersisted::new(e.to_string(), now);
                held.merge(hard_state, entries, messages);
                self.unpersisted = Some(held);
                self.hand_off_leadership(0);
                Ok(())
            }
            Err(e) => Err(fatal_storage_error(&e)),
        }
    }

    fn write_durably(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if let Some(hs) = hard_state {
            self.storage.save_hard_state(hs)?;
        }
        if !entries.is_empty() {
            self.storage.append(entries)?;
            self.storage.sync()?;
        }
        Ok(())
    }

    fn persisted(&mut self, entries: &[Entry], messages: impl IntoIterator<Item = Outbound>) {
        for out in messages {
            self.send_to_peer(out.to, &out.message);
        }
        if let Some(last) = entries.last() {
            self.raft.on_persisted(last.index, last.term);
        }
    }

    /// While the disk is full: once the backoff has passed, asks storage to
    /// put its files back in step (`Storage::recover`) and writes everything
    /// held at the same place. Freed space is thus noticed within
    /// `NO_SPACE_RETRY_MAX`, and the node resumes by itself.
    fn retry_unpersisted(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let Some(mut held) = self.unpersisted.take() else {
            return Ok(());
        };
        if now < held.next_retry {
            self.unpersisted = Some(held);
            return Ok(());
        }
        held.attempts += 1;
        let hard_state = held.hard_state;
        let result = self
            .storage
            .recover()
            .and_then(|()| self.write_durably(hard_state, &held.entries));
        match result {
            Ok(()) => {
                info!(
                    "disk space is back: wrote the {} log entries{} held for {:.1} s \
                     ({} attempts); taking writes again",
                    held.entries.len(),
                    if held.hard_state.is_some() {
                        " and the hard state"
                    } else {
                        ""
                    },
                    now.duration_since(held.since).as_secs_f64(),
                    held.attempts
                );
                if held.dropped > 0 {
                    info!(
                        "{} votes and acknowledgements held meanwhile were dropped (Raft resends)",
                        held.dropped
                    );
                }
                self.persisted(&held.entries, std::mem::take(&mut held.messages));
                Ok(())
            }
            Err(e) if self.storage.health() == Health::NoSpace => {
                held.error = e.to_string();
                held.backoff = (held.backoff * 2).min(NO_SPACE_RETRY_MAX);
                held.next_retry = now + held.backoff;
                if now >= held.next_reminder {
                    held.next_reminder = now + NO_SPACE_REMINDER;
                    warn!(
                        "NO_SPACE for {:.0} s: {e}; {} log entries wait to be written",
                        now.duration_since(held.since).as_secs_f64(),
                        held.entries.len()
                    );
                }
                let attempts = held.attempts;
                self.unpersisted = Some(held);
                self.hand_off_leadership(attempts);
                Ok(())
            }
            Err(e) => Err(fatal_storage_error(&e)),
        }
    }

    /// A leader that cannot write hands leadership to its most up-to-date
    /// follower (thesis 3.10), so a cluster whose majority has space keeps
    /// taking writes. Until that node takes over this one answers writes
    /// with NO_SPACE; it cannot win an election back while its disk is full,
    /// since its vote for itself would have to be durable first. Called again
    /// with each failed retry (`attempt`), it goes round the followers that
    /// tie for the highest match index, in case one of them cannot take
    /// over (its disk is full too, or it is cut off).
    fn hand_off_leadership(&mut self, attempt: u64) {
        if self.raft.role() != Role::Leader {
            return;
        }
        let status = self.raft.status();
        let best = status.followers.iter().map(|f| f.match_index).max();
        let candidates: Vec<(NodeId, u64)> = status
            .followers
            .iter()
            .filter(|f| Some(f.match_index) == best)
            .map(|f| (f.id, f.match_index))
            .collect();
        if candidates.is_empty() {
            return; // a single-node cluster: nobody to hand to
        }
        let (to, match_index) = candidates[(attempt % candidates.len() as u64) as usize];
        if self.raft.transfer_leadership(to).is_ok() {
            let line =
                format!("NO_SPACE: handing leadership to node {to} (match index {match_index})");
            if attempt == 0 {
                info!("{line}");
            } else {
                debug!("{line}, attempt {attempt}");
            }
        }
    }

    /// Leader: streams the latest snapshot to followers that need it, one
    /// chunk per acknowledgement. Follower: writes chunks from the leader and
    /// installs a completed snapshot.
    fn handle_snapshot_outputs(&mut self, rd: &mut Ready) -> Result<(), String> {
        let starts = std::mem::take(&mut rd.snapshots_to_send)
            .into_iter()
            .map(|to| (to, None, 0));
        let acks = std::mem::take(&mut rd.snapshot_acks)
            .into_iter()
            .map(|a| (a.to, Some(a.index), a.next_offset));
        for (to, index, offset) in starts.chain(acks) {
            let latest = self.snapshots.latest_index();
            // An acknowledgement for an older snapshot starts the newest over.
            let offset = if index.is_some_and(|i| i != latest) {
                0
            } else {
                offset
            };
            match self.snapshots.chunk(offset) {
                Ok((index, term, data, done)) => {
                    if offset == 0 {
                        info!("sending snapshot through index {index} to node {to}");
                    }
                    self.raft
                        .send_snapshot_chunk(to, index, term, offset, data, done);
                }
                Err(e) => warn!("cannot send a snapshot to node {to}: {e}"),
            }
        }
        let chunks = std::mem::take(&mut rd.snapshot_chunks);
        if self.unpersisted.is_some() && !chunks.is_empty() {
            // Its acknowledgement could not leave, and installing it would
            // have to reset a log that cannot be written: the leader retries
            // the transfer once it has heard nothing for a while.
            debug!("disk full: ignoring {} snapshot chunks", chunks.len());
            return Ok(());
        }
        for (leader, chunk) in chunks {
            let index = chunk.last_included_index;
            match self.snapshots.receive(leader, &chunk) {
                Ok(Received::Ack(next_offset)) => {
                    self.raft
                        .snapshot_chunk_received(leader, index, next_offset)
                }
                Ok(Received::Complete(meta, kv, transfer)) => {
                    // The snapshot file is durable; make the log agree with
                    // it before the acknowledgement leaves (next ready).
                    let result = match self.raft.restore_snapshot(leader, meta.index, meta.term) {
                        Restored::Stale => {
                            // Loading it would take the state machine back
                            // to an index it has already passed.
                            info!(
                                "received snapshot through index {}, which this node \
                                 has already committed; keeping its state",
                                meta.index
                            );
                            continue;
                        }
                        Restored::DiscardedLog => self.storage.reset(meta.index + 1),
                        Restored::KeptLog => self.storage.compact(meta.index),
                    };
                    result.map_err(|e| {
                        format!("cannot reset the log for snapshot {}: {e}", meta.index)
                    })?;
                    self.kv = *kv;
                    info!(
                        "installed snapshot through index {} from node {leader} \
                         ({} bytes in {} chunks, {} out of turn)",
                        meta.index, transfer.bytes, transfer.chunks, transfer.out_of_turn
                    );
                }
                Err(e) => {
                    // Not acknowledged: answering at once with offset 0 would
                    // have the leader resend at once, in a loop on a full
                    // disk. It starts over once its transfer stalls.
                    warn!("snapshot chunk from node {leader} for index {index} refused: {e}");
                }
            }
        }
        Ok(())
    }

    fn log_role_change(&self, rd: &Ready) {
        if let Some(ss) = rd.soft_state {
            match (ss.role, ss.leader_id) {
                (Role::Leader, _) => info!("became leader in term {}", ss.term),
                (role, Some(leader)) => {
                    info!("{role} in term {}; leader is node {leader}", ss.term)
                }
                (role, None) => info!("{role} in term {}; no leader known", ss.term),
            }
        }
    }

    fn apply(&mut self, rd: &mut Ready) -> Result<(), String> {
        let mut last = None;
        for entry in &std::mem::take(&mut rd.committed_entries) {
            last = Some(entry.index);
            let result = self.kv.apply(entry);
            let Some(pending) = self.pending_writes.remove(&entry.index) else {
                continue;
            };
            if pending.term != entry.term {
                let error = ErrorReply::new(
                    ErrorCode::LeadershipLost,
                    "leadership changed before the write committed; retry with the same client_id and seq",
                );
                self.complete_error(pending.to, &error);
                continue;
            }
            self.scratch.clear();
            match result {
                Some(ApplyResult::Set(r)) => encode_reply(&mut self.scratch, pending.to.req_id, &r),
                Some(ApplyResult::Delete(r)) => {
                    encode_reply(&mut self.scratch, pending.to.req_id, &r)
                }
                Some(ApplyResult::Cas(r)) => encode_reply(&mut self.scratch, pending.to.req_id, &r),
                Some(ApplyResult::Register(r)) => {
                    encode_reply(&mut self.scratch, pending.to.req_id, &r)
                }
                Some(ApplyResult::Error(e)) => {
                    encode_error(&mut self.scratch, pending.to.req_id, &e)
                }
                None => encode_error(
                    &mut self.scratch,
                    pending.to.req_id,
                    &ErrorReply::new(
                        ErrorCode::LeadershipLost,
                        "the entry at this index is not a command",
                    ),
                ),
            }
            self.complete(pending.to);
        }
        if let Some(index) = last {
            self.raft.advance_applied(index);
        }
        for read in std::mem::take(&mut rd.reads) {
            if let Some(pending) = self.pending_reads.remove(&read.id) {
                self.deferred_reads.push(pending);
            }
        }
        let applied = self.kv.last_applied();
        let (ready, waiting): (Vec<PendingRead>, Vec<PendingRead>) =
            std::mem::take(&mut self.deferred_reads)
                .into_iter()
                .partition(|r| r.min_index <= applied);
        self.deferred_reads = waiting;
        for pending in ready {
            self.serve_read(pending);
        }
        for id in std::mem::take(&mut rd.failed_reads) {
            if let Some(pending) = self.pending_reads.remove(&id) {
                let error = ErrorReply::new(
                    ErrorCode::LeadershipLost,
                    "leadership was lost before the read was confirmed; retry",
                );
                self.complete_error(pending.to, &error);
            }
        }
        Ok(())
    }

    fn serve_read(&mut self, pending: PendingRead) {
        self.scratch.clear();
        match pending.kind {
            ReadKind::Get(key) => {
                let value = self.kv.get(&key).map(str::to_owned);
                encode_reply(
                    &mut self.scratch,
                    pending.to.req_id,
                    &GetReply { key, value },
                );
            }
            ReadKind::Keys(prefix) => {
                let keys = self.kv.keys(&prefix, MAX_KEYS_PER_REPLY);
                encode_reply(&mut self.scratch, pending.to.req_id, &KeysReply { keys });
            }
        }
        self.complete(pending.to);
    }

    fn send_to_peer(&mut self, to: NodeId, message: &RaftMessage) {
        let Some(key) = self.peers.get(&to).and_then(|p| p.conn) else {
            return; // not connected: Raft treats it as a lost message
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.output_bytes() > PEER_OUTPUT_LIMIT {
            return;
        }
        self.scratch.clear();
        encode_peer(&mut self.scratch, Some(self.config.id), None, message);
        conn.push_output(&self.scratch);
        // Write now rather than at the end of the iteration, so the message
        // is on the wire before this node's fsync.
        self.flush_conn(key);
    }

    fn status(&self) -> StatusReply {
        let s = self.raft.status();
        let addr_of = |id: NodeId| {
            if id == self.config.id {
                Some(self.config.addr().to_string())
            } else {
                self.peers.get(&id).map(|p| p.addr.to_string())
            }
        };
        let mut members: Vec<MemberStatus> = self
            .peers
            .iter()
            .map(|(&id, p)| MemberStatus {
                id,
                addr: p.addr.to_string(),
            })
            .collect();
        members.push(MemberStatus {
            id: self.config.id,
            addr: self.config.addr().to_string(),
        });
        members.sort_by_key(|m| m.id);
        StatusReply {
            id: s.id,
            addr: self.config.addr().to_string(),
            role: s.role.to_string(),
            term: s.term,
            leader_id: s.leader_id,
            leader_addr: s.leader_id.and_then(addr_of),
            commit_index: s.commit_index,
            last_applied: s.applied_index,
            last_log_index: s.last_log_index,
            storage: match (&self.unpersisted, self.storage.health()) {
                (Some(_), _) | (None, Health::NoSpace) => "no_space",
                (None, Health::Healthy) => "ok",
                (None, Health::Failed) => "failed",
            }
            .to_string(),
            storage_error: self.unpersisted.as_ref().map(|u| {
                format!(
                    "{} (for {} ms, {} retries, {} log entries waiting)",
                    u.error,
                    u.since.elapsed().as_millis(),
                    u.attempts,
                    u.entries.len()
                )
            }),
            members,
            followers: s
                .followers
                .iter()
                .map(|f| FollowerProgress {
                    id: f.id,
                    match_index: f.match_index,
                    next_index: f.next_index,
                    state: match f.state {
                        ProgressState::Probe => "probe".to_string(),
                        ProgressState::Replicate => "replicate".to_string(),
                        ProgressState::Snapshot => "snapshot".to_string(),
                    },
                })
                .collect(),
        }
    }
}

/// Makes the recovered log continue the snapshot through (`index`, `term`):
/// entries the snapshot covers are dropped; a log that does not hold the
/// snapshot's last entry (a crash between installing a snapshot and
/// resetting the log) is discarded. A log that starts after the snapshot
/// ends has lost committed entries: that is fatal.
fn reconcile_log(
    storage: &mut Storage,
    first_index: u64,
    entries: Vec<poncho_protocol::Entry>,
    index: u64,
    term: u64,
) -> Result<Vec<poncho_protocol::Entry>, String> {
    if first_index > index + 1 {
        return Err(format!(
            "the log starts at index {first_index} but the newest valid snapshot ends at {index}: \
             entries in between are lost; restore this node from a healthy member"
        ));
    }
    let holds_snapshot_end = index == 0
        || first_index == index + 1
        || entries.iter().any(|e| e.index == index && e.term == term);
    if !holds_snapshot_end {
        warn!("recovery: the log does not continue snapshot {index} (term {term}); discarding it");
        storage
            .reset(index + 1)
            .map_err(|e| format!("cannot reset the log: {e}"))?;
        return Ok(Vec::new());
    }
    Ok(entries.into_iter().filter(|e| e.index > index).collect())
}

fn fatal_storage_error(e: &StorageError) -> String {
    format!(
        "cannot write the log or hard state durably: {e}. Stopping rather than guess what \
         reached the disk (only a full disk is waited out); restarting recovers from what the \
         disk holds"
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts a nonblocking connect to `addr` from our own IP, so per-node
/// firewall rules on 127.0.0.N addresses apply to peer traffic too.
fn connect_from(host: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if !host.is_unspecified() && host.is_ipv4() == addr.is_ipv4() {
        socket.bind(&SockAddr::from(SocketAddr::new(host, 0)))?;
    }
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc_einprogress())
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// EINPROGRESS on Linux; a nonblocking connect reports it while under way.
const fn libc_einprogress() -> i32 {
    115
}

#[cfg(test)]
mod tests {
    use super::conn::*;
    use super::*;

    /// Found in review: a follower whose disk is full holds an
    /// acknowledgement of entries of term 1, then a term-2 leader's entry
    /// replaces one of them. The held acknowledgement must not leave once
    /// space is back: the disk would no longer hold what it acknowledges.
    #[test]
    fn a_held_acknowledgement_of_a_term_the_node_has_left_is_dropped() {
        use poncho_protocol::{AppendEntriesReply, EntryKind};
        let entry = |index, term| Entry {
            index,
            term,
            kind: EntryKind::Command,
            data: "x".into(),
        };
        let ack = |to, term, index| Outbound {
            to,
            message: RaftMessage::AppendEntriesReply(AppendEntriesReply {
                term,
                request_term: term,
                success: true,
                index,
                conflict_term: 0,
                conflict_index: 0,
                read_round: 0,
            }),
        };
        let mut held = Unpersisted::new("disk full".into(), Instant::now());
        let hs = |term| Some(HardState { term, vote: None });
        held.merge(hs(1), vec![entry(11, 1), entry(12, 1)], vec![ack(2, 1, 12)]);
        held.merge(hs(2), vec![entry(11, 2)], vec![ack(3, 2, 11)]);
        let left: Vec<(NodeId, u64)> = held
            .messages
            .iter()
            .map(|o| (o.to, o.message.term()))
            .collect();
        assert_eq!(
            left,
            vec![(3, 2)],
            "only the term-2 acknowledgement is held"
        );
        assert_eq!(
            held.entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(11, 2)]
        );
    }

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
            segment_bytes: 1 << 20,
            session_timeout_ms: crate::kv::SESSION_TIMEOUT_MS,
            max_sessions: crate::kv::MAX_SESSIONS,
            max_clients: 100,
            partial_request_timeout: Duration::from_secs(30),
            idle_timeout: None,
        }
    }

    #[test]
    fn a_snapshot_without_its_hard_state_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let meta = SnapshotMeta {
            index: 10,
            term: 2,
            members: vec![1],
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
        let hard_state = dir.path().join("hardstate");
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

    #[test]
    fn replies_leave_in_request_order_even_when_completed_out_of_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut conn = Conn::new(
            mio::net::TcpStream::from_std(stream),
            ConnRole::Client,
            1,
            1024,
            std::time::Instant::now(),
        );
        let a = conn.reserve_slot();
        let b = conn.reserve_slot();
        let c = conn.reserve_slot();
        conn.fill_slot(c, b"c\n");
        conn.fill_slot(b, b"b\n");
        assert_eq!(
            conn.output_bytes(),
            0,
            "nothing may overtake the first reply"
        );
        conn.fill_slot(a, b"a\n");
        assert_eq!(conn.output_bytes(), 6);
        assert_eq!(conn.pending_replies(), 0);
    }
}
