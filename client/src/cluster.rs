//! The cluster client: one blocking TCP connection at a time, which follows
//! `NOT_LEADER` redirects, retries the errors that promise a retry is safe
//! (and the outcome-unknown ones, with the same client_id/seq), and moves to
//! another node when the one it talks to dies, all until a deadline.
//!
//! Writes go through a session the cluster opens (`REGISTER_CLIENT`, before
//! the first write). When the cluster answers `SESSION_EXPIRED`, the write
//! was not applied this time; if no earlier attempt of it can have been
//! applied either, it is sent again in a new session, and otherwise its
//! outcome is unknown ([`ClientError::OutcomeUnknown`]).
//!
//! Over TLS ([`ClusterClient::with_tls`]), a node that TLS refuses (its
//! certificate, or a port that does not speak what the client speaks) is
//! not retried within the request: the others are tried, and if TLS refused
//! every node, or the leader a redirect names, the request fails at once
//! with [`ClientError::Tls`].
//!
//! A membership change or leader transfer ([`Route::Change`]) follows
//! redirects too, but after an attempt that may have been applied (no
//! reply, `TIMEOUT`, `LEADERSHIP_LOST`) it is not sent again: it fails with
//! [`ClientError::OutcomeUnknown`].
//!
//! With credentials ([`ClusterClient::with_credentials`]), every connection
//! it opens (the first, after a redirect, after a lost node, `connect_to`)
//! sends `AUTHENTICATE` first, before `REGISTER_CLIENT` or any request. A
//! node that refuses the login ends the request at once with
//! [`ClientError::Login`], and every later one without sending those
//! credentials again (until [`ClusterClient::login`]); `UNAUTHENTICATED`
//! and `PERMISSION_DENIED` are final answers too.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_peer, encode_request, ClientRequest, ErrorCode, ErrorReply, RaftMessage, SessionFields,
    StatusReply,
};

use crate::auth::{authenticate, Credentials, OpenError};
use crate::conn::{ConnError, Connection, Reply, SLICE};
use crate::error::ClientError;
use crate::leader::{retry_for, Retry, Route, Targets};
use crate::session::{registered_id, Session};
use crate::tls::Tls;

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub struct ClusterClient {
    targets: Targets,
    conn: Option<Connection>,
    pub timeout: Duration,
    pub verbose: bool,
    session: Session,
    req_id: u64,
    interrupt: Option<Arc<AtomicBool>>,
    tls: Option<Tls>,
    credentials: Option<Credentials>,
    /// A node refused `credentials`: the answer to every later attempt.
    refused_login: Option<ClientError>,
}

/// The nodes TLS refused during one request, with why: not tried again in it.
#[derive(Default)]
struct Refused(Vec<(String, String)>);

impl Refused {
    fn contains(&self, addr: &str) -> bool {
        self.0.iter().any(|(a, _)| a == addr)
    }

    fn add(&mut self, addr: &str, why: String) {
        if !self.contains(addr) {
            self.0.push((addr.to_string(), why));
        }
    }

    fn why(&self, addr: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, m)| m.as_str())
    }

    /// Every reason, one after another.
    fn text(&self) -> String {
        let reasons: Vec<&str> = self.0.iter().map(|(_, m)| m.as_str()).collect();
        reasons.join("; ")
    }
}

/// The state of one request's retries.
struct Attempts {
    deadline: Instant,
    backoff: Duration,
    /// The last failure, reported if the deadline passes.
    last: Option<ClientError>,
    redirects: u32,
    /// Whether an attempt may have been applied: sent and never answered,
    /// or answered with an outcome-unknown error.
    uncertain: bool,
    refused: Refused,
}

/// How a client opens a connection: over TLS or not, logged in or not
/// (`AUTHENTICATE` first), with Ctrl-C and `--verbose` as the client has
/// them. [`ClusterClient`] and [`crate::Watcher`] open theirs this way.
#[derive(Clone, Copy)]
pub(crate) struct Opener<'a> {
    pub tls: Option<&'a Tls>,
    pub credentials: Option<&'a Credentials>,
    pub interrupt: Option<&'a AtomicBool>,
    pub verbose: bool,
}

