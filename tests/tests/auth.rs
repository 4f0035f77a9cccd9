//! Users and roles end to end (issue 12, part 5), through real
//! `poncho-server` processes: a table of users x operations x keys, each
//! asserted against the server's answer; role changes that take effect on
//! connections already open; failed logins answered more and more slowly;
//! auth kept across restarts and snapshots; logins by client certificate;
//! and, after each, no password or password hash in any log, STATUS or
//! reply.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_tests::auth::{add_role, add_user, authenticate_line, enable_auth, log_in, must, Login};
use poncho_tests::certs::{Leaf, TestCa};
use poncho_tests::{read_with_retry, write_with_retry, Client, Cluster, Transcript};
use poncho_tls::TlsFiles;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);

// Distinctive passwords, so the secrets check can look for each.
const ROOT_PW: &str = "pw-root-Zk93";
const ALICE_PW: &str = "pw-alice-7Hq2";
const BOB_PW: &str = "pw-bob-Lm41";
const CAROL_PW: &str = "pw-carol-Rt58";
const WRONG_PW: &str = "pw-wrong-Xv06";
const NEW_ALICE_PW: &str = "pw-alice-new-3Fd8";
const PASSWORDS: [&str; 6] = [ROOT_PW, ALICE_PW, BOB_PW, CAROL_PW, WRONG_PW, NEW_ALICE_PW];

fn root() -> Login {
    Login::new("root", ROOT_PW)
}
fn alice() -> Login {
    Login::new("alice", ALICE_PW)
}
fn bob() -> Login {
    Login::new("bob", BOB_PW)
}
fn carol() -> Login {
    Login::new("carol", CAROL_PW)
}

/// The keys of the table, each written (`v0-KEY`) before it runs.
const KEYS: [&str; 5] = ["app/a", "config", "configx", "logs/l", "other"];

/// A cluster, its leader, and every reply line the test's connections read.
struct World {
    cluster: Cluster,
    leader: u64,
    seen: Transcript,
}

