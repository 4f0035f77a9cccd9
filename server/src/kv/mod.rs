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
//! - `store.rs`: the [`KvStore`] and what each command does to it
//!   ([`ApplyResult`] is the reply): `apply` routes an entry, `Data::apply`
//!   decides what SET, DELETE and CAS do.
//! - `session.rs`: exactly-once client sessions (registration, the cached
//!   reply, deterministic expiry and eviction) and their limits.
//! - `command.rs`: the log's form of a write ([`Command`], [`Op`]): its JSON,
//!   its one-pass decode, and how a client request becomes one.
//! - `snapshot.rs`: [`KvSnapshot`], the JSON Lines snapshot format, and
//!   [`KvStore::restore`].

mod command;
mod session;
mod snapshot;
mod store;
#[cfg(test)]
mod tests;

pub use command::{Command, Op};
pub use session::{MAX_SESSIONS, MAX_SESSION_BYTES, SESSION_TIMEOUT_MS};
pub use snapshot::{KvSnapshot, SNAPSHOT_FORMAT};
pub use store::{ApplyResult, KvStore};
