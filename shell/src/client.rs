//! The cluster client lives in the `poncho-client` crate; the shell uses
//! it as `crate::client`.

pub use poncho_client::{
    recipes, status_as, ClientError, ClusterClient, Credentials, Election, Leader, LeaseSession,
    Reply, Route, Tls, TlsFiles, WatchEvent, Watcher,
};
