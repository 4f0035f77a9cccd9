//! The event loop's side of snapshots: taking them in the background,
//! streaming the latest to followers, receiving one from the leader, and
//! picking one on start: the `Snapshots` state, and the `impl Node` that
//! acts on it from the timers (`snapshot_housekeeping`) and from the Ready
//! driver (`handle_snapshot_outputs`).
//!
//! Taking a snapshot costs the loop one O(1) copy-on-write clone of the state
//! machine (`KvStore::snapshot`); a background thread writes the file while
//! the loop keeps applying. Only when the file is durable does the loop
//! compact the Raft log and delete covered WAL segments.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use poncho_protocol::{InstallSnapshot, NodeId};

use super::{Fatal, Node};
use crate::kv::KvStore;
use crate::raft::{Ready, Restored};
use crate::snapshot::{self, SnapshotError, SnapshotMeta, SnapshotReceiver, SnapshotWriter};

/// Largest chunk streamed to a follower. With JSON escaping a chunk line
/// stays well under the 1 MiB line limit.
pub const CHUNK_BYTES: usize = 128 << 10;
/// Snapshot files kept: the newest, and one older in case the newest is
/// found corrupt on a later start.
const KEEP_SNAPSHOTS: usize = 2;
/// After writing a snapshot failed, the next attempt waits this long.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

/// What went wrong with a snapshot; the callers log it (or, at start,
/// refuse to start with it).
#[derive(Debug)]
pub enum Error {
    /// The snapshots in `dir` could not be listed.
    List {
        dir: PathBuf,
        error: SnapshotError,
    },
    Open {
        path: PathBuf,
        error: SnapshotError,
    },
    /// The file is sound but its lines are not a state machine.
    Load {
        path: PathBuf,
        error: String,
    },
    /// Writing, streaming or receiving a snapshot file failed.
    File(SnapshotError),
    /// The state machine could not be encoded for the file.
    Encode(io::Error),
    Panicked,
    NoSnapshot,
    /// A received snapshot failed its checks when complete.
    BadReceived(SnapshotError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::List { dir, error } => {
                write!(f, "cannot read snapshots in {}: {error}", dir.display())
            }
            Error::Open { path, error } => {
                write!(f, "cannot open snapshot {}: {error}", path.display())
            }
            Error::Load { path, error } => {
                write!(f, "cannot load snapshot {}: {error}", path.display())
            }
            Error::File(e) => write!(f, "{e}"),
            Error::Encode(e) => write!(f, "{e}"),
            Error::Panicked => write!(f, "the snapshot thread panicked"),
            Error::NoSnapshot => write!(f, "no snapshot to send"),
            Error::BadReceived(e) => write!(f, "the received snapshot is bad: {e}"),
        }
    }
}

impl std::error::Error for Error {}

pub struct Snapshots {
    dir: PathBuf,
    fsync: bool,
    /// The newest durable snapshot.
    pub latest: Option<(SnapshotMeta, PathBuf)>,
    building: Option<JoinHandle<Result<(SnapshotMeta, PathBuf), Error>>>,
    receiving: Option<(NodeId, SnapshotReceiver, Transfer)>,
    /// No new snapshot is started before this (one failed to be written).
    retry_at: Option<Instant>,
    /// The snapshot being built was started for a transfer (its latest was
    /// too old to send): transfers wait for it.
    building_for_transfer: bool,
    /// The index of the last snapshot built for a transfer: that one is
    /// sent whatever its age, so a write rate faster than a build cannot
    /// keep a transfer waiting for ever fresher ones.
    built_for_transfer: Option<u64>,
}

/// What became of a chunk from the leader.
pub enum Received {
    /// Acknowledge: the next offset wanted.
    Ack(u64),
    /// The snapshot is complete, verified and durable, and its state loaded.
    Complete(SnapshotMeta, Box<KvStore>, Transfer),
}

/// How a completed transfer went, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    /// Chunks written, in order.
    pub chunks: u32,
    /// Chunks of this transfer that arrived at the wrong offset (resent
    /// after a loss, duplicated or late) and were answered with the offset
    /// wanted instead.
    pub out_of_turn: u32,
}

