//! What running a command gives: a [`Done`] rendered three ways (`plain` for
//! scripts and one-shot use, `pretty` for people at the prompt, and `json`
//! fields for `--json`) or a [`Failure`]; and the helpers the commands in
//! `commands/` share to read replies and render values.

use std::sync::Mutex;

use poncho_protocol::{ErrorCode, RaftMessage};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::client::{ClientError, ClusterClient, Reply};
use crate::line::{quote, quote_always};
use crate::{Mode, Output};

/// A command that worked.
#[derive(Debug, Default)]
pub struct Done {
    /// What `--json` prints besides `ok` and `command`.
    pub json: Map<String, Value>,
    /// For scripts: one line (a table for `status` and `help`).
    pub plain: String,
    /// For people at the prompt.
    pub pretty: String,
    /// What to do next, if anything (`login root` after `auth enable`):
    /// after `pretty` at the prompt, on stderr for scripts, `hint` in
    /// `--json`.
    pub hint: Option<String>,
    /// The command printed its results as they came (`watch`): `plain`
    /// is not printed after them; `pretty` and `--json`'s object are the
    /// summary that ends them.
    pub streamed: bool,
    /// The exit status it asks for though it worked (`lock NAME COMMAND`:
    /// COMMAND's): a one-shot run exits with it, and a script counts a
    /// non-zero one as the line's failure.
    pub status: u8,
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
            hint: None,
            streamed: false,
            status: 0,
        }
    }

    /// A command that printed its results as they came: only `pretty` (at
    /// the prompt) or `json` (with `--json`) is left to print.
    pub fn streamed(pretty: impl Into<String>, json: Value) -> Done {
        Done {
            streamed: true,
            ..Done::new("", pretty, json)
        }
    }

    /// A change that worked: `OK` for scripts, `pretty` for people, and
    /// the log index it was applied at, if the reply says.
    pub fn changed(pretty: impl Into<String>, index: Option<u64>, mut json: Value) -> Done {
        if let (Some(i), Value::Object(m)) = (index, &mut json) {
            m.insert("index".into(), Value::from(i));
        }
        Done::new("OK", pretty, json)
    }

    /// Names (`user list`, `role list`): on one line for scripts, numbered
    /// for people.
    pub fn names(names: &[String], json: Value) -> Done {
        Done::new(plain_words(names), numbered(names), json)
    }

    pub fn with_status(mut self, status: u8) -> Done {
        self.status = status;
        self
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Done {
        self.hint = hint;
        self
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

    /// One line for people: `usage: ...` or `CODE: message`, and what to
    /// do next for a connection that has not logged in.
    pub fn text(&self) -> String {
        match self {
            Failure::Usage(m) => m.clone(),
            Failure::Call(ClientError::Server(e))
                if e.code == ErrorCode::Unauthenticated && !e.message.contains("login") =>
            {
                format!(
                    "{}: {}: log in with --user NAME or `login NAME`",
                    e.code, e.message
                )
            }
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

/// How this run of the shell shows results: set once at start-up, read
/// by a command that prints as it goes (`watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presentation {
    /// `--json`: one JSON object per line.
    pub json: bool,
    pub run: RunMode,
}

/// Where the commands come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunMode {
    /// One command on the command line.
    #[default]
    OneShot,
    /// Commands from stdin, a file or a pipe.
    Script,
    /// The REPL on a terminal.
    Interactive,
}

static PRESENTATION: std::sync::OnceLock<Presentation> = std::sync::OnceLock::new();

/// Sets how results are shown (once; later calls change nothing).
pub fn set_presentation(p: Presentation) {
    let _ = PRESENTATION.set(p);
}

/// How results are shown (one-shot plain text, if never set).
pub fn presentation() -> Presentation {
    PRESENTATION.get().copied().unwrap_or_default()
}

pub fn payload<T: DeserializeOwned>(reply: Reply) -> Result<T, Failure> {
    serde_json::from_value(reply.envelope.payload).map_err(|e| {
        Failure::Call(ClientError::Protocol(format!(
            "unexpected {} reply from {}: {e}",
            reply.envelope.msg_type, reply.addr
        )))
    })
}

/// Where the next page of a listing starts: the reply's `next_key`, which
/// must lie past where this page started, or a node that kept answering
/// the same page would keep the shell asking for ever.
pub fn next_page(started_at: &str, next_key: String) -> Result<String, Failure> {
    if next_key.as_str() > started_at {
        Ok(next_key)
    } else {
        Err(Failure::Call(ClientError::Protocol(format!(
            "the node's next page starts at {}, not past {}: stopped",
            quote_always(&next_key),
            quote_always(started_at)
        ))))
    }
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

/// Names or keys on one line, each quoted if it must be, for scripts.
pub fn plain_words(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
    quoted.join(" ")
}

/// A numbered list, one item a line, for people; `(empty)` for none.
pub fn numbered(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|k| quote_always(k)).collect();
    numbered_lines(&quoted)
}

/// [`numbered`] for lines already quoted as they must be.
pub fn numbered_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return "(empty)".to_string();
    }
    let width = lines.len().to_string().len();
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{:>width$}) {line}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
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

