//! Users and roles (issue 12, part 5), as the state machine will hold them:
//! who exists, what each role may read or write, and whether auth is on.
//!
//! Modelled on etcd's RBAC: a user has a password (stored only as a salted
//! hash, computed by the leader before it proposes) and roles; a role grants
//! read, write or readwrite on one key or on every key with a prefix; the
//! `root` role may do anything, and auth can only be enabled while a `root`
//! user holds it, so the cluster can never lock its operator out.
//!
//! The store holds one [`AuthStore`]; its changes are log entries (`ops.rs`,
//! `AuthOp`), applied in log order on every node, and snapshots carry it
//! (`snapshot.rs`). [`AuthStore::check`] is the one permission check: the
//! node asks it when a request arrives, and the store again when a write is
//! applied, so a role revoked at index 100 stops every write after it. Every
//! limit is a named constant and every refused change an [`AuthError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use poncho_protocol::Access;
use poncho_protocol::{
    ErrorCode, ErrorReply, KeySpec, PermissionInfo, RangeEnd, RoleInfo, Txn, TxnOp, UserInfo,
    MAX_NAME_BYTES,
};

/// The role that may do anything (etcd's).
pub const ROOT: &str = "root";
/// The most users and roles a cluster holds.
pub const MAX_USERS: usize = 10_000;
pub const MAX_ROLES: usize = 1_000;
/// The most permissions one role holds.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 1_000;
/// The most roles one user holds.
pub const MAX_ROLES_PER_USER: usize = 64;

/// Whether `access` lets a user read (`write: false`) or write.
fn allows(access: Access, write: bool) -> bool {
    matches!(
        (access, write),
        (Access::Readwrite, _) | (Access::Read, false) | (Access::Write, true)
    )
}

/// What a permission covers: one key, or every key that starts with a
/// prefix (the empty prefix: every key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyRange {
    Key(String),
    Prefix(String),
}

impl From<KeySpec> for KeyRange {
    /// The request's checks made sure exactly one of the two is there; a
    /// `key` wins if both are.
    fn from(spec: KeySpec) -> KeyRange {
        match (spec.key, spec.prefix) {
            (Some(key), _) => KeyRange::Key(key),
            (None, prefix) => KeyRange::Prefix(prefix.unwrap_or_default()),
        }
    }
}

impl From<&KeyRange> for KeySpec {
    fn from(range: &KeyRange) -> KeySpec {
        match range {
            KeyRange::Key(k) => KeySpec {
                key: Some(k.clone()),
                prefix: None,
            },
            KeyRange::Prefix(p) => KeySpec {
                key: None,
                prefix: Some(p.clone()),
            },
        }
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRange::Key(k) => write!(f, "key {k:?}"),
            KeyRange::Prefix(p) => write!(f, "prefix {p:?}"),
        }
    }
}

impl KeyRange {
    fn covers(&self, key: &str) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// Whether every key with `prefix` is covered.
    fn covers_prefix(&self, prefix: &str) -> bool {
        matches!(self, KeyRange::Prefix(p) if prefix.starts_with(p.as_str()))
    }

