//! The data directory itself: creating it durably, and the lock that keeps a
//! second server out of it.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents, like `fs::create_dir_all`, and
/// with `fsync` makes each new entry durable by fsyncing the directory that
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
        match fs::create_dir(new) {
            // Created meanwhile by someone else: its entry still needs the sync.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    if fsync {
        for new in &missing {
            match new.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
                _ => sync_dir(Path::new("."))?,
            }
        }
    }
    Ok(())
}

/// fsyncs the directory `dir`, making its entries (files created, renamed or
/// removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    tests::record_sync(dir);
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

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
}
