//! The peer path: one outbound connection per other member, carrying our
//! messages to it (theirs arrive on connections they open to us), opened
//! again with backoff when it drops; probes from non-members; and the
//! bootstrap hint, which waits for enough links to be up.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;
use poncho_protocol::{encode_peer, ErrorReply, Member, Membership, NodeId, RaftMessage};

use super::conn::{ConnRole, Link};
use super::Node;

/// A slow peer's unsent messages beyond this are dropped (Raft resends).
const PEER_OUTPUT_LIMIT: usize = 64 << 20;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// The other members, and our link to each.
pub struct Peers {
    links: BTreeMap<NodeId, PeerLink>,
    /// `--peer-route`: where to dial a member instead of its configured
    /// peer address (a proxy, a NAT, a test harness's fault injector).
    routes: BTreeMap<NodeId, SocketAddr>,
    /// The `is_leader` hint, not yet acted on.
    bootstrap_pending: bool,
}

struct PeerLink {
    /// The member's address for clients (what redirects name).
    addr: SocketAddr,
    /// Its peer port, or `addr`: what names it (TLS checks its certificate
    /// against this address).
    peer_addr: SocketAddr,
    /// Where we connect to reach it: `peer_addr`, or its `--peer-route`.
    dial: SocketAddr,
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

impl PeerLink {
    fn new(member: &Member, route: Option<SocketAddr>, now: Instant) -> PeerLink {
        PeerLink {
            addr: member.addr,
            peer_addr: member.peer_addr(),
            dial: route.unwrap_or(member.peer_addr()),
            conn: None,
            next_attempt: now,
            backoff: RECONNECT_MIN,
            reported_down: false,
            connected_at: None,
        }
    }

    /// Waits out the backoff before the next attempt, and doubles it.
    fn back_off(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
    }
}

impl Peers {
    /// Links to `membership`'s members but `own`, each reached at its
    /// `routes` entry if it has one.
    pub fn new(
        membership: &Membership,
        own: NodeId,
        routes: BTreeMap<NodeId, SocketAddr>,
        bootstrap: bool,
        now: Instant,
    ) -> Peers {
        let mut peers = Peers {
            links: BTreeMap::new(),
            routes,
            bootstrap_pending: bootstrap,
        };
        peers.sync(membership, own, now);
        peers
    }

    /// Makes the links those to `membership`'s members but `own`: a new
    /// member gets one, a member that left loses its own, a member whose
    /// addresses changed is reached at the new ones. Returns the
    /// connections to close (those of links gone or moved).
    pub fn sync(&mut self, membership: &Membership, own: NodeId, now: Instant) -> Vec<usize> {
        let mut closing = Vec::new();
        self.links.retain(|id, link| {
            let keep = membership.contains(*id) && *id != own;
            if !keep {
                closing.extend(link.conn);
            }
            keep
        });
        for member in membership.members.iter().filter(|m| m.id != own) {
            match self.links.get_mut(&member.id) {
                Some(link) if link.addr != member.addr || link.peer_addr != member.peer_addr() => {
                    info!(
                        "member {} moved to {} (peers: {})",
                        member.id,
                        member.addr,
                        member.peer_addr()
                    );
                    closing.extend(link.conn.take());
                    *link = PeerLink::new(member, self.routes.get(&member.id).copied(), now);
                }
                Some(_) => {}
                None => {
                    let route = self.routes.get(&member.id).copied();
                    self.links
                        .insert(member.id, PeerLink::new(member, route, now));
                }
            }
        }
        closing
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.links.contains_key(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.links.get(&id).map(|p| p.addr)
    }

    /// Where we connect to member `id`: its peer port, or its address.
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.links.get(&id).map(|p| p.peer_addr)
    }

    /// The next reconnect due, if a link is down.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.links
            .values()
            .filter(|p| p.conn.is_none())
            .map(|p| p.next_attempt)
            .min()
    }

    /// The outbound connection `key` to `peer` closed.
    pub fn link_closed(&mut self, peer: NodeId, key: usize, why: &str) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.conn != Some(key) {
            return;
        }
        link.conn = None;
        link.connected_at = None;
        link.back_off(Instant::now());
        if !link.reported_down {
            link.reported_down = true;
            info!("peer {peer} at {} unreachable: {why}", link.peer_addr);
        }
    }

    /// The outbound connection to `peer` is established.
    pub fn link_connected(&mut self, peer: NodeId) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.connected_at = Some(Instant::now());
        }
    }

    /// Resets the backoff of links that have stayed up long enough.
    fn settle(&mut self, now: Instant) {
        for (peer, link) in self.links.iter_mut() {
            if link
                .connected_at
                .is_some_and(|t| now.duration_since(t) >= STABLE_CONNECTION)
            {
                link.connected_at = None;
                link.backoff = RECONNECT_MIN;
                if link.reported_down {
                    link.reported_down = false;
                    info!("peer {peer} at {} reachable again", link.peer_addr);
                }
            }
        }
    }
}

