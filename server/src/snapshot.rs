//! Snapshot files: the state machine at one log index, so the log before it
//! can be compacted and a follower that is too far behind can be sent the
//! state instead of the entries.
//!
//! # Format
//! A UTF-8 text file of `\n`-terminated lines:
//! - line 1, the header: `{"poncho_snapshot":1,"index":N,"term":T,"members":[...],
//!   "membership":{...}}` (the last log index and term the snapshot covers, the
//!   member ids then, and the configuration then: members with addresses and
//!   learners, as a `CONFIG` entry holds it; files written before membership
//!   changes have only the ids);
//! - the body: the lines the state machine wrote, opaque here (without `\n`);
//! - the last line, the footer: `{"lines":L,"bytes":B,"crc32":C}`, where `L` is
//!   the number of body lines (header and footer not counted), `B` the number
//!   of bytes before the footer line and `C` the CRC-32 of those `B` bytes.
//!
//! The footer comes last so a snapshot can be written in one streaming pass,
//! and a file cut short anywhere (a crash, a transfer that stopped) lacks a
//! footer that matches, so it cannot pass for a complete snapshot.
//!
//! # Files in the directory
//! - `snap-<index, 20 digits>-<term, 20 digits>.snap`: complete snapshots, so
//!   a name sort is an (index, term) sort.
//! - `snap-<index>-<term>.<process token>-<n>.tmp`: one being written or
//!   received. It only gets its final name by an atomic rename once complete
//!   (and fsynced), so a `.snap` name always means a complete file; a crash
//!   leaves at most a temp file, which `prune` deletes later.
//! - `snap-<index>-<term>.snap.corrupt`: a snapshot that failed verification,
//!   set aside by `latest_valid` for an operator to look at.
//!
//! Memory stays bounded by the longest line (plus fixed buffers) whatever the
//! snapshot's size: every pass over a file streams it.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use poncho_protocol::{Membership, NodeId};
use serde::{Deserialize, Serialize};

use crate::datadir;
use crate::durable::{self, io_err, PathError};

const VERSION: u64 = 1;
/// Longest footer that can be valid: three fields of at most 20 digits each
/// plus the punctuation is well under this.
const FOOTER_MAX: u64 = 256;
/// A header only holds two numbers and the member ids; anything longer is
/// damage (for example a lost newline merging it with the body).
const HEADER_MAX: usize = 1 << 20;
const READ_BUF: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The configuration as of `index`; `None` in a file written before
    /// configurations were recorded (the node then keeps the one it has).
    pub membership: Option<Membership>,
}

#[derive(Debug)]
pub enum SnapshotError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    /// A caller or peer broke the rules: a chunk at the wrong offset, a body
    /// line with a newline in it, an offset past the end of the file.
    Protocol(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SnapshotError::Corrupt { path, reason } => {
                write!(f, "snapshot {} is corrupt: {reason}", path.display())
            }
            SnapshotError::Protocol(msg) => write!(f, "snapshot protocol error: {msg}"),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { source, .. } => Some(source),
            SnapshotError::Corrupt { .. } | SnapshotError::Protocol(_) => None,
        }
    }
}

impl PathError for SnapshotError {
    fn io(path: PathBuf, source: io::Error) -> Self {
        SnapshotError::Io { path, source }
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    poncho_snapshot: u64,
    index: u64,
    term: u64,
    members: Vec<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<&'a Membership>,
}

/// Unknown header fields are allowed, so a later version can add optional
/// information without making older nodes reject the file.
#[derive(Deserialize)]
struct HeaderIn {
    poncho_snapshot: u64,
    index: u64,
    term: u64,
    #[serde(default)]
    membership: Option<Membership>,
}

/// The footer has a fixed shape; anything else in it is damage.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Footer {
    lines: u64,
    bytes: u64,
    crc32: u32,
}

fn snap_path(dir: &Path, index: u64, term: u64) -> PathBuf {
    dir.join(format!("snap-{index:020}-{term:020}.snap"))
}

/// `(index, term)` from a complete snapshot's file name.
fn parse_snap_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (index, term) = rest.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// Unique to this process run (pid and start time), so `prune` can tell the
/// temp files of transfers still in progress here from those a crashed run
/// left behind, even when the pid is reused (as in a container, where the
/// server is often pid 1 on every start).
fn process_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}x{nanos:x}", std::process::id())
    })
}

