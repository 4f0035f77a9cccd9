//! What running a command gives: a [`Done`] rendered three ways (`plain` for
//! scripts and one-shot use, `pretty` for people at the prompt, and `json`
//! fields for `--json`) or a [`Failure`]; and the helpers the commands in
//! `commands/` share to read replies and render values.

use poncho_protocol::RaftMessage;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::client::{ClientError, ClusterClient, Reply};
use crate::line::quote_always;

/// A command that worked.
#[derive(Debug, Default)]
pub struct Done {
    /// What `--json` prints besides `ok` and `command`.
    pub json: Map<String, Value>,
    /// For scripts: one line (a table for `status` and `help`).
    pub plain: String,
    /// For people at the prompt.
    pub pretty: String,
}

impl Done {
    pub fn new(plain: impl Into<String>, pretty: impl Into<String>, json: Value) -> Done {
        Done {
            json: match json {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            plain: plain.into(),
            pretty: pretty.into(),
        }
    }
}

/// A command that did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not a command, or the wrong arguments: exit status 2.
    Usage(String),
    /// The cluster said no, or could not be reached in time: exit status 1.
    Call(ClientError),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Call(_) => 1,
        }
    }

    pub fn code(&self) -> String {
        match self {
            Failure::Usage(_) => "USAGE".into(),
            Failure::Call(e) => e.code(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Usage(m) => m.clone(),
            Failure::Call(e) => e.message(),
        }
    }

    /// One line for people: `usage: ...` or `CODE: message`.
    pub fn text(&self) -> String {
        match self {
            Failure::Usage(m) => m.clone(),
            Failure::Call(e) => format!("{}: {}", e.code(), e.message()),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Call(e)
    }
}

pub type Outcome = Result<Done, Failure>;

pub fn payload<T: DeserializeOwned>(reply: Reply) -> Result<T, Failure> {
    serde_json::from_value(reply.envelope.payload).map_err(|e| {
        Failure::Call(ClientError::Protocol(format!(
            "unexpected {} reply from {}: {e}",
            reply.envelope.msg_type, reply.addr
        )))
    })
}

/// The value as a script prints it: as it is, unless it holds a control
/// character (a newline would break one line per command), then quoted.
pub fn plain_value(v: &str) -> String {
    if v.chars().any(char::is_control) {
        quote_always(v)
    } else {
        v.to_string()
    }
}

pub fn pretty_value(v: &Option<String>) -> String {
    match v {
        Some(v) => quote_always(v),
        None => "(nil)".to_string(),
    }
}

/// Sends a Raft probe (`append`, `vote`) to the connected node and renders
/// the reply line it gets.
pub fn probe(client: &mut ClusterClient, message: &RaftMessage) -> Outcome {
    let reply = client.probe(message)?;
    if let Some(e) = reply.envelope.error() {
        return Err(Failure::Call(ClientError::Server(e)));
    }
    let pretty = format!("{}  (from {})", reply.line, reply.addr);
    Ok(Done::new(
        reply.line.clone(),
        pretty,
        json!({
            "node": reply.addr,
            "msg_type": reply.envelope.msg_type,
            "payload": reply.envelope.payload,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_on_one_line() {
        assert_eq!(plain_value("hello world"), "hello world");
        assert_eq!(plain_value("two\nlines"), "\"two\\nlines\"");
        assert_eq!(plain_value(""), "");
    }

    #[test]
    fn failures_have_exit_codes_and_one_line_texts() {
        let u = Failure::Usage("usage: get KEY".into());
        assert_eq!(
            (u.exit_code(), u.code(), u.text()),
            (2, "USAGE".into(), "usage: get KEY".into())
        );
        let c = Failure::Call(ClientError::Unreachable("no node answered".into()));
        assert_eq!(c.exit_code(), 1);
        assert_eq!(c.text(), "UNREACHABLE: no node answered");
    }
}
