//! The recipes' pure parts, and a session's keepalives against a fake
//! node. Locks and elections run end to end in tests/tests/recipes.rs.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn kv(key: &str, create_revision: u64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: None,
        create_revision,
        mod_revision: create_revision,
        version: 1,
    }
}

#[test]
fn the_holder_is_the_oldest_key_and_each_waiter_waits_for_the_one_just_before_it() {
    let kvs = [kv("l/a", 9), kv("l/b", 4), kv("l/c", 12), kv("l/d", 7)];
    assert_eq!(first_created(&kvs).map(|k| k.key.as_str()), Some("l/b"));
    assert_eq!(predecessor(&kvs, 4), None, "the holder waits for nobody");
    assert_eq!(predecessor(&kvs, 7).map(|k| k.key.as_str()), Some("l/b"));
    assert_eq!(predecessor(&kvs, 12).map(|k| k.key.as_str()), Some("l/a"));
    assert_eq!(first_created(&[]), None);
    assert_eq!(key_of("jobs", 0x1a2b), "jobs/1a2b");
}

/// A fake node taking one connection per script, one after another, each
/// answering its lines in turn (`{req_id}` replaced) then closing; the
/// request lines of each.
fn fake_node(scripts: Vec<Vec<&'static str>>) -> (String, JoinHandle<Vec<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        scripts
            .into_iter()
            .map(|replies| {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut seen = Vec::new();
                for reply in replies {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let req_id = v["req_id"].as_u64().unwrap_or(0);
                    seen.push(line.trim_end().to_string());
                    let out = reply.replace("{req_id}", &req_id.to_string());
                    let _ = writer.write_all(format!("{out}\n").as_bytes());
                }
                seen
            })
            .collect()
    });
    (addr, handle)
}

const REGISTERED: &str =
    r#"{"msg_type":"REGISTER_CLIENT","req_id":{req_id},"payload":{"client_id":3}}"#;
const GRANTED: &str =
    r#"{"msg_type":"LEASE","req_id":{req_id},"payload":{"id":38,"ttl":2,"index":5}}"#;
const KEPT: &str = r#"{"msg_type":"LEASE","req_id":{req_id},"payload":{"id":38,"ttl":2}}"#;
const GONE: &str = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"LEASE_NOT_FOUND","message":"lease 38 not found"}}"#;

#[test]
fn a_session_keeps_its_lease_alive_until_the_cluster_says_it_is_gone() {
    let (addr, node) = fake_node(vec![
        vec![REGISTERED, GRANTED],
        // The keeper's connection: kept alive once, then gone, twice (on
        // the next connection: once more in case one node is behind).
        vec![KEPT, GONE],
        vec![GONE],
        // The revoke at close: gone already, which is as good.
        vec![GONE],
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(2), false);
    let started = Instant::now();
    let session = LeaseSession::grant(&mut client, Duration::from_secs(2)).unwrap();
    assert_eq!((session.id(), session.ttl()), (38, Duration::from_secs(2)));
    assert!(session.check().is_ok());
    let lost = session
        .wait_lost(Instant::now() + Duration::from_secs(10))
        .expect("lost");
    assert_eq!(lost.code(), "LEASE_LOST");
    assert!(lost.message().contains("lease 26 is gone"), "{lost}");
    // A keepalive every TTL/3: the first after ~667 ms, the second ~667
    // ms later.
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(session.keepalives(), 1);
    assert_eq!(session.check().unwrap_err(), lost);
    session.close().unwrap();
    let conns = node.join().unwrap();
    let grant: serde_json::Value = serde_json::from_str(&conns[0][1]).unwrap();
    assert_eq!(grant["payload"]["op"], "grant");
    assert_eq!(grant["payload"]["ttl"], 2);
    assert_eq!(grant["payload"]["client_id"], 3, "a grant is exactly-once");
    for conn in &conns[1..3] {
        let ka: serde_json::Value = serde_json::from_str(conn.last().unwrap()).unwrap();
        assert_eq!(
            ka["payload"],
            serde_json::json!({"op": "keepalive", "id": 38})
        );
    }
    let revoke: serde_json::Value = serde_json::from_str(&conns[3][0]).unwrap();
    assert_eq!(
        revoke["payload"],
        serde_json::json!({"op": "revoke", "id": 38})
    );
}
