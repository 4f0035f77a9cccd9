//! Users and roles in end-to-end tests (issue 12, part 5): logging a
//! connection in, the requests that set auth up, and STATUS over logged-in
//! connections for harnesses that poll it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::{Client, NodeProc};

/// A user name and password a connection logs in with (AUTHENTICATE).
#[derive(Clone, Debug)]
pub struct Login {
    pub user: String,
    pub password: String,
}

impl Login {
    pub fn new(user: &str, password: &str) -> Login {
        Login {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// The AUTHENTICATE line for `login`.
pub fn authenticate_line(login: &Login) -> Value {
    json!({"msg_type": "AUTHENTICATE",
           "payload": {"user": login.user, "password": login.password}})
}

/// Logs `client` in; whether the node took the password.
pub fn log_in(client: &mut Client, login: &Login) -> std::io::Result<bool> {
    let reply = client.request(&authenticate_line(login))?;
    Ok(reply["msg_type"] == "AUTHENTICATE" && reply["payload"]["user"] == login.user.as_str())
}

/// Sends `msg_type` with `payload` and returns the reply's payload; fails
/// the test if the reply is not a success.
pub fn must(client: &mut Client, msg_type: &str, payload: Value) -> Value {
    let request = json!({"msg_type": msg_type, "payload": payload});
    let reply = client
        .request(&request)
        .unwrap_or_else(|e| panic!("{request}: {e}"));
    assert_eq!(reply["msg_type"], msg_type, "{request}: {reply}");
    reply["payload"].clone()
}

/// `USER add`, then `grant-role` of each of `roles`.
pub fn add_user(client: &mut Client, login: &Login, roles: &[&str]) {
    let add = json!({"op": "add", "name": login.user, "password": login.password});
    must(client, "USER", add);
    for role in roles {
        let grant = json!({"op": "grant-role", "name": login.user, "role": role});
        must(client, "USER", grant);
    }
}

/// `ROLE add` of `name` with `access` ("read", "write", "readwrite") on
/// each of `ranges`: `("key", K)` or `("prefix", P)`.
pub fn add_role(client: &mut Client, name: &str, ranges: &[(&str, &str)], access: &str) {
    must(client, "ROLE", json!({"op": "add", "name": name}));
    for &(kind, range) in ranges {
        let mut grant = json!({"op": "grant-permission", "name": name, "access": access});
        grant[kind] = json!(range);
        must(client, "ROLE", grant);
    }
}

/// Creates user `root` with role `root`, enables auth, and logs `client`
/// (on the leader) in as root.
pub fn enable_auth(client: &mut Client, root: &Login) {
    assert_eq!(root.user, "root");
    add_user(client, root, &["root"]);
    let enabled = must(client, "AUTH", json!({"op": "enable"}));
    assert_eq!(enabled["enabled"], true, "{enabled}");
    assert!(log_in(client, root).expect("AUTHENTICATE root"), "root");
}

/// STATUS for a harness: with no login, over a new connection each time (as
/// before auth); with one, over a connection per node logged in once and
/// kept, since each login costs the node a password check (tens of ms of
/// CPU), too dear for a harness that polls every 20 ms.
#[derive(Default)]
pub struct StatusPoller {
    login: Option<Login>,
    conns: Mutex<HashMap<SocketAddr, Client>>,
}

impl StatusPoller {
    /// From now on STATUS is asked as `login`.
    pub fn log_in_as(&mut self, login: Login) {
        self.login = Some(login);
        self.conns_mut().clear();
    }

    /// Whom STATUS is asked as, if anyone.
    pub fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    fn conns_mut(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Client>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// STATUS of the node at `addr`, over a kept connection, or a new one
    /// from `connect`; None if it does not answer.
    pub fn status(
        &self,
        addr: SocketAddr,
        connect: impl Fn() -> std::io::Result<Client>,
    ) -> Option<Value> {
        let Some(login) = &self.login else {
            return NodeProc::status_over(connect());
        };
        let mut conns = self.conns_mut();
        // A kept connection may have died with its node: then a new one.
        if let Some(mut client) = conns.remove(&addr) {
            if let Some(status) = status_on(&mut client) {
                conns.insert(addr, client);
                return Some(status);
            }
        }
        let mut client = connect().ok()?;
        if !log_in(&mut client, login).ok()? {
            return None;
        }
        let status = status_on(&mut client)?;
        conns.insert(addr, client);
        Some(status)
    }
}

/// STATUS over `client`, if it answers with one.
pub(crate) fn status_on(client: &mut Client) -> Option<Value> {
    let reply = client.request(&json!({"msg_type": "STATUS"})).ok()?;
    (reply["msg_type"] == "STATUS").then(|| reply["payload"].clone())
}
