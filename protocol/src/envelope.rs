//! The envelope every line carries, and decoding/encoding of whole lines.
//!
//! ```text
//! {"msg_type": TYPE, "req_id": u64 (optional), "src_id": u64 (peers only), "payload": ...}
//! ```
//!
//! A success reply carries the request's `msg_type` and echoes `req_id`; a
//! failure has `msg_type` `"ERROR"` and an [`ErrorReply`] payload. Which
//! payload goes with which `msg_type` is the table in [`crate::table`].

use std::io::Write as _;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::client::{ErrorReply, ReplyPayload, RequestPayload};
use crate::raft::NodeId;
use crate::table::{ClientRequest, Handshake, MsgType, RaftMessage};

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
    /// A line of the peer handshake ([`crate::peer`]).
    Handshake(Handshake),
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
    let name = envelope.msg_type.as_ref();
    let payload = envelope.payload.map(RawValue::get);
    let unknown = || fail(format!("unknown msg_type {name:?}"));
    let msg_type = MsgType::from_name(name).ok_or_else(unknown)?;
    if let Some(request) = ClientRequest::decode(msg_type, payload) {
        let request = request.map_err(fail)?;
        return Ok(Request::Client { req_id, request });
    }
    if let Some(message) = RaftMessage::decode(msg_type, payload) {
        return Ok(Request::Peer {
            src_id: envelope.src_id,
            message: message.map_err(fail)?,
        });
    }
    match Handshake::decode(msg_type, payload) {
        Some(handshake) => Ok(Request::Handshake(handshake.map_err(fail)?)),
        // A reply type (`ERROR`) is no request.
        None => Err(unknown()),
    }
}

/// A payload of type `T`, which `msg_type` must carry.
pub(crate) fn parse_payload<T: DeserializeOwned>(
    msg_type: MsgType,
    payload: Option<&str>,
) -> Result<T, String> {
    let text = payload.ok_or_else(|| format!("{msg_type} needs a payload"))?;
    serde_json::from_str(text).map_err(|e| format!("bad {msg_type} payload: {e}"))
}

/// A client request's payload: parsed (or its default if it may be left
/// out), then held to its limits.
pub(crate) fn parse_request<T: RequestPayload>(
    msg_type: MsgType,
    payload: Option<&str>,
) -> Result<T, String> {
    let request = match (payload, T::if_absent()) {
        (None, Some(default)) => default,
        _ => parse_payload(msg_type, payload)?,
    };
    request.validate().map_err(|e| e.to_string())?;
    Ok(request)
}

fn envelope_error(text: &str, e: &serde_json::Error) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => format!("the line is not valid JSON: {e}"),
        Ok(v) if !v.is_object() => "the line must be a JSON object with a msg_type".to_string(),
        Ok(_) => format!("bad envelope: {e}"),
    }
}

// ----------------------------------------------------------------- encoding

/// What comes between the envelope's fields and its payload.
pub(crate) const PAYLOAD_KEY: &[u8] = br#","payload":"#;

/// Appends `,"payload":` and the payload as JSON. Serializing our own types to
/// a Vec cannot fail: no maps with non-string keys, no I/O errors.
pub(crate) fn write_payload<T: Serialize>(out: &mut Vec<u8>, payload: &T) {
    out.extend_from_slice(PAYLOAD_KEY);
    serde_json::to_writer(&mut *out, payload).expect("protocol types serialize");
}