impl Node {
    /// Opens the links that are down and due for another attempt.
    pub(super) fn connect_peers(&mut self, now: Instant) {
        self.peers.settle(now);
        let due: Vec<(NodeId, SocketAddr, SocketAddr)> = self
            .peers
            .links
            .iter()
            .filter(|(_, p)| p.conn.is_none() && p.next_attempt <= now)
            .map(|(&id, p)| (id, p.dial, p.peer_addr))
            .collect();
        for (id, dial, addr) in due {
            let stream = connect_from(self.config.host, dial)
                .map_err(|e| e.to_string())
                .and_then(|stream| self.tls.to_peer(stream, addr));
            let result = stream.map(|stream| {
                // Replaced by `send_hello` before anything is sent; never
                // a proven placeholder.
                let placeholder = Link::Hello {
                    nonce: [0; 32],
                    until: now,
                };
                let key = self.add_conn(
                    stream,
                    ConnRole::Outbound(id, placeholder),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if let Some(key) = key {
                    self.send_hello(key, id);
                }
                key
            });
            let Some(link) = self.peers.links.get_mut(&id) else {
                continue;
            };
            match result {
                Ok(Some(key)) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.connecting = true;
                    }
                    link.conn = Some(key);
                }
                Ok(None) | Err(_) => link.back_off(now),
            }
        }
    }

    pub(super) fn send_to_peer(&mut self, to: NodeId, message: &RaftMessage) {
        let key = match self.peers.links.get(&to) {
            Some(link) => link.conn,
            // Not in our configuration (we join, and know no members yet;
            // or it is a member we have not heard of): answer on the proven
            // connection it opened to us, if it has one.
            None => self
                .conns
                .iter()
                .find(|(_, c)| c.role == ConnRole::Peer(to))
                .map(|(key, _)| key),
        };
        let Some(key) = key else {
            return; // not connected: Raft treats it as a lost message
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let proven =
            conn.role == ConnRole::Outbound(to, Link::Proven) || conn.role == ConnRole::Peer(to);
        if !proven {
            return; // the handshake is not done: lost, as if not connected
        }
        if conn.output_bytes() > PEER_OUTPUT_LIMIT {
            return;
        }
        let from = self.config.id;
        conn.push_output(|out| encode_peer(out, Some(from), None, message));
        // Write now rather than at the end of the iteration, so the message
        // is on the wire before this node's fsync.
        self.flush_conn(key);
    }

    /// A Raft message read on connection `key`: on one proven to be a
    /// member's (`proven`) it goes to the core as that member's; on any other
    /// it is a probe, whatever `src_id` it claims.
    pub(super) fn handle_peer_message(
        &mut self,
        key: usize,
        proven: Option<NodeId>,
        src_id: Option<NodeId>,
        message: RaftMessage,
    ) {
        match proven {
            Some(id) if src_id.is_none_or(|s| s == id) => match message {
                // The node's own messages between peers, not Raft's.
                RaftMessage::LeaseKeepalive(_) | RaftMessage::LeaseKeepaliveReply(_) => {
                    self.handle_lease_peer_message(id, message)
                }
                message => self.raft.step(id, message),
            },
            Some(id) => debug!(
                "dropped a {} claiming to be from node {src_id:?} on node {id}'s connection",
                message.msg_type()
            ),
            None => self.answer_probe(key, message),
        }
    }

    /// A probe (the shell's `append` / `vote`, or a node that is not a
    /// member): answered with our term, rejected. The core never sees it,
    /// so it changes nothing.
    fn answer_probe(&mut self, key: usize, message: RaftMessage) {
        let reply = match message {
            RaftMessage::AppendEntries(_) | RaftMessage::RequestVote(_) => {
                message.refusal(self.raft.term())
            }
            _ => None,
        };
        let Some(reply) = reply else {
            let error =
                ErrorReply::bad_request("only APPEND_ENTRY and REQUEST_VOTE may be sent as probes");
            return self.reply_error_now(key, None, &error);
        };
        self.conns
            .reply_now(key, |out| encode_peer(out, None, None, &reply));
    }

    /// Acts on the `is_leader` hint once enough peers are connected for the
    /// vote requests to reach a quorum.
    pub(super) fn maybe_bootstrap(&mut self) {
        if !self.peers.bootstrap_pending {
            return;
        }
        let connected = self
            .peers
            .links
            .iter()
            .filter(|(&id, p)| {
                p.conn
                    .and_then(|k| self.conns.get(k))
                    .is_some_and(|c| c.role == ConnRole::Outbound(id, Link::Proven))
            })
            .count();
        if connected + 1 >= self.raft.quorum() {
            self.peers.bootstrap_pending = false;
            info!("bootstrap hint: campaigning now ({connected} peers connected)");
            self.raft.campaign_now();
        }
    }
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
