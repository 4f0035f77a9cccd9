//! The envelope every line carries, client requests and replies, errors, and
//! decoding/encoding of whole lines.
//!
//! ```text
//! {"msg_type": TYPE, "req_id": u64 (optional), "src_id": u64 (peers only), "payload": ...}
//! ```
//!
//! A success reply carries the request's `msg_type` and echoes `req_id`; a
//! failure has `msg_type` `"ERROR"` and an [`ErrorReply`] payload.

use std::fmt;
use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::raft::{NodeId, RaftMessage};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// A decoded line.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Client {
        req_id: Option<u64>,
        request: ClientRequest,
    },
    /// A Raft RPC. `src_id` names the sending node; a probe from a client
    /// (the shell's `append` / `vote`) has none.
    Peer {
        src_id: Option<NodeId>,
        message: RaftMessage,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    Healthcheck,
    Status,
    Get(GetRequest),
    Set(SetRequest),
    Delete(DeleteRequest),
    Cas(CasRequest),
    Keys(KeysRequest),
    /// Opens a client session: the reply's `client_id` is what the client's
    /// writes carry from then on.
    RegisterClient,
}

impl ClientRequest {
    /// The wire name, which a success reply carries as its `msg_type`.
    pub fn msg_type(&self) -> &'static str {
        match self {
            ClientRequest::Healthcheck => "HEALTHCHECK",
            ClientRequest::Status => "STATUS",
            ClientRequest::Get(_) => "GET",
            ClientRequest::Set(_) => "SET",
            ClientRequest::Delete(_) => "DELETE",
            ClientRequest::Cas(_) => "CAS",
            ClientRequest::Keys(_) => "KEYS",
            ClientRequest::RegisterClient => "REGISTER_CLIENT",
        }
    }
}

/// Identifies a write for exactly-once application (Raft thesis 6.3): the
/// cluster applies a given (client_id, seq) at most once. `client_id` is a
/// session the cluster opened (the [`RegisterClientReply`]); a write in a
/// session the cluster no longer holds gets [`ErrorCode::SessionExpired`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SessionFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub key: String,
    /// Serve from this node's local state, without a linearizable read.
    #[serde(default)]
    pub stale: bool,
}

// The write requests are read through flat twins (`#[serde(from)]`): a
// flattened field makes serde buffer the whole payload before reading it,
// which costs every write about a microsecond. Written, they flatten.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SetWire")]
pub struct SetRequest {
    pub key: String,
    pub value: String,
    #[serde(flatten)]
    pub session: SessionFields,
}

#[derive(Deserialize)]
struct SetWire {
    key: String,
    value: String,
    client_id: Option<u64>,
    seq: Option<u64>,
}

