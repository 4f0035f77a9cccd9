//! The cluster client against fake nodes that answer scripted lines.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// A fake node that answers each request line with the next scripted
/// reply (`{req_id}` is replaced by the request's req_id), then closes.
fn fake_node(replies: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || serve(&listener, replies));
    (addr, handle)
}

/// A fake node that takes one connection per script, one after another,
/// each answered as [`fake_node`] answers its one; the lines of each.
fn fake_node_conns(
    scripts: Vec<Vec<&'static str>>,
) -> (String, std::thread::JoinHandle<Vec<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        scripts
            .into_iter()
            .map(|replies| serve(&listener, replies))
            .collect()
    });
    (addr, handle)
}

/// Accepts one connection and answers it with `replies`, then closes it.
fn serve(listener: &TcpListener, replies: Vec<&'static str>) -> Vec<String> {
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
}

fn set(session: SessionFields) -> ClientRequest {
    ClientRequest::Set(poncho_protocol::SetRequest {
        key: "k".into(),
        value: "v".into(),
        lease: None,
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

const LOGGED_IN: &str =
    r#"{"msg_type":"AUTHENTICATE","req_id":{req_id},"payload":{"user":"alice"}}"#;
const WRONG_PASSWORD: &str = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"UNAUTHENTICATED","message":"wrong user name or password"}}"#;

fn alice() -> Option<Credentials> {
    Some(Credentials::new("alice", "pw-secret"))
}

/// A NOT_LEADER reply that names `leader`.
fn redirect_to(leader: &str) -> &'static str {
    Box::leak(
        format!(
            r#"{{"msg_type":"ERROR","req_id":{{req_id}},"payload":{{"code":"NOT_LEADER","message":"m","leader_id":2,"leader_addr":"{leader}"}}}}"#
        )
        .into_boxed_str(),
    )
}