impl Snapshots {
    /// Finds the newest valid snapshot in `dir` and loads it. Corrupt newer
    /// ones are reported in the warnings and set aside.
    pub fn recover(
        dir: &Path,
        fsync: bool,
    ) -> Result<(Snapshots, Option<KvStore>, Vec<String>), Error> {
        let (latest, warnings) = snapshot::latest_valid(dir).map_err(|error| Error::List {
            dir: dir.to_path_buf(),
            error,
        })?;
        let kv = match &latest {
            Some((_, path)) => Some(load(path)?),
            None => None,
        };
        let snapshots = Snapshots {
            dir: dir.to_path_buf(),
            fsync,
            latest,
            building: None,
            receiving: None,
            retry_at: None,
            building_for_transfer: false,
            built_for_transfer: None,
        };
        Ok((snapshots, kv, warnings))
    }

    pub fn latest_index(&self) -> u64 {
        self.latest.as_ref().map_or(0, |(m, _)| m.index)
    }

    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    /// Starts writing a snapshot of `kv` (through `meta.index`) on a
    /// background thread.
    pub fn start(&mut self, kv: &KvStore, meta: SnapshotMeta) {
        let state = kv.snapshot();
        let (dir, fsync) = (self.dir.clone(), self.fsync);
        self.building = Some(std::thread::spawn(move || {
            let mut writer = SnapshotWriter::create(&dir, &meta, fsync).map_err(Error::File)?;
            let mut failure = None;
            let written = state.write_lines(|line| {
                writer.write_line(line).map_err(|e| {
                    let error = io::Error::other(e.to_string());
                    failure = Some(e);
                    error
                })
            });
            if let Err(e) = written {
                return Err(failure.map_or(Error::Encode(e), Error::File));
            }
            let path = writer.finish().map_err(Error::File)?;
            Ok((meta, path))
        }));
    }

    /// The snapshot being written, once it is durable (None while it is not
    /// finished). Prunes old files.
    pub fn poll_built(&mut self) -> Option<Result<SnapshotMeta, Error>> {
        if !self.building.as_ref().is_some_and(JoinHandle::is_finished) {
            return None;
        }
        let handle = self.building.take()?;
        let result = handle.join().unwrap_or(Err(Error::Panicked));
        let for_transfer = std::mem::take(&mut self.building_for_transfer);
        Some(result.map(|(meta, path)| {
            if for_transfer {
                self.built_for_transfer = Some(meta.index);
            }
            let out = meta.clone();
            self.set_latest(meta, path);
            out
        }))
    }

    fn set_latest(&mut self, meta: SnapshotMeta, path: PathBuf) {
        if meta.index > self.latest_index() {
            self.latest = Some((meta, path));
        }
        // Best effort: an old file left behind is only disk space.
        let _ = snapshot::prune(&self.dir, KEEP_SNAPSHOTS);
    }

    /// A chunk of the latest snapshot from `offset`: (index, term, data, done).
    pub fn chunk(&self, offset: u64) -> Result<(u64, u64, String, bool), Error> {
        let (meta, path) = self.latest.as_ref().ok_or(Error::NoSnapshot)?;
        let (data, done) = snapshot::read_chunk(path, offset, CHUNK_BYTES).map_err(Error::File)?;
        Ok((meta.index, meta.term, data, done))
    }

    /// Takes a chunk from the leader. Chunks must arrive in order; anything
    /// else is answered with the offset wanted, and offset 0 starts over.
    pub fn receive(&mut self, leader: NodeId, m: &InstallSnapshot) -> Result<Received, Error> {
        if m.offset == 0 {
            let receiver = SnapshotReceiver::create(
                &self.dir,
                m.last_included_index,
                m.last_included_term,
                self.fsync,
            )
            .map_err(Error::File)?;
            self.receiving = Some((leader, receiver, Transfer::default()));
        }
        let Some((from, receiver, transfer)) = self.receiving.as_mut() else {
            return Ok(Received::Ack(0));
        };
        if *from != leader
            || receiver.index() != m.last_included_index
            || receiver.received() != m.offset
        {
            let wanted = if *from == leader && receiver.index() == m.last_included_index {
                transfer.out_of_turn += 1;
                receiver.received()
            } else {
                0
            };
            return Ok(Received::Ack(wanted));
        }
        let received = receiver
            .write_chunk(m.offset, &m.data)
            .map_err(Error::File)?;
        transfer.chunks += 1;
        transfer.bytes = received;
        if !m.done {
            return Ok(Received::Ack(received));
        }
        let (_, receiver, transfer) = self.receiving.take().expect("checked above");
        let (meta, path) = receiver.finish().map_err(Error::BadReceived)?;
        let kv = load(&path)?;
        self.set_latest(meta.clone(), path);
        Ok(Received::Complete(meta, Box::new(kv), transfer))
    }
}

