//! The cluster client against fake nodes that answer scripted lines.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// A fake node that answers each request line with the next scripted
/// reply (`{req_id}` is replaced by the request's req_id), then closes.
fn fake_node(replies: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for reply in replies {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let req_id = v["req_id"].as_u64().unwrap_or(0);
            seen.push(line.trim_end().to_string());
            let out = reply.replace("{req_id}", &req_id.to_string());
            writer.write_all(out.as_bytes()).unwrap();
            writer.write_all(b"\n").unwrap();
        }
        seen
    });
    (addr, handle)
}

fn set(session: SessionFields) -> ClientRequest {
    ClientRequest::Set(poncho_protocol::SetRequest {
        key: "k".into(),
        value: "v".into(),
        session,
    })
}

const REGISTERED_41: &str =
    r#"{"msg_type":"REGISTER_CLIENT","req_id":{req_id},"payload":{"client_id":41}}"#;
const REGISTERED_57: &str =
    r#"{"msg_type":"REGISTER_CLIENT","req_id":{req_id},"payload":{"client_id":57}}"#;
const SESSION_EXPIRED: &str = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"SESSION_EXPIRED","message":"client session 41 is not open"}}"#;
const SET_OK: &str = r#"{"msg_type":"SET","req_id":{req_id},"payload":{"key":"k","index":7}}"#;

