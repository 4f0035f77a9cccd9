//! Client sessions: the `client_id` a `REGISTER_CLIENT` reply gives, and
//! the `seq` each write in it carries. A write retried with the same fields
//! is applied at most once.

use std::time::Instant;

use poncho_protocol::{encode_request, ClientRequest, RegisterClientReply, SessionFields};

use crate::conn::{Connection, Reply};
use crate::error::ClientError;

/// The session writes carry, once opened, and the last `seq` used in it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    client_id: Option<u64>,
    seq: u64,
}

impl Session {
    /// The session's id, if one is open.
    pub fn client_id(&self) -> Option<u64> {
        self.client_id
    }

    /// A session the cluster registered: its writes start at `seq` 1.
    pub fn open(&mut self, client_id: u64) {
        self.client_id = Some(client_id);
        self.seq = 0;
    }

    /// The session is gone (or a write's outcome in it is unknown): the
    /// next write opens a new one.
    pub fn forget(&mut self) {
        self.client_id = None;
    }

    /// The fields of the next write, with a fresh `seq`; `None` if no
    /// session is open.
    pub fn next_fields(&mut self) -> Option<SessionFields> {
        let client_id = self.client_id?;
        self.seq += 1;
        Some(SessionFields {
            client_id: Some(client_id),
            seq: Some(self.seq),
        })
    }
}

/// `request` with `fields` as its session fields, if it is a write applied
/// in a session ([`ClientRequest::set_session`]); any other request as it is.
pub fn in_session(request: &ClientRequest, fields: SessionFields) -> ClientRequest {
    let mut request = request.clone();
    request.set_session(fields);
    request
}

/// The `client_id` of a successful `REGISTER_CLIENT` reply.
pub fn registered_id(reply: &Reply) -> Result<u64, ClientError> {
    serde_json::from_value::<RegisterClientReply>(reply.envelope.payload.clone())
        .map(|r| r.client_id)
        .map_err(|e| {
            ClientError::Protocol(format!(
                "unexpected {} reply from {}: {e}",
                reply.envelope.msg_type, reply.addr
            ))
        })
}

/// Opens a session on `conn`, once, without retries (the bench opens one
/// per connection before driving it on its own).
pub fn register(conn: &mut Connection, deadline: Instant) -> Result<u64, ClientError> {
    let mut line = Vec::new();
    encode_request(&mut line, None, &ClientRequest::RegisterClient);
    let reply = conn
        .exchange(&line, None, deadline, None, false)
        .map_err(|e| ClientError::Unreachable(format!("{}: {e}", conn.addr())))?;
    if let Some(error) = reply.envelope.error() {
        return Err(ClientError::Server(error));
    }
    if reply.envelope.msg_type != "REGISTER_CLIENT" {
        return Err(ClientError::Protocol(format!(
            "unexpected reply to REGISTER_CLIENT from {}: {}",
            reply.addr, reply.line
        )));
    }
    registered_id(&reply)
}
