//! TLS on the node's port (issue 12): a cluster whose nodes speak TLS to
//! clients and to each other replicates; a plaintext client, a client that
//! trusts another CA, an expired or wrong-name certificate, a missing client
//! certificate under `--client-cert-auth`, and a stalled handshake are each
//! refused, never left hanging, with a line in the node's log.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::certs::{Leaf, TestCa};
use poncho_tests::{Client, Cluster};
use poncho_tls::rustls::ClientConfig;
use poncho_tls::TlsFiles;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20));
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: TestCa,
    node: Leaf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster-ca");
    let node = ca.leaf("node", &["127.0.0.1"]);
    Pki {
        _dir: dir,
        ca,
        node,
    }
}

fn tls_flags(pki: &Pki, client_cert_auth: bool) -> Vec<String> {
    let mut flags = vec![
        "--cert-file".to_string(),
        pki.node.cert.display().to_string(),
        "--key-file".to_string(),
        pki.node.key.display().to_string(),
        "--trusted-ca-file".to_string(),
        pki.ca.cert_file.display().to_string(),
    ];
    if client_cert_auth {
        flags.push("--client-cert-auth".to_string());
    }
    flags
}

fn client_config(ca: &TestCa, identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let files = TlsFiles {
        cert: identity.map(|l| l.cert.clone()),
        key: identity.map(|l| l.key.clone()),
        trusted_ca: Some(ca.cert_file.clone()),
    };
    poncho_tls::client_config(&files, "test").unwrap().0
}

fn start(pki: &Pki, client_cert_auth: bool, identity: Option<&Leaf>) -> (Cluster, u64) {
    let flags = tls_flags(pki, client_cert_auth);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &flags);
    cluster.use_tls(client_config(&pki.ca, identity));
    let leader = cluster.wait_for_leader(ELECTION);
    (cluster, leader)
}

fn request(c: &mut Client, line: Value) -> Value {
    c.request(&line).expect("a reply")
}

/// Waits until every node of the 3 serves `key` = `value` from its own state.
fn wait_on_every_node(cluster: &Cluster, key: &str, value: &str) {
    for id in 1..=3 {
        wait_until("the write on every node", ELECTION, || {
            let mut c = cluster.client(id);
            let get = json!({"msg_type": "GET", "payload": {"key": key, "stale": true}});
            request(&mut c, get)["payload"]["value"] == value
        });
    }
}

