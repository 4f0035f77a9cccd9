//! The peer handshake on this node's connections: a connection carries Raft
//! messages to the core only once it has proven it is a member's of this
//! cluster (`protocol/src/peer.rs` describes the exchange, `peer_auth.rs`
//! the proofs).
//!
//! Inbound, an accepted connection is a client's until it sends
//! `PEER_HELLO`; the hello is checked (addressed to us, from a member, of our
//! cluster), answered with our challenge, and the connection must then send
//! its proof within [`HANDSHAKE_TIMEOUT`]. Outbound, our connection to a peer
//! sends `PEER_HELLO` as soon as it is open and carries nothing else until
//! the peer's challenge has proven the peer; then it sends our proof, and our
//! Raft messages after it. Any refusal is an `ERROR` line, a log line on the
//! side that refused (rate-limited: a remote must not be able to flood the
//! log), and a closed connection; the side refused logs the error it got.

use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_error, encode_handshake, ErrorCode, ErrorReply, Handshake, NodeId, PeerChallenge,
    PeerHello, PeerProof, ReplyEnvelope, Request,
};

use super::admission::Port;
use super::conn::{ConnRole, Link, Proving};
use super::log_limiter::LogLimiter;
use super::Node;
use crate::peer_auth::{fresh_nonce, from_hex, to_hex, ClusterSecret, Side, Transcript};

/// A handshake must be complete this long after it began, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What this node proves itself with and checks others by.
pub struct PeerTrust {
    /// This node's cluster, recorded in its data directory.
    pub cluster_id: String,
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
    pub fn new(cluster_id: String, secret: Option<ClusterSecret>, peer_port: bool) -> PeerTrust {
        PeerTrust {
            cluster_id,
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
        let addr = self.peers.addr(peer).map_or("?".into(), |a| a.to_string());
        if self.took_refusal(
            key,
            peer,
            line,
            &format!("peer {peer} at {addr} refused our connection"),
        ) {
            return;
        }
        let challenge = match (link, poncho_protocol::decode_request(line)) {
            (Link::Hello { nonce, .. }, Ok(Request::Handshake(Handshake::PeerChallenge(c)))) => {
                (nonce, c)
            }
            _ => return self.close(key, "peer sent a line outside the handshake"),
        };
        match self.check_challenge(peer, &addr, challenge.0, &challenge.1) {
            Ok(proof) => {
                let line = Handshake::PeerProof(PeerProof { proof });
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.role = ConnRole::Outbound(peer, Link::Proven);
                    conn.push_output(|out| encode_handshake(out, &line));
                }
                self.conns.mark_dirty(key);
                self.peers.link_connected(peer);
            }
            Err(refusal) => self.refuse_handshake(key, refusal),
        }
    }

    /// Checks `peer`'s challenge to our hello (`nonce`); our proof if it holds.
    fn check_challenge(
        &self,
        peer: NodeId,
        addr: &str,
        nonce: [u8; 32],
        c: &PeerChallenge,
    ) -> Result<Option<String>, Refusal> {
        let ours = &self.trust.cluster_id;
        if c.cluster_id != *ours {
            return Err(cluster_mismatch(peer, addr, &c.cluster_id, ours));
        }
        let refuse = |message: String| Refusal {
            peer: Some(peer),
            code: ErrorCode::Unauthenticated,
            log: format!("refused peer {peer} at {addr}: {message}"),
            message,
        };
        if c.from != peer {
            return Err(refuse(format!(
                "we connected to node {peer}, and node {} answered",
                c.from
            )));
        }
        let Some(their_nonce) = from_hex(&c.nonce) else {
            return Err(refuse("the challenge's nonce is malformed".into()));
        };
        let transcript = Transcript {
            cluster_id: ours,
            opener: self.config.id,
            answerer: peer,
            opener_nonce: &nonce,
            answerer_nonce: &their_nonce,
        };
        let Some(secret) = &self.trust.secret else {
            return Ok(None);
        };
        match &c.proof {
            Some(proof) if transcript.verify(secret, Side::Answerer, proof) => {
                Ok(Some(transcript.proof(secret, Side::Opener)))
            }
            Some(_) => Err(refuse(
                "its proof does not match: it does not share this node's cluster secret".into(),
            )),
            None => Err(refuse(
                "it proved nothing: it runs without a cluster secret (--insecure) and this \
                 node has one"
                    .into(),
            )),
        }
    }

