//! The interactive shell: a rustyline editor with command completion,
//! argument hints, history kept in the home directory, and a prompt that
//! shows the node we talk to and its role.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hint, Hinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use crate::assist;
use crate::client::{ClientError, ClusterClient, Credentials, Route, Tls};
use crate::commands::{self, Command, Lines, NextLine};
use crate::exec::Failure;
use crate::line::quote;
use crate::{print_failure, print_json_done, Mode, Output};
use poncho_protocol::{ClientRequest, KeysReply, KeysRequest};

/// The history file: `$PONCHO_HISTFILE`, else `~/.poncho_history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PONCHO_HISTFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".poncho_history"))
}

struct ShellHelper {
    addrs: Vec<String>,
    /// The node the shell talks to: asked for key names on Tab.
    node: Option<String>,
    /// How the shell connects (TLS or not), for those questions too.
    tls: Option<Tls>,
    /// Who the shell logs in as, for those questions too.
    credentials: Option<Credentials>,
}

impl Completer for ShellHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let line = &line[..pos];
        let (start, candidates) = assist::complete(line, &self.addrs);
        if !candidates.is_empty() {
            return Ok((start, candidates));
        }
        let (Some(node), Some((start, prefix))) = (&self.node, assist::key_being_typed(line))
        else {
            return Ok((start, candidates));
        };
        let keys = keys_with_prefix(node, &prefix, self.tls.as_ref(), self.credentials.as_ref());
        Ok((
            start,
            keys.iter().map(|k| format!("{} ", quote(k))).collect(),
        ))
    }
}

/// How long Tab may wait for the cluster before it offers nothing.
const KEY_COMPLETION_TIMEOUT: Duration = Duration::from_millis(300);
/// The most key names Tab lists.
const KEY_COMPLETION_LIMIT: usize = 200;

/// Key names starting with `prefix`, from a KEYS request to `node` (or to
/// the leader it names), through a client of its own so that a slow or dead
/// node costs Tab at most a moment and never disturbs the shell's connection
/// (logged in as the shell is). Any failure is no candidates: completion is
/// a convenience.
fn keys_with_prefix(
    node: &str,
    prefix: &str,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Vec<String> {
    let mut client = ClusterClient::new(vec![node.to_string()], KEY_COMPLETION_TIMEOUT, false)
        .with_tls(tls.cloned())
        .with_credentials(credentials.cloned());
    let request = ClientRequest::Keys(KeysRequest {
        prefix: prefix.to_string(),
        from: None,
    });
    client
        .request(&request, Route::Leader)
        .ok()
        .and_then(|reply| serde_json::from_value::<KeysReply>(reply.envelope.payload).ok())
        .map(|r| r.keys.into_iter().take(KEY_COMPLETION_LIMIT).collect())
        .unwrap_or_default()
}

/// The arguments left to type, shown dimmed after the cursor. Not inserted
/// by the right arrow: they are placeholders, not text.
struct ArgHint(String);

impl Hint for ArgHint {
    fn display(&self) -> &str {
        &self.0
    }

    fn completion(&self) -> Option<&str> {
        None
    }
}

impl Hinter for ShellHelper {
    type Hint = ArgHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<ArgHint> {
        if pos < line.len() {
            return None;
        }
        assist::hint(line).map(ArgHint)
    }
}

impl Highlighter for ShellHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }
}

impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

fn prompt(client: &mut ClusterClient) -> String {
    if client.connected().is_none() {
        // The node died or a command was cancelled: find one again.
        let _ = client.connect_quietly();
    }
    let role = client.quiet_status().map(|s| s.role);
    match (client.connected(), role) {
        (Some(addr), Some(role)) => format!("poncho {addr} ({role})> "),
        (Some(addr), None) => format!("poncho {addr} (?)> "),
        (None, _) => "poncho (not connected)> ".to_string(),
    }
}

fn elapsed(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("({:.1} ms)", d.as_secs_f64() * 1000.0)
    } else {
        format!("({:.2} s)", d.as_secs_f64())
    }
}

type ShellEditor = Editor<ShellHelper, DefaultHistory>;

fn new_editor() -> rustyline::Result<ShellEditor> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .history_ignore_space(true);
    let config = config
        .history_ignore_dups(true)
        .and_then(|c| c.max_history_size(10_000))
        .map(|c| c.build())
        .unwrap_or_default();
    Editor::with_config(config)
}

/// The history file and whether saving to it has failed.
struct History {
    path: Option<PathBuf>,
    /// Said once: a read-only home is no reason to complain at every line.
    failed: bool,
}

impl History {
    fn load(editor: &mut ShellEditor) -> History {
        let path = history_path();
        if let Some(path) = &path {
            // A missing file is the first run; a bad one is no reason to stop.
            let _ = editor.load_history(path);
        }
        History {
            path,
            failed: false,
        }
    }

    /// Adds `line`, unless it is blank or may hold a password
    /// ([`commands::holds_secret`]).
    fn add(&mut self, editor: &mut ShellEditor, line: &str) {
        if line.trim().is_empty() || commands::holds_secret(line) {
            return;
        }
        let _ = editor.add_history_entry(line);
        if let Some(path) = self.path.as_ref().filter(|_| !self.failed) {
            // Saved at once, so a killed shell keeps its history.
            if let Err(e) = editor.append_history(path) {
                self.failed = true;
                eprintln!(
                    "poncho-shell: cannot save history to {}: {e}",
                    path.display()
                );
            }
        }
    }
}

