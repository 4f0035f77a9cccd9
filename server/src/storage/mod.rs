//! The durable state of one node in its data directory: a write-ahead log of
//! Raft entries split into segment files, and the hard state (term, vote).
//!
//! - `record`: a record's format and checksum, and the rule by which
//!   recovery tells a torn write from corruption.
//! - `segment`: segment files (`wal-<first index>.log`): appending,
//!   rotation, preallocation, truncation, deleting whole segments.
//! - `replay`: reading the segments back on open.
//! - `hard_state`: the `hardstate` file.
//! - `faults`: fault injection for the write path's tests.
//!
//! This file keeps [`Storage`] and the API the node uses. Every file
//! operation that must survive a power loss goes through `crate::durable`.
//!
//! # Compaction and reset
//! Once a snapshot covers a prefix of the log, `compact` deletes the segments
//! that hold nothing else, oldest first, so the log on disk is always a
//! contiguous suffix of what it was. A follower that installs a snapshot its
//! log does not match calls `reset`, which deletes every segment (newest
//! first, so what is left is always a prefix) and only then creates the empty
//! segment the next append goes to. Every deletion is made durable before the
//! next one: the directory is fsynced in between, since POSIX does not promise
//! that unlinks reach the disk in order, and an out-of-order survivor would
//! look like a gap, which recovery must treat as corruption.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use poncho_protocol::Entry;

use crate::datadir;
use crate::durable::{self, io_err, Failure, PathError};
use crate::raft::HardState;

use faults::Faults;
use hard_state::{check_hard_state, read_hard_state, HARD_STATE_FILE, HARD_STATE_TMP};
use record::{PAYLOAD_MAX, PAYLOAD_MIN};
use replay::Replay;
use segment::{open_write, segment_path, End, Segment};

mod faults;
mod hard_state;
mod record;
mod replay;
mod segment;

#[derive(Clone, Copy, Debug)]
pub struct StorageOptions {
    /// Rotate to a new segment once the current one reaches this size.
    pub segment_bytes: u64,
    /// Only tests and benchmarks turn this off: without it nothing is durable.
    pub fsync: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_bytes: 64 << 20,
            fsync: true,
        }
    }
}

/// What `Storage::open` found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// `None` if there is no `hardstate` file: a node that never saved a term,
    /// which `open` only accepts beside an empty log that starts at 1. The
    /// caller must still refuse `None` beside a snapshot, which this module
    /// does not read.
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// The index of `entries[0]`, or the index the next append must start at
    /// if the log is empty (1 for a new log, `n` after `reset(n)`). Entries at
    /// or below the caller's snapshot may be among `entries`: compaction only
    /// deletes whole segments.
    pub first_index: u64,
    /// Repairs made while opening (torn tails cut), for the caller to log.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub enum StorageError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A file that is missing or disagrees with the rest of the directory.
    Inconsistent {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StorageError::Corrupt {
                path,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "{} is corrupt at byte offset {offset}: {reason}",
                    path.display()
                )
            }
            StorageError::Inconsistent { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
        }
    }
}

impl StorageError {
    /// Whether the file system ran out of space (or quota): the one failure
    /// that is waited out, not fatal. See [`Health::NoSpace`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ))
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            StorageError::Corrupt { .. } | StorageError::Inconsistent { .. } => None,
        }
    }
}

impl PathError for StorageError {
    fn io(path: PathBuf, source: io::Error) -> Self {
        StorageError::Io { path, source }
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

pub struct Storage {
    dir: PathBuf,
    options: StorageOptions,
    /// Never empty; the last one is open in `active` and receives appends.
    segments: Vec<Segment>,
    active: File,
    /// `(first index, term)` of each run of equal terms, to know the term an
    /// append must not go below after a truncation without keeping every term.
    terms: Vec<(u64, u64)>,
    buf: Vec<u8>,
    /// Bytes written to `active` since its last fsync.
    dirty: bool,
    /// Whether writes may go on; see [`Health`].
    health: Health,
    faults: Faults,
}

/// Whether a storage takes writes. Any failed step of the write path stops
/// it: it never writes at a position it is not sure of, and never goes on
/// past a failed fsync as if the data were durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// A write found the file system full (ENOSPC or EDQUOT). No fsync
    /// failed, so every record written whole is still what the file holds;
    /// [`Storage::recover`] puts the files back in step with this storage
    /// once space is freed, and the failed write can then be retried.
    NoSpace,
    /// Anything else failed (an fsync, an I/O error): after a failed fsync
    /// the kernel may have dropped the dirty pages and a later fsync can
    /// report success over data that never reached the disk (PostgreSQL's
    /// "fsyncgate"), so this process writes nothing more. Only a restart,
    /// whose recovery reads what the disk really holds, may go on.
    Failed,
}

impl Storage {
    pub fn open(dir: &Path, options: StorageOptions) -> Result<(Storage, Recovered), StorageError> {
        datadir::create_dir_durable(dir, options.fsync).map_err(io_err(dir))?;
        let hard_state_path = dir.join(HARD_STATE_FILE);
        let hard_state = read_hard_state(&hard_state_path)?;
        let firsts = segment::list(dir)?;
        let (mut segments, replay) = Replay::run(dir, &firsts, options.fsync)?;
        let first_index = replay.first;
        check_hard_state(&hard_state_path, hard_state, first_index, &replay)?;
        let active = match segments.last() {
            Some(last) => open_write(&last.path)?,
            None => {
                let path = segment_path(dir, 1);
                let file =
                    durable::create_new(&path, options.fsync, &()).map_err(Failure::into_err)?;
                segments.push(Segment::empty(1, path));
                file
            }
        };
        let storage = Storage {
            dir: dir.to_path_buf(),
            options,
            segments,
            active,
            terms: replay.terms,
            buf: Vec::new(),
            dirty: false,
            health: Health::Healthy,
            faults: Faults::default(),
        };
        let recovered = Recovered {
            hard_state,
            entries: replay.entries,
            first_index,
            warnings: replay.warnings,
        };
        Ok((storage, recovered))
    }

