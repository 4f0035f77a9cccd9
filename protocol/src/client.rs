//! What clients send and get back: the payloads of client requests and of
//! their replies, the limits a request must keep, and errors. Which
//! `msg_type` carries which payload is the table in [`crate::table`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::raft::NodeId;
use crate::table::{ClientRequest, MsgType};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// A client request's payload, as the table names it for a `msg_type`.
pub trait RequestPayload: Serialize + DeserializeOwned {
    /// The request a line without a payload makes, if it may have none.
    fn if_absent() -> Option<Self> {
        None
    }

    /// The limits serde does not check.
    fn validate(&self) -> Result<(), InvalidRequest> {
        Ok(())
    }
}

/// A request that parsed but breaks a limit. The client gets `BAD_REQUEST`
/// with this as its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRequest {
    KeyTooLong {
        bytes: usize,
    },
    ValueTooLong {
        bytes: usize,
    },
    /// `seq` 0 with a `client_id`: sequence numbers start at 1.
    SeqZero,
    /// One of `client_id` and `seq` without the other.
    SessionHalf,
    NameTooLong {
        bytes: usize,
    },
    PasswordEmpty,
    PasswordTooLong {
        bytes: usize,
    },
    /// A permission names neither or both of `key` and `prefix`.
    KeyOrPrefix,
    /// A `RANGE` with both `prefix` and `range_end`.
    PrefixAndRangeEnd,
    /// A `RANGE` with both `keys_only` and `count_only`.
    KeysOnlyAndCountOnly,
    /// A comparison's `value` is a number for `target: value`, or a
    /// string for the others.
    CompareType {
        wants_text: bool,
    },
    /// A range read in a transaction names a revision or `stale`.
    TxnRangeRevision,
    /// More than `MAX_TXN_OPS` comparisons or operations in a branch.
    TxnTooLarge {
        what: &'static str,
        len: usize,
    },
    /// A branch writes one key twice.
    TxnKeyWrittenTwice,
    /// A `list` watch with a `start_revision`.
    ListAndStartRevision,
    /// A lease's TTL out of bounds.
    LeaseTtl {
        ttl: u64,
    },
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidRequest::KeyTooLong { bytes } => {
                write!(f, "key is {bytes} bytes; the limit is {MAX_KEY_BYTES}")
            }
            InvalidRequest::ValueTooLong { bytes } => {
                write!(f, "value is {bytes} bytes; the limit is {MAX_VALUE_BYTES}")
            }
            InvalidRequest::SeqZero => f.write_str("seq starts at 1"),
            InvalidRequest::SessionHalf => f.write_str("client_id and seq go together"),
            InvalidRequest::NameTooLong { bytes } => write!(
                f,
                "name is {bytes} bytes; the limit is {}",
                crate::auth::MAX_NAME_BYTES
            ),
            InvalidRequest::PasswordEmpty => f.write_str("the password is empty"),
            InvalidRequest::PasswordTooLong { bytes } => write!(
                f,
                "password is {bytes} bytes; the limit is {}",
                crate::auth::MAX_PASSWORD_BYTES
            ),
            InvalidRequest::KeyOrPrefix => {
                f.write_str("a permission names either `key` or `prefix`, not both or neither")
            }
            InvalidRequest::PrefixAndRangeEnd => {
                f.write_str("a range is a `prefix` or ends at `range_end`, not both")
            }
            InvalidRequest::KeysOnlyAndCountOnly => {
                f.write_str("`keys_only` and `count_only` exclude each other")
            }
            InvalidRequest::CompareType { wants_text: true } => f.write_str(
                "a comparison of `value` compares a string: give `value` as a JSON string",
            ),
            InvalidRequest::CompareType { wants_text: false } => f.write_str(
                "a comparison of a version or revision compares a number: give `value` as a \
                 JSON number",
            ),
            InvalidRequest::TxnRangeRevision => f.write_str(
                "a range read in a transaction reads at the transaction's revision: it takes \
                 no `rev` and no `stale`",
            ),
            InvalidRequest::TxnTooLarge { what, len } => write!(
                f,
                "the transaction's `{what}` holds {len} entries; it may hold at most {}",
                crate::txn::MAX_TXN_OPS
            ),
            InvalidRequest::LeaseTtl { ttl } => write!(
                f,
                "a lease's ttl is {ttl} seconds; it must be at least {} and at most {}",
                crate::lease::MIN_LEASE_TTL_SECS,
                crate::lease::MAX_LEASE_TTL_SECS
            ),
            InvalidRequest::ListAndStartRevision => f.write_str(
                "a `list` watch lists the keys at the current revision and watches from there: \
                 it takes no `start_revision`",
            ),
            InvalidRequest::TxnKeyWrittenTwice => f.write_str(
                "a branch of a transaction writes one key twice (a key may be put or deleted \
                 once per branch, and not put inside a range the branch deletes)",
            ),
        }
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), InvalidRequest> {
    match key.len() {
        bytes if bytes > MAX_KEY_BYTES => Err(InvalidRequest::KeyTooLong { bytes }),
        _ => Ok(()),
    }
}

