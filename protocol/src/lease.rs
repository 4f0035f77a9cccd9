//! Leases (issue 14): `LEASE`, a time to live that keys can be attached to,
//! as etcd v3's `Lease` service.
//!
//! A lease is granted with a TTL in seconds and gets an id (its grant's log
//! index, unique for the cluster's life). Keys written with `lease` are
//! attached to it; when it is revoked, or expires because nobody kept it
//! alive for its TTL, every key attached is deleted at one revision. The
//! leader decides expiry, by its clock, and puts it through the log, so
//! every node deletes the same keys at the same revision. A keepalive
//! (on any node: a follower forwards it to the leader) gives the lease its
//! full TTL again from when the leader gets it. A new leader gives every
//! lease its full TTL from when it took over, so a leader change never
//! expires a lease early (it may expire one up to a TTL late).

use serde::{Deserialize, Serialize};

use crate::client::{InvalidRequest, RequestPayload, SessionFields};

/// The shortest TTL a lease may have, in seconds: longer than an election,
/// so that a lease outlives a leader change whose new leader it must reach.
pub const MIN_LEASE_TTL_SECS: u64 = 2;
/// The longest, in seconds (a year).
pub const MAX_LEASE_TTL_SECS: u64 = 365 * 24 * 3600;
/// The most leases a cluster holds at once.
pub const MAX_LEASES: usize = 100_000;
/// The most keys one `ttl` reply lists (a lease may hold more: `keys_more`).
pub const MAX_LEASE_KEYS_LISTED: usize = 1_000;
/// The most leases one `list` reply lists (`more` says there are others).
pub const MAX_LEASES_LISTED: usize = 10_000;

/// `LEASE`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaseRequest {
    /// A new lease of `ttl` seconds (a write, through the log).
    Grant {
        ttl: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Ends the lease now, deleting its keys (a write, through the log).
    Revoke {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Its full TTL again, from now (answered by the leader; any node
    /// forwards it there).
    Keepalive { id: u64 },
    /// How long it has left, and with `keys` which keys are attached
    /// (the leader answers).
    Ttl {
        id: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keys: bool,
    },
    /// Every lease's id (the leader answers).
    List,
}

impl LeaseRequest {
    /// The session of a grant or a revoke.
    pub fn session(&self) -> Option<SessionFields> {
        match self {
            LeaseRequest::Grant { client_id, seq, .. }
            | LeaseRequest::Revoke { client_id, seq, .. } => Some(SessionFields {
                client_id: *client_id,
                seq: *seq,
            }),
            _ => None,
        }
    }

    /// Puts `fields` in a grant or a revoke (a client's session).
    pub fn set_session(&mut self, fields: SessionFields) {
        if let LeaseRequest::Grant { client_id, seq, .. }
        | LeaseRequest::Revoke { client_id, seq, .. } = self
        {
            *client_id = fields.client_id;
            *seq = fields.seq;
        }
    }
}

impl RequestPayload for LeaseRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        if let Some(session) = self.session() {
            session.check()?;
        }
        match self {
            LeaseRequest::Grant { ttl, .. }
                if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(ttl) =>
            {
                Err(InvalidRequest::LeaseTtl { ttl: *ttl })
            }
            _ => Ok(()),
        }
    }
}

/// `LEASE`'s reply; which fields are there depends on the op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LeaseReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Seconds left (grant, keepalive: the full TTL; ttl: what remains,
    /// rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The TTL it was granted with, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_ttl: Option<u64>,
    /// The keys attached, in key order (ttl with `keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_more: bool,
    /// Every lease's id, in order (list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// How many keys a revoke deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// The log index a grant or a revoke was applied at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_request, ClientRequest, Request};

    fn parse(payload: &str) -> Result<LeaseRequest, String> {
        let line = format!(r#"{{"msg_type":"LEASE","payload":{payload}}}"#);
        match decode_request(line.as_bytes()) {
            Ok(Request::Client {
                request: ClientRequest::Lease(l),
                ..
            }) => Ok(l),
            Ok(other) => Err(format!("not a LEASE: {other:?}")),
            Err(e) => Err(e.error.message),
        }
    }

    #[test]
    fn lease_requests_read_and_bad_ones_are_refused() {
        assert_eq!(
            parse(r#"{"op":"grant","ttl":10,"client_id":2,"seq":1}"#),
            Ok(LeaseRequest::Grant {
                ttl: 10,
                client_id: Some(2),
                seq: Some(1)
            })
        );
        assert_eq!(
            parse(r#"{"op":"keepalive","id":7}"#),
            Ok(LeaseRequest::Keepalive { id: 7 })
        );
        assert_eq!(parse(r#"{"op":"list"}"#), Ok(LeaseRequest::List));
        for (payload, why) in [
            (r#"{"op":"grant","ttl":1}"#, "at least 2"),
            (r#"{"op":"grant","ttl":99999999999}"#, "at most"),
            (r#"{"op":"grant","ttl":10,"seq":1}"#, "go together"),
            (r#"{"op":"revoke"}"#, "missing field"),
            (r#"{"op":"ttl","id":1,"bogus":true}"#, "unknown field"),
        ] {
            let e = parse(payload).expect_err(payload);
            assert!(e.contains(why), "{payload}: {e}");
        }
    }
}
