//! Records, the unit of a segment, and what recovery makes of a bad one.
//!
//! - record = `len: u32 LE | crc: u32 LE | payload`, where `crc` is CRC-32 of
//!   the four `len` bytes followed by the payload, so a damaged length is
//!   caught whenever the record still fits in the file.
//! - payload = `index: u64 LE | term: u64 LE | kind: u8 | data (UTF-8, the
//!   rest of the payload)`. `kind` is 0 for a command, 1 for a no-op, plus
//!   `BATCH_START` (0x80) on the first record written to a segment after it
//!   was last fsynced (the first of each batch, and the first of a segment):
//!   recovery uses it to tell a batch that never finished syncing from one
//!   that did.
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

use poncho_protocol::{Entry, EntryKind};

pub(super) const HEADER: usize = 8;
pub(super) const PAYLOAD_MIN: usize = 17;
pub(super) const PAYLOAD_MAX: usize = 64 << 20;
/// `kind` flag of the first record written to a segment after its last fsync.
pub(super) const BATCH_START: u8 = 0x80;
/// The unit a power loss keeps or loses whole: a disk sector.
pub(super) const SECTOR: usize = 512;

pub(super) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(super) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn encode_record(buf: &mut Vec<u8>, e: &Entry, batch_start: bool) {
    let len = ((PAYLOAD_MIN + e.data.len()) as u32).to_le_bytes();
    let kind = match e.kind {
        EntryKind::Command => 0u8,
        EntryKind::Noop => 1,
        EntryKind::Config => 2,
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

pub(super) struct Record<'a> {
    pub(super) index: u64,
    pub(super) term: u64,
    /// The entry kind, without `BATCH_START`.
    pub(super) kind: u8,
    pub(super) batch_start: bool,
    pub(super) data: &'a [u8],
    pub(super) end: usize,
}

/// Frames and checksums the record at `off`. An error is damage a crash can
/// leave behind; a record that passes its CRC but says nonsense cannot be.
pub(super) fn parse_record(b: &[u8], off: usize) -> Result<Record<'_>, &'static str> {
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
pub(super) fn synced_damage(b: &[u8], at: usize, next_index: u64, min_term: u64) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;

    use tempfile::TempDir;

    use super::super::segment::segment_path;
    use super::super::tests::{assert_corrupt, copy_dir, entry, flip, open, opts, run};

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
}
