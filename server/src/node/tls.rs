//! TLS on the node's port: what accepted connections are wrapped in, what
//! our connections to peers are, and the deadline a TLS handshake has.
//!
//! Without `--peer-addr`, one port serves clients and peers. With
//! `--cert-file`/`--key-file` it speaks TLS only; with `--client-cert-auth`
//! every connection must present a certificate signed by
//! `--trusted-ca-file`. Our connections to peers then speak TLS too: they
//! check the peer's certificate against `--trusted-ca-file` for the peer's
//! IP address, and present this node's certificate. TLS there protects the
//! traffic; it does not make a connection a member's (clients may hold
//! certificates from the same CA): the peer handshake's secret decides.
//!
//! With `--peer-addr`, peers have a port of their own, with TLS of its own
//! (the `--peer-` flags, as etcd's 2380): our connections to peers go to
//! their peer ports. With `--peer-client-cert-auth` a connection on the peer
//! port has proven, by a certificate of the peer CA, that it is a member's:
//! that is enough for the peer handshake without a secret. The certificate
//! ties the connection to the members it names: a hello claiming a member is
//! refused unless the certificate names that member's peer IP address (the
//! name our connections to the member check), and, with etcd's
//! `--peer-cert-allowed-cn`, has that common name.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use poncho_tls::rustls::client::verify_server_name;
use poncho_tls::rustls::pki_types::CertificateDer;
use poncho_tls::rustls::server::ParsedCertificate;
use poncho_tls::rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use poncho_tls::{MaybeTls, ServerName, TlsError, TlsFiles};

use super::admission::Port;
use super::log_limiter::LogLimiter;

/// A TLS handshake on an accepted connection must be done this long after
/// the connection was accepted, or the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a connection refused as it is accepted on a TLS port gets, in
/// place of a plaintext `OVERLOADED` line its client could not read: a TLS
/// record (content type 21, version 3.3, 2 bytes) holding a fatal
/// `internal_error` alert, which a TLS client reports as a refusal.
pub const REFUSAL_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];
/// A refused peer certificate's common name is shown up to this many
/// characters.
const MAX_CN_SHOWN: usize = 64;

/// The TLS flags, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn` (etcd's flag; peers only): a peer's client
    /// certificate must have this common name.
    pub allowed_cn: Option<String>,
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
    /// The node's port.
    server: Option<Arc<ServerConfig>>,
    /// The peer port, when the node has one (`--peer-*` flags).
    peer_server: Option<Arc<ServerConfig>>,
    /// Our connections to peers.
    peers: Option<Arc<ClientConfig>>,
    /// Whether the peer port checks client certificates against the peer
    /// CA: then a connection there has proven, by TLS, that it is a
    /// member's (`--peer-client-cert-auth`).
    pub peer_mtls: bool,
    /// `--peer-cert-allowed-cn`: the common name a peer's certificate must
    /// have (only with `peer_mtls`).
    peer_allowed_cn: Option<String>,
    /// `--client-cert-auth`: a client connection is logged in as its
    /// certificate's common name.
    pub client_cert_users: bool,
    /// Failed TLS connections (a remote can cause them), logged limited.
    pub log: LogLimiter,
}

fn flag_error(error: &str) -> TlsError {
    TlsError::Config {
        what: "TLS".into(),
        error: error.into(),
    }
}

impl Tls {
    /// Builds the configurations, and returns the warnings to log (a key
    /// file others may read). `has_peers`: whether our own connections to
    /// peers need a client configuration; `peer_port`: whether the node
    /// has a port of its own for peers (`--peer-addr`).
    pub fn new(
        clients: &TlsSettings,
        peers: &TlsSettings,
        has_peers: bool,
        peer_port: bool,
    ) -> Result<(Tls, Vec<String>), TlsError> {
        let mut warnings = Vec::new();
        let mut build = |settings: &TlsSettings, what: &str| -> Result<_, TlsError> {
            if !settings.enabled() {
                if settings.client_cert_auth || settings.trusted_ca_file.is_some() {
                    return Err(flag_error(&format!(
                        "{what}: client certificate checks and a trusted CA need a certificate \
                         and a key file"
                    )));
                }
                return Ok(None);
            }
            let (config, warning) =
                poncho_tls::server_config(&settings.files(), settings.client_cert_auth, what)?;
            warnings.extend(warning);
            Ok(Some(config))
        };
        let server = build(clients, "TLS for clients")?;
        if !peer_port && (peers.enabled() || peers.trusted_ca_file.is_some()) {
            return Err(flag_error(
                "the --peer-* TLS flags need --peer-addr: peers then get a port of their own, \
                 with TLS of its own",
            ));
        }
        let peer_server = build(peers, "TLS for peers")?;
        let peer_mtls = peer_port && peers.enabled() && peers.client_cert_auth;
        if peers.allowed_cn.is_some() && !peer_mtls {
            return Err(flag_error(
                "--peer-cert-allowed-cn needs the peers' certificates checked: --peer-addr, \
                 --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and \
                 --peer-client-cert-auth",
            ));
        }
        // Our connections to peers speak what the peers' ports speak.
        let to_peers = if peer_port { peers } else { clients };
        let peers_client = match (has_peers, to_peers.enabled()) {
            (true, true) => {
                let (config, _) =
                    poncho_tls::client_config(&to_peers.files(), "TLS to peers (trusted CA)")?;
                Some(config)
            }
            _ => None,
        };
        Ok((
            Tls {
                server,
                peer_mtls,
                peer_allowed_cn: peers.allowed_cn.clone(),
                client_cert_users: clients.enabled() && clients.client_cert_auth,
                peer_server,
                peers: peers_client,
                log: LogLimiter::new(),
            },
            warnings,
        ))
    }

    /// What keeps `certs`, the certificates a connection on the peer port
    /// presented, from proving that it is the member whose peer address is
    /// `member`: the certificate must name that IP address (as our own
    /// connections to the member check the certificate it serves) and, with
    /// `--peer-cert-allowed-cn`, have that common name. `None` if nothing
    /// does, or if certificates prove nothing here (no peer mTLS).
    pub fn peer_cert_problem(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
        member: IpAddr,
    ) -> Option<String> {
        if !self.peer_mtls {
            return None;
        }
        let Some(cert) = certs.and_then(<[_]>::first) else {
            return Some("it presented no certificate".into());
        };
        if let Some(allowed) = &self.peer_allowed_cn {
            let cn = poncho_tls::common_name(cert);
            if cn.as_deref() != Some(allowed.as_str()) {
                let cn = cn.map_or("none".to_string(), |cn| {
                    format!("{:?}", cn.chars().take(MAX_CN_SHOWN).collect::<String>())
                });
                return Some(format!(
                    "its certificate's common name is {cn}, not {allowed:?} \
                     (--peer-cert-allowed-cn)"
                ));
            }
        }
        let name = ServerName::IpAddress(member.into());
        let named = ParsedCertificate::try_from(cert)
            .is_ok_and(|parsed| verify_server_name(&parsed, &name).is_ok());
        (!named).then(|| format!("its certificate does not name the member's address {member}"))
    }

    /// Whether `port` speaks TLS.
    pub fn speaks_tls(&self, port: Port) -> bool {
        match port {
            Port::Client => self.server.is_some(),
            Port::Peer => self.peer_server.is_some(),
        }
    }

    /// A connection accepted on `port`, wrapped as that port speaks.
    pub fn accepted(&self, stream: TcpStream, port: Port) -> Result<MaybeTls<TcpStream>, String> {
        let config = match port {
            Port::Client => &self.server,
            Port::Peer => &self.peer_server,
        };
        match config {
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
