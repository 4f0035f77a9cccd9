//! The durable state of one node in its data directory: a write-ahead log of
//! Raft entries split into segment files, and the hard state (term, vote).
//!
//! # On-disk format
//! - `wal-<first index, 20 digits>.log`: segments, so a name sort is an index
//!   sort. A segment holds consecutive records; the log starts at the first
//!   segment's index (1 for a log that was never compacted or reset) and
//!   continues without gaps from one segment to the next.
//! - record = `len: u32 LE | crc: u32 LE | payload`, where `crc` is CRC-32 of
//!   the four `len` bytes followed by the payload, so a damaged length is
//!   caught whenever the record still fits in the file.
//! - payload = `index: u64 LE | term: u64 LE | kind: u8 | data (UTF-8, the
//!   rest of the payload)`. `kind` is 0 for a command, 1 for a no-op, plus
//!   `BATCH_START` (0x80) on the first record written to a segment after it
//!   was last fsynced (the first of each batch, and the first of a segment):
//!   recovery uses it to tell a batch that never finished syncing from one
//!   that did.
//! - `hardstate` = `"PHS1" | term: u64 LE | has_vote: u8 | vote: u64 LE |
//!   crc: u32 LE` (CRC of the 21 bytes before it), replaced by rename.
//!
//! # Preallocation
//! The segment being appended to is extended with zeros ahead of its records
//! (up to `segment_bytes`, in steps of `PREALLOC_STEP`), and records are
//! written over those zeros. Then an fdatasync only has to write the data:
//! the file's size and block map do not change with every append, which on
//! ext4 halves the cost of a sync when several nodes share a disk. A segment
//! is trimmed to its records before the next one is created. Recovery reads an
//! all-zero tail as the end of a segment's records (never written, or written
//! but not synced: the same thing); if that lost records, the next segment
//! does not continue the log and recovery reports the gap.
//!
//! # Recovery: torn batches
//! A crash mid-write can only damage the end of the last segment, because a
//! segment is fsynced before the next one gets its first byte and truncation
//! is made durable before new records land on top of it. Within the last
//! segment, the bytes since its last fsync are one or more writes (one per
//! batch; the driver syncs every batch) over zeros: preallocated, cut off,
//! or past the end of the file. A power loss before their fdatasync finished
//! can leave any subset of their 512-byte sectors on disk, in any order, and
//! a sector that did not make it reads as zeros (a sector itself is written
//! whole or not at all, as disks promise; one torn inside may be reported). Everything written after a
//! lost sector is unsynced too (records go at increasing offsets, and any
//! fsync since would have covered the lost sector), so none of it was
//! acknowledged. Recovery cannot know where the last fsync ended, so the
//! first bad record of the last segment is judged by what it shows:
//!
//! 1. Nothing after it parses as a record that could continue the log: it is
//!    torn (a write cut short, or garbage where the write never finished),
//!    and it is cut off with everything after it.
//! 2. A valid record follows it: it is torn, and cut off with everything
//!    after it, only if (a) it shows a lost sector: some 512-byte-aligned
//!    piece of it (of its length, if that is plausible and ends before the
//!    next valid record, else of its header and smallest payload) is all
//!    zeros, and (b) no valid record after it carries `BATCH_START`, which
//!    would prove an fsync finished after it was written.
//!
//! Anything else is reported as corruption rather than risk dropping
//! acknowledged entries: a bad record in an earlier segment, a bit flip (no
//! zero sector) with valid records after it, and damage of any kind followed
//! by a later batch. What cannot be told apart from a torn write is damage
//! that looks exactly like one, in the newest batch of the last segment: it
//! is cut, with a warning naming the file and offset.
//!
//! The hard state is saved (durably) before any entry of its term is
//! appended, so `open` refuses a log with entries, or one that starts past
//! index 1, without a `hardstate` file, and a hard state whose term is below
//! the log's last term: either means the file was lost or replaced, and
//! starting would forget a vote.
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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use poncho_protocol::{Entry, EntryKind};

use crate::datadir;
use crate::durable::{self, io_err, Failure, Op, PathError};
use crate::raft::HardState;

const HEADER: usize = 8;
const PAYLOAD_MIN: usize = 17;
const PAYLOAD_MAX: usize = 64 << 20;
const HARD_STATE_FILE: &str = "hardstate";
const HARD_STATE_TMP: &str = "hardstate.tmp";
const HARD_STATE_MAGIC: &[u8; 4] = b"PHS1";
const HARD_STATE_LEN: usize = 25;
/// `kind` flag of the first record written to a segment after its last fsync.
const BATCH_START: u8 = 0x80;
/// The unit a power loss keeps or loses whole: a disk sector.
const SECTOR: usize = 512;
/// How far ahead of its records the active segment is zero-filled at a time.
const PREALLOC_STEP: u64 = 1 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

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

struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Byte offset of each record: entry `first_index + i` starts at `offsets[i]`.
    offsets: Vec<u64>,
    /// The end of the last record: where the next one is written.
    len: u64,
    /// The file's size: `len` plus zeros written ahead of the records.
    allocated: u64,
}

