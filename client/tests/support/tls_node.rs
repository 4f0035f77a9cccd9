//! A node on a loopback port for TLS tests, speaking TLS (a rustls server
//! answering JSON lines), plaintext, or nothing at all. Included by path
//! by the client's and the shell's tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use poncho_client::{MaybeTls, TlsFiles};
use poncho_tls::rustls::{ServerConfig, ServerConnection};

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

/// Answers each line: HEALTHCHECK as a node would, anything else with
/// BAD_REQUEST.
fn answer_lines(stream: MaybeTls<TcpStream>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        let request: Option<serde_json::Value> = serde_json::from_slice(&line).ok();
        line.clear();
        let reply = match request {
            Some(r) if r["msg_type"] == "HEALTHCHECK" => serde_json::json!({
                "msg_type": "HEALTHCHECK", "req_id": r["req_id"], "payload": "ok"
            })
            .to_string(),
            _ => BAD_REQUEST.to_string(),
        };
        let out = reader.get_mut();
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

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
