//! poncho-server as a library: the Raft core (and, later, the event loop and
//! storage that host it).

pub mod raft;
