//! poncho's wire protocol: JSON Lines messages between clients and nodes, and
//! between nodes. See `docs/protocol.md` for the reference.

pub mod framing;
pub mod message;
pub mod raft;

pub use framing::{LineBuffer, LineTooLong, MAX_LINE_BYTES};
pub use message::*;
pub use raft::{
    AppendEntries, AppendEntriesReply, Entry, EntryKind, InstallSnapshot, InstallSnapshotReply,
    NodeId, RaftMessage, RequestVote, RequestVoteReply, TimeoutNow,
};
