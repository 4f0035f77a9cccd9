//! Which connections a node takes, and how long it keeps them: the client
//! limit, the room kept past it for peers, a clear refusal past both, the
//! partial-request deadline and the idle timeout.
//!
//! A peer's connection cannot be told from a client's when it is accepted:
//! it shows itself with its first line, a `PEER_HELLO` (`handshake.rs`). So
//! every connection accepted on the client port counts as a client until
//! then; once
//! `--max-clients` are counted, a few more (`peer_room`) are accepted on
//! probation: a peer's starts its handshake with its first line, a client
//! request on one is refused unless a client's place came free, and one that
//! says nothing is closed after `PROBATION`. Handshakes under way are
//! bounded per member they claim and, tighter, per source address, so a
//! flood of hellos from one address leaves each member room for its own
//! (`MAX_HANDSHAKES_PER_*`). Clients can therefore never
//! take the last place a peer needs to connect. On a peer port
//! (`--peer-addr`) every connection starts on probation, in a room of its
//! own: it takes no client's place, and clients cannot take its. Our own
//! connections to peers are never limited.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use poncho_protocol::{encode_error, ErrorCode, ErrorReply, NodeId};

use super::conn::ConnRole;
use super::tls::{REFUSAL_ALERT, TLS_HANDSHAKE_TIMEOUT};
use super::{fds, Node, NodeConfig};

/// File descriptors kept for everything but connections: stdio, the poll,
/// the listener, the signal pipe, the log segments, the hard state, the
/// snapshots being written, read and received, the spare descriptor, and a
/// few connections being refused.
pub const RESERVED_FDS: usize = 64;
/// Places kept past `--max-clients` for peers' connections: two per peer (a
/// reconnecting peer's new connection may arrive before its old one is
/// seen to close), and a few more.
const PEER_ROOM_PER_PEER: usize = 2;
const PEER_ROOM_EXTRA: usize = 8;
/// Inbound peer handshakes in progress that claim to be one member's: a
/// member opens one connection to us at a time (two while it reconnects),
/// so this leaves room for it beside a flood under its name.
pub const MAX_HANDSHAKES_PER_MEMBER: usize = 6;
/// Inbound peer handshakes in progress from one source address: fewer than
/// a member's places, so that one address (one attacker, or one
/// misbehaving host) can never take every place of a member, nor any other
/// member's; members sharing a host (a test cluster) open theirs at once.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 4;
const _: () = assert!(MAX_HANDSHAKES_PER_SOURCE < MAX_HANDSHAKES_PER_MEMBER);
/// Proven inbound connections kept per member: it opens one to us (a
/// reconnect may find its old one not yet seen to close); a newer one
/// replaces the oldest.
pub const MAX_PEER_CONNS_PER_MEMBER: usize = 2;
/// How long a connection accepted past `--max-clients` has to show that it
/// is a peer's. A peer that has nothing to say that soon (one follower to
/// another) is closed and reconnects: it is only so while clients fill
/// every place.
pub const PROBATION: Duration = Duration::from_secs(5);
/// How often connections are checked against their deadlines.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Refusals are logged at most this often, with their count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Connections the kernel completes and queues for `accept` (capped by
/// net.core.somaxconn). std's 128 overflows when many clients connect at
/// once (a pool reconnecting after a leader change), and each connection
/// over it waits a second or more for its SYN to be sent again.
const LISTEN_BACKLOG: i32 = 4096;
/// After `accept` failed for want of descriptors with none spare, when to
/// try again (the pending connections wait in the listen backlog).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Admission {
    /// Clients served at once: `--max-clients`, or less if the open-file
    /// limit cannot cover it.
    pub max_clients: usize,
    peer_room: usize,
    clients: usize,
    on_probation: usize,
    /// Connections on the peer port not yet in a handshake: at most
    /// `peer_room`, apart from the client port's.
    on_peer_port: usize,
    /// Inbound peer handshakes under way (`ConnRole::Proving`), by the
    /// member they claim and by their source address (each at most
    /// `MAX_HANDSHAKES_PER_*`): a connection that says it is a peer's stops
    /// counting as a client, so these must be bounded on their own, and so
    /// that no one source nor one claimed id takes every place.
    handshakes_by_member: HashMap<NodeId, usize>,
    handshakes_by_source: HashMap<IpAddr, usize>,
    /// Proven inbound connections (`ConnRole::Peer`) by member, at most
    /// `MAX_PEER_CONNS_PER_MEMBER` each.
    proven: HashMap<NodeId, usize>,
    partial_request_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// Held open so that, out of descriptors, one can be freed to accept a
    /// connection and tell it why it is refused.
    spare: Option<File>,
    refused: u64,
    next_refusal_log: Instant,
    next_scan: Instant,
    /// When to call `accept` again after it ran out of descriptors.
    pub accept_retry: Option<Instant>,
}

