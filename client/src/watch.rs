//! [`Watcher`]: one watch (`WATCH`, see `poncho_protocol::watch`) of a key,
//! a prefix or a range, on a connection of its own to one node, read with
//! a blocking [`Watcher::next`], that outlives the node it is on.
//!
//! Any node serves watches from its applied state, so when the connection
//! drops, the node dies, stops answering, or cancels the watch because the
//! client read too slowly (`SLOW_WATCHER`), the watcher connects to the
//! next node (rotating through the addresses, as [`ClusterClient`] does)
//! and creates the watch again from the revision after the last one it
//! delivered. The caller sees every revision once and in order: no gap
//! (the new watch starts where the old one stopped) and no duplicate (a
//! message at a revision already delivered is dropped). A node whose
//! history no longer holds that revision says `COMPACTED`; the others are
//! asked, and when none can resume without a gap the watch ends with
//! [`ClientError::Server`] `COMPACTED` and the oldest revision held.
//!
//! Bounded: each attempt (connect, log in, create) has a deadline
//! ([`Watcher::with_attempt_timeout`]), resuming gives up after
//! [`Watcher::with_resume_timeout`] without a node, an idle connection is
//! probed (`{"op":"progress"}`) and dropped when the probe is not answered
//! in time, and nothing is buffered beyond the line being read: one
//! message is read and handed over at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_request, ClientRequest, ErrorCode, ErrorReply, Event, KeyValue, WatchCreate, WatchReply,
    WatchRequest,
};

use crate::auth::{Credentials, OpenError};
use crate::cluster::{ClusterClient, Opener};
use crate::conn::{ConnError, Connection, SLICE};
use crate::error::ClientError;
use crate::leader::Targets;
use crate::tls::Tls;

/// What one attempt to connect, log in and create the watch may take, by
/// default.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the watcher goes on trying to resume without a node, by
/// default, before [`Watcher::next`] reports why.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long is asked for progress, by default; no
/// answer within the attempt timeout, and the node is taken for lost.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What [`Watcher::next`] hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every change of the range at `revision` (a transaction's together),
    /// in order.
    Changes { revision: u64, events: Vec<Event> },
    /// A page of a `list` watch's keys, all at `revision`; the last page
    /// has `more` false, and the changes after `revision` follow. If the
    /// node was lost while listing, the listing starts over on the next
    /// node (at its own revision): its first page says `restarted`, and
    /// the pages before it are to be forgotten.
    Listed {
        revision: u64,
        kvs: Vec<KeyValue>,
        more: bool,
        restarted: bool,
    },
    /// Every change up to `revision` has been delivered (with
    /// `progress_notify`, while nothing changes).
    Progress { revision: u64 },
}

/// One watch that resumes on another node; see the module's doc.
pub struct Watcher {
    targets: Targets,
    /// The watch as asked.
    create: WatchCreate,
    tls: Option<Tls>,
    credentials: Option<Credentials>,
    interrupt: Option<Arc<AtomicBool>>,
    verbose: bool,
    attempt_timeout: Duration,
    resume_timeout: Duration,
    keepalive: Duration,
    live: Option<Live>,
    /// Every revision up to this one has been delivered (or precedes the
    /// watch's start): the next watch starts after it. `None` before the
    /// first watch was created (or, with `list`, listed whole).
    seen: Option<u64>,
    /// A `list` watch's listing has been delivered whole.
    listed: bool,
    /// A page of the listing was delivered: a new listing restarts it.
    listing_begun: bool,
    restart_pending: bool,
    /// Since when no watch has been live, while resuming.
    lost_since: Option<Instant>,
    backoff: Duration,
    /// Why the last attempt failed.
    last_error: Option<ClientError>,
    /// The nodes that said COMPACTED since the watch was last live.
    compacted: Vec<(String, ErrorReply)>,
    /// A final error: every later `next` returns it.
    finished: Option<ClientError>,
    req_id: u64,
    /// A watch was created once: every later one resumes it.
    created_once: bool,
    resumes: u64,
    skipped: u64,
}

