//! poncho-client: a blocking client for a poncho cluster, shared by the
//! shell, the bench and the end-to-end tests so that leader following
//! exists once.
//!
//! - [`conn`]: one TCP connection, line framing, bounded reads.
//! - [`leader`]: which node to try, and what an `ERROR` reply asks of a retry.
//! - [`session`]: `REGISTER_CLIENT` and the `client_id`/`seq` of writes.
//! - [`cluster`]: [`ClusterClient`], which puts them together: redirects,
//!   retries with the same session fields until a deadline, and
//!   `SESSION_EXPIRED` after an uncertain attempt reported as an unknown
//!   outcome.
//! - [`status`]: STATUS of one node on a connection of its own.
//!
//! It speaks only the protocol (`poncho-protocol`).

pub mod cluster;
pub mod conn;
pub mod error;
pub mod leader;
pub mod session;
pub mod status;

pub use cluster::ClusterClient;
pub use conn::{ConnError, Connection, Reply, MAX_REPLY_BYTES};
pub use error::ClientError;
pub use leader::{find_leader, retry_for, Retry, Route, Targets};
pub use session::{in_session, register, registered_id, Session};
pub use status::status_of;