/// Why a connection is closed before its client asked for it.
enum Cut {
    /// On probation (on the peer port, or not) and not a peer's.
    NotAPeer { peer_port: bool },
    /// A line was begun and not finished in time.
    Partial,
    /// A TLS handshake not done within `TLS_HANDSHAKE_TIMEOUT`.
    TlsHandshake,
    /// A client sent nothing and had nothing pending for the idle timeout.
    Idle,
}

/// The listening socket, with room for `LISTEN_BACKLOG` connections
/// waiting to be accepted.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restarted node can bind its port while connections of
    // its previous run are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Admission {
    /// Sizes the limits from the configuration, and raises the open-file
    /// limit to what they need, saying what it did and what it could not.
    pub fn new(config: &NodeConfig, now: Instant) -> Admission {
        let peers = config.peers.len();
        let peer_room = PEER_ROOM_PER_PEER * peers + PEER_ROOM_EXTRA;
        // Connections in (clients, peers' room on each port and
        // handshakes), ours out, and the rest.
        let ports = if config.peer_addr.is_some() { 2 } else { 1 };
        let per_peer = 1 + MAX_HANDSHAKES_PER_MEMBER + MAX_PEER_CONNS_PER_MEMBER;
        let overhead = ports * peer_room + peers * per_peer + RESERVED_FDS;
        let wanted = config.max_clients.saturating_add(overhead);
        let max_clients = match fds::raise_to(wanted as u64) {
            Ok(limit) => {
                let allowed = (limit.now as usize).saturating_sub(overhead);
                if limit.now > limit.before {
                    info!(
                        "open-file limit raised from {} to {} (for --max-clients {} and \
                         {overhead} for peers and files)",
                        limit.before, limit.now, config.max_clients
                    );
                } else if allowed >= config.max_clients {
                    info!(
                        "open-file limit {} covers --max-clients {} and {overhead} for peers \
                         and files",
                        limit.now, config.max_clients
                    );
                }
                if allowed < config.max_clients {
                    warn!(
                        "the open-file limit is {} (hard limit {}): serving at most {allowed} \
                         clients, not the {} of --max-clients; raise the hard limit (ulimit -Hn, \
                         systemd's LimitNOFILE=) to at least {wanted} for them",
                        limit.now, limit.hard, config.max_clients
                    );
                }
                allowed.min(config.max_clients)
            }
            Err(e) => {
                warn!(
                    "cannot read or raise the open-file limit ({e}); --max-clients {} may not \
                     be reached: connections past the limit wait unaccepted",
                    config.max_clients
                );
                config.max_clients
            }
        };
        Admission {
            max_clients,
            peer_room,
            clients: 0,
            on_probation: 0,
            on_peer_port: 0,
            handshakes_by_member: HashMap::new(),
            handshakes_by_source: HashMap::new(),
            proven: HashMap::new(),
            partial_request_timeout: config.partial_request_timeout,
            idle_timeout: config.idle_timeout,
            spare: File::open("/dev/null").ok(),
            refused: 0,
            next_refusal_log: now,
            next_scan: now + SCAN_INTERVAL,
            accept_retry: None,
        }
    }

    /// What a newly accepted connection on `port` may be, or `None`:
    /// refuse it. The peer port's connections are counted apart: they take
    /// no client's place, and clients cannot take theirs.
    fn admit(&self, now: Instant, port: Port) -> Option<ConnRole> {
        let probation = |peer_port| ConnRole::Probation {
            until: now + PROBATION,
            peer_port,
        };
        match port {
            Port::Peer => (self.on_peer_port < self.peer_room).then(|| probation(true)),
            Port::Client if self.clients < self.max_clients => Some(ConnRole::Client),
            Port::Client => (self.on_probation < self.peer_room).then(|| probation(false)),
        }
    }

    /// Counts a connection in (`added`) or out in its role.
    pub fn tally(&mut self, role: ConnRole, added: bool) {
        let count = match role {
            ConnRole::Client => &mut self.clients,
            ConnRole::Probation {
                peer_port: false, ..
            } => &mut self.on_probation,
            ConnRole::Probation {
                peer_port: true, ..
            } => &mut self.on_peer_port,
            ConnRole::Proving(p) => {
                count_in(&mut self.handshakes_by_member, p.peer, added);
                return count_in(&mut self.handshakes_by_source, p.source, added);
            }
            ConnRole::Peer(id) => return count_in(&mut self.proven, id, added),
            ConnRole::Outbound(..) => return,
        };
        if added {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
    }

    /// Whether `member` has as many proven connections to us as it may.
    pub fn peer_conns_full(&self, member: NodeId) -> bool {
        self.proven.get(&member).copied().unwrap_or(0) >= MAX_PEER_CONNS_PER_MEMBER
    }

    /// Whether another inbound peer handshake may begin, from `source`
    /// claiming to be `member`'s; why not, if not.
    pub fn may_start_handshake(&self, source: IpAddr, member: NodeId) -> Result<(), String> {
        let from_source = self.handshakes_by_source.get(&source).copied();
        if from_source.unwrap_or(0) >= MAX_HANDSHAKES_PER_SOURCE {
            return Err(format!(
                "{MAX_HANDSHAKES_PER_SOURCE} peer handshakes from {source} are already in \
                 progress; retry"
            ));
        }
        if self.handshakes_by_member.get(&member).copied().unwrap_or(0) >= MAX_HANDSHAKES_PER_MEMBER
        {
            return Err(format!(
                "{MAX_HANDSHAKES_PER_MEMBER} peer handshakes claiming to be node {member}'s are \
                 already in progress; retry"
            ));
        }
        Ok(())
    }

    /// The refusal of a connection on `port` for want of a place.
    fn full(&self, port: Port) -> ErrorReply {
        match port {
            Port::Client => self.too_many(),
            Port::Peer => ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                    "{} connections on the peer port have not begun a peer handshake; closing \
                     the connection",
                    self.peer_room
                ),
            ),
        }
    }

    fn too_many(&self) -> ErrorReply {
        ErrorReply::new(
            ErrorCode::Overloaded,
            format!(
                "max number of clients reached ({}); closing the connection",
                self.max_clients
            ),
        )
    }
}