impl Opener<'_> {
    fn note(&self, text: impl AsRef<str>) {
        if self.verbose {
            eprintln!("-- {}", text.as_ref());
        }
    }

    /// A new connection to `addr` by `deadline`, logged in first if there
    /// are credentials.
    pub fn open(&self, addr: &str, deadline: Instant) -> Result<Connection, OpenError> {
        match self.tls {
            Some(_) => self.note(format!("connecting to {addr} (TLS)")),
            None => self.note(format!("connecting to {addr}")),
        }
        let mut conn = Connection::connect(addr, deadline, self.tls).map_err(OpenError::Conn)?;
        let Some(credentials) = self.credentials else {
            return Ok(conn);
        };
        self.note(format!("logging in as {:?}", credentials.user()));
        authenticate(
            &mut conn,
            credentials,
            deadline,
            self.interrupt,
            self.verbose,
        )?;
        Ok(conn)
    }
}

impl ClusterClient {
    pub fn new(addrs: Vec<String>, timeout: Duration, verbose: bool) -> ClusterClient {
        ClusterClient {
            targets: Targets::new(addrs),
            conn: None,
            timeout,
            verbose,
            session: Session::default(),
            req_id: 0,
            interrupt: None,
            tls: None,
            credentials: None,
            refused_login: None,
        }
    }

