//! The data directory itself: creating it durably and private to its user,
//! and the lock that keeps a second server out of it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::durable::{self, io_err, PathError};

/// The file in a data directory that the server using it holds locked.
pub const LOCK_FILE: &str = "LOCK";

/// The mode of every directory the server creates: its user's alone, since
/// the data directory holds every key and value and, with users, their
/// password hashes (as etcd does). The umask can only narrow it.
pub const DIR_MODE: u32 = 0o700;

/// The mode of every file the server creates in a data directory.
pub const FILE_MODE: u32 = 0o600;

/// The permission bits that give a data directory's group or others access.
const OTHERS_BITS: u32 = 0o077;

/// An exclusive OS lock (`flock`) on `<dir>/LOCK`, held until dropped, which
/// for a server is its whole life: the kernel releases it when the process
/// ends, however it ends, so a crash never leaves a stale lock behind. The
/// file holds the holder's PID and a newline, for the refusal message and
/// for operators; the file itself is never deleted (that would race with a
/// server locking it).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its PID if the file says.
    InUse {
        dir: PathBuf,
        pid: Option<u32>,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse { dir, pid } => {
                let holder = match pid {
                    Some(pid) => format!("PID {pid}"),
                    None => "PID unknown".to_string(),
                };
                write!(
                    f,
                    "data directory {} is in use by another process ({holder}), which holds \
                     the lock on {}: two servers must never share a data directory; stop \
                     that one, or give this one its own --id or --data-dir",
                    dir.display(),
                    dir.join(LOCK_FILE).display()
                )
            }
            LockError::Io { path, source } => write!(f, "cannot lock {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

impl PathError for LockError {
    fn io(path: PathBuf, source: io::Error) -> Self {
        LockError::Io { path, source }
    }
}

impl DirLock {
    /// Locks `dir` (which must exist) without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        // Never truncated on open: until we hold the lock the PID in it is
        // the holder's.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0).map_err(io_err(&path))?;
        match file.write_all_at(pid.as_bytes(), 0) {
            Ok(()) => {}
            // The lock is what keeps others out, and a node must start on
            // a full disk: the file is left empty ("PID unknown").
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(DirLock { _file: file })
    }
}

/// Creates `dir` and any missing parents (each [`DIR_MODE`]), like
/// `fs::create_dir_all`, and with `fsync` makes each new entry durable by fsyncing the directory that
/// gained it: without that a power loss can forget a directory the log and
/// hard state were already made durable in. Does nothing to a directory that
/// exists.
pub fn create_dir_durable(dir: &Path, fsync: bool) -> io::Result<()> {
    // The missing directories, deepest first.
    let mut missing = Vec::new();
    let mut at = dir;
    loop {
        match fs::metadata(at) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                let msg = format!("{} exists and is not a directory", at.display());
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, msg));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at),
            Err(e) => return Err(e),
        }
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            // A relative path's first component lives in the current directory.
            _ => break,
        }
    }
    for new in missing.iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(new) {
            // Created meanwhile by someone else: its entry still needs the sync.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    if fsync {
        for new in &missing {
            durable::sync_dir(durable::parent_dir(new))?;
        }
    }
    Ok(())
}

/// A warning for the operator if `dir`'s group or others have any access to
/// it: the server never changes the mode of a directory it did not create
/// (an operator may have meant it; an older version made it so), but says
/// how to close it. `None` also when its mode cannot be read: opening it
/// will then say why.
pub fn access_warning(dir: &Path) -> Option<String> {
    let mode = fs::metadata(dir).ok()?.permissions().mode();
    (mode & OTHERS_BITS != 0).then(|| {
        format!(
            "group or others can access data directory {} (mode {:o}), which holds every \
             key and value and users' password hashes; to make it this user's alone run: \
             chmod -R go-rwx {}",
            dir.display(),
            mode & 0o777,
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_cannot_be_locked_again_until_released() {
        let dir = tempfile::TempDir::new().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let path = dir.path().join(LOCK_FILE);
        let pid = std::process::id();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{pid}\n"));
        // flock locks belong to the open file, so this process is refused too.
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&err, LockError::InUse { pid: Some(p), .. } if *p == pid),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains(&format!("PID {pid}")), "{msg}");
        // The refused attempt left the holder's PID in place.
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{pid}\n"));
        drop(lock);
        // A stale PID from an earlier holder is simply replaced.
        fs::write(&path, "999999999\nleftover").unwrap();
        let _lock = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{pid}\n"));
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_the_lock_file_are_created_for_their_owner_only() {
        let top = tempfile::TempDir::new().unwrap();
        let dir = top.path().join("a/b");
        create_dir_durable(&dir, false).unwrap();
        for d in [top.path().join("a"), dir.clone()] {
            assert_eq!(
                mode(&d) & OTHERS_BITS,
                0,
                "{} is {:o}",
                d.display(),
                mode(&d)
            );
        }
        let _lock = DirLock::acquire(&dir).unwrap();
        let lock = dir.join(LOCK_FILE);
        assert_eq!(mode(&lock) & OTHERS_BITS, 0, "LOCK is {:o}", mode(&lock));
        assert_eq!(access_warning(&dir), None);
    }

    #[test]
    fn a_directory_others_can_access_is_warned_about_and_left_alone() {
        let dir = tempfile::TempDir::new().unwrap();
        for open in [0o755, 0o750, 0o711, 0o702] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(open)).unwrap();
            create_dir_durable(dir.path(), false).unwrap();
            let warning = access_warning(dir.path()).expect("a warning");
            let shown = dir.path().display();
            assert!(
                warning.contains(&format!("data directory {shown} (mode {open:o})")),
                "{warning}"
            );
            assert!(
                warning.contains(&format!("chmod -R go-rwx {shown}")),
                "{warning}"
            );
            assert_eq!(mode(dir.path()), open);
        }
        assert_eq!(access_warning(&dir.path().join("missing")), None);
    }
}