#[test]
fn a_tls_cluster_replicates_and_a_plaintext_client_is_refused_with_a_log_line() {
    let pki = pki();
    let (cluster, leader) = start(&pki, false, None);
    let mut c = cluster.client(leader);
    let reply = request(
        &mut c,
        json!({"msg_type": "SET", "payload": {"key": "k", "value": "over tls"}}),
    );
    assert_eq!(reply["msg_type"], "SET", "{reply}");
    // The peers replicated it over TLS: every node applies it.
    wait_on_every_node(&cluster, "k", "over tls");

    // A plaintext client gets no JSON, only TLS bytes or a close, at once.
    let started = Instant::now();
    let mut plain = TcpStream::connect(cluster.addr(leader)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"{\"msg_type\":\"HEALTHCHECK\"}\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(4), "it hung");
    assert!(
        got.first().is_none_or(|&b| b == 0x15),
        "a TLS alert or nothing, not a reply: {got:?}"
    );
    wait_until("the node logging the refusal", ELECTION, || {
        cluster
            .log(leader)
            .contains("refused a TLS connection from 127.0.0.1")
    });
}

/// What a client connection with `config` gets on `addr`: the error of its
/// first exchange, if it fails.
fn exchange_error(cluster: &Cluster, id: u64, config: Arc<ClientConfig>) -> Option<String> {
    let started = Instant::now();
    let result = Client::connect_tls(cluster.addr(id), config)
        .and_then(|mut c| c.request(&json!({"msg_type": "HEALTHCHECK"})));
    assert!(started.elapsed() < Duration::from_secs(5), "it hung");
    result.err().map(|e| e.to_string())
}

#[test]
fn unknown_ca_expired_and_wrong_name_certificates_and_missing_client_certs_are_refused() {
    let pki = pki();
    let (cluster, leader) = start(&pki, true, Some(&pki.node));
    let good = pki.ca.leaf("alice", &["alice.example"]);
    assert_eq!(
        exchange_error(&cluster, leader, client_config(&pki.ca, Some(&good))),
        None,
        "control: a client with a certificate of the cluster's CA is served"
    );

    // The client trusts another CA: it refuses the node's certificate.
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new(dir.path(), "other-ca");
    let e = exchange_error(&cluster, leader, client_config(&other, Some(&good))).unwrap();
    assert!(e.contains("not signed by a trusted CA"), "{e}");

    // No client certificate under --client-cert-auth: the node refuses.
    let e = exchange_error(&cluster, leader, client_config(&pki.ca, None)).unwrap();
    assert!(!e.is_empty());
    // A client certificate from another CA: refused too.
    let stranger = other.leaf("mallory", &["mallory.example"]);
    assert!(exchange_error(&cluster, leader, client_config(&pki.ca, Some(&stranger))).is_some());
    // An expired client certificate: refused.
    let expired = pki.ca.expired_leaf("old", &["old.example"]);
    assert!(exchange_error(&cluster, leader, client_config(&pki.ca, Some(&expired))).is_some());
    wait_until("the node logging certificate refusals", ELECTION, || {
        let log = cluster.log(leader);
        log.contains("refused a TLS connection from 127.0.0.1")
    });
}

#[test]
fn a_node_with_an_expired_or_wrong_name_certificate_is_refused_by_clients() {
    let pki = pki();
    for (leaf, why) in [
        (
            pki.ca.expired_leaf("expired-node", &["127.0.0.1"]),
            "expired",
        ),
        (pki.ca.leaf("elsewhere", &["127.0.0.9"]), "another name"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("n1");
        let mut child = std::process::Command::new(poncho_tests::workspace_bin("poncho-server"))
            .args(["--port", "0", "--data-dir"])
            .arg(&data)
            .arg("--cert-file")
            .arg(&leaf.cert)
            .arg("--key-file")
            .arg(&leaf.key)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        std::io::BufRead::read_line(&mut out, &mut banner).unwrap();
        let port: u16 = banner
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {banner:?}"));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let result = Client::connect_tls(addr, client_config(&pki.ca, None))
            .and_then(|mut c| c.request(&json!({"msg_type": "HEALTHCHECK"})));
        let _ = child.kill();
        let _ = child.wait();
        let e = result.expect_err(why).to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

/// Past every place on a TLS port, a connection is refused with a TLS alert,
/// which a TLS client reports as a refusal. (The OVERLOADED line went out in
/// plaintext, which the client took for a corrupt record from a server
/// that does not speak TLS.)
#[test]
fn a_connection_refused_for_want_of_places_on_a_tls_port_gets_a_tls_alert() {
    let pki = pki();
    let mut flags = tls_flags(&pki, false);
    flags.extend(["--max-clients".to_string(), "1".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &flags);
    cluster.use_tls(client_config(&pki.ca, None));
    cluster.wait_for_leader(ELECTION);
    // Every place taken: one client, and the room past it (2 per peer + 8).
    let _held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(cluster.addr(1)).unwrap())
        .collect();
    sleep(Duration::from_millis(200));
    let e = exchange_error(&cluster, 1, client_config(&pki.ca, None)).expect("a refusal");
    assert!(
        e.contains("alert") && !e.contains("does not speak TLS"),
        "{e}"
    );
}

#[test]
fn a_stalled_tls_handshake_is_closed_by_its_deadline() {
    let pki = pki();
    let (cluster, leader) = start(&pki, false, None);
    let mut idle = TcpStream::connect(cluster.addr(leader)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the node to close the connection: {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&waited),
        "closed after {waited:?}"
    );
    assert!(cluster
        .log(leader)
        .contains("its TLS handshake took over 10 s"));
}

/// Peers on a port of their own, proving membership with certificates of
/// the peer CA (etcd's 2380 with --peer-client-cert-auth): no cluster secret
/// is needed, the cluster replicates, and that port serves no clients, takes
/// no certificate of another CA, and a hello on the client port is refused.
#[test]
fn peers_on_their_own_port_prove_membership_with_certificates_and_serve_no_clients() {
    let pki = peer_pki("peer");
    let (peer_ca, peer) = (&pki.ca, &pki.member);
    let (cluster, leader) = start_peer_mtls(&pki, &[]);
    replicates(&cluster, "p", "2380");
    assert!(
        !cluster.log(1).contains("cluster-secret"),
        "no secret was given"
    );
    // A client request on a peer port (with a good peer certificate) is refused.
    let peer_port = cluster.peer_addr(leader).expect("a peer port");
    let mut c = Client::connect_tls(peer_port, client_config(peer_ca, Some(peer))).unwrap();
    let reply = request(&mut c, json!({"msg_type": "HEALTHCHECK"}));
    assert_refused(&reply, "BAD_REQUEST", "peer port");
    // A certificate of another CA is refused by TLS on the peer port.
    let other_ca = TestCa::new(pki.dir.path(), "other-ca");
    let other = other_ca.leaf("other", &["127.0.0.1"]);
    let refused = Client::connect_tls(peer_port, client_config(peer_ca, Some(&other)))
        .and_then(|mut c| c.request(&json!({"msg_type": "HEALTHCHECK"})));
    assert!(refused.is_err(), "{refused:?}");
    // A hello on the client port is refused: peers use their port.
    let cid = std::fs::read_to_string(cluster.data_dir(leader).join("cluster-id")).unwrap();
    let other_id = if leader == 1 { 2 } else { 1 };
    let mut c = cluster.client(leader);
    let reply = request(
        &mut c,
        json!({"msg_type": "PEER_HELLO", "payload": {"cluster_id": cid.trim(), "from": other_id,
            "to": leader, "nonce": "ab".repeat(32)}}),
    );
    assert_refused(&reply, "UNAUTHENTICATED", "peer port");
}

/// A peer CA and the certificate every member presents (common name
/// `cn`, for 127.0.0.1), their files in `dir`.
struct PeerPki {
    dir: tempfile::TempDir,
    ca: TestCa,
    member: Leaf,
}

fn peer_pki(cn: &str) -> PeerPki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "peer-ca");
    let member = ca.leaf(cn, &["127.0.0.1"]);
    PeerPki { dir, ca, member }
}

/// A cluster whose peers prove membership with `pki`'s certificates, on
/// ports of their own, started with `extra` flags too; and its leader.
fn start_peer_mtls(pki: &PeerPki, extra: &[&str]) -> (Cluster, u64) {
    let mut flags = vec![
        "--peer-cert-file".to_string(),
        pki.member.cert.display().to_string(),
        "--peer-key-file".to_string(),
        pki.member.key.display().to_string(),
        "--peer-trusted-ca-file".to_string(),
        pki.ca.cert_file.display().to_string(),
        "--peer-client-cert-auth".to_string(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_peer_ports(3, &flags);
    let leader = cluster.wait_for_leader(ELECTION);
    (cluster, leader)
}

/// A write of `key` is acknowledged and reaches every node.
fn replicates(cluster: &Cluster, key: &str, value: &str) {
    let reply = poncho_tests::write_with_retry(
        cluster,
        &json!({"msg_type": "SET", "payload": {"key": key, "value": value}}),
        ELECTION,
    );
    assert!(reply["index"].is_u64(), "{reply}");
    wait_on_every_node(cluster, key, value);
}

/// What node 1's peer port answers a hello claiming node 2 on a connection
/// presenting `identity`.
fn hello_as_node_2(cluster: &Cluster, ca: &TestCa, identity: &Leaf) -> (Client, Value) {
    let cid = std::fs::read_to_string(cluster.data_dir(1).join("cluster-id")).unwrap();
    let peer_port = cluster.peer_addr(1).expect("a peer port");
    let mut c = Client::connect_tls(peer_port, client_config(ca, Some(identity))).unwrap();
    let reply = request(
        &mut c,
        json!({"msg_type": "PEER_HELLO", "payload": {"cluster_id": cid.trim(), "from": 2,
            "to": 1, "nonce": "ab".repeat(32)}}),
    );
    (c, reply)
}

/// A peer certificate proves only the members whose address it names: one
/// of the peer CA for another address is refused when it claims node 2,
/// while the members' own certificate passes the handshake. (Any
/// certificate of the CA could claim any member id.)
#[test]
fn a_peer_certificate_proves_only_the_members_whose_address_it_names() {
    let pki = peer_pki("peer");
    let (cluster, _) = start_peer_mtls(&pki, &[]);
    let elsewhere = pki.ca.leaf_as("elsewhere", "peer", &["127.0.0.9"]);
    let (_, reply) = hello_as_node_2(&cluster, &pki.ca, &elsewhere);
    assert_refused(
        &reply,
        "UNAUTHENTICATED",
        "does not name the member's address",
    );
    // The members' certificate names 127.0.0.1: node 2's handshake passes.
    let (mut c, challenge) = hello_as_node_2(&cluster, &pki.ca, &pki.member);
    assert_eq!(challenge["msg_type"], "PEER_CHALLENGE", "{challenge}");
    let accept = request(&mut c, json!({"msg_type": "PEER_PROOF", "payload": {}}));
    assert_eq!(accept["msg_type"], "PEER_ACCEPT", "{accept}");
    wait_until("node 1 logging the refusal", ELECTION, || {
        cluster
            .log(1)
            .contains("does not name the member's address 127.0.0.1")
    });
}

/// etcd's `--peer-cert-allowed-cn`: a cluster whose members' certificates
/// have that common name replicates, and a certificate of the same CA, for
/// the right address, with another common name is refused.
#[test]
fn peer_cert_allowed_cn_admits_only_certificates_with_that_common_name() {
    let pki = peer_pki("member");
    let (cluster, _) = start_peer_mtls(&pki, &["--peer-cert-allowed-cn", "member"]);
    replicates(&cluster, "cn", "member");
    let mallory = pki.ca.leaf("mallory", &["127.0.0.1"]);
    let (_, reply) = hello_as_node_2(&cluster, &pki.ca, &mallory);
    assert_refused(&reply, "UNAUTHENTICATED", "common name is \"mallory\"");
}

/// `reply` is an ERROR with `code` whose message mentions `says`.
fn assert_refused(reply: &Value, code: &str, says: &str) {
    let error = &reply["payload"];
    assert_eq!(error["code"], code, "{reply}");
    let message = error["message"].as_str().unwrap_or("");
    assert!(message.contains(says), "{reply}");
}

/// The shell against a real TLS cluster with client certificates: `set` and
/// `get` work with --cacert/--cert/--key, and without --cacert it says the
/// node speaks TLS. No node log, nor the shell's --verbose output, holds a
/// key or the cluster secret.
#[test]
fn the_shell_speaks_tls_to_a_cluster_and_nothing_prints_keys_or_secrets() {
    let pki = pki();
    let (cluster, _) = start(&pki, true, Some(&pki.node));
    let user = pki.ca.leaf("shell-user", &["shell.example"]);
    let nodes: Vec<String> = (1..=3).map(|id| cluster.addr(id).to_string()).collect();
    let shell = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(poncho_tests::workspace_bin("poncho-shell"))
            .arg("--cluster")
            .arg(nodes.join(","))
            .args(args)
            .env_remove("PONCHO_CACERT")
            .env_remove("PONCHO_CERT")
            .env_remove("PONCHO_KEY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = pki.ca.cert_file.display().to_string();
    let (cert, key) = (
        user.cert.display().to_string(),
        user.key.display().to_string(),
    );
    let tls = ["--cacert", &ca, "--cert", &cert, "--key", &key, "--verbose"];
    let (out, err) = shell(&tls, "set greeting hello\nget greeting\n");
    assert!(out.contains("OK") && out.contains("hello"), "{out}\n{err}");
    let (out, err) = shell(&["--timeout", "2s"], "get greeting\n");
    let all = format!("{out}{err}");
    assert!(
        all.contains("speaks TLS") && all.contains("--cacert"),
        "{all}"
    );

    let key_text = std::fs::read_to_string(&user.key).unwrap();
    let node_key = std::fs::read_to_string(&pki.node.key).unwrap();
    let secret = std::fs::read_to_string(cluster.dir().join("cluster-secret")).unwrap();
    let key_line = key_text.lines().nth(1).unwrap().to_string();
    let node_key_line = node_key.lines().nth(1).unwrap().to_string();
    let (out, err) = shell(&tls, "status\n");
    for (what, text) in [
        ("the shell's --verbose output", format!("{out}{err}")),
        ("the node logs", cluster.all_logs()),
    ] {
        for (name, needle) in [
            ("a client key", key_line.as_str()),
            ("a node key", node_key_line.as_str()),
            ("the cluster secret", secret.trim()),
            ("a PEM key header", "PRIVATE KEY"),
        ] {
            assert!(!text.contains(needle), "{what} hold {name}:\n{text}");
        }
    }
}
