//! poncho-client: a blocking client for a poncho cluster, shared by the
//! shell, the bench and the end-to-end tests so that leader following
//! exists once.
//!
//! - [`conn`]: one TCP connection, plain or TLS, line framing, bounded reads.
//! - [`tls`]: [`Tls`], what a client trusts and presents (etcdctl's
//!   `--cacert`, `--cert`, `--key`), and the client's TLS error texts.
//! - [`leader`]: which node to try, and what an `ERROR` reply asks of a retry.
//! - [`session`]: `REGISTER_CLIENT` and the `client_id`/`seq` of writes.
//! - [`cluster`]: [`ClusterClient`], which puts them together: redirects,
//!   retries with the same session fields until a deadline, and
//!   `SESSION_EXPIRED` after an uncertain attempt reported as an unknown
//!   outcome.
//! - [`membership`]: `MEMBER` and `TRANSFER_LEADER` as typed calls; a change
//!   whose outcome is unknown is reported so, never sent again.
//! - [`status`]: STATUS of one node on a connection of its own.
//! - [`watch`]: [`Watcher`], one watch of a key, prefix or range on a
//!   connection of its own, read event by event, that resumes on another
//!   node (from the revision after the last it delivered) when its node is
//!   lost or cancels it as too slow: no gap, no duplicate.
//! - [`recipes`]: etcd's `concurrency` recipes: [`LeaseSession`], a lease
//!   kept alive from a thread; [`lock`], a distributed lock with a fencing
//!   revision; [`Election`], [`leader`] and [`observe`], leader election.
//! - [`auth`]: [`Credentials`], `AUTHENTICATE` as the first line of every
//!   connection, and passwords kept out of `--verbose` output.
//!
//! It speaks only the protocol (`poncho-protocol`), over TCP or TLS
//! (`poncho-tls`).

pub mod auth;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod leader;
pub mod membership;
pub mod recipes;
pub mod session;
pub mod status;
pub mod tls;
pub mod watch;

pub use auth::{authenticate, redact, Credentials, OpenError};
pub use cluster::ClusterClient;
pub use conn::{ConnError, Connection, Reply, HANDSHAKE_TIMEOUT, MAX_REPLY_BYTES};
pub use error::ClientError;
pub use leader::{find_leader, find_leader_as, find_leader_with, retry_for, Retry, Route, Targets};
pub use poncho_tls::{MaybeTls, TlsError, TlsFiles};
pub use recipes::{
    key_of, leader, lock, observe, Election, Leader, LeaseSession, Lock, Observer, DEFAULT_TTL,
};
pub use session::{in_session, register, registered_id, Session};
pub use status::{status_as, status_of, status_with};
pub use tls::Tls;
pub use watch::{WatchEvent, Watcher};