fn greet(client: &mut ClusterClient) {
    let connected = client.connect_quietly();
    let cluster = client.addrs().join(",");
    let who = client
        .credentials()
        .map(|c| format!(" as {}", c.user()))
        .unwrap_or_default();
    match (client.connected(), connected) {
        (Some(addr), _) => println!(
            "poncho-shell {}: connected to {addr}{who}",
            env!("CARGO_PKG_VERSION")
        ),
        (None, Err(e @ ClientError::Login(_))) => println!(
            "poncho-shell {}: {e}; `login NAME` to try again",
            env!("CARGO_PKG_VERSION")
        ),
        (None, _) => println!(
            "poncho-shell {}: no node of {cluster} answers yet; commands will keep trying for {:?}",
            env!("CARGO_PKG_VERSION"),
            client.timeout
        ),
    }
    println!("Type help for the commands, exit or Ctrl-D to leave.");
}

/// Runs the REPL until `exit` or Ctrl-D. Returns the exit status: 0.
pub fn run(mut client: ClusterClient, output: Output) -> u8 {
    // Ctrl-C while a command waits for the cluster cancels that command.
    // While a line is being edited the terminal is raw and rustyline reads
    // Ctrl-C as a key, which cancels the line.
    let interrupt = Arc::new(AtomicBool::new(false));
    if signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupt)).is_ok() {
        client.set_interrupt(Arc::clone(&interrupt));
    }
    let mut editor = match new_editor() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("poncho-shell: cannot start the line editor: {e}");
            return 1;
        }
    };
    let mut history = History::load(&mut editor);
    crate::exec::set_running(output, Mode::Interactive);
    greet(&mut client);
    loop {
        let prompt = prompt(&mut client);
        editor.set_helper(Some(ShellHelper {
            addrs: client.addrs().to_vec(),
            node: client.connected().map(str::to_owned),
            tls: client.tls().cloned(),
            credentials: client.credentials().cloned(),
        }));
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("poncho-shell: {e}");
                break;
            }
        };
        history.add(&mut editor, &line);
        let command = match commands::parse_line(&line) {
            Ok(None) => continue,
            Ok(Some(c)) if c.is_exit() => break,
            Ok(Some(c)) => c,
            Err(e) => {
                let word = line.split_whitespace().next().map(str::to_ascii_lowercase);
                let f = Failure::Usage(e.to_string());
                print_failure(output, Mode::Interactive, word.as_deref(), &f, "");
                continue;
            }
        };
        let mut command = command;
        if let Err(f) = command.read_lines(&mut EditorLines(&mut editor)) {
            print_failure(output, Mode::Interactive, Some(&command.name()), &f, "");
            continue;
        }
        interrupt.store(false, Ordering::SeqCst);
        run_command(&mut client, output, &command);
    }
    0
}

/// The lines after a command that reads them (`txn`), from the editor:
/// each part's title, then a `> ` prompt a line. Ctrl-C or Ctrl-D cancels
/// the command.
struct EditorLines<'a>(&'a mut ShellEditor);

impl Lines for EditorLines<'_> {
    fn section(&mut self, title: &str) {
        println!("{title}");
    }

    fn next_line(&mut self) -> Result<NextLine, Failure> {
        match self.0.readline("> ") {
            Ok(line) => Ok(NextLine::Line(line)),
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                Err(Failure::Usage("cancelled: nothing was sent".to_string()))
            }
            Err(e) => Err(Failure::Usage(format!("cannot read the line: {e}"))),
        }
    }
}

/// Runs one command and prints its result, with its timing if it asked the
/// cluster.
fn run_command(client: &mut ClusterClient, output: Output, command: &Command) {
    let started = Instant::now();
    let result = command.run(client);
    let took = if command.is_local() {
        String::new()
    } else {
        elapsed(started.elapsed())
    };
    let name = command.name();
    match result {
        Ok(done) if output == Output::Json => print_json_done(None, &name, done),
        Ok(done) => {
            if took.is_empty() {
                println!("{}", done.pretty);
            } else if done.pretty.contains('\n') {
                println!("{}\n{took}", done.pretty);
            } else {
                println!("{}  {took}", done.pretty);
            }
            if let Some(hint) = done.hint {
                println!("(hint) {hint}");
            }
        }
        Err(f) => print_failure(output, Mode::Interactive, Some(&name), &f, &took),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_node::fake_node;
    use std::net::TcpListener;

    #[test]
    fn key_completion_asks_the_leader_a_follower_names() {
        let keys = r#"{"msg_type":"KEYS","payload":{"keys":["user/1","user/two words"]}}"#;
        let (leader, leader_node) = fake_node(vec![keys.to_string()]);
        let redirect = format!(
            r#"{{"msg_type":"ERROR","payload":{{"code":"NOT_LEADER","message":"m","leader_id":2,"leader_addr":"{leader}"}}}}"#
        );
        let (follower, follower_node) = fake_node(vec![redirect]);
        let got = keys_with_prefix(&follower, "user/", None, None);
        assert_eq!(got, ["user/1", "user/two words"]);
        for node in [follower_node, leader_node] {
            let request: serde_json::Value =
                serde_json::from_str(&node.join().unwrap()[0]).unwrap();
            assert_eq!(request["msg_type"], "KEYS");
            assert_eq!(request["payload"]["prefix"], "user/");
        }
        // A key with a space is offered quoted, as the shell reads it back.
        assert_eq!(quote(&got[1]), "\"user/two words\"");
    }

    #[test]
    fn key_completion_offers_nothing_when_the_node_is_gone_or_says_no() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(keys_with_prefix(&gone, "", None, None).is_empty());
        let (addr, node) = fake_node(vec![
            r#"{"msg_type":"ERROR","payload":{"code":"NO_LEADER","message":"m"}}"#.to_string(),
        ]);
        assert!(keys_with_prefix(&addr, "", None, None).is_empty());
        node.join().unwrap();
    }
}
