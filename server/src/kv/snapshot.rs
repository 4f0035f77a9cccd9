//! Snapshots of the store: taking one, its line format, and restoring it.
//!
//! The maps are persistent B-trees ([`imbl::OrdMap`]): a clone shares every
//! node with the original, and a later write copies only the nodes on its
//! path. [`KvStore::snapshot`] is therefore O(1) and the event loop can take
//! one between two applies, hand the [`KvSnapshot`] to a background thread to
//! serialize with [`KvSnapshot::write_lines`], and keep applying. Keys, values
//! and cached replies are behind `Arc`s, so the copies a write makes while a
//! snapshot still shares its nodes are reference-count increments, not string
//! copies.
//!
//! A snapshot is JSON Lines (compact JSON, so no line contains `\n`), in this
//! order; [`KvStore::restore`] reads it back and rejects anything else:
//!
//! 1. One store line, with every store-level field apply depends on, and how
//!    many key and session lines follow (so a truncated snapshot is detected):
//!    `{"format":2,"last_applied":9,"clock_ms":1700000000000,"session_timeout_ms":600000,`
//!    `"max_sessions":100000,"max_session_bytes":134217728,"keys":2,"sessions":1}`
//! 2. One line per key, in key order, with its revisions (format 4):
//!    `{"k":"a","v":"1","c":5,"m":9,"ver":3}`
//! 3. One line per session, in `client_id` order, with the cached reply in the
//!    shape of its wire reply plus its `type` (a session that has not written
//!    yet has `last_seq` 0 and its registration's reply):
//!    `{"client_id":3,"last_seq":4,"reply":{"type":"SET","key":"a","index":7},`
//!    `"last_used_index":9,"last_used_ts_ms":1700000000000}`; a session
//!    registered by a logged-in user also has `"user":"alice"`.
//! 4. One line per role, in name order (format 3):
//!    `{"role":"app","permissions":[{"prefix":"app/","access":"readwrite"}]}`
//! 5. One line per user, in name order (format 3), with its password's salted
//!    hash (never the password) and the index that set it:
//!    `{"user":"alice","password_hash":"$argon2id$..","roles":["app"],"since":6}`
//!
//! 6. One line per lease, in id order (format 5), with its TTL in seconds:
//!    `{"lease":12,"ttl":10}`. A key attached to one has `"l":12` on its line.
//!
//! Format 5's store line adds `leases` (the count of lines 6).
//! Format 3's store line adds `auth_enabled`, `roles` and `users` (the
//! counts of lines 4 and 5). A format 2 snapshot (before users and roles)
//! is still read: it has none. Format 4's adds `revision`; a format 2 or 3
//! snapshot is read as if every key was written once at its index, which
//! is then also the store's revision.
//!
//! The same entries always give byte-identical snapshot lines.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

use imbl::OrdMap;
use poncho_protocol::{PermissionInfo, RegisterClientReply};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use super::auth::{AuthStore, Permission};
use super::ops::ApplyResult;
use super::session::Session;
use super::store::{Data, KvStore, Stored};

/// The version in a snapshot's store line. Raise it whenever the line format
/// or the meaning of a field changes; [`KvStore::restore`] refuses any other.
/// Format 2: sessions are keyed by the numeric id `REGISTER_CLIENT` gave
/// (format 1 had client-chosen string ids, which this build cannot honour).
/// Format 3: users, roles and whether auth is on; a session's user.
/// Format 4: revisions: the store's, and each key's `create_revision`,
/// `mod_revision` and `version` (`"c"`, `"m"`, `"ver"`). An older
/// snapshot's keys read as written once at its index.
/// Format 5: leases, and the lease each key is attached to (`"l"`).
pub const SNAPSHOT_FORMAT: u32 = 5;
/// The oldest format [`KvStore::restore`] still reads.
const OLDEST_READABLE_FORMAT: u32 = 2;

/// A point-in-time copy of a [`KvStore`] from [`KvStore::snapshot`]. It owns
/// (shares, copy-on-write) the store's maps, so it can move to another thread
/// and outlive any number of later writes to the store.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    data: Data,
    sessions: OrdMap<u64, Session>,
    auth: Arc<AuthStore>,
    /// The store line, counts included.
    store: StoreLine,
}

