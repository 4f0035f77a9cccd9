//! poncho's wire protocol: JSON Lines messages between clients and nodes, and
//! between nodes. See `docs/protocol.md` for the reference.
//!
//! - [`table`]: the one list of message types (`msg_type` names, the request
//!   or Raft message each carries, each request's reply).
//! - [`auth`]: logging in, users and roles.
//! - [`membership`]: the configuration the log carries, and `MEMBER` and
//!   `TRANSFER_LEADER`.
//! - [`client`]: client requests' and replies' payloads, limits, errors.
//! - [`kv`]: revisions, and `RANGE` reads.
//! - [`txn`]: `TXN`, transactions.
//! - [`lease`]: `LEASE`, leases.
//! - [`watch`]: `WATCH`, streams of changes.
//! - [`raft`]: the Raft RPCs and the log entry they carry.
//! - [`peer`]: the handshake that proves a connection between nodes.
//! - [`envelope`]: whole lines, decoded and encoded.
//! - [`framing`]: splitting a byte stream into lines.

pub mod auth;
pub mod client;
pub mod envelope;
pub mod framing;
pub mod kv;
pub mod lease;
pub mod membership;
pub mod peer;
pub mod raft;
pub mod table;
pub mod txn;
pub mod watch;

pub use auth::*;
pub use client::*;
pub use envelope::{
    decode_request, encode_error, encode_handshake, encode_peer, encode_reply, encode_request,
    DecodeError, ReplyEnvelope, ReplyError, Request,
};
pub use framing::{LineBuffer, LineTooLong, MAX_LINE_BYTES};
pub use kv::*;
pub use lease::*;
pub use membership::*;
pub use peer::{PeerAccept, PeerChallenge, PeerHello, PeerProof};
pub use raft::{
    AppendEntries, AppendEntriesReply, Entry, EntryKind, InstallSnapshot, InstallSnapshotReply,
    LeaseKeepalive, LeaseKeepaliveReply, NodeId, RaftMessage, RequestVote, RequestVoteReply,
    TimeoutNow,
};
pub use table::{ClientRequest, Handshake, MsgType};
pub use txn::*;
pub use watch::*;