impl World {
    fn start(n: usize, args: &[&str]) -> World {
        let mut cluster = Cluster::start_with(n, args);
        let leader = cluster.wait_for_leader(ELECTION);
        World {
            cluster,
            leader,
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A connection to node `id` that has not logged in.
    fn anon(&self, id: u64) -> Client {
        let mut c = self.cluster.client(id);
        c.record_into(self.seen.clone());
        c
    }

    /// A connection to node `id` logged in as `login`.
    fn conn(&self, id: u64, login: &Login) -> Client {
        let mut c = self.anon(id);
        assert!(
            log_in(&mut c, login).unwrap(),
            "{} on node {id}",
            login.user
        );
        c
    }

    /// As root on the leader: `root` (auth enabled), the roles `app`
    /// (readwrite on prefix app/), `cfg` (read on key config), `logs` (write
    /// on prefix logs/), the users alice (app, cfg), bob (logs) and carol
    /// (none), and every key of [`KEYS`]. Returns root's connection.
    fn set_up_rbac(&mut self) -> Client {
        let mut admin = self.anon(self.leader);
        enable_auth(&mut admin, &root());
        self.cluster.log_in_as(root());
        add_role(&mut admin, "app", &[("prefix", "app/")], "readwrite");
        add_role(&mut admin, "cfg", &[("key", "config")], "read");
        add_role(&mut admin, "logs", &[("prefix", "logs/")], "write");
        add_user(&mut admin, &alice(), &["app", "cfg"]);
        add_user(&mut admin, &bob(), &["logs"]);
        add_user(&mut admin, &carol(), &[]);
        for key in KEYS {
            must(
                &mut admin,
                "SET",
                json!({"key": key, "value": format!("v0-{key}")}),
            );
        }
        admin
    }

    /// No node log, no STATUS and no reply the test read holds a password
    /// of [`PASSWORDS`] or an argon2 hash.
    fn assert_no_secrets(&self) {
        let mut texts: Vec<(String, String)> = Vec::new();
        for node in &self.cluster.nodes {
            texts.push((format!("node {}'s log", node.id), node.log()));
            if let Some(status) = self.cluster.status(node.id) {
                texts.push((format!("node {}'s STATUS", node.id), status.to_string()));
            }
        }
        let seen = self.seen.lock().unwrap().clone();
        assert!(
            seen.iter().any(|l| l.contains("\"ERROR\"")),
            "no error replies seen: the check would be vacuous"
        );
        texts.extend(seen.into_iter().map(|l| ("a reply".to_string(), l)));
        for (what, text) in &texts {
            for secret in PASSWORDS.iter().chain(&["$argon2"]) {
                assert!(!text.contains(secret), "{what} holds {secret:?}:\n{text}");
            }
        }
    }
}

fn request(c: &mut Client, msg_type: &str, payload: Value) -> Value {
    let line = json!({"msg_type": msg_type, "payload": payload});
    c.request(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// `ok` for a success reply to `msg_type`, else the error's code.
fn outcome(reply: &Value, msg_type: &str) -> String {
    if reply["msg_type"] == msg_type {
        return "ok".to_string();
    }
    assert_eq!(reply["msg_type"], "ERROR", "{reply}");
    reply["payload"]["code"].as_str().unwrap_or("?").to_string()
}

/// What a letter of the table stands for.
fn expected(letter: char) -> &'static str {
    match letter {
        'o' => "ok",
        'd' => "PERMISSION_DENIED",
        'u' => "UNAUTHENTICATED",
        'n' => "NOT_LEADER",
        other => panic!("no outcome {other:?}"),
    }
}

/// The request `op` of `key` as `user` sends it.
fn key_request(op: &str, key: &str, user: &str) -> Value {
    match op {
        "GET" | "DELETE" => json!({"key": key}),
        "SET" => json!({"key": key, "value": format!("set-by-{user}")}),
        // Expects what root's SET left, so an allowed CAS swaps.
        "CAS" => json!({"key": key, "expected": "set-by-root", "value": format!("cas-by-{user}")}),
        other => panic!("no key operation {other}"),
    }
}

/// Runs `op` on every key of [`KEYS`] as each user of `row`, in order, and
/// checks each outcome against the row's letters (one per key).
fn run_key_row(conns: &mut BTreeMap<&str, Client>, op: &str, row: &[(&str, &str)]) {
    for &(user, letters) in row {
        let c = conns.get_mut(user).expect("a connection per user");
        for (key, letter) in KEYS.iter().zip(letters.chars()) {
            let reply = request(c, op, key_request(op, key, user));
            assert_eq!(
                outcome(&reply, op),
                expected(letter),
                "{user}: {op} {key}: {reply}"
            );
        }
    }
}

/// Every key of [`KEYS`] holds what `values` says (None: absent), as root
/// reads it.
fn assert_values(root: &mut Client, values: [Option<&str>; 5]) {
    for (key, want) in KEYS.iter().zip(values) {
        let got = must(root, "GET", json!({"key": key}));
        assert_eq!(got["value"].as_str(), want, "{key}");
    }
}

fn keys_of(reply: &Value) -> Vec<String> {
    let keys = reply["payload"]["keys"].as_array().expect("keys");
    keys.iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// One connection per user of the table, and one that never logged in
/// (`anon`), all to the leader.
type Conns = BTreeMap<&'static str, Client>;

#[test]
fn rbac_table_of_users_operations_and_keys() {
    // Debug logging: the secrets check at the end covers the most verbose log.
    let mut w = World::start(3, &["--log-level", "debug"]);
    let mut admin = w.set_up_rbac();
    let l = w.leader;
    let mut conns: Conns = BTreeMap::new();
    conns.insert("alice", w.conn(l, &alice()));
    conns.insert("bob", w.conn(l, &bob()));
    conns.insert("carol", w.conn(l, &carol()));
    conns.insert("anon", w.anon(l));
    conns.insert("root", w.conn(l, &root()));
    assert_keys_lists(&mut conns);
    assert_key_table(&mut conns, &mut admin);
    assert_admin_rows(&mut conns, &mut admin);
    assert_follower(&w, &mut admin);
    // Root turns auth off: then anyone may do anything.
    let reply = request(
        conns.get_mut("root").unwrap(),
        "AUTH",
        json!({"op": "disable"}),
    );
    assert_eq!(reply["payload"]["enabled"], false, "{reply}");
    let reply = request(
        conns.get_mut("anon").unwrap(),
        "SET",
        json!({"key": "other", "value": "anyone"}),
    );
    assert_eq!(outcome(&reply, "SET"), "ok", "{reply}");
    w.assert_no_secrets();
}

fn assert_keys_lists(conns: &mut Conns) {
    // KEYS lists only what the user may read; never an error once logged in.
    let all: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    for (user, prefix, want) in [
        ("root", "", all.clone()),
        ("alice", "", vec!["app/a".into(), "config".into()]),
        ("alice", "con", vec!["config".into()]),
        ("root", "con", vec!["config".into(), "configx".into()]),
        ("bob", "", vec![]),
        ("carol", "", vec![]),
    ] {
        let reply = request(
            conns.get_mut(user).unwrap(),
            "KEYS",
            json!({"prefix": prefix}),
        );
        assert_eq!(keys_of(&reply), want, "{user}: KEYS {prefix:?}: {reply}");
    }
    let reply = request(conns.get_mut("anon").unwrap(), "KEYS", json!({}));
    assert_eq!(outcome(&reply, "KEYS"), "UNAUTHENTICATED", "{reply}");
}

fn assert_key_table(conns: &mut Conns, admin: &mut Client) {
    // Keys: app/a, config, configx, logs/l, other.
    let others = [
        ("anon", "uuuuu"),
        ("carol", "ddddd"),
        ("bob", "ddddd"),
        ("alice", "ooddd"),
    ];
    run_key_row(conns, "GET", &others);
    run_key_row(conns, "GET", &[("root", "ooooo")]);
    let others_set = [others[0], others[1], ("bob", "dddod"), ("alice", "odddd")];
    run_key_row(conns, "SET", &others_set);
    // Only the allowed writes were applied.
    let v0 = KEYS.map(|k| format!("v0-{k}"));
    assert_values(
        admin,
        [
            Some("set-by-alice"),
            Some(&v0[1]),
            Some(&v0[2]),
            Some("set-by-bob"),
            Some(&v0[4]),
        ],
    );
    run_key_row(conns, "SET", &[("root", "ooooo")]);
    // CAS needs read and write: bob (write only) and alice on config (read
    // only) are refused.
    let others_cas = [others[0], others[1], ("bob", "ddddd"), ("alice", "odddd")];
    run_key_row(conns, "CAS", &others_cas);
    let root_set = Some("set-by-root");
    assert_values(
        admin,
        [Some("cas-by-alice"), root_set, root_set, root_set, root_set],
    );
    run_key_row(conns, "CAS", &[("root", "ooooo")]);
    run_key_row(conns, "DELETE", &others_set);
    assert_values(
        admin,
        [
            None,
            Some("cas-by-root"),
            Some("cas-by-root"),
            None,
            Some("cas-by-root"),
        ],
    );
    run_key_row(conns, "DELETE", &[("root", "ooooo")]);
}

fn assert_admin_rows(conns: &mut Conns, admin: &mut Client) {
    // Requests about users, roles and auth: root only; STATUS and AUTH
    // status any user; HEALTHCHECK anyone.
    let rows: [(&str, Value, &str); 6] = [
        ("USER", json!({"op": "list"}), "oddd"),
        ("ROLE", json!({"op": "add", "name": "extra"}), "oddd"),
        ("AUTH", json!({"op": "disable"}), "dddu"),
        ("AUTH", json!({"op": "status"}), "oooo"),
        ("STATUS", Value::Null, "oooo"),
        ("HEALTHCHECK", Value::Null, "oooo"),
    ];
    for (msg_type, payload, letters) in rows {
        // AUTH disable by root comes last, below.
        let users = if letters == "dddu" {
            &["alice", "bob", "carol", "anon"][..]
        } else {
            &["root", "alice", "bob", "carol"][..]
        };
        for (user, letter) in users.iter().zip(letters.chars()) {
            let reply = request(conns.get_mut(user).unwrap(), msg_type, payload.clone());
            assert_eq!(
                outcome(&reply, msg_type),
                expected(letter),
                "{user}: {msg_type} {payload}: {reply}"
            );
        }
        if msg_type != "HEALTHCHECK" && letters != "dddu" {
            let reply = request(conns.get_mut("anon").unwrap(), msg_type, payload.clone());
            assert_eq!(
                outcome(&reply, msg_type),
                "UNAUTHENTICATED",
                "{msg_type}: {reply}"
            );
        }
    }
    let reply = request(conns.get_mut("anon").unwrap(), "HEALTHCHECK", Value::Null);
    assert_eq!(outcome(&reply, "HEALTHCHECK"), "ok", "{reply}");
    let roles = must(admin, "ROLE", json!({"op": "list"}));
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "cfg", "extra", "logs"], "{roles}");
    // (root is built in, not listed.) A user record shows roles, never the
    // hash.
    let users = must(admin, "USER", json!({"op": "get", "name": "alice"}));
    assert_eq!(users["users"][0]["roles"], json!(["app", "cfg"]), "{users}");
}

fn assert_follower(w: &World, admin: &mut Client) {
    // A follower checks, then redirects writes it may take; it serves
    // stale reads it may.
    let l = w.leader;
    let f = (1..=3).find(|&id| id != l).unwrap();
    let mut fa = w.conn(f, &alice());
    let mut fb = w.conn(f, &bob());
    let reply = request(&mut fa, "SET", json!({"key": "app/f", "value": "x"}));
    assert_eq!(outcome(&reply, "SET"), "NOT_LEADER", "{reply}");
    assert_eq!(
        reply["payload"]["leader_addr"],
        w.cluster.addr(l).to_string(),
        "{reply}"
    );
    let reply = request(&mut fb, "SET", json!({"key": "app/f", "value": "x"}));
    assert_eq!(outcome(&reply, "SET"), "PERMISSION_DENIED", "{reply}");
    let reply = request(
        &mut w.conn(f, &root()),
        "ROLE",
        json!({"op": "add", "name": "r2"}),
    );
    assert_eq!(outcome(&reply, "ROLE"), "NOT_LEADER", "{reply}");
    assert_eq!(
        must(admin, "GET", json!({"key": "app/f"}))["value"],
        Value::Null
    );
    must(admin, "SET", json!({"key": "app/s", "value": "s"}));
    must(admin, "SET", json!({"key": "other", "value": "o"}));
    let stale = |c: &mut Client, key: &str| request(c, "GET", json!({"key": key, "stale": true}));
    let deadline = Instant::now() + ELECTION;
    while stale(&mut fa, "app/s")["payload"]["value"] != "s" {
        assert!(
            Instant::now() < deadline,
            "follower {f} never applied app/s"
        );
        sleep(Duration::from_millis(20));
    }
    assert_eq!(
        outcome(&stale(&mut fa, "other"), "GET"),
        "PERMISSION_DENIED"
    );
    assert_eq!(
        outcome(&stale(&mut w.anon(f), "app/s"), "GET"),
        "UNAUTHENTICATED"
    );
}

#[test]
fn a_role_change_takes_effect_on_open_connections() {
    let mut w = World::start(1, &[]);
    let mut admin = w.set_up_rbac();
    let mut a = w.conn(w.leader, &alice());
    let set = |c: &mut Client| {
        let reply = request(c, "SET", json!({"key": "app/x", "value": "v"}));
        outcome(&reply, "SET")
    };
    let get = |c: &mut Client| outcome(&request(c, "GET", json!({"key": "app/x"})), "GET");
    assert_eq!(set(&mut a), "ok");

    let app = json!({"name": "app", "prefix": "app/"});
    let with = |op: &str, extra: Value| {
        let mut payload = app.clone();
        payload["op"] = json!(op);
        if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        payload
    };
    // The role loses the permission: alice's next request on the same
    // connection is refused, and KEYS shows her nothing of app/.
    must(&mut admin, "ROLE", with("revoke-permission", json!({})));
    assert_eq!(set(&mut a), "PERMISSION_DENIED");
    assert_eq!(get(&mut a), "PERMISSION_DENIED");
    assert_eq!(
        keys_of(&request(&mut a, "KEYS", json!({"prefix": "app/"}))),
        Vec::<String>::new()
    );
    // Granted again: allowed again, on the same connection.
    must(
        &mut admin,
        "ROLE",
        with("grant-permission", json!({"access": "readwrite"})),
    );
    assert_eq!(set(&mut a), "ok");
    assert_eq!(get(&mut a), "ok");
    // Read only: GET yes, SET no.
    must(
        &mut admin,
        "ROLE",
        with("grant-permission", json!({"access": "read"})),
    );
    assert_eq!(get(&mut a), "ok");
    assert_eq!(set(&mut a), "PERMISSION_DENIED");
    must(
        &mut admin,
        "ROLE",
        with("grant-permission", json!({"access": "readwrite"})),
    );

    // Alice loses the role, then gets it back.
    let role = |op: &str| json!({"op": op, "name": "alice", "role": "app"});
    must(&mut admin, "USER", role("revoke-role"));
    assert_eq!(set(&mut a), "PERMISSION_DENIED");
    must(&mut admin, "USER", role("grant-role"));
    assert_eq!(set(&mut a), "ok");

    // The role is deleted: gone from alice too, so re-creating it is not
    // enough.
    must(&mut admin, "ROLE", json!({"op": "delete", "name": "app"}));
    assert_eq!(set(&mut a), "PERMISSION_DENIED");
    add_role(&mut admin, "app", &[("prefix", "app/")], "readwrite");
    assert_eq!(set(&mut a), "PERMISSION_DENIED");
    must(&mut admin, "USER", role("grant-role"));
    assert_eq!(set(&mut a), "ok");

    // Alice is deleted: her open connection is no longer anyone's.
    must(&mut admin, "USER", json!({"op": "delete", "name": "alice"}));
    assert_eq!(set(&mut a), "UNAUTHENTICATED");
    assert_eq!(get(&mut a), "UNAUTHENTICATED");
    // A new alice (same name, the same role) is not the one who logged in.
    let readd = json!({"op": "add", "name": "alice", "password": "pw-alice-2nd-9Zx"});
    must(&mut admin, "USER", readd);
    must(&mut admin, "USER", role("grant-role"));
    assert_eq!(set(&mut a), "UNAUTHENTICATED");
    w.assert_no_secrets();
}

/// How long AUTHENTICATE as `login` took to be answered, and the reply.
fn timed_login(c: &mut Client, login: &Login) -> (Duration, Value) {
    let started = Instant::now();
    let reply = c.request(&authenticate_line(login)).unwrap();
    (started.elapsed(), reply)
}

#[test]
fn failed_logins_are_slowed_and_pipelined_requests_wait_for_the_login() {
    let mut w = World::start(1, &[]);
    let _admin = w.set_up_rbac();
    let mut c = w.anon(w.leader);
    c.set_read_timeout(Duration::from_secs(20));
    // The server waits 200 ms before answering the first failure, doubling
    // each time: each answer takes at least that (a password check alone
    // takes well under 200 ms). Lower bounds only, so load cannot flake it.
    let wrong = [
        Login::new("alice", WRONG_PW),
        Login::new("nobody", WRONG_PW),
        Login::new("alice", BOB_PW),
        Login::new("alice", WRONG_PW),
    ];
    for (i, login) in wrong.iter().enumerate() {
        let (took, reply) = timed_login(&mut c, login);
        assert_eq!(
            outcome(&reply, "AUTHENTICATE"),
            "UNAUTHENTICATED",
            "{reply}"
        );
        assert_eq!(
            reply["payload"]["message"], "wrong user name or password",
            "{reply}"
        );
        let floor = Duration::from_millis(180 << i);
        assert!(
            took >= floor,
            "failure {} answered after {took:?}, before {floor:?}",
            i + 1
        );
    }
    // The right password still works on the same connection, at once.
    let (took, reply) = timed_login(&mut c, &alice());
    assert_eq!(outcome(&reply, "AUTHENTICATE"), "ok", "{reply}");
    assert!(
        took < Duration::from_secs(3),
        "a right password waited {took:?}"
    );
    assert_eq!(
        outcome(
            &request(&mut c, "SET", json!({"key": "app/1", "value": "v"})),
            "SET"
        ),
        "ok"
    );

    // AUTHENTICATE and a SET in one write(): the SET is checked as the
    // user just logged in, on a new connection and on one logged in as
    // someone else.
    let pipelined = |c: &mut Client, login: &Login, key: &str| {
        let set = json!({"msg_type": "SET", "payload": {"key": key, "value": "p"}});
        let mut bytes = authenticate_line(login).to_string();
        bytes.push('\n');
        bytes.push_str(&format!("{set}\n"));
        c.send_raw(bytes.as_bytes()).unwrap();
        let login_reply = c.read_reply().unwrap();
        assert_eq!(outcome(&login_reply, "AUTHENTICATE"), "ok", "{login_reply}");
        let set_reply = c.read_reply().unwrap();
        outcome(&set_reply, "SET")
    };
    let mut p = w.anon(w.leader);
    assert_eq!(pipelined(&mut p, &alice(), "app/p"), "ok");
    assert_eq!(pipelined(&mut p, &bob(), "app/q"), "PERMISSION_DENIED");
    assert_eq!(pipelined(&mut p, &alice(), "app/r"), "ok");
    w.assert_no_secrets();
}

/// Sends SETs of `count` keys `bulk/N` in one write and waits for each reply.
fn bulk_writes(c: &mut Client, count: usize) {
    let mut batch = String::new();
    for i in 0..count {
        let set = json!({"msg_type": "SET", "payload": {"key": format!("bulk/{i}"), "value": "b"}});
        batch.push_str(&format!("{set}\n"));
    }
    c.send_raw(batch.as_bytes()).unwrap();
    for _ in 0..count {
        let reply = c.read_reply().unwrap();
        assert_eq!(reply["msg_type"], "SET", "{reply}");
    }
}

fn wait_for_log(w: &World, id: u64, needle: &str) {
    let deadline = Instant::now() + ELECTION;
    while !w.cluster.log(id).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "node {id} never logged {needle:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

/// Logs alice in on node `id` (retrying on new connections until the node
/// has applied her), then checks that it enforces her roles on stale reads.
fn assert_node_enforces(w: &World, id: u64) {
    let deadline = Instant::now() + ELECTION;
    let mut a = loop {
        let mut c = w.anon(id);
        if log_in(&mut c, &alice()).unwrap_or(false) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never took alice's password"
        );
    };
    let stale = |c: &mut Client, key: &str| {
        let reply = request(c, "GET", json!({"key": key, "stale": true}));
        outcome(&reply, "GET")
    };
    assert_eq!(stale(&mut a, "app/a"), "ok", "node {id}");
    assert_eq!(stale(&mut a, "other"), "PERMISSION_DENIED", "node {id}");
    assert_eq!(stale(&mut a, "bulk/1"), "PERMISSION_DENIED", "node {id}");
    assert_eq!(
        stale(&mut w.anon(id), "app/a"),
        "UNAUTHENTICATED",
        "node {id}"
    );
}

#[test]
fn auth_survives_restarts_and_snapshots() {
    let args = ["--snapshot-entries", "50", "--snapshot-keep-tail", "5"];
    let mut w = World::start(3, &args);
    // A follower is down through the whole setup, and must catch up by
    // snapshot.
    let late = (1..=3).find(|&id| id != w.leader).unwrap();
    w.cluster.kill(late);
    let mut admin = w.set_up_rbac();
    bulk_writes(&mut admin, 120);
    wait_for_log(&w, w.leader, "log compacted through");
    w.cluster.restart(late);
    wait_for_log(&w, late, "installed snapshot through index");
    assert_node_enforces(&w, late);
    // The hashes are on disk (the secrets check's needle is their format).
    assert!(
        dir_holds(&w.cluster.data_dir(w.leader), b"$argon2id$"),
        "no argon2id hash in the leader's data directory"
    );

    // Every node stopped, then started again: auth is still on, from the
    // snapshot and the log on disk.
    drop(admin);
    for id in 1..=3 {
        w.cluster.stop(id);
    }
    for id in 1..=3 {
        w.cluster.restart(id);
    }
    w.leader = w.cluster.wait_for_leader(ELECTION);
    let mut admin = w.conn(w.leader, &root());
    assert_eq!(
        must(&mut admin, "AUTH", json!({"op": "status"}))["enabled"],
        true
    );
    let mut a = w.conn(w.leader, &alice());
    let reply = request(&mut a, "SET", json!({"key": "other", "value": "x"}));
    assert_eq!(outcome(&reply, "SET"), "PERMISSION_DENIED", "{reply}");
    let reply = request(&mut a, "SET", json!({"key": "app/after", "value": "x"}));
    assert_eq!(outcome(&reply, "SET"), "ok", "{reply}");
    let reply = request(&mut w.anon(w.leader), "GET", json!({"key": "app/a"}));
    assert_eq!(outcome(&reply, "GET"), "UNAUTHENTICATED", "{reply}");
    // poncho-client's ClusterClient logs in as root (the harness's login)
    // wherever it connects, before its session and write.
    let set = json!({"msg_type": "SET", "payload": {"key": "other", "value": "by root"}});
    write_with_retry(&w.cluster, &set, ELECTION);
    assert_eq!(
        read_with_retry(&w.cluster, "other", ELECTION)["value"],
        "by root"
    );
    for id in 1..=3 {
        assert_node_enforces(&w, id);
    }
    w.assert_no_secrets();
}

/// Whether some file directly in `dir` holds `needle`.
fn dir_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    let entries = std::fs::read_dir(dir).unwrap();
    entries.filter_map(Result::ok).any(|e| {
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

fn tls_client(ca: &TestCa, identity: &Leaf) -> Arc<poncho_tls::rustls::ClientConfig> {
    let files = TlsFiles {
        cert: Some(identity.cert.clone()),
        key: Some(identity.key.clone()),
        trusted_ca: Some(ca.cert_file.clone()),
    };
    poncho_tls::client_config(&files, "test").unwrap().0
}

#[test]
fn a_client_certificate_logs_its_common_name_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "auth-ca");
    let node = ca.leaf("node", &["127.0.0.1"]);
    let (cert, key, ca_file) = (
        node.cert.display().to_string(),
        node.key.display().to_string(),
        ca.cert_file.display().to_string(),
    );
    let flags = [
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
    ];
    // The harness's own connections (STATUS) are root's, by certificate.
    let mut cluster = Cluster::start_with(1, &flags);
    cluster.use_tls(tls_client(&ca, &ca.leaf("root", &[])));
    let w = World {
        leader: cluster.wait_for_leader(ELECTION),
        cluster,
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let mut admin = w.anon(w.leader);
    add_user(&mut admin, &root(), &["root"]);
    add_role(&mut admin, "app", &[("prefix", "app/")], "readwrite");
    add_user(&mut admin, &alice(), &["app"]);
    must(&mut admin, "AUTH", json!({"op": "enable"}));
    // Root's certificate made this connection root's: no AUTHENTICATE.
    must(&mut admin, "SET", json!({"key": "other", "value": "o"}));

    let as_cert = |name: &str| {
        let tls = tls_client(&ca, &ca.leaf(name, &[]));
        let mut c = Client::connect_tls(w.cluster.addr(w.leader), tls).unwrap();
        c.record_into(w.seen.clone());
        c
    };
    let mut a = as_cert("alice");
    let reply = request(&mut a, "SET", json!({"key": "app/x", "value": "by cert"}));
    assert_eq!(outcome(&reply, "SET"), "ok", "{reply}");
    assert_eq!(
        request(&mut a, "GET", json!({"key": "app/x"}))["payload"]["value"],
        "by cert"
    );
    let reply = request(&mut a, "SET", json!({"key": "other", "value": "x"}));
    assert_eq!(outcome(&reply, "SET"), "PERMISSION_DENIED", "{reply}");
    assert_eq!(keys_of(&request(&mut a, "KEYS", json!({}))), ["app/x"]);
    // A certificate whose name is no user's logs no one in.
    let mut m = as_cert("mallory");
    let reply = request(&mut m, "GET", json!({"key": "app/x"}));
    assert_eq!(outcome(&reply, "GET"), "UNAUTHENTICATED", "{reply}");
    w.assert_no_secrets();
}

#[test]
fn refused_changes_new_passwords_and_sessions_owned_by_their_user() {
    let mut w = World::start(1, &[]);
    // Auth cannot be enabled before root exists and holds the root role.
    let mut early = w.anon(w.leader);
    let reply = request(&mut early, "AUTH", json!({"op": "enable"}));
    assert_eq!(outcome(&reply, "AUTH"), "BAD_REQUEST", "{reply}");
    must(
        &mut early,
        "USER",
        json!({"op": "add", "name": "root", "password": ROOT_PW}),
    );
    let reply = request(&mut early, "AUTH", json!({"op": "enable"}));
    assert_eq!(outcome(&reply, "AUTH"), "BAD_REQUEST", "{reply}");
    assert_eq!(
        must(&mut early, "AUTH", json!({"op": "status"}))["enabled"],
        false
    );
    must(&mut early, "USER", json!({"op": "delete", "name": "root"}));
    drop(early);

    let mut admin = w.set_up_rbac();
    // While auth is on, root cannot be removed or lose its role.
    for change in [
        json!({"op": "delete", "name": "root"}),
        json!({"op": "revoke-role", "name": "root", "role": "root"}),
    ] {
        let reply = request(&mut admin, "USER", change.clone());
        assert_eq!(outcome(&reply, "USER"), "BAD_REQUEST", "{change}: {reply}");
    }
    assert!(log_in(&mut w.anon(w.leader), &root()).unwrap());

    // A new password: the old one stops working, the new one works, and a
    // connection logged in with the old one is logged out.
    let mut before = w.conn(w.leader, &alice());
    let passwd = json!({"op": "passwd", "name": "alice", "password": NEW_ALICE_PW});
    must(&mut admin, "USER", passwd);
    assert!(!log_in(&mut w.anon(w.leader), &alice()).unwrap());
    let mut after = w.conn(w.leader, &Login::new("alice", NEW_ALICE_PW));
    let set = |c: &mut Client, key: &str, session: Value| {
        let mut payload = json!({"key": key, "value": "s"});
        if let (Some(p), Some(s)) = (payload.as_object_mut(), session.as_object()) {
            p.extend(s.clone());
        }
        outcome(&request(c, "SET", payload), "SET")
    };
    assert_eq!(set(&mut before, "app/b", json!({})), "UNAUTHENTICATED");
    assert_eq!(set(&mut after, "app/b", json!({})), "ok");

    // A session belongs to the user that opened it: bob may not write in
    // alice's, even to a key he may write; alice may, on another connection.
    let id = must(&mut after, "REGISTER_CLIENT", Value::Null)["client_id"].clone();
    assert!(id.is_u64(), "{id}");
    let mut b = w.conn(w.leader, &bob());
    let session = |seq: u64| json!({"client_id": id, "seq": seq});
    // For bob the session is not open (docs/protocol.md), and its cached
    // replies are not his to see.
    assert_eq!(set(&mut b, "logs/s", session(1)), "SESSION_EXPIRED");
    assert_eq!(
        must(&mut admin, "GET", json!({"key": "logs/s"}))["value"],
        Value::Null
    );
    let mut again = w.conn(w.leader, &Login::new("alice", NEW_ALICE_PW));
    assert_eq!(set(&mut again, "app/s", session(2)), "ok");
    assert_eq!(set(&mut b, "logs/s", json!({})), "ok");
    w.assert_no_secrets();
}

/// A TCP connection to `to` from the loopback address `from` (another
/// source than 127.0.0.1, as far as the node can tell).
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("{to}: not IPv4");
    };
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream made of it; both
    // addresses are valid sockaddr_in of `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        let bound = libc::bind(fd, (&raw const local).cast(), len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let remote = sockaddr(to.ip().octets(), to.port());
        let connected = libc::connect(fd, (&raw const remote).cast(), len);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// Logs `login` in over `stream` and returns the reply line.
fn login_over(stream: std::net::TcpStream, login: &Login) -> Value {
    use std::io::{BufRead, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = authenticate_line(login).to_string();
    line.push('\n');
    (&stream).write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
}

#[test]
fn a_flood_of_abandoned_logins_from_one_address_does_not_block_logins_from_another() {
    let mut w = World::start(1, &[]);
    let _admin = w.set_up_rbac();
    let addr = w.cluster.addr(w.leader);
    // Connect, ask for a password check, hang up: from 127.0.0.1, by a few
    // threads, until alice has logged in from 127.0.0.2 five times (at most
    // 5 s or 20,000 connections).
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ghost = format!("{}\n", authenticate_line(&Login::new("ghost", "x")));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (sent, stop, ghost) = (sent.clone(), stop.clone(), ghost.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                while !stop.load(Relaxed)
                    && started.elapsed() < Duration::from_secs(5)
                    && sent.load(Relaxed) < 20_000
                {
                    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                        let _ = s.write_all(ghost.as_bytes());
                        sent.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    sleep(Duration::from_millis(300));
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let reply = login_over(connect_from([127, 0, 0, 2], addr), &alice());
        outcomes.push(outcome(&reply, "AUTHENTICATE"));
    }
    let during = sent.load(Relaxed);
    stop.store(true, Relaxed);
    for thread in flood {
        thread.join().unwrap();
    }
    assert!(during > 50, "the flood sent only {during} logins");
    assert!(
        outcomes.iter().all(|o| o == "ok"),
        "alice's logins during a flood of {during}: {outcomes:?}"
    );
    // Root's user changes (hashes) get through after it too.
    let mut admin = w.conn(w.leader, &root());
    add_user(&mut admin, &Login::new("dave", CAROL_PW), &[]);
    assert!(!log_in(&mut w.anon(w.leader), &Login::new("ghost", "x")).unwrap());
    w.assert_no_secrets();
}

#[test]
fn wrong_passwords_for_one_user_on_fresh_connections_are_answered_more_slowly() {
    let mut w = World::start(1, &[]);
    let _admin = w.set_up_rbac();
    // Each guess on a connection of its own: the delay grows per user name
    // (200 ms, doubling), not only per connection. Lower bounds only.
    for i in 0..4 {
        let (took, reply) = timed_login(&mut w.anon(w.leader), &Login::new("alice", WRONG_PW));
        assert_eq!(
            outcome(&reply, "AUTHENTICATE"),
            "UNAUTHENTICATED",
            "{reply}"
        );
        let floor = Duration::from_millis(180 << i);
        assert!(
            took >= floor,
            "guess {} answered after {took:?}, before {floor:?}",
            i + 1
        );
    }
    // The right password is answered at once, and starts the count again.
    let (took, reply) = timed_login(&mut w.anon(w.leader), &alice());
    assert_eq!(outcome(&reply, "AUTHENTICATE"), "ok", "{reply}");
    assert!(
        took < Duration::from_secs(3),
        "a right password waited {took:?}"
    );
    let (took, _) = timed_login(&mut w.anon(w.leader), &Login::new("alice", WRONG_PW));
    assert!(
        took < Duration::from_millis(1400),
        "after a success, {took:?}"
    );
    w.assert_no_secrets();
}