    /// Whether every key of the range from `key` to `end` is covered. For
    /// `[key, end)` that holds when both start with the prefix: every
    /// string between two that share a prefix shares it too.
    fn covers_range(&self, key: &str, end: RangeEnd<'_>) -> bool {
        match end {
            RangeEnd::Key => self.covers(key),
            RangeEnd::Prefix(p) => self.covers_prefix(p),
            RangeEnd::Before(end) => {
                matches!(self, KeyRange::Prefix(p) if key.starts_with(p.as_str()) && end.starts_with(p.as_str()))
            }
            RangeEnd::Unbounded => self.covers_prefix(""),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub range: KeyRange,
    pub access: Access,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub permissions: BTreeSet<Permission>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// A PHC string (`$argon2id$...`): salted, never the password.
    pub password_hash: String,
    pub roles: BTreeSet<String>,
    /// The log index that added the user or last set its password: a
    /// login holds it, and is good only while it is the same (a new
    /// password, or a user deleted and added again, logs it out).
    pub since: u64,
}

impl fmt::Debug for User {
    // Not even the hash goes into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("roles", &self.roles).finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    NameInvalid(String),
    UserExists(String),
    UserNotFound(String),
    RoleExists(String),
    RoleNotFound(String),
    TooMany(&'static str, usize),
    /// `auth enable` without a `root` user that holds the `root` role.
    NoRootUser,
    /// The change would leave auth enabled with no `root` user.
    WouldLockOut,
    /// A revoke of a permission or role that was not granted.
    NotGranted(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::NameInvalid(why) => write!(f, "{why}"),
            AuthError::UserExists(u) => write!(f, "user {u:?} exists already"),
            AuthError::UserNotFound(u) => write!(f, "no user {u:?}"),
            AuthError::RoleExists(r) => write!(f, "role {r:?} exists already"),
            AuthError::RoleNotFound(r) => write!(f, "no role {r:?}"),
            AuthError::TooMany(what, max) => write!(f, "at most {max} {what}"),
            AuthError::NoRootUser => write!(
                f,
                "auth enable needs a user named root with the root role first: `user add root`, \
                 `user grant-role root root`"
            ),
            AuthError::NotGranted(what) => write!(f, "{what} was not granted"),
            AuthError::WouldLockOut => write!(
                f,
                "auth is enabled: the root user and its root role cannot be removed (disable \
                 auth first)"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<AuthError> for ErrorReply {
    /// A refused change is the request's fault: BAD_REQUEST, not applied.
    fn from(e: AuthError) -> ErrorReply {
        ErrorReply::bad_request(e.to_string())
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::NameInvalid(format!(
            "a {kind} name is 1 to {MAX_NAME_BYTES} letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

/// Every user and role, and whether auth is enabled. Ordered maps: a
/// snapshot of it must not depend on hash order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthStore {
    pub enabled: bool,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl AuthStore {
    pub fn user_add(
        &mut self,
        name: &str,
        password_hash: String,
        since: u64,
    ) -> Result<(), AuthError> {
        check_name("user", name)?;
        if self.users.contains_key(name) {
            return Err(AuthError::UserExists(name.into()));
        }
        if self.users.len() >= MAX_USERS {
            return Err(AuthError::TooMany("users", MAX_USERS));
        }
        let user = User {
            password_hash,
            roles: BTreeSet::new(),
            since,
        };
        self.users.insert(name.to_string(), user);
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::WouldLockOut);
        }
        self.users
            .remove(name)
            .map(drop)
            .ok_or_else(|| AuthError::UserNotFound(name.into()))
    }

    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound(role.into()));
        }
        let u = self
            .users
            .get_mut(user)
            .ok_or_else(|| AuthError::UserNotFound(user.into()))?;
        if u.roles.len() >= MAX_ROLES_PER_USER && !u.roles.contains(role) {
            return Err(AuthError::TooMany("roles per user", MAX_ROLES_PER_USER));
        }
        u.roles.insert(role.to_string());
        Ok(())
    }

    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && user == ROOT && role == ROOT {
            return Err(AuthError::WouldLockOut);
        }
        let u = self
            .users
            .get_mut(user)
            .ok_or_else(|| AuthError::UserNotFound(user.into()))?;
        if !u.roles.remove(role) {
            return Err(AuthError::NotGranted(format!(
                "role {role:?} of user {user:?}"
            )));
        }
        Ok(())
    }

    /// The stored hash to check a login against.
    pub fn password_hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(|u| u.password_hash.as_str())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        check_name("role", name)?;
        if name == ROOT || self.roles.contains_key(name) {
            return Err(AuthError::RoleExists(name.into()));
        }
        if self.roles.len() >= MAX_ROLES {
            return Err(AuthError::TooMany("roles", MAX_ROLES));
        }
        self.roles.insert(name.to_string(), Role::default());
        Ok(())
    }

    /// Deletes a role, and takes it from every user that held it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.roles.remove(name).is_none() {
            return Err(AuthError::RoleNotFound(name.into()));
        }
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        Ok(())
    }

    pub fn role_grant(&mut self, role: &str, permission: Permission) -> Result<(), AuthError> {
        let r = self
            .roles
            .get_mut(role)
            .ok_or_else(|| AuthError::RoleNotFound(role.into()))?;
        // One entry per range: a new grant replaces the old access. A
        // refused grant changes nothing.
        let replacing = r.permissions.iter().any(|p| p.range == permission.range);
        if !replacing && r.permissions.len() >= MAX_PERMISSIONS_PER_ROLE {
            return Err(AuthError::TooMany(
                "permissions per role",
                MAX_PERMISSIONS_PER_ROLE,
            ));
        }
        r.permissions.retain(|p| p.range != permission.range);
        r.permissions.insert(permission);
        Ok(())
    }

    pub fn role_revoke(&mut self, role: &str, range: &KeyRange) -> Result<(), AuthError> {
        let r = self
            .roles
            .get_mut(role)
            .ok_or_else(|| AuthError::RoleNotFound(role.into()))?;
        let before = r.permissions.len();
        r.permissions.retain(|p| &p.range != range);
        if r.permissions.len() == before {
            return Err(AuthError::NotGranted(format!(
                "a permission on {range} for role {role:?}"
            )));
        }
        Ok(())
    }

    /// Sets `user`'s password hash.
    pub fn user_passwd(
        &mut self,
        user: &str,
        password_hash: String,
        since: u64,
    ) -> Result<(), AuthError> {
        let u = self
            .users
            .get_mut(user)
            .ok_or_else(|| AuthError::UserNotFound(user.into()))?;
        u.password_hash = password_hash;
        u.since = since;
        Ok(())
    }

    /// What a login as `user` holds (see [`User::since`]).
    pub fn since(&self, user: &str) -> Option<u64> {
        self.users.get(user).map(|u| u.since)
    }

    /// Whether a login as `user` that began when its `since` was `since`
    /// still stands: the user has not been deleted and added again, nor
    /// had its password changed, since. Always, while auth is off.
    pub fn login_stands(&self, user: &str, since: u64) -> Result<(), ErrorReply> {
        match self.since(user) {
            Some(now) if now != since && self.enabled => Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                format!(
                    "user {user:?} has a new password, or was deleted and added again, since \
                     this connection logged in: log in again"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Turns auth on: only with a `root` user that holds the `root` role.
    pub fn enable(&mut self) -> Result<(), AuthError> {
        let has_root = self.users.get(ROOT).is_some_and(|u| u.roles.contains(ROOT));
        if !has_root {
            return Err(AuthError::NoRootUser);
        }
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) {
        self.enabled = false;
    }

    fn roles_of<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|u| u.roles.iter().map(String::as_str))
    }

    pub fn is_root(&self, user: &str) -> bool {
        self.roles_of(user).any(|r| r == ROOT)
    }

    /// Every permission `user`'s roles grant.
    fn permissions_of<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a Permission> + 'a {
        self.roles_of(user)
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.permissions)
    }