/// Deletes its file when dropped, unless `keep` was called: a snapshot that
/// is abandoned half-way, or fails verification, leaves nothing behind.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn create(dir: &Path, index: u64, term: u64) -> Result<(TempFile, File), SnapshotError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("snap-{index:020}-{term:020}.{}-{n}.tmp", process_token());
            let path = dir.join(name);
            // `create_new`: never write into a file some other writer owns.
            // Its name need not be durable: the rename that installs it is.
            match durable::create_new(&path, false, &()) {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(f) if f.source.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(f) => return Err(f.into_err()),
            }
        }
    }

    fn keep(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is deleted by a later `prune` (after a
            // restart) and never mistaken for a snapshot, given its name.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A temp file being written through a buffer. A write that fails part-way
/// leaves it `failed`: its contents no longer match what the caller counted,
/// so nothing more may be written to it or installed from it.
struct TempOut {
    // Declared before `tmp` so the file is closed before it is deleted.
    out: BufWriter<File>,
    tmp: TempFile,
    fsync: bool,
    failed: bool,
}

impl TempOut {
    fn create(dir: &Path, index: u64, term: u64, fsync: bool) -> Result<TempOut, SnapshotError> {
        datadir::create_dir_durable(dir, fsync).map_err(io_err(dir))?;
        let (tmp, file) = TempFile::create(dir, index, term)?;
        Ok(TempOut {
            out: BufWriter::with_capacity(READ_BUF, file),
            tmp,
            fsync,
            failed: false,
        })
    }

    /// Refuses if an earlier write failed.
    fn check(&self) -> Result<(), SnapshotError> {
        if self.failed {
            return Err(earlier_write_failed(&self.tmp.path));
        }
        Ok(())
    }

    fn write(&mut self, b: &[u8]) -> Result<(), SnapshotError> {
        self.check()?;
        if let Err(e) = self.out.write_all(b) {
            self.failed = true;
            return Err(io_err(&self.tmp.path)(e));
        }
        Ok(())
    }

    /// Flushes the buffer: the file is complete on disk (if not yet durable).
    fn flush(self) -> Result<Flushed, SnapshotError> {
        self.check()?;
        let TempOut {
            out, tmp, fsync, ..
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| io_err(&tmp.path)(e.into_error()))?;
        Ok(Flushed { file, tmp, fsync })
    }
}

/// A temp file written whole, to be verified or installed.
struct Flushed {
    file: File,
    tmp: TempFile,
    fsync: bool,
}

impl Flushed {
    /// Moves the file to `to`, durably (see [`durable::replace`]), before the
    /// caller builds on it (compacts the log, say).
    fn install(self, to: &Path) -> Result<(), SnapshotError> {
        let Flushed {
            file,
            mut tmp,
            fsync,
        } = self;
        let result = durable::replace(file, &tmp.path, to, fsync, &());
        if !matches!(&result, Err(f) if f.op != durable::Op::SyncDir) {
            // Renamed: the temp name is gone.
            tmp.keep();
        }
        result.map_err(durable::Failure::into_err)
    }
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, SnapshotError> {
    // Plain structs of numbers cannot fail to encode; this just avoids a panic path.
    serde_json::to_string(value).map_err(|e| SnapshotError::Protocol(format!("cannot encode: {e}")))
}

/// Streams a new snapshot into `dir` atomically: temp file, then fsync,
/// rename to `snap-<index:020>-<term:020>.snap`, fsync dir. Dropped without
/// `finish()` = temp file removed.
pub struct SnapshotWriter {
    final_path: PathBuf,
    /// Once a write to it failed, it no longer matches `crc`/`bytes`.
    out: TempOut,
    crc: crc32fast::Hasher,
    bytes: u64,
    lines: u64,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("path", &self.final_path)
            .field("bytes", &self.bytes)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    pub fn create(
        dir: &Path,
        meta: &SnapshotMeta,
        fsync: bool,
    ) -> Result<SnapshotWriter, SnapshotError> {
        let out = TempOut::create(dir, meta.index, meta.term, fsync)?;
        let header = encode_json(&HeaderOut {
            poncho_snapshot: VERSION,
            index: meta.index,
            term: meta.term,
            members: meta
                .membership
                .as_ref()
                .map_or_else(Vec::new, |m| m.ids().into_iter().collect()),
            membership: meta.membership.as_ref(),
        })?;
        let mut writer = SnapshotWriter {
            final_path: snap_path(dir, meta.index, meta.term),
            out,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            lines: 0,
        };
        writer.put(header.as_bytes())?;
        writer.put(b"\n")?;
        Ok(writer)
    }

    /// Appends one body line; `line` must not contain `\n`.
    pub fn write_line(&mut self, line: &str) -> Result<(), SnapshotError> {
        if line.contains('\n') {
            return Err(SnapshotError::Protocol(format!(
                "snapshot line {} contains a newline",
                self.lines + 1
            )));
        }
        self.put(line.as_bytes())?;
        self.put(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    /// Writes the footer and moves the file into place; returns its path.
    pub fn finish(self) -> Result<PathBuf, SnapshotError> {
        let SnapshotWriter {
            final_path,
            mut out,
            crc,
            bytes,
            lines,
        } = self;
        out.check()?;
        let footer = encode_json(&Footer {
            lines,
            bytes,
            crc32: crc.finalize(),
        })?;
        out.write(footer.as_bytes())?;
        out.write(b"\n")?;
        out.flush()?.install(&final_path)?;
        Ok(final_path)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), SnapshotError> {
        self.out.write(b)?;
        self.crc.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }
}

/// Receives a snapshot streamed from the leader in chunks (byte offsets into
/// the leader's file), then verifies it and moves it into place atomically.
pub struct SnapshotReceiver {
    dir: PathBuf,
    index: u64,
    term: u64,
    out: TempOut,
    received: u64,
}

impl fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReceiver")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    pub fn create(
        dir: &Path,
        index: u64,
        term: u64,
        fsync: bool,
    ) -> Result<SnapshotReceiver, SnapshotError> {
        let out = TempOut::create(dir, index, term, fsync)?;
        Ok(SnapshotReceiver {
            dir: dir.to_path_buf(),
            index,
            term,
            out,
            received: 0,
        })
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// Appends a chunk; `offset` must equal the bytes received so far (else
    /// Protocol error, nothing written). Returns the new total.
    ///
    /// Chunks may be duplicated or reordered on the way (the leader resends
    /// after a timeout), so the offset check is what keeps the file a plain
    /// concatenation of the leader's bytes; the caller answers with
    /// `received()` so the leader resumes from there.
    pub fn write_chunk(&mut self, offset: u64, data: &str) -> Result<u64, SnapshotError> {
        self.out.check()?;
        if offset != self.received {
            return Err(SnapshotError::Protocol(format!(
                "chunk of snapshot {}/{} at offset {offset}, but {} bytes have been received",
                self.index, self.term, self.received
            )));
        }
        self.out.write(data.as_bytes())?;
        self.received += data.len() as u64;
        Ok(self.received)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Verifies the whole file (format, checksum, header index/term match),
    /// fsyncs, renames into place, fsyncs dir. On failure the temp file is
    /// removed.
    pub fn finish(self) -> Result<(SnapshotMeta, PathBuf), SnapshotError> {
        let SnapshotReceiver {
            dir,
            index,
            term,
            out,
            received: _,
        } = self;
        let flushed = out.flush()?;
        let (verified, _) = verify(&flushed.tmp.path)?;
        let meta = verified.meta;
        if (meta.index, meta.term) != (index, term) {
            let why = format!(
                "header says index {} term {}, but the leader announced index {index} term {term}",
                meta.index, meta.term
            );
            return Err(corrupt(&flushed.tmp.path, why));
        }
        let final_path = snap_path(&dir, index, term);
        flushed.install(&final_path)?;
        Ok((meta, final_path))
    }
}

/// A write to the temp file at `path` failed part-way before, so its contents
/// no longer match what was counted: nothing more may be written or installed.
fn earlier_write_failed(path: &Path) -> SnapshotError {
    io_err(path)(io::Error::other("an earlier write to this snapshot failed"))
}

/// The body lines of a verified snapshot, read from disk one at a time.
#[derive(Debug)]
pub struct SnapshotLines {
    path: PathBuf,
    reader: BufReader<File>,
    /// Body lines not yet returned.
    remaining: u64,
    /// Bytes left before the footer, so a file changed since it was verified
    /// cannot make a read run on into the footer or beyond.
    left: u64,
}

impl SnapshotLines {
    fn fail(&mut self, e: SnapshotError) -> Option<Result<String, SnapshotError>> {
        self.remaining = 0;
        Some(Err(e))
    }
}

impl Iterator for SnapshotLines {
    type Item = Result<String, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let mut line = Vec::new();
        if let Err(e) = (&mut self.reader)
            .take(self.left)
            .read_until(b'\n', &mut line)
        {
            let e = io_err(&self.path)(e);
            return self.fail(e);
        }
        self.left -= line.len() as u64;
        // Verification counted the lines, so this only fails if the file was
        // changed underneath us.
        if line.pop() != Some(b'\n') {
            let e = corrupt(&self.path, "file changed after it was verified");
            return self.fail(e);
        }
        self.remaining -= 1;
        match String::from_utf8(line) {
            Ok(s) => Some(Ok(s)),
            Err(_) => {
                let e = corrupt(&self.path, "file changed after it was verified (not UTF-8)");
                self.fail(e)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl FusedIterator for SnapshotLines {}

/// Opens and fully verifies a snapshot file, returning its meta and an
/// iterator over body lines (re-reading the file; memory bounded, not the
/// whole file in RAM).
pub fn open(path: &Path) -> Result<(SnapshotMeta, SnapshotLines), SnapshotError> {
    // The same handle is read again, so a rename over `path` in between
    // cannot swap in a file that was not verified.
    let (v, file) = verify(path)?;
    let mut reader = BufReader::with_capacity(READ_BUF, file);
    reader
        .seek(SeekFrom::Start(v.body_start))
        .map_err(io_err(path))?;
    let lines = SnapshotLines {
        path: path.to_path_buf(),
        reader,
        remaining: v.lines,
        left: v.body_end - v.body_start,
    };
    Ok((v.meta, lines))
}

/// The newest snapshot in `dir` that verifies, with warnings naming any newer
/// corrupt ones (which are renamed to `*.corrupt` so they are not tried again).
///
/// Only corruption moves on to an older snapshot; an I/O error is returned,
/// since a snapshot that merely could not be read now may be fine later.
/// A missing directory holds no snapshot.
// The signature is the one the driver is written against; an alias would
// only hide the shape.
#[allow(clippy::type_complexity)]
pub fn latest_valid(
    dir: &Path,
) -> Result<(Option<(SnapshotMeta, PathBuf)>, Vec<String>), SnapshotError> {
    let mut found = list_snapshots(dir)?;
    found.sort_unstable_by(|a, b| b.cmp(a));
    let mut warnings = Vec::new();
    for (index, term, path) in found {
        let reason = match verify(&path) {
            Ok((v, _)) if (v.meta.index, v.meta.term) == (index, term) => {
                return Ok((Some((v.meta, path)), warnings));
            }
            // Renamed by hand, or damaged in a way the CRC missed: either way
            // the name cannot be trusted to say what the file holds.
            Ok((v, _)) => format!(
                "header says index {} term {}, the file name index {index} term {term}",
                v.meta.index, v.meta.term
            ),
            Err(SnapshotError::Corrupt { reason, .. }) => reason,
            Err(e) => return Err(e),
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".corrupt");
        let aside = dir.join(name);
        fs::rename(&path, &aside).map_err(io_err(&path))?;
        warnings.push(format!(
            "snapshot {} is corrupt ({reason}); renamed to {}",
            path.display(),
            aside.display()
        ));
    }
    Ok((None, warnings))
}

/// Up to `max_bytes` of the file from `offset`, cut at a line boundary (a
/// single longer line is returned whole), and whether this chunk reaches the
/// end of file. For streaming to followers with bounded memory.
///
/// `offset` must be 0 or just after a newline: every chunk is whole lines, so
/// it is valid UTF-8 and the receiver's partial file is always a prefix of
/// whole lines.
pub fn read_chunk(
    path: &Path,
    offset: u64,
    max_bytes: usize,
) -> Result<(String, bool), SnapshotError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if offset > len {
        return Err(SnapshotError::Protocol(format!(
            "offset {offset} is past the end of {} ({len} bytes)",
            path.display()
        )));
    }
    if offset == len {
        return Ok((String::new(), true));
    }
    if offset > 0 {
        file.seek(SeekFrom::Start(offset - 1))
            .map_err(io_err(path))?;
        let mut before = [0u8; 1];
        file.read_exact(&mut before).map_err(io_err(path))?;
        if before[0] != b'\n' {
            return Err(SnapshotError::Protocol(format!(
                "offset {offset} in {} is not at a line boundary",
                path.display()
            )));
        }
    }
    // Never past the length seen above, whatever happens to the file meanwhile.
    let mut reader = BufReader::new(file.take(len - offset));
    let want = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let mut data = Vec::with_capacity(max_bytes.min(READ_BUF));
    (&mut reader)
        .take(want)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    match data.iter().rposition(|&b| b == b'\n') {
        Some(p) => data.truncate(p + 1),
        // Not even one line fits: send the first line alone, whole.
        None => {
            reader.read_until(b'\n', &mut data).map_err(io_err(path))?;
        }
    }
    if data.last() != Some(&b'\n') {
        return Err(corrupt(path, "does not end with a newline"));
    }
    let done = offset + data.len() as u64 == len;
    let data = String::from_utf8(data).map_err(|_| corrupt(path, "not UTF-8"))?;
    Ok((data, done))
}

/// Deletes all but the newest `keep` snapshot files (never fewer than 1), and
/// stale temp files: those of earlier runs of the process, never those of a
/// writer or receiver still working in this one.
///
/// `*.corrupt` files are left for an operator.
pub fn prune(dir: &Path, keep: usize) -> Result<(), SnapshotError> {
    let mut found = list_snapshots(dir)?;
    found.sort_unstable_by(|a, b| b.cmp(a));
    for (_, _, path) in found.iter().skip(keep.max(1)) {
        remove_if_present(path)?;
    }
    let ours = format!(".{}-", process_token());
    for name in file_names(dir)? {
        if name.starts_with("snap-") && name.ends_with(".tmp") && !name.contains(&ours) {
            remove_if_present(&dir.join(name))?;
        }
    }
    // No directory fsync: a deletion a crash undoes is harmless, it is
    // simply done again by the next prune.
    Ok(())
}

pub fn file_size(path: &Path) -> Result<u64, SnapshotError> {
    Ok(fs::metadata(path).map_err(io_err(path))?.len())
}

fn remove_if_present(path: &Path) -> Result<(), SnapshotError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The names of the files in `dir` that are valid UTF-8 (ours all are); none
/// if `dir` does not exist.
fn file_names(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let items = match fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for item in items {
        if let Ok(name) = item.map_err(io_err(dir))?.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

fn list_snapshots(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, SnapshotError> {
    Ok(file_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let (index, term) = parse_snap_name(&name)?;
            Some((index, term, dir.join(name)))
        })
        .collect())
}

struct Verified {
    meta: SnapshotMeta,
    /// Offset of the first body line (just after the header).
    body_start: u64,
    /// Offset of the footer line: where the body ends.
    body_end: u64,
    lines: u64,
}

/// Checks a whole snapshot file in one streaming pass: the footer's shape and
/// position, the CRC and byte count of everything before it, the line count,
/// UTF-8, and the header. Returns the open file for a second pass.
fn verify(path: &Path) -> Result<(Verified, File), SnapshotError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    // The footer first: it is small and at a known place, so a truncated or
    // garbage file is rejected without reading all of it.
    let (footer, body_end) = read_footer(path, &mut file, len)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let seen = scan(path, &mut file, body_end)?;
    if seen.crc != footer.crc32 {
        let why = format!(
            "checksum mismatch: footer says {}, the {body_end} bytes before it hash to {}",
            footer.crc32, seen.crc
        );
        return Err(corrupt(path, why));
    }
    if !seen.utf8 {
        return Err(corrupt(path, "not UTF-8"));
    }
    if seen.header_too_long {
        return Err(corrupt(
            path,
            format!("header line is over {HEADER_MAX} bytes"),
        ));
    }
    // `body_end` is just after a newline (the footer search guarantees it),
    // so every line before the footer is whole and the header is one of them.
    let Some(body_lines) = seen.newlines.checked_sub(1) else {
        return Err(corrupt(path, "no header line before the footer"));
    };
    if body_lines != footer.lines {
        let why = format!(
            "footer says {} body lines, found {body_lines}",
            footer.lines
        );
        return Err(corrupt(path, why));
    }
    let h: HeaderIn = serde_json::from_slice(&seen.header)
        .map_err(|e| corrupt(path, format!("bad header: {e}")))?;
    if h.poncho_snapshot != VERSION {
        let why = format!("unsupported snapshot format version {}", h.poncho_snapshot);
        return Err(corrupt(path, why));
    }
    let verified = Verified {
        meta: SnapshotMeta {
            index: h.index,
            term: h.term,
            membership: h.membership,
        },
        body_start: seen.header.len() as u64 + 1,
        body_end,
        lines: footer.lines,
    };
    Ok((verified, file))
}

/// What one pass over the bytes before the footer found.
struct Scan {
    crc: u32,
    newlines: u64,
    /// The first line, without its newline; collecting stops past
    /// `HEADER_MAX`.
    header: Vec<u8>,
    header_too_long: bool,
    /// Whether all of it is UTF-8.
    utf8: bool,
}

/// Reads the `body_end` bytes from `file`'s position, hashing and checking
/// them as they stream past.
fn scan(path: &Path, file: &mut File, body_end: u64) -> Result<Scan, SnapshotError> {
    let mut crc = crc32fast::Hasher::new();
    let mut newlines = 0u64;
    let mut header = Vec::new();
    let mut header_done = false;
    let mut header_too_long = false;
    let mut utf8 = Utf8Check::default();
    let mut utf8_ok = true;
    let mut buf = vec![0u8; READ_BUF];
    let mut left = body_end;
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(corrupt(path, "file shrank while it was being verified")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        let chunk = &buf[..n];
        left -= n as u64;
        crc.update(chunk);
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        utf8_ok = utf8_ok && utf8.feed(chunk);
        if !header_done && !header_too_long {
            let end = chunk.iter().position(|&b| b == b'\n');
            header.extend_from_slice(&chunk[..end.unwrap_or(n)]);
            header_done = end.is_some();
            // Stop collecting, but keep hashing: the checksum makes the
            // better error message if this is damage.
            header_too_long = header.len() > HEADER_MAX;
        }
    }
    Ok(Scan {
        crc: crc.finalize(),
        newlines,
        header,
        header_too_long,
        utf8: utf8_ok && utf8.finish(),
    })
}

/// The footer and the offset it starts at (which it must also state).
fn read_footer(path: &Path, file: &mut File, len: u64) -> Result<(Footer, u64), SnapshotError> {
    if len == 0 {
        return Err(corrupt(path, "empty file"));
    }
    let tail_len = len.min(FOOTER_MAX);
    let tail_start = len - tail_len;
    file.seek(SeekFrom::Start(tail_start))
        .map_err(io_err(path))?;
    // At most FOOTER_MAX, so the cast cannot truncate.
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).map_err(io_err(path))?;
    let Some((&b'\n', before)) = tail.split_last() else {
        return Err(corrupt(path, "does not end with a newline (truncated?)"));
    };
    let start = match before.iter().rposition(|&b| b == b'\n') {
        Some(p) => p + 1,
        None if tail_start == 0 => {
            return Err(corrupt(path, "only one line: no header or no footer"));
        }
        None => {
            return Err(corrupt(
                path,
                "last line is too long to be a footer (truncated?)",
            ))
        }
    };
    let footer: Footer = serde_json::from_slice(&before[start..])
        .map_err(|e| corrupt(path, format!("bad footer (truncated?): {e}")))?;
    let footer_start = tail_start + start as u64;
    if footer.bytes != footer_start {
        let why = format!(
            "footer says {} bytes precede it, but it starts at byte {footer_start}",
            footer.bytes
        );
        return Err(corrupt(path, why));
    }
    Ok((footer, footer_start))
}

/// UTF-8 validation over a stream of chunks, which may split a character.
#[derive(Default)]
struct Utf8Check {
    /// The start of a character the last chunk ended in the middle of.
    carry: Vec<u8>,
}

impl Utf8Check {
    /// Whether everything fed so far is valid, apart from a character that
    /// the next chunk may still complete.
    fn feed(&mut self, mut chunk: &[u8]) -> bool {
        // Finish a split character a byte at a time (at most three bytes).
        while !self.carry.is_empty() {
            let Some((&b, rest)) = chunk.split_first() else {
                return true;
            };
            self.carry.push(b);
            chunk = rest;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                self.carry.extend_from_slice(&chunk[e.valid_up_to()..]);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the stream ended on a character boundary.
    fn finish(&self) -> bool {
        self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            membership: Some(crate::raft::voters_of(&[1, 2, 3])),
        }
    }

    fn body(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"{{"k":"key{i}","v":"välue-{i}-€"}}"#))
            .collect()
    }

    fn write(dir: &Path, index: u64, term: u64, lines: &[String]) -> PathBuf {
        let mut w = SnapshotWriter::create(dir, &meta(index, term), false).unwrap();
        for l in lines {
            w.write_line(l).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(path: &Path) -> (SnapshotMeta, Vec<String>) {
        let (m, lines) = open(path).unwrap();
        (m, lines.collect::<Result<_, _>>().unwrap())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n = file_names(dir).unwrap();
        n.sort();
        n
    }

    fn assert_corrupt<T: fmt::Debug>(r: Result<T, SnapshotError>, what: &str) {
        match r {
            Err(SnapshotError::Corrupt { .. }) => {}
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn write_and_open_round_trip() {
        let dir = TempDir::new().unwrap();
        // A line longer than every buffer, with multi-byte characters that
        // some read boundary is bound to split, and an empty line.
        let mut lines = body(50);
        lines.push("€é".repeat(70_000));
        lines.push(String::new());
        let path = write(dir.path(), 42, 7, &lines);
        assert_eq!(
            path,
            dir.path()
                .join("snap-00000000000000000042-00000000000000000007.snap")
        );
        let (m, got) = read_all(&path);
        assert_eq!(m, meta(42, 7));
        assert_eq!(got, lines);
        let (_, iter) = open(&path).unwrap();
        assert_eq!(iter.size_hint(), (52, Some(52)));

        // No body at all.
        let empty = write(dir.path(), 43, 7, &[]);
        assert_eq!(read_all(&empty), (meta(43, 7), Vec::new()));
        assert_eq!(names(dir.path()).len(), 2, "no temp files left");

        // The format is the documented one.
        let text = fs::read_to_string(&empty).unwrap();
        let header = concat!(
            r#"{"poncho_snapshot":1,"index":43,"term":7,"members":[1,2,3],"membership":"#,
            r#"{"members":[{"id":1,"addr":"127.0.0.1:10001"},{"id":2,"addr":"127.0.0.1:10002"},"#,
            r#"{"id":3,"addr":"127.0.0.1:10003"}]}}"#
        );
        let crc = crc32fast::hash(format!("{header}\n").as_bytes());
        let footer = format!(
            r#"{{"lines":0,"bytes":{},"crc32":{crc}}}"#,
            header.len() + 1
        );
        assert_eq!(text, format!("{header}\n{footer}\n"));
        assert_eq!(file_size(&empty).unwrap(), text.len() as u64);
    }

    #[test]
    fn a_file_from_before_configurations_were_recorded_reads_with_none() {
        let dir = TempDir::new().unwrap();
        let header = r#"{"poncho_snapshot":1,"index":5,"term":2,"members":[1,2,3]}"#;
        let crc = crc32fast::hash(format!("{header}\n").as_bytes());
        let footer = format!(
            r#"{{"lines":0,"bytes":{},"crc32":{crc}}}"#,
            header.len() + 1
        );
        let path = snap_path(dir.path(), 5, 2);
        fs::write(&path, format!("{header}\n{footer}\n")).unwrap();
        let (meta, lines) = read_all(&path);
        assert_eq!((meta.index, meta.term, meta.membership), (5, 2, None));
        assert!(lines.is_empty());
    }

    #[test]
    fn a_line_with_a_newline_is_refused() {
        let dir = TempDir::new().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), &meta(1, 1), false).unwrap();
        w.write_line("ok").unwrap();
        assert!(matches!(
            w.write_line("a\nb"),
            Err(SnapshotError::Protocol(_))
        ));
        // Nothing was written, so the snapshot is still good.
        let path = w.finish().unwrap();
        assert_eq!(read_all(&path).1, vec!["ok".to_string()]);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_corruption() {
        let dir = TempDir::new().unwrap();
        let path = write(dir.path(), 5, 2, &body(3));
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            for mask in [0x01, 0x20, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= mask;
                fs::write(&path, &bad).unwrap();
                assert_corrupt(
                    open(&path).map(|(m, _)| m),
                    &format!("byte {at} ^ {mask:#x}"),
                );
            }
        }
        fs::write(&path, &good).unwrap();
        assert!(open(&path).is_ok());
    }

    #[test]
    fn a_truncated_file_is_corruption() {
        let dir = TempDir::new().unwrap();
        let path = write(dir.path(), 5, 2, &body(3));
        let good = fs::read(&path).unwrap();
        for cut in 0..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            assert_corrupt(open(&path).map(|(m, _)| m), &format!("cut at {cut}"));
        }
        // And so is anything appended.
        let mut longer = good.clone();
        longer.extend_from_slice(b"{\"k\":1}\n");
        fs::write(&path, &longer).unwrap();
        assert_corrupt(open(&path).map(|(m, _)| m), "extra line");
    }

    #[test]
    fn a_header_naming_another_index_is_corruption_for_latest_valid() {
        let dir = TempDir::new().unwrap();
        let older = write(dir.path(), 10, 1, &body(2));
        let path = write(dir.path(), 20, 1, &body(2));
        fs::rename(&path, snap_path(dir.path(), 30, 1)).unwrap();
        let (found, warnings) = latest_valid(dir.path()).unwrap();
        assert_eq!(found, Some((meta(10, 1), older)));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("header says index 20"), "{warnings:?}");
    }

    #[test]
    fn latest_valid_falls_back_past_a_corrupt_newest() {
        let dir = TempDir::new().unwrap();
        assert_eq!(
            latest_valid(&dir.path().join("missing")).unwrap(),
            (None, vec![])
        );
        assert_eq!(latest_valid(dir.path()).unwrap(), (None, vec![]));
        write(dir.path(), 10, 1, &body(5));
        let middle = write(dir.path(), 20, 2, &body(6));
        let newest = write(dir.path(), 30, 2, &body(7));
        assert_eq!(
            latest_valid(dir.path()).unwrap(),
            (Some((meta(30, 2), newest.clone())), vec![])
        );

        let mut b = fs::read(&newest).unwrap();
        b[70] ^= 0x01;
        fs::write(&newest, b).unwrap();
        let (found, warnings) = latest_valid(dir.path()).unwrap();
        assert_eq!(found, Some((meta(20, 2), middle.clone())));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains(&newest.display().to_string()),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("checksum"), "{warnings:?}");
        // Set aside, so the next start neither tries it nor warns again.
        assert!(!newest.exists());
        let aside = dir
            .path()
            .join("snap-00000000000000000030-00000000000000000002.snap.corrupt");
        assert!(aside.exists());
        assert_eq!(
            latest_valid(dir.path()).unwrap(),
            (Some((meta(20, 2), middle)), vec![])
        );

        // Nothing valid at all.
        let dir = TempDir::new().unwrap();
        let only = write(dir.path(), 10, 1, &body(1));
        fs::write(&only, b"garbage\n").unwrap();
        let (found, warnings) = latest_valid(dir.path()).unwrap();
        assert_eq!((found, warnings.len()), (None, 1));
    }

    /// Streams `from` in `chunk`-byte pieces into a receiver in `to`.
    fn stream(
        from: &Path,
        to: &Path,
        chunk: usize,
    ) -> Result<(SnapshotMeta, PathBuf), SnapshotError> {
        let (m, _) = open(from)?;
        let mut rx = SnapshotReceiver::create(to, m.index, m.term, true)?;
        assert_eq!((rx.index(), rx.term()), (m.index, m.term));
        let mut offset = 0;
        loop {
            let (data, done) = read_chunk(from, offset, chunk)?;
            assert!(data.ends_with('\n'));
            offset = rx.write_chunk(offset, &data)?;
            assert_eq!(rx.received(), offset);
            if done {
                break;
            }
        }
        assert_eq!(offset, file_size(from)?);
        rx.finish()
    }

    #[test]
    fn streaming_in_small_chunks_reproduces_the_snapshot() {
        let leader = TempDir::new().unwrap();
        let follower = TempDir::new().unwrap();
        let mut lines = body(40);
        lines.insert(7, "x".repeat(300)); // longer than a chunk: sent whole
        let src = write(leader.path(), 99, 4, &lines);
        let (m, dst) = stream(&src, follower.path(), 64).unwrap();
        assert_eq!(m, meta(99, 4));
        assert_eq!(dst, snap_path(follower.path(), 99, 4));
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        assert_eq!(read_all(&dst), (meta(99, 4), lines));
        assert_eq!(
            names(follower.path()),
            vec![dst.file_name().unwrap().to_str().unwrap()]
        );
        assert_eq!(latest_valid(follower.path()).unwrap().0, Some((m, dst)));
    }

    #[test]
    fn read_chunk_cuts_at_line_boundaries() {
        let dir = TempDir::new().unwrap();
        let lines = ["a".repeat(10), "b".repeat(30), "c".repeat(5)];
        let path = write(dir.path(), 1, 1, &lines);
        let header_len = fs::read_to_string(&path).unwrap().find('\n').unwrap() as u64 + 1;
        let len = file_size(&path).unwrap();
        // Room for the first line and a bit: just the first line.
        let (c, done) = read_chunk(&path, header_len, 20).unwrap();
        assert_eq!(
            (c.as_str(), done),
            (format!("{}\n", lines[0]).as_str(), false)
        );
        // No room for a whole line: the line alone, whole.
        let (c, _) = read_chunk(&path, header_len + 11, 0).unwrap();
        assert_eq!(c, format!("{}\n", lines[1]));
        // Everything.
        let (c, done) = read_chunk(&path, 0, 1 << 20).unwrap();
        assert_eq!((c.len() as u64, done), (len, true));
        assert_eq!(read_chunk(&path, len, 10).unwrap(), (String::new(), true));
        for bad in [1, header_len + 3, len + 1] {
            assert!(
                matches!(read_chunk(&path, bad, 10), Err(SnapshotError::Protocol(_))),
                "offset {bad}"
            );
        }
    }

    #[test]
    fn a_chunk_at_the_wrong_offset_is_a_protocol_error() {
        let leader = TempDir::new().unwrap();
        let follower = TempDir::new().unwrap();
        let src = write(leader.path(), 9, 3, &body(10));
        let mut rx = SnapshotReceiver::create(follower.path(), 9, 3, false).unwrap();
        let (first, _) = read_chunk(&src, 0, 100).unwrap();
        assert!(matches!(
            rx.write_chunk(5, &first),
            Err(SnapshotError::Protocol(_))
        ));
        assert_eq!(rx.received(), 0);
        let n = rx.write_chunk(0, &first).unwrap();
        // A duplicate of the chunk just written, and one from further on.
        assert!(matches!(
            rx.write_chunk(0, &first),
            Err(SnapshotError::Protocol(_))
        ));
        let (second, _) = read_chunk(&src, n, 100).unwrap();
        let after = n + second.len() as u64;
        let (third, _) = read_chunk(&src, after, 1 << 20).unwrap();
        assert!(matches!(
            rx.write_chunk(after, &third),
            Err(SnapshotError::Protocol(_))
        ));
        assert_eq!(rx.received(), n);
        rx.write_chunk(n, &second).unwrap();
        rx.write_chunk(after, &third).unwrap();
        let (m, dst) = rx.finish().unwrap();
        assert_eq!(m, meta(9, 3));
        assert_eq!(fs::read(&src).unwrap(), fs::read(dst).unwrap());
    }

    #[test]
    fn a_bad_transfer_is_refused_and_leaves_nothing() {
        let leader = TempDir::new().unwrap();
        let follower = TempDir::new().unwrap();
        let old = write(follower.path(), 5, 1, &body(2));
        let src = write(leader.path(), 9, 3, &body(10));
        // Incomplete: no footer arrived.
        let mut rx = SnapshotReceiver::create(follower.path(), 9, 3, true).unwrap();
        let (first, done) = read_chunk(&src, 0, 200).unwrap();
        assert!(!done);
        rx.write_chunk(0, &first).unwrap();
        assert_corrupt(rx.finish(), "incomplete transfer");
        // Complete, but not the snapshot announced.
        let mut rx = SnapshotReceiver::create(follower.path(), 9, 4, true).unwrap();
        let (all, _) = read_chunk(&src, 0, 1 << 20).unwrap();
        rx.write_chunk(0, &all).unwrap();
        assert_corrupt(rx.finish(), "wrong term");
        assert_eq!(
            names(follower.path()),
            vec![old.file_name().unwrap().to_str().unwrap()]
        );
    }

    #[test]
    fn a_receiver_dropped_mid_transfer_leaves_no_snapshot() {
        let leader = TempDir::new().unwrap();
        let follower = TempDir::new().unwrap();
        let old = write(follower.path(), 5, 1, &body(2));
        let src = write(leader.path(), 9, 3, &body(20));
        let mut rx = SnapshotReceiver::create(follower.path(), 9, 3, true).unwrap();
        let (data, _) = read_chunk(&src, 0, 300).unwrap();
        rx.write_chunk(0, &data).unwrap();
        assert_eq!(
            names(follower.path()).len(),
            2,
            "the temp file exists meanwhile"
        );
        drop(rx);
        assert_eq!(
            names(follower.path()),
            vec![old.file_name().unwrap().to_str().unwrap()]
        );
        assert_eq!(
            latest_valid(follower.path()).unwrap(),
            (Some((meta(5, 1), old.clone())), vec![])
        );

        // A writer dropped before finish() likewise.
        let mut w = SnapshotWriter::create(follower.path(), &meta(12, 3), true).unwrap();
        w.write_line("half").unwrap();
        drop(w);
        assert_eq!(
            names(follower.path()),
            vec![old.file_name().unwrap().to_str().unwrap()]
        );
    }

    #[test]
    fn prune_keeps_the_newest_n() {
        let dir = TempDir::new().unwrap();
        let paths: Vec<PathBuf> = (1..=5)
            .map(|i| write(dir.path(), i * 10, 1, &body(1)))
            .collect();
        // A temp file from an earlier run, another file, and a writer still
        // at work in this run.
        let stale = dir
            .path()
            .join("snap-00000000000000000060-00000000000000000001.1x2-0.tmp");
        fs::write(&stale, b"half").unwrap();
        fs::write(dir.path().join("hardstate"), b"x").unwrap();
        let mut live = SnapshotWriter::create(dir.path(), &meta(70, 1), false).unwrap();
        prune(dir.path(), 2).unwrap();
        assert!(!stale.exists());
        let left: Vec<PathBuf> = list_snapshots(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.2)
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, paths[3..]);
        assert!(dir.path().join("hardstate").exists());
        live.write_line("still writing").unwrap();
        let newest = live.finish().unwrap();
        // Never fewer than one.
        prune(dir.path(), 0).unwrap();
        let left: Vec<PathBuf> = list_snapshots(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.2)
            .collect();
        assert_eq!(left, vec![newest]);
        assert_eq!(names(dir.path()).len(), 2);
        prune(&dir.path().join("missing"), 1).unwrap();
    }

    #[test]
    fn utf8_check_accepts_every_split_of_valid_text_and_rejects_bad_bytes() {
        let text = "a€bé😀c".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let mut c = Utf8Check::default();
                let ok = c.feed(&text[..i]) && c.feed(&text[i..j]) && c.feed(&text[j..]);
                assert!(ok && c.finish(), "split at {i}, {j}");
            }
        }
        let mut c = Utf8Check::default();
        assert!(
            c.feed(&text[..2]) && !c.finish(),
            "a dangling half character"
        );
        let mut c = Utf8Check::default();
        assert!(c.feed(b"a\xe2") && !c.feed(b"b"));
        assert!(!Utf8Check::default().feed(&[0xff]));
    }

    #[test]
    fn a_snapshot_and_the_directory_made_for_it_are_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let top = TempDir::new().unwrap();
        let dir = top.path().join("data");
        let path = write(&dir, 5, 1, &body(3));
        for p in [&dir, &path] {
            let mode = fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
    }
}
