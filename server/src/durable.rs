//! Durable file operations, shared by the log (`storage`), the snapshots and
//! the data directory: what it takes for a file created, replaced or removed
//! to stay that way through a power loss.
//!
//! POSIX makes a file's data durable with an fsync of the file, but its name
//! (a create, a rename, an unlink) only with an fsync of the directory that
//! holds it; and it promises no order between changes to names that were not
//! synced, so each operation here syncs the directory before it returns.
//!
//! Each operation says which step failed ([`Failure::op`]): after a failed
//! fsync the kernel may have dropped the dirty pages, so a caller must not
//! treat a later success as covering them (see `storage::Health::Failed`).
//! Tests inject failures before each step through a [`Hook`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An error type that can carry an I/O error at a path: lets the modules
/// that use these operations share [`io_err`] and [`Failure::into_err`].
pub trait PathError {
    fn io(path: PathBuf, source: io::Error) -> Self;
}

/// Wraps an I/O error at `path` in the caller's error type, for `map_err`.
pub fn io_err<E: PathError>(path: &Path) -> impl FnOnce(io::Error) -> E + '_ {
    move |source| E::io(path.to_path_buf(), source)
}

/// A step of a durable operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Remove,
    Rename,
    /// fsync of a file's data.
    SyncFile,
    /// fsync of a directory, for the names in it.
    SyncDir,
}

/// Runs before each step of an operation; an error fails that step as if the
/// system call had returned it. `()` lets every step run.
pub trait Hook {
    fn before(&self, op: Op) -> io::Result<()>;
}

impl Hook for () {
    fn before(&self, _op: Op) -> io::Result<()> {
        Ok(())
    }
}

/// A step of a durable operation failed: `op` on `path`.
#[derive(Debug)]
pub struct Failure {
    pub op: Op,
    pub path: PathBuf,
    pub source: io::Error,
}

impl Failure {
    /// Whether an fsync failed: what the file or directory holds on disk is
    /// then unknown, whatever a later fsync says.
    pub fn is_sync(&self) -> bool {
        matches!(self.op, Op::SyncFile | Op::SyncDir)
    }

    pub fn into_err<E: PathError>(self) -> E {
        E::io(self.path, self.source)
    }
}

/// Runs the hook and then `f` for step `op` on `path`.
fn step<T>(
    hook: &impl Hook,
    op: Op,
    path: &Path,
    f: impl FnOnce() -> io::Result<T>,
) -> Result<T, Failure> {
    hook.before(op)
        .and_then(|()| f())
        .map_err(|source| Failure {
            op,
            path: path.to_path_buf(),
            source,
        })
}

/// The directory holding `path`'s name (`.` for a bare relative name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// fsyncs the directory `dir`, making its entries (files created, renamed or
/// removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    tests::record_sync(dir);
    File::open(dir)?.sync_all()
}

/// [`sync_dir`] as a step: the hook runs first.
pub fn sync_dir_step(dir: &Path, hook: &impl Hook) -> Result<(), Failure> {
    step(hook, Op::SyncDir, dir, || sync_dir(dir))
}

/// Creates `path`, which must not exist, for writing, readable by its user
/// alone ([`crate::datadir::FILE_MODE`]); with `fsync` its name is durable
/// when this returns.
pub fn create_new(path: &Path, fsync: bool, hook: &impl Hook) -> Result<File, Failure> {
    let file = step(hook, Op::Create, path, || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::datadir::FILE_MODE)
            .open(path)
    })?;
    if fsync {
        sync_dir_step(parent_dir(path), hook)?;
    }
    Ok(file)
}

/// Removes `path`; with `fsync` the removal is durable when this returns (a
/// failed directory sync still leaves the file gone from this process's view).
pub fn remove(path: &Path, fsync: bool, hook: &impl Hook) -> Result<(), Failure> {
    step(hook, Op::Remove, path, || fs::remove_file(path))?;
    if fsync {
        sync_dir_step(parent_dir(path), hook)?;
    }
    Ok(())
}