    /// Whether `user` may read (`write: false`) or write `key`.
    pub fn may(&self, user: &str, key: &str, write: bool) -> bool {
        self.is_root(user)
            || self
                .permissions_of(user)
                .any(|p| allows(p.access, write) && p.range.covers(key))
    }

    /// Whether `user` may read (`write: false`) or write every key of the
    /// range from `key` to `end`: one permission must cover all of it.
    pub fn may_range(&self, user: &str, key: &str, end: RangeEnd<'_>, write: bool) -> bool {
        self.is_root(user)
            || self
                .permissions_of(user)
                .any(|p| allows(p.access, write) && p.range.covers_range(key, end))
    }

    /// Whether `user` may read every key with `prefix` (a KEYS of that
    /// prefix can then be answered whole, without filtering key by key).
    pub fn may_read_prefix(&self, user: &str, prefix: &str) -> bool {
        self.is_root(user)
            || self
                .permissions_of(user)
                .any(|p| allows(p.access, false) && p.range.covers_prefix(prefix))
    }

    /// Whether `user` may read every key: auth is off, or a role grants
    /// reading all of them (root's does).
    pub fn may_read_everything(&self, user: Option<&str>) -> bool {
        !self.enabled || user.is_some_and(|u| self.may_read_prefix(u, ""))
    }