fn load(path: &Path) -> Result<KvStore, Error> {
    let (_, lines) = snapshot::open(path).map_err(|error| Error::Open {
        path: path.to_path_buf(),
        error,
    })?;
    KvStore::restore(lines).map_err(|error| Error::Load {
        path: path.to_path_buf(),
        error,
    })
}

impl Node {
    /// Starts a snapshot when enough was applied since the last one, and
    /// compacts the log behind one that became durable.
    pub(super) fn snapshot_housekeeping(&mut self) {
        match self.snapshots.poll_built() {
            None => {}
            Some(Err(e)) => {
                // The older snapshot and the log still hold everything.
                error!(
                    "writing a snapshot failed: {e}; the previous snapshot and the log are \
                     kept, and the next attempt waits {SNAPSHOT_RETRY:?}"
                );
                self.snapshots.retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
            Some(Ok(meta)) => {
                let wanted = meta.index.saturating_sub(self.config.snapshot_keep_tail);
                let compacted = self.raft.compact(wanted).min(meta.index);
                // The disk keeps what its own snapshot does not cover.
                match self.storage.compact(compacted) {
                    Ok(()) => info!(
                        "snapshot through index {} written; log compacted through {compacted}",
                        meta.index
                    ),
                    Err(e) => error!("compacting the log through {compacted} failed: {e}"),
                }
            }
        }
        let applied = self.kv.last_applied();
        if applied >= self.snapshots.latest_index() + self.config.snapshot_entries {
            self.start_snapshot();
        }
    }

    /// Starts writing a snapshot of the applied state in the background,
    /// unless one is being written, the disk is full, or the last attempt
    /// failed a moment ago. Returns whether it started.
    fn start_snapshot(&mut self) -> bool {
        let applied = self.kv.last_applied();
        if self.snapshots.is_building()
            || applied <= self.snapshots.latest_index()
            || self.unpersisted.is_some()
            || self.snapshots.retry_at.is_some_and(|t| Instant::now() < t)
        {
            return false;
        }
        let Some(term) = self.raft.log().term(applied) else {
            return false;
        };
        let started = Instant::now();
        let meta = SnapshotMeta {
            index: applied,
            term,
            membership: Some((*self.raft.membership_at(applied)).clone()),
        };
        self.snapshots.start(&self.kv, meta);
        info!(
            "snapshot through index {applied} started: {} keys, event loop paused {} us",
            self.kv.len(),
            started.elapsed().as_micros()
        );
        true
    }

    /// Whether a transfer about to start should wait for a fresher
    /// snapshot: the latest is more than `snapshot_transfer_max_age`
    /// entries behind the applied state (a follower would replay them all
    /// after installing it), and one is being built for transfers or can be
    /// started now. The core resends the start every few heartbeats, so the
    /// transfer begins soon after the new snapshot is durable. A snapshot
    /// built for a transfer is sent whatever its age by then, and if none
    /// can be built (the disk is full, or writing one failed) the old one
    /// is sent.
    fn wait_for_fresh_snapshot(&mut self, to: NodeId) -> bool {
        if self.snapshots.building_for_transfer {
            return true;
        }
        let latest = self.snapshots.latest_index();
        let age = self.kv.last_applied().saturating_sub(latest);
        if self.snapshots.latest.is_none()
            || age <= self.config.snapshot_transfer_max_age
            || self.snapshots.built_for_transfer == Some(latest)
            || self.snapshots.is_building()
        {
            return false;
        }
        if !self.start_snapshot() {
            return false;
        }
        self.snapshots.building_for_transfer = true;
        info!(
            "node {to} needs a snapshot, and the latest (through index {latest}) is {age} \
             entries old: sending a fresh one once it is written"
        );
        true
    }

    /// Leader: streams the latest snapshot to followers that need it, one
    /// chunk per acknowledgement. Follower: writes chunks from the leader and
    /// installs a completed snapshot.
    pub(super) fn handle_snapshot_outputs(&mut self, rd: &mut Ready) -> Result<(), Fatal> {
        self.send_snapshot_chunks(rd);
        let chunks = std::mem::take(&mut rd.snapshot_chunks);
        if self.unpersisted.is_some() && !chunks.is_empty() {
            // Its acknowledgement could not leave, and installing it would
            // have to reset a log that cannot be written: the leader retries
            // the transfer once it has heard nothing for a while.
            debug!("disk full: ignoring {} snapshot chunks", chunks.len());
            return Ok(());
        }
        for (leader, chunk) in chunks {
            self.receive_snapshot_chunk(leader, &chunk)?;
        }
        Ok(())
    }

    /// Leader: the next chunk to each follower that started a transfer or
    /// acknowledged a chunk.
    fn send_snapshot_chunks(&mut self, rd: &mut Ready) {
        let starts = std::mem::take(&mut rd.snapshots_to_send)
            .into_iter()
            .map(|to| (to, None, 0));
        let acks = std::mem::take(&mut rd.snapshot_acks)
            .into_iter()
            .map(|a| (a.to, Some(a.index), a.next_offset));
        for (to, index, offset) in starts.chain(acks) {
            if index.is_none() && self.wait_for_fresh_snapshot(to) {
                continue;
            }
            let latest = self.snapshots.latest_index();
            // An acknowledgement for an older snapshot starts the newest over.
            let offset = if index.is_some_and(|i| i != latest) {
                0
            } else {
                offset
            };
            match self.snapshots.chunk(offset) {
                Ok((index, term, data, done)) => {
                    if offset == 0 {
                        info!("sending snapshot through index {index} to node {to}");
                    }
                    self.raft
                        .send_snapshot_chunk(to, index, term, offset, data, done);
                }
                Err(e) => warn!("cannot send a snapshot to node {to}: {e}"),
            }
        }
    }

    /// Follower: writes a chunk from `leader`, acknowledges it, and installs
    /// the snapshot it completes.
    fn receive_snapshot_chunk(
        &mut self,
        leader: NodeId,
        chunk: &InstallSnapshot,
    ) -> Result<(), Fatal> {
        let index = chunk.last_included_index;
        match self.snapshots.receive(leader, chunk) {
            Ok(Received::Ack(next_offset)) => {
                self.raft
                    .snapshot_chunk_received(leader, index, next_offset);
                Ok(())
            }
            Ok(Received::Complete(meta, kv, transfer)) => {
                self.install_snapshot(leader, &meta, *kv, transfer)
            }
            Err(e) => {
                // Not acknowledged: answering at once with offset 0 would
                // have the leader resend at once, in a loop on a full
                // disk. It starts over once its transfer stalls.
                warn!("snapshot chunk from node {leader} for index {index} refused: {e}");
                Ok(())
            }
        }
    }

    /// The snapshot file is durable; makes the log agree with it before the
    /// acknowledgement leaves (next ready), and loads its state.
    fn install_snapshot(
        &mut self,
        leader: NodeId,
        meta: &SnapshotMeta,
        kv: KvStore,
        transfer: Transfer,
    ) -> Result<(), Fatal> {
        let membership = match &meta.membership {
            Some(m) => m.clone(),
            // A snapshot from a node that records no configuration: the
            // one this node has stands.
            None => self.raft.membership().clone(),
        };
        let result = match self
            .raft
            .restore_snapshot(leader, meta.index, meta.term, membership)
        {
            Restored::Stale => {
                // Loading it would take the state machine back to an index
                // it has already passed.
                info!(
                    "received snapshot through index {}, which this node \
                     has already committed; keeping its state",
                    meta.index
                );
                return Ok(());
            }
            Restored::DiscardedLog => self.storage.reset(meta.index + 1),
            Restored::KeptLog => self.storage.compact(meta.index),
        };
        result.map_err(|error| Fatal::SnapshotReset {
            index: meta.index,
            error,
        })?;
        self.kv = kv;
        self.kv
            .set_history_limits(self.config.history_events, self.config.history_bytes);
        self.watches_after_restore();
        info!(
            "installed snapshot through index {} from node {leader} \
             ({} bytes in {} chunks, {} out of turn)",
            meta.index, transfer.bytes, transfer.chunks, transfer.out_of_turn
        );
        Ok(())
    }
}
