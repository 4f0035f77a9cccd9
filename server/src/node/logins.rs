//! Logging in (`AUTHENTICATE`) and the passwords the leader hashes (`USER
//! add` and `passwd`), off the event loop.
//!
//! A password check or hash costs tens of milliseconds of argon2 by design
//! (`passwords.rs`): done on the loop, a few logins a second would stall
//! heartbeats and start elections. A worker thread does them and hears back
//! through a mio `Waker`. Its queue holds at most [`MAX_PASSWORD_JOBS`]
//! checks and, apart, [`MAX_HASH_JOBS`] hashes (root's, taken first), so
//! logins cannot crowd out root's user changes; a full queue is answered
//! `OVERLOADED` at once.
//!
//! Nobody has to log in to make the node check a password, so one source
//! must not take the worker: at most [`MAX_LOGINS_PER_SOURCE`] logins from
//! one address are on the worker at once; the next ones from it wait in
//! the loop, in turn (at most [`MAX_WAITING_LOGINS_PER_SOURCE`]; beyond,
//! `OVERLOADED`), and other addresses go by them. A login whose connection
//! has closed is skipped: the worker checks no password for nobody.
//!
//! A connection logging in reads nothing more until its answer (its later
//! lines wait in its buffer), so a pipelined request after `AUTHENTICATE` is
//! checked as the user it logged in as, and a connection has one login at a
//! time. A failed login is answered only after a delay that doubles with
//! each failure ([`FIRST_FAILURE_DELAY`] up to [`MAX_FAILURE_DELAY`]),
//! counted on the connection and, apart, for the user name across
//! connections (the larger count decides), so guessing one user's password
//! over fresh connections is slowed too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Registry, Token, Waker};
use poncho_protocol::{
    encode_reply, AuthenticateReply, AuthenticateRequest, ErrorCode, ErrorReply, Password,
};

use super::conn::{Conn, ReplyTo};
use super::log_limiter::LogLimiter;
use super::Node;
use crate::kv::{AuthOp, Command};
use crate::passwords;
use crate::raft::{ProposeError, Role};

/// Password checks (logins) queued or running on the worker at once.
pub const MAX_PASSWORD_JOBS: usize = 64;
/// Password hashes (root's `USER add` and `passwd`) queued or running at
/// once, apart from the checks and taken before them.
pub const MAX_HASH_JOBS: usize = 8;
/// Logins from one source address on the worker, or waiting for their
/// answer's delay, at once; the next ones from it wait their turn.
pub const MAX_LOGINS_PER_SOURCE: usize = 4;
/// Logins from one source address waiting their turn; beyond, `OVERLOADED`.
pub const MAX_WAITING_LOGINS_PER_SOURCE: usize = 256;
/// User names whose failed logins are counted (the oldest are forgotten).
pub const MAX_TRACKED_USERS: usize = 10_000;
/// From this many failures in a row for a user, they are logged (limited).
const LOGGED_FAILURES: u32 = 5;
/// The delay before a first failed login is answered; it doubles with each
/// further failure.
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(200);
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);

/// A change to a user that carries a password, waiting for its hash.
pub enum PasswordChange {
    Add { name: String },
    Passwd { name: String },
}

/// A login: who asked, from where, and the password to check.
struct Login {
    to: ReplyTo,
    user: String,
    source: IpAddr,
    /// Set when the connection closes (its `Conn` is dropped): the worker
    /// skips the check.
    gone: Arc<AtomicBool>,
    password: Password,
}

enum Job {
    Verify {
        login: Login,
        stored: Option<String>,
    },
    Hash {
        to: ReplyTo,
        change: PasswordChange,
        proposer: Option<String>,
        password: Password,
    },
}

enum Done {
    Verified {
        login: Login,
        ok: bool,
    },
    /// A login whose connection had closed: not checked.
    Skipped {
        source: IpAddr,
    },
    Hashed {
        to: ReplyTo,
        change: PasswordChange,
        proposer: Option<String>,
        hash: Result<String, String>,
    },
}

/// A login checked, to be answered at `due`.
struct Finishing {
    due: Instant,
    login: Login,
    ok: bool,
}

