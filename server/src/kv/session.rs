//! Exactly-once client sessions.
//!
//! # Exactly-once writes (Raft thesis 6.3)
//! A client that does not hear back retries, and the retry may reach a new
//! leader after the first attempt was already committed. A client therefore
//! opens a session first: `REGISTER_CLIENT` goes through the log like a
//! write, and the session's id (`client_id`) is the log index of that entry.
//! The cluster, not the client, picks the id, because an index is unique for
//! the cluster's life: no two clients can share a session by choosing the
//! same id, and an id that expired is never handed out again, so a session
//! that is gone stays gone (a client-chosen id could be registered afresh and
//! its old retries applied again).
//!
//! A write that carries `client_id` and `seq` is applied at most once: the
//! store keeps, per session, the last `seq` it applied and that write's
//! result.
//!
//! - `seq` equal to the last: the retry gets the cached result; nothing is
//!   applied again.
//! - `seq` below the last: [`ErrorCode::StaleSequence`]; nothing changes.
//! - `seq` above the last: applied and cached.
//! - a `client_id` the store does not hold (expired, evicted, or never
//!   registered): [`ErrorCode::SessionExpired`]; nothing is applied. The
//!   store cannot tell a retry of an applied write from a new write once the
//!   session is gone, so it applies neither, and the client learns that the
//!   outcome of the write it was retrying is unknown.
//!
//! Clients issue one write at a time per `client_id`, so one cached result per
//! session is enough. Writes without `client_id` and `seq` are applied once
//! per entry: a client that resends one may have it applied twice.
//!
//! # Session expiry and eviction, deterministic
//! Sessions cannot be kept forever. The store's only clock is the `ts_ms` the
//! leader wrote into each command, taken as the maximum seen so far (leaders'
//! clocks may disagree a little, and the clock must never run backwards).
//! Before each command is applied, every session idle for
//! [`SESSION_TIMEOUT_MS`] of that log time is dropped, so whether a session is
//! alive for a command depends only on the command's place in the log.
//! [`MAX_SESSIONS`] and [`MAX_SESSION_BYTES`] bound memory: past either, the
//! least recently used session goes. Because the clock, the order and the
//! limits are all functions of the log, every node drops the same sessions at
//! the same index, and a dropped session's next write gets `SESSION_EXPIRED`
//! on every node alike: expiry and eviction are never silent.

use std::sync::Arc;

use poncho_protocol::{ErrorCode, ErrorReply, RegisterClientReply, MAX_KEY_BYTES, MAX_VALUE_BYTES};

use super::ops::{ApplyResult, Op};
use super::store::KvStore;

/// How long a client session survives without use, in log time (the maximum
/// `ts_ms` applied so far). Ten minutes is far longer than any client keeps
/// retrying one write (the shell gives up after seconds), yet short enough
/// that sessions of clients that went away do not pile up.
///
/// These limits are part of the state machine's definition: every node must
/// use the same values, or nodes would drop different sessions and a retry
/// could be applied on one node and deduplicated on another. A snapshot
/// records the limits its store ran with, and a restored store keeps them.
pub const SESSION_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// The most sessions kept at once. A session costs about 100 bytes plus its
/// cached reply, so 100,000 typical sessions take on the order of 20 MB; past
/// that, the least recently used is dropped, so a flood of one-off client ids
/// cannot grow memory without bound within the timeout.
pub const MAX_SESSIONS: usize = 100_000;

/// The most bytes of cached replies (key and CAS value, see
/// `session_bytes`) kept at once. A CAS reply can carry a 256 KiB value, so the
/// count cap alone would allow 25 GB; past this budget the least recently used
/// session is dropped.
pub const MAX_SESSION_BYTES: usize = 128 << 20;

/// Fixed bookkeeping charged to every session besides its strings: the maps'
/// entries, the id, the sequence number and timestamps.
pub(super) const SESSION_OVERHEAD_BYTES: usize = 96;

// The session just used must always fit, or the budget would evict it at once.
const _: () = assert!(MAX_SESSIONS >= 1);
const _: () =
    assert!(MAX_SESSION_BYTES >= 16 * (SESSION_OVERHEAD_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES));

