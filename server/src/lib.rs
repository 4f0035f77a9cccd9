//! poncho-server as a library: the Raft core, the storage and state machine
//! it drives, and the event loop that hosts them.

pub mod datadir;
pub mod durable;
pub mod kv;
#[macro_use]
pub mod log;
pub mod node;
pub mod passwords;
pub mod peer_auth;
pub mod raft;
pub mod snapshot;
pub mod storage;
