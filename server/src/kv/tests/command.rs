//! The log's JSON form of a command, and commands built from requests.

use super::*;

#[test]
fn commands_round_trip_through_compact_json() {
    let command = Command {
        op: cas("k", None, Some("v")),
        client_id: Some(12),
        seq: Some(3),
        user: None,
        ts_ms: 1_700_000_000_000,
    };
    let text = command.encode();
    assert_eq!(
        text,
        "{\"op\":{\"type\":\"CAS\",\"key\":\"k\",\"expected\":null,\"value\":\"v\"},\
         \"client_id\":12,\"seq\":3,\"ts_ms\":1700000000000}"
    );
    let register = Command {
        op: Op::RegisterClient,
        client_id: None,
        seq: None,
        user: None,
        ts_ms: 5,
    };
    assert_eq!(
        register.encode(),
        "{\"op\":{\"type\":\"REGISTER_CLIENT\"},\"ts_ms\":5}"
    );
    assert_eq!(Command::decode(&register.encode()), Ok(register));
    assert_eq!(Command::decode(&text), Ok(command));
    let plain = Command {
        op: delete("k"),
        client_id: None,
        seq: None,
        user: None,
        ts_ms: 5,
    };
    assert_eq!(
        plain.encode(),
        "{\"op\":{\"type\":\"DELETE\",\"key\":\"k\"},\"ts_ms\":5}"
    );
    assert_eq!(Command::decode(&plain.encode()), Ok(plain));
    assert!(Command::decode("{").is_err());
}

#[test]
fn from_request_builds_commands_for_writes_only() {
    let request = |line: &str| match decode_request(line.as_bytes()).unwrap() {
        Request::Client { request, .. } => request,
        other => panic!("{other:?}"),
    };
    let session = SessionFields {
        client_id: Some(1),
        seq: Some(2),
    };
    assert_eq!(
        Command::from_request(
            ClientRequest::Set(SetRequest {
                key: "k".into(),
                value: "v".into(),
                lease: None,
                session: session.clone(),
            }),
            9
        )
        .ok(),
        Some(Command {
            op: set("k", "v"),
            client_id: Some(1),
            seq: Some(2),
            user: None,
            ts_ms: 9
        })
    );
    assert_eq!(
        Command::from_request(
            ClientRequest::Delete(DeleteRequest {
                key: "k".into(),
                session: SessionFields::default(),
            }),
            9
        )
        .ok(),
        Some(Command {
            op: delete("k"),
            client_id: None,
            seq: None,
            user: None,
            ts_ms: 9
        })
    );
    assert_eq!(
        Command::from_request(
            ClientRequest::Cas(CasRequest {
                key: "k".into(),
                expected: Some("a".into()),
                value: None,
                session,
            }),
            9
        )
        .map(|c| c.op)
        .ok(),
        Some(cas("k", Some("a"), None))
    );
    for line in [
        r#"{"msg_type":"HEALTHCHECK"}"#,
        r#"{"msg_type":"STATUS"}"#,
        r#"{"msg_type":"GET","payload":{"key":"k"}}"#,
        r#"{"msg_type":"KEYS"}"#,
    ] {
        assert_eq!(Command::from_request(request(line), 9).ok(), None, "{line}");
    }
    assert_eq!(
        Command::from_request(ClientRequest::RegisterClient, 9).ok(),
        Some(Command {
            op: Op::RegisterClient,
            client_id: None,
            seq: None,
            user: None,
            ts_ms: 9
        })
    );
    // End to end: a registration and a SET line, through the log, to
    // their replies.
    let mut store = KvStore::new();
    let register = Command::from_request(request(r#"{"msg_type":"REGISTER_CLIENT"}"#), 1);
    assert_eq!(
        store.apply(&command_entry(1, &register.unwrap())),
        Some(ApplyResult::Register(RegisterClientReply { client_id: 1 }))
    );
    let line = r#"{"msg_type":"SET","payload":{"key":"k","value":"v","client_id":1,"seq":1}}"#;
    let command = Command::from_request(request(line), 1).unwrap();
    assert_eq!(
        store.apply(&command_entry(2, &command)),
        Some(set_reply("k", 2))
    );
    assert_eq!(store.session_count(), 1);
}