/// The worker's queues: hashes are taken first.
#[derive(Default)]
struct Queues {
    hashes: VecDeque<Job>,
    verifies: VecDeque<Job>,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The worker never panics holding it; if it did, the queues are
        // still whole.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job, hashes first; `None` once the node stops.
    fn next(&self) -> Option<Job> {
        let mut queues = self.lock();
        loop {
            if queues.stopped {
                return None;
            }
            if let Some(job) = queues.hashes.pop_front() {
                return Some(job);
            }
            if let Some(job) = queues.verifies.pop_front() {
                return Some(job);
            }
            queues = self.ready.wait(queues).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One source address's logins: how many are taken (on the worker or
/// waiting for their answer), and the ones waiting their turn.
#[derive(Default)]
struct Source {
    taken: usize,
    waiting: VecDeque<Login>,
}

/// Failed logins per user name, across connections, for the
/// [`MAX_TRACKED_USERS`] names that failed last.
#[derive(Default)]
struct UserFailures {
    /// Name -> (failures in a row, sequence number of the latest).
    counts: HashMap<String, (u32, u64)>,
    /// Sequence number -> name: the oldest first.
    order: BTreeMap<u64, String>,
    next: u64,
}

impl UserFailures {
    /// Counts a failure for `user`; returns the failures before it.
    fn fail(&mut self, user: &str) -> u32 {
        let (before, seq) = self.counts.remove(user).unwrap_or((0, u64::MAX));
        self.order.remove(&seq);
        while self.counts.len() >= MAX_TRACKED_USERS {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.counts.remove(&oldest);
        }
        self.next += 1;
        self.counts
            .insert(user.to_owned(), (before.saturating_add(1), self.next));
        self.order.insert(self.next, user.to_owned());
        before
    }

    fn succeed(&mut self, user: &str) {
        if let Some((_, seq)) = self.counts.remove(user) {
            self.order.remove(&seq);
        }
    }
}

/// The worker's queues and what came back from it.
pub struct Logins {
    shared: Arc<Shared>,
    done: Receiver<Done>,
    finishing: Vec<Finishing>,
    /// Checks and hashes queued or running on the worker.
    verifies: usize,
    hashes: usize,
    sources: HashMap<IpAddr, Source>,
    users: UserFailures,
    log: LogLimiter,
}

impl Drop for Logins {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.ready.notify_all();
    }
}

impl Logins {
    /// Starts the worker, which wakes the poll with `token` when a job is done.
    pub fn start(registry: &Registry, token: Token) -> std::io::Result<Logins> {
        let waker = Arc::new(Waker::new(registry, token)?);
        let shared = Arc::new(Shared::default());
        let (results, done) = mpsc::channel();
        let queues = Arc::clone(&shared);
        thread::Builder::new()
            .name("passwords".into())
            .spawn(move || work(&queues, &results, &waker))?;
        Ok(Logins {
            shared,
            done,
            finishing: Vec::new(),
            verifies: 0,
            hashes: 0,
            sources: HashMap::new(),
            users: UserFailures::default(),
            log: LogLimiter::new(),
        })
    }

    fn push(&mut self, job: Job) -> Result<(), ErrorReply> {
        let (count, max, what) = match job {
            Job::Verify { .. } => (&mut self.verifies, MAX_PASSWORD_JOBS, "password checks"),
            Job::Hash { .. } => (&mut self.hashes, MAX_HASH_JOBS, "password hashes"),
        };
        if *count >= max {
            return Err(ErrorReply::new(
                ErrorCode::Overloaded,
                format!("{max} {what} are already waiting; retry shortly"),
            ));
        }
        *count += 1;
        let mut queues = self.shared.lock();
        match job {
            Job::Verify { .. } => queues.verifies.push_back(job),
            Job::Hash { .. } => queues.hashes.push_back(job),
        }
        drop(queues);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// When the next delayed login answer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.finishing.iter().map(|f| f.due).min()
    }
}

/// The worker: builds the hash unknown users are checked against first (so
/// that the first such login takes no longer than any other), then runs
/// jobs until the node stops.
fn work(shared: &Shared, results: &Sender<Done>, waker: &Waker) {
    passwords::prepare();
    while let Some(job) = shared.next() {
        if results.send(run(job)).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}

fn run(job: Job) -> Done {
    match job {
        Job::Verify { login, .. } if login.gone.load(Ordering::Relaxed) => Done::Skipped {
            source: login.source,
        },
        Job::Verify { login, stored } => Done::Verified {
            ok: passwords::verify_login(stored.as_deref(), &login.password.0),
            login,
        },
        Job::Hash {
            to,
            change,
            proposer,
            password,
        } => Done::Hashed {
            hash: passwords::hash(&password.0),
            to,
            change,
            proposer,
        },
    }
}

/// How long the answer to a failed login waits, after `failures` earlier
/// failures (on its connection or for its user, the more).
fn failure_delay(failures: u32) -> Duration {
    FIRST_FAILURE_DELAY
        .saturating_mul(1 << failures.min(16))
        .min(MAX_FAILURE_DELAY)
}

impl Node {
    /// AUTHENTICATE: checks the password against this node's users, on the
    /// worker (in its source address's turn); the connection reads nothing
    /// more until it is answered.
    pub(super) fn start_login(
        &mut self,
        key: usize,
        req_id: Option<u64>,
        request: AuthenticateRequest,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // A connection without an address is gone; it counts as one source.
        let source = conn
            .stream
            .get_ref()
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let gone = Arc::new(AtomicBool::new(false));
        conn.login_gone = Some(Arc::clone(&gone));
        let Some(to) = self.conns.reserve(key, req_id) else {
            return;
        };
        let login = Login {
            to,
            user: request.user,
            source,
            gone,
            password: request.password,
        };
        match self.admit_login(login) {
            Ok(()) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.logging_in = true;
                    conn.read_paused = true;
                }
            }
            Err(error) => self.complete_error(to, &error),
        }
    }

    /// Hands `login` to the worker if its source has a place, else has it
    /// wait its turn.
    fn admit_login(&mut self, login: Login) -> Result<(), ErrorReply> {
        let ip = login.source;
        let source = self.logins.sources.entry(ip).or_default();
        if source.taken < MAX_LOGINS_PER_SOURCE {
            let dispatched = self.dispatch_login(login);
            if dispatched.is_err() {
                self.logins
                    .sources
                    .retain(|_, s| s.taken > 0 || !s.waiting.is_empty());
            }
            return dispatched;
        }
        source.waiting.retain(|l| !l.gone.load(Ordering::Relaxed));
        if source.waiting.len() >= MAX_WAITING_LOGINS_PER_SOURCE {
            return Err(ErrorReply::new(
                ErrorCode::Overloaded,
                format!("too many logins from {ip} in progress; retry shortly"),
            ));
        }
        source.waiting.push_back(login);
        Ok(())
    }

    /// Queues the check of `login` on the worker, against the user's hash as
    /// it is now (and the `since` that goes with it).
    fn dispatch_login(&mut self, login: Login) -> Result<(), ErrorReply> {
        let source = login.source;
        let auth = self.kv.auth();
        let stored = auth.password_hash(&login.user).map(str::to_owned);
        let since = auth.since(&login.user);
        if let Some(conn) = self.conns.current(&login.to) {
            conn.login_since = since;
        }
        self.logins.push(Job::Verify { login, stored })?;
        self.logins.sources.entry(source).or_default().taken += 1;
        Ok(())
    }

    /// A login from `ip` is over: the next one waiting from there (whose
    /// connection is still open) takes its place.
    fn release_login(&mut self, ip: IpAddr) {
        let Some(source) = self.logins.sources.get_mut(&ip) else {
            return;
        };
        source.taken = source.taken.saturating_sub(1);
        while let Some(source) = self.logins.sources.get_mut(&ip) {
            if source.taken >= MAX_LOGINS_PER_SOURCE {
                return;
            }
            let Some(next) = source.waiting.pop_front() else {
                if source.taken == 0 {
                    self.logins.sources.remove(&ip);
                }
                return;
            };
            if next.gone.load(Ordering::Relaxed) {
                continue;
            }
            let to = next.to;
            if let Err(error) = self.dispatch_login(next) {
                self.complete_error(to, &error);
                self.resume_after_login(to);
            }
        }
    }

    /// USER add or passwd: the leader hashes the password on the worker, then
    /// proposes the change with the hash (the password never enters the log).
    pub(super) fn start_password_change(
        &mut self,
        key: usize,
        req_id: Option<u64>,
        change: PasswordChange,
        password: Password,
    ) {
        if self.raft.role() != Role::Leader {
            let leader_id = self.raft.leader_id();
            let error = self.propose_error(&ProposeError::NotLeader { leader_id });
            return self.reply_error_now(key, req_id, &error);
        }
        let proposer = self
            .conns
            .get(key)
            .and_then(|c| c.user.as_deref().map(str::to_owned));
        let Some(to) = self.conns.reserve(key, req_id) else {
            return;
        };
        let job = Job::Hash {
            to,
            change,
            proposer,
            password,
        };
        if let Err(error) = self.logins.push(job) {
            self.complete_error(to, &error);
        }
    }

    /// Takes what the worker finished: logins to answer (now, or after their
    /// delay), hashed changes to propose.
    pub(super) fn on_passwords_done(&mut self, now: Instant) {
        while let Ok(done) = self.logins.done.try_recv() {
            match done {
                Done::Verified { login, ok } => {
                    self.logins.verifies -= 1;
                    self.on_verified(now, login, ok);
                }
                Done::Skipped { source } => {
                    self.logins.verifies -= 1;
                    self.release_login(source);
                }
                Done::Hashed {
                    to,
                    change,
                    proposer,
                    hash,
                } => {
                    self.logins.hashes -= 1;
                    self.propose_password(to, change, proposer, hash);
                }
            }
        }
        self.finish_logins(now);
    }

    /// A login checked: to be answered now if right, else after the delay
    /// its connection's or its user's failures call for.
    fn on_verified(&mut self, now: Instant, login: Login, ok: bool) {
        let logins = &mut self.logins;
        if ok {
            logins.users.succeed(&login.user);
            return logins.finishing.push(Finishing {
                due: now,
                login,
                ok,
            });
        }
        let on_conn = self.conns.current(&login.to).map_or(0, |c| c.failed_logins);
        let for_user = logins.users.fail(&login.user);
        let failures = on_conn.max(for_user);
        if for_user + 1 >= LOGGED_FAILURES {
            let name: String = login.user.chars().take(64).collect();
            let line = format!(
                "{} failed logins in a row for user {name:?} (the latest from {}); \
                 answers are delayed",
                for_user + 1,
                login.source
            );
            logins.log.warn(&format!("login failures {name}"), &line);
        }
        logins.finishing.push(Finishing {
            due: now + failure_delay(failures),
            login,
            ok,
        });
    }

    /// Proposes a user change with the password hash the worker made.
    fn propose_password(
        &mut self,
        to: ReplyTo,
        change: PasswordChange,
        proposer: Option<String>,
        hash: Result<String, String>,
    ) {
        let password_hash = match hash {
            Ok(hash) => hash,
            Err(e) => return self.complete_error(to, &ErrorReply::bad_request(e)),
        };
        let auth = match change {
            PasswordChange::Add { name } => AuthOp::UserAdd {
                name,
                password_hash,
            },
            PasswordChange::Passwd { name } => AuthOp::UserPasswd {
                name,
                password_hash,
            },
        };
        let mut command = Command::auth(auth, super::clients::now_ms());
        command.user = proposer;
        self.propose_into(to, command);
    }

    /// Answers the logins whose delay has passed, and lets their connections
    /// read on; forgets those whose connection closed.
    pub(super) fn finish_logins(&mut self, now: Instant) {
        let over = |f: &Finishing| f.due <= now || f.login.gone.load(Ordering::Relaxed);
        if !self.logins.finishing.iter().any(over) {
            return;
        }
        let (due, later) = std::mem::take(&mut self.logins.finishing)
            .into_iter()
            .partition(over);
        self.logins.finishing = later;
        for Finishing { login, ok, .. } in due {
            self.release_login(login.source);
            let to = login.to;
            let Some(conn) = self.conns.current(&to) else {
                continue;
            };
            if ok {
                conn.failed_logins = 0;
                conn.user = Some(Arc::from(login.user.as_str()));
                conn.user_since = conn.login_since;
                let reply = AuthenticateReply { user: login.user };
                self.conns
                    .complete(to, |out| encode_reply(out, to.req_id, &reply));
            } else {
                conn.failed_logins = conn.failed_logins.saturating_add(1);
                let error =
                    ErrorReply::new(ErrorCode::Unauthenticated, "wrong user name or password");
                self.complete_error(to, &error);
            }
            self.resume_after_login(to);
        }
    }

    /// A login answered: its connection handles the lines that came after
    /// the AUTHENTICATE, then reads on.
    fn resume_after_login(&mut self, to: ReplyTo) {
        let Some(conn) = self.conns.current(&to) else {
            return;
        };
        conn.logging_in = false;
        conn.login_gone = None;
        self.process_lines(to.conn);
        self.on_readable(to.conn, false);
    }

    /// The client of `key` hung up (or its socket failed): if it is logging
    /// in and sent nothing after its AUTHENTICATE, nobody is left to answer
    /// (the check is skipped and the connection closed).
    pub(super) fn on_hangup(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(|c| c.logging_in) {
            return;
        }
        match self.conns.read(key, super::READ_BUDGET, false) {
            Some(Err(e)) => self.close(key, &e.to_string()),
            Some(Ok(false)) => self.close_if_hung_up(key),
            _ => {}
        }
    }

    /// Closes `key` if its client left it logging in with nothing more to
    /// handle.
    fn close_if_hung_up(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(Conn::hung_up_logging_in) {
            self.close(key, "closed by client while logging in");
        }
    }
}
