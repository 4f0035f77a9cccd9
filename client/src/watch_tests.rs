//! The watcher against fake nodes that play scripted connections: events,
//! lost connections, cancellations, refusals, silence.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

use serde_json::Value;

/// What a fake node does next on a connection.
#[derive(Clone)]
enum Step {
    /// Reads a request line and answers it (`{req_id}` replaced by its
    /// req_id; several lines may follow, the first answering it).
    Reply(String),
    /// Sends lines without reading anything.
    Push(String),
    /// Closes the connection now.
    Close,
    /// Reads (and records) whatever comes without answering, until the
    /// client closes.
    Silent,
}

use Step::{Close, Push, Reply, Silent};

fn reply(s: &str) -> Step {
    Reply(s.to_string())
}

fn push(s: &str) -> Step {
    Push(s.to_string())
}

/// A fake node on loopback taking one connection per script, one after
/// another; the request lines of each. Past its scripts it refuses
/// connections (its listener is gone).
fn fake_node(scripts: Vec<Vec<Step>>) -> (String, JoinHandle<Vec<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        scripts
            .into_iter()
            .map(|steps| {
                let (stream, _) = listener.accept().unwrap();
                play(stream, steps)
            })
            .collect()
    });
    (addr, handle)
}

fn play(stream: TcpStream, steps: Vec<Step>) -> Vec<Value> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut seen = Vec::new();
    let mut read = |seen: &mut Vec<Value>| -> Option<u64> {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        let req_id = v["req_id"].as_u64().unwrap_or(0);
        seen.push(v);
        Some(req_id)
    };
    for step in steps {
        match step {
            Reply(lines) => {
                let Some(req_id) = read(&mut seen) else {
                    return seen;
                };
                let out = lines.replace("{req_id}", &req_id.to_string());
                let _ = writer.write_all(format!("{out}\n").as_bytes());
            }
            Push(lines) => {
                let _ = writer.write_all(format!("{lines}\n").as_bytes());
            }
            Close => return seen,
            Silent => {
                while read(&mut seen).is_some() {}
                return seen;
            }
        }
    }
    // The script is over: the connection stays until the client closes it.
    while read(&mut seen).is_some() {}
    seen
}

fn created(id: u64, revision: u64) -> String {
    format!(
        r#"{{"msg_type":"WATCH","req_id":{{req_id}},"payload":{{"watch_id":{id},"created":true,"revision":{revision}}}}}"#
    )
}

/// A put of `key` = `value` at `revision`, as watch `id`'s news.
fn put(id: u64, revision: u64, key: &str, value: &str) -> String {
    format!(
        r#"{{"msg_type":"WATCH","payload":{{"watch_id":{id},"revision":{revision},"events":[{{"type":"put","kv":{{"key":"{key}","value":"{value}","create_revision":{revision},"mod_revision":{revision},"version":1}}}}]}}}}"#
    )
}

fn canceled(id: u64, revision: u64, code: &str) -> String {
    format!(
        r#"{{"msg_type":"WATCH","payload":{{"watch_id":{id},"canceled":true,"revision":{revision},"error":{{"code":"{code}","message":"m","compact_revision":3}}}}}}"#
    )
}

fn error(code: &str) -> String {
    format!(
        r#"{{"msg_type":"ERROR","req_id":{{req_id}},"payload":{{"code":"{code}","message":"no","compact_revision":7}}}}"#
    )
}

fn prefix(key: &str) -> WatchCreate {
    WatchCreate {
        key: key.into(),
        prefix: true,
        ..WatchCreate::default()
    }
}

fn watcher(addrs: &[&str], create: WatchCreate) -> Watcher {
    Watcher::new(addrs.iter().map(|a| a.to_string()).collect(), create)
        .with_attempt_timeout(Duration::from_secs(2))
        .with_resume_timeout(Duration::from_secs(2))
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// The revisions and keys of the changes `w` delivers, until `n` or a
/// quiet moment.
fn changes(w: &mut Watcher, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match w.next(soon()) {
            Ok(Some(WatchEvent::Changes { revision, events })) => {
                for e in events {
                    got.push((revision, e.kv.key));
                }
            }
            Ok(Some(other)) => panic!("not changes: {other:?}"),
            Ok(None) => break,
            Err(e) => panic!("after {got:?}: {e}"),
        }
    }
    got
}

fn create_of(request: &Value) -> &Value {
    assert_eq!(request["msg_type"], "WATCH", "{request}");
    assert_eq!(request["payload"]["op"], "create", "{request}");
    &request["payload"]
}

fn revs(got: &[(u64, String)]) -> Vec<u64> {
    got.iter().map(|(r, _)| *r).collect()
}

