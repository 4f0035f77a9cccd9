//! Connection limits end to end: many idle and stalled connections do not
//! lock working clients out, a half-sent line is cut at its deadline, the
//! client limit answers past it and keeps room for peers, and the idle
//! timeout closes quiet clients.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::{Client, Cluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
const IDLE: usize = 10_000;
const WORKERS: usize = 64;
/// The start of a request, never finished.
const HALF_LINE: &[u8] = br#"{"msg_type":"SET","payload":{"key":"stalled","val"#;

/// Raises this process's soft open-file limit to its hard limit, and
/// checks that `needed` descriptors fit.
fn raise_open_file_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on one rlimit we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_cur
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "connect to {addr}: {e}"),
        }
        sleep(Duration::from_millis(10));
    }
}

/// Whether the server has closed `stream` (or sent it something): a
/// nonblocking peek that does not say "would block".
fn closed_or_spoken(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let answer = !matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    answer
}

/// Reads what the server sends until it closes `stream`: its lines.
fn read_until_closed(stream: &TcpStream, timeout: Duration) -> Vec<Value> {
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut text = String::new();
    let mut reader = BufReader::new(stream);
    match reader.read_to_string(&mut text) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("not closed within {timeout:?}: {e}; read {text:?}"),
    }
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn leader_addr(cluster: &mut Cluster) -> SocketAddr {
    let leader = cluster.wait_for_leader(ELECTION);
    cluster.addr(leader)
}

#[test]
fn ten_thousand_idle_connections_leave_working_clients_served_and_stalled_lines_are_cut() {
    raise_open_file_limit((IDLE + WORKERS + 200) as u64);
    let deadline_ms = 8_000u64;
    let mut cluster = Cluster::start_with(
        3,
        &["--partial-request-timeout-ms", &deadline_ms.to_string()],
    );
    let addr = leader_addr(&mut cluster);

    // 10,000 connections with the default limits; a third of them send
    // half a request line and stop.
    let mut idle = Vec::with_capacity(IDLE);
    let mut stalled = Vec::with_capacity(IDLE / 3);
    let mut first_stall = None;
    for i in 0..IDLE {
        let mut stream = connect(addr);
        if i % 3 == 0 {
            stream.write_all(HALF_LINE).expect("half a line");
            first_stall.get_or_insert_with(Instant::now);
            stalled.push(stream);
        } else {
            idle.push(stream);
        }
    }
    let first_stall = first_stall.expect("a stalled connection");

    // 64 working clients, all connected at once, each writing and reading.
    let barrier = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).expect("a working client connects");
                barrier.wait();
                for seq in 1..=20u64 {
                    let key = format!("w{w}/{seq}");
                    let reply = client
                        .set(&key, "x")
                        .unwrap_or_else(|e| panic!("worker {w}: SET {seq}: {e}"));
                    assert_eq!(reply["msg_type"], "SET", "worker {w}: {reply}");
                    let reply = client.get(&key).expect("GET");
                    assert_eq!(reply["payload"]["value"], "x", "worker {w}: {reply}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a working client was not served");
    }
    let still_open = idle.iter().filter(|s| !closed_or_spoken(s)).count();
    assert_eq!(still_open, idle.len(), "idle connections were closed");

    // Each stalled connection is told, then closed, at its deadline and not
    // before.
    let slack = Duration::from_secs(10);
    for (i, stream) in stalled.iter().enumerate() {
        let lines = read_until_closed(stream, Duration::from_millis(deadline_ms) + slack);
        if i == 0 {
            let waited = first_stall.elapsed();
            assert!(
                waited >= Duration::from_millis(deadline_ms),
                "cut after {waited:?}"
            );
        }
        assert_eq!(lines.len(), 1, "stalled connection {i}: {lines:?}");
        assert_eq!(lines[0]["payload"]["code"], "BAD_REQUEST", "{}", lines[0]);
        let message = lines[0]["payload"]["message"].as_str().unwrap_or("");
        assert!(message.contains("not completed within"), "{message}");
    }
    // The quiet ones were never cut (no idle timeout by default), and
    // answer.
    for (i, mut stream) in idle.iter().enumerate().step_by(IDLE / 50) {
        assert!(!closed_or_spoken(stream), "idle connection {i} closed");
        stream
            .write_all(b"{\"msg_type\":\"HEALTHCHECK\"}\n")
            .expect("write");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).expect("reply");
        assert!(line.contains("HEALTHCHECK"), "idle connection {i}: {line}");
    }
}

/// A follower's acknowledged progress, as the leader's STATUS shows it.
fn match_index(control: &mut Client, follower: u64) -> u64 {
    let status = control
        .request(&json!({"msg_type": "STATUS"}))
        .expect("STATUS");
    status["payload"]["followers"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == follower))
        .and_then(|f| f["match_index"].as_u64())
        .unwrap_or(0)
}

