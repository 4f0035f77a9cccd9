//! The recipes of etcd's `concurrency` package, on poncho's leases, `TXN`,
//! `RANGE` and `WATCH`: a [`LeaseSession`] that keeps a lease alive, a
//! distributed lock ([`lock`], [`Lock`]) and a leader election
//! ([`Election`], [`leader`], [`observe`]).
//!
//! **Sessions.** [`LeaseSession::grant`] grants a lease of a TTL and keeps
//! it alive from a thread of its own, on a connection of its own: a
//! keepalive every TTL/3, to any node (a follower forwards it to the
//! leader), moving to the next node when one fails. When the cluster says
//! the lease is gone (`LEASE_NOT_FOUND`), or no keepalive was answered for
//! a whole TTL (the leader has expired it, or will), the session is lost
//! ([`LeaseSession::lost`]): every lock and leadership held through it is
//! lost too, since its keys are (or will be) deleted with the lease.
//! Closing the session ([`LeaseSession::close`], or dropping it) stops the
//! keepalives and revokes the lease, which deletes its keys.
//!
//! **Locks**, as etcd's `Mutex`: the lock `NAME` is the prefix `NAME/`; a
//! contender's key is `NAME/<lease id in hex>`, attached to its lease,
//! created by the `TXN` `if create_revision(key) = 0 then put key "" with
//! the lease else range key` (so locking again with the same session finds
//! the key it has, and keeps its place). The holder is the key with the
//! smallest `create_revision`; every other contender watches the key just
//! before its own (the largest `create_revision` smaller than its own),
//! from the revision after its `RANGE`, waits for its delete, and looks
//! again: one watch each, no polling, and a holder's release wakes one
//! waiter. The holder's `create_revision` only grows from holder to holder:
//! it is the lock's fencing token ([`Lock::revision`]).
//!
//! **Elections** are the same queue: the leader is the key with the
//! smallest `create_revision`, and its value is the leader's. A campaign
//! waits for its turn as a lock does; [`Election::proclaim`] changes the
//! value only while the key is still the one it created.
//!
//! Lock and election names should not be prefixes of each other at a `/`
//! (`a` and `a/b`): their keys would share a prefix, as in etcd.
//!
//! Every wait has a deadline (`None`: until acquired, Ctrl-C or a lost
//! session); a wait that gives up deletes the key it created, so nothing
//! is left in the queue. Every request goes through a [`ClusterClient`],
//! with its timeout, retries and exactly-once writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use poncho_protocol::{
    ClientRequest, Compare, CompareOp, CompareTarget, CompareValue, ErrorCode, EventType, KeyValue,
    LeaseReply, LeaseRequest, RangeReply, RangeRequest, ReplyError, ReplyPayload, Txn, TxnOp,
    TxnOpReply, TxnReply, TxnRequest, WatchCreate,
};
use serde::de::DeserializeOwned;

use crate::cluster::ClusterClient;
use crate::conn::Reply;
use crate::error::ClientError;
use crate::leader::Route;
use crate::watch::{WatchEvent, Watcher};

/// etcd's default session TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How often a wait looks at its session, its deadline and Ctrl-C.
const WAKE: Duration = Duration::from_millis(200);
/// After a failed keepalive, the next one this much later.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Sessions

