//! Segment files: appending records (and the batch a write starts),
//! rotation to a new segment, preallocation, truncation, and deleting whole
//! segments from either end of the log.
//!
//! A segment is `wal-<first index, 20 digits>.log`, so a name sort is an
//! index sort. It holds consecutive records; the log starts at the first
//! segment's index and continues without gaps from one segment to the next.
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

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use poncho_protocol::Entry;

use super::faults::Step;
use super::record::{encode_record, HEADER, PAYLOAD_MIN};
use super::{Health, Storage, StorageError};
use crate::durable::{self, io_err, Op};

/// How far ahead of its records the active segment is zero-filled at a time.
const PREALLOC_STEP: u64 = 1 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

pub(super) struct Segment {
    pub(super) first_index: u64,
    pub(super) path: PathBuf,
    /// Byte offset of each record: entry `first_index + i` starts at `offsets[i]`.
    pub(super) offsets: Vec<u64>,
    /// The end of the last record: where the next one is written.
    pub(super) len: u64,
    /// The file's size: `len` plus zeros written ahead of the records.
    pub(super) allocated: u64,
}

impl Segment {
    pub(super) fn empty(first_index: u64, path: PathBuf) -> Segment {
        Segment {
            first_index,
            path,
            offsets: Vec::new(),
            len: 0,
            allocated: 0,
        }
    }
}

/// Which end of the log [`Storage::delete_segments`] deletes from.
#[derive(Clone, Copy)]
pub(super) enum End {
    Oldest,
    Newest,
}

impl Storage {
    pub(super) fn append_checked(
        &mut self,
        overlaps: bool,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
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

    pub(super) fn recover_tail(&mut self) -> Result<(), StorageError> {
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

    pub(super) fn reset_inner(&mut self, next_index: u64) -> Result<(), StorageError> {
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

    pub(super) fn sync_active(&mut self) -> Result<(), StorageError> {
        if self.options.fsync {
            self.fsync_active(false)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// fdatasync (`all`: fsync) of the active segment; a failure is final.
    pub(super) fn fsync_active(&mut self, all: bool) -> Result<(), StorageError> {
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

    /// Deletes `count` segments from one end of the log, each deletion
    /// durable before the next (the directory is fsynced in between: POSIX
    /// does not order unlinks, and an out-of-order survivor would look like
    /// a gap). So a crash part-way leaves a contiguous part of the log.
    /// A segment leaves the list once its file is gone, even if the
    /// directory sync after it fails; the error still reaches the caller.
    pub(super) fn delete_segments(&mut self, count: usize, from: End) -> Result<(), StorageError> {
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
    pub(super) fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
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
    pub(super) fn rotate(&mut self, first_index: u64) -> Result<(), StorageError> {
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

    pub(super) fn write_chunk(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
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

pub(super) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("wal-{first_index:020}.log"))
}

pub(super) fn open_write(path: &Path) -> Result<File, StorageError> {
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

/// The first indexes of the segments in `dir`, sorted.
pub(super) fn list(dir: &Path) -> Result<Vec<u64>, StorageError> {
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
    Ok(firsts)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tempfile::TempDir;

    use super::super::tests::{entry, open, opts, run, segment_files, written};
    use super::super::{Health, StorageOptions};
    use super::*;
    use crate::raft::HardState;

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
    fn the_data_directory_segments_and_hard_state_are_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let top = TempDir::new().unwrap();
        let dir = top.path().join("data");
        let (mut s, _) = open(&dir, opts(200));
        s.append(&run(1, 50, 1)).unwrap();
        s.sync().unwrap();
        s.save_hard_state(HardState {
            term: 1,
            vote: Some(1),
        })
        .unwrap();
        drop(s);
        let mut checked = vec![dir.clone()];
        checked.extend(fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()));
        assert!(checked.len() > 3, "{checked:?}");
        for path in checked {
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
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
}
