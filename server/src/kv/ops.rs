//! Every write the log can hold, in one place: its log form ([`Op`]), how a
//! client request becomes it ([`Op::from_request`]), what applying it does
//! ([`Data::apply`]) and the reply it gives ([`ApplyResult`], encoded under
//! the protocol table's name for it).
//!
//! Adding a write command is a variant in each of the four, all in this file;
//! the node proposes whatever [`Op::from_request`] accepts and answers with
//! whatever [`ApplyResult`] it gets back, and the session cache and the
//! snapshot format carry any `ApplyResult` as it is. The compiler points at
//! every match that must learn the new variant.

use std::sync::Arc;

use poncho_protocol::{
    encode_error, encode_reply, CasReply, ClientRequest, DeleteReply, ErrorReply,
    RegisterClientReply, ReplyPayload, SessionFields, SetReply,
};
use serde::{Deserialize, Serialize};

use super::store::Data;

/// A write as the log holds it. Written as an internally tagged object
/// (`{"type":"SET","key":..}`); read through [`OpWire`].
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

impl Op {
    /// The write a client request asks for, with the session it runs in; the
    /// request back (`Err`) for the ones that never enter the log (reads,
    /// HEALTHCHECK, STATUS, KEYS).
    pub fn from_request(request: ClientRequest) -> Result<(Op, SessionFields), ClientRequest> {
        Ok(match request {
            ClientRequest::Set(r) => (
                Op::Set {
                    key: r.key,
                    value: r.value,
                },
                r.session,
            ),
            ClientRequest::Delete(r) => (Op::Delete { key: r.key }, r.session),
            ClientRequest::Cas(r) => (
                Op::Cas {
                    key: r.key,
                    expected: r.expected,
                    value: r.value,
                },
                r.session,
            ),
            // A registration goes through the log like a write: the session
            // exists once it is applied, on every node at the same index.
            ClientRequest::RegisterClient => (Op::RegisterClient, SessionFields::default()),
            read @ (ClientRequest::Healthcheck
            | ClientRequest::Status
            | ClientRequest::Get(_)
            | ClientRequest::Keys(_)
            | ClientRequest::Authenticate(_)
            | ClientRequest::Auth(_)
            | ClientRequest::User(_)
            | ClientRequest::Role(_)) => return Err(read),
        })
    }
}

// Every node decodes every entry, so decoding is on the apply path of each
// write. An internally tagged enum makes serde buffer the object before
// reading it (about half of the decoding time); this flat twin reads the
// same JSON in one pass.
#[derive(Deserialize)]
pub(super) struct OpWire {
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

impl TryFrom<OpWire> for Op {
    type Error = String;

    fn try_from(w: OpWire) -> Result<Op, String> {
        let OpWire {
            kind,
            key,
            value,
            expected,
        } = w;
        let key = key.ok_or("missing field `key` in op");
        Ok(match kind {
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
        })
    }
}

/// The result of applying one entry, as the reply a client gets.
///
/// A session caches it, and a snapshot writes it in the shape of its wire
/// reply plus its `type` (`{"type":"SET","key":"a","index":7}`), which is
/// what the serde attributes give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyResult {
    Set(SetReply),
    Delete(DeleteReply),
    Cas(CasReply),
    #[serde(rename = "REGISTER_CLIENT")]
    Register(RegisterClientReply),
    /// A stale sequence number, a session the store does not hold, or an
    /// entry whose data is not a valid command.
    Error(ErrorReply),
}

impl ApplyResult {
    /// The reply's wire `msg_type`.
    pub fn msg_type(&self) -> &'static str {
        match self {
            ApplyResult::Set(_) => SetReply::MSG_TYPE,
            ApplyResult::Delete(_) => DeleteReply::MSG_TYPE,
            ApplyResult::Cas(_) => CasReply::MSG_TYPE,
            ApplyResult::Register(_) => RegisterClientReply::MSG_TYPE,
            ApplyResult::Error(_) => ErrorReply::MSG_TYPE,
        }
        .name()
    }

    /// The length of the strings the reply holds: what a session caching it
    /// counts against `MAX_SESSION_BYTES`, besides a fixed overhead.
    pub(super) fn string_bytes(&self) -> usize {
        match self {
            ApplyResult::Set(r) => r.key.len(),
            ApplyResult::Delete(r) => r.key.len(),
            ApplyResult::Cas(r) => r.key.len() + r.current.as_ref().map_or(0, String::len),
            ApplyResult::Register(_) => 0,
            ApplyResult::Error(e) => e.message.len(),
        }
    }

    /// Appends the reply line (answering `req_id`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, req_id: Option<u64>) {
        match self {
            ApplyResult::Set(r) => encode_reply(out, req_id, r),
            ApplyResult::Delete(r) => encode_reply(out, req_id, r),
            ApplyResult::Cas(r) => encode_reply(out, req_id, r),
            ApplyResult::Register(r) => encode_reply(out, req_id, r),
            ApplyResult::Error(e) => encode_error(out, req_id, e),
        }
    }
}

impl Data {
    /// What SET, DELETE and CAS do, and the reply each gives; `index` is the
    /// entry's. `KvStore::apply_command` takes registrations before this.
    pub(super) fn apply(&mut self, index: u64, op: Op) -> ApplyResult {
        match op {
            Op::Set { key, value } => {
                self.put(&key, Arc::from(value));
                ApplyResult::Set(SetReply { key, index })
            }
            Op::Delete { key } => {
                let deleted = self.take(&key);
                ApplyResult::Delete(DeleteReply {
                    key,
                    deleted,
                    index,
                })
            }
            Op::Cas {
                key,
                expected,
                value,
            } => {
                let swapped = self.get(&key) == expected.as_deref();
                let current = if swapped {
                    match value {
                        Some(v) => {
                            self.put(&key, Arc::from(v.as_str()));
                            Some(v)
                        }
                        None => {
                            self.take(&key);
                            None
                        }
                    }
                } else {
                    self.get(&key).map(str::to_owned)
                };
                ApplyResult::Cas(CasReply {
                    key,
                    swapped,
                    current,
                    index,
                })
            }
            Op::RegisterClient => ApplyResult::Error(ErrorReply::bad_request(
                "REGISTER_CLIENT is not a key/value operation",
            )),
        }
    }
}