// The event loop hands snapshots to a background thread.
const _: () = {
    const fn send_static<T: Send + Sync + 'static>() {}
    send_static::<KvSnapshot>();
};

impl KvSnapshot {
    /// Index of the last entry the snapshot includes.
    pub fn last_applied(&self) -> u64 {
        self.store.last_applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Calls `f` with each line of the snapshot in order (see the module doc
    /// for the format), without its line ending; stops at the first error `f`
    /// returns and returns it. A line never contains `\n`.
    ///
    /// One buffer is reused for every line, so the cost is one pass over the
    /// state and no allocation per key.
    pub fn write_lines<F>(&self, mut f: F) -> io::Result<()>
    where
        F: FnMut(&str) -> io::Result<()>,
    {
        let mut buffer = Vec::with_capacity(256);
        emit_line(&mut buffer, &self.store, &mut f)?;
        for (k, v) in self.data.iter() {
            let line = KeyLine {
                k: Cow::Borrowed(&**k),
                v: Cow::Borrowed(&*v.value),
                c: Some(v.create_revision),
                m: Some(v.mod_revision),
                ver: Some(v.version),
                l: (v.lease != 0).then_some(v.lease),
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        for (client_id, session) in self.sessions.iter() {
            let line = SessionLine {
                client_id: *client_id,
                last_seq: session.last_seq,
                reply: Cow::Borrowed(&*session.result),
                last_used_index: session.last_used_index,
                last_used_ts_ms: session.last_used_ts_ms,
                user: session.user.as_deref().map(Cow::Borrowed),
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        let (users, roles) = self.auth.entries();
        for (name, role) in roles {
            let line = RoleLine {
                role: Cow::Borrowed(name),
                permissions: role
                    .permissions
                    .iter()
                    .map(|p| PermissionInfo {
                        keys: (&p.range).into(),
                        access: p.access,
                    })
                    .collect(),
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        for (name, user) in users {
            let line = UserLine {
                user: Cow::Borrowed(name),
                password_hash: Cow::Borrowed(&user.password_hash),
                roles: user.roles.iter().cloned().collect(),
                since: user.since,
            };
            emit_line(&mut buffer, &line, &mut f)?;
        }
        for (id, ttl) in self.data.leases.iter().map(|(id, l)| (*id, l.ttl_secs)) {
            emit_line(&mut buffer, &LeaseLine { lease: id, ttl }, &mut f)?;
        }
        Ok(())
    }
}

fn emit_line<T, F>(buffer: &mut Vec<u8>, value: &T, f: &mut F) -> io::Result<()>
where
    T: Serialize,
    F: FnMut(&str) -> io::Result<()>,
{
    buffer.clear();
    serde_json::to_writer(&mut *buffer, value)?;
    // serde_json writes UTF-8, and compact output escapes every control
    // character, so the line holds no newline.
    let line = std::str::from_utf8(buffer).map_err(io::Error::other)?;
    f(line)
}

impl KvStore {
    /// The whole state as of now, for a background thread to serialize while
    /// this store goes on applying. O(1): the snapshot shares the maps' nodes,
    /// and later writes to this store copy the nodes they change.
    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            data: self.data.without_history(),
            sessions: self.sessions.clone(),
            auth: self.auth.clone(),
            store: StoreLine {
                format: SNAPSHOT_FORMAT,
                last_applied: self.last_applied,
                clock_ms: self.clock_ms,
                session_timeout_ms: self.session_timeout_ms,
                max_sessions: self.max_sessions as u64,
                max_session_bytes: self.max_session_bytes as u64,
                keys: self.data.len() as u64,
                sessions: self.sessions.len() as u64,
                auth_enabled: self.auth.enabled,
                roles: self.auth.role_count() as u64,
                users: self.auth.user_count() as u64,
                revision: self.data.revision,
                leases: self.data.leases.len() as u64,
            },
        }
    }

    /// Rebuilds the store a [`KvSnapshot::write_lines`] wrote: same data, same
    /// sessions, same clock, limits and `last_applied`, so it answers and
    /// applies every later entry exactly as the snapshotted store would.
    ///
    /// `lines` are the snapshot's lines without their line endings (as
    /// [`std::io::BufRead::lines`] gives them). Anything but a complete,
    /// well-formed snapshot, including a read error, gives an `Err` naming
    /// the line; it never panics. (A message, not a type: the one caller, the
    /// node's recovery, only prints it.)
    pub fn restore<I, E>(lines: I) -> Result<KvStore, String>
    where
        I: Iterator<Item = Result<String, E>>,
        E: fmt::Display,
    {
        let mut lines = NumberedLines { lines, number: 0 };
        let store = read_store_line(&mut lines)?;
        let mut kv = KvStore::from_store_line(&store)?;
        kv.restore_keys(&mut lines, &store)?;
        let uses = kv.restore_sessions(&mut lines, &store)?;
        kv.auth = Arc::new(restore_auth(&mut lines, &store)?);
        kv.restore_leases(&mut lines, &store)?;
        lines.expect_end(&store)?;
        check_use_order(uses)?;
        kv.check_session_limits()?;
        Ok(kv)
    }

    /// An empty store with the store line's clock, limits and `last_applied`.
    fn from_store_line(store: &StoreLine) -> Result<KvStore, String> {
        let limit = |name: &str, value: u64| {
            usize::try_from(value)
                .map_err(|_| format!("snapshot line 1: {name} {value} does not fit in memory"))
        };
        let revision = if store.format < 4 {
            // Before revisions: as if everything was written at the
            // snapshot's index.
            store.last_applied
        } else if store.revision <= store.last_applied {
            store.revision
        } else {
            return Err(format!(
                "snapshot line 1: revision {} is past last_applied {}",
                store.revision, store.last_applied
            ));
        };
        let mut kv = KvStore {
            last_applied: store.last_applied,
            clock_ms: store.clock_ms,
            session_timeout_ms: store.session_timeout_ms,
            max_sessions: limit("max_sessions", store.max_sessions)?,
            max_session_bytes: limit("max_session_bytes", store.max_session_bytes)?,
            ..KvStore::new()
        };
        kv.data.revision = revision;
        // Nothing before the snapshot is known: the history starts here.
        kv.data.history.start_at(revision);
        Ok(kv)
    }

    /// Reads the key lines the store line announces: sorted, unique.
    fn restore_keys<I, E>(
        &mut self,
        lines: &mut NumberedLines<I>,
        store: &StoreLine,
    ) -> Result<(), String>
    where
        I: Iterator<Item = Result<String, E>>,
        E: fmt::Display,
    {
        let mut previous: Option<SmolStr> = None;
        for _ in 0..store.keys {
            let line = lines.next_announced(store)?;
            let n = lines.number;
            let KeyLine { k, v, c, m, ver, l } = serde_json::from_str(&line)
                .map_err(|e| format!("snapshot line {n}: not a key line: {e}"))?;
            if l.is_some() && store.format < 5 {
                return Err(format!(
                    "snapshot line {n}: key {k:?} has a lease, which a format {} snapshot \
                     cannot hold",
                    store.format
                ));
            }
            let lease = l.unwrap_or(0);
            let stored = match (store.format, c, m, ver) {
                // Before revisions: every key as if written at the
                // snapshot's index, once.
                (..=3, None, None, None) => Stored {
                    value: Arc::from(v),
                    create_revision: store.last_applied,
                    mod_revision: store.last_applied,
                    version: 1,
                    lease,
                },
                (4.., Some(c), Some(m), Some(ver))
                    if c <= m && m <= store.revision && ver >= 1 && c >= 1 =>
                {
                    Stored {
                        value: Arc::from(v),
                        create_revision: c,
                        mod_revision: m,
                        version: ver,
                        lease,
                    }
                }
                _ => {
                    return Err(format!(
                        "snapshot line {n}: key {k:?} has revisions {c:?}/{m:?}/{ver:?}, which \
                         a format {} snapshot at revision {} cannot hold",
                        store.format, store.revision
                    ))
                }
            };
            if previous.as_deref().is_some_and(|p| p >= &*k) {
                return Err(format!(
                    "snapshot line {n}: key {k:?} is out of order (keys must be sorted and \
                     unique)"
                ));
            }
            let key = SmolStr::new(k);
            self.data.insert_new(key.clone(), stored);
            previous = Some(key);
        }
        Ok(())
    }

    /// Reads the lease lines the store line announces (sorted by id, each
    /// a grant's index), then attaches every key that names one: a key
    /// naming a lease the snapshot does not hold is refused.
    fn restore_leases<I, E>(
        &mut self,
        lines: &mut NumberedLines<I>,
        store: &StoreLine,
    ) -> Result<(), String>
    where
        I: Iterator<Item = Result<String, E>>,
        E: fmt::Display,
    {
        let mut previous = 0;
        for _ in 0..store.leases {
            let line = lines.next_announced(store)?;
            let n = lines.number;
            let LeaseLine { lease, ttl } = serde_json::from_str(&line)
                .map_err(|e| format!("snapshot line {n}: not a lease line: {e}"))?;
            if lease <= previous || lease > store.last_applied {
                return Err(format!(
                    "snapshot line {n}: lease {lease} is out of order or past last_applied {}",
                    store.last_applied
                ));
            }
            previous = lease;
            self.data.leases.insert(
                lease,
                super::store::Lease {
                    ttl_secs: ttl,
                    keys: imbl::OrdSet::new(),
                },
            );
        }
        let attached: Vec<(SmolStr, u64)> = self
            .data
            .iter()
            .filter(|(_, s)| s.lease != 0)
            .map(|(k, s)| (k.clone(), s.lease))
            .collect();
        for (key, lease) in attached {
            if !self.data.has_lease(lease) {
                return Err(format!(
                    "snapshot: key {key:?} is attached to lease {lease}, which the snapshot \
                     does not hold"
                ));
            }
            self.data.attach(lease, &key);
        }
        Ok(())
    }

    /// Reads the session lines the store line announces, each checked on its
    /// own (sorted by id, unique, consistent with the store line); returns
    /// their last uses for the checks across lines.
    fn restore_sessions<I, E>(
        &mut self,
        lines: &mut NumberedLines<I>,
        store: &StoreLine,
    ) -> Result<Vec<LastUse>, String>
    where
        I: Iterator<Item = Result<String, E>>,
        E: fmt::Display,
    {
        let mut uses = Vec::new();
        let mut previous: Option<u64> = None;
        for _ in 0..store.sessions {
            let line = lines.next_announced(store)?;
            let n = lines.number;
            let s: SessionLine = serde_json::from_str(&line)
                .map_err(|e| format!("snapshot line {n}: not a session line: {e}"))?;
            let id = s.client_id;
            if previous.is_some_and(|p| p >= id) {
                return Err(format!(
                    "snapshot line {n}: client {id} is out of order (sessions must be sorted \
                     by client_id and unique)"
                ));
            }
            s.check(n, store)?;
            uses.push(LastUse {
                index: s.last_used_index,
                ts_ms: s.last_used_ts_ms,
                line: n,
            });
            let session = Session::new(
                s.last_seq,
                s.reply.into_owned(),
                s.last_used_index,
                s.last_used_ts_ms,
                s.user.map(|u| Arc::from(u.as_ref())),
            );
            self.insert_session(id, session);
            previous = Some(id);
        }
        Ok(uses)
    }

    /// The restored sessions fit the limits the snapshot records.
    fn check_session_limits(&self) -> Result<(), String> {
        if self.sessions.len() > self.max_sessions || self.session_bytes > self.max_session_bytes {
            return Err(format!(
                "snapshot line 1: its {} sessions, {} bytes, exceed the limits it records \
                 ({} sessions, {} bytes)",
                self.sessions.len(),
                self.session_bytes,
                self.max_sessions,
                self.max_session_bytes
            ));
        }
        Ok(())
    }
}

/// Reads and checks the first line.
fn read_store_line<I, E>(lines: &mut NumberedLines<I>) -> Result<StoreLine, String>
where
    I: Iterator<Item = Result<String, E>>,
    E: fmt::Display,
{
    let Some(line) = lines.next()? else {
        return Err("snapshot line 1: missing: a snapshot starts with the store line".into());
    };
    let store: StoreLine = serde_json::from_str(&line)
        .map_err(|e| format!("snapshot line 1: not a store line: {e}"))?;
    if !(OLDEST_READABLE_FORMAT..=SNAPSHOT_FORMAT).contains(&store.format) {
        return Err(format!(
            "snapshot line 1: format {} is not supported (this build reads formats \
             {OLDEST_READABLE_FORMAT} to {SNAPSHOT_FORMAT})",
            store.format
        ));
    }
    if store.format < 3 && (store.auth_enabled || store.roles > 0 || store.users > 0) {
        return Err(format!(
            "snapshot line 1: format {} has no users or roles, but the line announces some",
            store.format
        ));
    }
    Ok(store)
}

/// Reads the role and user lines the store line announces, each in name
/// order, through the same checks as the changes that made them (names,
/// limits, roles that exist), and turns auth on if the snapshot had it on
/// (which needs a root user, as `auth enable` does).
fn restore_auth<I, E>(lines: &mut NumberedLines<I>, store: &StoreLine) -> Result<AuthStore, String>
where
    I: Iterator<Item = Result<String, E>>,
    E: fmt::Display,
{
    let mut auth = AuthStore::default();
    let mut previous: Option<String> = None;
    for _ in 0..store.roles {
        let line = lines.next_announced(store)?;
        let n = lines.number;
        let r: RoleLine = serde_json::from_str(&line)
            .map_err(|e| format!("snapshot line {n}: not a role line: {e}"))?;
        in_order(n, "role", &mut previous, &r.role)?;
        let bad = |e: super::auth::AuthError| format!("snapshot line {n}: {e}");
        auth.role_add(&r.role).map_err(bad)?;
        for p in r.permissions {
            p.keys
                .check()
                .map_err(|e| format!("snapshot line {n}: {e}"))?;
            let permission = Permission {
                range: p.keys.into(),
                access: p.access,
            };
            auth.role_grant(&r.role, permission).map_err(bad)?;
        }
    }
    previous = None;
    for _ in 0..store.users {
        let line = lines.next_announced(store)?;
        let n = lines.number;
        let u: UserLine = serde_json::from_str(&line)
            .map_err(|e| format!("snapshot line {n}: not a user line: {e}"))?;
        in_order(n, "user", &mut previous, &u.user)?;
        let bad = |e: super::auth::AuthError| format!("snapshot line {n}: {e}");
        auth.user_add(&u.user, u.password_hash.into_owned(), u.since)
            .map_err(bad)?;
        for role in &u.roles {
            auth.user_grant_role(&u.user, role).map_err(bad)?;
        }
    }
    if store.auth_enabled {
        auth.enable()
            .map_err(|e| format!("snapshot line 1: auth is enabled, but {e}"))?;
    }
    Ok(auth)
}

/// Names on consecutive lines are sorted and unique.
fn in_order(n: u64, what: &str, previous: &mut Option<String>, name: &str) -> Result<(), String> {
    if previous.as_deref().is_some_and(|p| p >= name) {
        return Err(format!(
            "snapshot line {n}: {what} {name:?} is out of order ({what}s must be sorted and \
             unique)"
        ));
    }
    *previous = Some(name.to_string());
    Ok(())
}

/// A restored session's last use, and the line it came from.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct LastUse {
    index: u64,
    ts_ms: u64,
    line: u64,
}

/// What apply keeps true of sessions must hold for restored ones: each has
/// its own slot in `sessions_by_use`, and along it the log time of last use
/// never decreases (expiry looks only at the front).
fn check_use_order(mut uses: Vec<LastUse>) -> Result<(), String> {
    uses.sort_unstable();
    for (a, b) in uses.iter().zip(uses.iter().skip(1)) {
        if a.index == b.index {
            return Err(format!(
                "snapshot line {}: last used at index {}, like the session on line {}",
                b.line, b.index, a.line
            ));
        }
        if a.ts_ms > b.ts_ms {
            return Err(format!(
                "snapshot line {}: last used at index {}, time {}, but the session on line {} \
                 was last used earlier in the log (index {}) at a later time ({})",
                b.line, b.index, b.ts_ms, a.line, a.index, a.ts_ms
            ));
        }
    }
    Ok(())
}

/// Lines with their 1-based numbers, a read error turned into a message.
struct NumberedLines<I> {
    lines: I,
    /// The number of the line returned last.
    number: u64,
}

impl<I, E> NumberedLines<I>
where
    I: Iterator<Item = Result<String, E>>,
    E: fmt::Display,
{
    fn next(&mut self) -> Result<Option<String>, String> {
        match self.lines.next() {
            None => Ok(None),
            Some(line) => {
                self.number += 1;
                line.map(Some)
                    .map_err(|e| format!("snapshot line {}: cannot read it: {e}", self.number))
            }
        }
    }

    /// The next line, which the store line's counts say is there.
    fn next_announced(&mut self, store: &StoreLine) -> Result<String, String> {
        self.next()?.ok_or_else(|| {
            format!(
                "snapshot line {}: missing: the store line announces {} (a truncated \
                 snapshot?)",
                self.number + 1,
                store.announced()
            )
        })
    }

    /// No line after the ones the store line announced.
    fn expect_end(&mut self, store: &StoreLine) -> Result<(), String> {
        if self.next()?.is_some() {
            return Err(format!(
                "snapshot line {}: unexpected: the store line announces {}, all read already",
                self.number,
                store.announced()
            ));
        }
        Ok(())
    }
}

/// A snapshot's first line. Integers are `u64` so the format does not depend
/// on the width of `usize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreLine {
    format: u32,
    last_applied: u64,
    clock_ms: u64,
    session_timeout_ms: u64,
    max_sessions: u64,
    max_session_bytes: u64,
    /// How many key lines follow, then how many session lines, role lines
    /// and user lines.
    keys: u64,
    sessions: u64,
    #[serde(default)]
    auth_enabled: bool,
    #[serde(default)]
    roles: u64,
    #[serde(default)]
    users: u64,
    /// The store's revision (format 4).
    #[serde(default)]
    revision: u64,
    /// How many lease lines follow the users (format 5).
    #[serde(default)]
    leases: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseLine {
    lease: u64,
    ttl: u64,
}

impl StoreLine {
    /// The lines it says follow, for errors.
    fn announced(&self) -> String {
        format!(
            "{} keys, {} sessions, {} roles, {} users and {} leases",
            self.keys, self.sessions, self.roles, self.users, self.leases
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleLine<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    permissions: Vec<PermissionInfo>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLine<'a> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    password_hash: Cow<'a, str>,
    roles: Vec<String>,
    /// The index that added the user or last set its password.
    since: u64,
}

/// One key; borrowed from the line when it has no escapes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyLine<'a> {
    #[serde(borrow)]
    pub(super) k: Cow<'a, str>,
    #[serde(borrow)]
    v: Cow<'a, str>,
    /// The key's `create_revision`, `mod_revision` and `version` (format
    /// 4; a format 3 line has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ver: Option<u64>,
    /// The lease the key is attached to (format 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<u64>,
}

/// One session: borrowed from the store when written, owned when read.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionLine<'a> {
    pub(super) client_id: u64,
    last_seq: u64,
    reply: Cow<'a, ApplyResult>,
    last_used_index: u64,
    last_used_ts_ms: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
}

impl SessionLine<'_> {
    /// The checks on one session line (`n`) against the store line.
    fn check(&self, n: u64, store: &StoreLine) -> Result<(), String> {
        let id = self.client_id;
        // Expiry subtracts a session's last use from the clock: it must
        // not be later than the clock (nor than the last index applied).
        if self.last_used_index > store.last_applied || self.last_used_ts_ms > store.clock_ms {
            return Err(format!(
                "snapshot line {n}: client {id} was last used at index {}, time {}: after \
                 the store's last_applied {} or clock {}",
                self.last_used_index, self.last_used_ts_ms, store.last_applied, store.clock_ms
            ));
        }
        // A session's id is the index of its registration, which is its
        // first use; its reply is the registration's until it writes.
        if id == 0 || id > self.last_used_index {
            return Err(format!(
                "snapshot line {n}: client {id} was last used at index {}: before it was \
                 registered (a client_id is its registration's index, from 1)",
                self.last_used_index
            ));
        }
        let registration = ApplyResult::Register(RegisterClientReply { client_id: id });
        if (self.last_seq == 0) != (*self.reply == registration) {
            return Err(format!(
                "snapshot line {n}: client {id} has last_seq {} with a {} reply (a session \
                 holds its registration's reply exactly while last_seq is 0)",
                self.last_seq,
                self.reply.msg_type()
            ));
        }
        Ok(())
    }
}
