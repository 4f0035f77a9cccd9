//! TLS for poncho (rustls; no OpenSSL): certificates and keys read from PEM
//! files, and the rustls configurations a node's listeners, a node's
//! connections to its peers, and clients use.
//!
//! Flag names follow etcd's: a node has `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth` for clients, and the same
//! with `--peer-` for peers; clients have etcdctl's `--cacert`, `--cert` and
//! `--key`. Every error names the file and says what is wrong with it; no
//! error or warning ever holds a key's bytes.

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod stream;

pub use rustls;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
pub use rustls_pki_types::ServerName;
pub use stream::{MaybeTls, TLS_BUFFER_LIMIT};

/// A PEM file larger than this is refused: certificates and keys are a few
/// KiB, and a node must not read a huge file into memory by mistake.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub enum TlsError {
    Read {
        path: PathBuf,
        error: io::Error,
    },
    TooLarge {
        path: PathBuf,
    },
    /// The file holds no PEM certificate.
    NoCertificate {
        path: PathBuf,
    },
    /// The file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    NoKey {
        path: PathBuf,
    },
    /// A certificate of a CA file rustls would not take as a trust anchor.
    BadCa {
        path: PathBuf,
        error: String,
    },
    /// The certificate and key do not go together, or rustls refused them.
    Config {
        what: String,
        error: String,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            TlsError::TooLarge { path } => write!(
                f,
                "{} is larger than {} bytes: not a PEM certificate or key file",
                path.display(),
                MAX_PEM_BYTES
            ),
            TlsError::NoCertificate { path } => write!(
                f,
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
            TlsError::NoKey { path } => write!(
                f,
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
            TlsError::BadCa { path, error } => {
                write!(
                    f,
                    "{}: not a usable CA certificate: {error}",
                    path.display()
                )
            }
            TlsError::Config { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The crypto every poncho TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    };
    // Bounded by what is read, not by what metadata says (a device reports
    // 0 bytes and has no end).
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    io::Read::take(&file, MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order (a leaf, then its chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file, and a warning to print if others than its
/// owner may read the file.
pub fn load_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Option<String>), TlsError> {
    let bytes = read_pem(path)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey {
        path: path.to_path_buf(),
    })?;
    Ok((key, readable_by_others(path)))
}

/// A warning if others than the owner may read `path` (a key or a secret).
pub fn readable_by_others(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} may be read by others than its owner (mode {:o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        )
    })
}

/// The CA certificates of a PEM file, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// What one side of a TLS connection presents and trusts, as files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (and chain), PEM.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
    /// The CA that the other side's certificate must be signed by.
    pub trusted_ca: Option<PathBuf>,
}

/// A listener's configuration: it presents `cert`/`key`; with
/// `require_client_cert`, a client must present a certificate signed by
/// `trusted_ca` (etcd's `--client-cert-auth`). Also returns the key file's
/// warning, if any.
pub fn server_config(
    files: &TlsFiles,
    require_client_cert: bool,
    what: &str,
) -> Result<(Arc<ServerConfig>, Option<String>), TlsError> {
    let config_err = |error: String| TlsError::Config {
        what: what.to_string(),
        error,
    };
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(config_err(
            "needs both a certificate file and a key file".into(),
        ));
    };
    let chain = load_certs(cert)?;
    let (key, warning) = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?;
    let builder = match (&files.trusted_ca, require_client_cert) {
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| config_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => {
            return Err(config_err(
                "client certificate authentication needs a trusted CA file".into(),
            ))
        }
        (_, false) => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_err(format!("the certificate and key do not go together: {e}")))?;
    Ok((Arc::new(config), warning))
}