#[test]
fn a_lost_connection_resumes_on_the_next_node_without_a_gap_or_a_duplicate() {
    let (a, node_a) = fake_node(vec![vec![
        Reply(format!(
            "{}\n{}\n{}",
            created(1, 10),
            put(1, 11, "k/1", "x"),
            put(1, 12, "k/2", "y")
        )),
        Close,
    ]]);
    // B resends 12 (a duplicate), and then what came after.
    let (b, node_b) = fake_node(vec![vec![Reply(format!(
        "{}\n{}\n{}",
        created(4, 11),
        put(4, 12, "k/2", "y"),
        put(4, 14, "k/3", "z")
    ))]]);
    let mut w = watcher(&[&a, &b], prefix("k/"));
    let got = changes(&mut w, 3);
    assert_eq!(revs(&got), [11, 12, 14], "{got:?}");
    assert_eq!(w.revision(), Some(14));
    assert_eq!((w.resumes(), w.skipped()), (1, 1));
    assert_eq!(w.connected(), Some(b.as_str()));
    assert_eq!(w.watch_id(), Some(4));
    // Nothing more: the deadline passes.
    assert_eq!(
        w.next(Instant::now() + Duration::from_millis(100)),
        Ok(None)
    );
    drop(w);
    let first = &node_a.join().unwrap()[0][0];
    let c = create_of(first);
    assert_eq!(
        (&c["key"], &c["prefix"]),
        (&Value::from("k/"), &Value::from(true))
    );
    assert!(c.get("start_revision").is_none(), "{first}");
    let resumed = &node_b.join().unwrap()[0][0];
    assert_eq!(create_of(resumed)["start_revision"], 13, "{resumed}");
}

#[test]
fn slow_watcher_resumes_after_the_last_revision_delivered_not_the_cancellations() {
    // The cancellation names the node's revision (50), not the watch's.
    let (a, node_a) = fake_node(vec![vec![
        Reply(format!("{}\n{}", created(1, 20), put(1, 21, "k", "1"))),
        push(&canceled(1, 50, "SLOW_WATCHER")),
    ]]);
    let (b, node_b) = fake_node(vec![vec![Reply(format!(
        "{}\n{}",
        created(1, 50),
        put(1, 30, "k", "2")
    ))]]);
    let mut w = watcher(
        &[&a, &b],
        WatchCreate {
            key: "k".into(),
            start_revision: Some(21),
            prev_kv: true,
            ..WatchCreate::default()
        },
    );
    assert_eq!(revs(&changes(&mut w, 2)), [21, 30]);
    drop(w);
    let first = create_of(&node_a.join().unwrap()[0][0]).clone();
    assert_eq!(
        (&first["start_revision"], &first["prev_kv"]),
        (&Value::from(21), &Value::from(true))
    );
    let again = create_of(&node_b.join().unwrap()[0][0]).clone();
    assert_eq!(
        (&again["start_revision"], &again["prev_kv"]),
        (&Value::from(22), &Value::from(true))
    );
}

#[test]
fn a_watch_from_a_revision_resumes_from_it_when_nothing_came_yet() {
    let (a, node_a) = fake_node(vec![vec![reply(&created(1, 5)), Close]]);
    let (b, node_b) = fake_node(vec![vec![reply(&created(1, 5))]]);
    let mut w = watcher(
        &[&a, &b],
        WatchCreate {
            key: "k".into(),
            start_revision: Some(3),
            ..WatchCreate::default()
        },
    );
    assert_eq!(w.revision(), Some(2));
    assert_eq!(
        w.next(Instant::now() + Duration::from_millis(300)),
        Ok(None)
    );
    assert_eq!(w.connected(), Some(b.as_str()));
    drop(w);
    assert_eq!(
        create_of(&node_a.join().unwrap()[0][0])["start_revision"],
        3
    );
    assert_eq!(
        create_of(&node_b.join().unwrap()[0][0])["start_revision"],
        3
    );
}

