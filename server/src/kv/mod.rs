//! The replicated key/value state machine.
//!
//! [`KvStore::apply`] takes committed log entries in index order and turns
//! each into the reply its client gets. Every node applies the same entries in
//! the same order, so the store must be a pure function of the log: it reads
//! no clock, draws no random numbers, and keeps everything in ordered maps so
//! no hash order can leak into a result or a snapshot.
//!
//! One room per concern:
//!
//! - `ops.rs`: every write, in one place: its log form ([`Op`]), how a
//!   client request becomes it, what applying it does, and its reply
//!   ([`ApplyResult`]). A new write command is added here.
//! - `store.rs`: the [`KvStore`]: `apply` routes a committed entry, and the
//!   map's primitives.
//! - `txn.rs`: what a transaction does to the map.
//! - `lease.rs`: leases: granting, attaching keys, ending one.
//! - `watch.rs`: what watches read: the changes from a revision on, and a
//!   range's keys at one revision.
//! - `session.rs`: exactly-once client sessions (registration, the cached
//!   reply, deterministic expiry and eviction) and their limits.
//! - `command.rs`: the log's envelope of a write ([`Command`]: the op, its
//!   session and the leader's clock): its JSON and its one-pass decode.
//! - `snapshot.rs`: [`KvSnapshot`], the JSON Lines snapshot format, and
//!   [`KvStore::restore`].
//! - `auth.rs`: users, roles and the one permission check
//!   ([`auth::AuthStore::check`]), asked when a request arrives and again
//!   when its write is applied; their changes are ops like any write.

pub mod auth;
mod command;
mod history;
mod lease;
mod ops;
mod session;
mod snapshot;
mod store;
#[cfg(test)]
mod tests;
mod txn;
mod watch;

pub use command::Command;
pub use history::{HISTORY_BYTES, HISTORY_EVENTS};
pub use ops::{ApplyResult, AuthOp, Op};
pub use session::{MAX_SESSIONS, MAX_SESSION_BYTES, SESSION_TIMEOUT_MS};
pub use snapshot::{KvSnapshot, SNAPSHOT_FORMAT};
pub use store::KvStore;
pub use watch::{Change, KeysAt};
