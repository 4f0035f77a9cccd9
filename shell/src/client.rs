//! The cluster client lives in the `poncho-client` crate; the shell uses
//! it as `crate::client`.

pub use poncho_client::{status_with, ClientError, ClusterClient, Reply, Route, Tls, TlsFiles};