#[test]
fn compacted_is_tried_on_every_node_then_returned() {
    // A loses the connection; B's history is too short, and so is A's
    // when asked again: no node can resume without a gap.
    let (a, node_a) = fake_node(vec![
        vec![
            Reply(format!("{}\n{}", created(1, 10), put(1, 11, "k", "1"))),
            Close,
        ],
        vec![reply(&error("COMPACTED"))],
    ]);
    let (b, node_b) = fake_node(vec![vec![reply(&error("COMPACTED"))]]);
    let mut w = watcher(
        &[&a, &b],
        WatchCreate {
            key: "k".into(),
            ..WatchCreate::default()
        },
    );
    assert_eq!(revs(&changes(&mut w, 1)), [11]);
    let started = Instant::now();
    let e = w.next(soon()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
    let ClientError::Server(reply) = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (reply.code, reply.compact_revision),
        (ErrorCode::Compacted, Some(7))
    );
    // Final: the same again, nothing sent.
    assert_eq!(w.next(soon()), Err(e));
    let mut resumed = node_a.join().unwrap();
    assert!(create_of(&resumed.remove(0)[0])
        .get("start_revision")
        .is_none());
    resumed.extend(node_b.join().unwrap());
    assert_eq!(resumed.len(), 2);
    for conn in resumed {
        assert_eq!(create_of(&conn[0])["start_revision"], 12);
    }
}

#[test]
fn a_compacted_cancellation_resumes_elsewhere_if_another_node_holds_the_revision() {
    let (a, _node_a) = fake_node(vec![vec![
        Reply(format!("{}\n{}", created(1, 10), put(1, 11, "k", "1"))),
        push(&canceled(1, 40, "COMPACTED")),
    ]]);
    let (b, node_b) = fake_node(vec![vec![Reply(format!(
        "{}\n{}",
        created(1, 40),
        put(1, 12, "k", "2")
    ))]]);
    let mut w = watcher(
        &[&a, &b],
        WatchCreate {
            key: "k".into(),
            ..WatchCreate::default()
        },
    );
    assert_eq!(revs(&changes(&mut w, 2)), [11, 12]);
    drop(w);
    assert_eq!(
        create_of(&node_b.join().unwrap()[0][0])["start_revision"],
        12
    );
}

#[test]
fn a_list_watch_lists_then_resumes_after_the_listing_or_lists_again() {
    let page = |id: u64, rev: u64, key: &str, more: bool| {
        format!(
            r#"{{"msg_type":"WATCH","payload":{{"watch_id":{id},"revision":{rev},"kvs":[{{"key":"{key}","value":"v","create_revision":2,"mod_revision":2,"version":1}}]{}}}}}"#,
            if more { r#","more":true"# } else { "" }
        )
    };
    // A dies mid-listing; B lists again (at its revision), then dies;
    // A resumes after B's listing.
    let (a, node_a) = fake_node(vec![
        vec![
            Reply(format!("{}\n{}", created(1, 8), page(1, 8, "a", true))),
            Close,
        ],
        vec![Reply(format!(
            "{}\n{}",
            created(1, 9),
            put(1, 10, "c", "v")
        ))],
    ]);
    let (b, node_b) = fake_node(vec![vec![
        Reply(format!(
            "{}\n{}\n{}",
            created(1, 9),
            page(1, 9, "a", true),
            page(1, 9, "b", false)
        )),
        Close,
    ]]);
    let mut w = watcher(
        &[&a, &b],
        WatchCreate {
            key: "".into(),
            prefix: true,
            list: true,
            ..WatchCreate::default()
        },
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(w.next(soon()).unwrap().unwrap());
    }
    let listed = |revision, key: &str, more, restarted| WatchEvent::Listed {
        revision,
        kvs: vec![KeyValue {
            key: key.into(),
            value: Some("v".into()),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
        }],
        more,
        restarted,
    };
    assert_eq!(got[0], listed(8, "a", true, false));
    assert_eq!(got[1], listed(9, "a", true, true));
    assert_eq!(got[2], listed(9, "b", false, false));
    assert!(
        matches!(&got[3], WatchEvent::Changes { revision: 10, .. }),
        "{got:?}"
    );
    drop(w);
    let a_conns = node_a.join().unwrap();
    assert_eq!(create_of(&a_conns[0][0])["list"], true);
    let after = create_of(&a_conns[1][0]).clone();
    assert_eq!(after["start_revision"], 10, "{after}");
    assert!(after.get("list").is_none(), "{after}");
    let b_create = create_of(&node_b.join().unwrap()[0][0]).clone();
    assert_eq!(b_create["list"], true, "{b_create}");
    assert!(b_create.get("start_revision").is_none(), "{b_create}");
}

#[test]
fn refusals_are_final_and_other_nodes_are_not_asked() {
    for code in ["PERMISSION_DENIED", "BAD_REQUEST", "UNAUTHENTICATED"] {
        let (a, node_a) = fake_node(vec![vec![reply(&error(code))]]);
        let mut w = watcher(&[&a, "127.0.0.1:1"], prefix("k"));
        let e = w.next(soon()).unwrap_err();
        assert_eq!(e.code(), code);
        assert_eq!(w.next(soon()), Err(e));
        node_a.join().unwrap();
    }
}

#[test]
fn too_many_watches_asks_the_next_node() {
    let (a, _node_a) = fake_node(vec![vec![reply(&error("TOO_MANY_WATCHES"))]]);
    let (b, _node_b) = fake_node(vec![vec![Reply(format!(
        "{}\n{}",
        created(2, 3),
        put(2, 4, "k", "v")
    ))]]);
    let mut w = watcher(&[&a, &b], prefix("k"));
    assert_eq!(revs(&changes(&mut w, 1)), [4]);
}

#[test]
fn with_no_node_it_gives_up_at_the_resume_timeout_and_can_try_again() {
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut w = Watcher::new(vec![gone], prefix("k"))
        .with_attempt_timeout(Duration::from_millis(200))
        .with_resume_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = w.next(soon()).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), "UNREACHABLE", "{e}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Not final: a short deadline returns with nothing, later calls retry.
    assert_eq!(w.next(Instant::now() + Duration::from_millis(50)), Ok(None));
    assert_eq!(w.next(soon()).unwrap_err().code(), "UNREACHABLE");
}