/// Where the command running now prints its results, for one that shows
/// some before it ends (`lease keepalive`'s renewals). `None` until the
/// shell says (in unit tests).
static RUNNING: Mutex<Option<(Output, Mode)>> = Mutex::new(None);

/// Says how the command about to run prints (main and the REPL, before
/// each command).
pub fn set_running(output: Output, mode: Mode) {
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some((output, mode));
}

/// How the command running now prints, if the shell said.
pub fn running() -> Option<(Output, Mode)> {
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints a result a command gives before its last one, as that last one
/// will be: `pretty` at the prompt, `plain` in scripts and one-shot, one
/// JSON object with `--json` (its hint, if any, alike).
pub fn show_partial(command: &str, done: Done) {
    match running() {
        Some((Output::Json, mode)) => {
            let line = match mode {
                Mode::Script(n) => Some(n),
                _ => None,
            };
            crate::print_json_done(line, command, done);
        }
        Some((Output::Text, Mode::Interactive)) => {
            crate::out(&done.pretty);
            if let Some(hint) = done.hint {
                crate::out(&format!("(hint) {hint}"));
            }
        }
        _ => {
            crate::out(&done.plain);
            if let Some(hint) = done.hint {
                eprintln!("hint: {hint}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poncho_protocol::ErrorReply;

    #[test]
    fn plain_values_stay_on_one_line() {
        assert_eq!(plain_value("hello world"), "hello world");
        assert_eq!(plain_value("two\nlines"), "\"two\\nlines\"");
        assert_eq!(plain_value(""), "");
    }

    #[test]
    fn failures_have_exit_codes_and_one_line_texts() {
        assert_eq!(next_page("a", "b".into()).ok().as_deref(), Some("b"));
        for stuck in ["a", ""] {
            let e = next_page("a", stuck.into()).expect_err(stuck);
            assert!(e.message().contains("not past"), "{}", e.message());
        }
        let u = Failure::Usage("usage: get KEY".into());
        assert_eq!(
            (u.exit_code(), u.code(), u.text()),
            (2, "USAGE".into(), "usage: get KEY".into())
        );
        let c = Failure::Call(ClientError::Unreachable("no node answered".into()));
        assert_eq!(c.exit_code(), 1);
        assert_eq!(c.text(), "UNREACHABLE: no node answered");
    }

    #[test]
    fn a_connection_that_has_not_logged_in_is_told_how_to() {
        let server = |code, m: &str| Failure::Call(ClientError::Server(ErrorReply::new(code, m)));
        let f = server(ErrorCode::Unauthenticated, "auth is enabled");
        assert_eq!(
            f.text(),
            "UNAUTHENTICATED: auth is enabled: log in with --user NAME or `login NAME`"
        );
        // The server's own advice is not repeated.
        let f = server(
            ErrorCode::Unauthenticated,
            "use --user NAME or `login NAME`",
        );
        assert_eq!(f.text(), "UNAUTHENTICATED: use --user NAME or `login NAME`");
        let f = server(
            ErrorCode::PermissionDenied,
            "user \"a\" may not write key \"x\"",
        );
        assert_eq!(
            f.text(),
            "PERMISSION_DENIED: user \"a\" may not write key \"x\""
        );
        // A refused login says what is wrong, not to log in.
        let f = Failure::Call(ClientError::Login("wrong user name or password".into()));
        assert_eq!(f.text(), "UNAUTHENTICATED: wrong user name or password");
    }
}