/// A lease kept alive from a background thread; see the module's doc.
pub struct LeaseSession {
    id: u64,
    ttl: Duration,
    shared: Arc<Shared>,
    /// The keepalive thread; it hands its client back when it stops.
    thread: Option<JoinHandle<ClusterClient>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stop: bool,
    lost: Option<ClientError>,
    keepalives: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A keepalive thread that panicked holding the lock leaves a
        // poisoned mutex: its state is still good to read.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LeaseSession {
    /// Grants a lease of `ttl` (whole seconds, rounded up; 2 s at least,
    /// as the cluster requires) through `client`, exactly once, and starts
    /// keeping it alive, on a connection of its own to the nodes `client`
    /// knows, as `client` connects (TLS, credentials).
    pub fn grant(client: &mut ClusterClient, ttl: Duration) -> Result<LeaseSession, ClientError> {
        let secs = ttl.as_millis().div_ceil(1000) as u64;
        let reply = client.write(|session| {
            ClientRequest::Lease(LeaseRequest::Grant {
                ttl: secs,
                client_id: session.client_id,
                seq: session.seq,
            })
        })?;
        let granted: LeaseReply = success(&reply)?;
        let Some(id) = granted.id else {
            return Err(ClientError::Protocol(format!(
                "{}: a lease grant's reply without an id: {}",
                reply.addr, reply.line
            )));
        };
        let ttl = Duration::from_secs(granted.ttl.unwrap_or(secs).max(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let keeper = ClusterClient::new(
            client.addrs().to_vec(),
            (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5)),
            false,
        )
        .with_tls(client.tls().cloned())
        .with_credentials(client.credentials().cloned());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("lease-{id:x}"))
                .spawn(move || keep_alive(keeper, id, ttl, &shared))
                .map_err(|e| ClientError::Unreachable(format!("no keepalive thread: {e}")))?
        };
        Ok(LeaseSession {
            id,
            ttl,
            shared,
            thread: Some(thread),
        })
    }

    /// The lease's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The lease's TTL, as granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many keepalives the cluster has answered.
    pub fn keepalives(&self) -> u64 {
        self.shared.lock().keepalives
    }

    /// Why the session is lost ([`ClientError::LeaseLost`]), if it is:
    /// the lease is gone, or will be, with every key attached to it.
    pub fn lost(&self) -> Option<ClientError> {
        self.shared.lock().lost.clone()
    }

    /// `Err` with why, if the session is lost.
    pub fn check(&self) -> Result<(), ClientError> {
        match self.lost() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until the session is lost (then why) or `until` passes
    /// (`None`), without asking the cluster anything.
    pub fn wait_lost(&self, until: Instant) -> Option<ClientError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(e) = &state.lost {
                return Some(e.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = match self.shared.wake.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Stops the keepalives and revokes the lease, which deletes every key
    /// attached to it (and so releases its locks and leaderships). A lease
    /// already gone counts as revoked.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.shut_down(None)
    }

    fn shut_down(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        {
            let mut state = self.shared.lock();
            state.stop = true;
        }
        self.shared.wake.notify_all();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let mut client = thread
            .join()
            .map_err(|_| ClientError::Protocol("the keepalive thread panicked".into()))?;
        if let Some(t) = timeout {
            client.timeout = t;
        }
        let request = ClientRequest::Lease(LeaseRequest::Revoke {
            id: self.id,
            client_id: None,
            seq: None,
        });
        // Without a session: a revoke applied twice is one revoke and a
        // LEASE_NOT_FOUND, which is what a revoke wants anyway.
        match client.request(&request, Route::Leader) {
            Ok(_) => Ok(()),
            Err(ClientError::Server(e)) if e.code == ErrorCode::LeaseNotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseSession {
    /// Revokes the lease, trying for 2 s at most (else it expires after its
    /// TTL, as it would if the process died).
    fn drop(&mut self) {
        let _ = self.shut_down(Some(Duration::from_secs(2)));
    }
}

/// The keepalive thread: a keepalive every TTL/3 until told to stop or the
/// lease is lost; hands its client back.
fn keep_alive(mut client: ClusterClient, id: u64, ttl: Duration, shared: &Shared) -> ClusterClient {
    let period = ttl / 3;
    // Counted from when a keepalive was sent, the earliest the leader can
    // have renewed the lease from.
    let mut renewed = Instant::now();
    let mut next = renewed + period;
    let mut not_found = 0;
    loop {
        {
            let mut state = shared.lock();
            loop {
                if state.stop {
                    return client;
                }
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = match shared.wake.wait_timeout(state, left) {
                    Ok((s, _)) => s,
                    Err(e) => e.into_inner().0,
                };
            }
        }
        let sent = Instant::now();
        // A request may not outlast the lease: its retries stop in time to
        // report the loss.
        let expires = renewed + ttl;
        let request = ClientRequest::Lease(LeaseRequest::Keepalive { id });
        let result = client
            .request(&request, Route::Here)
            .and_then(|r| success::<LeaseReply>(&r));
        let lost = match result {
            Ok(_) => {
                renewed = sent;
                next = sent + period;
                not_found = 0;
                shared.lock().keepalives += 1;
                None
            }
            Err(ClientError::Server(e)) if e.code == ErrorCode::LeaseNotFound => {
                // Once more, on another node, in case that one answered
                // from behind; twice is the cluster's answer.
                not_found += 1;
                client.rotate();
                next = Instant::now() + KEEPALIVE_RETRY;
                (not_found >= 2).then(|| {
                    ClientError::LeaseLost(format!(
                        "lease {id:x} is gone (expired or revoked): {}",
                        e.message
                    ))
                })
            }
            Err(e) => {
                client.rotate();
                next = Instant::now() + KEEPALIVE_RETRY;
                (Instant::now() >= expires).then(|| {
                    ClientError::LeaseLost(format!(
                        "no keepalive of lease {id:x} was answered for its TTL of {ttl:?}, \
                         so it has expired or will: {e}"
                    ))
                })
            }
        };
        if let Some(e) = lost {
            shared.lock().lost = Some(e);
            shared.wake.notify_all();
            return client;
        }
    }
}

// ---------------------------------------------------------------------------
// Locks

/// A lock held: its key, and the key's `create_revision`, the fencing
/// token. Dropping it does not release it ([`Lock::unlock`] does, and so
/// does closing its session).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a lock is held until unlocked or its session closes"]
pub struct Lock {
    name: String,
    key: String,
    revision: u64,
    lease: u64,
}

impl Lock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's key: `NAME/<lease id in hex>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's `create_revision`: larger than every earlier holder's, so
    /// a resource can refuse a write fenced with a smaller one.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The lease the key is attached to.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// Releases the lock: deletes its key, if it is still the key this
    /// lock created. [`ClientError::LeaseLost`] if it was not (the lock had
    /// been lost already).
    pub fn unlock(self, client: &mut ClusterClient) -> Result<(), ClientError> {
        if delete_if_ours(client, &self.key, self.revision)? {
            Ok(())
        } else {
            Err(ClientError::LeaseLost(format!(
                "lock {:?} had been lost already: its key {} is gone",
                self.name, self.key
            )))
        }
    }

    /// Whether the lock is still held (its key is still the one it
    /// created: a linearizable read).
    pub fn is_held(&self, client: &mut ClusterClient) -> Result<bool, ClientError> {
        still_ours(client, &self.key, self.revision)
    }
}

/// Acquires the lock `name` for `session`, waiting for its turn until
/// `deadline` (`None`: no deadline): etcd's `Mutex.Lock`, see the module's
/// doc. Fails with [`ClientError::Deadline`] at the deadline,
/// [`ClientError::Interrupted`] at Ctrl-C (the client's flag),
/// [`ClientError::LeaseLost`] if the session is lost; a key this call
/// created is deleted then. With a session that holds the lock already,
/// it returns the same lock at once.
pub fn lock(
    client: &mut ClusterClient,
    session: &LeaseSession,
    name: &str,
    deadline: Option<Instant>,
) -> Result<Lock, ClientError> {
    let (key, revision) = queue(client, session, name, "", deadline)?;
    Ok(Lock {
        name: name.to_string(),
        key,
        revision,
        lease: session.id(),
    })
}

/// The key of `lease` under `name`.
pub fn key_of(name: &str, lease: u64) -> String {
    format!("{name}/{lease:x}")
}

/// Creates `session`'s key under `name` with `value` (unless it exists),
/// then waits for its turn: the key and its `create_revision`.
fn queue(
    client: &mut ClusterClient,
    session: &LeaseSession,
    name: &str,
    value: &str,
    deadline: Option<Instant>,
) -> Result<(String, u64), ClientError> {
    session.check()?;
    let key = key_of(name, session.id());
    let created = create_key(client, &key, value, session.id())?;
    let waited = (|| {
        if let Some(old) = &created.existing_value {
            if old != value {
                put_if_ours(client, &key, created.revision, value, session.id())?;
            }
        }
        wait_turn(
            client,
            session,
            &format!("{name}/"),
            &key,
            created.revision,
            deadline,
        )
    })();
    match waited {
        Ok(()) => Ok((key, created.revision)),
        Err(e) => {
            if created.existing_value.is_none() {
                // Leave no key in the queue (best effort: the lease would
                // take it anyway).
                let _ = delete_if_ours(client, &key, created.revision);
            }
            Err(e)
        }
    }
}

struct Created {
    /// The key's `create_revision`.
    revision: u64,
    /// The key was there already, with this value.
    existing_value: Option<String>,
}

/// `if create_revision(key) = 0 then put key value (lease) else range key`:
/// safe to send again whatever became of an earlier attempt.
fn create_key(
    client: &mut ClusterClient,
    key: &str,
    value: &str,
    lease: u64,
) -> Result<Created, ClientError> {
    let txn = Txn {
        compare: vec![Compare {
            key: key.to_string(),
            target: CompareTarget::CreateRevision,
            op: CompareOp::Equal,
            value: CompareValue::Number(0),
        }],
        success: vec![TxnOp::Put {
            key: key.to_string(),
            value: value.to_string(),
            lease: Some(lease),
        }],
        failure: vec![TxnOp::Range(RangeRequest {
            key: key.to_string(),
            ..RangeRequest::default()
        })],
    };
    let reply = match txn_write(client, &txn) {
        // Its outcome is unknown, and it is idempotent: once more.
        Err(ClientError::OutcomeUnknown(_)) => txn_write(client, &txn),
        other => other,
    }
    .map_err(|e| lease_error(e, lease))?;
    if reply.succeeded {
        return Ok(Created {
            revision: reply.revision,
            existing_value: None,
        });
    }
    match reply.responses.first() {
        Some(TxnOpReply::Range(RangeReply { kvs, .. })) => match kvs.first() {
            Some(kv) if kv.key == key => Ok(Created {
                revision: kv.create_revision,
                existing_value: Some(kv.value.clone().unwrap_or_default()),
            }),
            _ => Err(ClientError::Protocol(format!(
                "key {key} exists (its create_revision is not 0) but reading it found nothing"
            ))),
        },
        other => Err(ClientError::Protocol(format!(
            "a transaction's else branch of one range answered {other:?}"
        ))),
    }
}

/// Waits until `key` (created at `my_rev`) has the smallest
/// `create_revision` under `prefix`.
fn wait_turn(
    client: &mut ClusterClient,
    session: &LeaseSession,
    prefix: &str,
    key: &str,
    my_rev: u64,
    deadline: Option<Instant>,
) -> Result<(), ClientError> {
    loop {
        session.check()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ClientError::Deadline(format!(
                "{key}: not acquired by the deadline"
            )));
        }
        let (kvs, revision) = range_all(client, prefix, true)?;
        match kvs.iter().find(|kv| kv.key == key) {
            Some(mine) if mine.create_revision == my_rev => {}
            Some(_) => {
                return Err(ClientError::LeaseLost(format!(
                    "{key} was deleted and created again while waiting (by another client \
                     with this lease?)"
                )))
            }
            None => {
                return Err(session.lost().unwrap_or_else(|| {
                    ClientError::LeaseLost(format!(
                        "{key} is gone: its lease expired or was revoked, or someone deleted it"
                    ))
                }))
            }
        }
        let Some(before) = predecessor(&kvs, my_rev) else {
            return Ok(());
        };
        wait_deleted(client, session, &before.key.clone(), revision + 1, deadline)?;
    }
}

/// The key just before the one created at `my_rev` (the largest
/// `create_revision` smaller than it), if any: none means `my_rev` is the
/// smallest, the holder's.
pub fn predecessor(kvs: &[KeyValue], my_rev: u64) -> Option<&KeyValue> {
    kvs.iter()
        .filter(|kv| kv.create_revision < my_rev)
        .max_by_key(|kv| kv.create_revision)
}

/// The key with the smallest `create_revision` (the holder, the leader).
pub fn first_created(kvs: &[KeyValue]) -> Option<&KeyValue> {
    kvs.iter().min_by_key(|kv| kv.create_revision)
}

/// Watches `key` from `from` until it is deleted (or the watch cannot say:
/// a compacted history, after which the caller looks again).
fn wait_deleted(
    client: &mut ClusterClient,
    session: &LeaseSession,
    key: &str,
    from: u64,
    deadline: Option<Instant>,
) -> Result<(), ClientError> {
    let mut watcher = Watcher::for_client(
        client,
        WatchCreate {
            key: key.to_string(),
            start_revision: Some(from),
            ..WatchCreate::default()
        },
    );
    loop {
        session.check()?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(ClientError::Deadline(format!(
                "still waiting for {key} to go at the deadline"
            )));
        }
        let until = deadline.map_or(now + WAKE, |d| d.min(now + WAKE));
        match watcher.next(until) {
            Ok(Some(WatchEvent::Changes { events, .. }))
                if events
                    .iter()
                    .any(|e| e.kind == EventType::Delete && e.kv.key == key) =>
            {
                return Ok(());
            }
            Ok(_) => {}
            // No node for now: go on while the session lives.
            Err(ClientError::Unreachable(_)) => {}
            Err(ClientError::Server(e)) if e.code == ErrorCode::Compacted => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Elections

/// A leadership won by [`Election::campaign`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a leadership is held until resigned or its session closes"]
pub struct Election {
    name: String,
    key: String,
    revision: u64,
    lease: u64,
    value: String,
}

/// Who leads an election: its key, value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: String,
    pub value: String,
    /// The leadership's revision (its key's): larger for every new leader.
    pub create_revision: u64,
    /// The revision of its last proclaim (or its campaign).
    pub mod_revision: u64,
}

impl Leader {
    fn of(kv: &KeyValue) -> Leader {
        Leader {
            key: kv.key.clone(),
            value: kv.value.clone().unwrap_or_default(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }
}

impl Election {
    /// Campaigns in the election `name` with `value` and returns once
    /// leader (or fails as [`lock`] does, at `deadline`, Ctrl-C or a lost
    /// session). Campaigning again with a session that leads already
    /// returns at once, with `value` proclaimed.
    pub fn campaign(
        client: &mut ClusterClient,
        session: &LeaseSession,
        name: &str,
        value: &str,
        deadline: Option<Instant>,
    ) -> Result<Election, ClientError> {
        let (key, revision) = queue(client, session, name, value, deadline)?;
        Ok(Election {
            name: name.to_string(),
            key,
            revision,
            lease: session.id(),
            value: value.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader's key: `NAME/<lease id in hex>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The leadership's revision (its key's `create_revision`), a fencing
    /// token as a lock's is.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The value last proclaimed.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Sets the leader's value to `value`, if this is still the leader
    /// (`if create_revision(key) = ours then put`); else
    /// [`ClientError::LeaseLost`].
    pub fn proclaim(&mut self, client: &mut ClusterClient, value: &str) -> Result<(), ClientError> {
        put_if_ours(client, &self.key, self.revision, value, self.lease)?;
        self.value = value.to_string();
        Ok(())
    }

    /// Gives the leadership up: deletes the key, if it is still ours
    /// ([`ClientError::LeaseLost`] if it was not).
    pub fn resign(self, client: &mut ClusterClient) -> Result<(), ClientError> {
        if delete_if_ours(client, &self.key, self.revision)? {
            Ok(())
        } else {
            Err(ClientError::LeaseLost(format!(
                "the leadership of {:?} had been lost already: its key {} is gone",
                self.name, self.key
            )))
        }
    }

    /// Whether this is still the leader (a linearizable read).
    pub fn is_leader(&self, client: &mut ClusterClient) -> Result<bool, ClientError> {
        still_ours(client, &self.key, self.revision)
    }
}

/// Who leads the election `name` now (a linearizable read), if anyone.
pub fn leader(client: &mut ClusterClient, name: &str) -> Result<Option<Leader>, ClientError> {
    let (kvs, _) = range_all(client, &format!("{name}/"), false)?;
    Ok(first_created(&kvs).map(Leader::of))
}

/// Follows the election `name`: each new leader, and each value a leader
/// proclaims, as it happens (see [`Observer::next`]).
pub fn observe(client: &ClusterClient, name: &str) -> Observer {
    let watcher = Watcher::for_client(
        client,
        WatchCreate {
            key: format!("{name}/"),
            prefix: true,
            list: true,
            ..WatchCreate::default()
        },
    );
    Observer {
        watcher,
        keys: BTreeMap::new(),
        listed: false,
        last: None,
    }
}

/// An election followed: a `list` watch of its prefix (which resumes on
/// another node, as [`Watcher`] does), the candidates' keys as of the last
/// revision seen.
pub struct Observer {
    watcher: Watcher,
    keys: BTreeMap<String, KeyValue>,
    listed: bool,
    last: Option<Leader>,
}

impl Observer {
    /// The next leader (a new one, or the same with a new value), waiting
    /// until `deadline` (`Ok(None)` if none came by then). The first call
    /// gives the leader at the time, if there is one. A time without a
    /// leader gives nothing; the leader after it is given.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Leader>, ClientError> {
        loop {
            let Some(event) = self.watcher.next(deadline)? else {
                return Ok(None);
            };
            match event {
                WatchEvent::Listed {
                    kvs,
                    more,
                    restarted,
                    ..
                } => {
                    if restarted {
                        self.keys.clear();
                    }
                    for kv in kvs {
                        self.keys.insert(kv.key.clone(), kv);
                    }
                    self.listed = !more;
                }
                WatchEvent::Changes { events, .. } => {
                    for e in events {
                        match e.kind {
                            EventType::Put => {
                                self.keys.insert(e.kv.key.clone(), e.kv);
                            }
                            EventType::Delete => {
                                self.keys.remove(&e.kv.key);
                            }
                        }
                    }
                }
                WatchEvent::Progress { .. } => continue,
            }
            if !self.listed {
                continue;
            }
            let kvs: Vec<KeyValue> = self.keys.values().cloned().collect();
            let now = first_created(&kvs).map(Leader::of);
            if now != self.last {
                self.last.clone_from(&now);
                if now.is_some() {
                    return Ok(now);
                }
            }
        }
    }

    /// The leader as of the last [`Observer::next`], if any.
    pub fn current(&self) -> Option<&Leader> {
        self.last.as_ref()
    }

    /// The revision the observer has seen up to.
    pub fn revision(&self) -> Option<u64> {
        self.watcher.revision()
    }
}

// ---------------------------------------------------------------------------
// Requests

/// A write's success reply of type `T`.
fn success<T: ReplyPayload + DeserializeOwned>(reply: &Reply) -> Result<T, ClientError> {
    reply.envelope.success().map_err(|e| match e {
        ReplyError::Error(e) => ClientError::Server(e),
        other => ClientError::Protocol(format!("{}: {other}", reply.addr)),
    })
}

/// A transaction, exactly once.
fn txn_write(client: &mut ClusterClient, txn: &Txn) -> Result<TxnReply, ClientError> {
    let reply = client.write(|session| {
        ClientRequest::Txn(TxnRequest {
            txn: txn.clone(),
            session,
        })
    })?;
    success(&reply)
}

/// `LEASE_NOT_FOUND` from a write with `lease`: the session is lost.
fn lease_error(e: ClientError, lease: u64) -> ClientError {
    match e {
        ClientError::Server(e) if e.code == ErrorCode::LeaseNotFound => {
            ClientError::LeaseLost(format!("lease {lease:x} is gone: {}", e.message))
        }
        other => other,
    }
}

fn created_at(key: &str, revision: u64) -> Compare {
    Compare {
        key: key.to_string(),
        target: CompareTarget::CreateRevision,
        op: CompareOp::Equal,
        value: CompareValue::Number(revision),
    }
}

/// Deletes `key` if it is the one created at `revision`: whether it was.
fn delete_if_ours(
    client: &mut ClusterClient,
    key: &str,
    revision: u64,
) -> Result<bool, ClientError> {
    let txn = Txn {
        compare: vec![created_at(key, revision)],
        success: vec![TxnOp::Delete {
            key: key.to_string(),
            range_end: None,
            prefix: false,
        }],
        failure: vec![],
    };
    let reply = match txn_write(client, &txn) {
        // Idempotent: once more says whether the key is (still) there.
        Err(ClientError::OutcomeUnknown(_)) => match txn_write(client, &txn) {
            Ok(r) if !r.succeeded => return Ok(true),
            other => other,
        },
        other => other,
    }?;
    Ok(reply.succeeded)
}

/// Puts `value` in `key` (with `lease`) if it is the one created at
/// `revision`; else [`ClientError::LeaseLost`].
fn put_if_ours(
    client: &mut ClusterClient,
    key: &str,
    revision: u64,
    value: &str,
    lease: u64,
) -> Result<(), ClientError> {
    let txn = Txn {
        compare: vec![created_at(key, revision)],
        success: vec![TxnOp::Put {
            key: key.to_string(),
            value: value.to_string(),
            lease: Some(lease),
        }],
        failure: vec![],
    };
    let reply = txn_write(client, &txn).map_err(|e| lease_error(e, lease))?;
    if reply.succeeded {
        Ok(())
    } else {
        Err(ClientError::LeaseLost(format!(
            "{key} is no longer the key created at revision {revision}: not the leader any more"
        )))
    }
}

/// Whether `key` is still the one created at `revision`.
fn still_ours(client: &mut ClusterClient, key: &str, revision: u64) -> Result<bool, ClientError> {
    let request = RangeRequest {
        key: key.to_string(),
        keys_only: true,
        ..RangeRequest::default()
    };
    let reply = client.request(&ClientRequest::Range(request), Route::Leader)?;
    let range: RangeReply = success(&reply)?;
    Ok(range
        .kvs
        .iter()
        .any(|kv| kv.key == key && kv.create_revision == revision))
}

/// Every key under `prefix` (a linearizable `RANGE`, page by page at the
/// first page's revision), and that revision.
fn range_all(
    client: &mut ClusterClient,
    prefix: &str,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, u64), ClientError> {
    let mut request = RangeRequest {
        keys_only,
        ..RangeRequest::prefix(prefix)
    };
    let mut kvs = Vec::new();
    loop {
        let reply = client.request(&ClientRequest::Range(request.clone()), Route::Leader)?;
        let page: RangeReply = success(&reply)?;
        kvs.extend(page.kvs);
        let revision = *request.rev.get_or_insert(page.revision);
        match page.next_key {
            Some(next) if page.more => {
                if request.from.as_ref().is_some_and(|from| next <= *from)
                    || next.as_str() <= prefix
                {
                    return Err(ClientError::Protocol(format!(
                        "{}: the next page of {prefix:?} starts at {next:?}, not past the last",
                        reply.addr
                    )));
                }
                request.from = Some(next);
            }
            _ => return Ok((kvs, revision)),
        }
    }
}

#[cfg(test)]
#[path = "recipes_tests.rs"]
mod tests;
