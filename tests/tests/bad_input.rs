//! Bad input never takes a node down or slows other clients. Each case
//! checks the misbehaving connection's treatment and then that a separate,
//! well-behaved client is still served promptly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::json;

fn single_node() -> Cluster {
    let mut cluster = Cluster::start_with(1, &["--max-line-bytes", "65536"]);
    cluster.wait_for_leader(Duration::from_secs(10));
    cluster
}

/// A fresh client can write and read within a second.
fn assert_healthy(cluster: &mut Cluster) {
    assert!(cluster.is_running(1), "the node died:\n{}", cluster.log(1));
    let started = Instant::now();
    let mut c = cluster.client(1);
    assert_eq!(c.set("health", "ok").unwrap()["msg_type"], "SET");
    assert_eq!(c.get("health").unwrap()["payload"]["value"], "ok");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served in {:?}",
        started.elapsed()
    );
}

fn error_code(reply: &serde_json::Value) -> String {
    reply["payload"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn garbage_bytes_and_invalid_utf8_get_bad_request_and_the_connection_stays_open() {
    let mut cluster = single_node();
    let mut c = cluster.client(1);
    for garbage in [
        &b"\x00\x01\x02garbage\n"[..],
        b"\xff\xfe\xfd\n",
        b"{\"msg_type\":\"GET\xc3\x28\"}\n",
        b"[]\n",
        b"42\n",
    ] {
        c.send_raw(garbage).unwrap();
        let reply = c.read_reply().unwrap();
        assert_eq!(error_code(&reply), "BAD_REQUEST", "{reply}");
    }
    let reply = c
        .request(&json!({"msg_type": "NOPE", "req_id": 5}))
        .unwrap();
    assert_eq!(error_code(&reply), "BAD_REQUEST");
    assert_eq!(
        reply["req_id"], 5,
        "the req_id is echoed when it can be read"
    );
    let reply = c
        .request(&json!({"msg_type": "SET", "payload": {"key": 1, "value": []}}))
        .unwrap();
    assert_eq!(error_code(&reply), "BAD_REQUEST");
    assert_eq!(
        c.request(&json!({"msg_type": "HEALTHCHECK"})).unwrap()["payload"],
        "ok",
        "still open"
    );
    assert_healthy(&mut cluster);
}

#[test]
fn a_line_over_the_limit_gets_message_too_large_then_the_connection_closes() {
    let mut cluster = single_node();
    let mut c = cluster.client(1);
    let huge = vec![b'x'; 200_000];
    let _ = c.send_raw(&huge);
    let reply = c.read_reply().unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE", "{reply}");
    assert!(
        c.read_reply().is_err(),
        "the connection is closed after the reply"
    );
    // Requests before the oversized line are still answered, in order.
    let mut c = cluster.client(1);
    let mut batch =
        b"{\"msg_type\":\"SET\",\"req_id\":1,\"payload\":{\"key\":\"k\",\"value\":\"v\"}}\n"
            .to_vec();
    batch.extend(vec![b'y'; 100_000]);
    batch.push(b'\n');
    let _ = c.send_raw(&batch);
    let first = c.read_reply().unwrap();
    assert_eq!(first["msg_type"], "SET", "{first}");
    assert_eq!(first["req_id"], 1);
    assert_eq!(error_code(&c.read_reply().unwrap()), "MESSAGE_TOO_LARGE");
    assert!(c.read_reply().is_err());
    assert_healthy(&mut cluster);
}

#[test]
fn an_oversized_line_completed_after_every_earlier_reply_still_gets_its_error() {
    // The error for a line that grows past the limit once nothing else is
    // pending on the connection must go out at once, not wait for the next
    // event on the connection (it once waited for the client to hang up).
    let mut cluster = single_node();
    let mut c = cluster.client(1);
    let set = b"{\"msg_type\":\"SET\",\"req_id\":1,\"payload\":{\"key\":\"k\",\"value\":\"v\"}}\n";
    c.send_raw(set).unwrap();
    c.send_raw(&[b'y'; 30_000]).unwrap();
    let first = c.read_reply().unwrap();
    assert_eq!(first["msg_type"], "SET", "{first}");
    // The SET is answered: nothing is pending when the line passes 65,536.
    let _ = c.send_raw(&[b'y'; 70_000]);
    let started = Instant::now();
    let reply = c.read_reply().unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        c.read_reply().is_err(),
        "the connection is closed after the reply"
    );
    assert_healthy(&mut cluster);
}

#[test]
fn a_client_that_half_closes_gets_every_reply_then_the_end_of_the_stream() {
    // Requests and the FIN often arrive in one readable event; the node must
    // read on to the FIN there, answer, and close, not wait for more events.
    let mut cluster = single_node();
    let addr = cluster.addr(1);
    for i in 0..50 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let set =
            format!("{{\"msg_type\":\"SET\",\"payload\":{{\"key\":\"h{i}\",\"value\":\"v\"}}}}\n");
        s.write_all(format!("{set}{{\"msg_type\":\"HEALTHCHECK\"}}\n").as_bytes())
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut replies = String::new();
        s.read_to_string(&mut replies).unwrap();
        let types: Vec<String> = replies
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["msg_type"].to_string())
            .collect();
        assert_eq!(
            types,
            ["\"SET\"", "\"HEALTHCHECK\""],
            "connection {i}: {replies}"
        );
    }
    assert_healthy(&mut cluster);
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let mut cluster = single_node();
    let mut c = cluster.client(1);
    let deep = format!(
        "{{\"msg_type\":\"GET\",\"payload\":{}{}}}\n",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    c.send_raw(deep.as_bytes()).unwrap();
    assert_eq!(error_code(&c.read_reply().unwrap()), "BAD_REQUEST");
    assert_healthy(&mut cluster);
}

