//! Crash consistency of the write-ahead log, in the manner of ALICE
//! (Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014): run
//! a real workload against the storage, record what each batch wrote and
//! where its syncs fell, then build every on-disk state a power loss during
//! a batch's fdatasync can leave, and require each to open with every
//! acknowledged entry.
//!
//! The persistence model: everything before the crashing sync is durable
//! (the storage fsyncs each batch, and fsyncs a segment and the directory
//! before a rotation puts a byte in the next one; truncation is durable
//! before records land over it). Of the bytes written since, each 512-byte
//! sector independently reached the disk or did not (so sectors land in any
//! order), and one that did not holds what it held before: the synced bytes
//! in it, zeros elsewhere (preallocated zeros, or the end of the file). A
//! file that grew may also have kept its old size.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

use super::record::SECTOR;
use super::tests::{entry, TEST_TERM};
use super::*;

/// Up to this many changed sectors, every subset is tried; past it, a
/// seeded sample plus every prefix, suffix, single hole and single survivor.
const EXHAUSTIVE_SECTORS: usize = 9;
const SAMPLED_STATES: usize = 300;
const BATCHES: usize = 70;
const SEGMENT_BYTES: u64 = 6144;
const WORKLOAD_SEED: u64 = 0x0ba7_c4e5;

fn options() -> StorageOptions {
    StorageOptions {
        segment_bytes: SEGMENT_BYTES,
        // Syncs are modelled here; the real ones would only cost time.
        fsync: false,
    }
}

type Files = BTreeMap<String, Vec<u8>>;