impl From<SetWire> for SetRequest {
    fn from(w: SetWire) -> Self {
        SetRequest {
            key: w.key,
            value: w.value,
            session: SessionFields {
                client_id: w.client_id,
                seq: w.seq,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DeleteWire")]
pub struct DeleteRequest {
    pub key: String,
    #[serde(flatten)]
    pub session: SessionFields,
}

#[derive(Deserialize)]
struct DeleteWire {
    key: String,
    client_id: Option<u64>,
    seq: Option<u64>,
}

impl From<DeleteWire> for DeleteRequest {
    fn from(w: DeleteWire) -> Self {
        DeleteRequest {
            key: w.key,
            session: SessionFields {
                client_id: w.client_id,
                seq: w.seq,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CasWire")]
pub struct CasRequest {
    pub key: String,
    /// `null`: the key must be absent.
    pub expected: Option<String>,
    /// `null`: delete the key if it matches.
    pub value: Option<String>,
    #[serde(flatten)]
    pub session: SessionFields,
}

#[derive(Deserialize)]
struct CasWire {
    key: String,
    expected: Option<String>,
    value: Option<String>,
    client_id: Option<u64>,
    seq: Option<u64>,
}

impl From<CasWire> for CasRequest {
    fn from(w: CasWire) -> Self {
        CasRequest {
            key: w.key,
            expected: w.expected,
            value: w.value,
            session: SessionFields {
                client_id: w.client_id,
                seq: w.seq,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeysRequest {
    #[serde(default)]
    pub prefix: String,
}

// ------------------------------------------------------------------ replies

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReply {
    pub key: String,
    /// The log index at which the write was applied.
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub key: String,
    pub deleted: bool,
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasReply {
    pub key: String,
    pub swapped: bool,
    /// The value after the operation.
    pub current: Option<String>,
    pub index: u64,
}

/// The session a `REGISTER_CLIENT` opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterClientReply {
    /// The log index of the registration: unique for the cluster's life, so
    /// an id is never handed out twice, and a session that is gone never
    /// comes back.
    pub client_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysReply {
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerProgress {
    pub id: NodeId,
    pub match_index: u64,
    pub next_index: u64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub id: NodeId,
    pub addr: String,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub commit_index: u64,
    pub last_applied: u64,
    pub last_log_index: u64,
    /// `"ok"`; `"no_space"` while this node's disk is full (it writes
    /// nothing, answers writes with `NO_SPACE`, serves reads, and resumes by
    /// itself once space is freed); `"failed"` after any other disk failure.
    #[serde(default = "storage_ok")]
    pub storage: String,
    /// While `storage` is `"no_space"`: the error and for how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    pub members: Vec<MemberStatus>,
    #[serde(default)]
    pub followers: Vec<FollowerProgress>,
}

fn storage_ok() -> String {
    "ok".to_string()
}

// ------------------------------------------------------------------- errors

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not applied; retry at `leader_addr`.
    NotLeader,
    /// Not applied; no leader is known now. Retry anywhere, later.
    NoLeader,
    /// The line was not a valid request. The connection stays open.
    BadRequest,
    /// The line exceeded the limit. The connection is closed after this reply.
    MessageTooLarge,
    /// Not applied; the leader has too much uncommitted work. Retry later.
    Overloaded,
    /// Outcome unknown; retry with the same client_id/seq.
    Timeout,
    /// Outcome unknown; retry with the same client_id/seq.
    LeadershipLost,
    /// The request reused a sequence number older than the session's last.
    StaleSequence,
    /// Not applied: the write's `client_id` names no session the cluster
    /// holds (it expired, was evicted, or was never registered). If it was a
    /// retry, the earlier attempt's outcome stays unknown. Register a new
    /// session before writing again.
    SessionExpired,
    /// Not applied; the leader's disk is full, so it cannot make the write
    /// durable. It hands leadership to a node that can: retry shortly.
    NoSpace,
}

impl ErrorCode {
    /// Whether the request is known not to have been applied.
    pub fn not_applied(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::BadRequest
                | ErrorCode::MessageTooLarge
                | ErrorCode::Overloaded
                | ErrorCode::StaleSequence
                | ErrorCode::SessionExpired
                | ErrorCode::NoSpace
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_addr: Option<String>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
            leader_id: None,
            leader_addr: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ErrorReply {
        ErrorReply::new(ErrorCode::BadRequest, message)
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A line that could not be decoded: the error to answer with, and the
/// `req_id` to echo if one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub req_id: Option<u64>,
    pub error: ErrorReply,
}

// ----------------------------------------------------------------- decoding

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    msg_type: std::borrow::Cow<'a, str>,
    #[serde(default)]
    req_id: Option<u64>,
    #[serde(default)]
    src_id: Option<NodeId>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Decodes one line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|e| DecodeError {
        req_id: None,
        error: ErrorReply::bad_request(format!(
            "the line is not valid UTF-8 (byte {})",
            e.valid_up_to()
        )),
    })?;
    let envelope: RawEnvelope = serde_json::from_str(text).map_err(|e| DecodeError {
        req_id: None,
        error: ErrorReply::bad_request(envelope_error(text, &e)),
    })?;
    let req_id = envelope.req_id;
    let fail = |message: String| DecodeError {
        req_id,
        error: ErrorReply::bad_request(message),
    };
    let msg_type = envelope.msg_type.as_ref();
    let payload = envelope.payload.map(RawValue::get);

    fn parse<'a, T: Deserialize<'a>>(
        msg_type: &str,
        payload: Option<&'a str>,
    ) -> Result<T, String> {
        let text = payload.ok_or_else(|| format!("{msg_type} needs a payload"))?;
        serde_json::from_str(text).map_err(|e| format!("bad {msg_type} payload: {e}"))
    }

    let request = match msg_type {
        "HEALTHCHECK" => ClientRequest::Healthcheck,
        "STATUS" => ClientRequest::Status,
        "REGISTER_CLIENT" => ClientRequest::RegisterClient,
        "GET" => ClientRequest::Get(parse(msg_type, payload).map_err(fail)?),
        "SET" => ClientRequest::Set(parse(msg_type, payload).map_err(fail)?),
        "DELETE" => ClientRequest::Delete(parse(msg_type, payload).map_err(fail)?),
        "CAS" => ClientRequest::Cas(parse(msg_type, payload).map_err(fail)?),
        "KEYS" => ClientRequest::Keys(match payload {
            None => KeysRequest::default(),
            Some(_) => parse(msg_type, payload).map_err(fail)?,
        }),
        other => match decode_raft(other, payload) {
            Some(message) => {
                let message = message.map_err(fail)?;
                return Ok(Request::Peer {
                    src_id: envelope.src_id,
                    message,
                });
            }
            None => return Err(fail(format!("unknown msg_type {other:?}"))),
        },
    };
    validate(&request).map_err(fail)?;
    Ok(Request::Client { req_id, request })
}

/// A Raft RPC's payload, or None if `msg_type` is not a Raft RPC.
fn decode_raft(msg_type: &str, payload: Option<&str>) -> Option<Result<RaftMessage, String>> {
    fn parse<'a, T: Deserialize<'a>>(
        msg_type: &str,
        payload: Option<&'a str>,
        wrap: fn(T) -> RaftMessage,
    ) -> Result<RaftMessage, String> {
        let text = payload.ok_or_else(|| format!("{msg_type} needs a payload"))?;
        serde_json::from_str(text)
            .map(wrap)
            .map_err(|e| format!("bad {msg_type} payload: {e}"))
    }
    Some(match msg_type {
        "APPEND_ENTRY" => parse(msg_type, payload, RaftMessage::AppendEntries),
        "APPEND_ENTRY_REPLY" => parse(msg_type, payload, RaftMessage::AppendEntriesReply),
        "REQUEST_VOTE" => parse(msg_type, payload, RaftMessage::RequestVote),
        "REQUEST_VOTE_REPLY" => parse(msg_type, payload, RaftMessage::RequestVoteReply),
        "TIMEOUT_NOW" => parse(msg_type, payload, RaftMessage::TimeoutNow),
        "INSTALL_SNAPSHOT" => parse(msg_type, payload, RaftMessage::InstallSnapshot),
        "INSTALL_SNAPSHOT_REPLY" => parse(msg_type, payload, RaftMessage::InstallSnapshotReply),
        _ => return None,
    })
}

fn envelope_error(text: &str, e: &serde_json::Error) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => format!("the line is not valid JSON: {e}"),
        Ok(v) if !v.is_object() => "the line must be a JSON object with a msg_type".to_string(),
        Ok(_) => format!("bad envelope: {e}"),
    }
}

fn validate(request: &ClientRequest) -> Result<(), String> {
    let check_key = |key: &str| {
        if key.len() > MAX_KEY_BYTES {
            Err(format!(
                "key is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            ))
        } else {
            Ok(())
        }
    };
    let check_value = |value: Option<&str>| match value {
        Some(v) if v.len() > MAX_VALUE_BYTES => Err(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            v.len()
        )),
        _ => Ok(()),
    };
    let check_session = |s: &SessionFields| match (s.client_id, s.seq) {
        (Some(_), Some(0)) => Err("seq starts at 1".to_string()),
        (Some(_), Some(_)) | (None, None) => Ok(()),
        _ => Err("client_id and seq go together".to_string()),
    };
    match request {
        ClientRequest::Get(r) => check_key(&r.key),
        ClientRequest::Set(r) => {
            check_key(&r.key)?;
            check_value(Some(&r.value))?;
            check_session(&r.session)
        }
        ClientRequest::Delete(r) => {
            check_key(&r.key)?;
            check_session(&r.session)
        }
        ClientRequest::Cas(r) => {
            check_key(&r.key)?;
            check_value(r.expected.as_deref())?;
            check_value(r.value.as_deref())?;
            check_session(&r.session)
        }
        ClientRequest::Keys(r) => check_key(&r.prefix),
        ClientRequest::Healthcheck | ClientRequest::Status | ClientRequest::RegisterClient => {
            Ok(())
        }
    }
}

// ----------------------------------------------------------------- encoding

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    msg_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    req_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_id: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a T>,
}

/// Appends one envelope line. Serializing our own types to a Vec cannot fail:
/// no maps with non-string keys, no I/O errors.
fn write_line<T: Serialize>(
    out: &mut Vec<u8>,
    msg_type: &str,
    req_id: Option<u64>,
    src_id: Option<NodeId>,
    payload: Option<&T>,
) {
    let envelope = Envelope {
        msg_type,
        req_id,
        src_id,
        payload,
    };
    serde_json::to_writer(&mut *out, &envelope).expect("protocol types serialize");
    out.push(b'\n');
}

/// Appends a success reply line.
pub fn encode_reply<T: Serialize>(
    out: &mut Vec<u8>,
    msg_type: &str,
    req_id: Option<u64>,
    payload: &T,
) {
    write_line(out, msg_type, req_id, None, Some(payload));
}

/// Appends an `ERROR` reply line.
pub fn encode_error(out: &mut Vec<u8>, req_id: Option<u64>, error: &ErrorReply) {
    encode_reply(out, "ERROR", req_id, error);
}

/// Appends a client request line.
pub fn encode_request(out: &mut Vec<u8>, req_id: Option<u64>, request: &ClientRequest) {
    let t = request.msg_type();
    match request {
        ClientRequest::Healthcheck | ClientRequest::Status | ClientRequest::RegisterClient => {
            write_line::<()>(out, t, req_id, None, None)
        }
        ClientRequest::Get(r) => write_line(out, t, req_id, None, Some(r)),
        ClientRequest::Set(r) => write_line(out, t, req_id, None, Some(r)),
        ClientRequest::Delete(r) => write_line(out, t, req_id, None, Some(r)),
        ClientRequest::Cas(r) => write_line(out, t, req_id, None, Some(r)),
        ClientRequest::Keys(r) => write_line(out, t, req_id, None, Some(r)),
    }
}

/// The wire name of a Raft message.
pub fn raft_msg_type(message: &RaftMessage) -> &'static str {
    match message {
        RaftMessage::AppendEntries(_) => "APPEND_ENTRY",
        RaftMessage::AppendEntriesReply(_) => "APPEND_ENTRY_REPLY",
        RaftMessage::RequestVote(_) => "REQUEST_VOTE",
        RaftMessage::RequestVoteReply(_) => "REQUEST_VOTE_REPLY",
        RaftMessage::TimeoutNow(_) => "TIMEOUT_NOW",
        RaftMessage::InstallSnapshot(_) => "INSTALL_SNAPSHOT",
        RaftMessage::InstallSnapshotReply(_) => "INSTALL_SNAPSHOT_REPLY",
    }
}

/// Appends a Raft message line; `src_id` is the sender (None for a probe).
pub fn encode_peer(
    out: &mut Vec<u8>,
    src_id: Option<NodeId>,
    req_id: Option<u64>,
    message: &RaftMessage,
) {
    let t = raft_msg_type(message);
    match message {
        RaftMessage::AppendEntries(m) => {
            // The envelope's fields as `write_line` writes them, then the
            // payload's own encoding (commands embedded, not escaped).
            let _ = write!(out, r#"{{"msg_type":"{t}""#);
            if let Some(req_id) = req_id {
                let _ = write!(out, r#","req_id":{req_id}"#);
            }
            if let Some(src_id) = src_id {
                let _ = write!(out, r#","src_id":{src_id}"#);
            }
            out.extend_from_slice(br#","payload":"#);
            m.write_payload(out);
            out.extend_from_slice(b"}\n");
        }
        RaftMessage::AppendEntriesReply(m) => write_line(out, t, req_id, src_id, Some(m)),
        RaftMessage::RequestVote(m) => write_line(out, t, req_id, src_id, Some(m)),
        RaftMessage::RequestVoteReply(m) => write_line(out, t, req_id, src_id, Some(m)),
        RaftMessage::TimeoutNow(m) => write_line(out, t, req_id, src_id, Some(m)),
        RaftMessage::InstallSnapshot(m) => write_line(out, t, req_id, src_id, Some(m)),
        RaftMessage::InstallSnapshotReply(m) => write_line(out, t, req_id, src_id, Some(m)),
    }
}

/// A reply as a client sees it: the envelope with its payload still raw.
#[derive(Debug, Deserialize)]
pub struct ReplyEnvelope {
    pub msg_type: String,
    #[serde(default)]
    pub req_id: Option<u64>,
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl ReplyEnvelope {
    /// The error, if this is an `ERROR` reply with a well-formed payload.
    pub fn error(&self) -> Option<ErrorReply> {
        (self.msg_type == "ERROR")
            .then(|| serde_json::from_value(self.payload.clone()).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{InstallSnapshot, TimeoutNow};

    fn decode(s: &str) -> Result<Request, DecodeError> {
        decode_request(s.as_bytes())
    }

    #[test]
    fn healthcheck_needs_no_payload_and_echoes_the_prototype_reply() {
        assert_eq!(
            decode(r#"{"msg_type":"HEALTHCHECK"}"#).unwrap(),
            Request::Client {
                req_id: None,
                request: ClientRequest::Healthcheck
            }
        );
        let mut out = Vec::new();
        encode_reply(&mut out, "HEALTHCHECK", None, &"ok");
        assert_eq!(out, b"{\"msg_type\":\"HEALTHCHECK\",\"payload\":\"ok\"}\n");
    }

    #[test]
    fn requests_round_trip_through_the_encoder() {
        let requests = vec![
            ClientRequest::Status,
            ClientRequest::RegisterClient,
            ClientRequest::Get(GetRequest {
                key: "k".into(),
                stale: true,
            }),
            ClientRequest::Set(SetRequest {
                key: "k".into(),
                value: "v w".into(),
                session: SessionFields {
                    client_id: Some(17),
                    seq: Some(4),
                },
            }),
            ClientRequest::Delete(DeleteRequest {
                key: "k".into(),
                session: SessionFields::default(),
            }),
            ClientRequest::Cas(CasRequest {
                key: "k".into(),
                expected: None,
                value: Some("x".into()),
                session: SessionFields::default(),
            }),
            ClientRequest::Keys(KeysRequest {
                prefix: "a/".into(),
            }),
        ];
        for (i, request) in requests.into_iter().enumerate() {
            let mut out = Vec::new();
            encode_request(&mut out, Some(i as u64), &request);
            assert_eq!(out.last(), Some(&b'\n'));
            let back = decode_request(&out[..out.len() - 1]).unwrap();
            assert_eq!(
                back,
                Request::Client {
                    req_id: Some(i as u64),
                    request
                }
            );
        }
    }

    #[test]
    fn write_payloads_ignore_unknown_fields_and_default_their_options() {
        let request = |line: &str| match decode(line).unwrap() {
            Request::Client { request, .. } => request,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            request(
                r#"{"msg_type":"SET","payload":{"x":[1],"key":"k","value":"v","seq":2,"client_id":7}}"#
            ),
            ClientRequest::Set(SetRequest {
                key: "k".into(),
                value: "v".into(),
                session: SessionFields {
                    client_id: Some(7),
                    seq: Some(2),
                },
            })
        );
        assert_eq!(
            request(r#"{"msg_type":"CAS","payload":{"key":"k","other":null}}"#),
            ClientRequest::Cas(CasRequest {
                key: "k".into(),
                expected: None,
                value: None,
                session: SessionFields::default(),
            })
        );
        assert_eq!(
            request(r#"{"msg_type":"DELETE","payload":{"key":"k","client_id":null,"seq":null}}"#),
            ClientRequest::Delete(DeleteRequest {
                key: "k".into(),
                session: SessionFields::default(),
            })
        );
        for line in [
            r#"{"msg_type":"DELETE","payload":{"key":"k","key":"j"}}"#,
            r#"{"msg_type":"SET","payload":{"key":"k","value":null}}"#,
            r#"{"msg_type":"CAS","payload":{"key":"k","seq":-1,"client_id":1}}"#,
        ] {
            assert_eq!(
                decode(line).unwrap_err().error.code,
                ErrorCode::BadRequest,
                "{line}"
            );
        }
    }

    #[test]
    fn peer_messages_carry_their_sender() {
        let chunk = RaftMessage::InstallSnapshot(InstallSnapshot {
            term: 2,
            leader_id: 1,
            last_included_index: 90,
            last_included_term: 2,
            offset: 4096,
            data: "{\"k\":\"a\",\"v\":\"b\"}\n".into(),
            done: true,
        });
        let mut out = Vec::new();
        encode_peer(&mut out, Some(1), None, &chunk);
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one line, newlines escaped"
        );
        let back = decode_request(&out[..out.len() - 1]).unwrap();
        assert_eq!(
            back,
            Request::Peer {
                src_id: Some(1),
                message: chunk
            }
        );
        let msg = RaftMessage::TimeoutNow(TimeoutNow {
            term: 4,
            leader_id: 2,
        });
        let mut out = Vec::new();
        encode_peer(&mut out, Some(2), None, &msg);
        let back = decode_request(&out[..out.len() - 1]).unwrap();
        assert_eq!(
            back,
            Request::Peer {
                src_id: Some(2),
                message: msg
            }
        );
    }

    #[test]
    fn bad_lines_get_bad_request_with_a_reason() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"msg_type":"FROB"}"#, "unknown msg_type"),
            (r#"{"msg_type":"GET","req_id":7}"#, "needs a payload"),
            (
                r#"{"msg_type":"GET","payload":{"key":5}}"#,
                "bad GET payload",
            ),
            (
                r#"{"msg_type":"SET","payload":{"key":"k"}}"#,
                "bad SET payload",
            ),
            (
                r#"{"msg_type":"SET","payload":{"key":"k","value":"v","seq":1}}"#,
                "go together",
            ),
            (
                r#"{"msg_type":"SET","payload":{"key":"k","value":"v","client_id":"c1","seq":1}}"#,
                "bad SET payload",
            ),
            (
                r#"{"msg_type":"SET","payload":{"key":"k","value":"v","client_id":7,"seq":0}}"#,
                "seq starts at 1",
            ),
            (r#"{"req_id":1}"#, "bad envelope"),
        ];
        for (line, reason) in cases {
            let err = decode(line).expect_err(line);
            assert_eq!(err.error.code, ErrorCode::BadRequest, "{line}");
            assert!(
                err.error.message.contains(reason),
                "{line}: {}",
                err.error.message
            );
        }
        assert_eq!(
            decode(r#"{"msg_type":"GET","req_id":7}"#)
                .unwrap_err()
                .req_id,
            Some(7)
        );
        let err = decode_request(b"{\"msg_type\":\"GET\xff\"}").unwrap_err();
        assert!(err.error.message.contains("UTF-8"));
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        let line = format!(r#"{{"msg_type":"GET","payload":{{"key":"{key}"}}}}"#);
        assert!(decode(&line).unwrap_err().error.message.contains("limit"));
        let value = "v".repeat(MAX_VALUE_BYTES + 1);
        let line = format!(r#"{{"msg_type":"SET","payload":{{"key":"k","value":"{value}"}}}}"#);
        assert!(decode(&line).unwrap_err().error.message.contains("limit"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"msg_type":"GET","payload":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(decode(&deep).unwrap_err().error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn error_codes_use_their_wire_names() {
        let mut out = Vec::new();
        let mut e = ErrorReply::new(ErrorCode::NotLeader, "not the leader");
        e.leader_id = Some(2);
        e.leader_addr = Some("127.0.0.1:8002".into());
        encode_error(&mut out, Some(3), &e);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"msg_type\":\"ERROR\",\"req_id\":3,\"payload\":{\"code\":\"NOT_LEADER\",\"message\":\"not the leader\",\
             \"leader_id\":2,\"leader_addr\":\"127.0.0.1:8002\"}}\n"
        );
        let parsed: ReplyEnvelope = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(parsed.error(), Some(e));
        assert_eq!(ErrorCode::LeadershipLost.to_string(), "LEADERSHIP_LOST");
        assert_eq!(ErrorCode::SessionExpired.to_string(), "SESSION_EXPIRED");
        assert!(ErrorCode::SessionExpired.not_applied());
    }
}
