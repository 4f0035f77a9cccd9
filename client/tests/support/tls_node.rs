//! A node on a loopback port for TLS tests, speaking TLS (a rustls server
//! answering JSON lines), plaintext, or nothing at all, and certificates for
//! it. Included by path by the client's, the shell's and the bench's tests,
//! next to tests/src/certs.rs as `crate::certs`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use poncho_client::{MaybeTls, TlsFiles};
use poncho_tls::rustls::{ServerConfig, ServerConnection};

use crate::certs::{Leaf, TestCa};

/// A CA, a certificate it signed for a node on 127.0.0.1 and one for a
/// client, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub node: Leaf,
    pub client: Leaf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let node = ca.leaf("node", &["127.0.0.1"]);
    let client = ca.leaf("me", &[]);
    Pki {
        dir,
        ca,
        node,
        client,
    }
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `--cluster addr` and the CA, certificate and key flags of `p`'s client.
pub fn client_flags<'a>(p: &'a Pki, addr: &'a str) -> [&'a str; 8] {
    [
        "--cluster",
        addr,
        "--cacert",
        arg(&p.ca.cert_file),
        "--cert",
        arg(&p.client.cert),
        "--key",
        arg(&p.client.key),
    ]
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A node on a loopback port: how many connections it accepted.
pub struct Node {
    pub addr: String,
    pub accepted: Arc<AtomicUsize>,
}

/// How a test node treats each connection.
#[derive(Clone)]
pub enum Speaks {
    /// TLS with this configuration, then JSON lines.
    Tls(Arc<ServerConfig>),
    /// Plaintext: BAD_REQUEST to whatever comes.
    Plain,
    /// Accepts and never says a thing.
    Nothing,
}

/// Serves connections on a thread each until the test process ends.
pub fn node(speaks: Speaks) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = sock.set_nodelay(true);
            let speaks = speaks.clone();
            std::thread::spawn(move || serve(speaks, sock));
        }
    });
    Node { addr, accepted }
}

fn serve(speaks: Speaks, sock: TcpStream) {
    match speaks {
        Speaks::Tls(config) => {
            let session = ServerConnection::new(config).unwrap();
            answer_lines(MaybeTls::tls(session, sock));
        }
        Speaks::Plain => answer_plainly(sock),
        Speaks::Nothing => {
            let mut sock = sock;
            let _ = sock.read_to_end(&mut Vec::new());
        }
    }
}

/// Answers each line as a leader would, in short: HEALTHCHECK, STATUS,
/// REGISTER_CLIENT, SET, GET and CAS; anything else with BAD_REQUEST.
fn answer_lines(stream: MaybeTls<TcpStream>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        let request: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        line.clear();
        let payload = match request["msg_type"].as_str().unwrap_or("") {
            "HEALTHCHECK" => serde_json::json!("ok"),
            "STATUS" => serde_json::from_str(STATUS).unwrap(),
            "REGISTER_CLIENT" => serde_json::json!({"client_id": 7}),
            "SET" | "GET" | "CAS" => serde_json::json!({"key": request["payload"]["key"]}),
            _ => serde_json::Value::Null,
        };
        let reply = match payload {
            serde_json::Value::Null => BAD_REQUEST.to_string(),
            payload => serde_json::json!({
                "msg_type": request["msg_type"], "req_id": request["req_id"], "payload": payload
            })
            .to_string(),
        };
        // One write per reply, as a node sends it (two small TLS records
        // would wait on Nagle and a delayed ACK).
        let out = reader.get_mut();
        if out
            .write_all(format!("{reply}\n").as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

const STATUS: &str = r#"{"id":1,"addr":"leader","role":"leader","term":3,"leader_id":1,"commit_index":0,"last_applied":0,"last_log_index":0,"members":[]}"#;
const BAD_REQUEST: &str =
    r#"{"msg_type":"ERROR","payload":{"code":"BAD_REQUEST","message":"not a JSON object"}}"#;

/// A plaintext poncho node answers a line it cannot parse with
/// BAD_REQUEST; this one answers whatever bytes it gets at once (a
/// ClientHello holds a newline only by chance).
fn answer_plainly(mut sock: TcpStream) {
    let mut chunk = [0u8; 4096];
    while matches!(sock.read(&mut chunk), Ok(n) if n > 0) {
        if writeln!(sock, "{BAD_REQUEST}").is_err() {
            return;
        }
    }
}

/// A TLS node's way of speaking: it presents `cert`/`key` and, given
/// `client_ca`, requires client certificates that CA signed.
pub fn tls_server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Speaks {
    let files = TlsFiles {
        cert: Some(cert.to_path_buf()),
        key: Some(key.to_path_buf()),
        trusted_ca: client_ca.map(Path::to_path_buf),
    };
    let (config, _) = poncho_tls::server_config(&files, client_ca.is_some(), "test").unwrap();
    Speaks::Tls(config)
}