fn read_files(dir: &Path) -> Files {
    fs::read_dir(dir)
        .unwrap()
        .map(|item| {
            let path = item.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect()
}

fn write_files(dir: &Path, files: &Files) {
    for item in fs::read_dir(dir).unwrap() {
        fs::remove_file(item.unwrap().path()).unwrap();
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

fn segment_name(first_index: u64) -> String {
    format!("wal-{first_index:020}.log")
}

/// Client writes as the server logs them, of varied sizes, with a no-op
/// opening each new term and, now and then, a new leader's batch replacing
/// the tail of the log (an overlapping append, which truncates).
struct Workload {
    rng: StdRng,
    term: u64,
    log: Vec<Entry>,
}

impl Workload {
    fn new() -> Workload {
        Workload {
            rng: StdRng::seed_from_u64(WORKLOAD_SEED),
            term: 0,
            log: Vec::new(),
        }
    }

    fn command(&mut self, index: u64) -> Entry {
        let value_len = match self.rng.gen_range(0..10) {
            0..=6 => self.rng.gen_range(1..40),
            7..=8 => self.rng.gen_range(40..200),
            _ => self.rng.gen_range(200..700),
        };
        let value: String = (0..value_len)
            .map(|_| char::from(self.rng.gen_range(b'a'..=b'z')))
            .collect();
        let data = format!(
            r#"{{"client_id":"c{}","seq":{index},"op":"SET","key":"key-{}","value":"{value}"}}"#,
            self.rng.gen_range(1..50),
            self.rng.gen_range(0..1000),
        );
        entry(index, self.term, &data)
    }

    /// Records `batch` as appended; returns how many earlier entries it kept.
    fn written(&mut self, batch: &[Entry]) -> usize {
        self.log.truncate(batch[0].index as usize - 1);
        self.log.extend(batch.iter().cloned());
        batch[0].index as usize - 1
    }

    fn next_batch(&mut self) -> Vec<Entry> {
        let last = self.log.len() as u64;
        let mut first = last + 1;
        let mut batch = Vec::new();
        let roll = self.rng.gen_range(0..100);
        if roll < 20 || last == 0 {
            self.term += 1;
            if roll < 8 && last > 4 {
                // A new leader overwrites entries this node never committed.
                first = last - self.rng.gen_range(0..4);
            }
            batch.push(entry(first, self.term, ""));
        }
        let n = match self.rng.gen_range(0..10) {
            0..=6 => self.rng.gen_range(1..=6),
            7..=8 => self.rng.gen_range(7..=20),
            _ => self.rng.gen_range(21..=45),
        };
        for _ in 0..n {
            let index = first + batch.len() as u64;
            let e = self.command(index);
            batch.push(e);
        }
        batch
    }
}

/// The sets of changed sectors (indices into `changed`) to try.
fn sector_subsets(changed: usize, rng: &mut StdRng) -> Vec<Vec<bool>> {
    if changed <= EXHAUSTIVE_SECTORS {
        return (0u32..1 << changed)
            .map(|bits| (0..changed).map(|i| bits & (1 << i) != 0).collect())
            .collect();
    }
    let mut subsets = Vec::new();
    for k in 0..=changed {
        subsets.push((0..changed).map(|i| i < k).collect()); // prefixes
        subsets.push((0..changed).map(|i| i >= k).collect()); // suffixes
    }
    for k in 0..changed {
        subsets.push((0..changed).map(|i| i != k).collect()); // one hole
        subsets.push((0..changed).map(|i| i == k).collect()); // one survivor
    }
    for _ in 0..SAMPLED_STATES {
        let keep = rng.gen_range(1..100);
        subsets.push((0..changed).map(|_| rng.gen_range(0..100) < keep).collect());
    }
    subsets
}

/// One crash point: the sync of one segment's part of a batch.
struct CrashPoint {
    /// Every file as the crash leaves it, except `segment`.
    files: Files,
    segment: String,
    /// What `segment` held, durably, before the write.
    before: Vec<u8>,
    /// What it held once the write was synced.
    after: Vec<u8>,
    /// The entries acknowledged (durable) by then, and every entry the
    /// recovered log may be a prefix of.
    synced: usize,
    log: Vec<Entry>,
}

/// Opens every crash state of `point`; returns how many it opened, and over
/// how many changed sectors.
fn check_crash_point(
    point: &CrashPoint,
    scratch: &Path,
    rng: &mut StdRng,
    what: &str,
) -> (usize, usize) {
    let start = point
        .before
        .iter()
        .zip(&point.after)
        .position(|(a, b)| a != b)
        .unwrap_or(point.before.len().min(point.after.len()));
    let sectors: Vec<usize> = (start / SECTOR..point.after.len().div_ceil(SECTOR))
        .filter(|&k| {
            let range = k * SECTOR..((k + 1) * SECTOR).min(point.after.len());
            let old = |i: usize| point.before.get(i).copied().unwrap_or(0);
            range.clone().any(|i| old(i) != point.after[i])
        })
        .collect();
    let grew = point.after.len() > point.before.len();
    let mut opened = 0;
    for kept in sector_subsets(sectors.len(), rng) {
        let mut bytes = point.before.clone();
        bytes.resize(point.after.len().max(bytes.len()), 0);
        for (&k, _) in sectors.iter().zip(&kept).filter(|(_, &keep)| keep) {
            let range = k * SECTOR..((k + 1) * SECTOR).min(point.after.len());
            bytes[range.clone()].copy_from_slice(&point.after[range]);
        }
        let mut variants = vec![bytes.clone()];
        if grew {
            // The new size was never made durable.
            variants.push(bytes[..point.before.len()].to_vec());
        }
        for bytes in variants {
            let mut files = point.files.clone();
            files.insert(point.segment.clone(), bytes);
            write_files(scratch, &files);
            let lost: Vec<usize> = sectors
                .iter()
                .zip(&kept)
                .filter(|(_, &keep)| !keep)
                .map(|(&k, _)| k)
                .collect();
            let state = format!(
                "{what}, {} lost of sectors {sectors:?}: {lost:?}",
                lost.len()
            );
            check_state(scratch, point, &state);
            opened += 1;
        }
    }
    (opened, sectors.len())
}

/// The state in `scratch` opens with every acknowledged entry and nothing
/// but a prefix of the log, and takes appends again.
fn check_state(scratch: &Path, point: &CrashPoint, state: &str) {
    let (mut s, rec) = match Storage::open(scratch, options()) {
        Ok(opened) => opened,
        Err(e) => panic!("{state}: does not open: {e}"),
    };
    let n = rec.entries.len();
    assert!(
        n >= point.synced,
        "{state}: {n} entries recovered, {} were acknowledged",
        point.synced
    );
    assert!(
        n <= point.log.len() && rec.entries[..] == point.log[..n],
        "{state}: the recovered log is not a prefix of what was written"
    );
    let next = entry(n as u64 + 1, TEST_TERM - 1, "after the crash");
    s.append(std::slice::from_ref(&next)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (_, again) = Storage::open(scratch, options())
        .unwrap_or_else(|e| panic!("{state}: does not reopen after an append: {e}"));
    assert!(again.warnings.is_empty(), "{state}: {:?}", again.warnings);
    assert_eq!(again.entries.len(), n + 1, "{state}");
    assert_eq!(again.entries[n], next, "{state}");
}

#[test]
fn every_sector_subset_of_an_unsynced_batch_opens_with_every_acknowledged_entry() {
    let dir = TempDir::new().unwrap();
    let scratch = TempDir::new().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5ec7_0a11);
    let mut workload = Workload::new();
    let (mut s, _) = super::tests::open(dir.path(), options());
    let (mut states, mut crash_points, mut rotations, mut truncations) = (0, 0, 0, 0);
    let (mut exhaustive, mut widest) = (0, 0);
    for k in 0..BATCHES {
        let batch = workload.next_batch();
        let (first, last) = (batch[0].index, batch[batch.len() - 1].index);
        let before = read_files(dir.path());
        let truncates = first <= s.last_index();
        s.append(&batch).unwrap();
        s.sync().unwrap();
        let after = read_files(dir.path());
        let kept = workload.written(&batch);

        // The segments this batch wrote to, in the order it wrote them, each
        // synced before the next was created, and where its records start.
        let touched: Vec<(String, u64, usize)> = s
            .segments
            .iter()
            .filter(|g| g.first_index <= last && g.first_index + g.offsets.len() as u64 > first)
            .map(|g| {
                let skip = first.saturating_sub(g.first_index) as usize;
                (
                    segment_name(g.first_index),
                    g.first_index,
                    g.offsets[skip] as usize,
                )
            })
            .collect();
        rotations += touched.len() - 1;
        truncations += usize::from(truncates);
        for (j, (name, seg_first, start)) in touched.iter().enumerate() {
            let mut files = after.clone();
            for (later, _, _) in &touched[j + 1..] {
                files.remove(later);
            }
            let before_bytes = match (j, before.get(name)) {
                // Truncation cut the file, durably, where the batch starts.
                (0, Some(old)) if truncates => old[..*start].to_vec(),
                (0, Some(old)) => old.clone(),
                _ => Vec::new(),
            };
            let point = CrashPoint {
                before: before_bytes,
                after: files.remove(name).unwrap(),
                files,
                segment: name.clone(),
                synced: kept
                    + if j > 0 {
                        (seg_first - first) as usize
                    } else {
                        0
                    },
                log: workload.log.clone(),
            };
            let what = format!(
                "batch {k} (entries {first}..={last}), crash syncing {name} (its records from byte {start})"
            );
            let (opened, sectors) = check_crash_point(&point, scratch.path(), &mut rng, &what);
            states += opened;
            crash_points += 1;
            exhaustive += usize::from(sectors <= EXHAUSTIVE_SECTORS);
            widest = widest.max(sectors);
        }
    }
    // The workload exercised what it is meant to.
    assert!(
        rotations >= 5 && truncations >= 2 && widest > EXHAUSTIVE_SECTORS,
        "{rotations} rotations, {truncations} truncations, at most {widest} sectors"
    );
    eprintln!(
        "{BATCHES} batches, {crash_points} crash points ({rotations} rotations, \
         {truncations} truncating batches; {exhaustive} with every sector subset, \
         the widest {widest} sectors), {states} crash states opened"
    );
}

#[test]
fn damage_to_a_synced_batch_followed_by_a_later_batch_is_corruption() {
    // The same workload; after each batch, every sector of the last segment
    // that holds records of an earlier batch (and not of the newest one) is
    // zeroed in turn, and separately has a bit flipped: the newest batch
    // starts after an fsync that covered that sector, so it was synced.
    let dir = TempDir::new().unwrap();
    let scratch = TempDir::new().unwrap();
    let mut workload = Workload::new();
    let (mut s, _) = super::tests::open(dir.path(), options());
    let mut damaged = 0;
    for _ in 0..BATCHES {
        let batch = workload.next_batch();
        let first = batch[0].index;
        let segments_before = s.segments.len();
        s.append(&batch).unwrap();
        s.sync().unwrap();
        workload.written(&batch);
        // Only where the newest batch went into the segment that already
        // held the previous ones.
        let Some(seg) = s.segments.last() else {
            continue;
        };
        if s.segments.len() != segments_before || seg.first_index > first {
            continue;
        }
        let newest = seg.offsets[(first - seg.first_index) as usize] as usize;
        let files = read_files(dir.path());
        let name = segment_name(seg.first_index);
        for k in 0..newest / SECTOR {
            for zero in [true, false] {
                let mut broken = files.clone();
                let bytes = broken.get_mut(&name).unwrap();
                if zero {
                    bytes[k * SECTOR..(k + 1) * SECTOR].fill(0);
                } else {
                    bytes[k * SECTOR + 100] ^= 0x10;
                }
                write_files(scratch.path(), &broken);
                match Storage::open(scratch.path(), options()) {
                    Err(StorageError::Corrupt { path, .. }) => {
                        assert_eq!(path, scratch.path().join(&name));
                    }
                    Err(e) => panic!("sector {k} (zeroed: {zero}): {e}"),
                    Ok((_, rec)) => panic!(
                        "sector {k} of {name} (zeroed: {zero}) was damaged after its sync, \
                         yet it opened with {} entries and {:?}",
                        rec.entries.len(),
                        rec.warnings
                    ),
                }
                damaged += 1;
            }
        }
    }
    assert!(damaged > 100, "only {damaged} damaged states");
}
