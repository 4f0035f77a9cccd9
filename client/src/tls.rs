//! TLS for client connections: what a client trusts and presents, built
//! from etcdctl-style files (`--cacert`, `--cert`, `--key`), and the server
//! name a connection checks the node's certificate for (the host part of
//! the address it was given: an IP address or a DNS name).

use std::fmt;
use std::sync::Arc;

use poncho_tls::rustls::{AlertDescription, ClientConfig, ClientConnection, Error};
use poncho_tls::{TlsError, TlsFiles};

/// How a client speaks TLS. Cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for Tls {
    // Never the configuration: it holds the client's private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// From files: `trusted_ca` (`--cacert`, required) and, for a node that
    /// checks client certificates, `cert` and `key` (`--cert`, `--key`).
    /// Also returns a warning to print if others may read the key file.
    pub fn from_files(files: &TlsFiles) -> Result<(Tls, Option<String>), TlsError> {
        let (config, warning) = poncho_tls::client_config(files, "client TLS")?;
        Ok((Tls { config }, warning))
    }

    /// From a rustls configuration built elsewhere.
    pub fn from_config(config: Arc<ClientConfig>) -> Tls {
        Tls { config }
    }

    /// A new TLS session to the node at `addr` (`HOST:PORT`), checking its
    /// certificate for HOST. The error says what is wrong with the name.
    pub fn session(&self, addr: &str) -> Result<ClientConnection, String> {
        let host = host_of(addr);
        let name = poncho_tls::server_name(host).map_err(|e| e.to_string())?;
        ClientConnection::new(self.config.clone(), name)
            .map_err(|e| format!("cannot start a TLS session to {addr}: {e}"))
    }
}

/// The host part of `HOST:PORT` or `[IPV6]:PORT`, as given.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether bytes a node sent before any reply open a TLS record (an alert,
/// 0x15, or a handshake, 0x16, with a TLS major version 3): a plaintext
/// client has reached a port that speaks TLS.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03, ..] | [0x15 | 0x16])
}

/// What a plaintext client is told when the node at `addr` speaks TLS.
pub fn speaks_tls(addr: &str) -> String {
    format!(
        "the node at {addr} speaks TLS: give --cacert (and --cert/--key if it checks \
         client certificates)"
    )
}

/// A TLS failure with the node at `addr`, as [`poncho_tls::explain`] says
/// it, or, for bytes that are no TLS record, that the node does not speak
/// TLS there.
pub fn failure(addr: &str, error: &Error) -> String {
    if let Error::InvalidMessage(e) = error {
        return format!(
            "the node at {addr} does not speak TLS on that port (its reply is no TLS \
             record: {e:?}); leave out --cacert if it serves plaintext"
        );
    }
    let why = poncho_tls::explain(error);
    let why = why.strip_prefix("TLS: ").unwrap_or(&why);
    let hint = match error {
        // Sent by a node that checks client certificates.
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => {
            " (the node checks client certificates: give --cert and --key, signed by a CA it \
               trusts)"
        }
        _ => "",
    };
    format!("TLS with {addr} failed: {why}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_and_tls_records_are_recognised() {
        assert_eq!(host_of("127.0.0.1:8001"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:8001"), "node-1.example");
        assert_eq!(host_of("[::1]:8001"), "::1");
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(b"{\"msg_type\":\"ERROR\"}"));
        assert!(!looks_like_tls(&[]));
    }
}