/// The refusal of a connection on node `id`'s peer port that did not begin
/// its handshake in time.
fn no_hello(id: NodeId) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unauthenticated,
        format!(
            "this is node {id}'s peer port: a connection must begin the peer handshake within \
             {} s; closing the connection",
            PROBATION.as_secs()
        ),
    )
}

/// Counts one in or out under `key`; a count that reaches 0 is forgotten,
/// so the map holds only what is in progress.
fn count_in<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, added: bool) {
    if added {
        *map.entry(key).or_insert(0) += 1;
    } else if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// Which of the node's listeners a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The node's address (`--port`): clients, and peers unless the node
    /// has a peer port.
    Client,
    /// `--peer-addr`: peers only.
    Peer,
}

impl Node {
    fn listener(&self, port: Port) -> Option<&TcpListener> {
        match port {
            Port::Client => Some(&self.listener),
            Port::Peer => self.peer_listener.as_ref(),
        }
    }

    /// Accepts every pending connection on `port`'s listener, or refuses it
    /// with an error line.
    pub(super) fn accept(&mut self, port: Port) {
        self.admission.accept_retry = None;
        loop {
            let Some(listener) = self.listener(port) else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr, port),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) if fds::is_exhaustion(&e) => {
                    // Out of descriptors: free the spare to take one
                    // connection and tell it why it is refused, so the
                    // backlog drains with answers rather than silence.
                    let accepted = match self.admission.spare.take() {
                        Some(spare) => {
                            drop(spare);
                            self.listener(port).and_then(|l| l.accept().ok())
                        }
                        None => None,
                    };
                    self.admission.spare = File::open("/dev/null").ok();
                    match accepted {
                        Some((stream, addr)) => {
                            self.refuse(stream, addr, port, &format!("accept failed: {e}"))
                        }
                        None => return self.retry_accept(&e),
                    }
                }
                Err(e) => return self.retry_accept(&e),
            }
        }
    }

    /// Leaves the pending connections in the backlog for `ACCEPT_RETRY`.
    fn retry_accept(&mut self, e: &io::Error) {
        let now = Instant::now();
        if now >= self.admission.next_refusal_log {
            warn!("accept failed: {e}; retrying every {ACCEPT_RETRY:?}");
            self.admission.next_refusal_log = now + REFUSAL_LOG_INTERVAL;
        }
        self.admission.accept_retry = Some(now + ACCEPT_RETRY);
    }

    fn admit(&mut self, stream: TcpStream, addr: SocketAddr, port: Port) {
        let Some(role) = self.admission.admit(Instant::now(), port) else {
            let why = match port {
                Port::Client => format!(
                    "{} clients and {} connections on probation",
                    self.admission.clients, self.admission.on_probation
                ),
                Port::Peer => format!(
                    "{} connections on the peer port not yet in a handshake",
                    self.admission.on_peer_port
                ),
            };
            return self.refuse(stream, addr, port, &why);
        };
        let _ = stream.set_nodelay(true);
        let stream = match self.tls.accepted(stream, port) {
            Ok(s) => s,
            Err(e) => return warn!("cannot start TLS with {addr}: {e}"),
        };
        if let Some(key) = self.add_conn(stream, role, Interest::READABLE | Interest::WRITABLE) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.port = port;
            }
            debug!("connection {key} from {addr} on the {port:?} port ({role:?})");
        }
    }

    /// Answers a connection it cannot keep with OVERLOADED (on a TLS port,
    /// a TLS alert: the client reads no plaintext there) and closes it.
    /// What the client already sent is read first and the write side shut
    /// down before the close, so that the close does not reset the
    /// connection over the answer.
    fn refuse(&mut self, mut stream: TcpStream, addr: SocketAddr, port: Port, why: &str) {
        let _ = stream.read(self.conns.read_buffer());
        let mut line = Vec::new();
        if self.tls.speaks_tls(port) {
            line.extend_from_slice(&REFUSAL_ALERT);
        } else {
            encode_error(&mut line, None, &self.admission.full(port));
        }
        let _ = stream.write(&line);
        let _ = stream.shutdown(Shutdown::Write);
        drop(stream);
        self.admission.refused += 1;
        let now = Instant::now();
        if now >= self.admission.next_refusal_log {
            self.log_refusals(now, &format!(" (the latest from {addr}: {why})"));
        }
    }

    fn log_refusals(&mut self, now: Instant, detail: &str) {
        warn!(
            "refused {} connection(s): max number of clients reached ({}){detail}",
            self.admission.refused, self.admission.max_clients
        );
        self.admission.refused = 0;
        self.admission.next_refusal_log = now + REFUSAL_LOG_INTERVAL;
    }

    pub(super) fn set_role(&mut self, key: usize, role: ConnRole) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut conn.role, role);
        self.admission.tally(old, false);
        self.admission.tally(role, true);
    }

    /// Settles what an accepted connection on probation is, from a line it
    /// sent that is not a peer's hello: a client's, served if a client's
    /// place is free, else refused. Returns whether to handle the line.
    pub(super) fn identify(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if !matches!(conn.role, ConnRole::Probation { .. }) {
            return true;
        }
        if self.admission.clients < self.admission.max_clients {
            self.set_role(key, ConnRole::Client);
            return true;
        }
        let error = self.admission.too_many();
        self.cut(key, &error, "max number of clients reached");
        false
    }

    /// Closes an accepted connection whose TLS handshake took too long, and
    /// says so (limited: a remote can cause it).
    fn close_tls_laggard(&mut self, key: usize) {
        let from = self
            .conns
            .get(key)
            .and_then(|c| c.stream.get_ref().peer_addr().ok())
            .map_or("?".into(), |a| a.ip().to_string());
        let secs = TLS_HANDSHAKE_TIMEOUT.as_secs();
        self.tls.log.warn(
            &format!("{from} slow handshake"),
            &format!("closed a connection from {from}: its TLS handshake took over {secs} s"),
        );
        self.close(key, "TLS handshake timed out");
    }

    /// Replies `error` and closes the connection once it is written.
    fn cut(&mut self, key: usize, error: &ErrorReply, why: &str) {
        debug!("closing connection {key}: {why}");
        self.reply_error_now(key, None, error);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.close_after_flush = true;
        }
    }

    /// Closes connections past their deadlines; logs refusals not yet told.
    pub(super) fn scan_connections(&mut self, now: Instant) {
        if self.admission.refused > 0 && now >= self.admission.next_refusal_log {
            self.log_refusals(now, "");
        }
        if now < self.admission.next_scan {
            return;
        }
        self.admission.next_scan = now + SCAN_INTERVAL;
        let partial = self.admission.partial_request_timeout;
        let idle = self.admission.idle_timeout;
        let mut cuts = Vec::new();
        self.expire_handshakes(now);
        for (key, conn) in self.conns.iter() {
            if conn.close_after_flush || !conn.is_inbound() {
                continue;
            }
            if conn.stream.is_handshaking()
                && now.duration_since(conn.opened) >= TLS_HANDSHAKE_TIMEOUT
            {
                cuts.push((key, Cut::TlsHandshake));
                continue;
            }
            let expired = match conn.role {
                ConnRole::Probation { until, peer_port } if until <= now => Some(peer_port),
                _ => None,
            };
            if let Some(peer_port) = expired {
                cuts.push((key, Cut::NotAPeer { peer_port }));
            } else if conn
                .partial_since
                .is_some_and(|since| !conn.read_paused && now.duration_since(since) >= partial)
            {
                cuts.push((key, Cut::Partial));
            } else if let Some(idle) = idle.filter(|_| conn.role == ConnRole::Client) {
                if conn.partial_since.is_none()
                    && conn.pending_replies() == 0
                    && conn.watches == 0
                    && conn.output_bytes() == 0
                    && now.duration_since(conn.last_active) >= idle
                {
                    cuts.push((key, Cut::Idle));
                }
            }
        }
        for (key, cut) in cuts {
            match cut {
                Cut::NotAPeer { peer_port: false } => {
                    let error = self.admission.too_many();
                    self.cut(key, &error, "on probation and not a peer's");
                }
                Cut::NotAPeer { peer_port: true } => {
                    let error = no_hello(self.config.id);
                    self.cut(key, &error, "no hello on the peer port");
                }
                Cut::Partial => {
                    let error = ErrorReply::bad_request(format!(
                        "the request line was not completed within {} ms of its first byte; \
                         closing the connection",
                        partial.as_millis()
                    ));
                    self.cut(key, &error, "a partial request timed out");
                }
                // Nothing was asked: no answer is owed, and an unasked line
                // could be taken for the reply to a request crossing it.
                Cut::Idle => self.close(key, "idle timeout"),
                Cut::TlsHandshake => self.close_tls_laggard(key),
            }
        }
    }
}
