//! poncho-shell's --user, `login` and the `auth`/`user`/`role` commands
//! against a fake node that answers by msg_type: every connection logs in
//! first, no password reaches stdout, stderr or --verbose output, and
//! missing passwords and refused logins are explained.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// How long the fake node waits for a connection before it stops.
const IDLE: Duration = Duration::from_secs(5);

/// A fake node: the reply `answer` gives to each request line, on every
/// connection, until none comes for [`IDLE`]; the lines it got, each
/// connection's apart.
fn fake_node(answer: fn(&Value) -> Value) -> (String, mpsc::Receiver<Vec<Value>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut waited = Duration::ZERO;
        while waited < IDLE {
            let Ok((stream, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(10));
                waited += Duration::from_millis(10);
                continue;
            };
            waited = Duration::ZERO;
            stream.set_nonblocking(false).unwrap();
            let mut seen = Vec::new();
            let mut writer = stream.try_clone().unwrap();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let request: Value = serde_json::from_str(&line).unwrap();
                let mut reply = answer(&request);
                reply["req_id"] = request["req_id"].clone();
                seen.push(request);
                if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    break;
                }
            }
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A node where any password but `pw-secret` is wrong and every request
/// works.
fn node_reply(request: &Value) -> Value {
    let payload = &request["payload"];
    match request["msg_type"].as_str().unwrap_or_default() {
        "AUTHENTICATE" if payload["password"] == "pw-secret" => {
            json!({"msg_type": "AUTHENTICATE", "payload": {"user": payload["user"]}})
        }
        "AUTHENTICATE" => json!({"msg_type": "ERROR", "payload": {
            "code": "UNAUTHENTICATED", "message": "wrong user name or password"}}),
        "GET" => json!({"msg_type": "GET", "payload": {"key": payload["key"], "value": "v"}}),
        "AUTH" => json!({"msg_type": "AUTH", "payload": {"enabled": true, "index": 9}}),
        "USER" if payload["op"] == "list" => json!({"msg_type": "USER", "payload": {
            "users": [{"name": "alice", "roles": ["app"]}, {"name": "root", "roles": ["root"]}]}}),
        "USER" => json!({"msg_type": "USER", "payload": {"index": 7}}),
        "ROLE" if payload["op"] == "get" => json!({"msg_type": "ROLE", "payload": {"roles": [
            {"name": "app", "permissions": [{"prefix": "app/", "access": "readwrite"},
                                            {"key": "cfg", "access": "read"}]}]}}),
        "ROLE" => json!({"msg_type": "ROLE", "payload": {"index": 8}}),
        "STATUS" => json!({"msg_type": "STATUS", "payload": {"id": 1, "addr": "a",
            "role": "leader", "term": 1, "leader_id": 1, "leader_addr": "a", "commit_index": 0,
            "last_applied": 0, "last_log_index": 0, "members": []}}),
        other => json!({"msg_type": "ERROR", "payload": {
            "code": "BAD_REQUEST", "message": format!("not faked: {other}")}}),
    }
}