    /// A `PEER_HELLO` on accepted connection `key`: answered with our
    /// challenge if it is a member's of our cluster, addressed to us.
    pub(super) fn answer_hello(&mut self, key: usize, hello: PeerHello) {
        let addr = self
            .conns
            .get(key)
            .and_then(|c| c.stream.get_ref().peer_addr().ok())
            .map_or("?".into(), |a| a.to_string());
        let (id, peer) = (self.config.id, hello.from);
        let named = self.peers.contains(peer).then_some(peer);
        let refuse = |message: String| Refusal {
            peer: named,
            code: ErrorCode::Unauthenticated,
            log: format!("refused a peer connection from {addr}: {message}"),
            message,
        };
        let opener_nonce = from_hex(&hello.nonce);
        let on_peer_port = self.conns.get(key).is_some_and(|c| c.port == Port::Peer);
        let checked = if self.trust.peer_port && !on_peer_port {
            Err(refuse(format!(
                "peers connect to node {id}'s peer port, not its client port"
            )))
        } else if hello.cluster_id != self.trust.cluster_id {
            Err(cluster_mismatch(
                peer,
                &addr,
                &hello.cluster_id,
                &self.trust.cluster_id,
            ))
        } else if hello.to != id {
            Err(refuse(format!(
                "it is for node {}, and this is node {id}",
                hello.to
            )))
        } else if !self.peers.contains(peer) {
            Err(refuse(format!(
                "node {peer} is not a member of this cluster"
            )))
        } else if !self.admission.may_start_handshake() {
            Err(Refusal {
                peer: named,
                code: ErrorCode::Overloaded,
                message: "too many peer handshakes in progress; retry".into(),
                log: format!("refused a peer handshake from {addr}: too many in progress"),
            })
        } else {
            opener_nonce.ok_or_else(|| refuse("the hello's nonce is malformed".into()))
        };
        let opener_nonce = match checked {
            Ok(nonce) => nonce,
            Err(refusal) => return self.refuse_handshake(key, refusal),
        };
        let our_nonce = fresh_nonce();
        let proof = self.trust.secret.as_ref().map(|secret| {
            Transcript {
                cluster_id: &self.trust.cluster_id,
                opener: peer,
                answerer: id,
                opener_nonce: &opener_nonce,
                answerer_nonce: &our_nonce,
            }
            .proof(secret, Side::Answerer)
        });
        let challenge = Handshake::PeerChallenge(PeerChallenge {
            cluster_id: self.trust.cluster_id.clone(),
            from: id,
            nonce: to_hex(&our_nonce),
            proof,
        });
        let proving = Proving {
            peer,
            opener_nonce,
            our_nonce,
            until: Instant::now() + HANDSHAKE_TIMEOUT,
        };
        self.set_role(key, ConnRole::Proving(proving));
        if let Some(conn) = self.conns.get_mut(key) {
            conn.push_output(|out| encode_handshake(out, &challenge));
        }
        self.conns.mark_dirty(key);
    }

    /// The line after our challenge on accepted connection `key`: the
    /// opener's proof, or the connection is refused.
    pub(super) fn check_proof(&mut self, key: usize, proving: Proving, line: &[u8]) {
        let peer = proving.peer;
        let refuse = |message: &str| Refusal {
            peer: Some(peer),
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
                return self.refuse_handshake(key, refuse("only PEER_PROOF may follow PEER_HELLO"))
            }
        };
        let proven = match (&self.trust.secret, proof) {
            (None, _) => true,
            (Some(secret), Some(proof)) => Transcript {
                cluster_id: &self.trust.cluster_id,
                opener: peer,
                answerer: self.config.id,
                opener_nonce: &proving.opener_nonce,
                answerer_nonce: &proving.our_nonce,
            }
            .verify(secret, Side::Opener, &proof),
            (Some(_), None) => {
                return self.refuse_handshake(
                    key,
                    refuse(
                        "it proved nothing: it runs without a cluster secret (--insecure) and \
                         this node has one",
                    ),
                )
            }
        };
        if !proven {
            return self.refuse_handshake(
                key,
                refuse("its proof does not match: it does not share this node's cluster secret"),
            );
        }
        debug!("connection {key} proven to be peer {peer}'s");
        self.set_role(key, ConnRole::Peer(peer));
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
        let log = format!("{what}: {} ({})", error.message, error.code);
        let kind = format!("{peer} {}", error.message);
        self.trust.refusals.warn(&kind, &log);
        self.close(key, "refused by peer");
        true
    }

    /// Refuses the handshake on `key`: tells the other end, logs, and closes
    /// the connection once the refusal is written.
    fn refuse_handshake(&mut self, key: usize, refusal: Refusal) {
        let kind = format!("{:?} {}", refusal.peer, refusal.message);
        self.trust.refusals.warn(&kind, &refusal.log);
        let error = ErrorReply::new(refusal.code, refusal.message);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.push_output(|out| encode_error(out, None, &error));
        if conn.is_inbound() {
            conn.close_after_flush = true;
            self.conns.mark_dirty(key);
        } else {
            // Ours: the refusal goes out now and the link is closed, to be
            // tried again after its backoff.
            let _ = conn.flush();
            self.close(key, "we refused the peer's handshake");
        }
    }

    /// Closes handshakes past their deadline, inbound and outbound.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let late: Vec<(usize, Option<NodeId>)> = self
            .conns
            .iter()
            .filter_map(|(key, c)| match c.role {
                ConnRole::Proving(p) if p.until <= now && !c.close_after_flush => {
                    Some((key, Some(p.peer)))
                }
                ConnRole::Outbound(_, Link::Hello { until, .. }) if until <= now => {
                    Some((key, None))
                }
                _ => None,
            })
            .collect();
        for (key, inbound) in late {
            if let Some(peer) = inbound {
                let message = format!(
                    "the handshake was not completed within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                );
                self.refuse_handshake(
                    key,
                    Refusal {
                        peer: Some(peer),
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
        code: ErrorCode::ClusterMismatch,
        message: format!(
            "this node belongs to cluster {ours}, and node {peer} to cluster {theirs}"
        ),
        log: format!(
            "refused node {peer} at {addr}: it belongs to cluster {theirs}, this node to \
             cluster {ours} (another cluster, or a data directory from one)"
        ),
    }
}