/// One client's exactly-once state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    /// 0 until the session's first write (sequence numbers start at 1).
    pub(super) last_seq: u64,
    /// The reply to `last_seq` (for 0, the registration's), returned again to
    /// a retry. Shared, so copying
    /// a session (as a write does to a tree node a snapshot still holds) does
    /// not copy the reply's strings.
    pub(super) result: Arc<ApplyResult>,
    /// Index of the entry that last used this session: its key in
    /// `KvStore::sessions_by_use`.
    pub(super) last_used_index: u64,
    /// The log clock when the session was last used.
    pub(super) last_used_ts_ms: u64,
    /// What this session counts against `MAX_SESSION_BYTES`.
    pub(super) bytes: usize,
    /// The user that registered it, who alone may write in it while auth
    /// is on (its cached replies are that user's).
    pub(super) user: Option<Arc<str>>,
}

impl Session {
    /// A session that holds `result` as its reply to `last_seq`, used by the
    /// entry at `index` at log time `ts_ms`.
    pub(super) fn new(
        last_seq: u64,
        result: ApplyResult,
        index: u64,
        ts_ms: u64,
        user: Option<Arc<str>>,
    ) -> Session {
        Session {
            last_seq,
            bytes: session_bytes(&result) + user.as_ref().map_or(0, |u| u.len()),
            result: Arc::new(result),
            last_used_index: index,
            last_used_ts_ms: ts_ms,
            user,
        }
    }
}

/// What a session counts against `MAX_SESSION_BYTES`: its reply's strings
/// plus a fixed overhead.
pub(super) fn session_bytes(result: &ApplyResult) -> usize {
    SESSION_OVERHEAD_BYTES + result.string_bytes()
}

impl KvStore {
    /// Opens the session `index`: nothing written yet, so `last_seq` 0, with
    /// the registration's reply as its cached result.
    pub(super) fn register(&mut self, index: u64, user: Option<String>) -> ApplyResult {
        if let Err(denied) = self.auth.check(user.as_deref(), Op::RegisterClient.needs()) {
            return ApplyResult::Error(denied);
        }
        let result = ApplyResult::Register(RegisterClientReply { client_id: index });
        let user = user.map(Arc::from);
        let session = Session::new(0, result.clone(), index, self.clock_ms, user);
        self.insert_session(index, session);
        self.evict_over_limits();
        result
    }

    /// Applies `op` as `client_id`'s write `seq`, at most once (see the
    /// module doc). The session is looked up once: this is every session
    /// write's path.
    pub(super) fn apply_in_session(
        &mut self,
        index: u64,
        client_id: u64,
        seq: u64,
        op: Op,
        user: Option<String>,
    ) -> ApplyResult {
        // Asked before the session is borrowed; used only for a new seq.
        let allowed = self.check_op(user.as_deref(), &op);
        let Some(session) = self.sessions.get_mut(&client_id) else {
            return ApplyResult::Error(self.not_open(client_id));
        };
        if self.auth.enabled && session.user.as_deref() != user.as_deref() {
            // Not this user's session (another user's, or one opened before
            // auth was on): for this user it is not open. Its cached reply
            // is not theirs to see, and a client re-registers on this code.
            return ApplyResult::Error(ErrorReply::new(
                ErrorCode::SessionExpired,
                format!(
                    "client session {client_id} is not open for this user: it was opened by \
                     another user, or before auth was enabled; the command was not applied. \
                     Open a session of your own with REGISTER_CLIENT"
                ),
            ));
        }
        if seq < session.last_seq {
            return ApplyResult::Error(ErrorReply::new(
                ErrorCode::StaleSequence,
                format!(
                    "client {client_id} sent seq {seq}, but seq {} was already applied; \
                     the command was not applied (use a larger seq for a new write)",
                    session.last_seq
                ),
            ));
        }
        let retry = seq == session.last_seq;
        if !retry {
            // Refused before the session is touched, like the refusals
            // above: a denied write does not use the session.
            if let Err(denied) = allowed {
                return ApplyResult::Error(denied);
            }
        }
        // Either way the entry uses the session: it moves to the back of
        // `sessions_by_use`.
        let previous_use = std::mem::replace(&mut session.last_used_index, index);
        session.last_used_ts_ms = self.clock_ms;
        let result = if retry {
            // A retry: answer as the first time.
            ApplyResult::clone(&session.result)
        } else {
            let result = self.data.apply(index, op);
            let bytes = session_bytes(&result) + session.user.as_ref().map_or(0, |u| u.len());
            let old_bytes = std::mem::replace(&mut session.bytes, bytes);
            session.last_seq = seq;
            session.result = Arc::new(result.clone());
            self.session_bytes = self.session_bytes - old_bytes + bytes;
            result
        };
        let moved = self.sessions_by_use.remove(&previous_use);
        debug_assert_eq!(moved, Some(client_id));
        self.sessions_by_use.insert(index, client_id);
        if !retry {
            // A retry changes neither the count nor the bytes.
            self.evict_over_limits();
        }
        result
    }

