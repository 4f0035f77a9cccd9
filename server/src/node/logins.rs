//! Logging in (`AUTHENTICATE`) and the passwords the leader hashes (`USER
//! add` and `passwd`), off the event loop.
//!
//! A password check or hash costs tens of milliseconds of argon2 by design
//! (`passwords.rs`): done on the loop, a few logins a second would stall
//! heartbeats and start elections. A worker thread does them; the loop hands
//! it jobs through a queue of [`MAX_PASSWORD_JOBS`] (a full queue is
//! answered `OVERLOADED` at once) and hears back through a mio `Waker`.
//!
//! A connection logging in reads nothing more until its answer (its later
//! lines wait in its buffer), so a pipelined request after `AUTHENTICATE` is
//! checked as the user it logged in as, and a connection has one login at a
//! time. A failed login is answered only after a delay that doubles with
//! each failure on the connection ([`FIRST_FAILURE_DELAY`] up to
//! [`MAX_FAILURE_DELAY`]), so guessing passwords over one connection is slow,
//! and over many is bounded by the queue.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Registry, Token, Waker};
use poncho_protocol::{
    encode_reply, AuthenticateReply, AuthenticateRequest, ErrorCode, ErrorReply, Password,
};

use super::conn::ReplyTo;
use super::Node;
use crate::kv::{AuthOp, Command};
use crate::passwords;
use crate::raft::{ProposeError, Role};

/// Password checks and hashes queued or running at once, for the node.
pub const MAX_PASSWORD_JOBS: usize = 64;
/// The delay before a connection's first failed login is answered; it
/// doubles with each further failure.
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(200);
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);

/// A change to a user that carries a password, waiting for its hash.
pub enum PasswordChange {
    Add { name: String },
    Passwd { name: String },
}

enum Job {
    Verify {
        to: ReplyTo,
        user: String,
        stored: Option<String>,
        password: Password,
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
        to: ReplyTo,
        user: String,
        ok: bool,
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
    to: ReplyTo,
    user: String,
    ok: bool,
}

/// The worker's queue and what came back from it.
pub struct Logins {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
    finishing: Vec<Finishing>,
}

impl Logins {
    /// Starts the worker, which wakes the poll with `token` when a job is done.
    pub fn start(registry: &Registry, token: Token) -> std::io::Result<Logins> {
        let waker = Arc::new(Waker::new(registry, token)?);
        let (jobs, queue) = mpsc::sync_channel::<Job>(MAX_PASSWORD_JOBS);
        let (results, done) = mpsc::channel();
        thread::Builder::new()
            .name("passwords".into())
            .spawn(move || {
                // Ends when the node drops its sender.
                for job in queue {
                    if results.send(run(job)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Logins {
            jobs,
            done,
            finishing: Vec::new(),
        })
    }

    fn submit(&self, job: Job) -> Result<(), ErrorReply> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ErrorReply::new(
                ErrorCode::Overloaded,
                format!("{MAX_PASSWORD_JOBS} password checks are already waiting; retry shortly"),
            )),
            Err(TrySendError::Disconnected(_)) => Err(ErrorReply::new(
                ErrorCode::Overloaded,
                "this node cannot check passwords now (its worker stopped)",
            )),
        }
    }

    /// When the next delayed login answer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.finishing.iter().map(|f| f.due).min()
    }
}

fn run(job: Job) -> Done {
    match job {
        Job::Verify {
            to,
            user,
            stored,
            password,
        } => Done::Verified {
            ok: passwords::verify_login(stored.as_deref(), &password.0),
            to,
            user,
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
/// failures on its connection.
fn failure_delay(failures: u32) -> Duration {
    FIRST_FAILURE_DELAY
        .saturating_mul(1 << failures.min(16))
        .min(MAX_FAILURE_DELAY)
}

impl Node {
    /// AUTHENTICATE: checks the password against this node's users, on the
    /// worker; the connection reads nothing more until it is answered.
    pub(super) fn start_login(
        &mut self,
        key: usize,
        req_id: Option<u64>,
        request: AuthenticateRequest,
    ) {
        let stored = self
            .kv
            .auth()
            .password_hash(&request.user)
            .map(str::to_owned);
        let Some(to) = self.conns.reserve(key, req_id) else {
            return;
        };
        let job = Job::Verify {
            to,
            user: request.user,
            stored,
            password: request.password,
        };
        match self.logins.submit(job) {
            Ok(()) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.logging_in = true;
                    conn.read_paused = true;
                }
            }
            Err(error) => self.complete_error(to, &error),
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
        if let Err(error) = self.logins.submit(job) {
            self.complete_error(to, &error);
        }
    }

    /// Takes what the worker finished: logins to answer (now, or after their
    /// delay), hashed changes to propose.
    pub(super) fn on_passwords_done(&mut self, now: Instant) {
        while let Ok(done) = self.logins.done.try_recv() {
            match done {
                Done::Verified { to, user, ok } => {
                    let failures = self.conns.current(&to).map_or(0, |c| c.failed_logins);
                    let due = if ok {
                        now
                    } else {
                        now + failure_delay(failures)
                    };
                    self.logins.finishing.push(Finishing { due, to, user, ok });
                }
                Done::Hashed {
                    to,
                    change,
                    proposer,
                    hash,
                } => {
                    let password_hash = match hash {
                        Ok(hash) => hash,
                        Err(e) => {
                            self.complete_error(to, &ErrorReply::bad_request(e));
                            continue;
                        }
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
            }
        }
        self.finish_logins(now);
    }

    /// Answers the logins whose delay has passed, and lets their connections
    /// read on.
    pub(super) fn finish_logins(&mut self, now: Instant) {
        if self.logins.finishing.iter().all(|f| f.due > now) {
            return;
        }
        let (due, later) = std::mem::take(&mut self.logins.finishing)
            .into_iter()
            .partition(|f| f.due <= now);
        self.logins.finishing = later;
        for Finishing { to, user, ok, .. } in due {
            let Some(conn) = self.conns.current(&to) else {
                continue;
            };
            conn.logging_in = false;
            if ok {
                conn.failed_logins = 0;
                conn.user = Some(Arc::from(user.as_str()));
                conn.user_since = conn.login_since;
                let reply = AuthenticateReply { user };
                self.conns
                    .complete(to, |out| encode_reply(out, to.req_id, &reply));
            } else {
                conn.failed_logins = conn.failed_logins.saturating_add(1);
                let error =
                    ErrorReply::new(ErrorCode::Unauthenticated, "wrong user name or password");
                self.complete_error(to, &error);
            }
            // The lines that came after the AUTHENTICATE, then the socket.
            self.process_lines(to.conn);
            self.on_readable(to.conn, false);
        }
    }
}