/// Restarts `follower`, writes at the leader through `control`, and waits
/// until the leader has the follower's acknowledgement of that write: the
/// follower's connection to the leader was accepted and known for a peer's.
fn follower_rejoins(cluster: &mut Cluster, control: &mut Client, follower: u64, key: &str) {
    cluster.restart(follower);
    let reply = control.set(key, "v").expect("SET");
    let index = reply["payload"]["index"].as_u64().expect("an index");
    let deadline = Instant::now() + Duration::from_secs(15);
    while match_index(control, follower) < index {
        assert!(
            Instant::now() < deadline,
            "node {follower} never acknowledged index {index}\n{}",
            cluster.all_logs()
        );
        sleep(Duration::from_millis(50));
    }
}

/// A client that got a place: its HEALTHCHECK is answered. (A connection
/// the test closed a moment ago may still hold one; then try again.)
fn client_with_a_place(addr: SocketAddr) -> Client {
    for _ in 0..50 {
        let mut client = Client::connect(addr).expect("connect");
        let reply = client
            .request(&json!({"msg_type": "HEALTHCHECK"}))
            .expect("an answer");
        if reply["msg_type"] == "HEALTHCHECK" {
            return client;
        }
        assert_eq!(reply["payload"]["code"], "OVERLOADED", "{reply}");
        sleep(Duration::from_millis(50));
    }
    panic!("no place for a client at {addr}");
}

#[test]
fn past_max_clients_a_client_is_told_and_peers_still_get_in() {
    let max = 20;
    let mut cluster = Cluster::start_with(3, &["--max-clients", &max.to_string()]);
    let leader = cluster.wait_for_leader(ELECTION);
    let addr = cluster.addr(leader);
    let follower = if leader == 1 { 2 } else { 1 };
    let mut clients: Vec<Client> = (0..max).map(|_| client_with_a_place(addr)).collect();
    let control = &mut clients[0];
    // The followers' connections have shown they are peers'.
    let reply = control.set("warm", "up").expect("SET");
    assert_eq!(reply["msg_type"], "SET", "{reply}");

    // One more client: told, then closed.
    let mut extra = connect(addr);
    extra
        .write_all(b"{\"msg_type\":\"HEALTHCHECK\"}\n")
        .expect("write");
    let lines = read_until_closed(&extra, Duration::from_secs(10));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["payload"]["code"], "OVERLOADED", "{}", lines[0]);
    let message = lines[0]["payload"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("max number of clients reached ({max})")),
        "{message}"
    );

    // Every client's place is taken, and a peer still gets in.
    follower_rejoins(&mut cluster, control, follower, "after-restart");

    // Quiet connections fill the peers' room too: the next is refused as
    // it is accepted, and they are closed once their probation ends, so a
    // peer gets in again.
    let started = Instant::now();
    let mut squatters = Vec::new();
    let refused = loop {
        let stream = connect(addr);
        sleep(Duration::from_millis(20));
        if closed_or_spoken(&stream) {
            break stream;
        }
        squatters.push(stream);
        assert!(squatters.len() <= 64, "no refusal past the peers' room");
    };
    let lines = read_until_closed(&refused, Duration::from_secs(10));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["payload"]["code"], "OVERLOADED", "{}", lines[0]);
    for stream in &squatters {
        let lines = read_until_closed(stream, Duration::from_secs(20));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["payload"]["code"], "OVERLOADED", "{}", lines[0]);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "probation is 5 s"
    );
    follower_rejoins(&mut cluster, control, follower, "after-squatters");
    // The clients that had a place still have it.
    for client in &mut clients {
        let reply = client
            .request(&json!({"msg_type": "HEALTHCHECK"}))
            .expect("served");
        assert_eq!(reply["msg_type"], "HEALTHCHECK", "{reply}");
    }
}

#[test]
fn the_idle_timeout_closes_a_quiet_client_and_spares_a_busy_one() {
    // Pings every 200 ms against a 2 s timeout: a stall of well over a
    // second on a loaded machine is needed to cut the busy client.
    let mut cluster = Cluster::start_with(1, &["--idle-timeout-ms", "2000"]);
    let addr = leader_addr(&mut cluster);
    let quiet = connect(addr);
    let opened = Instant::now();
    let mut busy = Client::connect(addr).expect("connect");
    while opened.elapsed() < Duration::from_millis(4500) {
        let reply = busy
            .request(&json!({"msg_type": "HEALTHCHECK"}))
            .expect("the busy client is served");
        assert_eq!(reply["msg_type"], "HEALTHCHECK", "{reply}");
        sleep(Duration::from_millis(200));
    }
    // Closed without a word: nothing was asked.
    assert!(read_until_closed(&quiet, Duration::from_secs(10)).is_empty());
}