/// Runs the shell with stdin `input` (not a terminal) and only the
/// environment given of the shell's own variables.
fn shell(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_poncho-shell"));
    command.args(["--timeout", "2s"]).args(args);
    for var in [
        "PONCHO_USER",
        "PONCHO_PASSWORD",
        "PONCHO_NEW_PASSWORD",
        "PONCHO_CLUSTER",
    ] {
        command.env_remove(var);
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shell stopped with exit status 2, saying `what` on stderr.
fn assert_usage_error(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(what), "{what}: {stderr}");
}

/// The connections the node saw, waiting for each.
fn connections(rx: &mpsc::Receiver<Vec<Value>>, n: usize) -> Vec<Vec<Value>> {
    (0..n)
        .map(|_| rx.recv_timeout(IDLE * 2).expect("a connection"))
        .collect()
}

#[test]
fn user_logs_every_connection_in_first_and_verbose_hides_the_password() {
    let (addr, rx) = fake_node(node_reply);
    let out = shell(
        &[
            "--cluster",
            &addr,
            "--user",
            "alice",
            "--verbose",
            "get",
            "k",
        ],
        &[("PONCHO_PASSWORD", "pw-secret")],
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout).trim(), "v");
    assert!(
        stderr.contains("AUTHENTICATE") && stderr.contains("<redacted>"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-secret"), "{stderr}");
    let conn = &connections(&rx, 1)[0];
    assert_eq!(conn[0]["msg_type"], "AUTHENTICATE");
    assert_eq!(conn[0]["payload"]["user"], "alice");
    assert_eq!(conn[1]["msg_type"], "GET");
}

#[test]
fn a_wrong_password_or_none_is_explained() {
    let (addr, rx) = fake_node(node_reply);
    let out = shell(
        &["--cluster", &addr, "--user", "alice", "get", "k"],
        &[("PONCHO_PASSWORD", "wrong-secret")],
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong user name or password"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"), "{stderr}");
    // Only the login: not retried, nothing sent after it.
    assert_eq!(connections(&rx, 1)[0].len(), 1);
    // No terminal and no $PONCHO_PASSWORD; $PONCHO_USER names the user.
    let out = shell(
        &["--cluster", &addr, "get", "k"],
        &[("PONCHO_USER", "alice")],
        "",
    );
    assert_usage_error(&out, "PONCHO_PASSWORD");
}

#[test]
fn a_script_manages_users_and_roles_without_showing_a_password() {
    let (addr, rx) = fake_node(node_reply);
    let script = "user add root:pw-one-secret\n\
                  user grant-role root root\n\
                  auth enable\n\
                  login root\n\
                  user add bob\n\
                  user list\n\
                  role grant-permission app readwrite app/ --prefix\n\
                  role get app\n\
                  auth status\n";
    let out = shell(
        &["--cluster", &addr, "--verbose"],
        &[
            ("PONCHO_PASSWORD", "pw-secret"),
            ("PONCHO_NEW_PASSWORD", "pw-two-secret"),
        ],
        script,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "OK\nOK\nOK\nOK\nOK\nalice root\nOK\nreadwrite prefix app/\nread key cfg\nenabled\n"
    );
    assert!(
        stderr.contains("hint: this shell has not logged in: run `login root`"),
        "{stderr}"
    );
    for secret in ["pw-one-secret", "pw-two-secret", "pw-secret"] {
        assert!(!stderr.contains(secret), "{secret}: {stderr}");
    }
    // Before `login`: one connection without a login; after it, a new one
    // that logs in first.
    let conns = connections(&rx, 2);
    assert_eq!(conns[0][0]["msg_type"], "USER");
    assert_eq!(conns[0][0]["payload"]["password"], "pw-one-secret");
    assert_eq!(conns[1][0]["msg_type"], "AUTHENTICATE");
    assert_eq!(conns[1][0]["payload"]["user"], "root");
    assert_eq!(conns[1][1]["payload"]["password"], "pw-two-secret");
    let grant = &conns[1][3]["payload"];
    assert_eq!(
        (&grant["op"], &grant["prefix"], &grant["access"]),
        (
            &json!("grant-permission"),
            &json!("app/"),
            &json!("readwrite")
        )
    );
}

#[test]
fn a_new_password_must_come_from_somewhere() {
    let (addr, _rx) = fake_node(node_reply);
    let out = shell(&["--cluster", &addr, "user", "add", "bob"], &[], "");
    assert_usage_error(&out, "PONCHO_NEW_PASSWORD");
}

#[test]
fn json_output_carries_the_hint_and_no_password() {
    let (addr, _rx) = fake_node(node_reply);
    let out = shell(
        &["--cluster", &addr, "--json"],
        &[],
        "user add carol:pw-three-secret\nauth enable\n",
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("pw-three-secret"), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["command"], "user add");
    assert_eq!(lines[0]["user"], "carol");
    assert_eq!(lines[0]["index"], 7);
    assert_eq!(lines[1]["enabled"], true);
    assert!(lines[1]["hint"].as_str().unwrap().contains("login root"));
}
