//! The log's form of a write: what a log entry's `data` holds, how it is
//! written (compact JSON) and read back (in one pass), and how a client
//! request becomes one.

use poncho_protocol::{ClientRequest, SessionFields};
use serde::{Deserialize, Serialize};

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
    /// Leader's wall clock in ms when proposed; the only notion of time the
    /// state machine has (used for session expiry), so expiry is deterministic
    /// because it is in the log.
    pub ts_ms: u64,
}

/// Written as an internally tagged object (`{"type":"SET","key":..}`); read
/// through [`OpWire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// `expected: None`: the key must be absent. `value: None`: delete it.
    Cas {
        key: String,
        expected: Option<String>,
        value: Option<String>,
    },
    /// Opens a session whose id is this entry's index.
    RegisterClient,
}

// Every node decodes every entry, so decoding is on the apply path of each
// write. An internally tagged enum makes serde buffer the object before
// reading it (about half of the decoding time); these flat twins read the
// same JSON in one pass.
#[derive(Deserialize)]
struct CommandWire {
    op: OpWire,
    #[serde(default)]
    client_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct OpWire {
    #[serde(rename = "type")]
    kind: OpKind,
    key: Option<String>,
    value: Option<String>,
    expected: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum OpKind {
    Set,
    Delete,
    Cas,
    RegisterClient,
}

impl TryFrom<CommandWire> for Command {
    type Error = String;

    fn try_from(w: CommandWire) -> Result<Command, String> {
        let OpWire {
            kind,
            key,
            value,
            expected,
        } = w.op;
        let key = key.ok_or("missing field `key` in op");
        let op = match kind {
            OpKind::Set => Op::Set {
                key: key?,
                value: value.ok_or("missing field `value` in a SET op")?,
            },
            OpKind::Delete => Op::Delete { key: key? },
            OpKind::Cas => Op::Cas {
                key: key?,
                expected,
                value,
            },
            OpKind::RegisterClient => Op::RegisterClient,
        };
        Ok(Command {
            op,
            client_id: w.client_id,
            seq: w.seq,
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

    /// Builds a command from a client write request or a REGISTER_CLIENT;
    /// `None` for reads, HEALTHCHECK, STATUS and KEYS, which never enter the
    /// log.
    pub fn from_request(request: &ClientRequest, ts_ms: u64) -> Option<Command> {
        let no_session = SessionFields::default();
        let (op, session) = match request {
            ClientRequest::Set(r) => (
                Op::Set {
                    key: r.key.clone(),
                    value: r.value.clone(),
                },
                &r.session,
            ),
            ClientRequest::Delete(r) => (Op::Delete { key: r.key.clone() }, &r.session),
            ClientRequest::Cas(r) => (
                Op::Cas {
                    key: r.key.clone(),
                    expected: r.expected.clone(),
                    value: r.value.clone(),
                },
                &r.session,
            ),
            ClientRequest::RegisterClient => (Op::RegisterClient, &no_session),
            ClientRequest::Healthcheck
            | ClientRequest::Status
            | ClientRequest::Get(_)
            | ClientRequest::Keys(_) => return None,
        };
        let SessionFields { client_id, seq } = session.clone();
        Some(Command {
            op,
            client_id,
            seq,
            ts_ms,
        })
    }
}