pub(crate) fn check_value(value: Option<&str>) -> Result<(), InvalidRequest> {
    match value.map(str::len) {
        Some(bytes) if bytes > MAX_VALUE_BYTES => Err(InvalidRequest::ValueTooLong { bytes }),
        _ => Ok(()),
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

impl SessionFields {
    pub(crate) fn check(&self) -> Result<(), InvalidRequest> {
        match (self.client_id, self.seq) {
            (Some(_), Some(0)) => Err(InvalidRequest::SeqZero),
            (Some(_), Some(_)) | (None, None) => Ok(()),
            _ => Err(InvalidRequest::SessionHalf),
        }
    }
}

impl ClientRequest {
    /// Fills in a write's session fields, which a client does before
    /// sending it (and again, the same, on a retry); false (and nothing
    /// changed) for a request that is not applied in a session.
    pub fn set_session(&mut self, fields: SessionFields) -> bool {
        let slot = match self {
            ClientRequest::Set(r) => &mut r.session,
            ClientRequest::Delete(r) => &mut r.session,
            ClientRequest::Cas(r) => &mut r.session,
            ClientRequest::Txn(r) => &mut r.session,
            ClientRequest::Lease(r) => {
                if r.session().is_none() {
                    return false;
                }
                r.set_session(fields);
                return true;
            }
            ClientRequest::Watch(_)
            | ClientRequest::Healthcheck
            | ClientRequest::Status
            | ClientRequest::Get(_)
            | ClientRequest::Keys(_)
            | ClientRequest::Range(_)
            | ClientRequest::RegisterClient
            | ClientRequest::Authenticate(_)
            | ClientRequest::Auth(_)
            | ClientRequest::User(_)
            | ClientRequest::Role(_)
            | ClientRequest::Member(_)
            | ClientRequest::TransferLeader(_) => return false,
        };
        *slot = fields;
        true
    }
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
    /// Attach the key to this lease (see [`crate::lease`]); without one, a
    /// key that was attached to a lease is not any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    #[serde(flatten)]
    pub session: SessionFields,
}

#[derive(Deserialize)]
struct SetWire {
    key: String,
    value: String,
    lease: Option<u64>,
    client_id: Option<u64>,
    seq: Option<u64>,
}

impl From<SetWire> for SetRequest {
    fn from(w: SetWire) -> Self {
        SetRequest {
            key: w.key,
            value: w.value,
            lease: w.lease,
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
    /// Where this page starts: a previous reply's `next_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl RequestPayload for GetRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)
    }
}

impl RequestPayload for SetRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)?;
        check_value(Some(&self.value))?;
        self.session.check()
    }
}

impl RequestPayload for DeleteRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)?;
        self.session.check()
    }
}

impl RequestPayload for CasRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)?;
        check_value(self.expected.as_deref())?;
        check_value(self.value.as_deref())?;
        self.session.check()
    }
}

