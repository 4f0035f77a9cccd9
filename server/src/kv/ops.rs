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
    encode_error, encode_reply, Access, AuthReply, AuthRequest, CasReply, ClientRequest,
    DeleteReply, ErrorReply, KeySpec, LeaseReply, LeaseRequest, RegisterClientReply, ReplyPayload,
    RoleReply, RoleRequest, SessionFields, SetReply, Txn, TxnReply, UserReply, UserRequest,
};
use serde::{Deserialize, Serialize};

use super::auth::{AuthError, AuthStore, Need};
use super::lease::lease_not_found;
use super::store::Data;

/// A write as the log holds it. Written as an internally tagged object
/// (`{"type":"SET","key":..}`); read through [`OpWire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Set {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
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
    /// Comparisons, then one branch of operations, at one revision (see
    /// `poncho_protocol::txn`).
    Txn(Txn),
    /// A lease of `ttl` seconds, whose id is this entry's index.
    LeaseGrant {
        ttl: u64,
    },
    /// A client ends lease `id`, deleting its keys.
    LeaseRevoke {
        id: u64,
    },
    /// The leader found lease `id` not kept alive for its TTL: the same as
    /// a revoke, proposed by the node, in no session and for no user.
    LeaseExpire {
        id: u64,
    },
    /// Opens a session whose id is this entry's index.
    RegisterClient,
    /// A change to users, roles or auth itself (root only, while auth is on).
    Auth {
        auth: AuthOp,
    },
}

/// A change to the users and roles, as the log holds it: like the request,
/// but a password is already its salted hash (the leader hashes it before it
/// proposes; the password never enters the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AuthOp {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: String,
    },
    UserDelete {
        name: String,
    },
    UserPasswd {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        name: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrant {
        name: String,
        keys: KeySpec,
        access: Access,
    },
    RoleRevoke {
        name: String,
        keys: KeySpec,
    },
}

impl AuthOp {
    /// The change a request asks for; the request back (`Err`) for the ones
    /// that are reads, or that carry a password the node must hash first.
    fn from_request(request: ClientRequest) -> Result<AuthOp, ClientRequest> {
        use {AuthRequest as A, RoleRequest as R, UserRequest as U};
        Ok(match request {
            ClientRequest::Auth(A::Enable) => AuthOp::Enable,
            ClientRequest::Auth(A::Disable) => AuthOp::Disable,
            ClientRequest::User(U::Delete { name }) => AuthOp::UserDelete { name },
            ClientRequest::User(U::GrantRole { name, role }) => {
                AuthOp::UserGrantRole { name, role }
            }
            ClientRequest::User(U::RevokeRole { name, role }) => {
                AuthOp::UserRevokeRole { name, role }
            }
            ClientRequest::Role(R::Add { name }) => AuthOp::RoleAdd { name },
            ClientRequest::Role(R::Delete { name }) => AuthOp::RoleDelete { name },
            ClientRequest::Role(R::GrantPermission { name, keys, access }) => {
                AuthOp::RoleGrant { name, keys, access }
            }
            ClientRequest::Role(R::RevokePermission { name, keys }) => {
                AuthOp::RoleRevoke { name, keys }
            }
            other => return Err(other),
        })
    }
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
                    lease: r.lease,
                },
                r.session,
            ),
            ClientRequest::Lease(LeaseRequest::Grant {
                ttl,
                client_id,
                seq,
            }) => (Op::LeaseGrant { ttl }, SessionFields { client_id, seq }),
            ClientRequest::Lease(LeaseRequest::Revoke { id, client_id, seq }) => {
                (Op::LeaseRevoke { id }, SessionFields { client_id, seq })
            }
            ClientRequest::Delete(r) => (Op::Delete { key: r.key }, r.session),
            ClientRequest::Cas(r) => (
                Op::Cas {
                    key: r.key,
                    expected: r.expected,
                    value: r.value,
                },
                r.session,
            ),
            ClientRequest::Txn(r) => (Op::Txn(r.txn), r.session),
            // A registration goes through the log like a write: the session
            // exists once it is applied, on every node at the same index.
            ClientRequest::RegisterClient => (Op::RegisterClient, SessionFields::default()),
            // Changes to auth are not applied in a session: each is
            // idempotent or refused when repeated.
            change @ (ClientRequest::Auth(_) | ClientRequest::User(_) | ClientRequest::Role(_)) => {
                let auth = AuthOp::from_request(change)?;
                (Op::Auth { auth }, SessionFields::default())
            }
            read @ (ClientRequest::Healthcheck
            | ClientRequest::Status
            | ClientRequest::Get(_)
            | ClientRequest::Keys(_)
            | ClientRequest::Range(_)
            | ClientRequest::Watch(_)
            | ClientRequest::Lease(_)
            | ClientRequest::Authenticate(_)
            | ClientRequest::Member(_)
            | ClientRequest::TransferLeader(_)) => return Err(read),
        })
    }

    /// What the proposer's user needs to be allowed this write, checked
    /// when it is proposed and again when it is applied.
    pub fn needs(&self) -> Need<'_> {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => Need::Write(key),
            // A revoke also needs to write every key attached (checked
            // when applied, `KvStore::check_op`).
            Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } => Need::LoggedIn,
            Op::LeaseExpire { .. } => Need::Nothing,
            // A CAS reads the key (and tells its value) as well as writing it.
            Op::Cas { key, .. } => Need::ReadWrite(key),
            Op::Txn(txn) => Need::Txn(txn),
            Op::RegisterClient => Need::LoggedIn,
            Op::Auth { .. } => Need::Root,
        }
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
    auth: Option<AuthOp>,
    #[serde(default)]
    compare: Vec<poncho_protocol::Compare>,
    #[serde(default)]
    success: Vec<poncho_protocol::TxnOp>,
    #[serde(default)]
    failure: Vec<poncho_protocol::TxnOp>,
    lease: Option<u64>,
    ttl: Option<u64>,
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum OpKind {
    Set,
    Delete,
    Cas,
    Txn,
    LeaseGrant,
    LeaseRevoke,
    LeaseExpire,
    RegisterClient,
    Auth,
}

