//! poncho's wire protocol: JSON Lines messages between clients and nodes, and
//! between nodes. See `docs/protocol.md` for the reference.

pub mod raft;

pub use raft::{
    AppendEntries, AppendEntriesReply, Entry, EntryKind, NodeId, RaftMessage, RequestVote,
    RequestVoteReply, TimeoutNow,
};
