//! The one table of message types: each `msg_type` name on the wire, the
//! request or Raft message it carries and, for a client request, the payload
//! of its success reply.
//!
//! From the table [`MsgType`] (names both ways), [`ClientRequest`] and
//! [`RaftMessage`] are generated, along with the dispatch that decodes and
//! encodes their payloads (see [`crate::envelope`]). Adding a client command
//! is one row here, its payload types (with [`RequestPayload`] for its
//! limits), and what the server does with it.

use serde::{Deserialize, Serialize};

use crate::auth::*;
use crate::client::*;
use crate::envelope::{parse_payload, parse_request, write_payload, PAYLOAD_KEY};
use crate::kv::*;
use crate::lease::*;
use crate::membership::*;
use crate::peer::*;
use crate::raft::*;
use crate::txn::*;
use crate::watch::*;

macro_rules! message_table {
    (
        client {
            $( $(#[$cmeta:meta])* $cvar:ident = $cname:literal $(($creq:ty))? => $crep:ty, )*
        }
        peer {
            $( $(#[$pmeta:meta])* $pvar:ident = $pname:literal ($ppay:ty) $(written by $pwrite:path)?, )*
        }
        handshake {
            $( $(#[$hmeta:meta])* $hvar:ident = $hname:literal ($hpay:ty), )*
        }
        error { $evar:ident = $ename:literal => $erep:ty, }
    ) => {
        /// Every `msg_type` on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MsgType {
            $($cvar,)*
            $($pvar,)*
            $($hvar,)*
            $evar,
        }

        impl MsgType {
            /// Every message type, in the table's order.
            pub const ALL: &'static [MsgType] =
                &[$(MsgType::$cvar,)* $(MsgType::$pvar,)* $(MsgType::$hvar,)* MsgType::$evar];

            /// The name on the wire.
            pub fn name(self) -> &'static str {
                match self {
                    $(MsgType::$cvar => $cname,)*
                    $(MsgType::$pvar => $pname,)*
                    $(MsgType::$hvar => $hname,)*
                    MsgType::$evar => $ename,
                }
            }

            /// The type a wire name names, if any.
            pub fn from_name(name: &str) -> Option<MsgType> {
                match name {
                    $($cname => Some(MsgType::$cvar),)*
                    $($pname => Some(MsgType::$pvar),)*
                    $($hname => Some(MsgType::$hvar),)*
                    $ename => Some(MsgType::$evar),
                    _ => None,
                }
            }
        }

        /// A client's request; its `msg_type` is also its success reply's.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ClientRequest {
            $( $(#[$cmeta])* $cvar $(($creq))?, )*
        }

        impl ClientRequest {
            pub fn msg_type(&self) -> MsgType {
                match self {
                    $(ClientRequest::$cvar { .. } => MsgType::$cvar,)*
                }
            }

            /// The request a line of type `msg_type` makes, or None if that
            /// is not a client request's type.
            pub(crate) fn decode(
                msg_type: MsgType,
                payload: Option<&str>,
            ) -> Option<Result<ClientRequest, String>> {
                match msg_type {
                    $(MsgType::$cvar => Some(message_table!(@decode $cvar, msg_type, payload $(, $creq)?)),)*
                    _ => None,
                }
            }

            /// Appends `,"payload":...` if this request has one.
            pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
                match self {
                    $(message_table!(@pattern $cvar, p $(, $creq)?) => {
                        message_table!(@write out, p $(, $creq)?)
                    })*
                }
            }
        }

        /// Every message one Raft node sends another. On the wire the variant
        /// becomes the envelope's `msg_type` and the struct its `payload`.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "msg_type", content = "payload")]
        pub enum RaftMessage {
            $( $(#[$pmeta])* #[serde(rename = $pname)] $pvar($ppay), )*
        }

        impl RaftMessage {
            pub fn msg_type(&self) -> MsgType {
                match self {
                    $(RaftMessage::$pvar(_) => MsgType::$pvar,)*
                }
            }

            /// The Raft message a line of type `msg_type` carries, or None
            /// if that is not a Raft message's type.
            pub(crate) fn decode(
                msg_type: MsgType,
                payload: Option<&str>,
            ) -> Option<Result<RaftMessage, String>> {
                match msg_type {
                    $(MsgType::$pvar => Some(parse_payload(msg_type, payload).map(RaftMessage::$pvar)),)*
                    _ => None,
                }
            }

            /// Appends `,"payload":...`.
            pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
                match self {
                    $(RaftMessage::$pvar(m) => message_table!(@write_peer out, m $(, $pwrite)?),)*
                }
            }
        }

        /// The peer handshake (see [`crate::peer`]): the only lines a
        /// connection between nodes carries before it has proven itself.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Handshake {
            $( $(#[$hmeta])* $hvar($hpay), )*
        }

        impl Handshake {
            pub fn msg_type(&self) -> MsgType {
                match self {
                    $(Handshake::$hvar(_) => MsgType::$hvar,)*
                }
            }

            /// The handshake message a line of type `msg_type` carries, held
            /// to its limits, or None if that is not a handshake type.
            pub(crate) fn decode(
                msg_type: MsgType,
                payload: Option<&str>,
            ) -> Option<Result<Handshake, String>> {
                match msg_type {
                    $(MsgType::$hvar => Some(parse_payload::<$hpay>(msg_type, payload).and_then(|m| {
                        m.check().map_err(|e| format!("bad {msg_type} payload: {e}"))?;
                        Ok(Handshake::$hvar(m))
                    })),)*
                    _ => None,
                }
            }

            /// Appends `,"payload":...`.
            pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
                match self {
                    $(Handshake::$hvar(m) => write_payload(out, m),)*
                }
            }
        }

        $(impl ReplyPayload for $crep {
            const MSG_TYPE: MsgType = MsgType::$cvar;
        })*

        impl ReplyPayload for $erep {
            const MSG_TYPE: MsgType = MsgType::$evar;
        }
    };

    (@decode $var:ident, $t:ident, $payload:ident) => {
        Ok(ClientRequest::$var)
    };
    (@decode $var:ident, $t:ident, $payload:ident, $req:ty) => {
        parse_request::<$req>($t, $payload).map(ClientRequest::$var)
    };
    (@pattern $var:ident, $p:ident) => {
        ClientRequest::$var
    };
    (@pattern $var:ident, $p:ident, $req:ty) => {
        ClientRequest::$var($p)
    };
    (@write $out:ident, $p:ident) => {{}};
    (@write $out:ident, $p:ident, $req:ty) => {
        write_payload($out, $p)
    };
    (@write_peer $out:ident, $m:ident) => {
        write_payload($out, $m)
    };
    (@write_peer $out:ident, $m:ident, $write:path) => {{
        $out.extend_from_slice(PAYLOAD_KEY);
        $write($m, $out)
    }};
}

message_table! {
    client {
        Healthcheck = "HEALTHCHECK" => HealthcheckReply,
        Status = "STATUS" => StatusReply,
        Get = "GET" (GetRequest) => GetReply,
        Set = "SET" (SetRequest) => SetReply,
        Delete = "DELETE" (DeleteRequest) => DeleteReply,
        Cas = "CAS" (CasRequest) => CasReply,
        Keys = "KEYS" (KeysRequest) => KeysReply,
        /// A key, a prefix or a range, with revisions and paging (see
        /// [`crate::kv`]).
        Range = "RANGE" (RangeRequest) => RangeReply,
        /// Comparisons, then one branch of operations, at one revision (see
        /// [`crate::txn`]).
        Txn = "TXN" (TxnRequest) => TxnReply,
        /// Creates or cancels a watch; a watch's news come as `WATCH`
        /// messages without a `req_id` (see [`crate::watch`]).
        Watch = "WATCH" (WatchRequest) => WatchReply,
        /// Grants, keeps alive, revokes and lists leases (see
        /// [`crate::lease`]).
        Lease = "LEASE" (LeaseRequest) => LeaseReply,
        /// Opens a client session: the reply's `client_id` is what the client's
        /// writes carry from then on.
        RegisterClient = "REGISTER_CLIENT" => RegisterClientReply,
        /// Logs the connection in (see [`crate::auth`]).
        Authenticate = "AUTHENTICATE" (AuthenticateRequest) => AuthenticateReply,
        Auth = "AUTH" (AuthRequest) => AuthReply,
        User = "USER" (UserRequest) => UserReply,
        Role = "ROLE" (RoleRequest) => RoleReply,
        Member = "MEMBER" (MemberRequest) => MemberReply,
        TransferLeader = "TRANSFER_LEADER" (TransferLeaderRequest) => TransferLeaderReply,
    }
    peer {
        // Written by hand, to embed commands (see `AppendEntries::write_payload`).
        AppendEntries = "APPEND_ENTRY" (AppendEntries) written by AppendEntries::write_payload,
        AppendEntriesReply = "APPEND_ENTRY_REPLY" (AppendEntriesReply),
        RequestVote = "REQUEST_VOTE" (RequestVote),
        RequestVoteReply = "REQUEST_VOTE_REPLY" (RequestVoteReply),
        TimeoutNow = "TIMEOUT_NOW" (TimeoutNow),
        InstallSnapshot = "INSTALL_SNAPSHOT" (InstallSnapshot),
        InstallSnapshotReply = "INSTALL_SNAPSHOT_REPLY" (InstallSnapshotReply),
        /// A lease keepalive forwarded to the leader (the node's, not the
        /// Raft core's).
        LeaseKeepalive = "LEASE_KEEPALIVE" (LeaseKeepalive),
        LeaseKeepaliveReply = "LEASE_KEEPALIVE_REPLY" (LeaseKeepaliveReply),
    }
    handshake {
        PeerHello = "PEER_HELLO" (PeerHello),
        PeerChallenge = "PEER_CHALLENGE" (PeerChallenge),
        PeerProof = "PEER_PROOF" (PeerProof),
        PeerAccept = "PEER_ACCEPT" (PeerAccept),
    }
    error {
        Error = "ERROR" => ErrorReply,
    }
}

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back_to_its_type_and_needs_no_escaping() {
        for &t in MsgType::ALL {
            assert_eq!(MsgType::from_name(t.name()), Some(t));
            assert!(
                t.name()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{t}: the envelope writes names unescaped"
            );
        }
        let mut names: Vec<&str> = MsgType::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MsgType::ALL.len(), "names are unique");
        assert_eq!(MsgType::from_name("set"), None);
    }

    #[test]
    fn a_reply_carries_its_requests_msg_type() {
        let request = ClientRequest::Cas(CasRequest {
            key: "k".into(),
            expected: None,
            value: None,
            session: SessionFields::default(),
        });
        assert_eq!(request.msg_type(), CasReply::MSG_TYPE);
        assert_eq!(
            ClientRequest::RegisterClient.msg_type().name(),
            "REGISTER_CLIENT"
        );
        assert_eq!(RegisterClientReply::MSG_TYPE, MsgType::RegisterClient);
        assert_eq!(ErrorReply::MSG_TYPE.name(), "ERROR");
        let vote = RaftMessage::TimeoutNow(TimeoutNow {
            term: 1,
            leader_id: 2,
        });
        assert_eq!(vote.msg_type().name(), "TIMEOUT_NOW");
    }
}