impl TryFrom<OpWire> for Op {
    type Error = String;

    fn try_from(w: OpWire) -> Result<Op, String> {
        let OpWire {
            kind,
            key,
            value,
            expected,
            auth,
            compare,
            success,
            failure,
            lease,
            ttl,
            id,
        } = w;
        let id = id.ok_or("missing field `id` in a lease op");
        let key = key.ok_or("missing field `key` in op");
        Ok(match kind {
            OpKind::Set => Op::Set {
                key: key?,
                value: value.ok_or("missing field `value` in a SET op")?,
                lease,
            },
            OpKind::LeaseGrant => Op::LeaseGrant {
                ttl: ttl.ok_or("missing field `ttl` in a LEASE_GRANT op")?,
            },
            OpKind::LeaseRevoke => Op::LeaseRevoke { id: id? },
            OpKind::LeaseExpire => Op::LeaseExpire { id: id? },
            OpKind::Delete => Op::Delete { key: key? },
            OpKind::Cas => Op::Cas {
                key: key?,
                expected,
                value,
            },
            OpKind::Txn => Op::Txn(Txn {
                compare,
                success,
                failure,
            }),
            OpKind::RegisterClient => Op::RegisterClient,
            OpKind::Auth => Op::Auth {
                auth: auth.ok_or("missing field `auth` in an AUTH op")?,
            },
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
    Txn(TxnReply),
    Lease(LeaseReply),
    #[serde(rename = "REGISTER_CLIENT")]
    Register(RegisterClientReply),
    Auth(AuthReply),
    User(UserReply),
    Role(RoleReply),
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
            ApplyResult::Txn(_) => TxnReply::MSG_TYPE,
            ApplyResult::Lease(_) => LeaseReply::MSG_TYPE,
            ApplyResult::Register(_) => RegisterClientReply::MSG_TYPE,
            ApplyResult::Auth(_) => AuthReply::MSG_TYPE,
            ApplyResult::User(_) => UserReply::MSG_TYPE,
            ApplyResult::Role(_) => RoleReply::MSG_TYPE,
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
            ApplyResult::Txn(r) => r.string_bytes(),
            ApplyResult::Lease(_) => 0,
            // Not applied in sessions; an index only.
            ApplyResult::Register(_)
            | ApplyResult::Auth(_)
            | ApplyResult::User(_)
            | ApplyResult::Role(_) => 0,
            ApplyResult::Error(e) => e.message.len(),
        }
    }

    /// Appends the reply line (answering `req_id`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, req_id: Option<u64>) {
        match self {
            ApplyResult::Set(r) => encode_reply(out, req_id, r),
            ApplyResult::Delete(r) => encode_reply(out, req_id, r),
            ApplyResult::Cas(r) => encode_reply(out, req_id, r),
            ApplyResult::Txn(r) => encode_reply(out, req_id, r),
            ApplyResult::Lease(r) => encode_reply(out, req_id, r),
            ApplyResult::Register(r) => encode_reply(out, req_id, r),
            ApplyResult::Auth(r) => encode_reply(out, req_id, r),
            ApplyResult::User(r) => encode_reply(out, req_id, r),
            ApplyResult::Role(r) => encode_reply(out, req_id, r),
            ApplyResult::Error(e) => encode_error(out, req_id, e),
        }
    }
}

