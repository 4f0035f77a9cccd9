//! The process's open-file limit (RLIMIT_NOFILE): every connection is a
//! file descriptor, so the connection limits are only real if the soft limit
//! covers them. Linux's usual soft default is 1,024, with a hard limit far
//! above it, which an unprivileged process may raise its soft limit to.

use std::io;

/// The open-file limit before and after [`raise_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to `wanted`, or as near as the hard limit
/// allows; never lowers it.
pub fn raise_to(wanted: u64) -> io::Result<OpenFileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (before, hard): (u64, u64) = (limit.rlim_cur, limit.rlim_max);
    let target = wanted.min(hard);
    if target <= before {
        return Ok(OpenFileLimit {
            before,
            now: before,
            hard,
        });
    }
    limit.rlim_cur = target;
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OpenFileLimit {
        before,
        now: target,
        hard,
    })
}

/// Whether an `accept` failed for want of file descriptors (or memory for
/// one), rather than for the connection itself.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_the_limit_and_stays_within_the_hard_limit() {
        let first = raise_to(64).expect("getrlimit");
        assert_eq!(first.now, first.before, "64 is below any usable limit");
        let all = raise_to(u64::MAX).expect("setrlimit up to the hard limit");
        assert_eq!(all.now, all.hard.max(all.before), "{all:?}");
    }
}
