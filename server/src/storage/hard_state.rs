//! The hard state (term, vote): `hardstate` =
//! `"PHS1" | term: u64 LE | has_vote: u8 | vote: u64 LE | crc: u32 LE` (CRC
//! of the 21 bytes before it), replaced durably (a temporary file, fsynced,
//! renamed over the old one, the directory fsynced).
//!
//! The hard state is saved (durably) before any entry of its term is
//! appended, so `open` refuses a log with entries, or one that starts past
//! index 1, without a `hardstate` file, and a hard state whose term is below
//! the log's last term: either means the file was lost or replaced, and
//! starting would forget a vote.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::faults::Step;
use super::record::{le_u32, le_u64};
use super::replay::Replay;
use super::{corrupt, Storage, StorageError};
use crate::datadir;
use crate::durable::{self, io_err};
use crate::raft::HardState;

pub(super) const HARD_STATE_FILE: &str = "hardstate";
pub(super) const HARD_STATE_TMP: &str = "hardstate.tmp";
const HARD_STATE_MAGIC: &[u8; 4] = b"PHS1";
const HARD_STATE_LEN: usize = 25;

impl Storage {
    pub(super) fn write_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let mut b = Vec::with_capacity(HARD_STATE_LEN);
        b.extend_from_slice(HARD_STATE_MAGIC);
        b.extend_from_slice(&hs.term.to_le_bytes());
        b.push(u8::from(hs.vote.is_some()));
        b.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
        let tmp = self.dir.join(HARD_STATE_TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(datadir::FILE_MODE)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        self.faults
            .check(Step::HardState)
            .and_then(|()| file.write_all(&b))
            .map_err(io_err(&tmp))?;
        let real = self.dir.join(HARD_STATE_FILE);
        durable::replace(file, &tmp, &real, self.options.fsync, &self.faults)
            .map_err(|f| self.step_failed(f))
    }
}

/// A hard state is saved, durably, before any entry of its term is appended,
/// so a log with entries (or one that a reset or compaction moved past 1)
/// and no hard state, or a hard state older than the log's last term, means
/// the file was lost or replaced (an operator error, a partial restore).
/// Starting anyway would forget a vote and could vote twice in one term.
pub(super) fn check_hard_state(
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

pub(super) fn read_hard_state(path: &Path) -> Result<Option<HardState>, StorageError> {
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
mod tests {
    use tempfile::TempDir;

    use super::super::tests::{flip, open, opts, run, segment_files, written};
    use super::super::StorageOptions;
    use super::*;

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
}
