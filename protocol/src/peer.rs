//! The peer handshake: how a connection one node opens to another proves,
//! before it carries any Raft message, that both ends are members of the same
//! cluster.
//!
//! 1. The opener sends [`PeerHello`]: the cluster id it belongs to, its id,
//!    the id it expects to reach, and a fresh nonce.
//! 2. The answerer checks the cluster id and both ids and sends
//!    [`PeerChallenge`]: its own fresh nonce.
//! 3. The opener sends [`PeerProof`]: when the cluster has a secret, an HMAC
//!    over both ids, the cluster id and both nonces, keyed by the secret.
//! 4. The answerer checks it and sends [`PeerAccept`], its own proof over
//!    the same transcript (with another label). From then on, and only then,
//!    it hands the Raft messages read on that connection to its core, as
//!    coming from the opener; the opener sends Raft messages only once the
//!    answerer's proof checks out.
//!
//! The opener proves first, so a program that merely reaches a node's port
//! never gets a proof to guess the secret from offline.
//! The secret itself never crosses the wire, both nonces are fresh per
//! connection (so a recorded proof is worth nothing on another), and each
//! proof names both ids and the cluster (so it cannot be reflected or
//! reused between nodes or clusters). A refusal is an `ERROR` line, then the
//! connection is closed. How the proofs are computed is the server's
//! business (`server/src/node/handshake.rs`); here are only the messages and
//! their limits.

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// A nonce and a proof are 32 bytes, written as 64 lowercase hex digits.
pub const HANDSHAKE_HEX_LEN: usize = 64;
/// The longest cluster id a handshake carries.
pub const MAX_CLUSTER_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerHello {
    pub cluster_id: String,
    /// The opener's id.
    pub from: NodeId,
    /// The id the opener means to reach.
    pub to: NodeId,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerChallenge {
    pub cluster_id: String,
    /// The answerer's id.
    pub from: NodeId,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerProof {
    /// The opener's proof; absent when the cluster has no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAccept {
    /// The answerer's proof; absent when the cluster has no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Whether `s` is a nonce or proof as the handshake writes them.
pub fn is_handshake_hex(s: &str) -> bool {
    s.len() == HANDSHAKE_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` may be a cluster id: 1 to [`MAX_CLUSTER_ID_LEN`] ASCII
/// letters, digits, `-` or `_`.
pub fn is_cluster_id(s: &str) -> bool {
    (1..=MAX_CLUSTER_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl PeerHello {
    pub(crate) fn check(&self) -> Result<(), String> {
        check_cluster_id(&self.cluster_id)?;
        check_hex("nonce", Some(&self.nonce))
    }
}

impl PeerChallenge {
    pub(crate) fn check(&self) -> Result<(), String> {
        check_cluster_id(&self.cluster_id)?;
        check_hex("nonce", Some(&self.nonce))
    }
}

impl PeerAccept {
    pub(crate) fn check(&self) -> Result<(), String> {
        check_hex("proof", self.proof.as_deref())
    }
}

impl PeerProof {
    pub(crate) fn check(&self) -> Result<(), String> {
        check_hex("proof", self.proof.as_deref())
    }
}

fn check_cluster_id(id: &str) -> Result<(), String> {
    if is_cluster_id(id) {
        Ok(())
    } else {
        Err(format!(
            "cluster_id must be 1 to {MAX_CLUSTER_ID_LEN} letters, digits, '-' or '_'"
        ))
    }
}

fn check_hex(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if !is_handshake_hex(v) => Err(format!(
            "{name} must be {HANDSHAKE_HEX_LEN} lowercase hex digits"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::envelope::{decode_request, encode_handshake, Request};
    use crate::table::Handshake;

    fn decode(line: &str) -> Result<Handshake, String> {
        match decode_request(line.as_bytes()) {
            Ok(Request::Handshake(h)) => Ok(h),
            Ok(other) => Err(format!("not a handshake: {other:?}")),
            Err(e) => Err(e.error.message),
        }
    }

    #[test]
    fn handshake_lines_round_trip_and_are_held_to_their_limits() {
        let nonce = "0a".repeat(32);
        let hello = format!(
            r#"{{"msg_type":"PEER_HELLO","payload":{{"cluster_id":"c-1","from":2,"to":1,"nonce":"{nonce}"}}}}"#
        );
        let h = decode(&hello).unwrap();
        let mut out = Vec::new();
        encode_handshake(&mut out, &h);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{hello}\n"));
        let proof = r#"{"msg_type":"PEER_PROOF","payload":{}}"#;
        assert!(matches!(decode(proof), Ok(Handshake::PeerProof(p)) if p.proof.is_none()));
        for (bad, why) in [
            (hello.replace(&nonce, &"0A".repeat(32)), "lowercase hex"),
            (hello.replace(&nonce, &"0a".repeat(31)), "lowercase hex"),
            (hello.replace("c-1", "c 1"), "cluster_id"),
            (hello.replace("c-1", &"c".repeat(65)), "cluster_id"),
            (
                hello.replace("\"to\":1", "\"to\":1,\"extra\":0"),
                "unknown field",
            ),
            (
                r#"{"msg_type":"PEER_PROOF","payload":{"proof":"xyz"}}"#.to_string(),
                "lowercase hex",
            ),
            (
                r#"{"msg_type":"PEER_CHALLENGE"}"#.to_string(),
                "needs a payload",
            ),
        ] {
            let e = decode(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
