//! The client over TLS, against in-process nodes (rustls servers answering
//! JSON lines, plaintext ones, silent ones): a round trip, with and without
//! client certificates, and every refusal as a clear, final error.

#[path = "../../tests/src/certs.rs"]
#[allow(dead_code)] // leaf_as, for the end-to-end tests
mod certs;
#[path = "support/tls_node.rs"]
mod tls_node;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use certs::{Leaf, TestCa};
use poncho_client::tls::Tls;
use poncho_client::{ClientError, ClusterClient, ConnError, Connection, Route, TlsFiles};
use poncho_protocol::ClientRequest;
use tls_node::{node, Node, Speaks};

/// A CA and its files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
}

fn pki(name: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), name);
    Pki { dir, ca }
}

fn server(leaf: &Leaf, client_ca: Option<&Path>) -> Speaks {
    tls_node::tls_server(&leaf.cert, &leaf.key, client_ca)
}

fn client_tls(ca: &Path, leaf: Option<&Leaf>) -> Tls {
    let files = TlsFiles {
        trusted_ca: Some(ca.to_path_buf()),
        cert: leaf.map(|l| l.cert.clone()),
        key: leaf.map(|l| l.key.clone()),
    };
    Tls::from_files(&files).unwrap().0
}

fn healthcheck(
    addrs: &[&str],
    tls: Option<Tls>,
    timeout: Duration,
) -> Result<poncho_client::Reply, ClientError> {
    let addrs = addrs.iter().map(|a| a.to_string()).collect();
    ClusterClient::new(addrs, timeout, false)
        .with_tls(tls)
        .request(&ClientRequest::Healthcheck, Route::Here)
}

/// `result` failed with a TLS error that says `what`, in well under the
/// timeout, after one connection to the node.
fn refused(result: Result<poncho_client::Reply, ClientError>, what: &str, node: &Node, t: Instant) {
    let err = result.unwrap_err();
    assert_eq!(err.code(), "TLS", "{err}");
    assert!(err.message().contains(what), "{err}");
    assert!(err.message().contains(&node.addr), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1, "retried: {err}");
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn requests_cross_tls_with_and_without_a_client_certificate() {
    let p = pki("ca");
    let leaf = p.ca.leaf("node", &["127.0.0.1"]);
    let n = node(server(&leaf, None));
    let tls = client_tls(&p.ca.cert_file, None);
    let reply = healthcheck(&[&n.addr], Some(tls.clone()), TIMEOUT).unwrap();
    assert_eq!(reply.envelope.payload, "ok");
    assert_eq!(reply.addr, n.addr);
    let (status, _) = poncho_client::status_with(&n.addr, TIMEOUT, Some(&tls));
    // STATUS crossed TLS too, and so does finding the leader.
    assert_eq!(status.unwrap().role, "leader");
    let addrs = [n.addr.clone()];
    let leader = poncho_client::find_leader_with(&addrs, TIMEOUT, Some(&tls));
    assert_eq!(leader.as_ref(), Some(&n.addr));
    assert_eq!(poncho_client::find_leader(&addrs, TIMEOUT), None);

    // A node that checks client certificates: one signed by the CA passes.
    let n = node(server(&leaf, Some(&p.ca.cert_file)));
    let me = p.ca.leaf("me", &[]);
    let tls = client_tls(&p.ca.cert_file, Some(&me));
    let reply = healthcheck(&[&n.addr], Some(tls), TIMEOUT).unwrap();
    assert_eq!(reply.envelope.payload, "ok");
    let n = node(server(&leaf, Some(&p.ca.cert_file)));
    let t = Instant::now();
    let anonymous = client_tls(&p.ca.cert_file, None);
    let result = healthcheck(&[&n.addr], Some(anonymous), TIMEOUT);
    refused(result, "give --cert and --key", &n, t);
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_told_to_give_a_ca() {
    let p = pki("ca");
    let n = node(server(&p.ca.leaf("node", &["127.0.0.1"]), None));
    let t = Instant::now();
    let result = healthcheck(&[&n.addr], None, TIMEOUT);
    refused(result, "speaks TLS: give --cacert", &n, t);
}

#[test]
fn a_tls_client_on_a_plaintext_port_is_told_the_node_does_not_speak_tls() {
    let p = pki("ca");
    let n = node(Speaks::Plain);
    let t = Instant::now();
    let result = healthcheck(&[&n.addr], Some(client_tls(&p.ca.cert_file, None)), TIMEOUT);
    refused(result, "does not speak TLS on that port", &n, t);
}

#[test]
fn a_tls_client_on_a_silent_port_gives_up_at_its_deadline() {
    let p = pki("ca");
    let n = node(Speaks::Nothing);
    let t = Instant::now();
    let err = Connection::connect(
        &n.addr,
        Instant::now() + Duration::from_millis(400),
        Some(&client_tls(&p.ca.cert_file, None)),
    )
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let ConnError::Io { error, sent: false } = err else {
        panic!("{err}");
    };
    assert!(
        error
            .to_string()
            .contains(&format!("no TLS handshake from {} within 0.4 s", n.addr)),
        "{error}"
    );
    // The whole request gives up at its deadline too.
    let t = Instant::now();
    let tls = client_tls(&p.ca.cert_file, None);
    let err = healthcheck(&[&n.addr], Some(tls), Duration::from_millis(600)).unwrap_err();
    assert_eq!(err.code(), "UNREACHABLE", "{err}");
    assert!(err.message().contains("no TLS handshake"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn an_unknown_ca_an_expired_and_a_wrong_name_certificate_are_refused_at_once() {
    let p = pki("ca");
    let other = pki("other");
    let cases = [
        (
            p.ca.leaf("node", &["127.0.0.1"]),
            "not signed by a trusted CA",
        ),
        (p.ca.expired_leaf("old", &["127.0.0.1"]), "has expired"),
        (
            p.ca.leaf("elsewhere", &["10.9.9.9", "db.example"]),
            "for another name or address",
        ),
    ];
    for (i, (leaf, what)) in cases.iter().enumerate() {
        let n = node(server(leaf, None));
        let ca = if i == 0 {
            &other.ca.cert_file
        } else {
            &p.ca.cert_file
        };
        let t = Instant::now();
        let result = healthcheck(&[&n.addr], Some(client_tls(ca, None)), TIMEOUT);
        refused(result, what, &n, t);
    }
    drop(other.dir);
}

#[test]
fn a_node_tls_refuses_is_skipped_for_the_others() {
    let p = pki("ca");
    let bad = node(server(&p.ca.leaf("bad", &["10.9.9.9"]), None));
    let good = node(server(&p.ca.leaf("good", &["127.0.0.1"]), None));
    let tls = client_tls(&p.ca.cert_file, None);
    let reply = healthcheck(&[&bad.addr, &good.addr], Some(tls), TIMEOUT).unwrap();
    assert_eq!(reply.addr, good.addr);
    assert_eq!(bad.accepted.load(Ordering::SeqCst), 1);
}
