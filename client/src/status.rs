//! STATUS of one node on a connection of its own, for the shell's status
//! table and for finding the leader.

use std::time::{Duration, Instant};

use poncho_protocol::{encode_request, ClientRequest, StatusReply};

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
    let deadline = Instant::now() + timeout;
    let mut wire = Vec::new();
    let mut line = Vec::new();
    encode_request(&mut line, Some(1), &ClientRequest::Status);
    let result = match Connection::connect(addr, deadline, tls) {
        Err(e) => Err(e.to_string()),
        Ok(mut conn) => {
            wire.push(format!("-> {}", String::from_utf8_lossy(&line).trim_end()));
            match conn.exchange(&line, Some(1), deadline, None, false) {
                Ok(reply) => {
                    wire.push(format!("<- {}", reply.line));
                    if reply.envelope.msg_type == "STATUS" {
                        serde_json::from_value(reply.envelope.payload)
                            .map_err(|e| format!("bad STATUS reply: {e}"))
                    } else {
                        Err(match reply.envelope.error() {
                            Some(e) => e.to_string(),
                            None => format!("unexpected reply {}", reply.line),
                        })
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    (result, wire)
}