/// A connecting side's configuration: it trusts `trusted_ca` (required:
/// poncho has no system trust store) and, given `cert`/`key`, presents them
/// (for a server that checks client certificates). Also returns the key
/// file's warning, if any.
pub fn client_config(
    files: &TlsFiles,
    what: &str,
) -> Result<(Arc<ClientConfig>, Option<String>), TlsError> {
    let config_err = |error: String| TlsError::Config {
        what: what.to_string(),
        error,
    };
    let Some(ca) = &files.trusted_ca else {
        return Err(config_err(
            "needs the CA certificate that signed the server's (--cacert)".into(),
        ));
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let (config, warning) = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let (key, warning) = load_key(key)?;
            let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                config_err(format!("the certificate and key do not go together: {e}"))
            })?;
            (config, warning)
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => {
            return Err(config_err(
                "a client certificate needs both --cert and --key".into(),
            ))
        }
    };
    Ok((Arc::new(config), warning))
}

/// The name a connection to `host` checks the server's certificate for: an
/// IP address (an IP SAN) or a DNS name.
/// The subject's common name (CN) of a DER certificate, if it has one that
/// is UTF-8; `None` for a certificate that does not parse.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Config {
        what: format!("server name {host:?}"),
        error: e.to_string(),
    })
}

/// A one-line explanation of a TLS failure, for logs and client errors:
/// rustls's error, with what usually causes it.
pub fn explain(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let hint = match error {
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            " (the certificate has expired)"
        }
        Error::InvalidCertificate(CertificateError::NotValidYet)
        | Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            " (the certificate is not valid yet: check the clocks)"
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            " (it is not signed by a trusted CA: check the CA file)"
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            " (the certificate is for another name or address)"
        }
        Error::InvalidMessage(_) => " (the other end does not speak TLS?)",
        Error::NoCertificatesPresented => " (a client certificate is required)",
        _ => "",
    };
    format!("TLS: {error}{hint}")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// A CA, and a leaf it signs for 127.0.0.1, as files in `dir`.
    fn pki(dir: &Path, name: &str) -> TlsFiles {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let key = write(dir, &format!("{name}.key"), &leaf_key.serialize_pem());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        TlsFiles {
            cert: Some(write(dir, &format!("{name}.pem"), &leaf.pem())),
            key: Some(key),
            trusted_ca: Some(write(dir, &format!("{name}-ca.pem"), &ca.pem())),
        }
    }

    /// A TLS server on a loopback port answering one line with "pong", or
    /// reporting the error its read got.
    fn serve_once(
        config: Arc<ServerConfig>,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<io::Result<String>>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept()?;
            let session = rustls::ServerConnection::new(config).unwrap();
            let mut tls = MaybeTls::tls(session, sock);
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\n") {
                if tls.read(&mut byte)? == 0 {
                    break;
                }
                line.push(byte[0]);
            }
            tls.write_all(b"pong\n")?;
            tls.flush()?;
            Ok(String::from_utf8_lossy(&line).into_owned())
        });
        (addr, handle)
    }

    #[test]
    fn lines_cross_a_tls_stream_and_plaintext_or_an_unknown_ca_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "node");
        let (server, _) = server_config(&files, false, "clients").unwrap();
        let (client, _) = client_config(&files, "test").unwrap();

        let (addr, handle) = serve_once(server.clone());
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let session =
            rustls::ClientConnection::new(client, server_name("127.0.0.1").unwrap()).unwrap();
        let mut tls = MaybeTls::tls(session, sock);
        tls.write_all(b"ping\n").unwrap();
        tls.flush().unwrap();
        let mut reply = [0u8; 5];
        tls.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong\n");
        assert_eq!(handle.join().unwrap().unwrap(), "ping\n");

        // A plaintext client: the server's read fails, saying why.
        let (addr, handle) = serve_once(server.clone());
        let mut plain = std::net::TcpStream::connect(addr).unwrap();
        plain
            .write_all(b"{\"msg_type\":\"HEALTHCHECK\"}\n")
            .unwrap();
        let e = handle.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("does not speak TLS"), "{e}");

        // A client that trusts another CA refuses the server's certificate.
        let other = pki(dir.path(), "other");
        let (stranger, _) = client_config(&other, "test").unwrap();
        let (addr, _handle) = serve_once(server);
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let session =
            rustls::ClientConnection::new(stranger, server_name("127.0.0.1").unwrap()).unwrap();
        let mut tls = MaybeTls::tls(session, sock);
        tls.write_all(b"ping\n").unwrap();
        tls.flush().unwrap();
        let e = tls.read(&mut reply).unwrap_err();
        assert!(e.to_string().contains("not signed by a trusted CA"), "{e}");
        assert!(tls.tls_error().is_some());
    }

    #[test]
    fn a_short_read_says_the_socket_is_empty_only_when_the_sockets_own_read_was_short() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "node");
        let (server, _) = server_config(&files, false, "clients").unwrap();
        let (client, _) = client_config(&files, "test").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        const PAYLOAD: usize = 40_000;
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let session = rustls::ServerConnection::new(server).unwrap();
            let mut tls = MaybeTls::tls(session, sock);
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).unwrap();
            tls.write_all(&vec![b'x'; PAYLOAD]).unwrap();
            tls.flush().unwrap();
            sent_tx.send(()).unwrap();
            let _ = done_rx.recv(); // hold the connection open
        });
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let session =
            rustls::ClientConnection::new(client, server_name("127.0.0.1").unwrap()).unwrap();
        let mut tls = MaybeTls::tls(session, sock);
        tls.write_all(b"!").unwrap();
        tls.flush().unwrap();
        let mut first = [0u8; 100];
        tls.read_exact(&mut first).unwrap();
        sent_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The payload waits in the socket: a read that comes back short
        // (one record's plaintext) must not claim it emptied the socket.
        let mut chunk = vec![0u8; 1 << 16];
        let n = tls.read(&mut chunk).unwrap();
        assert!(n < chunk.len(), "one read takes at most a record: {n}");
        assert!(
            !tls.short_read_emptied_socket(),
            "{} bytes were still in the socket",
            PAYLOAD - 100 - n
        );
        let mut total = 100 + n;
        while total < PAYLOAD {
            total += tls.read(&mut chunk).unwrap();
        }
        assert_eq!(total, PAYLOAD);
        assert!(
            tls.short_read_emptied_socket(),
            "the last read took the socket's last bytes"
        );
        done_tx.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn a_certificates_common_name_is_read_and_junk_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "node");
        let ca = load_certs(files.trusted_ca.as_ref().unwrap()).unwrap();
        assert_eq!(common_name(&ca[0]).as_deref(), Some("node CA"));
        let leaf = load_certs(files.cert.as_ref().unwrap()).unwrap();
        assert_eq!(
            common_name(&leaf[0]).as_deref(),
            Some("rcgen self signed cert"),
            "rcgen's default"
        );
        assert_eq!(
            common_name(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }

    #[test]
    fn files_that_are_not_certificates_or_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let junk = write(dir.path(), "junk.pem", "not pem at all\n");
        let e = load_certs(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = load_key(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM private key"),
            "{e}"
        );
        let e = load_certs(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, TlsError::TooLarge { .. }), "{e}");
        let missing = dir.path().join("missing.pem");
        assert!(load_certs(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.pem"));
    }

    #[test]
    fn a_server_and_client_config_build_from_generated_files_and_a_readable_key_warns() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "leaf");
        let key = files.key.clone().unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warning) = server_config(&files, true, "clients").unwrap();
        assert!(warning.unwrap().contains("chmod 600"));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let (_, warning) = client_config(&files, "peers").unwrap();
        assert!(warning.is_none());
        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        let wrong = TlsFiles {
            key: Some(write(dir.path(), "other.key", &other.serialize_pem())),
            ..files.clone()
        };
        let e = server_config(&wrong, false, "clients")
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not go together"), "{e}");
        let no_ca = TlsFiles {
            trusted_ca: None,
            ..files
        };
        assert!(server_config(&no_ca, true, "clients").is_err());
        assert!(client_config(&no_ca, "peers").is_err());
    }
}