impl Segment {
    fn empty(first_index: u64, path: PathBuf) -> Segment {
        Segment {
            first_index,
            path,
            offsets: Vec::new(),
            len: 0,
            allocated: 0,
        }
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

/// The steps of the write path, each of which a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Prealloc,
    Write,
    SetLen,
    Sync,
    CreateSegment,
    HardState,
    Rename,
}

/// Fault injection for the write path's tests; does nothing in other builds.
#[derive(Default)]
struct Faults {
    /// (step, runs of it to let pass, errno): that run fails, once.
    #[cfg(test)]
    next: std::cell::Cell<Option<(Step, u32, i32)>>,
}

impl Faults {
    #[inline(always)]
    fn check(&self, step: Step) -> io::Result<()> {
        #[cfg(test)]
        if let Some((s, skip, errno)) = self.next.get() {
            if s == step {
                if skip > 0 {
                    self.next.set(Some((s, skip - 1, errno)));
                } else {
                    self.next.set(None);
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
        }
        let _ = step;
        Ok(())
    }
}

impl durable::Hook for Faults {
    #[inline(always)]
    fn before(&self, op: Op) -> io::Result<()> {
        match op {
            Op::Create => self.check(Step::CreateSegment),
            Op::Remove => Ok(()),
            Op::Rename => self.check(Step::Rename),
            Op::SyncFile | Op::SyncDir => self.check(Step::Sync),
        }
    }
}

/// Which end of the log [`Storage::delete_segments`] deletes from.
#[derive(Clone, Copy)]
enum End {
    Oldest,
    Newest,
}

impl Storage {
    pub fn open(dir: &Path, options: StorageOptions) -> Result<(Storage, Recovered), StorageError> {
        datadir::create_dir_durable(dir, options.fsync).map_err(io_err(dir))?;
        let hard_state_path = dir.join(HARD_STATE_FILE);
        let hard_state = read_hard_state(&hard_state_path)?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let name = item.map_err(io_err(dir))?.file_name();
            let digits = name
                .to_str()
                .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log"));
            if let Some(first) = digits
                .filter(|d| d.len() == 20)
                .and_then(|d| d.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        // The log may start anywhere (compaction deletes its oldest segments,
        // `reset` restarts it at a snapshot's end); only the segments after
        // the first must continue it without a gap, which `Replay` checks.
        let first_index = firsts.first().copied().unwrap_or(1);
        if first_index == 0 {
            let path = segment_path(dir, 0);
            return Err(corrupt(&path, 0, "segment index 0: the log starts at 1"));
        }
        let mut replay = Replay::new(first_index);
        let mut segments = Vec::with_capacity(firsts.len().max(1));
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let is_last = i + 1 == firsts.len();
            segments.push(replay.segment(path, first, is_last, options.fsync)?);
        }
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

    fn append_checked(&mut self, overlaps: bool, entries: &[Entry]) -> Result<(), StorageError> {
        if let (true, Some(first)) = (overlaps, entries.first()) {
            self.truncate(first.index)?;
        }
        let mut start = 0;
        let mut projected = self.segments.last().map_or(0, |s| s.len);
        for (i, e) in entries.iter().enumerate() {
            if projected > 0 && projected >= self.options.segment_bytes {
                self.write_chunk(&entries[start..i])?;
                self.rotate(e.index)?;
                start = i;
                projected = 0;
            }
            projected += (HEADER + PAYLOAD_MIN + e.data.len()) as u64;
        }
        self.write_chunk(&entries[start..])
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

    fn write_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let mut b = Vec::with_capacity(HARD_STATE_LEN);
        b.extend_from_slice(HARD_STATE_MAGIC);
        b.extend_from_slice(&hs.term.to_le_bytes());
        b.push(u8::from(hs.vote.is_some()));
        b.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
        let tmp = self.dir.join(HARD_STATE_TMP);
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        self.faults
            .check(Step::HardState)
            .and_then(|()| file.write_all(&b))
            .map_err(io_err(&tmp))?;
        let real = self.dir.join(HARD_STATE_FILE);
        durable::replace(file, &tmp, &real, self.options.fsync, &self.faults)
            .map_err(|f| self.step_failed(f))
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

    fn recover_tail(&mut self) -> Result<(), StorageError> {
        // Best effort: only space, and the next hard state write replaces it.
        let _ = fs::remove_file(self.dir.join(HARD_STATE_TMP));
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        // Reopened, in case a failed truncation left `active` on a segment
        // it had already deleted.
        let file = open_write(&seg.path)?;
        self.faults
            .check(Step::SetLen)
            .and_then(|()| file.set_len(seg.len))
            .map_err(io_err(&seg.path))?;
        seg.allocated = seg.len;
        self.active = file;
        // Durable before new records land where the cut bytes were.
        if self.options.fsync {
            self.fsync_active(true)?;
        }
        self.dirty = false;
        Ok(())
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

    fn reset_inner(&mut self, next_index: u64) -> Result<(), StorageError> {
        self.delete_segments(self.segments.len(), End::Newest)?;
        // Whatever was written but not synced went with the files.
        self.dirty = false;
        self.terms.clear();
        let path = segment_path(&self.dir, next_index);
        // Durably: without the empty segment recovery would start a new log
        // at index 1.
        self.active = durable::create_new(&path, self.options.fsync, &self.faults)
            .map_err(|f| self.step_failed(f))?;
        self.segments.push(Segment::empty(next_index, path));
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

    fn sync_active(&mut self) -> Result<(), StorageError> {
        if self.options.fsync {
            self.fsync_active(false)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// fdatasync (`all`: fsync) of the active segment; a failure is final.
    fn fsync_active(&mut self, all: bool) -> Result<(), StorageError> {
        let result = self.faults.check(Step::Sync).and_then(|()| {
            if all {
                self.active.sync_all()
            } else {
                self.active.sync_data()
            }
        });
        result.map_err(|source| {
            self.health = Health::Failed;
            io_err(self.active_path())(source)
        })
    }

    /// The error of a failed durable file operation; a failed fsync is
    /// final ([`Health::Failed`]).
    fn step_failed(&mut self, failure: Failure) -> StorageError {
        if failure.is_sync() {
            self.health = Health::Failed;
        }
        failure.into_err()
    }

    /// Deletes `count` segments from one end of the log, each deletion
    /// durable before the next (the directory is fsynced in between: POSIX
    /// does not order unlinks, and an out-of-order survivor would look like
    /// a gap). So a crash part-way leaves a contiguous part of the log.
    /// A segment leaves the list once its file is gone, even if the
    /// directory sync after it fails; the error still reaches the caller.
    fn delete_segments(&mut self, count: usize, from: End) -> Result<(), StorageError> {
        for _ in 0..count {
            let i = match from {
                End::Oldest => 0,
                End::Newest => self.segments.len().saturating_sub(1),
            };
            let Some(seg) = self.segments.get(i) else {
                break;
            };
            let result = durable::remove(&seg.path, self.options.fsync, &self.faults);
            if !matches!(&result, Err(f) if f.op == Op::Remove) {
                // A few segments at a time: the shift of `remove(0)` is noise.
                self.segments.remove(i);
            }
            result.map_err(|f| self.step_failed(f))?;
        }
        Ok(())
    }

    /// Removes `from` and everything after it. Each step is made durable
    /// before the next, so a crash part-way leaves a shorter but gapless log,
    /// and no stale record can reappear under the records appended next.
    /// Memory drops the entries before the file is cut, so after a failure
    /// part-way `recover` finishes the cut.
    fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        let keep_segments = self
            .segments
            .partition_point(|s| s.first_index <= from)
            .max(1);
        let reopen = self.segments.len() > keep_segments;
        self.delete_segments(
            self.segments.len().saturating_sub(keep_segments),
            End::Newest,
        )?;
        while self.terms.last().is_some_and(|&(start, _)| start >= from) {
            self.terms.pop();
        }
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        if reopen {
            self.active = open_write(&seg.path)?;
        }
        let keep = from.saturating_sub(seg.first_index) as usize;
        let Some(&cut_at) = seg.offsets.get(keep) else {
            return Ok(());
        };
        seg.offsets.truncate(keep);
        seg.len = cut_at;
        self.faults
            .check(Step::SetLen)
            .and_then(|()| self.active.set_len(cut_at))
            .map_err(io_err(&seg.path))?;
        seg.allocated = cut_at;
        if self.options.fsync {
            self.fsync_active(true)?;
        }
        Ok(())
    }

    /// The old segment is made durable before the new one gets a byte, which
    /// is what lets recovery treat damage outside the last segment as
    /// corruption. `active` moves to the new file only once it is listed, so
    /// a failure part-way can never leave records going to one file at the
    /// offsets of another.
    fn rotate(&mut self, first_index: u64) -> Result<(), StorageError> {
        // Only the last segment may end in preallocated zeros.
        if let Some(seg) = self.segments.last_mut() {
            if seg.allocated > seg.len {
                self.faults
                    .check(Step::SetLen)
                    .and_then(|()| self.active.set_len(seg.len))
                    .map_err(io_err(&seg.path))?;
                seg.allocated = seg.len;
                if self.options.fsync {
                    self.fsync_active(true)?;
                }
                self.dirty = false;
            }
        }
        if self.dirty {
            self.sync_active()?;
        }
        let path = segment_path(&self.dir, first_index);
        let file = durable::create_new(&path, self.options.fsync, &self.faults)
            .map_err(|f| self.step_failed(f))?;
        self.active = file;
        self.segments.push(Segment::empty(first_index, path));
        Ok(())
    }

    fn write_chunk(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        if entries.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        // Nothing unsynced in the file yet: this write starts a batch.
        let mut batch_start = !self.dirty;
        for e in entries {
            seg.offsets.push(seg.len + self.buf.len() as u64);
            encode_record(&mut self.buf, e, batch_start);
            batch_start = false;
        }
        let end = seg.len + self.buf.len() as u64;
        if end > seg.allocated {
            let target = end.max(
                seg.allocated
                    .saturating_add(PREALLOC_STEP)
                    .min(self.options.segment_bytes),
            );
            // Best effort: if the zeros do not fit (a full disk), the records
            // may still, and the file simply grows with them. The zeros that
            // did fit are cut again, so the records get their space.
            let zeroed = self
                .faults
                .check(Step::Prealloc)
                .and_then(|()| write_zeros(&self.active, end, target));
            if zeroed.is_ok() {
                seg.allocated = target;
            } else if let Err(source) = self.active.set_len(seg.allocated) {
                seg.offsets.truncate(seg.offsets.len() - entries.len());
                return Err(io_err(&seg.path)(source));
            }
        }
        let written = self
            .faults
            .check(Step::Write)
            .and_then(|()| self.active.write_all_at(&self.buf, seg.len));
        if let Err(source) = written {
            // Part of the chunk may be in the file past `len`: memory keeps
            // the old end, and `recover` (or, after a restart, recovery of a
            // torn tail) cuts the rest.
            seg.offsets.truncate(seg.offsets.len() - entries.len());
            return Err(io_err(&seg.path)(source));
        }
        seg.len += self.buf.len() as u64;
        seg.allocated = seg.allocated.max(seg.len);
        self.dirty = true;
        for e in entries {
            if self.terms.last().map(|t| t.1) != Some(e.term) {
                self.terms.push((e.index, e.term));
            }
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("wal-{first_index:020}.log"))
}

fn open_write(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, mut from: u64, to: u64) -> io::Result<()> {
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn encode_record(buf: &mut Vec<u8>, e: &Entry, batch_start: bool) {
    let len = ((PAYLOAD_MIN + e.data.len()) as u32).to_le_bytes();
    let kind = match e.kind {
        EntryKind::Command => 0u8,
        EntryKind::Noop => 1,
    } | if batch_start { BATCH_START } else { 0 };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&e.index.to_le_bytes());
    crc.update(&e.term.to_le_bytes());
    crc.update(&[kind]);
    crc.update(e.data.as_bytes());
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&e.index.to_le_bytes());
    buf.extend_from_slice(&e.term.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(e.data.as_bytes());
}

struct Record<'a> {
    index: u64,
    term: u64,
    /// The entry kind, without `BATCH_START`.
    kind: u8,
    batch_start: bool,
    data: &'a [u8],
    end: usize,
}

/// Frames and checksums the record at `off`. An error is damage a crash can
/// leave behind; a record that passes its CRC but says nonsense cannot be.
fn parse_record(b: &[u8], off: usize) -> Result<Record<'_>, &'static str> {
    if b.len() - off < HEADER {
        return Err("short record header");
    }
    let len = le_u32(b, off) as usize;
    if !(PAYLOAD_MIN..=PAYLOAD_MAX).contains(&len) {
        return Err("implausible record length");
    }
    let end = off + HEADER + len;
    if end > b.len() {
        return Err("record extends past the end of the file");
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[off..off + 4]);
    crc.update(&b[off + HEADER..end]);
    if crc.finalize() != le_u32(b, off + 4) {
        return Err("checksum mismatch");
    }
    let p = off + HEADER;
    Ok(Record {
        index: le_u64(b, p),
        term: le_u64(b, p + 8),
        kind: b[p + 16] & !BATCH_START,
        batch_start: b[p + 16] & BATCH_START != 0,
        data: &b[p + PAYLOAD_MIN..end],
        end,
    })
}

/// The first offset after `from` where a record that could continue the log
/// starts and passes `also`. The index is checked before the CRC so that
/// scanning a large garbage tail stays linear.
fn find_plausible_record(
    b: &[u8],
    from: usize,
    next_index: u64,
    min_term: u64,
    also: impl Fn(&Record<'_>) -> bool,
) -> Option<usize> {
    let max_index = next_index + (b.len() / (HEADER + PAYLOAD_MIN)) as u64;
    let last_start = b.len().checked_sub(HEADER + PAYLOAD_MIN)?;
    (from..=last_start).find(|&p| {
        let len = le_u32(b, p) as usize;
        (PAYLOAD_MIN..=PAYLOAD_MAX).contains(&len)
            && p + HEADER + len <= b.len()
            && (next_index..=max_index).contains(&le_u64(b, p + HEADER))
            && parse_record(b, p).is_ok_and(|r| r.term >= min_term && r.kind <= 1 && also(&r))
    })
}

/// Why the bad record at `at`, the first of the last segment, cannot be a
/// torn write (the rule is in the module documentation), or `None` if it can
/// be and must be cut with everything after it.
fn synced_damage(b: &[u8], at: usize, next_index: u64, min_term: u64) -> Option<String> {
    // 1. Nothing that could continue the log follows.
    let next = find_plausible_record(b, at + 1, next_index, min_term, |_| true)?;
    // 2(b). A batch written after an fsync follows: this was synced.
    if let Some(p) = find_plausible_record(b, next, next_index, min_term, |r| r.batch_start) {
        return Some(format!(
            "a valid record follows at offset {next}, and the one at offset {p} starts a \
             batch written after an fsync that covered this one"
        ));
    }
    // 2(a). A lost sector reads as zeros, and zeroing can only shorten the
    // length field, so a torn record's extent ends by the next valid record.
    let len = (b.len() - at >= 4)
        .then(|| le_u32(b, at) as usize)
        .filter(|len| (PAYLOAD_MIN..=PAYLOAD_MAX).contains(len))
        .unwrap_or(PAYLOAD_MIN);
    let end = at + HEADER + len;
    let lost_sector = end <= next && {
        let mut from = at;
        let mut zero_piece = false;
        while from < end && !zero_piece {
            let to = ((from / SECTOR + 1) * SECTOR).min(end);
            zero_piece = b[from..to].iter().all(|&x| x == 0);
            from = to;
        }
        zero_piece
    };
    if lost_sector {
        return None;
    }
    Some(format!(
        "a valid record follows at offset {next}, and no 512-byte sector of this one \
         reads as zeros, as one that never reached the disk would"
    ))
}

struct Replay {
    /// The first segment's index, where the log starts.
    first: u64,
    entries: Vec<Entry>,
    terms: Vec<(u64, u64)>,
    warnings: Vec<String>,
}

impl Replay {
    fn new(first: u64) -> Replay {
        Replay {
            first,
            entries: Vec::new(),
            terms: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn segment(
        &mut self,
        path: PathBuf,
        first: u64,
        is_last: bool,
        fsync: bool,
    ) -> Result<Segment, StorageError> {
        // A missing segment in the middle (not a prefix: compaction and reset
        // delete from the ends) means entries the log acknowledged are gone.
        let next = self.next_index();
        if first != next {
            let why = format!("segment starts at index {first}, expected {next}");
            return Err(corrupt(&path, 0, why));
        }
        let b = fs::read(&path).map_err(io_err(&path))?;
        let mut allocated = b.len() as u64;
        let mut offsets = Vec::new();
        let mut off = 0;
        while off < b.len() {
            let next = self.next_index();
            let last_term = self.terms.last().map_or(0, |t| t.1);
            let at = off as u64;
            let rec = match parse_record(&b, off) {
                Ok(rec) => rec,
                // Preallocated space the log had not reached yet. Rotation
                // trims it, but a segment that still ends in zeros lost
                // nothing unless the next one leaves a gap, which is checked.
                Err(_) if b[off..].iter().all(|&x| x == 0) => break,
                Err(reason) if !is_last => return Err(corrupt(&path, at, reason)),
                Err(reason) => {
                    if let Some(why) = synced_damage(&b, off, next, last_term) {
                        return Err(corrupt(&path, at, format!("{reason}; {why}")));
                    }
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    file.set_len(at).map_err(io_err(&path))?;
                    if fsync {
                        file.sync_all().map_err(io_err(&path))?;
                    }
                    allocated = at;
                    self.warnings.push(format!(
                        "cut torn record at {} offset {at} ({reason}; {} bytes dropped: \
                         the rest of a write that never finished syncing)",
                        path.display(),
                        b.len() - off
                    ));
                    break;
                }
            };
            if rec.index != next {
                let why = format!("index {} where {next} was expected", rec.index);
                return Err(corrupt(&path, at, why));
            }
            if rec.term < last_term {
                let why = format!("term {} after term {last_term}", rec.term);
                return Err(corrupt(&path, at, why));
            }
            let kind = match rec.kind {
                0 => EntryKind::Command,
                1 => EntryKind::Noop,
                k => return Err(corrupt(&path, at, format!("unknown entry kind {k}"))),
            };
            let data = std::str::from_utf8(rec.data)
                .map_err(|_| corrupt(&path, at, "data is not UTF-8"))?;
            if last_term != rec.term {
                self.terms.push((rec.index, rec.term));
            }
            self.entries.push(Entry {
                index: rec.index,
                term: rec.term,
                kind,
                data: Arc::from(data),
            });
            offsets.push(at);
            off = rec.end;
        }
        // `off` is the end of the last good record, whether or not a tail was
        // cut; zeros after it are preallocated space the next append reuses.
        Ok(Segment {
            first_index: first,
            path,
            offsets,
            len: off as u64,
            allocated,
        })
    }
}

/// A hard state is saved, durably, before any entry of its term is appended,
/// so a log with entries (or one that a reset or compaction moved past 1)
/// and no hard state, or a hard state older than the log's last term, means
/// the file was lost or replaced (an operator error, a partial restore).
/// Starting anyway would forget a vote and could vote twice in one term.
fn check_hard_state(
    path: &Path,
    hard_state: Option<HardState>,
    first_index: u64,
    replay: &Replay,
) -> Result<(), StorageError> {
    let last_term = replay.terms.last().map_or(0, |t| t.1);
    let inconsistent = |reason: String| {
        Err(StorageError::Inconsistent {
            path: path.to_path_buf(),
            reason,
        })
    };
    match hard_state {
        None if !replay.entries.is_empty() || first_index > 1 => {
            let log = match replay.next_index() - 1 {
                last if last >= first_index => format!("holds entries {first_index}..={last}"),
                _ => format!("starts at index {first_index}"),
            };
            inconsistent(format!(
                "missing, but the log {log}: the term and vote it held are unknown, and \
                 starting without them could vote twice in a term; restore the file, or \
                 move the whole data directory aside and resync this node"
            ))
        }
        Some(hs) if hs.term < last_term => inconsistent(format!(
            "term {} is below the log's last term {last_term}: this hard state is older \
             than the log; restore the right file, or move the whole data directory aside \
             and resync this node",
            hs.term
        )),
        _ => Ok(()),
    }
}

fn read_hard_state(path: &Path) -> Result<Option<HardState>, StorageError> {
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    if b.len() != HARD_STATE_LEN || &b[..4] != HARD_STATE_MAGIC {
        return Err(corrupt(path, 0, "not a hard state file"));
    }
    if crc32fast::hash(&b[..21]) != le_u32(&b, 21) {
        return Err(corrupt(path, 21, "checksum mismatch"));
    }
    let vote = match b[12] {
        0 => None,
        1 => Some(le_u64(&b, 13)),
        _ => return Err(corrupt(path, 12, "bad vote flag")),
    };
    Ok(Some(HardState {
        term: le_u64(&b, 4),
        vote,
    }))
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    pub(super) fn entry(index: u64, term: u64, data: &str) -> Entry {
        let kind = if data.is_empty() {
            EntryKind::Noop
        } else {
            EntryKind::Command
        };
        Entry {
            index,
            term,
            kind,
            data: Arc::from(data),
        }
    }

    fn run(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| entry(i, term, &format!("set key{i} value-{i}")))
            .collect()
    }

    fn opts(segment_bytes: u64) -> StorageOptions {
        StorageOptions {
            segment_bytes,
            fsync: false,
        }
    }

    /// A term above every entry's in these tests: what a node that appended
    /// them would have saved first.
    pub(super) const TEST_TERM: u64 = 1_000;

    /// Opens `dir`, giving a new directory the hard state a node saves
    /// before its first append (`open` refuses a log without one).
    pub(super) fn open(dir: &Path, o: StorageOptions) -> (Storage, Recovered) {
        let (mut s, rec) = Storage::open(dir, o).expect("open");
        if rec.hard_state.is_none() {
            let hs = HardState {
                term: TEST_TERM,
                vote: None,
            };
            s.save_hard_state(hs).expect("save hard state");
        }
        (s, rec)
    }

    /// A data directory holding `entries`, written and synced, the storage closed.
    fn written(entries: &[Entry], segment_bytes: u64) -> TempDir {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(segment_bytes));
        s.append(entries).unwrap();
        s.sync().unwrap();
        dir
    }

    fn copy_dir(src: &Path) -> TempDir {
        let dst = TempDir::new().unwrap();
        for item in fs::read_dir(src).unwrap() {
            let path = item.unwrap().path();
            fs::copy(&path, dst.path().join(path.file_name().unwrap())).unwrap();
        }
        dst
    }

    fn flip(path: &Path, offset: u64) {
        let mut b = fs::read(path).unwrap();
        b[offset as usize] ^= 0x04;
        fs::write(path, b).unwrap();
    }

    fn assert_corrupt(dir: &Path, want_path: &Path, want_offset: u64) {
        match Storage::open(dir, opts(200)) {
            Err(StorageError::Corrupt {
                path,
                offset,
                reason,
            }) => {
                assert_eq!(
                    (path.as_path(), offset),
                    (want_path, want_offset),
                    "{reason}"
                );
            }
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("expected corruption, open succeeded"),
        }
    }

    #[test]
    fn round_trip_entries_and_hard_state() {
        let dir = TempDir::new().unwrap();
        let o = StorageOptions {
            segment_bytes: 4096,
            fsync: true,
        };
        let (mut s, rec) = open(dir.path(), o);
        assert_eq!((s.last_index(), rec.entries.len()), (0, 0));
        assert_eq!((s.first_index(), rec.first_index), (1, 1));
        assert_eq!(rec.hard_state, None);
        let mut all = vec![entry(1, 1, "")];
        all.extend(run(2, 150, 1));
        all.extend(run(151, 300, 3));
        for batch in all.chunks(37) {
            s.append(batch).unwrap();
        }
        s.sync().unwrap();
        let hs = HardState {
            term: 4,
            vote: Some(2),
        };
        s.save_hard_state(hs).unwrap();
        drop(s);
        let (mut s, rec) = open(dir.path(), o);
        assert_eq!(rec.entries, all);
        assert_eq!(rec.first_index, 1);
        assert_eq!(rec.hard_state, Some(hs));
        assert!(rec.warnings.is_empty());
        assert_eq!(s.last_index(), 300);
        s.append(&[entry(301, 4, "after reopen")]).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), o);
        assert_eq!(rec.entries.len(), 301);
        assert_eq!(&*rec.entries[300].data, "after reopen");
    }

    #[test]
    fn rotation_spreads_the_log_over_many_segments() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(200));
        let all = run(1, 300, 1);
        for (i, batch) in all.chunks(7).enumerate() {
            s.append(batch).unwrap();
            if i % 3 == 0 {
                s.sync().unwrap();
            }
        }
        s.sync().unwrap();
        let largest_record = (HEADER + PAYLOAD_MIN + all[299].data.len()) as u64;
        let names: Vec<(u64, u64)> = s.segments.iter().map(|g| (g.first_index, g.len)).collect();
        drop(s);
        assert!(names.len() > 30, "only {} segments", names.len());
        for (i, &(first, len)) in names.iter().enumerate() {
            let on_disk = fs::metadata(segment_path(dir.path(), first)).unwrap().len();
            assert_eq!(on_disk, len);
            assert!(len < 200 + largest_record, "segment {first} is {len} bytes");
            if i + 1 < names.len() {
                assert!(len >= 200, "segment {first} rotated early at {len} bytes");
            }
        }
        let (_, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.entries, all);
    }

    #[test]
    fn overlapping_append_truncates_across_segments() {
        let dir = TempDir::new().unwrap();
        // With fsync on, so the directory syncs of truncation run too.
        let o = StorageOptions {
            segment_bytes: 200,
            fsync: true,
        };
        let (mut s, _) = open(dir.path(), o);
        s.append(&run(1, 60, 1)).unwrap();
        s.sync().unwrap();
        let before = s.segments.len();
        s.append(&run(25, 30, 2)).unwrap();
        assert_eq!(s.last_index(), 30);
        assert!(s.segments.len() < before);
        s.append(&run(31, 40, 2)).unwrap();
        s.sync().unwrap();
        // Cutting exactly at a segment boundary keeps that segment, empty.
        let boundary = s.segments[2].first_index;
        s.append(&run(boundary, boundary + 1, 3)).unwrap();
        s.sync().unwrap();
        assert_eq!(s.segments.len(), 3);
        drop(s);
        assert_eq!(segment_files(dir.path()).len(), 3);
        let (mut s, rec) = open(dir.path(), o);
        let mut want = run(1, 24, 1);
        want.extend(run(25, 40, 2));
        want.truncate(boundary as usize - 1);
        want.extend(run(boundary, boundary + 1, 3));
        assert_eq!(rec.entries, want);
        // Truncation must also work from offsets rebuilt by replay.
        s.append(&[entry(1, 5, "only")]).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, rec) = open(dir.path(), o);
        assert_eq!(rec.entries, vec![entry(1, 5, "only")]);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn torn_tail_at_every_byte_is_cut() {
        let base = TempDir::new().unwrap();
        let (mut s, _) = open(base.path(), opts(1 << 20));
        s.append(&run(1, 5, 1)).unwrap();
        s.sync().unwrap();
        let (start, end) = (s.segments[0].offsets[4], s.segments[0].len);
        drop(s);
        for cut in start..end {
            let dir = copy_dir(base.path());
            let wal = segment_path(dir.path(), 1);
            OpenOptions::new()
                .write(true)
                .open(&wal)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let (mut s, rec) = open(dir.path(), opts(1 << 20));
            assert_eq!(rec.entries, run(1, 4, 1), "cut at {cut}");
            assert_eq!(rec.warnings.len(), usize::from(cut > start), "cut at {cut}");
            if cut > start {
                let want = format!("{} offset {start} ", wal.display());
                assert!(rec.warnings[0].contains(&want), "{:?}", rec.warnings);
            }
            assert_eq!(fs::metadata(&wal).unwrap().len(), start);
            s.append(&[entry(5, 2, "rewritten")]).unwrap();
            s.sync().unwrap();
            drop(s);
            let (_, rec) = open(dir.path(), opts(1 << 20));
            assert!(rec.warnings.is_empty());
            assert_eq!(rec.entries.len(), 5);
            assert_eq!(rec.entries[4], entry(5, 2, "rewritten"));
        }
    }

    #[test]
    fn preallocated_zeros_are_the_end_of_the_log_and_appends_go_over_them() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&run(1, 5, 1)).unwrap();
        s.sync().unwrap();
        let len = s.segments[0].len;
        drop(s);
        let wal = segment_path(dir.path(), 1);
        assert_eq!(
            fs::metadata(&wal).unwrap().len(),
            1 << 20,
            "zero-filled ahead"
        );
        let (mut s, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 5, 1));
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(s.segments[0].len, len);
        // The next records land right after the last one, not at the file's end.
        s.append(&run(6, 9, 1)).unwrap();
        s.sync().unwrap();
        assert_eq!(s.segments[0].offsets[5], len);
        drop(s);
        assert_eq!(fs::metadata(&wal).unwrap().len(), 1 << 20);
        let (_, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 9, 1));
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    }