impl Data {
    /// What SET, DELETE and CAS do, and the reply each gives; `index` is the
    /// entry's. `KvStore::apply_command` takes registrations before this.
    pub(super) fn apply(&mut self, index: u64, op: Op) -> ApplyResult {
        match op {
            Op::Set { key, value, lease } => {
                if let Some(id) = lease.filter(|id| !self.has_lease(*id)) {
                    return ApplyResult::Error(lease_not_found(id));
                }
                self.put(&key, Arc::from(value), index, lease.unwrap_or(0));
                ApplyResult::Set(SetReply { key, index })
            }
            Op::LeaseGrant { ttl } => match self.grant(index, ttl) {
                Ok(r) => ApplyResult::Lease(r),
                Err(e) => ApplyResult::Error(e),
            },
            Op::LeaseRevoke { id } | Op::LeaseExpire { id } => match self.end_lease(index, id) {
                Ok(r) => ApplyResult::Lease(r),
                Err(e) => ApplyResult::Error(e),
            },
            Op::Delete { key } => {
                let deleted = self.take(&key, index);
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
                            // A CAS keeps the key's lease, as a SET without
                            // one would not: it names no lease to attach.
                            let lease = self.get_stored(&key).map_or(0, |s| s.lease);
                            self.put(&key, Arc::from(v.as_str()), index, lease);
                            Some(v)
                        }
                        None => {
                            self.take(&key, index);
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
            Op::Txn(txn) => match self.apply_txn(index, txn) {
                Ok(r) => ApplyResult::Txn(r),
                Err(e) => ApplyResult::Error(e),
            },
            Op::RegisterClient | Op::Auth { .. } => ApplyResult::Error(ErrorReply::bad_request(
                "REGISTER_CLIENT and AUTH are not key/value operations",
            )),
        }
    }
}

impl AuthStore {
    /// What each change to users and roles does, and its reply; `index` is
    /// the entry's. A refused change changes nothing.
    pub(super) fn apply(&mut self, index: u64, op: AuthOp) -> ApplyResult {
        let user = |r: Result<(), AuthError>| match r {
            Ok(()) => ApplyResult::User(UserReply {
                index: Some(index),
                users: None,
            }),
            Err(e) => ApplyResult::Error(e.into()),
        };
        let role = |r: Result<(), AuthError>| match r {
            Ok(()) => ApplyResult::Role(RoleReply {
                index: Some(index),
                roles: None,
            }),
            Err(e) => ApplyResult::Error(e.into()),
        };
        match op {
            AuthOp::Enable => match self.enable() {
                Ok(()) => self.auth_reply(index),
                Err(e) => ApplyResult::Error(e.into()),
            },
            AuthOp::Disable => {
                self.disable();
                self.auth_reply(index)
            }
            AuthOp::UserAdd {
                name,
                password_hash,
            } => user(self.user_add(&name, password_hash, index)),
            AuthOp::UserDelete { name } => user(self.user_delete(&name)),
            AuthOp::UserPasswd {
                name,
                password_hash,
            } => user(self.user_passwd(&name, password_hash, index)),
            AuthOp::UserGrantRole { name, role } => user(self.user_grant_role(&name, &role)),
            AuthOp::UserRevokeRole { name, role } => user(self.user_revoke_role(&name, &role)),
            AuthOp::RoleAdd { name } => role(self.role_add(&name)),
            AuthOp::RoleDelete { name } => role(self.role_delete(&name)),
            AuthOp::RoleGrant { name, keys, access } => {
                let permission = super::auth::Permission {
                    range: keys.into(),
                    access,
                };
                role(self.role_grant(&name, permission))
            }
            AuthOp::RoleRevoke { name, keys } => role(self.role_revoke(&name, &keys.into())),
        }
    }

    fn auth_reply(&self, index: u64) -> ApplyResult {
        ApplyResult::Auth(AuthReply {
            enabled: self.enabled,
            index: Some(index),
        })
    }
}
