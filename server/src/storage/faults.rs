//! Fault injection for the write path's tests: each step can be made to
//! fail once, after a given number of runs. Does nothing in other builds.

use std::io;

use crate::durable::{self, Op};

/// The steps of the write path, each of which a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Prealloc,
    Write,
    SetLen,
    Sync,
    CreateSegment,
    HardState,
    Rename,
}

/// The fault to inject next, if any.
#[derive(Default)]
pub(super) struct Faults {
    /// (step, runs of it to let pass, errno): that run fails, once.
    #[cfg(test)]
    pub(super) next: std::cell::Cell<Option<(Step, u32, i32)>>,
}

impl Faults {
    #[inline(always)]
    pub(super) fn check(&self, step: Step) -> io::Result<()> {
        #[cfg(test)]
        if let Some((s, skip, errno)) = self.next.get() {
            if s == step {
                if skip > 0 {
                    self.next.set(Some((s, skip - 1, errno)));
                } else {
                    self.next.set(None);
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
        }
        let _ = step;
        Ok(())
    }
}

impl durable::Hook for Faults {
    #[inline(always)]
    fn before(&self, op: Op) -> io::Result<()> {
        match op {
            Op::Create => self.check(Step::CreateSegment),
            Op::Remove => Ok(()),
            Op::Rename => self.check(Step::Rename),
            Op::SyncFile | Op::SyncDir => self.check(Step::Sync),
        }
    }
}
