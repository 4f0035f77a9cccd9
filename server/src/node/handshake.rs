//! The peer handshake on this node's connections: a connection carries Raft
//! messages to the core only once it has proven it is a member's of this
//! cluster (`protocol/src/peer.rs` describes the exchange, `peer_auth.rs`
//! the proofs).
//!
//! Inbound, an accepted connection is a client's unless its first line is
//! `PEER_HELLO`; the hello is checked (addressed to us, from a member, of our
//! cluster), it must find room (`admission.rs` bounds handshakes per member
//! and per source address), and is answered with our challenge; the
//! opener's proof must follow within [`PROOF_TIMEOUT`], and once it checks out we answer with our
//! own proof (`PEER_ACCEPT`) and take the connection's Raft messages as the
//! member's. Outbound, our connection to a peer sends `PEER_HELLO` as soon
//! as it is open, our proof for the peer's challenge, and our Raft messages
//! only once the peer's `PEER_ACCEPT` has proven the peer. Any refusal is an
//! `ERROR` line, a log line on the side that refused (rate-limited: a remote
//! must not be able to flood the log), and a closed connection; the side
//! refused logs the error it got.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_error, encode_handshake, ErrorCode, ErrorReply, Handshake, NodeId, PeerAccept,
    PeerChallenge, PeerHello, PeerProof, ReplyEnvelope, Request,
};

use super::admission::{Port, MAX_PEER_CONNS_PER_MEMBER};
use super::conn::{Conn, ConnRole, Link, Proving};
use super::log_limiter::LogLimiter;
use super::Node;
use crate::peer_auth::{fresh_nonce, from_hex, to_hex, ClusterSecret, Nonce, Side, Transcript};

/// Our handshake on a connection we open must be complete this long after
/// our hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An inbound handshake's opener must send its proof this long after our
/// challenge: a real peer sends it as soon as the challenge arrives (one
/// round trip), and a connection that only says hello holds a handshake's
/// place no longer than this.
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(2);
const SECRET_MISMATCH: &str =
    "its proof does not match: it does not share this node's cluster secret";
const NO_PROOF: &str = "it proved nothing: it runs without a cluster secret (--insecure) and this \
                        node has one";

/// What this node proves itself with and checks others by.
pub struct PeerTrust {
    /// This node's cluster, recorded in its data directory (empty while
    /// `adopting`).
    pub cluster_id: String,
    /// The node joins a cluster and knows no cluster id yet: it takes the
    /// one its first proven peer names, and records it.
    pub adopting: bool,
    /// While adopting: the cluster id each handshake under way named, by
    /// connection key (one per connection: bounded as connections are).
    claims: HashMap<usize, String>,
    /// `None`: peers prove nothing in the handshake: the node runs
    /// `--insecure`, or its peer port's client certificates prove them (ids
    /// and the cluster id are still checked).
    pub secret: Option<ClusterSecret>,
    /// Whether peers have a port of their own (`--peer-addr`): a hello on
    /// the client port is then refused.
    peer_port: bool,
    /// Refusals, each (peer, what) logged once per window: a misconfigured
    /// peer retrying, or a remote flooding hellos, must not fill the log,
    /// while distinct refusals (both directions of one bad link, or a
    /// second peer) are each logged at once.
    refusals: LogLimiter,
}

impl PeerTrust {
    pub fn new(
        cluster_id: Option<String>,
        secret: Option<ClusterSecret>,
        peer_port: bool,
    ) -> PeerTrust {
        PeerTrust {
            adopting: cluster_id.is_none(),
            claims: HashMap::new(),
            cluster_id: cluster_id.unwrap_or_default(),
            secret,
            peer_port,
            refusals: LogLimiter::new(),
        }
    }
}