fn assert_msg_type(line: &str, msg_type: &str) {
    assert!(
        line.contains(&format!(r#""msg_type":"{msg_type}""#)),
        "{msg_type} expected: {line}"
    );
}

/// The line logs in as alice, with the password on the wire.
fn assert_login(line: &str) {
    assert_msg_type(line, "AUTHENTICATE");
    assert!(
        line.contains(r#""user":"alice","password":"pw-secret""#),
        "{line}"
    );
}

/// The line is the first write in session `client_id`.
fn assert_first_write(line: &str, client_id: u64) {
    let fields = format!(r#""client_id":{client_id},"seq":1"#);
    assert!(line.contains(&fields), "{line}");
}

#[test]
fn every_new_connection_logs_in_first_even_after_a_redirect() {
    let (leader, leader_node) = fake_node(vec![LOGGED_IN, REGISTERED_41, SET_OK]);
    let (follower, follower_node) = fake_node(vec![LOGGED_IN, redirect_to(&leader)]);
    let mut client =
        ClusterClient::new(vec![follower], Duration::from_secs(5), false).with_credentials(alice());
    client.write(set).unwrap();
    assert_eq!(client.connected(), Some(leader.as_str()));
    let seen = follower_node.join().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_login(&seen[0]);
    assert_msg_type(&seen[1], "REGISTER_CLIENT");
    let seen = leader_node.join().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_login(&seen[0]);
    assert_msg_type(&seen[1], "REGISTER_CLIENT");
    assert_first_write(&seen[2], 41);
}

#[test]
fn a_connection_opened_again_after_a_loss_logs_in_first() {
    // The first connection closes after the session opens: the write is
    // sent again on a new connection, which logs in before it.
    let (addr, node) = fake_node_conns(vec![
        vec![LOGGED_IN, REGISTERED_41],
        vec![LOGGED_IN, SET_OK],
    ]);
    let mut client =
        ClusterClient::new(vec![addr], Duration::from_secs(5), false).with_credentials(alice());
    client.write(set).unwrap();
    let conns = node.join().unwrap();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_login(&conns[0][0]);
    assert_msg_type(&conns[0][1], "REGISTER_CLIENT");
    assert_eq!(conns[1].len(), 2, "{conns:?}");
    assert_login(&conns[1][0]);
    assert_first_write(&conns[1][1], 41);
}

#[test]
fn connect_to_logs_the_new_connection_in() {
    let (addr, node) = fake_node(vec![
        LOGGED_IN,
        r#"{"msg_type":"GET","req_id":{req_id},"payload":{"key":"k","value":"v"}}"#,
    ]);
    let mut client = ClusterClient::new(vec!["127.0.0.1:1".into()], Duration::from_secs(5), false)
        .with_credentials(alice());
    client.connect_to(&addr).unwrap();
    let get = ClientRequest::Get(poncho_protocol::GetRequest {
        key: "k".into(),
        stale: false,
    });
    let reply = client.request(&get, Route::Here).unwrap();
    assert_eq!(reply.envelope.msg_type, "GET", "{}", reply.line);
    let seen = node.join().unwrap();
    assert_login(&seen[0]);
    assert_msg_type(&seen[1], "GET");
}

#[test]
fn a_refused_login_is_final_and_says_why() {
    let (addr, node) = fake_node(vec![WRONG_PASSWORD]);
    // A second node that must not be asked.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    let mut client = ClusterClient::new(vec![addr, other_addr], Duration::from_secs(5), false)
        .with_credentials(alice());
    let started = Instant::now();
    let err = client.write(set).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "retried");
    assert!(matches!(err, ClientError::Login(_)), "{err:?}");
    assert_eq!(err.code(), "UNAUTHENTICATED");
    assert!(
        err.message().contains("wrong user name or password") && err.message().contains("alice"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("pw-secret"), "{}", err.message());
    assert_eq!(node.join().unwrap().len(), 1, "nothing after the login");
    // The next request fails the same way, without trying the password again.
    let again = client
        .request(&ClientRequest::Status, Route::Here)
        .unwrap_err();
    assert_eq!(again, err);
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "another node was tried");
}

#[test]
fn permission_denied_and_unauthenticated_are_final() {
    let (addr, node) = fake_node(vec![
        r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"PERMISSION_DENIED","message":"user alice may not write k"}}"#,
        r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"UNAUTHENTICATED","message":"log in first"}}"#,
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let get = ClientRequest::Get(poncho_protocol::GetRequest {
        key: "k".into(),
        stale: false,
    });
    let started = Instant::now();
    let err = client.request(&get, Route::Leader).unwrap_err();
    assert_eq!(err.code(), "PERMISSION_DENIED");
    assert_eq!(err.message(), "user alice may not write k");
    let err = client.request(&get, Route::Leader).unwrap_err();
    assert_eq!(err.code(), "UNAUTHENTICATED");
    assert!(started.elapsed() < Duration::from_secs(2), "retried");
    assert_eq!(node.join().unwrap().len(), 2);
}

#[test]
fn login_opens_a_logged_in_connection_and_a_new_session() {
    let (addr, node) = fake_node_conns(vec![
        vec![REGISTERED_41, SET_OK],
        vec![WRONG_PASSWORD],
        vec![LOGGED_IN, REGISTERED_57, SET_OK],
    ]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    client.write(set).unwrap();
    assert_eq!(client.client_id(), Some(41));
    // A wrong password: refused, and the client stays as it was.
    let err = client
        .login(Credentials::new("alice", "wrong-secret"))
        .unwrap_err();
    assert_eq!(err.code(), "UNAUTHENTICATED");
    assert!(client.credentials().is_none());
    assert_eq!(client.client_id(), Some(41));
    // A refused login is not remembered against the credentials kept.
    client
        .login(Credentials::new("alice", "pw-secret"))
        .unwrap();
    assert_eq!(client.credentials().map(Credentials::user), Some("alice"));
    assert_eq!(client.client_id(), None, "the session was another user's");
    client.write(set).unwrap();
    assert_eq!(client.client_id(), Some(57));
    let conns = node.join().unwrap();
    assert_eq!(conns[1].len(), 1);
    assert_login(&conns[2][0]);
    assert_msg_type(&conns[2][1], "REGISTER_CLIENT");
    assert_first_write(&conns[2][2], 57);
}

#[test]
fn status_and_find_leader_log_in_when_given_credentials() {
    let leader_status = r#"{"msg_type":"STATUS","req_id":{req_id},"payload":{"id":1,"addr":"a","role":"leader","term":3,"leader_id":1,"leader_addr":"a","commit_index":0,"last_applied":0,"last_log_index":0,"members":[]}}"#;
    let (addr, node) = fake_node_conns(vec![vec![LOGGED_IN, leader_status], vec![WRONG_PASSWORD]]);
    let creds = alice();
    let found = crate::find_leader_as(
        std::slice::from_ref(&addr),
        Duration::from_secs(2),
        None,
        creds.as_ref(),
    );
    assert_eq!(found.as_deref(), Some(addr.as_str()));
    let (status, wire) = crate::status_as(&addr, Duration::from_secs(2), None, creds.as_ref());
    let e = status.unwrap_err();
    assert!(e.contains("wrong user name or password"), "{e}");
    assert!(wire.is_empty(), "{wire:?}");
    let conns = node.join().unwrap();
    assert_login(&conns[0][0]);
    assert_msg_type(&conns[0][1], "STATUS");
}

const MEMBER_OK: &str = r#"{"msg_type":"MEMBER","req_id":{req_id},"payload":{"index":12,"members":[{"id":1,"addr":"127.0.0.1:8001","learner":false,"leader":true},{"id":4,"addr":"127.0.0.1:8004","learner":true,"leader":false}]}}"#;

fn error_reply(code: &str) -> &'static str {
    Box::leak(
        format!(
            r#"{{"msg_type":"ERROR","req_id":{{req_id}},"payload":{{"code":"{code}","message":"m"}}}}"#
        )
        .into_boxed_str(),
    )
}

fn learner_4() -> poncho_protocol::Member {
    poncho_protocol::Member {
        id: 4,
        addr: "127.0.0.1:8004".parse().unwrap(),
        peer_addr: None,
        learner: true,
    }
}

#[test]
fn a_member_change_follows_the_redirect_and_waits_out_a_change_in_progress() {
    let (leader, leader_node) = fake_node(vec![error_reply("CHANGE_IN_PROGRESS"), MEMBER_OK]);
    let (follower, follower_node) = fake_node(vec![redirect_to(&leader)]);
    let mut client = ClusterClient::new(vec![follower], Duration::from_secs(5), false);
    let reply = client.member_add(learner_4(), false).unwrap();
    assert_eq!(reply.index, Some(12));
    assert!(reply.members[1].learner && reply.members[0].leader);
    assert_eq!(client.connected(), Some(leader.as_str()));
    assert_eq!(follower_node.join().unwrap().len(), 1);
    let seen = leader_node.join().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], seen[1], "the same request again");
    assert_msg_type(&seen[0], "MEMBER");
    assert!(
        seen[0].contains(r#""op":"add","id":4"#) && seen[0].contains(r#""learner":true"#),
        "{}",
        seen[0]
    );
}