    #[test]
    fn a_torn_record_before_preallocated_zeros_is_cut() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&run(1, 5, 1)).unwrap();
        s.sync().unwrap();
        let (start, len) = (s.segments[0].offsets[4], s.segments[0].len);
        drop(s);
        let wal = segment_path(dir.path(), 1);
        // Record 5's second half never reached the disk: zeros from there on.
        let file = OpenOptions::new().write(true).open(&wal).unwrap();
        let mid = start + (len - start) / 2;
        file.write_all_at(&vec![0; (len - mid) as usize], mid)
            .unwrap();
        drop(file);
        let (mut s, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 4, 1));
        assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
        assert_eq!(fs::metadata(&wal).unwrap().len(), start);
        s.append(&run(5, 6, 2)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries[4..], run(5, 6, 2)[..]);
    }

    #[test]
    fn flipped_bit_before_the_last_record_is_corruption() {
        let base = TempDir::new().unwrap();
        let (mut s, _) = open(base.path(), opts(1 << 20));
        s.append(&run(1, 10, 1)).unwrap();
        s.sync().unwrap();
        let rec3 = s.segments[0].offsets[3];
        drop(s);
        // Payload byte, CRC byte, and a length bit that pushes the record
        // past the end of the file (which alone would look torn).
        for (what, at) in [
            ("payload", rec3 + 12),
            ("crc", rec3 + 5),
            ("length", rec3 + 2),
        ] {
            let dir = copy_dir(base.path());
            let wal = segment_path(dir.path(), 1);
            let len = fs::metadata(&wal).unwrap().len();
            flip(&wal, at);
            assert_corrupt(dir.path(), &wal, rec3);
            assert_eq!(
                fs::metadata(&wal).unwrap().len(),
                len,
                "{what}: file was modified"
            );
        }
    }

    #[test]
    fn flipped_bit_in_an_earlier_segment_is_corruption() {
        let base = TempDir::new().unwrap();
        let (mut s, _) = open(base.path(), opts(200));
        s.append(&run(1, 40, 1)).unwrap();
        s.sync().unwrap();
        let seg = &s.segments[1];
        let (first, second, last) = (
            seg.first_index,
            seg.offsets[1],
            seg.offsets[seg.offsets.len() - 1],
        );
        drop(s);
        // Even the last record of a segment is covered by the fsync at rotation.
        for at in [second, last] {
            let dir = copy_dir(base.path());
            let wal = segment_path(dir.path(), first);
            flip(&wal, at + HEADER as u64 + 3);
            assert_corrupt(dir.path(), &wal, at);
        }
    }

    #[test]
    fn flipped_bit_in_the_last_record_is_cut_as_torn() {
        // A crash can leave a full-length last record with garbage payload
        // (the size reached disk, the data did not), and nothing after it
        // was ever acknowledged, so it is repaired, not reported.
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&run(1, 10, 1)).unwrap();
        s.sync().unwrap();
        let last = s.segments[0].offsets[9];
        drop(s);
        flip(&segment_path(dir.path(), 1), last + 20);
        let (s, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 9, 1));
        assert_eq!(rec.warnings.len(), 1);
        assert!(
            rec.warnings[0].contains("checksum mismatch"),
            "{:?}",
            rec.warnings
        );
        assert_eq!(s.last_index(), 9);
    }

    #[test]
    fn hard_state_round_trip_and_corruption() {
        let dir = TempDir::new().unwrap();
        let o = StorageOptions::default();
        let (mut s, _) = open(dir.path(), o);
        s.save_hard_state(HardState {
            term: 7,
            vote: Some(3),
        })
        .unwrap();
        s.save_hard_state(HardState {
            term: 9,
            vote: None,
        })
        .unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), o);
        assert_eq!(
            rec.hard_state,
            Some(HardState {
                term: 9,
                vote: None
            })
        );
        let path = dir.path().join(HARD_STATE_FILE);
        flip(&path, 6);
        assert!(
            matches!(Storage::open(dir.path(), o), Err(StorageError::Corrupt { path: p, .. }) if p == path)
        );
        fs::write(&path, b"PHS1").unwrap();
        let err = Storage::open(dir.path(), o)
            .err()
            .expect("short file must not open");
        assert!(err.to_string().contains("hardstate"), "{err}");
    }

    fn assert_inconsistent(dir: &Path, want_path: &Path, want_reason: &str) {
        match Storage::open(dir, opts(1 << 20)) {
            Err(StorageError::Inconsistent { path, reason }) => {
                assert_eq!(path, want_path, "{reason}");
                assert!(reason.contains(want_reason), "{reason}");
            }
            Err(e) => panic!("expected an inconsistent directory, got {e}"),
            Ok(_) => panic!("expected an inconsistent directory, open succeeded"),
        }
    }

    #[test]
    fn a_log_without_its_hard_state_is_refused() {
        // A new directory, and one whose log holds nothing yet, open with no
        // hard state: a node that never saved a term.
        let dir = TempDir::new().unwrap();
        let (s, rec) = Storage::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!((rec.hard_state, rec.entries.len()), (None, 0));
        drop(s);
        let (_, rec) = Storage::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(rec.hard_state, None);

        let dir = written(&run(1, 5, 2), 1 << 20);
        let path = dir.path().join(HARD_STATE_FILE);
        fs::remove_file(&path).unwrap();
        assert_inconsistent(
            dir.path(),
            &path,
            "missing, but the log holds entries 1..=5",
        );
        // An empty log that a reset moved to 40 says as much.
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&run(1, 5, 2)).unwrap();
        s.reset(40).unwrap();
        drop(s);
        let path = dir.path().join(HARD_STATE_FILE);
        fs::remove_file(&path).unwrap();
        assert_inconsistent(dir.path(), &path, "missing, but the log starts at index 40");
        assert_eq!(segment_files(dir.path()), vec![40], "nothing was changed");
    }

    #[test]
    fn a_hard_state_older_than_the_log_is_refused() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&run(1, 3, 4)).unwrap();
        s.sync().unwrap();
        for (term, ok) in [(3, false), (4, true), (5, true)] {
            s.save_hard_state(HardState {
                term,
                vote: Some(2),
            })
            .unwrap();
            let path = dir.path().join(HARD_STATE_FILE);
            if ok {
                let (_, rec) = Storage::open(dir.path(), opts(1 << 20)).unwrap();
                assert_eq!(rec.hard_state.map(|h| h.term), Some(term));
            } else {
                assert_inconsistent(dir.path(), &path, "term 3 is below the log's last term 4");
            }
        }
    }

    #[test]
    fn creating_the_data_directory_makes_each_new_entry_durable() {
        let base = TempDir::new().unwrap();
        let dir = base.path().join("a/b/node-1");
        let o = StorageOptions {
            segment_bytes: 1 << 20,
            fsync: true,
        };
        let synced = durable::tests::dirs_synced_by(|| {
            Storage::open(&dir, o).unwrap();
        });
        // Every directory that gained an entry: the three parents of the new
        // directories, and the new one itself for its first segment.
        for parent in [
            base.path(),
            &base.path().join("a"),
            &base.path().join("a/b"),
            &dir,
        ] {
            assert!(
                synced.iter().any(|p| p == parent),
                "{parent:?} not synced: {synced:?}"
            );
        }
        // Opening it again creates nothing, so syncs nothing above it.
        let synced = durable::tests::dirs_synced_by(|| {
            Storage::open(&dir, o).unwrap();
        });
        assert!(synced.iter().all(|p| p.starts_with(&dir)), "{synced:?}");
    }

    #[test]
    fn invalid_appends_are_rejected_without_changing_the_log() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(1 << 20));
        s.append(&[]).unwrap();
        for bad in [vec![entry(2, 1, "gap")], vec![entry(0, 1, "zero")]] {
            assert!(
                matches!(s.append(&bad), Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput)
            );
        }
        s.append(&run(1, 3, 2)).unwrap();
        let bad_batches = [
            vec![entry(5, 2, "gap")],
            vec![entry(4, 2, "a"), entry(6, 2, "skips 5")],
            vec![entry(4, 1, "term goes back")],
            vec![entry(3, 2, "a"), entry(4, 1, "term goes back")],
        ];
        for bad in bad_batches {
            assert!(s.append(&bad).is_err(), "{bad:?}");
            assert_eq!(s.last_index(), 3);
        }
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 3, 2));
    }

    #[test]
    fn empty_last_segment_is_fine_but_a_misnamed_one_is_not() {
        let dir = written(&run(1, 5, 1), 1 << 20);
        fs::write(segment_path(dir.path(), 6), b"").unwrap();
        let (mut s, rec) = open(dir.path(), opts(1 << 20));
        assert!(rec.warnings.is_empty());
        assert_eq!(s.segments.len(), 2);
        s.append(&run(6, 8, 1)).unwrap();
        s.sync().unwrap();
        drop(s);
        assert!(fs::metadata(segment_path(dir.path(), 6)).unwrap().len() > 0);
        let (_, rec) = open(dir.path(), opts(1 << 20));
        assert_eq!(rec.entries, run(1, 8, 1));
        let stray = segment_path(dir.path(), 12);
        fs::write(&stray, b"").unwrap();
        assert_corrupt(dir.path(), &stray, 0);
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|item| {
                let name = item.unwrap().file_name().into_string().unwrap();
                name.strip_prefix("wal-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        firsts.sort_unstable();
        firsts
    }

    #[test]
    fn compact_deletes_only_wholly_covered_segments() {
        let dir = TempDir::new().unwrap();
        // With fsync on, so the directory syncs after each deletion run too.
        let o = StorageOptions {
            segment_bytes: 200,
            fsync: true,
        };
        let (mut s, _) = open(dir.path(), o);
        s.append(&run(1, 40, 1)).unwrap();
        s.append(&run(41, 60, 2)).unwrap();
        s.sync().unwrap();
        let firsts = segment_files(dir.path());
        assert!(firsts.len() > 6, "{firsts:?}");
        // Nothing is wholly covered below the end of the first segment.
        s.compact(0).unwrap();
        s.compact(firsts[1] - 2).unwrap();
        assert_eq!(segment_files(dir.path()), firsts);
        // Exactly the end of segment 1: it goes, segment 2 stays.
        s.compact(firsts[1] - 1).unwrap();
        assert_eq!(segment_files(dir.path()), firsts[1..]);
        assert_eq!(s.first_index(), firsts[1]);
        // The middle of segment 4: segments 2 and 3 go, 4 stays with entries
        // at and below `up_to` still in it.
        let up_to = firsts[3] + 1;
        s.compact(up_to).unwrap();
        assert_eq!(segment_files(dir.path()), firsts[3..]);
        assert_eq!((s.first_index(), s.last_index()), (firsts[3], 60));
        drop(s);

        let (mut s, rec) = open(dir.path(), o);
        assert_eq!(rec.first_index, firsts[3]);
        assert_eq!(rec.entries.first().map(|e| e.index), Some(firsts[3]));
        let mut want: Vec<Entry> = run(1, 40, 1).into_iter().chain(run(41, 60, 2)).collect();
        want.drain(..firsts[3] as usize - 1);
        assert_eq!(rec.entries, want);
        // The term check still works on a compacted log: 2 is the last term.
        assert!(s.append(&[entry(61, 1, "older term")]).is_err());
        s.append(&run(61, 70, 2)).unwrap();
        // Beyond the end: every segment but the one being appended to goes.
        s.compact(1_000).unwrap();
        let active = *segment_files(dir.path()).last().unwrap();
        assert_eq!(segment_files(dir.path()), vec![active]);
        assert_eq!((s.first_index(), s.last_index()), (active, 70));
        s.append(&run(71, 75, 3)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, rec) = open(dir.path(), o);
        assert_eq!(rec.first_index, active);
        assert_eq!(rec.entries.last().map(|e| (e.index, e.term)), Some((75, 3)));
        assert_eq!(rec.entries.len() as u64, 75 - active + 1);
        assert!(rec.warnings.is_empty());
        assert_eq!(s.last_index(), 75);
    }

    #[test]
    fn appends_below_the_first_index_or_past_the_end_are_rejected_after_compaction() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(200));
        s.append(&run(1, 40, 1)).unwrap();
        s.compact(30).unwrap();
        let first = s.first_index();
        assert!(first > 1);
        for bad in [first - 1, 42] {
            let result = s.append(&[entry(bad, 1, "x")]);
            assert!(
                matches!(&result, Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput),
                "{bad}: {result:?}"
            );
        }
        // Replacing the whole remaining log is still allowed.
        s.append(&[entry(first, 2, "replaced")]).unwrap();
        s.sync().unwrap();
        assert_eq!(s.last_index(), first);
        drop(s);
        let (_, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.first_index, first);
        assert_eq!(rec.entries, vec![entry(first, 2, "replaced")]);
    }

    #[test]
    fn reset_then_append_then_reopen() {
        let dir = TempDir::new().unwrap();
        let o = StorageOptions {
            segment_bytes: 200,
            fsync: true,
        };
        let (mut s, _) = open(dir.path(), o);
        s.append(&run(1, 60, 3)).unwrap();
        s.sync().unwrap();
        // Unsynced entries are discarded along with the rest.
        s.append(&run(61, 65, 3)).unwrap();
        s.reset(100).unwrap();
        assert_eq!(segment_files(dir.path()), vec![100]);
        assert_eq!((s.first_index(), s.last_index()), (100, 99));
        drop(s);

        // Durable on its own: a crash before the next append still restarts
        // the log at 100.
        let (mut s, rec) = open(dir.path(), o);
        assert_eq!((rec.first_index, rec.entries.len()), (100, 0));
        assert_eq!((s.first_index(), s.last_index()), (100, 99));
        for bad in [99, 101] {
            assert!(s.append(&[entry(bad, 4, "x")]).is_err(), "{bad}");
        }
        // Terms may start anywhere: the old log's terms went with it.
        s.append(&run(100, 130, 2)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (mut s, rec) = open(dir.path(), o);
        assert_eq!(rec.first_index, 100);
        assert_eq!(rec.entries, run(100, 130, 2));
        assert!(segment_files(dir.path()).len() > 1);

        // A reset to a lower index than the current log works too.
        s.reset(5).unwrap();
        s.append(&run(5, 6, 7)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), o);
        assert_eq!((rec.first_index, rec.entries), (5, run(5, 6, 7)));
        assert_eq!(segment_files(dir.path()), vec![5]);

        let (mut s, _) = open(dir.path(), o);
        assert!(s.reset(0).is_err());
        assert_eq!(s.last_index(), 6);
    }

    #[test]
    fn a_log_whose_first_segment_is_past_one_opens() {
        // What a crash part-way through compaction leaves: a suffix.
        let dir = written(&run(1, 50, 1), 200);
        let firsts = segment_files(dir.path());
        for &first in &firsts[..2] {
            fs::remove_file(segment_path(dir.path(), first)).unwrap();
        }
        let (mut s, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.first_index, firsts[2]);
        assert_eq!(rec.entries, run(firsts[2], 50, 1));
        assert_eq!(s.first_index(), firsts[2]);
        s.append(&run(51, 52, 1)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.entries, run(firsts[2], 52, 1));

        // What a crash part-way through reset leaves: a prefix, or nothing.
        let dir = written(&run(1, 50, 1), 200);
        let firsts = segment_files(dir.path());
        fs::remove_file(segment_path(dir.path(), firsts[firsts.len() - 1])).unwrap();
        let (_, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.entries, run(1, firsts[firsts.len() - 1] - 1, 1));
        for &first in &firsts[..firsts.len() - 1] {
            fs::remove_file(segment_path(dir.path(), first)).unwrap();
        }
        let (s, rec) = open(dir.path(), opts(200));
        assert_eq!((rec.first_index, rec.entries.len()), (1, 0));
        assert_eq!(s.last_index(), 0);
    }

    #[test]
    fn a_missing_middle_segment_is_corruption() {
        let dir = written(&run(1, 50, 1), 200);
        let firsts = segment_files(dir.path());
        assert!(firsts.len() > 3);
        // A gap after a compacted prefix is just as bad as one in a full log.
        fs::remove_file(segment_path(dir.path(), firsts[0])).unwrap();
        fs::remove_file(segment_path(dir.path(), firsts[2])).unwrap();
        assert_corrupt(dir.path(), &segment_path(dir.path(), firsts[3]), 0);
        // So is a segment numbered 0, which no log ever creates.
        let dir = TempDir::new().unwrap();
        fs::write(segment_path(dir.path(), 0), b"").unwrap();
        assert_corrupt(dir.path(), &segment_path(dir.path(), 0), 0);
    }

    #[test]
    fn records_zeroed_at_the_end_of_an_earlier_segment_are_a_gap() {
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(200));
        s.append(&run(1, 50, 1)).unwrap();
        s.sync().unwrap();
        let (first, last_record) = (
            s.segments[1].first_index,
            s.segments[0].offsets[1..].to_vec(),
        );
        let len = s.segments[0].len;
        drop(s);
        assert!(!last_record.is_empty() && first > 2);
        let wal = segment_path(dir.path(), 1);
        assert_eq!(
            fs::metadata(&wal).unwrap().len(),
            len,
            "trimmed on rotation"
        );
        // The first segment's last record reads as zeros: a zero tail, yet
        // the next segment does not continue the log.
        let at = *last_record.last().unwrap();
        let file = OpenOptions::new().write(true).open(&wal).unwrap();
        file.write_all_at(&vec![0; (len - at) as usize], at)
            .unwrap();
        drop(file);
        assert_corrupt(dir.path(), &segment_path(dir.path(), first), 0);
    }

    #[test]
    fn a_failed_rotation_stops_appends_and_the_synced_log_still_opens() {
        // Where the log rotates, found by writing the same log elsewhere.
        let firsts = segment_files(written(&run(1, 60, 1), 200).path());
        let next = firsts[2];
        let dir = TempDir::new().unwrap();
        let (mut s, _) = open(dir.path(), opts(200));
        s.append(&run(1, next - 1, 1)).unwrap();
        s.sync().unwrap();
        // A file in the way of the next segment: creating it fails.
        fs::write(segment_path(dir.path(), next), b"").unwrap();
        assert!(s.append(&run(next, next + 5, 1)).is_err());
        // Nothing more is written, not even what needs no new segment.
        let replace = s.append(&[entry(next - 1, 2, "replaces the last entry")]);
        assert!(
            replace.is_err(),
            "an append after a failed rotation was taken"
        );
        assert!(s.sync().is_err());
        assert!(s
            .save_hard_state(HardState {
                term: 2,
                vote: None
            })
            .is_err());
        assert_eq!(s.health(), Health::Failed);
        assert!(s.recover().is_err(), "only a restart may go on");
        drop(s);
        let (mut s, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.entries, run(1, next - 1, 1));
        // The log goes on in the file that was in the way, which is empty.
        s.append(&run(next, next + 5, 1)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), opts(200));
        assert_eq!(rec.entries, run(1, next + 5, 1));
    }

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    /// Every run of every step of the write path (a truncation, a rotation,
    /// preallocation, the hard state) fails in turn, with ENOSPC and with EIO.
    /// The storage then takes no write; for a full disk (and no failed
    /// fsync) `recover` and a retry finish the work, otherwise the files
    /// still open with every synced entry and the retry succeeds after that.
    #[test]
    fn every_failed_write_step_stops_the_storage_and_loses_nothing_synced() {
        let o = StorageOptions {
            segment_bytes: 300,
            fsync: true,
        };
        let old_hs = HardState {
            term: 1,
            vote: Some(1),
        };
        let new_hs = HardState {
            term: 2,
            vote: Some(3),
        };
        // Replaces 19 and 20, and rotates twice.
        let batch = run(19, 50, 2);
        let mut want = run(1, 18, 1);
        want.extend(batch.iter().cloned());
        let workload = |s: &mut Storage| -> Result<(), StorageError> {
            s.save_hard_state(new_hs)?;
            s.append(&batch)?;
            s.sync()
        };
        let steps = [
            Step::Prealloc,
            Step::Write,
            Step::SetLen,
            Step::Sync,
            Step::CreateSegment,
            Step::HardState,
            Step::Rename,
        ];
        let mut failures = 0;
        for step in steps {
            for errno in [ENOSPC, EIO] {
                for skip in 0.. {
                    let what = format!("{step:?} run {skip}, errno {errno}");
                    let dir = TempDir::new().unwrap();
                    let (mut s, _) = open(dir.path(), o);
                    s.save_hard_state(old_hs).unwrap();
                    s.append(&run(1, 20, 1)).unwrap();
                    s.sync().unwrap();
                    s.faults.next.set(Some((step, skip, errno)));
                    let result = workload(&mut s);
                    let fired = s.faults.next.take().is_none();
                    if !fired {
                        result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(skip > 0, "{what}: the workload never ran this step");
                        break;
                    }
                    if step == Step::Prealloc {
                        // Best effort: the records are written without it.
                        result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        drop(s);
                        let (_, rec) = open(dir.path(), o);
                        assert_eq!((rec.entries, rec.hard_state), (want.clone(), Some(new_hs)));
                        continue;
                    }
                    failures += 1;
                    let err = result.expect_err(&what);
                    let full = errno == ENOSPC && step != Step::Sync;
                    let health = if full {
                        Health::NoSpace
                    } else {
                        Health::Failed
                    };
                    assert_eq!(s.health(), health, "{what}: {err}");
                    assert_eq!(err.is_no_space(), errno == ENOSPC, "{what}: {err}");
                    let next = s.last_index() + 1;
                    let refused = s.append(&[entry(next, 2, "x")]).expect_err(&what);
                    assert_eq!(refused.is_no_space(), full, "{what}: {refused}");
                    assert!(s.sync().is_err(), "{what}");
                    assert!(s.save_hard_state(new_hs).is_err(), "{what}");
                    if full {
                        s.recover()
                            .unwrap_or_else(|e| panic!("{what}: recover: {e}"));
                        assert_eq!(s.health(), Health::Healthy);
                        workload(&mut s).unwrap_or_else(|e| panic!("{what}: retry: {e}"));
                        drop(s);
                        let (_, rec) = open(dir.path(), o);
                        assert_eq!(rec.entries, want, "{what}");
                        assert_eq!(rec.hard_state, Some(new_hs), "{what}");
                        assert!(rec.warnings.is_empty(), "{what}: {:?}", rec.warnings);
                        continue;
                    }
                    assert!(s.recover().is_err(), "{what}");
                    drop(s);
                    let (mut s, rec) = Storage::open(dir.path(), o)
                        .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                    assert_eq!(rec.entries[..18], want[..18], "{what}");
                    let old = run(19, 20, 1);
                    for e in &rec.entries[18..] {
                        assert!(old.contains(e) || batch.contains(e), "{what}: {e:?}");
                    }
                    assert!(
                        rec.hard_state == Some(old_hs) || rec.hard_state == Some(new_hs),
                        "{what}: {:?}",
                        rec.hard_state
                    );
                    workload(&mut s).unwrap_or_else(|e| panic!("{what}: after restart: {e}"));
                    drop(s);
                    let (_, rec) = open(dir.path(), o);
                    assert_eq!((rec.entries, rec.hard_state), (want.clone(), Some(new_hs)));
                }
            }
        }
        assert!(failures >= 20, "only {failures} failures injected");
    }
}