#[test]
fn a_silent_node_is_probed_and_left_for_the_next() {
    // A creates the watch and then answers nothing, its progress probe
    // neither.
    let (a, node_a) = fake_node(vec![vec![reply(&created(1, 10)), Silent]]);
    let (b, _node_b) = fake_node(vec![vec![Reply(format!(
        "{}\n{}",
        created(1, 10),
        put(1, 11, "k", "v")
    ))]]);
    let mut w = watcher(&[&a, &b], prefix("k"))
        .with_attempt_timeout(Duration::from_millis(300))
        .with_keepalive(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(revs(&changes(&mut w, 1)), [11]);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(w);
    let lines = &node_a.join().unwrap()[0];
    assert_eq!(lines[1]["payload"]["op"], "progress", "{lines:?}");
}

#[test]
fn a_probe_answered_keeps_the_watch_and_progress_is_delivered() {
    let progress =
        r#"{"msg_type":"WATCH","req_id":{req_id},"payload":{"revision":12}}"#.to_string();
    let notify = r#"{"msg_type":"WATCH","payload":{"watch_id":1,"revision":13}}"#;
    let (a, node_a) = fake_node(vec![vec![
        reply(&created(1, 10)),
        Reply(format!("{progress}\n{notify}")),
    ]]);
    let mut w = watcher(&[&a], prefix("k")).with_keepalive(Duration::from_millis(100));
    assert_eq!(
        w.next(soon()),
        Ok(Some(WatchEvent::Progress { revision: 13 }))
    );
    assert_eq!(w.revision(), Some(13));
    assert_eq!(w.resumes(), 0);
    drop(w);
    node_a.join().unwrap();
}

#[test]
fn cancel_asks_the_node_and_an_interrupt_returns_at_once() {
    let ok = r#"{"msg_type":"WATCH","req_id":{req_id},"payload":{"watch_id":3,"canceled":true,"revision":9}}"#;
    let (a, node_a) = fake_node(vec![vec![reply(&created(3, 9)), reply(ok)]]);
    let flag = Arc::new(AtomicBool::new(false));
    let mut w = watcher(&[&a], prefix("k"));
    w.set_interrupt(Arc::clone(&flag));
    assert_eq!(w.start(soon()), Ok(true));
    flag.store(true, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(w.next(soon()), Err(ClientError::Interrupted));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        w.next(Instant::now() + Duration::from_millis(100)),
        Ok(None)
    );
    w.cancel().unwrap();
    let lines = &node_a.join().unwrap()[0];
    assert_eq!(
        lines[1]["payload"],
        serde_json::json!({"op": "cancel", "watch_id": 3})
    );
}

#[test]
fn a_client_s_watcher_starts_at_its_node_with_its_credentials() {
    let login = r#"{"msg_type":"AUTHENTICATE","req_id":{req_id},"payload":{"user":"alice"}}"#;
    let (a, node_a) = fake_node(vec![vec![
        reply(login),
        Reply(format!("{}\n{}", created(1, 1), put(1, 2, "k", "v"))),
    ]]);
    let client = ClusterClient::new(
        vec!["127.0.0.1:1".into(), a.clone()],
        Duration::from_secs(2),
        false,
    )
    .with_credentials(Some(Credentials::new("alice", "pw")));
    let mut w = Watcher::for_client(&client, prefix("k"));
    assert_eq!(revs(&changes(&mut w, 1)), [2]);
    drop(w);
    let lines = &node_a.join().unwrap()[0];
    assert_eq!(lines[0]["msg_type"], "AUTHENTICATE");
    assert_eq!(lines[0]["payload"]["user"], "alice");
    create_of(&lines[1]);
}