/// Appends one envelope line: the fields serde would write for it, in the
/// same order, then what `write_payload` appends (it may append nothing).
/// The table's names are plain capitals and underscores: none needs escaping.
fn write_line(
    out: &mut Vec<u8>,
    msg_type: MsgType,
    req_id: Option<u64>,
    src_id: Option<NodeId>,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(br#"{"msg_type":""#);
    out.extend_from_slice(msg_type.name().as_bytes());
    out.push(b'"');
    // Writing to a Vec cannot fail.
    if let Some(req_id) = req_id {
        let _ = write!(out, r#","req_id":{req_id}"#);
    }
    if let Some(src_id) = src_id {
        let _ = write!(out, r#","src_id":{src_id}"#);
    }
    write_payload(out);
    out.extend_from_slice(b"}\n");
}

/// Appends a success reply line (or, for an [`ErrorReply`], an `ERROR` line):
/// its `msg_type` is the one the table gives the payload's type.
pub fn encode_reply<T: ReplyPayload>(out: &mut Vec<u8>, req_id: Option<u64>, payload: &T) {
    write_line(out, T::MSG_TYPE, req_id, None, |out| {
        write_payload(out, payload)
    });
}

/// Appends an `ERROR` reply line.
pub fn encode_error(out: &mut Vec<u8>, req_id: Option<u64>, error: &ErrorReply) {
    encode_reply(out, req_id, error);
}

/// Appends a client request line.
pub fn encode_request(out: &mut Vec<u8>, req_id: Option<u64>, request: &ClientRequest) {
    write_line(out, request.msg_type(), req_id, None, |out| {
        request.write_payload(out)
    });
}

/// Appends a Raft message line; `src_id` is the sender (None for a probe).
pub fn encode_peer(
    out: &mut Vec<u8>,
    src_id: Option<NodeId>,
    req_id: Option<u64>,
    message: &RaftMessage,
) {
    write_line(out, message.msg_type(), req_id, src_id, |out| {
        message.write_payload(out)
    });
}

/// Appends a peer handshake line.
pub fn encode_handshake(out: &mut Vec<u8>, message: &Handshake) {
    write_line(out, message.msg_type(), None, None, |out| {
        message.write_payload(out)
    });
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
    /// The reply's type, if its `msg_type` is one the table names.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_name(&self.msg_type)
    }

    /// The error, if this is an `ERROR` reply with a well-formed payload.
    pub fn error(&self) -> Option<ErrorReply> {
        (self.kind() == Some(MsgType::Error))
            .then(|| serde_json::from_value(self.payload.clone()).ok())
            .flatten()
    }

    /// The success reply of type `T`, which the table says comes with
    /// `T::MSG_TYPE`; else the error, or what else came.
    pub fn success<T: ReplyPayload + DeserializeOwned>(&self) -> Result<T, ReplyError> {
        if self.kind() != Some(T::MSG_TYPE) {
            return Err(match self.error() {
                Some(error) => ReplyError::Error(error),
                None => ReplyError::WrongType {
                    expected: T::MSG_TYPE,
                    got: self.msg_type.clone(),
                },
            });
        }
        T::deserialize(&self.payload).map_err(|e| ReplyError::BadPayload {
            msg_type: T::MSG_TYPE,
            message: e.to_string(),
        })
    }
}

/// Why a reply is not the success reply that was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// An `ERROR` reply.
    Error(ErrorReply),
    /// A reply of another `msg_type` (or an `ERROR` whose payload is not one).
    WrongType { expected: MsgType, got: String },
    /// The expected `msg_type`, with a payload that is not its reply's.
    BadPayload { msg_type: MsgType, message: String },
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Error(error) => error.fmt(f),
            ReplyError::WrongType { expected, got } => {
                write!(f, "a {got:?} reply where {expected} was expected")
            }
            ReplyError::BadPayload { msg_type, message } => {
                write!(f, "bad {msg_type} reply: {message}")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::*;
    use crate::client::*;
    use crate::kv::*;
    use crate::membership::*;
    use crate::raft::{InstallSnapshot, RequestVote, TimeoutNow};

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
        encode_reply(&mut out, None, &HealthcheckReply);
        assert_eq!(out, b"{\"msg_type\":\"HEALTHCHECK\",\"payload\":\"ok\"}\n");
    }

    /// One request of each type.
    fn sample_requests() -> Vec<ClientRequest> {
        vec![
            ClientRequest::Txn(crate::TxnRequest {
                txn: crate::Txn {
                    compare: vec![crate::Compare {
                        key: "k".into(),
                        target: crate::CompareTarget::ModRevision,
                        op: crate::CompareOp::Less,
                        value: crate::CompareValue::Number(9),
                    }],
                    success: vec![crate::TxnOp::Put {
                        key: "k".into(),
                        value: "v".into(),
                        lease: Some(4),
                    }],
                    failure: vec![crate::TxnOp::Range(crate::RangeRequest::prefix("k"))],
                },
                session: SessionFields {
                    client_id: Some(2),
                    seq: Some(3),
                },
            }),
            ClientRequest::Watch(crate::WatchRequest::Create(crate::WatchCreate {
                key: "k/".into(),
                prefix: true,
                start_revision: Some(4),
                prev_kv: true,
                ..crate::WatchCreate::default()
            })),
            ClientRequest::Watch(crate::WatchRequest::Cancel { watch_id: 2 }),
            ClientRequest::Lease(crate::LeaseRequest::Grant {
                ttl: 5,
                client_id: Some(1),
                seq: Some(2),
            }),
            ClientRequest::Healthcheck,
            ClientRequest::Status,
            ClientRequest::RegisterClient,
            ClientRequest::Get(GetRequest {
                key: "k".into(),
                stale: true,
            }),
            ClientRequest::Set(SetRequest {
                key: "k".into(),
                value: "v w".into(),
                lease: None,
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
                from: Some("a/b".into()),
            }),
            ClientRequest::Range(RangeRequest {
                key: "a/".into(),
                prefix: true,
                limit: Some(2),
                keys_only: true,
                ..RangeRequest::default()
            }),
            ClientRequest::Authenticate(AuthenticateRequest {
                user: "alice".into(),
                password: Password("pw \"q\"".into()),
            }),
            ClientRequest::Auth(AuthRequest::Enable),
            ClientRequest::User(UserRequest::GrantRole {
                name: "alice".into(),
                role: "app".into(),
            }),
            ClientRequest::User(UserRequest::List),
            ClientRequest::Role(RoleRequest::GrantPermission {
                name: "app".into(),
                keys: KeySpec {
                    key: None,
                    prefix: Some("app/".into()),
                },
                access: Access::Read,
            }),
            ClientRequest::Member(MemberRequest::List),
            ClientRequest::Member(MemberRequest::Add {
                id: 4,
                addr: "127.0.0.1:8004".parse().unwrap(),
                peer_addr: Some("127.0.0.1:9004".parse().unwrap()),
                learner: true,
                force: false,
            }),
            ClientRequest::Member(MemberRequest::Remove { id: 2, force: true }),
            ClientRequest::TransferLeader(TransferLeaderRequest { to: 3 }),
        ]
    }

    #[test]
    fn requests_round_trip_through_the_encoder() {
        let requests = sample_requests();
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

    /// The envelope as serde writes it, which is what the wire has always
    /// carried: the hand-written envelope must match it byte for byte.
    #[derive(Serialize)]
    struct SerdeEnvelope<'a, T: Serialize> {
        msg_type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        src_id: Option<NodeId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a T>,
    }

    fn serde_line<T: Serialize>(
        msg_type: &str,
        req_id: Option<u64>,
        src_id: Option<NodeId>,
        payload: Option<&T>,
    ) -> String {
        let envelope = SerdeEnvelope {
            msg_type,
            req_id,
            src_id,
            payload,
        };
        serde_json::to_string(&envelope).unwrap() + "\n"
    }

    #[test]
    fn lines_are_byte_for_byte_what_serde_writes_for_the_envelope() {
        for request in sample_requests() {
            let mut out = Vec::new();
            encode_request(&mut out, Some(3), &request);
            let t = request.msg_type().name();
            let want = match &request {
                ClientRequest::Healthcheck
                | ClientRequest::Status
                | ClientRequest::RegisterClient => serde_line::<()>(t, Some(3), None, None),
                ClientRequest::Get(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Set(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Delete(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Cas(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Keys(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Range(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Txn(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Watch(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Lease(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Authenticate(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Auth(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::User(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Role(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::Member(r) => serde_line(t, Some(3), None, Some(r)),
                ClientRequest::TransferLeader(r) => serde_line(t, Some(3), None, Some(r)),
            };
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let reply = SetReply {
            key: "k \"q\"".into(),
            index: 12,
        };
        let mut out = Vec::new();
        encode_reply(&mut out, None, &reply);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_line("SET", None, None, Some(&reply))
        );
        let vote = RequestVote {
            term: 5,
            candidate_id: 2,
            last_log_index: 9,
            last_log_term: 4,
            pre_vote: true,
            leader_transfer: false,
        };
        for (src_id, req_id) in [(Some(2), None), (None, Some(8)), (Some(2), Some(8))] {
            let mut out = Vec::new();
            encode_peer(
                &mut out,
                src_id,
                req_id,
                &RaftMessage::RequestVote(vote.clone()),
            );
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_line("REQUEST_VOTE", req_id, src_id, Some(&vote))
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
                lease: None,
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
    fn a_reply_is_read_as_the_type_its_msg_type_names() {
        let envelope = |line: &str| serde_json::from_str::<ReplyEnvelope>(line).unwrap();
        let set = envelope(r#"{"msg_type":"SET","req_id":2,"payload":{"key":"k","index":7}}"#);
        assert_eq!(
            set.success::<SetReply>(),
            Ok(SetReply {
                key: "k".into(),
                index: 7
            })
        );
        assert_eq!(
            set.success::<CasReply>().unwrap_err().to_string(),
            "a \"SET\" reply where CAS was expected"
        );
        let ok = envelope(r#"{"msg_type":"HEALTHCHECK","payload":"ok"}"#);
        assert_eq!(ok.success::<HealthcheckReply>(), Ok(HealthcheckReply));
        let bad = envelope(r#"{"msg_type":"HEALTHCHECK","payload":"no"}"#);
        assert!(matches!(
            bad.success::<HealthcheckReply>(),
            Err(ReplyError::BadPayload {
                msg_type: MsgType::Healthcheck,
                ..
            })
        ));
        let error = envelope(
            r#"{"msg_type":"ERROR","payload":{"code":"NO_LEADER","message":"no leader"}}"#,
        );
        assert_eq!(
            error.success::<SetReply>(),
            Err(ReplyError::Error(ErrorReply::new(
                ErrorCode::NoLeader,
                "no leader"
            )))
        );
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
