//! Logging in: the [`Credentials`] a client holds, `AUTHENTICATE` on one
//! connection, and keeping passwords out of `--verbose` output.
//!
//! A node logs a connection in for the rest of that connection, so a client
//! with credentials sends `AUTHENTICATE` as the first line of every
//! connection it opens, before `REGISTER_CLIENT` or anything else. A node
//! that says no (a wrong user name or password) is a final answer,
//! [`ClientError::Login`]: the same password is not tried again.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use poncho_protocol::{
    encode_request, AuthenticateReply, AuthenticateRequest, ClientRequest, ErrorCode, ErrorReply,
    Password, ReplyError,
};
use serde_json::Value;

use crate::conn::{ConnError, Connection};
use crate::error::ClientError;

/// The req_id of the `AUTHENTICATE` that opens a connection. Any req_id
/// will do: it is the connection's first request.
const LOGIN_REQ_ID: u64 = 0;
/// What `--verbose` shows instead of a password.
pub const REDACTED: &str = "<redacted>";

/// A user name and password. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: Password,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: Password(password.into()),
        }
    }

    /// Who these credentials log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    fn request(&self) -> ClientRequest {
        ClientRequest::Authenticate(AuthenticateRequest {
            user: self.user.clone(),
            password: self.password.clone(),
        })
    }
}

/// Why a connection could not be opened and logged in.
#[derive(Debug)]
pub enum OpenError {
    /// The connection failed (or Ctrl-C) before the node answered: another
    /// connection, perhaps to another node, may do better.
    Conn(ConnError),
    /// The node answered no ([`ClientError::Login`]), or with something that
    /// is not the protocol: final.
    Refused(ClientError),
}

/// Sends `AUTHENTICATE` on `conn`, which must not have carried a request
/// yet, and reads its answer by `deadline`. Returns the user the node
/// logged the connection in as. `verbose` prints the lines, the password
/// redacted.
pub fn authenticate(
    conn: &mut Connection,
    credentials: &Credentials,
    deadline: Instant,
    interrupt: Option<&AtomicBool>,
    verbose: bool,
) -> Result<String, OpenError> {
    let mut line = Vec::new();
    encode_request(&mut line, Some(LOGIN_REQ_ID), &credentials.request());
    let reply = conn
        .exchange(&line, Some(LOGIN_REQ_ID), deadline, interrupt, verbose)
        .map_err(OpenError::Conn)?;
    let user = credentials.user();
    let addr = conn.addr();
    match reply.envelope.success::<AuthenticateReply>() {
        Ok(r) => Ok(r.user),
        Err(ReplyError::Error(e)) => Err(OpenError::Refused(ClientError::Login(refusal(
            addr, user, &e,
        )))),
        Err(e) => Err(OpenError::Refused(ClientError::Protocol(format!(
            "{addr}: logging in {user:?}: {e}"
        )))),
    }
}

/// Why `addr` did not log `user` in, for people.
fn refusal(addr: &str, user: &str, e: &ErrorReply) -> String {
    const WRONG: &str = "wrong user name or password";
    let head = format!("{addr} did not log in {user:?}");
    match e.code {
        ErrorCode::Unauthenticated if e.message.contains(WRONG) => format!("{head}: {WRONG}"),
        ErrorCode::Unauthenticated => format!("{head}: {WRONG} ({})", e.message),
        code => format!("{head}: {code}: {}", e.message),
    }
}

/// `line` as `--verbose` prints it: every `"password"` field's value
/// replaced by [`REDACTED`]. A line that does not parse as JSON and holds
/// the word `password` is withheld whole.
pub fn redact(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if !text.contains("password") {
        return text.to_string();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(mut value) => {
            redact_value(&mut value);
            value.to_string()
        }
        Err(_) => format!("(a line of {} bytes that may hold a password)", text.len()),
    }
}

fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "password" {
                    *v = Value::from(REDACTED);
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_every_password_and_keeps_the_rest() {
        let mut line = Vec::new();
        encode_request(
            &mut line,
            Some(3),
            &Credentials::new("alice", "hunter2-secret").request(),
        );
        let shown = redact(&line);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains(REDACTED),
            "{shown}"
        );
        assert!(shown.contains("AUTHENTICATE"), "{shown}");
        let nested = br#"{"a":[{"password":"x1-secret"}],"b":{"password":"x2-secret"}}"#;
        let shown = redact(nested);
        assert!(!shown.contains("secret"), "{shown}");
        // Not JSON: withheld.
        let shown = redact(b"password hunter2-secret\n");
        assert!(!shown.contains("hunter2"), "{shown}");
        // Nothing to hide: as it is.
        assert_eq!(
            redact(b"{\"msg_type\":\"GET\"}\n"),
            "{\"msg_type\":\"GET\"}"
        );
    }

    #[test]
    fn credentials_keep_the_password_out_of_debug() {
        let shown = format!("{:?}", Credentials::new("bob", "pw-secret"));
        assert!(
            !shown.contains("pw-secret") && shown.contains("bob"),
            "{shown}"
        );
    }
}