#[test]
fn retries_reuse_the_session_and_skip_stale_replies() {
    let (addr, node) = fake_node(vec![
        REGISTERED_41,
        r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"LEADERSHIP_LOST","message":"x"}}"#,
        // A stray reply to some other request, then the real one.
        r#"{"msg_type":"SET","req_id":999,"payload":{"key":"zz","index":1}}
{"msg_type":"SET","req_id":{req_id},"payload":{"key":"k","index":7}}"#,
        SET_OK,
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    assert_eq!(client.client_id(), None);
    let reply = client.write(set).unwrap();
    assert_eq!(reply.envelope.payload["index"], 7);
    assert_eq!(client.client_id(), Some(41));
    // The next write: the same session, the next seq.
    client.write(set).unwrap();
    let seen = node.join().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(
        seen[0].contains(r#""msg_type":"REGISTER_CLIENT""#),
        "{}",
        seen[0]
    );
    assert_eq!(seen[1], seen[2], "a retry sends the same line");
    assert!(seen[1].contains(r#""client_id":41,"seq":1"#), "{}", seen[1]);
    assert!(seen[3].contains(r#""client_id":41,"seq":2"#), "{}", seen[3]);
}

#[test]
fn a_session_gone_before_any_attempt_could_apply_is_renewed_and_the_write_resent() {
    let (addr, node) = fake_node(vec![REGISTERED_41, SESSION_EXPIRED, REGISTERED_57, SET_OK]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let reply = client.write(set).unwrap();
    assert_eq!(reply.envelope.payload["index"], 7);
    assert_eq!(client.client_id(), Some(57));
    let seen = node.join().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[1].contains(r#""client_id":41,"seq":1"#), "{}", seen[1]);
    assert!(
        seen[2].contains(r#""msg_type":"REGISTER_CLIENT""#),
        "{}",
        seen[2]
    );
    assert!(seen[3].contains(r#""client_id":57,"seq":1"#), "{}", seen[3]);
}

#[test]
fn a_session_gone_after_an_unanswered_attempt_makes_the_outcome_unknown() {
    let (addr, node) = fake_node(vec![
        REGISTERED_41,
        r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"TIMEOUT","message":"x"}}"#,
        SESSION_EXPIRED,
        REGISTERED_57,
        SET_OK,
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let err = client.write(set).unwrap_err();
    assert_eq!(err.code(), "OUTCOME_UNKNOWN");
    assert!(
        err.message().contains("outcome of this command is unknown"),
        "{}",
        err.message()
    );
    // Not resent in a new session: that could apply it twice.
    assert_eq!(client.client_id(), None);
    // The next write opens a new session.
    client.write(set).unwrap();
    assert_eq!(client.client_id(), Some(57));
    let seen = node.join().unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[1], seen[2]);
    assert!(seen[4].contains(r#""client_id":57,"seq":1"#), "{}", seen[4]);
}

#[test]
fn a_session_that_expires_again_at_once_is_reported() {
    let (addr, node) = fake_node(vec![
        REGISTERED_41,
        SESSION_EXPIRED,
        REGISTERED_57,
        SESSION_EXPIRED,
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let err = client.write(set).unwrap_err();
    assert_eq!(err.code(), "SESSION_EXPIRED");
    assert_eq!(client.client_id(), None);
    assert_eq!(node.join().unwrap().len(), 4);
}

#[test]
fn follows_not_leader_to_the_leader() {
    let (leader, leader_node) = fake_node(vec![
        r#"{"msg_type":"GET","req_id":{req_id},"payload":{"key":"k","value":"v"}}"#,
    ]);
    let redirect: &'static str = Box::leak(
        format!(
            r#"{{"msg_type":"ERROR","req_id":{{req_id}},"payload":{{"code":"NOT_LEADER","message":"m","leader_id":2,"leader_addr":"{leader}"}}}}"#
        )
        .into_boxed_str(),
    );
    let (follower, follower_node) = fake_node(vec![redirect]);
    let mut client = ClusterClient::new(vec![follower], Duration::from_secs(5), false);
    let request = ClientRequest::Get(poncho_protocol::GetRequest {
        key: "k".into(),
        stale: false,
    });
    let reply = client.request(&request, Route::Leader).unwrap();
    assert_eq!(reply.addr, leader);
    assert_eq!(reply.envelope.payload["value"], "v");
    assert_eq!(client.connected(), Some(leader.as_str()));
    assert_eq!(follower_node.join().unwrap().len(), 1);
    assert_eq!(leader_node.join().unwrap().len(), 1);
}

#[test]
fn final_errors_are_not_retried_and_garbage_is_a_protocol_error() {
    let (addr, node) = fake_node(vec![
        r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"BAD_REQUEST","message":"nope"}}"#,
        "this is not json",
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let err = client
        .request(&ClientRequest::Healthcheck, Route::Here)
        .unwrap_err();
    assert_eq!(err.code(), "BAD_REQUEST");
    let err = client
        .request(&ClientRequest::Healthcheck, Route::Here)
        .unwrap_err();
    assert_eq!(err.code(), "PROTOCOL");
    assert_eq!(node.join().unwrap().len(), 2);
}

#[test]
fn an_unreachable_cluster_fails_at_the_deadline() {
    // A port that was free a moment ago: connection refused.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut client = ClusterClient::new(vec![addr], Duration::from_millis(300), false);
    let started = Instant::now();
    let err = client
        .request(&ClientRequest::Healthcheck, Route::Here)
        .unwrap_err();
    assert_eq!(err.code(), "UNREACHABLE");
    assert!(err.message().contains("gave up"), "{}", err.message());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn find_leader_takes_the_leader_a_follower_names_or_the_leader_itself() {
    let status = |role: &str, leader: &str| -> &'static str {
        Box::leak(
            format!(
                r#"{{"msg_type":"STATUS","req_id":{{req_id}},"payload":{{"id":2,"addr":"a","role":"{role}","term":3,"leader_id":1,"leader_addr":"{leader}","commit_index":0,"last_applied":0,"last_log_index":0,"members":[]}}}}"#
            )
            .into_boxed_str(),
        )
    };
    // A node that is gone, then a follower that names the leader.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (follower, node) = fake_node(vec![status("follower", "10.0.0.1:7")]);
    let found = crate::find_leader(&[gone, follower], Duration::from_secs(2));
    assert_eq!(found.as_deref(), Some("10.0.0.1:7"));
    assert_eq!(node.join().unwrap().len(), 1);
    let (leader, node) = fake_node(vec![status("leader", "elsewhere")]);
    let found = crate::find_leader(std::slice::from_ref(&leader), Duration::from_secs(2));
    assert_eq!(found, Some(leader));
    node.join().unwrap();
}