    /// Whether `user` may read `key`; always, while auth is off. A cheap
    /// [`AuthStore::check`] for filtering, with no refusal to build.
    pub fn may_read(&self, user: Option<&str>, key: &str) -> bool {
        !self.enabled || user.is_some_and(|u| self.may(u, key, false))
    }

    /// Whether `user` may do what `need` says; always, while auth is off.
    /// The refusal is the reply the client gets: UNAUTHENTICATED for a
    /// connection that has not logged in (or whose user is gone),
    /// PERMISSION_DENIED for a user whose roles do not allow it.
    pub fn check(&self, user: Option<&str>, need: Need<'_>) -> Result<(), ErrorReply> {
        if !self.enabled || matches!(need, Need::Nothing) {
            return Ok(());
        }
        let Some(user) = user else {
            return Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "auth is enabled and this connection has not logged in: send AUTHENTICATE \
                 first (shell: --user NAME, or `login NAME`)",
            ));
        };
        if !self.users.contains_key(user) {
            return Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                format!("user {user:?} does not exist (any more); log in as another user"),
            ));
        }
        let allowed = match need {
            Need::Txn(txn) => {
                return Need::of_txn(txn).try_for_each(|need| self.check(Some(user), need));
            }
            Need::Range { key, end, write } => self.may_range(user, key, end, write),
            Need::Nothing | Need::LoggedIn => true,
            Need::Read(key) => self.may(user, key, false),
            Need::Write(key) => self.may(user, key, true),
            Need::ReadWrite(key) => self.may(user, key, false) && self.may(user, key, true),
            Need::Root => self.is_root(user),
        };
        if allowed {
            return Ok(());
        }
        let what = match need {
            Need::Read(key) => format!("read key {key:?}"),
            Need::Write(key) => format!("write key {key:?}"),
            Need::ReadWrite(key) => format!("read and write key {key:?}"),
            Need::Range { key, end, write } => format!(
                "{} every key of {}",
                if write { "write" } else { "read" },
                match end {
                    RangeEnd::Key => format!("key {key:?}"),
                    RangeEnd::Prefix(p) => format!("prefix {p:?}"),
                    RangeEnd::Before(end) => format!("range [{key:?}, {end:?})"),
                    RangeEnd::Unbounded => format!("range [{key:?}, end)"),
                }
            ),
            _ => "manage users, roles or auth (only the root role may)".to_string(),
        };
        let roles: Vec<&str> = self.roles_of(user).collect();
        Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            format!(
                "user {user:?} may not {what}: none of its roles ({}) grants it",
                if roles.is_empty() {
                    "it has none".to_string()
                } else {
                    roles.join(", ")
                }
            ),
        ))
    }

    /// What a KEYS of `prefix` by `user` may list: everything, or only the
    /// keys in these ranges (each within `prefix`, at most one per
    /// permission, so a listing reads only what it may return).
    pub fn readable(&self, user: Option<&str>, prefix: &str) -> Readable {
        let Some(user) = user.filter(|_| self.enabled) else {
            return if self.enabled {
                Readable::Ranges(Vec::new())
            } else {
                Readable::All
            };
        };
        if self.may_read_prefix(user, prefix) {
            return Readable::All;
        }
        let mut prefixes = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for p in self
            .permissions_of(user)
            .filter(|p| allows(p.access, false))
        {
            match &p.range {
                KeyRange::Key(k) if k.starts_with(prefix) => keys.insert(k.as_str()),
                KeyRange::Prefix(q) if q.starts_with(prefix) => prefixes.insert(q.as_str()),
                _ => false,
            };
        }
        Readable::Ranges(disjoint(prefixes, keys))
    }

    pub fn user_info(&self, name: &str) -> Result<UserInfo, AuthError> {
        let u = self
            .users
            .get(name)
            .ok_or_else(|| AuthError::UserNotFound(name.into()))?;
        Ok(UserInfo {
            name: name.to_string(),
            roles: u.roles.iter().cloned().collect(),
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserInfo> {
        self.users
            .iter()
            .map(|(name, u)| UserInfo {
                name: name.clone(),
                roles: u.roles.iter().cloned().collect(),
            })
            .collect()
    }

    pub fn role_info(&self, name: &str) -> Result<RoleInfo, AuthError> {
        let r = self
            .roles
            .get(name)
            .ok_or_else(|| AuthError::RoleNotFound(name.into()))?;
        Ok(role_info(name, r))
    }

    /// Every role, by name.
    pub fn roles(&self) -> Vec<RoleInfo> {
        self.roles
            .iter()
            .map(|(name, r)| role_info(name, r))
            .collect()
    }

    /// Every user with its hash and every role, in name order: what a
    /// snapshot writes.
    pub(super) fn entries(&self) -> (&BTreeMap<String, User>, &BTreeMap<String, Role>) {
        (&self.users, &self.roles)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn role_count(&self) -> usize {
        self.roles.len()
    }
}

fn role_info(name: &str, role: &Role) -> RoleInfo {
    RoleInfo {
        name: name.to_string(),
        permissions: role
            .permissions
            .iter()
            .map(|p| PermissionInfo {
                keys: KeySpec::from(&p.range),
                access: p.access,
            })
            .collect(),
    }
}

/// What a request needs of its connection's user (see [`AuthStore::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// HEALTHCHECK and AUTHENTICATE: anyone.
    Nothing,
    /// Any user that has logged in.
    LoggedIn,
    Read(&'a str),
    Write(&'a str),
    ReadWrite(&'a str),
    /// Every key of a range (a transaction's range read, or its delete).
    Range {
        key: &'a str,
        end: RangeEnd<'a>,
        write: bool,
    },
    /// What each comparison and operation of a transaction needs.
    Txn(&'a Txn),
    /// Changes to users, roles and auth itself.
    Root,
}

impl<'a> Need<'a> {
    /// What each part of a transaction needs: reading each key it compares
    /// and each range it reads, writing each key it puts and each range it
    /// deletes, all of it (not filtered, as a `RANGE` is: a transaction
    /// that acts on what it read must have read all of it).
    fn of_txn(txn: &'a Txn) -> impl Iterator<Item = Need<'a>> + 'a {
        let compares = txn.compare.iter().map(|c| Need::Read(&c.key));
        let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
            TxnOp::Put { key, .. } => Need::Write(key),
            TxnOp::Delete {
                key,
                range_end,
                prefix,
            } => Need::Range {
                key,
                end: RangeEnd::of(key, range_end.as_deref(), *prefix),
                write: true,
            },
            TxnOp::Range(r) => Need::Range {
                key: &r.key,
                end: RangeEnd::of(&r.key, r.range_end.as_deref(), r.prefix),
                write: false,
            },
        });
        compares.chain(ops)
    }
}

/// The ranges that cover exactly what `prefixes` and `keys` cover, with no
/// key in two of them, in key order: a prefix that a shorter one covers is
/// dropped, as is a key that a prefix covers. Listing them one after the
/// other therefore reads each key once and yields keys in order, so a
/// listing can stop at its limit (a role with a thousand nested prefixes
/// once made one KEYS read every key a thousand times).
fn disjoint(prefixes: BTreeSet<&str>, keys: BTreeSet<&str>) -> Vec<KeyRange> {
    // In sorted order every string that starts with `p` comes right after
    // `p`, so a covered prefix always follows the last one kept.
    let mut kept: Vec<&str> = Vec::new();
    for p in prefixes {
        if !kept.last().is_some_and(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    let covered = |key: &str| {
        let at = kept.partition_point(|p| *p <= key);
        at > 0 && key.starts_with(kept[at - 1])
    };
    let mut ranges: Vec<(&str, KeyRange)> = kept
        .iter()
        .map(|p| (*p, KeyRange::Prefix(p.to_string())))
        .collect();
    ranges.extend(
        keys.into_iter()
            .filter(|k| !covered(k))
            .map(|k| (k, KeyRange::Key(k.to_string()))),
    );
    ranges.sort_by(|a, b| a.0.cmp(b.0));
    ranges.into_iter().map(|(_, range)| range).collect()
}

/// What a listing may show (see [`AuthStore::readable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readable {
    All,
    /// Disjoint, in key order.
    Ranges(Vec<KeyRange>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(store: &mut AuthStore, role: &str, range: KeyRange, access: Access) {
        store
            .role_grant(role, Permission { range, access })
            .unwrap();
    }

    fn store() -> AuthStore {
        let mut s = AuthStore::default();
        for user in ["root", "alice", "bob", "carol"] {
            s.user_add(user, format!("$argon2id$hash-of-{user}"), 1)
                .unwrap();
        }
        s.user_grant_role("root", ROOT).unwrap();
        s.role_add("app-rw").unwrap();
        grant(
            &mut s,
            "app-rw",
            KeyRange::Prefix("app/".into()),
            Access::Readwrite,
        );
        s.role_add("config-r").unwrap();
        grant(
            &mut s,
            "config-r",
            KeyRange::Key("config".into()),
            Access::Read,
        );
        s.role_add("logs-w").unwrap();
        grant(
            &mut s,
            "logs-w",
            KeyRange::Prefix("logs/".into()),
            Access::Write,
        );
        s.user_grant_role("alice", "app-rw").unwrap();
        s.user_grant_role("alice", "config-r").unwrap();
        s.user_grant_role("bob", "logs-w").unwrap();
        s
    }

    /// The table of users x operations x keys.
    #[test]
    fn permissions_allow_exactly_what_roles_grant() {
        let s = store();
        let table: &[(&str, &str, bool, bool)] = &[
            // user, key, write, allowed
            ("root", "anything", true, true),
            ("root", "config", false, true),
            ("alice", "app/x", true, true),
            ("alice", "app/x", false, true),
            ("alice", "app", false, false),
            ("alice", "apps/x", false, false),
            ("alice", "config", false, true),
            ("alice", "config", true, false),
            ("alice", "config2", false, false),
            ("bob", "logs/1", true, true),
            ("bob", "logs/1", false, false),
            ("bob", "app/x", false, false),
            ("carol", "app/x", false, false),
            ("nobody", "app/x", false, false),
        ];
        for &(user, key, write, allowed) in table {
            assert_eq!(
                s.may(user, key, write),
                allowed,
                "{user} {key} write={write}"
            );
        }
        assert!(s.may_read_prefix("alice", "app/"));
        assert!(s.may_read_prefix("alice", "app/sub/"));
        assert!(!s.may_read_prefix("alice", "ap"));
        assert!(!s.may_read_prefix("bob", "logs/"), "write-only");
        assert!(s.may_read_prefix("root", ""));
    }

    #[test]
    fn listing_ranges_are_disjoint_and_in_key_order() {
        let prefixes: BTreeSet<&str> = ["b", "a", "ab", "abc", "ba", "c/"].into();
        let keys: BTreeSet<&str> = ["abz", "b1", "a", "bb", "0", "c"].into();
        let ranges = disjoint(prefixes, keys);
        let p = |s: &str| KeyRange::Prefix(s.into());
        let k = |s: &str| KeyRange::Key(s.into());
        assert_eq!(ranges, [k("0"), p("a"), p("b"), k("c"), p("c/")]);
        // Through `readable`: a thousand nested prefixes are one range.
        let mut s = store();
        s.role_add("nested").unwrap();
        for n in 1..=1000 {
            grant(
                &mut s,
                "nested",
                KeyRange::Prefix("a".repeat(n)),
                Access::Read,
            );
        }
        s.user_grant_role("carol", "nested").unwrap();
        s.enable().unwrap();
        assert_eq!(
            s.readable(Some("carol"), ""),
            Readable::Ranges(vec![p("a")])
        );
    }

    #[test]
    fn auth_needs_a_root_user_and_then_cannot_lose_it() {
        let mut s = AuthStore::default();
        assert_eq!(s.enable(), Err(AuthError::NoRootUser));
        s.user_add("root", "$h".into(), 1).unwrap();
        assert_eq!(
            s.enable(),
            Err(AuthError::NoRootUser),
            "root needs the root role"
        );
        s.user_grant_role("root", ROOT).unwrap();
        s.enable().unwrap();
        assert_eq!(s.user_delete("root"), Err(AuthError::WouldLockOut));
        assert_eq!(
            s.user_revoke_role("root", ROOT),
            Err(AuthError::WouldLockOut)
        );
        s.disable();
        s.user_revoke_role("root", ROOT).unwrap();
        s.user_delete("root").unwrap();
    }

    #[test]
    fn changes_take_effect_and_bad_names_and_limits_are_refused() {
        let mut s = store();
        assert!(s.may("alice", "app/x", true));
        // A grant replaces the access for its range; a revoke removes it.
        grant(
            &mut s,
            "app-rw",
            KeyRange::Prefix("app/".into()),
            Access::Read,
        );
        assert!(!s.may("alice", "app/x", true));
        assert!(s.may("alice", "app/x", false));
        assert_eq!(
            s.role_revoke("app-rw", &KeyRange::Prefix("app/".into())),
            Ok(())
        );
        assert!(matches!(
            s.role_revoke("app-rw", &KeyRange::Prefix("app/".into())),
            Err(AuthError::NotGranted(_))
        ));
        assert!(!s.may("alice", "app/x", false));
        // Deleting a role takes it from its users.
        s.role_delete("config-r").unwrap();
        assert!(!s.may("alice", "config", false));
        assert_eq!(
            s.user_grant_role("alice", "config-r"),
            Err(AuthError::RoleNotFound("config-r".into()))
        );
        for bad in ["", "has space", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(matches!(
                s.user_add(bad, "$h".into(), 1),
                Err(AuthError::NameInvalid(_))
            ));
            assert!(matches!(s.role_add(bad), Err(AuthError::NameInvalid(_))));
        }
        assert_eq!(s.role_add(ROOT), Err(AuthError::RoleExists(ROOT.into())));
        assert_eq!(
            s.user_add("bob", "$h".into(), 1),
            Err(AuthError::UserExists("bob".into()))
        );
        s.role_add("many").unwrap();
        for i in 0..MAX_PERMISSIONS_PER_ROLE {
            grant(&mut s, "many", KeyRange::Key(format!("k{i}")), Access::Read);
        }
        let extra = Permission {
            range: KeyRange::Key("one-more".into()),
            access: Access::Read,
        };
        assert!(matches!(
            s.role_grant("many", extra),
            Err(AuthError::TooMany(..))
        ));
        // At the limit, a grant for a range it has replaces the access.
        grant(&mut s, "many", KeyRange::Key("k0".into()), Access::Write);
        s.user_grant_role("carol", "many").unwrap();
        assert!(s.may("carol", "k0", true) && !s.may("carol", "k0", false));
        assert!(
            !format!("{:?}", s).contains("argon2"),
            "no hash in Debug output"
        );
    }
}
