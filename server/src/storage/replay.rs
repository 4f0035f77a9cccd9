//! Recovery: reading the segments back into the log when a storage opens,
//! checking that they continue each other without a gap, and cutting the torn
//! tail a crash can leave at the end of the last one (the rule is in
//! `record`'s documentation).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use poncho_protocol::{Entry, EntryKind};

use super::record::{parse_record, synced_damage, Record};
use super::segment::{open_write, segment_path, Segment};
use super::{corrupt, StorageError};
use crate::durable::io_err;

pub(super) struct Replay {
    /// The first segment's index, where the log starts.
    pub(super) first: u64,
    pub(super) entries: Vec<Entry>,
    pub(super) terms: Vec<(u64, u64)>,
    pub(super) warnings: Vec<String>,
}

impl Replay {
    /// Reads the segments of `dir` that start at `firsts` (sorted), in order.
    pub(super) fn run(
        dir: &Path,
        firsts: &[u64],
        fsync: bool,
    ) -> Result<(Vec<Segment>, Replay), StorageError> {
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
            segments.push(replay.segment(path, first, is_last, fsync)?);
        }
        Ok((segments, replay))
    }

    fn new(first: u64) -> Replay {
        Replay {
            first,
            entries: Vec::new(),
            terms: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(super) fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn last_term(&self) -> u64 {
        self.terms.last().map_or(0, |t| t.1)
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
            let at = off as u64;
            let rec = match parse_record(&b, off) {
                Ok(rec) => rec,
                // Preallocated space the log had not reached yet. Rotation
                // trims it, but a segment that still ends in zeros lost
                // nothing unless the next one leaves a gap, which is checked.
                Err(_) if b[off..].iter().all(|&x| x == 0) => break,
                Err(reason) if !is_last => return Err(corrupt(&path, at, reason)),
                Err(reason) => {
                    self.cut_torn(&path, &b, off, reason, fsync)?;
                    allocated = at;
                    break;
                }
            };
            self.push(&path, at, &rec)?;
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

    /// The bad record at `off` of the last segment `b` (read from `path`),
    /// and everything after it, are cut if it can be a torn write; if not,
    /// this is corruption.
    fn cut_torn(
        &mut self,
        path: &Path,
        b: &[u8],
        off: usize,
        reason: &str,
        fsync: bool,
    ) -> Result<(), StorageError> {
        let at = off as u64;
        if let Some(why) = synced_damage(b, off, self.next_index(), self.last_term()) {
            return Err(corrupt(path, at, format!("{reason}; {why}")));
        }
        let file = open_write(path)?;
        file.set_len(at).map_err(io_err(path))?;
        if fsync {
            file.sync_all().map_err(io_err(path))?;
        }
        self.warnings.push(format!(
            "cut torn record at {} offset {at} ({reason}; {} bytes dropped: \
             the rest of a write that never finished syncing)",
            path.display(),
            b.len() - off
        ));
        Ok(())
    }

    /// Adds the valid record `rec`, at `at` in `path`, if it continues the log.
    fn push(&mut self, path: &Path, at: u64, rec: &Record<'_>) -> Result<(), StorageError> {
        let next = self.next_index();
        let last_term = self.last_term();
        if rec.index != next {
            let why = format!("index {} where {next} was expected", rec.index);
            return Err(corrupt(path, at, why));
        }
        if rec.term < last_term {
            let why = format!("term {} after term {last_term}", rec.term);
            return Err(corrupt(path, at, why));
        }
        let kind = match rec.kind {
            0 => EntryKind::Command,
            1 => EntryKind::Noop,
            2 => EntryKind::Config,
            k => return Err(corrupt(path, at, format!("unknown entry kind {k}"))),
        };
        let data =
            std::str::from_utf8(rec.data).map_err(|_| corrupt(path, at, "data is not UTF-8"))?;
        if last_term != rec.term {
            self.terms.push((rec.index, rec.term));
        }
        self.entries.push(Entry {
            index: rec.index,
            term: rec.term,
            kind,
            data: Arc::from(data),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    use tempfile::TempDir;

    use super::super::record::HEADER;
    use super::super::tests::{
        assert_corrupt, copy_dir, flip, open, opts, run, segment_files, written,
    };
    use super::*;

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
}