    /// The same client, connecting over TLS as `tls` says (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<Tls>) -> ClusterClient {
        self.tls = tls;
        self
    }

    /// How this client connects: its TLS, if any.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The same client, logging every connection it opens in with
    /// `credentials` (`None`: it does not log in).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> ClusterClient {
        self.credentials = credentials;
        self.refused_login = None;
        self
    }

    /// Who this client logs in as, if anyone.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Logs in as `credentials` from now on (the shell's `login`): on a new
    /// connection, to the node talked to now if there is one, which must
    /// accept the login before this returns. The session is left behind
    /// (sessions belong to the user who opened them): the next write opens
    /// one. On failure the client keeps the credentials it had.
    pub fn login(&mut self, credentials: Credentials) -> Result<(), ClientError> {
        let previous = (
            self.credentials.replace(credentials),
            self.refused_login.take(),
        );
        if let Some(addr) = self.connected().map(str::to_string) {
            self.targets.redirect(&addr);
        }
        self.disconnect();
        let deadline = Instant::now() + self.timeout;
        match self.ensure_connected(deadline, &mut Refused::default()) {
            Ok(()) => {
                self.session.forget();
                Ok(())
            }
            Err(e) => {
                (self.credentials, self.refused_login) = previous;
                Err(e)
            }
        }
    }

    /// Ctrl-C sets this flag; a request in progress then gives up.
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// The flag [`ClusterClient::set_interrupt`] gave, if any (for a
    /// [`crate::Watcher`] made from this client).
    pub fn interrupt(&self) -> Option<Arc<AtomicBool>> {
        self.interrupt.clone()
    }

    /// The session's id, once the first write opened one.
    pub fn client_id(&self) -> Option<u64> {
        self.session.client_id()
    }

    pub fn addrs(&self) -> &[String] {
        self.targets.addrs()
    }

    /// The node we are connected to, if any.
    pub fn connected(&self) -> Option<&str> {
        self.conn.as_ref().map(Connection::addr)
    }

    /// The session fields for a new write: a fresh `seq`, in the session,
    /// which is opened first if there is none. Retries of that write reuse
    /// them, so the cluster applies it at most once.
    fn next_session(&mut self) -> Result<SessionFields, ClientError> {
        if self.session.client_id().is_none() {
            // A registration whose reply is lost opens a session nobody
            // uses; it expires like any idle one.
            let reply = self.request(&ClientRequest::RegisterClient, Route::Leader)?;
            let client_id = registered_id(&reply)?;
            self.note(format!("opened session {client_id}"));
            self.session.open(client_id);
        }
        self.session
            .next_fields()
            .ok_or_else(|| ClientError::Protocol("no session".into()))
    }

    /// Sends a write built by `make` from its session fields, like
    /// [`ClusterClient::request`], exactly once: in the current session (one
    /// is opened first if needed), retried with the same fields. If the
    /// session is gone (`SESSION_EXPIRED`) before any attempt could have been
    /// applied, the write is sent again in a new session; after an attempt
    /// whose outcome is unknown it fails with [`ClientError::OutcomeUnknown`].
    pub fn write(
        &mut self,
        make: impl Fn(SessionFields) -> ClientRequest,
    ) -> Result<Reply, ClientError> {
        let mut renewed = false;
        loop {
            let request = make(self.next_session()?);
            match self.request(&request, Route::Leader) {
                Err(ClientError::Server(e)) if e.code == ErrorCode::SessionExpired && !renewed => {
                    self.note(format!(
                        "SESSION_EXPIRED: session {:?} is gone and the write was not applied; \
                         sending it in a new session",
                        self.session.client_id()
                    ));
                    self.session.forget();
                    renewed = true;
                }
                result => {
                    if matches!(
                        &result,
                        Err(ClientError::OutcomeUnknown(_)
                            | ClientError::Server(ErrorReply {
                                code: ErrorCode::SessionExpired,
                                ..
                            }))
                    ) {
                        self.session.forget();
                    }
                    return result;
                }
            }
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }

    fn note(&self, text: impl AsRef<str>) {
        if self.verbose {
            eprintln!("-- {}", text.as_ref());
        }
    }

    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.note(format!("disconnected from {}", c.addr()));
        }
    }

    /// Connects to `addr` now (the `connect` command), making it the node
    /// tried first from now on.
    pub fn connect_to(&mut self, addr: &str) -> Result<(), ClientError> {
        self.disconnect();
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        match self.open(addr, deadline) {
            Ok(conn) => {
                self.targets.put_first(addr);
                self.conn = Some(conn);
                Ok(())
            }
            Err(OpenError::Refused(e)) => Err(e),
            Err(OpenError::Conn(ConnError::Tls(m))) => Err(ClientError::Tls(m)),
            Err(OpenError::Conn(ConnError::Interrupted)) => Err(ClientError::Interrupted),
            Err(OpenError::Conn(e)) => Err(ClientError::Unreachable(format!("{addr}: {e}"))),
        }
    }

    /// A new connection to `addr`, logged in first if the client has
    /// credentials; none once a node refused them.
    fn open(&mut self, addr: &str, deadline: Instant) -> Result<Connection, OpenError> {
        if let Some(e) = &self.refused_login {
            return Err(OpenError::Refused(e.clone()));
        }
        let how = Opener {
            tls: self.tls.as_ref(),
            credentials: self.credentials.as_ref(),
            interrupt: self.interrupt.as_deref(),
            verbose: self.verbose,
        };
        match how.open(addr, deadline) {
            Ok(conn) => Ok(conn),
            Err(OpenError::Refused(e @ ClientError::Login(_))) => {
                self.refused_login = Some(e.clone());
                Err(OpenError::Refused(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure there is a connection: the preferred node, else each known
    /// address once, in turn, but none TLS refused (which this adds to
    /// `refused`). Fails only if none accepted: with [`ClientError::Tls`]
    /// if TLS refused every known node, else [`ClientError::Unreachable`];
    /// or at once if a node refused the login ([`ClientError::Login`]) or
    /// Ctrl-C came.
    fn ensure_connected(
        &mut self,
        deadline: Instant,
        refused: &mut Refused,
    ) -> Result<(), ClientError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for addr in self.targets.order() {
            if refused.contains(&addr) {
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            match self.open(&addr, deadline) {
                Ok(conn) => {
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(OpenError::Refused(e)) => return Err(e),
                Err(OpenError::Conn(ConnError::Interrupted)) => {
                    return Err(ClientError::Interrupted)
                }
                Err(OpenError::Conn(ConnError::Tls(m))) => {
                    self.note(&m);
                    refused.add(&addr, m);
                }
                Err(OpenError::Conn(e)) => {
                    self.note(format!("{addr}: {e}"));
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        if self.all_refused(refused) {
            return Err(ClientError::Tls(refused.text()));
        }
        errors.extend(refused.0.iter().map(|(_, m)| m.clone()));
        if errors.is_empty() {
            errors.push("no address to try".into());
        }
        Err(ClientError::Unreachable(format!(
            "no node answered ({})",
            errors.join("; ")
        )))
    }

    /// Whether TLS refused every node this client knows.
    fn all_refused(&self, refused: &Refused) -> bool {
        !refused.0.is_empty() && self.targets.addrs().iter().all(|a| refused.contains(a))
    }

    /// Drops the connection and starts the next attempt at the next address.
    pub fn rotate(&mut self) {
        let current = self.connected().map(str::to_string);
        self.disconnect();
        if let Some(addr) = current {
            self.targets.move_past(&addr);
        }
    }

    /// Sleeps `d` (or until the deadline), waking for Ctrl-C.
    fn pause(&self, d: Duration, deadline: Instant) -> Result<(), ClientError> {
        let until = (Instant::now() + d).min(deadline);
        while Instant::now() < until {
            if self.interrupted() {
                return Err(ClientError::Interrupted);
            }
            sleep(SLICE.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// Sleeps `d`, waking early with [`ClientError::Interrupted`] for
    /// Ctrl-C (the flag [`ClusterClient::set_interrupt`] gave), as a wait
    /// between requests should (`lease keepalive`'s renewals).
    pub fn sleep(&self, d: Duration) -> Result<(), ClientError> {
        let now = Instant::now();
        self.pause(d, now + d)
    }

    /// Pauses for the current backoff, which then grows.
    fn back_off(&self, a: &mut Attempts) -> Result<(), ClientError> {
        self.pause(a.backoff, a.deadline)?;
        a.backoff = grow(a.backoff);
        Ok(())
    }

    /// Sends a client request, following redirects and retrying until the
    /// deadline. Every retry sends the same line: a write goes through
    /// [`ClusterClient::write`], which gives it its session fields.
    pub fn request(&mut self, request: &ClientRequest, route: Route) -> Result<Reply, ClientError> {
        self.req_id += 1;
        let req_id = self.req_id;
        let mut line = Vec::new();
        encode_request(&mut line, Some(req_id), request);
        self.call(&line, Some(req_id), route)
    }

    /// Sends a Raft probe (no src_id) to the node we talk to.
    pub fn probe(&mut self, message: &RaftMessage) -> Result<Reply, ClientError> {
        let mut line = Vec::new();
        encode_peer(&mut line, None, None, message);
        self.call(&line, None, Route::Here)
    }

    /// `line` until it gets an answer to report, or the deadline passes.
    fn call(
        &mut self,
        line: &[u8],
        req_id: Option<u64>,
        route: Route,
    ) -> Result<Reply, ClientError> {
        let mut a = Attempts {
            deadline: Instant::now() + self.timeout,
            backoff: FIRST_BACKOFF,
            last: None,
            redirects: 0,
            uncertain: false,
            refused: Refused::default(),
        };
        loop {
            if self.interrupted() {
                return Err(ClientError::Interrupted);
            }
            if route == Route::Change && a.uncertain {
                return Err(unknown_change(a.last));
            }
            if Instant::now() >= a.deadline {
                return Err(self.give_up(a.last));
            }
            if let Err(e) = self.ensure_connected(a.deadline, &mut a.refused) {
                if matches!(
                    e,
                    ClientError::Tls(_) | ClientError::Login(_) | ClientError::Interrupted
                ) {
                    return Err(e);
                }
                a.last = Some(e);
                self.note(format!("retrying in {:?}", a.backoff));
                self.back_off(&mut a)?;
                continue;
            }
            let addr = self.connected().unwrap_or_default().to_string();
            let reply = match self.exchange(line, req_id, a.deadline) {
                Ok(reply) => reply,
                Err(e) => {
                    self.on_lost(e, &addr, &mut a)?;
                    continue;
                }
            };
            if reply.envelope.msg_type != "ERROR" {
                return Ok(reply);
            }
            let Some(error) = reply.envelope.error() else {
                return Err(ClientError::Protocol(format!(
                    "{addr}: malformed ERROR reply: {}",
                    reply.line
                )));
            };
            self.on_error(error, &addr, route, &mut a)?;
        }
    }

    /// An exchange with `addr` failed: `Ok` to try again (on another node).
    fn on_lost(&mut self, e: ConnError, addr: &str, a: &mut Attempts) -> Result<(), ClientError> {
        match e {
            ConnError::Interrupted => {
                // The reply may still come: this connection is out of step.
                self.disconnect();
                Err(ClientError::Interrupted)
            }
            ConnError::Protocol(m) => {
                self.disconnect();
                Err(ClientError::Protocol(format!("{addr}: {m}")))
            }
            ConnError::Tls(m) => {
                // Refused before the request was read: not applied.
                self.note(&m);
                a.refused.add(addr, m.clone());
                self.rotate();
                if self.all_refused(&a.refused) {
                    return Err(ClientError::Tls(a.refused.text()));
                }
                a.last = Some(ClientError::Tls(m));
                Ok(())
            }
            ConnError::Io { error, sent } => {
                let what = if sent {
                    "lost the connection before the reply"
                } else {
                    "could not send"
                };
                self.note(format!("{addr}: {what}: {error}"));
                a.uncertain |= sent;
                a.last = Some(if sent && Instant::now() >= a.deadline {
                    ClientError::NoReply(format!("no reply from {addr} within {:?}", self.timeout))
                } else {
                    ClientError::Unreachable(format!("{addr}: {error}"))
                });
                self.rotate();
                self.back_off(a)
            }
        }
    }

    /// `addr` answered `error`: `Ok` to try again, as [`retry_for`] says.
    fn on_error(
        &mut self,
        error: ErrorReply,
        addr: &str,
        route: Route,
        a: &mut Attempts,
    ) -> Result<(), ClientError> {
        if error.code == ErrorCode::SessionExpired && a.uncertain {
            return Err(ClientError::OutcomeUnknown(format!(
                "the outcome of this command is unknown: an earlier attempt got no \
                 answer, and the session it was sent in expired before the retry \
                 (SESSION_EXPIRED), so the cluster can no longer tell whether it was \
                 applied; it may or may not have been. Check the key before repeating \
                 it. The next write opens a new session. ({})",
                error.message
            )));
        }
        match retry_for(&error, route, addr) {
            Retry::Redirect(leader) if a.refused.contains(&leader) => {
                let why = a.refused.why(&leader).unwrap_or_default();
                return Err(ClientError::Tls(format!(
                    "{addr} says the leader is {leader}, and {why}"
                )));
            }
            Retry::Redirect(leader) => {
                self.note(format!("NOT_LEADER: following the redirect to {leader}"));
                self.disconnect();
                self.targets.redirect(&leader);
                a.redirects += 1;
                // Nodes that disagree on the leader for a moment could
                // bounce us back and forth.
                if a.redirects > 2 {
                    self.back_off(a)?;
                }
            }
            Retry::Elsewhere => {
                // This node may be cut off, or its disk is full and it is
                // handing leadership on: ask another.
                if error.code == ErrorCode::NotLeader {
                    self.note(format!(
                        "NOT_LEADER, no leader known: retrying in {:?}",
                        a.backoff
                    ));
                } else {
                    self.note(format!("{}: retrying in {:?}", error.code, a.backoff));
                }
                self.rotate();
                self.back_off(a)?;
            }
            Retry::Again => {
                a.uncertain |= !error.code.not_applied();
                self.note(format!("{}: retrying in {:?}", error.code, a.backoff));
                self.back_off(a)?;
            }
            Retry::Final => return Err(ClientError::Server(error)),
        }
        a.last = Some(ClientError::Server(error));
        Ok(())
    }

    fn give_up(&self, last: Option<ClientError>) -> ClientError {
        let after = format!("gave up after {:?}", self.timeout);
        match last {
            Some(ClientError::Server(mut e)) => {
                e.message = format!("{} ({after})", e.message);
                ClientError::Server(e)
            }
            Some(ClientError::Unreachable(m)) => ClientError::Unreachable(format!("{m} ({after})")),
            Some(other) => other,
            None => ClientError::Unreachable(after),
        }
    }

    /// One line out, the matching line back, on the current connection.
    fn exchange(
        &mut self,
        line: &[u8],
        req_id: Option<u64>,
        deadline: Instant,
    ) -> Result<Reply, ConnError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ConnError::Io {
                error: io::ErrorKind::NotConnected.into(),
                sent: false,
            });
        };
        conn.exchange(
            line,
            req_id,
            deadline,
            self.interrupt.as_deref(),
            self.verbose,
        )
    }

    /// STATUS of the connected node, once, quietly, without retries: for the
    /// prompt. Drops the connection if the node does not answer.
    pub fn quiet_status(&mut self) -> Option<StatusReply> {
        self.conn.as_ref()?;
        let verbose = std::mem::replace(&mut self.verbose, false);
        self.req_id += 1;
        let mut line = Vec::new();
        encode_request(&mut line, Some(self.req_id), &ClientRequest::Status);
        let deadline = Instant::now() + Duration::from_secs(1);
        let result = self.exchange(&line, Some(self.req_id), deadline);
        self.verbose = verbose;
        match result {
            Ok(r) if r.envelope.msg_type == "STATUS" => {
                serde_json::from_value(r.envelope.payload).ok()
            }
            Ok(_) => None,
            Err(_) => {
                self.conn = None;
                None
            }
        }
    }

    /// At start-up: connect to any node, quietly, one try each, and move to
    /// the leader if that node knows one. Fails as
    /// [`ClusterClient::request`] would when no connection could be made
    /// (a refused login, say).
    pub fn connect_quietly(&mut self) -> Result<(), ClientError> {
        let verbose = std::mem::replace(&mut self.verbose, false);
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        let connected = self.ensure_connected(deadline, &mut Refused::default());
        if connected.is_ok() {
            if let Some(status) = self.quiet_status() {
                if let Some(leader) = status.leader_addr.filter(|l| *l != status.addr) {
                    if let Ok(conn) = self.open(&leader, deadline) {
                        self.targets.remember(&leader);
                        self.conn = Some(conn);
                    }
                }
            }
        }
        self.verbose = verbose;
        connected
    }
}

/// A change ([`Route::Change`]) whose last attempt may have been applied:
/// it is not sent again, so its outcome is unknown.
fn unknown_change(last: Option<ClientError>) -> ClientError {
    let why = last.map_or_else(|| "no answer".to_string(), |e| e.to_string());
    ClientError::OutcomeUnknown(format!(
        "the outcome of this change is unknown ({why}); it was not sent again, \
         since a change is not applied exactly once"
    ))
}

/// Doubles `backoff` and adds up to half of it again at random, up to
/// [`MAX_BACKOFF`], so clients that failed together do not retry together.
fn grow(backoff: Duration) -> Duration {
    let half = backoff.as_millis() as u64 / 2;
    (backoff * 2 + Duration::from_millis(random_below(half + 1))).min(MAX_BACKOFF)
}

/// A number in `0..n` (`n` > 0), from std's randomly keyed hasher: jitter
/// needs no better randomness and this crate no `rand`.
fn random_below(n: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish() % n.max(1)
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