/// The watch on the connection it lives on.
struct Live {
    conn: Connection,
    watch_id: u64,
    last_heard: Instant,
    /// A progress probe sent, and by when its answer must come.
    probe: Option<(u64, Instant)>,
}

/// Why an attempt on one node failed.
enum Attempt {
    /// Another node (or later) may do better.
    Failed(ClientError),
    /// This node's history no longer holds the revision to resume from.
    Compacted(ErrorReply),
    /// No node will do better.
    Final(ClientError),
    Interrupted,
}

/// What a message read from the live connection was.
enum Read {
    Event(WatchEvent),
    /// Nothing for the caller (a duplicate, a probe's answer, a stray).
    Nothing,
    /// The caller's deadline passed.
    Deadline,
    /// The node is lost for this watch (why): resume elsewhere.
    Lost(String, Option<ErrorReply>),
    Final(ClientError),
    Interrupted,
}

impl Watcher {
    /// A watcher of `create` on the nodes at `addrs` (tried in this order).
    /// Nothing is sent before the first [`Watcher::next`] (or
    /// [`Watcher::start`]). A `start_revision` counts as everything before
    /// it already seen.
    pub fn new(addrs: Vec<String>, create: WatchCreate) -> Watcher {
        let seen = create
            .start_revision
            .filter(|&r| r > 0 && !create.list)
            .map(|r| r - 1);
        Watcher {
            targets: Targets::new(addrs),
            create,
            tls: None,
            credentials: None,
            interrupt: None,
            verbose: false,
            attempt_timeout: ATTEMPT_TIMEOUT,
            resume_timeout: RESUME_TIMEOUT,
            keepalive: KEEPALIVE,
            live: None,
            seen,
            listed: false,
            listing_begun: false,
            restart_pending: false,
            lost_since: None,
            backoff: FIRST_BACKOFF,
            last_error: None,
            compacted: Vec::new(),
            finished: None,
            req_id: 0,
            created_once: false,
            resumes: 0,
            skipped: 0,
        }
    }

    /// A watcher that connects as `client` does (its nodes, the one it is
    /// connected to first, its TLS, credentials, Ctrl-C flag and
    /// `verbose`), with `client.timeout` per attempt and for resuming.
    pub fn for_client(client: &ClusterClient, create: WatchCreate) -> Watcher {
        let mut addrs = client.addrs().to_vec();
        if let Some(here) = client.connected() {
            addrs.retain(|a| a != here);
            addrs.insert(0, here.to_string());
        }
        let mut w = Watcher::new(addrs, create)
            .with_tls(client.tls().cloned())
            .with_credentials(client.credentials().cloned())
            .with_attempt_timeout(client.timeout)
            .with_resume_timeout(client.timeout)
            .with_verbose(client.verbose);
        if let Some(flag) = client.interrupt() {
            w.set_interrupt(flag);
        }
        w
    }