    /// Appends `entries`, replacing any stored entries at and after the
    /// first one's index. Not durable until [`Storage::sync`].
    ///
    /// If any step fails the storage stops taking writes (see [`Health`]):
    /// memory keeps the log as it was before the failed step, and whatever
    /// that step left in the files past it is cut by [`Storage::recover`]
    /// or, after a restart, by recovery.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.check_healthy()?;
        let last = self.last_index();
        // Below the first index would mean rewriting entries a snapshot
        // already covers (and writing them into a segment named after a later
        // index); above `last + 1` is a gap. Both are caller bugs.
        let lowest = self.first_index();
        if first.index < lowest || first.index > last + 1 {
            return Err(self.invalid(format!(
                "append at index {} but the log holds {lowest}..={last}",
                first.index
            )));
        }
        // Everything replay would reject is refused here, before touching disk.
        let mut prev_term = self.term_at(first.index - 1);
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(self.invalid(format!("entry {} breaks the batch's index run", e.index)));
            }
            if e.term < prev_term {
                return Err(self.invalid(format!(
                    "entry {} has term {} < {prev_term}",
                    e.index, e.term
                )));
            }
            if e.data.len() > PAYLOAD_MAX - PAYLOAD_MIN {
                return Err(self.invalid(format!("entry {} is too large", e.index)));
            }
            prev_term = e.term;
        }
        let result = self.append_checked(first.index <= last, entries);
        self.guard(result)
    }

    /// Makes every append so far durable (one fdatasync). A failure here is
    /// final for this process ([`Health::Failed`]).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_healthy()?;
        if !self.dirty {
            return Ok(());
        }
        let result = self.sync_active();
        self.guard(result)
    }

    /// Replaces the hard state durably: a temporary file, fsynced, renamed
    /// over the old one, and the directory fsynced. Until the rename the old
    /// hard state stands, so a failure leaves it in force; the temporary
    /// file is removed again, since on a full disk its space is wanted back.
    pub fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.check_healthy()?;
        let result = self.write_hard_state(hs);
        if result.is_err() {
            // Best effort: a leftover is overwritten by the next attempt.
            let _ = fs::remove_file(self.dir.join(HARD_STATE_TMP));
        }
        self.guard(result)
    }

    /// Whether this storage takes writes.
    pub fn health(&self) -> Health {
        self.health
    }

    /// After [`Health::NoSpace`]: cuts whatever the failed write left past
    /// the last whole record of the active segment (and preallocated zeros),
    /// durably, and removes a half-written hard state file, so the files
    /// hold exactly what this storage believes and appends may resume (the
    /// caller then retries what failed). Records written whole before the
    /// failure stay: no fsync failed, so the next one covers them. While the
    /// disk is still full this fails and the storage keeps refusing writes.
    /// After [`Health::Failed`] it refuses: only a restart may go on.
    pub fn recover(&mut self) -> Result<(), StorageError> {
        match self.health {
            Health::Healthy => return Ok(()),
            Health::Failed => return self.check_healthy(),
            Health::NoSpace => {}
        }
        // Best effort: only space, and the next hard state write replaces it.
        let _ = fs::remove_file(self.dir.join(HARD_STATE_TMP));
        match self.recover_tail() {
            Ok(()) => {
                self.health = Health::Healthy;
                Ok(())
            }
            Err(e) => {
                if !e.is_no_space() {
                    self.health = Health::Failed;
                }
                Err(e)
            }
        }
    }

    /// The index of the oldest entry on disk, or of the next append if the
    /// log is empty. Entries a snapshot covers may still be at and after it.
    pub fn first_index(&self) -> u64 {
        self.segments.first().map_or(1, |s| s.first_index)
    }

    /// The index of the newest entry, or `first_index() - 1` if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.first_index + s.offsets.len() as u64 - 1)
    }

    /// Deletes every segment whose entries are all at or below `up_to`, i.e.
    /// covered by a snapshot. Entries at or below `up_to` that share a segment
    /// with later ones stay; the caller skips them on recovery. The segment
    /// being appended to is never deleted, so the log keeps a home for the
    /// next append and `last_index` stays put.
    ///
    /// Oldest first, each deletion durable before the next: a crash part-way
    /// leaves a contiguous suffix of the log, which `open` accepts.
    ///
    /// Allowed while the disk is full ([`Health::NoSpace`]): it only deletes
    /// files, and leaves the active segment, which `recover` fixes, alone.
    pub fn compact(&mut self, up_to: u64) -> Result<(), StorageError> {
        if self.health == Health::Failed {
            return self.check_healthy();
        }
        // Segment `i` ends where segment `i + 1` begins, so it is wholly
        // covered when the next one starts at or before `up_to + 1`.
        let covered = self
            .segments
            .windows(2)
            .take_while(|w| w[1].first_index <= up_to.saturating_add(1))
            .count();
        // On an error the segments not yet deleted stay listed: memory still
        // matches disk, and a later compact can retry them.
        let result = self.delete_segments(covered, End::Oldest);
        let new_first = self.first_index();
        // Keep the run that covers `new_first` and every later one, so
        // `term_at` stays right for every index still in the log.
        let runs_before = self
            .terms
            .partition_point(|&(start, _)| start <= new_first)
            .saturating_sub(1);
        self.terms.drain(..runs_before);
        result
    }

    /// Discards the whole log, durably, so that the next append must start at
    /// `next_index`: for a follower that installed a snapshot through
    /// `next_index - 1` which its log does not match.
    ///
    /// Crash safety: segments are deleted newest first, each deletion durable
    /// before the next, and the new empty segment `wal-<next_index>.log` is
    /// created only after all of them are gone. So a crash part-way leaves a
    /// *prefix* of the old log, or nothing (and `open` then starts a new log
    /// at 1). Either way the entry at the snapshot's index, if it survived,
    /// still shows the mismatch (or the log stops short of the snapshot), so
    /// the caller's recovery sees the log does not continue the snapshot and
    /// resets again. Deleting oldest first could instead leave old entries
    /// after the snapshot's index with the entry at that index gone, looking
    /// like a continuation of the snapshot. And the new segment is never
    /// beside old ones, so it can never be followed by old data.
    ///
    /// After a failure part-way the storage refuses further writes for good
    /// ([`Health::Failed`]: memory no longer matches disk); restarting
    /// recovers whatever the crash rules allow.
    pub fn reset(&mut self, next_index: u64) -> Result<(), StorageError> {
        self.check_healthy()?;
        if next_index == 0 {
            return Err(self.invalid("reset to index 0: the log starts at 1".to_string()));
        }
        if let Err(e) = self.reset_inner(next_index) {
            self.health = Health::Failed;
            return Err(e);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hard_state_path(&self) -> PathBuf {
        self.dir.join(HARD_STATE_FILE)
    }

    fn term_at(&self, index: u64) -> u64 {
        match self.terms.partition_point(|&(start, _)| start <= index) {
            0 => 0,
            n => self.terms[n - 1].1,
        }
    }

    fn active_path(&self) -> &Path {
        self.segments.last().map_or(&self.dir, |s| &s.path)
    }

    fn invalid(&self, msg: String) -> StorageError {
        io_err(self.active_path())(io::Error::new(io::ErrorKind::InvalidInput, msg))
    }

    fn check_healthy(&self) -> Result<(), StorageError> {
        let source = match self.health {
            Health::Healthy => return Ok(()),
            Health::NoSpace => io::Error::new(
                io::ErrorKind::StorageFull,
                "an earlier write found no space left on the device; \
                 nothing more is written until recover() succeeds",
            ),
            Health::Failed => io::Error::other(
                "an earlier write or fsync failed, so what the files hold is unknown \
                 to this process; nothing more is written (restart to recover from disk)",
            ),
        };
        Err(io_err(self.active_path())(source))
    }

    /// Stops the storage after a failed step: for lack of space until
    /// `recover`, for anything else for good. A failed fsync has already set
    /// [`Health::Failed`], whatever its error.
    fn guard<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &result {
            if self.health == Health::Healthy {
                self.health = if e.is_no_space() {
                    Health::NoSpace
                } else {
                    Health::Failed
                };
            }
        }
        result
    }

    /// The error of a failed durable file operation; a failed fsync is
    /// final ([`Health::Failed`]).
    fn step_failed(&mut self, failure: Failure) -> StorageError {
        if failure.is_sync() {
            self.health = Health::Failed;
        }
        failure.into_err()
    }
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests;