/// Moves the complete file `from` (open as `file`) over `to`, atomically:
/// with `fsync` its data is made durable before the rename, or a crash could
/// leave the name `to` on blocks that never reached the disk, and the rename
/// itself is durable when this returns. Until the rename whatever `to` held
/// stands.
pub fn replace(
    file: File,
    from: &Path,
    to: &Path,
    fsync: bool,
    hook: &impl Hook,
) -> Result<(), Failure> {
    if fsync {
        step(hook, Op::SyncFile, from, || file.sync_all())?;
    }
    drop(file);
    step(hook, Op::Rename, to, || fs::rename(from, to))?;
    if fsync {
        sync_dir_step(parent_dir(to), hook)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::{Cell, RefCell};
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use super::*;

    thread_local! {
        static SYNCED: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
    }

    pub(crate) fn record_sync(dir: &Path) {
        SYNCED.with(|s| {
            if let Some(list) = s.borrow_mut().as_mut() {
                list.push(dir.to_path_buf());
            }
        });
    }

    /// Runs `f` and returns the directories this thread fsynced meanwhile.
    pub(crate) fn dirs_synced_by(f: impl FnOnce()) -> Vec<PathBuf> {
        SYNCED.with(|s| *s.borrow_mut() = Some(Vec::new()));
        f();
        SYNCED.with(|s| s.borrow_mut().take().unwrap_or_default())
    }

    /// Fails the first step of kind `op`, recording every step it sees.
    struct FailAt {
        op: Op,
        seen: RefCell<Vec<Op>>,
        fired: Cell<bool>,
    }

    impl FailAt {
        fn new(op: Op) -> FailAt {
            FailAt {
                op,
                seen: RefCell::new(Vec::new()),
                fired: Cell::new(false),
            }
        }
    }

    impl Hook for FailAt {
        fn before(&self, op: Op) -> io::Result<()> {
            self.seen.borrow_mut().push(op);
            if op == self.op && !self.fired.replace(true) {
                return Err(io::Error::other("injected"));
            }
            Ok(())
        }
    }

    #[test]
    fn each_operation_syncs_the_directory_that_holds_the_name() {
        let dir = tempfile::TempDir::new().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let synced = dirs_synced_by(|| {
            let mut file = create_new(&a, true, &()).unwrap();
            file.write_all(b"one").unwrap();
            replace(file, &a, &b, true, &()).unwrap();
            remove(&b, true, &()).unwrap();
        });
        assert_eq!(synced, vec![dir.path().to_path_buf(); 3]);
        assert!(!a.exists() && !b.exists());
        // Without fsync nothing is synced, and the names change all the same.
        let synced = dirs_synced_by(|| {
            let file = create_new(&a, false, &()).unwrap();
            replace(file, &a, &b, false, &()).unwrap();
        });
        assert!(synced.is_empty(), "{synced:?}");
        assert!(b.exists());
        assert_eq!(parent_dir(Path::new("bare")), Path::new("."));
    }

    #[test]
    fn a_failed_step_names_itself_and_stops_the_operation() {
        let dir = tempfile::TempDir::new().unwrap();
        let (from, to) = (dir.path().join("new"), dir.path().join("old"));
        fs::write(&to, b"old").unwrap();
        for (op, sync, path) in [
            (Op::SyncFile, true, &from),
            (Op::Rename, false, &to),
            (Op::SyncDir, true, &dir.path().to_path_buf()),
        ] {
            fs::write(&from, b"new").unwrap();
            let file = OpenOptions::new().write(true).open(&from).unwrap();
            let hook = FailAt::new(op);
            let failure = replace(file, &from, &to, true, &hook).unwrap_err();
            assert_eq!((failure.op, failure.is_sync()), (op, sync));
            assert_eq!(&failure.path, path);
            assert_eq!(
                hook.seen.borrow().last(),
                Some(&op),
                "stopped at the failure"
            );
            let want: &[u8] = if op == Op::SyncDir { b"new" } else { b"old" };
            assert_eq!(fs::read(&to).unwrap(), want, "{op:?}");
            fs::write(&to, b"old").unwrap();
        }
        let hook = FailAt::new(Op::Remove);
        assert_eq!(remove(&to, true, &hook).unwrap_err().op, Op::Remove);
        assert!(to.exists());
        assert_eq!(*hook.seen.borrow(), vec![Op::Remove]);
    }
}