/// A handshake that cannot go on: the code and message the other end gets,
/// and what this node logs.
struct Refusal {
    /// The member it concerns, if one is named (for the log's rate limit).
    peer: Option<NodeId>,
    /// What kind of refusal, for the log's rate limit.
    kind: &'static str,
    code: ErrorCode,
    message: String,
    log: String,
}

impl Node {
    /// Our new connection `key` to `peer`: its first line is our hello (it
    /// leaves once the connection is established).
    pub(super) fn send_hello(&mut self, key: usize, peer: NodeId) {
        let nonce = fresh_nonce();
        let hello = Handshake::PeerHello(PeerHello {
            cluster_id: self.trust.cluster_id.clone(),
            from: self.config.id,
            to: peer,
            nonce: to_hex(&nonce),
        });
        let until = Instant::now() + HANDSHAKE_TIMEOUT;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.role = ConnRole::Outbound(peer, Link::Hello { nonce, until });
            conn.push_output(|out| encode_handshake(out, &hello));
        }
        self.conns.mark_dirty(key);
    }

    /// A line read on our connection to `peer`: its challenge, while we
    /// wait for one, or a refusal. Anything else closes it.
    pub(super) fn handle_outbound_line(
        &mut self,
        key: usize,
        peer: NodeId,
        link: Link,
        line: &[u8],
    ) {
        let addr = self
            .peers
            .peer_addr(peer)
            .map_or("?".into(), |a| a.to_string());
        if self.took_refusal(
            key,
            peer,
            line,
            &format!("peer {peer} at {addr} refused our connection"),
        ) {
            return;
        }
        let next = match (link, poncho_protocol::decode_request(line)) {
            // A node that has no link to us (it joins, and does not know
            // our address yet) answers on our connection to it.
            (Link::Proven, Ok(Request::Peer { src_id, message })) => {
                return self.handle_peer_message(key, Some(peer), src_id, message)
            }
            // The whole handshake keeps the deadline the hello set.
            (Link::Hello { nonce, until }, Ok(Request::Handshake(Handshake::PeerChallenge(c)))) => {
                self.check_challenge(peer, &addr, &c).map(|their| {
                    let proof = self.transcript_proof(peer, &nonce, &their, Side::Opener);
                    let reply = Handshake::PeerProof(PeerProof { proof });
                    (
                        Link::Proving {
                            nonce,
                            their,
                            until,
                        },
                        Some(reply),
                    )
                })
            }
            (
                Link::Proving { nonce, their, .. },
                Ok(Request::Handshake(Handshake::PeerAccept(a))),
            ) => self
                .check_accept(peer, &addr, &nonce, &their, a.proof.as_deref())
                .map(|()| (Link::Proven, None)),
            _ => return self.close(key, "peer sent a line outside the handshake"),
        };
        let (link, reply) = match next {
            Ok(next) => next,
            Err(refusal) => return self.refuse_handshake(key, refusal),
        };
        if let Some(conn) = self.conns.get_mut(key) {
            conn.role = ConnRole::Outbound(peer, link);
            if let Some(reply) = &reply {
                conn.push_output(|out| encode_handshake(out, reply));
            }
        }
        self.conns.mark_dirty(key);
        if link == Link::Proven {
            self.peers.link_connected(peer);
        }
    }

    /// The proof `side` makes for the handshake between us and `peer`:
    /// `ours` is our nonce, `theirs` the peer's. `None` without a secret.
    fn transcript_proof(
        &self,
        peer: NodeId,
        ours: &Nonce,
        theirs: &Nonce,
        side: Side,
    ) -> Option<String> {
        let secret = self.trust.secret.as_ref()?;
        Some(
            self.transcript(peer, ours, theirs, side)
                .proof(secret, side),
        )
    }

    /// The transcript of the handshake between us and `peer`, who is the
    /// opener if we are the answerer (`side` is the side we prove as).
    fn transcript<'a>(
        &'a self,
        peer: NodeId,
        ours: &'a Nonce,
        theirs: &'a Nonce,
        side: Side,
    ) -> Transcript<'a> {
        self.transcript_in(&self.trust.cluster_id, peer, ours, theirs, side)
    }

    /// The same, for the cluster `cluster_id` names.
    fn transcript_in<'a>(
        &'a self,
        cluster_id: &'a str,
        peer: NodeId,
        ours: &'a Nonce,
        theirs: &'a Nonce,
        side: Side,
    ) -> Transcript<'a> {
        let (opener, answerer, opener_nonce, answerer_nonce) = match side {
            Side::Opener => (self.config.id, peer, ours, theirs),
            Side::Answerer => (peer, self.config.id, theirs, ours),
        };
        Transcript {
            cluster_id,
            opener,
            answerer,
            opener_nonce,
            answerer_nonce,
        }
    }

    /// Checks `peer`'s challenge to our hello: its nonce if it holds.
    fn check_challenge(
        &self,
        peer: NodeId,
        addr: &str,
        c: &PeerChallenge,
    ) -> Result<Nonce, Refusal> {
        let ours = &self.trust.cluster_id;
        if c.cluster_id != *ours {
            return Err(cluster_mismatch(peer, addr, &c.cluster_id, ours));
        }
        let refuse = |kind, message: String| Refusal {
            peer: Some(peer),
            kind,
            code: ErrorCode::Unauthenticated,
            log: format!("refused peer {peer} at {addr}: {message}"),
            message,
        };
        if c.from != peer {
            let m = format!("we connected to node {peer}, and node {} answered", c.from);
            return Err(refuse("wrong node", m));
        }
        from_hex(&c.nonce)
            .ok_or_else(|| refuse("malformed", "the challenge's nonce is malformed".into()))
    }

    /// Checks the peer's proof in its `PEER_ACCEPT`, the last step of our
    /// handshake with it.
    fn check_accept(
        &self,
        peer: NodeId,
        addr: &str,
        ours: &Nonce,
        theirs: &Nonce,
        proof: Option<&str>,
    ) -> Result<(), Refusal> {
        let transcript = self.transcript(peer, ours, theirs, Side::Opener);
        let Some((kind, message)) = self.proof_problem(&transcript, Side::Answerer, proof) else {
            return Ok(());
        };
        Err(Refusal {
            peer: Some(peer),
            kind,
            code: ErrorCode::Unauthenticated,
            log: format!("refused peer {peer} at {addr}: {message}"),
            message: message.to_string(),
        })
    }

    /// What is wrong with `prover`'s `proof` of `transcript` (a kind for
    /// the log and a message), or `None` if it holds or this node has no
    /// secret to check it with.
    fn proof_problem(
        &self,
        transcript: &Transcript<'_>,
        prover: Side,
        proof: Option<&str>,
    ) -> Option<(&'static str, &'static str)> {
        let secret = self.trust.secret.as_ref()?;
        match proof {
            Some(p) if transcript.verify(secret, prover, p) => None,
            Some(_) => Some(("secret", SECRET_MISMATCH)),
            None => Some(("no proof", NO_PROOF)),
        }
    }

    /// A `PEER_HELLO` on accepted connection `key`: answered with our
    /// challenge if it is a member's of our cluster, addressed to us.
    pub(super) fn answer_hello(&mut self, key: usize, hello: PeerHello) {
        let (opener_nonce, source) = match self.check_hello(key, &hello) {
            Ok(checked) => checked,
            Err(refusal) => return self.refuse_handshake(key, refusal),
        };
        let our_nonce = fresh_nonce();
        let claims_cluster = self.trust.adopting;
        let cluster_id = if claims_cluster {
            self.trust.claims.insert(key, hello.cluster_id.clone());
            hello.cluster_id
        } else {
            self.trust.cluster_id.clone()
        };
        let challenge = Handshake::PeerChallenge(PeerChallenge {
            cluster_id,
            from: self.config.id,
            nonce: to_hex(&our_nonce),
        });
        let proving = Proving {
            peer: hello.from,
            claims_cluster,
            source,
            opener_nonce,
            our_nonce,
            until: Instant::now() + PROOF_TIMEOUT,
        };
        self.set_role(key, ConnRole::Proving(proving));
        if let Some(conn) = self.conns.get_mut(key) {
            conn.push_output(|out| encode_handshake(out, &challenge));
        }
        self.conns.mark_dirty(key);
    }

    /// Whether a hello may go on: the opener's nonce and address if it may.
    fn check_hello(&self, key: usize, hello: &PeerHello) -> Result<(Nonce, IpAddr), Refusal> {
        let conn = self.conns.get(key);
        let from = conn.and_then(|c| c.stream.get_ref().peer_addr().ok());
        let addr = from.map_or("?".into(), |a| a.to_string());
        // A connection without an address is gone; it counts as one source.
        let source = from.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let (id, peer) = (self.config.id, hello.from);
        // Only a member's id is a kind of its own in the log's rate limit.
        let named = self.peers.contains(peer).then_some(peer);
        let refuse = |kind, code, message: String| Refusal {
            peer: named,
            kind,
            code,
            log: format!("refused a peer connection from {addr}: {message}"),
            message,
        };
        let unauthenticated =
            |kind, message| Err(refuse(kind, ErrorCode::Unauthenticated, message));
        // The hello itself is the one line handled so far.
        if conn.is_some_and(|c| c.lines_handled > 1) {
            return unauthenticated(
                "late hello",
                "a peer handshake begins a connection: this one sent other lines first".into(),
            );
        }
        if self.trust.peer_port && !conn.is_some_and(|c| c.port == Port::Peer) {
            return unauthenticated(
                "client port",
                format!("peers connect to node {id}'s peer port, not its client port"),
            );
        }
        if hello.cluster_id != self.trust.cluster_id && !self.trust.adopting {
            let mut refusal =
                cluster_mismatch(peer, &addr, &hello.cluster_id, &self.trust.cluster_id);
            refusal.peer = named;
            return Err(refusal);
        }
        // Only a committed removal is told: one still in flight may be
        // undone, and a node told it is removed stops for good.
        if self.removed_by_committed(peer) {
            let m = format!("node {peer} was removed from this cluster; it takes part no more");
            return Err(refuse("removed", ErrorCode::Removed, m));
        }
        // A proven node that is not (yet) in this node's configuration may
        // be a member this node has not heard of (its log lags): the core
        // decides what it may do (see `Raft::step`).
        if hello.to != id || peer == id || peer == 0 {
            let m = format!(
                "a hello from node {peer} for node {}: this is node {id}",
                hello.to
            );
            return unauthenticated("not for us", m);
        }
        if let Some(m) = self.peer_cert_problem(conn, peer) {
            return unauthenticated("certificate", m);
        }
        if let Err(m) = self.admission.may_start_handshake(source, peer) {
            return Err(refuse("busy", ErrorCode::Overloaded, m));
        }
        let nonce = from_hex(&hello.nonce).ok_or_else(|| {
            refuse(
                "malformed",
                ErrorCode::Unauthenticated,
                "the hello's nonce is malformed".into(),
            )
        })?;
        Ok((nonce, source))
    }

    /// Why `conn`'s peer certificate does not prove it is member `peer`'s,
    /// if it does not (see `Tls::peer_cert_problem`).
    fn peer_cert_problem(&self, conn: Option<&Conn>, peer: NodeId) -> Option<String> {
        let member = self.peers.peer_addr(peer)?.ip();
        let certs = conn.and_then(|c| c.stream.peer_certificates());
        let problem = self.tls.peer_cert_problem(certs, member)?;
        Some(format!("a hello from node {peer}: {problem}"))
    }

    /// The line after our challenge on accepted connection `key`: the
    /// opener's proof, answered with ours, or the connection is refused.
    pub(super) fn check_proof(&mut self, key: usize, proving: Proving, line: &[u8]) {
        let peer = proving.peer;
        let refuse = |kind, message: &str| Refusal {
            peer: Some(peer),
            kind,
            code: ErrorCode::Unauthenticated,
            message: message.to_string(),
            log: format!("refused peer {peer}'s connection: {message}"),
        };
        if self.took_refusal(
            key,
            peer,
            line,
            &format!("node {peer} refused our challenge"),
        ) {
            return;
        }
        let proof = match poncho_protocol::decode_request(line) {
            Ok(Request::Handshake(Handshake::PeerProof(p))) => p.proof,
            _ => {
                let refusal = refuse("sequence", "only PEER_PROOF may follow PEER_CHALLENGE");
                return self.refuse_handshake(key, refusal);
            }
        };
        let claimed = if proving.claims_cluster {
            self.trust.claims.remove(&key)
        } else {
            None
        };
        if let Some(claimed) = &claimed {
            if !self.trust.adopting && *claimed != self.trust.cluster_id {
                let m = "it named another cluster than the one this node has joined since";
                return self.refuse_handshake(key, refuse("cluster", m));
            }
        }
        let (ours, theirs) = (&proving.our_nonce, &proving.opener_nonce);
        let cluster = claimed.as_deref().unwrap_or(&self.trust.cluster_id);
        let transcript = self.transcript_in(cluster, peer, ours, theirs, Side::Answerer);
        if let Some((kind, message)) =
            self.proof_problem(&transcript, Side::Opener, proof.as_deref())
        {
            return self.refuse_handshake(key, refuse(kind, message));
        }
        let accept = Handshake::PeerAccept(PeerAccept {
            proof: self.trust.secret.as_ref().map(|secret| {
                self.transcript_in(cluster, peer, ours, theirs, Side::Answerer)
                    .proof(secret, Side::Answerer)
            }),
        });
        if let Some(cluster) = claimed {
            self.adopt_cluster_id(peer, cluster);
        }
        debug!("connection {key} proven to be peer {peer}'s");
        self.make_room_for_peer_conn(peer);
        self.set_role(key, ConnRole::Peer(peer));
        if let Some(conn) = self.conns.get_mut(key) {
            conn.push_output(|out| encode_handshake(out, &accept));
        }
        self.conns.mark_dirty(key);
    }

    /// A joining node's first proven peer named its cluster: the cluster id
    /// is this node's from now on, recorded in its data directory.
    fn adopt_cluster_id(&mut self, peer: NodeId, cluster: String) {
        if !self.trust.adopting {
            return;
        }
        match crate::peer_auth::recorded_cluster_id(
            &self.config.data_dir,
            &cluster,
            self.config.fsync,
        ) {
            Ok((id, _)) => {
                info!("joined cluster {id}: node {peer} proved it is a member");
                self.trust.cluster_id = id;
                self.trust.adopting = false;
            }
            Err(e) => warn!("cannot record the cluster id {cluster}: {e}"),
        }
    }

    /// Before another connection of `peer`'s is proven: if it has as many
    /// as it may keep, its oldest is told and closed (a reconnect replaces
    /// a connection whose close was not seen; nobody, `--insecure` or not,
    /// keeps more open).
    fn make_room_for_peer_conn(&mut self, peer: NodeId) {
        while self.admission.peer_conns_full(peer) {
            let oldest = self
                .conns
                .iter()
                .filter(|(_, c)| c.role == ConnRole::Peer(peer))
                .min_by_key(|(_, c)| c.opened)
                .map(|(key, _)| key);
            let Some(key) = oldest else {
                return;
            };
            let error = ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                    "replaced by a newer connection of node {peer}'s (at most \
                     {MAX_PEER_CONNS_PER_MEMBER} are kept)"
                ),
            );
            if let Some(conn) = self.conns.get_mut(key) {
                conn.push_output(|out| encode_error(out, None, &error));
                let _ = conn.flush();
            }
            self.close(key, "replaced by a newer connection of the same peer");
        }
    }

    /// If `line` is the other end's refusal (an `ERROR` line), logs it after
    /// `what` and closes the connection; whether it was.
    fn took_refusal(&mut self, key: usize, peer: NodeId, line: &[u8], what: &str) -> bool {
        let Some(error) = serde_json::from_slice::<ReplyEnvelope>(line)
            .ok()
            .and_then(|e| e.error())
        else {
            return false;
        };
        // The remote's words are theirs: shortened, on one line, and never
        // part of the rate limit's kind (a remote must not choose how many
        // lines it gets, nor forge one).
        if error.code == ErrorCode::Removed {
            // A member says this node was removed: it stops taking part.
            self.members.told_removed = true;
        }
        let log = format!("{what}: {} ({})", printable(&error.message), error.code);
        let kind = format!("{peer} refused us: {}", error.code);
        self.trust.refusals.warn(&kind, &log);
        self.close(key, "refused by peer");
        true
    }

    /// Refuses the handshake on `key`: tells the other end (as far as the
    /// socket takes it now), logs, and closes the connection at once.
    fn refuse_handshake(&mut self, key: usize, refusal: Refusal) {
        // One kind per member named (or one for all anonymous refusals) and
        // reason: a remote cannot widen the log's budget by varying ids.
        let kind = format!("{:?} {}", refusal.peer, refusal.kind);
        self.trust.refusals.warn(&kind, &refusal.log);
        let error = ErrorReply::new(refusal.code, refusal.message);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // The refusal goes out as far as the socket takes it now, and the
        // connection is closed at once: a refused connection must not keep
        // a handshake's place while its output waits to drain.
        conn.push_output(|out| encode_error(out, None, &error));
        let _ = conn.flush();
        self.close(key, "handshake refused");
    }

    /// Closes handshakes past their deadline, inbound and outbound.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let late: Vec<(usize, Option<NodeId>)> =
            self.conns
                .iter()
                .filter_map(|(key, c)| match c.role {
                    ConnRole::Proving(p) if p.until <= now && !c.close_after_flush => {
                        Some((key, Some(p.peer)))
                    }
                    ConnRole::Outbound(
                        _,
                        Link::Hello { until, .. } | Link::Proving { until, .. },
                    ) if until <= now => Some((key, None)),
                    _ => None,
                })
                .collect();
        for (key, inbound) in late {
            if let Some(peer) = inbound {
                let message = format!(
                    "the handshake was not completed: no proof came within {} s of the \
                     challenge",
                    PROOF_TIMEOUT.as_secs()
                );
                self.refuse_handshake(
                    key,
                    Refusal {
                        peer: Some(peer),
                        kind: "timeout",
                        code: ErrorCode::Unauthenticated,
                        log: format!("closed a connection claiming to be node {peer}'s: {message}"),
                        message,
                    },
                );
            } else {
                self.close(key, "the peer did not answer our handshake in time");
            }
        }
    }
}

fn cluster_mismatch(peer: NodeId, addr: &str, theirs: &str, ours: &str) -> Refusal {
    Refusal {
        peer: Some(peer),
        kind: "cluster",
        code: ErrorCode::ClusterMismatch,
        // Our id is not told to whoever asks; the log has both.
        message: format!("node {peer}'s cluster id {theirs} is not this node's"),
        log: format!(
            "refused node {peer} at {addr}: it belongs to cluster {theirs}, this node to \
             cluster {ours} (another cluster, or a data directory from one)"
        ),
    }
}

/// A remote's text as it may appear in our log: at most 200 characters, with
/// control characters (newlines included) shown escaped.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 200 {
        out.push_str("...");
    }
    out
}