#[test]
fn silent_clients_abrupt_disconnects_and_thousands_of_connections_do_not_hurt() {
    let mut cluster = single_node();
    let addr = cluster.addr(1);
    // Connect and never send.
    let silent: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Disconnect mid-line, and mid-pipeline with replies pending.
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"{\"msg_type\":\"SET\",\"payload\":{\"key\":\"half")
            .unwrap();
        drop(s);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"{\"msg_type\":\"SET\",\"payload\":{\"key\":\"a\",\"value\":\"b\"}}\n")
            .unwrap();
        drop(s);
    }
    assert_healthy(&mut cluster);
    // Two thousand connections at once, each answered.
    let mut many: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for s in &mut many {
        s.write_all(b"{\"msg_type\":\"HEALTHCHECK\"}\n").unwrap();
    }
    for s in &mut many {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"{\"msg_type\":\"HEALTHCHECK\",\"payload\":\"ok\"}\n"
        );
    }
    drop(many);
    drop(silent);
    assert_healthy(&mut cluster);
}

#[test]
fn a_client_that_never_reads_its_replies_does_not_slow_others() {
    let mut cluster = single_node();
    let addr = cluster.addr(1);
    // Pipeline far more GET replies than socket buffers hold, never reading.
    let mut hog = TcpStream::connect(addr).unwrap();
    let line = format!(
        "{{\"msg_type\":\"GET\",\"payload\":{{\"key\":\"{}\",\"stale\":true}}}}\n",
        "k".repeat(100)
    );
    let writer = std::thread::spawn(move || {
        let chunk = line.repeat(1000);
        let deadline = Instant::now() + Duration::from_secs(4);
        hog.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while Instant::now() < deadline {
            if hog.write_all(chunk.as_bytes()).is_err() {
                std::thread::sleep(Duration::from_millis(20)); // the node stopped reading: backpressure
            }
        }
        hog
    });
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        assert_healthy(&mut cluster);
    }
    let hog = writer.join().unwrap();
    drop(hog);
    assert_healthy(&mut cluster);
    let mut c = Client::connect(addr).unwrap();
    assert_eq!(
        c.request(&json!({"msg_type": "HEALTHCHECK"})).unwrap()["payload"],
        "ok"
    );
}