#[test]
fn a_change_that_may_have_been_applied_is_not_sent_again() {
    for code in ["TIMEOUT", "LEADERSHIP_LOST"] {
        // A second answer that must not be asked for.
        let (addr, node) = fake_node(vec![error_reply(code), MEMBER_OK]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let err = client.member_remove(3, false).unwrap_err();
        assert_eq!(err.code(), "OUTCOME_UNKNOWN", "{code}: {err}");
        let m = err.message();
        assert!(
            m.contains("unknown") && m.contains(code) && m.contains("`member list`"),
            "{m}"
        );
        client.disconnect();
        assert_eq!(node.join().unwrap().len(), 1, "{code}: sent again");
    }
    let (addr, node) = fake_node(vec![error_reply("TIMEOUT")]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let err = client.transfer_leader(2).unwrap_err();
    assert_eq!(err.code(), "OUTCOME_UNKNOWN");
    assert!(err.message().contains("`leader`"), "{}", err.message());
    node.join().unwrap();
}

#[test]
fn member_list_is_a_read_retried_and_a_removed_node_is_passed_over() {
    let (removed, removed_node) = fake_node(vec![error_reply("REMOVED")]);
    let (other, other_node) = fake_node(vec![error_reply("TIMEOUT"), MEMBER_OK]);
    let mut client =
        ClusterClient::new(vec![removed, other.clone()], Duration::from_secs(5), false);
    let reply = client.member_list().unwrap();
    assert_eq!(reply.members.len(), 2);
    assert_eq!(client.connected(), Some(other.as_str()));
    assert_eq!(removed_node.join().unwrap().len(), 1);
    let seen = other_node.join().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].contains(r#""op":"list""#), "{}", seen[0]);
}

#[test]
fn refused_changes_keep_their_codes_and_are_not_retried() {
    for code in ["LEARNER_NOT_READY", "UNSAFE_CHANGE", "MEMBERSHIP_REFUSED"] {
        let (addr, node) = fake_node(vec![error_reply(code), MEMBER_OK]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let err = client.member_promote(4, false).unwrap_err();
        assert!(
            matches!(&err, ClientError::Server(e) if e.code.to_string() == code),
            "{err:?}"
        );
        client.disconnect();
        assert_eq!(node.join().unwrap().len(), 1, "{code}");
    }
    // Not the reply the table promises: a protocol error.
    let (addr, node) = fake_node(vec![SET_OK]);
    let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
    let err = client.member_list().unwrap_err();
    assert_eq!(err.code(), "PROTOCOL", "{err}");
    node.join().unwrap();
}
