//! Log lines a remote can cause, limited: each kind at most once per window,
//! and at most so many kinds per window; the rest are counted, and the count
//! logged with the next line. A misconfigured peer retrying every second, or
//! a remote flooding the node, must not fill the log, while distinct events
//! close together are each logged at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One line per kind per window.
const WINDOW: Duration = Duration::from_secs(10);
/// At most this many kinds are logged per window.
const MAX_KINDS: usize = 64;

pub struct LogLimiter {
    /// When each kind was last logged.
    recent: HashMap<String, Instant>,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new()
    }
}

impl LogLimiter {
    pub fn new() -> LogLimiter {
        LogLimiter {
            recent: HashMap::new(),
            suppressed: 0,
        }
    }

    /// `message` at WARN, if no line of this `kind` was logged in the window.
    pub fn warn(&mut self, kind: &str, message: &str) {
        if let Some(line) = self.admit(kind, message) {
            warn!("{line}");
        }
    }

    /// `message` at ERROR, if no line of this `kind` was logged in the window.
    pub fn error(&mut self, kind: &str, message: &str) {
        if let Some(line) = self.admit(kind, message) {
            error!("{line}");
        }
    }

    fn admit(&mut self, kind: &str, message: &str) -> Option<String> {
        let now = Instant::now();
        self.recent.retain(|_, at| now.duration_since(*at) < WINDOW);
        if self.recent.contains_key(kind) || self.recent.len() >= MAX_KINDS {
            self.suppressed += 1;
            return None;
        }
        self.recent.insert(kind.to_string(), now);
        Some(match std::mem::take(&mut self.suppressed) {
            0 => message.to_string(),
            n => format!("{message} (and {n} more such lines not logged)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_admitted_once_per_window_and_the_rest_counted() {
        let mut log = LogLimiter::new();
        assert_eq!(log.admit("a", "first"), Some("first".into()));
        assert_eq!(log.admit("a", "again"), None);
        assert_eq!(
            log.admit("b", "other"),
            Some("other (and 1 more such lines not logged)".into())
        );
        for i in 0..MAX_KINDS {
            log.admit(&format!("k{i}"), "x");
        }
        assert_eq!(
            log.admit("new", "flood"),
            None,
            "at most MAX_KINDS per window"
        );
    }
}
