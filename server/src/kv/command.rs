//! The log's envelope of a write: what a log entry's `data` holds (the
//! [`Op`] of `ops.rs` with its session and the leader's clock), how it is
//! written (compact JSON) and read back (in one pass).

use poncho_protocol::{ClientRequest, SessionFields};
use serde::{Deserialize, Serialize};

use super::ops::{AuthOp, Op, OpWire};

/// A write as stored in a log entry's `data` (JSON text). The leader builds it
/// from a client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CommandWire")]
pub struct Command {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The user the proposing connection logged in as: what the write is
    /// checked against when it is applied (while auth is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Leader's wall clock in ms when proposed; the only notion of time the
    /// state machine has (used for session expiry), so expiry is deterministic
    /// because it is in the log.
    pub ts_ms: u64,
}

#[derive(Deserialize)]
struct CommandWire {
    op: OpWire,
    #[serde(default)]
    client_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    user: Option<String>,
    ts_ms: u64,
}

impl TryFrom<CommandWire> for Command {
    type Error = String;

    fn try_from(w: CommandWire) -> Result<Command, String> {
        Ok(Command {
            op: Op::try_from(w.op)?,
            client_id: w.client_id,
            seq: w.seq,
            user: w.user,
            ts_ms: w.ts_ms,
        })
    }
}

impl Command {
    /// Compact JSON, as stored in [`poncho_protocol::Entry::data`].
    pub fn encode(&self) -> String {
        // Only strings and integers, no maps with non-string keys: this cannot
        // fail.
        serde_json::to_string(self).expect("a Command serializes")
    }

    /// The command in an entry's `data`; the error is serde's message, which
    /// the store puts in the `ERROR` reply that entry gets.
    pub fn decode(data: &str) -> Result<Command, String> {
        serde_json::from_str(data).map_err(|e| e.to_string())
    }

    /// A change to users and roles, in no session (the proposer's `user` is
    /// the caller's to set).
    pub fn auth(auth: AuthOp, ts_ms: u64) -> Command {
        Command {
            op: Op::Auth { auth },
            client_id: None,
            seq: None,
            user: None,
            ts_ms,
        }
    }

    /// Builds a command from a client write request or a REGISTER_CLIENT;
    /// the request back (`Err`) for reads, HEALTHCHECK, STATUS and KEYS,
    /// which never enter the log.
    pub fn from_request(request: ClientRequest, ts_ms: u64) -> Result<Command, ClientRequest> {
        let (op, SessionFields { client_id, seq }) = Op::from_request(request)?;
        Ok(Command {
            op,
            client_id,
            seq,
            user: None,
            ts_ms,
        })
    }
}
