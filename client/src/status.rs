//! STATUS of one node on a connection of its own, for the shell's status
//! table and for finding the leader. With credentials the connection logs
//! in first: with auth enabled, STATUS needs a logged-in user.

use std::time::{Duration, Instant};

use poncho_protocol::{encode_request, ClientRequest, StatusReply};

use crate::auth::{authenticate, Credentials, OpenError};
use crate::conn::Connection;
use crate::tls::Tls;

/// STATUS of the node at `addr`, once, within `timeout`. Returns the reply
/// (or why there is none, as a message to print) and the lines exchanged.
pub fn status_of(addr: &str, timeout: Duration) -> (Result<StatusReply, String>, Vec<String>) {
    status_with(addr, timeout, None)
}

/// [`status_of`], over TLS if `tls` is given.
pub fn status_with(
    addr: &str,
    timeout: Duration,
    tls: Option<&Tls>,
) -> (Result<StatusReply, String>, Vec<String>) {
    status_as(addr, timeout, tls, None)
}

/// [`status_with`], logged in with `credentials` first if they are given
/// (the exchanged lines then start with a note of who logged in, never the
/// password).
pub fn status_as(
    addr: &str,
    timeout: Duration,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> (Result<StatusReply, String>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut wire = Vec::new();
    let result = Connection::connect(addr, deadline, tls)
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            if let Some(credentials) = credentials {
                log_in(&mut conn, credentials, deadline, &mut wire)?;
            }
            ask(&mut conn, deadline, &mut wire)
        });
    (result, wire)
}

fn log_in(
    conn: &mut Connection,
    credentials: &Credentials,
    deadline: Instant,
    wire: &mut Vec<String>,
) -> Result<(), String> {
    match authenticate(conn, credentials, deadline, None, false) {
        Ok(user) => {
            wire.push(format!("-- {} logged in as {user:?}", conn.addr()));
            Ok(())
        }
        Err(OpenError::Conn(e)) => Err(e.to_string()),
        Err(OpenError::Refused(e)) => Err(e.message()),
    }
}

fn ask(
    conn: &mut Connection,
    deadline: Instant,
    wire: &mut Vec<String>,
) -> Result<StatusReply, String> {
    let mut line = Vec::new();
    encode_request(&mut line, Some(1), &ClientRequest::Status);
    wire.push(format!("-> {}", String::from_utf8_lossy(&line).trim_end()));
    let reply = conn
        .exchange(&line, Some(1), deadline, None, false)
        .map_err(|e| e.to_string())?;
    wire.push(format!("<- {}", reply.line));
    if reply.envelope.msg_type == "STATUS" {
        serde_json::from_value(reply.envelope.payload).map_err(|e| format!("bad STATUS reply: {e}"))
    } else {
        Err(match reply.envelope.error() {
            Some(e) => e.to_string(),
            None => format!("unexpected reply {}", reply.line),
        })
    }
}
