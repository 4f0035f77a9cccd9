//! Why a request failed, typed so callers decide what to do with each case.

use std::fmt;

use poncho_protocol::ErrorReply;

/// Why a request failed, after every retry the deadline allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The cluster's answer (or, at the deadline, its last answer).
    Server(ErrorReply),
    /// No node could be reached, or none replied in time.
    Unreachable(String),
    /// A request sent but not answered before the deadline: its outcome is
    /// unknown (a write may still be applied).
    NoReply(String),
    /// A write's session expired while it was retried after an attempt that
    /// may have been applied: whether it was is unknown. The next write
    /// opens a new session.
    OutcomeUnknown(String),
    /// A reply that is not the protocol.
    Protocol(String),
    /// TLS refused the connection to every node that could be reached (an
    /// untrusted, expired or wrong-name certificate; a TLS port reached in
    /// plaintext, or the reverse). Final: retrying will not help.
    Tls(String),
    /// A node would not log the client in (a wrong user name or password):
    /// final, the same credentials are not tried again.
    Login(String),
    /// Ctrl-C while waiting.
    Interrupted,
    /// A lease-held recipe's lease is gone, or will be (it expired, was
    /// revoked, or no keepalive was answered for its TTL), or the key it
    /// held was: the lock or leadership is lost (see [`crate::recipes`]).
    LeaseLost(String),
    /// A wait (for a lock, a leadership) did not end by its deadline; what
    /// it had queued was taken back.
    Deadline(String),
}

impl ClientError {
    /// What `--json` reports as `error.code`.
    pub fn code(&self) -> String {
        match self {
            ClientError::Server(e) => e.code.to_string(),
            ClientError::Unreachable(_) => "UNREACHABLE".into(),
            ClientError::NoReply(_) => "TIMEOUT".into(),
            ClientError::OutcomeUnknown(_) => "OUTCOME_UNKNOWN".into(),
            ClientError::Protocol(_) => "PROTOCOL".into(),
            ClientError::Tls(_) => "TLS".into(),
            ClientError::Login(_) => "UNAUTHENTICATED".into(),
            ClientError::Interrupted => "INTERRUPTED".into(),
            ClientError::LeaseLost(_) => "LEASE_LOST".into(),
            ClientError::Deadline(_) => "TIMEOUT".into(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            ClientError::Server(e) => e.message.clone(),
            ClientError::Unreachable(m)
            | ClientError::NoReply(m)
            | ClientError::OutcomeUnknown(m)
            | ClientError::Protocol(m)
            | ClientError::Tls(m)
            | ClientError::Login(m)
            | ClientError::LeaseLost(m)
            | ClientError::Deadline(m) => m.clone(),
            ClientError::Interrupted => "cancelled (Ctrl-C)".into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for ClientError {}
