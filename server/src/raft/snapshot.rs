//! Snapshot transfer (section 7) between the core and its driver. The
//! snapshot's bytes never pass through the core: it decides who needs one
//! and when, the driver reads, writes and verifies them.
//!
//! Leader: a follower whose next entries are compacted away goes to
//! `ProgressState::Snapshot` and appears in `Ready::snapshots_to_send`; the
//! driver sends it the latest snapshot's first chunk through
//! [`Raft::send_snapshot_chunk`]. Each acknowledgement that is news comes
//! out as a [`SnapshotAck`] in `Ready::snapshot_acks`, and the driver sends
//! the chunk at its offset. A transfer that stalls is resent from the last
//! acknowledged offset, and given up after `Config::snapshot_stall_ticks`.
//!
//! Follower: chunks from the leader of its term, of a snapshot that reaches
//! past its commit index, come out in `Ready::snapshot_chunks`. The driver writes each and reports it with
//! [`Raft::snapshot_chunk_received`] (the acknowledgement leaves once this
//! ready is durable); once the last is written and verified, it calls
//! [`Raft::restore_snapshot`] and does what the [`Restored`] answer says.
//!
//! Why three outputs and three inputs: a start names no snapshot (the
//! driver picks its latest) where an acknowledgement names one, and the
//! inputs carry what only the driver knows (the bytes, what it wrote, that
//! it verified). The leader's two outputs could be one list (a start being
//! an acknowledgement of offset 0 of no snapshot yet); they are kept apart
//! so the driver and the simulator keep their contract.

use poncho_protocol::{InstallSnapshot, InstallSnapshotReply, Membership, NodeId, RaftMessage};

use super::{ProgressState, Raft};

/// What [`Raft::restore_snapshot`] did with a received snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// It ends at or before the commit index: the log and the state machine
    /// already hold all of it (and may be further along), so neither is to
    /// be touched.
    Stale,
    /// Installed; the log continues it and was kept (compact behind it).
    KeptLog,
    /// Installed; the log did not match it and was discarded (reset it).
    DiscardedLog,
}

/// Leader: follower `to` acknowledged the chunks of snapshot `index` before
/// `next_offset`; the driver sends the chunk there (the node starts its
/// latest snapshot over instead if `index` is no longer its latest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAck {
    pub to: NodeId,
    pub index: u64,
    pub next_offset: u64,
}

impl Raft {
    /// Leader: sends `to` one chunk of the snapshot through (`index`,
    /// `term`), if `to` is still waiting for a snapshot. The driver calls
    /// this for each entry of `Ready::snapshots_to_send` (offset 0) and
    /// `Ready::snapshot_acks` (the acknowledged offset).
    pub fn send_snapshot_chunk(
        &mut self,
        to: NodeId,
        index: u64,
        term: u64,
        offset: u64,
        data: String,
        done: bool,
    ) {
        let waiting = self
            .leader()
            .and_then(|l| l.progress.get(&to))
            .is_some_and(|p| p.state == ProgressState::Snapshot);
        if !waiting {
            return;
        }
        let message = InstallSnapshot {
            term: self.term,
            leader_id: self.config.id,
            last_included_index: index,
            last_included_term: term,
            offset,
            data,
            done,
        };
        self.send(to, RaftMessage::InstallSnapshot(message));
    }

    /// Follower: the driver wrote a chunk of the snapshot through `index`
    /// from `leader`, and now expects `next_offset`.
    pub fn snapshot_chunk_received(&mut self, leader: NodeId, index: u64, next_offset: u64) {
        let reply = InstallSnapshotReply {
            term: self.term,
            request_term: self.term,
            last_included_index: index,
            next_offset,
            installed: false,
        };
        self.send(leader, RaftMessage::InstallSnapshotReply(reply));
    }

    /// Follower: the driver verified the snapshot through (`index`, `term`),
    /// whose configuration is `membership`, and made it durable. Unless it is [`Restored::Stale`], the driver
    /// loads it into its state machine; the log keeps what follows the
    /// snapshot if it holds the snapshot's last entry, otherwise it is
    /// discarded and the driver must discard its stored log too before the
    /// next `ready()`.
    pub fn restore_snapshot(
        &mut self,
        leader: NodeId,
        index: u64,
        term: u64,
        membership: Membership,
    ) -> Restored {
        if index <= self.log.committed() {
            return Restored::Stale;
        }
        let discarded = self.log.restore(index, term, membership);
        self.refresh_membership();
        self.applied_index = self.applied_index.max(index);
        let reply = InstallSnapshotReply {
            term: self.term,
            request_term: self.term,
            last_included_index: index,
            next_offset: 0,
            installed: true,
        };
        self.send(leader, RaftMessage::InstallSnapshotReply(reply));
        if discarded {
            Restored::DiscardedLog
        } else {
            Restored::KeptLog
        }
    }
}