    /// Over TLS as `tls` says (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<Tls>) -> Watcher {
        self.tls = tls;
        self
    }

    /// Every connection logs in with `credentials` first.
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Watcher {
        self.credentials = credentials;
        self
    }

    /// What one attempt on one node (connect, log in, create) may take.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Watcher {
        self.attempt_timeout = timeout;
        self
    }

    /// How long resuming may go on without a node before [`Watcher::next`]
    /// says why (calling it again tries again).
    pub fn with_resume_timeout(mut self, timeout: Duration) -> Watcher {
        self.resume_timeout = timeout;
        self
    }

    /// After how long without a message the node is asked for progress.
    pub fn with_keepalive(mut self, keepalive: Duration) -> Watcher {
        self.keepalive = keepalive;
        self
    }

    /// Prints the lines sent (`->`) and received (`<-`), and what the
    /// watcher does (`--`), on stderr.
    pub fn with_verbose(mut self, verbose: bool) -> Watcher {
        self.verbose = verbose;
        self
    }

    /// When `flag` is set, a [`Watcher::next`] waiting returns
    /// [`ClientError::Interrupted`] (within 50 ms) and clears it; the watch
    /// stays, and the next call goes on with it.
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// The last revision delivered (or, before any, the one the watch
    /// started after); `None` before the watch was first created.
    pub fn revision(&self) -> Option<u64> {
        self.seen
    }

    /// The node the watch is on now, if it is live.
    pub fn connected(&self) -> Option<&str> {
        self.live.as_ref().map(|l| l.conn.addr())
    }

    /// The watch's id on the node it is on now.
    pub fn watch_id(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.watch_id)
    }

    /// How many times the watch was created again on a node.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// How many messages were dropped as already delivered.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Creates the watch now if it is not live, by `deadline` (or an
    /// attempt's timeout, if later): `Ok(false)` if the deadline passed
    /// first. A node's refusal comes back as [`Watcher::next`]'s would.
    pub fn start(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        if let Some(e) = &self.finished {
            return Err(e.clone());
        }
        if self.live.is_some() {
            return Ok(true);
        }
        self.establish(deadline)
    }

    /// The watch's next message, waiting for it until `deadline`; `Ok(None)`
    /// if none came by then. Resumes on another node as needed (an attempt
    /// under way may take its own timeout past `deadline`). An error is
    /// final (the same comes again) but for [`ClientError::Interrupted`]
    /// and, once resuming gave up for now, [`ClientError::Unreachable`]
    /// (or the last node's refusal): the next call goes on trying.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(e) = &self.finished {
                return Err(e.clone());
            }
            if self.live.is_none() && !self.establish(deadline)? {
                return Ok(None);
            }
            match self.read(deadline) {
                Read::Event(event) => return Ok(Some(event)),
                Read::Nothing => {}
                Read::Deadline => return Ok(None),
                Read::Interrupted => return Err(ClientError::Interrupted),
                Read::Final(e) => return Err(self.finish(e)),
                Read::Lost(why, compacted) => {
                    let addr = self.lose(&why);
                    if let Some(e) = compacted {
                        if let Some(e) = self.note_compacted(addr, e) {
                            return Err(self.finish(e));
                        }
                    }
                }
            }
        }
    }

    /// Cancels the watch on its node (`{"op":"cancel"}`, waiting a moment
    /// for the answer) and closes the connection. Dropping the watcher
    /// ends the watch too, as the node drops a closed connection's watches.
    pub fn cancel(mut self) -> Result<(), ClientError> {
        let Some(mut live) = self.live.take() else {
            return Ok(());
        };
        self.req_id += 1;
        let req_id = self.req_id;
        let request = WatchRequest::Cancel {
            watch_id: live.watch_id,
        };
        let mut line = Vec::new();
        encode_request(&mut line, Some(req_id), &ClientRequest::Watch(request));
        let deadline = Instant::now() + self.attempt_timeout.min(Duration::from_secs(2));
        let addr = live.conn.addr().to_string();
        // Its news until then are skipped.
        let reply = live
            .conn
            .exchange(&line, Some(req_id), deadline, None, self.verbose)
            .map_err(|e| ClientError::Unreachable(format!("{addr}: {e}")))?;
        match reply.envelope.error() {
            Some(e) => Err(ClientError::Server(e)),
            None => Ok(()),
        }
    }

    fn note(&self, text: impl AsRef<str>) {
        if self.verbose {
            eprintln!("-- {}", text.as_ref());
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }

    fn finish(&mut self, e: ClientError) -> ClientError {
        self.live = None;
        self.finished = Some(e.clone());
        e
    }

    /// Drops the live watch: the next attempt starts at the next node.
    /// Returns the node's address.
    fn lose(&mut self, why: &str) -> String {
        let addr = self
            .live
            .take()
            .map(|l| l.conn.addr().to_string())
            .unwrap_or_default();
        self.note(format!("lost the watch on {addr}: {why}"));
        self.targets.move_past(&addr);
        self.last_error = Some(ClientError::Unreachable(format!("{addr}: {why}")));
        addr
    }

    /// `addr` cannot resume the watch without a gap: the error to end it
    /// with if no node can.
    fn note_compacted(&mut self, addr: String, e: ErrorReply) -> Option<ClientError> {
        self.compacted.retain(|(a, _)| *a != addr);
        self.compacted.push((addr, e.clone()));
        let all = self
            .targets
            .addrs()
            .iter()
            .all(|a| self.compacted.iter().any(|(c, _)| c == a));
        all.then_some(ClientError::Server(e))
    }

    /// The `create` for the next attempt: as asked the first time; after
    /// that from the revision after the last delivered, or (a listing not
    /// delivered whole) listing again.
    fn next_create(&self) -> WatchCreate {
        let mut create = self.create.clone();
        if let Some(seen) = self.seen {
            create.start_revision = Some(seen + 1);
            create.list = false;
        } else if create.list {
            create.start_revision = None;
        }
        create
    }

    /// Tries the nodes in turn until one creates the watch: `Ok(false)` if
    /// `deadline` passed first.
    fn establish(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        loop {
            if self.interrupted() {
                return Err(ClientError::Interrupted);
            }
            let since = *self.lost_since.get_or_insert_with(Instant::now);
            let give_up = since + self.resume_timeout;
            let order = self.targets.order();
            let mut tls_refused = 0;
            for addr in &order {
                let addr = addr.clone();
                match self.attempt(&addr) {
                    Ok(live) => {
                        self.note(format!(
                            "watch {} created on {addr}{}",
                            live.watch_id,
                            match self.seen {
                                Some(seen) => format!(", from revision {}", seen + 1),
                                None => String::new(),
                            }
                        ));
                        if std::mem::replace(&mut self.created_once, true) {
                            self.resumes += 1;
                        }
                        self.live = Some(live);
                        self.lost_since = None;
                        self.backoff = FIRST_BACKOFF;
                        self.compacted.clear();
                        return Ok(true);
                    }
                    Err(Attempt::Interrupted) => return Err(ClientError::Interrupted),
                    Err(Attempt::Final(e)) => return Err(self.finish(e)),
                    Err(Attempt::Failed(e)) => {
                        self.note(format!("{addr}: {e}"));
                        if matches!(e, ClientError::Tls(_)) {
                            tls_refused += 1;
                            if tls_refused == order.len() {
                                // TLS refused every node: trying again will not help.
                                return Err(self.finish(e));
                            }
                        }
                        self.last_error = Some(e);
                        self.targets.move_past(&addr);
                    }
                    Err(Attempt::Compacted(e)) => {
                        self.note(format!("{addr}: COMPACTED: {}", e.message));
                        self.targets.move_past(&addr);
                        if let Some(e) = self.note_compacted(addr, e) {
                            return Err(self.finish(e));
                        }
                    }
                }
                if Instant::now() >= give_up {
                    break;
                }
            }
            if Instant::now() >= give_up {
                self.lost_since = None;
                if let Some((_, e)) = self.compacted.last() {
                    let e = ClientError::Server(e.clone());
                    return Err(self.finish(e));
                }
                let why = self
                    .last_error
                    .take()
                    .map_or_else(|| "no address to try".to_string(), |e| e.to_string());
                return Err(ClientError::Unreachable(format!(
                    "no node took the watch within {:?} ({why})",
                    self.resume_timeout
                )));
            }
            // Every node failed this round: a pause, then the next.
            let until = (Instant::now() + self.backoff).min(deadline).min(give_up);
            while Instant::now() < until {
                if self.interrupted() {
                    return Err(ClientError::Interrupted);
                }
                sleep(SLICE.min(until.saturating_duration_since(Instant::now())));
            }
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Connects to `addr`, logs in and creates the watch there.
    fn attempt(&mut self, addr: &str) -> Result<Live, Attempt> {
        let deadline = Instant::now() + self.attempt_timeout;
        let opener = Opener {
            tls: self.tls.as_ref(),
            credentials: self.credentials.as_ref(),
            interrupt: self.interrupt.as_deref(),
            verbose: self.verbose,
        };
        let mut conn = match opener.open(addr, deadline) {
            Ok(conn) => conn,
            Err(OpenError::Conn(ConnError::Interrupted)) => return Err(Attempt::Interrupted),
            Err(OpenError::Conn(ConnError::Tls(m))) => {
                return Err(Attempt::Failed(ClientError::Tls(m)))
            }
            Err(OpenError::Conn(e)) => {
                return Err(Attempt::Failed(ClientError::Unreachable(format!(
                    "{addr}: {e}"
                ))))
            }
            Err(OpenError::Refused(e @ ClientError::Login(_))) => return Err(Attempt::Final(e)),
            Err(OpenError::Refused(e)) => return Err(Attempt::Failed(e)),
        };
        self.req_id += 1;
        let req_id = self.req_id;
        let create = self.next_create();
        let listing = create.list;
        let mut line = Vec::new();
        encode_request(
            &mut line,
            Some(req_id),
            &ClientRequest::Watch(WatchRequest::Create(create)),
        );
        let interrupt = self.interrupt.as_deref();
        let reply = match conn.exchange(&line, Some(req_id), deadline, interrupt, self.verbose) {
            Ok(reply) => reply,
            Err(ConnError::Interrupted) => return Err(Attempt::Interrupted),
            Err(e) => {
                return Err(Attempt::Failed(ClientError::Unreachable(format!(
                    "{addr}: {e}"
                ))))
            }
        };
        if let Some(e) = reply.envelope.error() {
            return Err(match e.code {
                ErrorCode::Compacted => Attempt::Compacted(e),
                // This node cannot take it now; another may.
                ErrorCode::TooManyWatches
                | ErrorCode::Removed
                | ErrorCode::Overloaded
                | ErrorCode::NoSpace => Attempt::Failed(ClientError::Server(e)),
                _ => Attempt::Final(ClientError::Server(e)),
            });
        }
        let created = match reply.envelope.msg_type.as_str() {
            "WATCH" => serde_json::from_value::<WatchReply>(reply.envelope.payload).ok(),
            _ => None,
        };
        let (watch_id, revision) = match created {
            Some(WatchReply {
                created: true,
                watch_id: Some(id),
                revision,
                ..
            }) => (id, revision),
            _ => {
                return Err(Attempt::Failed(ClientError::Protocol(format!(
                    "{addr}: not a created watch: {}",
                    reply.line
                ))))
            }
        };
        if self.seen.is_none() && !listing {
            // A watch from now: it starts after the node's revision.
            self.seen = Some(revision);
        }
        if listing && self.listing_begun {
            self.restart_pending = true;
        }
        Ok(Live {
            conn,
            watch_id,
            last_heard: Instant::now(),
            probe: None,
        })
    }

    /// Reads one message from the live watch, until `deadline` (probing an
    /// idle node on the way).
    fn read(&mut self, deadline: Instant) -> Read {
        let keepalive = self.keepalive;
        let attempt_timeout = self.attempt_timeout;
        let verbose = self.verbose;
        let interrupt = self.interrupt.clone();
        let Some(live) = self.live.as_mut() else {
            return Read::Lost("not connected".into(), None);
        };
        let now = Instant::now();
        if let Some((_, by)) = live.probe {
            if now >= by {
                return Read::Lost(
                    format!("no answer to a progress probe within {attempt_timeout:?}"),
                    None,
                );
            }
        } else if now >= live.last_heard + keepalive {
            self.req_id += 1;
            let mut line = Vec::new();
            encode_request(
                &mut line,
                Some(self.req_id),
                &ClientRequest::Watch(WatchRequest::Progress),
            );
            if verbose {
                eprintln!("-> {}", String::from_utf8_lossy(&line).trim_end());
            }
            if let Err(e) = live.conn.send(&line, now + attempt_timeout) {
                return Read::Lost(format!("sending a progress probe: {e}"), None);
            }
            live.probe = Some((self.req_id, now + attempt_timeout));
        }
        let wake = match live.probe {
            Some((_, by)) => by,
            None => live.last_heard + keepalive,
        };
        let until = deadline.min(wake);
        let reply = match live.conn.read_reply(until, interrupt.as_deref()) {
            Ok(reply) => reply,
            Err(ConnError::Interrupted) => return Read::Interrupted,
            Err(ConnError::Io { error, .. }) if error.kind() == std::io::ErrorKind::TimedOut => {
                return if Instant::now() >= deadline {
                    Read::Deadline
                } else {
                    Read::Nothing // time to probe, or the probe is late
                };
            }
            Err(e) => return Read::Lost(e.to_string(), None),
        };
        if verbose {
            eprintln!("<- {}", reply.line);
        }
        live.last_heard = Instant::now();
        if let Some(req_id) = reply.envelope.req_id {
            if live.probe.is_some_and(|(id, _)| id == req_id) {
                live.probe = None;
            }
            return Read::Nothing; // the probe's answer, or a stray reply
        }
        if reply.envelope.msg_type != "WATCH" {
            return match reply.envelope.error() {
                Some(e) => Read::Lost(format!("{}: {}", e.code, e.message), None),
                None => Read::Lost(format!("unexpected message: {}", reply.line), None),
            };
        }
        let news: WatchReply = match serde_json::from_value(reply.envelope.payload) {
            Ok(news) => news,
            Err(e) => return Read::Lost(format!("a WATCH message that is not one: {e}"), None),
        };
        if news.watch_id != Some(live.watch_id) {
            return Read::Nothing;
        }
        self.news(news)
    }

    /// A message of the live watch.
    fn news(&mut self, news: WatchReply) -> Read {
        if news.canceled {
            let Some(error) = news.error else {
                return Read::Lost("the node canceled the watch".into(), None);
            };
            // The cancellation's revision is the node's, not the watch's:
            // the watch resumes after the last revision delivered.
            return match error.code {
                ErrorCode::SlowWatcher => {
                    Read::Lost(format!("SLOW_WATCHER: {}", error.message), None)
                }
                ErrorCode::Compacted => {
                    Read::Lost(format!("COMPACTED: {}", error.message), Some(error))
                }
                _ => Read::Final(ClientError::Server(error)),
            };
        }
        let revision = news.revision;
        if let Some(kvs) = news.kvs {
            if self.listed || !self.create.list {
                return Read::Nothing; // not a listing watch (any more)
            }
            self.listing_begun = true;
            if !news.more {
                self.listed = true;
                self.seen = Some(revision);
            }
            let restarted = std::mem::take(&mut self.restart_pending);
            return Read::Event(WatchEvent::Listed {
                revision,
                kvs,
                more: news.more,
                restarted,
            });
        }
        if self.seen.is_some_and(|seen| revision <= seen) {
            // Delivered before (a node that resent it): dropped.
            self.skipped += 1;
            if !news.events.is_empty() {
                self.note(format!("dropped revision {revision}: delivered already"));
            }
            return Read::Nothing;
        }
        if self.create.list && !self.listed {
            return Read::Lost(
                format!("revision {revision} came before the listing ended"),
                None,
            );
        }
        self.seen = Some(revision);
        if news.events.is_empty() {
            return Read::Event(WatchEvent::Progress { revision });
        }
        Read::Event(WatchEvent::Changes {
            revision,
            events: news.events,
        })
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