    /// The reply to a write in a session the store does not hold.
    fn not_open(&self, client_id: u64) -> ErrorReply {
        ErrorReply::new(
            ErrorCode::SessionExpired,
            format!(
                "client session {client_id} is not open: it expired (unused for {} ms of log \
                 time), was evicted (more than {} sessions), or was never registered; the \
                 command was not applied, and if it retries an earlier attempt, that \
                 attempt's outcome is unknown. Open a new session with REGISTER_CLIENT",
                self.session_timeout_ms, self.max_sessions
            ),
        )
    }

    /// Adds `session` as `client_id` (replacing one of that id, which apply
    /// never has: an id is its registration's index), with its bookkeeping.
    /// What apply keeps true of the session index, checked by the tests
    /// after every entry: one `sessions_by_use` entry per session, at its
    /// last use, and the byte count the sum of the sessions'.
    #[cfg(test)]
    pub(super) fn check_session_index(&self) {
        assert_eq!(self.sessions_by_use.len(), self.sessions.len());
        for (client_id, session) in self.sessions.iter() {
            assert_eq!(
                self.sessions_by_use.get(&session.last_used_index),
                Some(client_id),
                "session {client_id} is not indexed at its last use"
            );
        }
        let bytes: usize = self.sessions.values().map(|s| s.bytes).sum();
        assert_eq!(bytes, self.session_bytes);
    }

    pub(super) fn insert_session(&mut self, client_id: u64, session: Session) {
        let (index, bytes) = (session.last_used_index, session.bytes);
        if let Some(old) = self.sessions.insert(client_id, session) {
            self.sessions_by_use.remove(&old.last_used_index);
            self.session_bytes -= old.bytes;
        }
        self.sessions_by_use.insert(index, client_id);
        self.session_bytes += bytes;
    }

    /// Drops least recently used sessions while over a cap.
    fn evict_over_limits(&mut self) {
        while self.sessions.len() > self.max_sessions || self.session_bytes > self.max_session_bytes
        {
            self.drop_least_recently_used();
        }
    }

    /// Drops sessions idle for the timeout. Each call looks only at the front
    /// of `sessions_by_use`, so the cost is one lookup plus one removal per
    /// session dropped: amortized O(log n) per apply.
    pub(super) fn expire_sessions(&mut self) {
        while let Some((_, client_id)) = self.sessions_by_use.get_min() {
            let idle_ms = self.clock_ms - self.sessions[client_id].last_used_ts_ms;
            if idle_ms < self.session_timeout_ms {
                break;
            }
            self.drop_least_recently_used();
        }
    }

    fn drop_least_recently_used(&mut self) {
        let Some(&(index, _)) = self.sessions_by_use.get_min() else {
            return;
        };
        if let Some(client_id) = self.sessions_by_use.remove(&index) {
            let session = self
                .sessions
                .remove(&client_id)
                .expect("every entry of sessions_by_use names a session");
            self.session_bytes -= session.bytes;
        }
    }
}
