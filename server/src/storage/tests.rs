//! The storage's tests through its public API (opening, appending,
//! compaction, reset, failures of the write path), and the helpers every
//! test module of the storage uses.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use poncho_protocol::{Entry, EntryKind};
use tempfile::TempDir;

use super::faults::Step;
use super::*;
use crate::durable;
use crate::raft::HardState;

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

pub(super) fn run(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| entry(i, term, &format!("set key{i} value-{i}")))
        .collect()
}

pub(super) fn opts(segment_bytes: u64) -> StorageOptions {
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
pub(super) fn written(entries: &[Entry], segment_bytes: u64) -> TempDir {
    let dir = TempDir::new().unwrap();
    let (mut s, _) = open(dir.path(), opts(segment_bytes));
    s.append(entries).unwrap();
    s.sync().unwrap();
    dir
}

pub(super) fn copy_dir(src: &Path) -> TempDir {
    let dst = TempDir::new().unwrap();
    for item in fs::read_dir(src).unwrap() {
        let path = item.unwrap().path();
        fs::copy(&path, dst.path().join(path.file_name().unwrap())).unwrap();
    }
    dst
}

pub(super) fn flip(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= 0x04;
    fs::write(path, b).unwrap();
}

pub(super) fn assert_corrupt(dir: &Path, want_path: &Path, want_offset: u64) {
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

pub(super) fn segment_files(dir: &Path) -> Vec<u64> {
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
                let (mut s, rec) =
                    Storage::open(dir.path(), o).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
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
