//! TLS on the node's port: what accepted connections are wrapped in, what
//! our connections to peers are, and the deadline a TLS handshake has.
//!
//! One port serves clients and peers. With `--cert-file`/`--key-file` it
//! speaks TLS only; with `--client-cert-auth` every connection must present
//! a certificate signed by `--trusted-ca-file`. Our connections to peers then
//! speak TLS too: they check the peer's certificate against
//! `--trusted-ca-file` for the peer's IP address, and present this node's
//! certificate. TLS here protects the traffic; it does not by itself make a
//! connection a member's (clients may hold certificates from the same CA):
//! the peer handshake on top still proves membership.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use poncho_tls::rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use poncho_tls::{MaybeTls, TlsError, TlsFiles};

use super::log_limiter::LogLimiter;

/// A TLS handshake on an accepted connection must be done this long after
/// the connection was accepted, or the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS flags, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            trusted_ca: self.trusted_ca_file.clone(),
        }
    }
}

/// The configurations built from the flags; none when TLS is off.
pub struct Tls {
    server: Option<Arc<ServerConfig>>,
    peers: Option<Arc<ClientConfig>>,
    /// Failed TLS connections (a remote can cause them), logged limited.
    pub log: LogLimiter,
}

impl Tls {
    /// Builds the configurations, and returns the warnings to log (a key
    /// file others may read). `has_peers`: whether our own connections to
    /// peers need a client configuration.
    pub fn new(settings: &TlsSettings, has_peers: bool) -> Result<(Tls, Vec<String>), TlsError> {
        if !settings.enabled() {
            if settings.client_cert_auth || settings.trusted_ca_file.is_some() {
                return Err(TlsError::Config {
                    what: "TLS".into(),
                    error: "--client-cert-auth and --trusted-ca-file need --cert-file and \
                            --key-file"
                        .into(),
                });
            }
            return Ok((
                Tls {
                    server: None,
                    peers: None,
                    log: LogLimiter::new(),
                },
                Vec::new(),
            ));
        }
        let files = settings.files();
        let (server, warning) =
            poncho_tls::server_config(&files, settings.client_cert_auth, "TLS for clients")?;
        let peers = if has_peers {
            let (config, _) =
                poncho_tls::client_config(&files, "TLS to peers (--trusted-ca-file)")?;
            Some(config)
        } else {
            None
        };
        Ok((
            Tls {
                server: Some(server),
                peers,
                log: LogLimiter::new(),
            },
            warning.into_iter().collect(),
        ))
    }

    /// An accepted connection, wrapped as the port speaks.
    pub fn accepted(&self, stream: TcpStream) -> Result<MaybeTls<TcpStream>, String> {
        match &self.server {
            None => Ok(MaybeTls::Plain(stream)),
            Some(config) => ServerConnection::new(config.clone())
                .map(|session| MaybeTls::tls(session, stream))
                .map_err(|e| poncho_tls::explain(&e)),
        }
    }

    /// Our connection to the peer at `addr`, wrapped as its port speaks
    /// (every member's port speaks as ours does).
    pub fn to_peer(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<MaybeTls<TcpStream>, String> {
        match &self.peers {
            None => Ok(MaybeTls::Plain(stream)),
            Some(config) => {
                let name = poncho_tls::ServerName::IpAddress(addr.ip().into());
                ClientConnection::new(config.clone(), name)
                    .map(|session| MaybeTls::tls(session, stream))
                    .map_err(|e| poncho_tls::explain(&e))
            }
        }
    }
}
