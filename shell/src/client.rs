//! The cluster client lives in the `poncho-client` crate; the shell uses
//! it as `crate::client`.

pub use poncho_client::{
    status_as, ClientError, ClusterClient, Credentials, Reply, Route, Tls, TlsFiles, WatchEvent,
    Watcher,
};