impl RequestPayload for KeysRequest {
    /// `KEYS` without a payload lists every key.
    fn if_absent() -> Option<Self> {
        Some(KeysRequest::default())
    }

    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.prefix)?;
        self.from.as_deref().map_or(Ok(()), check_key)
    }
}

// ------------------------------------------------------------------ replies

/// A client reply's payload; the table gives each its `msg_type`.
pub trait ReplyPayload: Serialize {
    const MSG_TYPE: MsgType;
}

/// `HEALTHCHECK`'s reply: the string `"ok"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthcheckReply;

impl Serialize for HealthcheckReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("ok")
    }
}

impl<'de> Deserialize<'de> for HealthcheckReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match <std::borrow::Cow<'de, str>>::deserialize(d)?.as_ref() {
            "ok" => Ok(HealthcheckReply),
            other => Err(serde::de::Error::custom(format!(
                "a HEALTHCHECK reply is \"ok\", not {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    pub key: String,
    pub value: Option<String>,
    /// The key's revisions and version (see [`crate::kv`]), when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The cluster's revision this read saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
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
    /// Keys after these were left out (at most 10,000 a reply): ask again
    /// with `from: next_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// A learner: it receives the log and does not vote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learner: bool,
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
    /// Not applied: the connection has not proven who it is (a peer
    /// handshake that failed, or, with auth enabled, a client that has not
    /// logged in).
    Unauthenticated,
    /// A peer handshake between nodes of different clusters (their cluster
    /// ids differ); the connection is closed.
    ClusterMismatch,
    /// Not applied: the connection's user has no role that allows it.
    PermissionDenied,
    /// Not applied: another membership change is not committed yet, or the
    /// leader has not committed an entry of its term yet. Retry shortly.
    ChangeInProgress,
    /// Not applied: the learner to promote is too far behind the leader.
    /// Retry once it has caught up (`member list` shows how far it is).
    LearnerNotReady,
    /// Not applied: the change would leave fewer healthy voters than a
    /// quorum of the new configuration needs. Bring members back, or force.
    UnsafeChange,
    /// Not applied: the change makes no sense for these members (the id is
    /// taken, was removed, is not a member or not a learner, ...).
    MembershipRefused,
    /// This node was removed from the cluster; it serves nothing.
    Removed,
    /// The revision asked for is older than this node's history holds:
    /// `compact_revision` is the oldest it still does.
    Compacted,
    /// The revision asked for is ahead of the current one.
    FutureRevision,
    /// A watch canceled by the node: its client did not read its messages
    /// fast enough (its connection's buffer of unsent messages filled).
    /// Resume with a new watch from the revision the message names.
    SlowWatcher,
    /// Not created: the connection holds the most watches it may.
    TooManyWatches,
    /// Not applied: no lease has that id (never granted, revoked, or
    /// expired).
    LeaseNotFound,
    /// Not granted: the cluster holds `MAX_LEASES` leases.
    TooManyLeases,
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
                | ErrorCode::Unauthenticated
                | ErrorCode::ClusterMismatch
                | ErrorCode::PermissionDenied
                | ErrorCode::ChangeInProgress
                | ErrorCode::LearnerNotReady
                | ErrorCode::UnsafeChange
                | ErrorCode::MembershipRefused
                | ErrorCode::Removed
                | ErrorCode::Compacted
                | ErrorCode::FutureRevision
                | ErrorCode::SlowWatcher
                | ErrorCode::TooManyWatches
                | ErrorCode::LeaseNotFound
                | ErrorCode::TooManyLeases
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
    /// With `COMPACTED`: the oldest revision still held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<u64>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
            leader_id: None,
            leader_addr: None,
            compact_revision: None,
        }
    }

    /// `COMPACTED`, naming the oldest revision still held.
    pub fn compacted(oldest: u64, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            compact_revision: Some(oldest),
            ..ErrorReply::new(ErrorCode::Compacted, message)
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
