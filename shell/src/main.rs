//! `poncho-shell`: a REPL for a poncho cluster that follows the leader, and a
//! scripting tool.
//!
//! - On a terminal: an interactive shell (history, completion, hints).
//! - With stdin from a file or a pipe: one command per line, one line of
//!   result per command, no prompt; the exit status tells whether all worked.
//! - With a command on the command line: that one command.
//!
//! See `docs/shell.md`.

mod assist;
mod client;
mod commands;
mod exec;
#[cfg(test)]
mod fake_node;
mod line;
mod repl;
mod secret;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Map, Value};

use crate::client::{ClusterClient, Credentials, Tls, TlsFiles};
use crate::commands::{Command, Lines, NextLine};
use crate::exec::{Done, Failure};
use crate::line::Token;

/// The one-command local cluster's addresses.
const DEFAULT_CLUSTER: &str =
    "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003,127.0.0.1:8004,127.0.0.1:8005";

#[derive(Parser, Debug)]
#[command(
    name = "poncho-shell",
    version,
    about = "A shell for a poncho cluster: interactive on a terminal, one command per line from a pipe, or one COMMAND given here",
    after_help = "Examples:\n  poncho-shell --cluster 127.0.0.1:8002 health\n  poncho-shell set greeting \"hello world\"\n  poncho-shell < commands.txt\n\nExit status: 0 if every command worked, 1 if one failed, 2 for a usage error.\nType help in the shell for its commands."
)]
struct Args {
    /// The nodes to try, HOST:PORT,... [env: PONCHO_CLUSTER] [default: 127.0.0.1:8001,...,127.0.0.1:8005]
    #[arg(long, value_name = "HOST:PORT,...")]
    cluster: Option<String>,
    /// How long a command keeps retrying (redirects, elections, dead nodes)
    /// before it fails: e.g. 5s, 500ms, 2.5 (seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Speak TLS, trusting the nodes' certificates this CA signed (PEM)
    /// [env: PONCHO_CACERT]
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// With --key: the client certificate (PEM) for nodes that check client
    /// certificates [env: PONCHO_CERT]
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; keep it `chmod 600`)
    /// [env: PONCHO_KEY]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Log in as this user: the password is asked for without echo on a
    /// terminal, else read from $PONCHO_PASSWORD [env: PONCHO_USER]
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Print the JSON sent (->) and received (<-) on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Print each result as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// In scripts: stop at the first command that fails.
    #[arg(long)]
    stop_on_error: bool,
    /// A command to run instead of reading commands, e.g. `get foo`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!("{s:?} is not a usable timeout"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_cluster(spec: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err("the cluster lists no address".into());
    }
    if let Some(bad) = addrs.iter().find(|a| !commands::looks_like_host_port(a)) {
        return Err(format!("{bad:?} is not HOST:PORT"));
    }
    Ok(addrs)
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Where a failure happened, which decides how it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Interactive,
    /// Line N of a script.
    Script(usize),
    OneShot,
}

/// A success in `--json`: `{"ok":true,"command":...,"line"?:N,...}`.
pub fn print_json_done(line: Option<usize>, command: &str, done: Done) {
    let mut object = Map::new();
    object.insert("ok".into(), Value::Bool(true));
    object.insert("command".into(), Value::from(command));
    if let Some(n) = line {
        object.insert("line".into(), Value::from(n));
    }
    object.extend(done.json);
    if let Some(hint) = done.hint {
        object.insert("hint".into(), Value::from(hint));
    }
    out(&Value::Object(object).to_string());
}

/// Prints a result line. If stdout is gone (`poncho-shell keys | head -1`),
/// there is no one to report to: stop quietly, like other Unix tools.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}

/// Prints a failure on stderr. `took` is the interactive timing, if any.
pub fn print_failure(
    output: Output,
    mode: Mode,
    command: Option<&str>,
    failure: &Failure,
    took: &str,
) {
    match output {
        Output::Json => {
            let mut object = Map::new();
            object.insert("ok".into(), Value::Bool(false));
            object.insert("command".into(), command.map_or(Value::Null, Value::from));
            if let Mode::Script(n) = mode {
                object.insert("line".into(), Value::from(n));
            }
            object.insert(
                "error".into(),
                serde_json::json!({"code": failure.code(), "message": failure.message()}),
            );
            eprintln!("{}", Value::Object(object));
        }
        Output::Text => {
            let text = match (mode, failure) {
                (Mode::Interactive, Failure::Usage(m)) => m.clone(),
                (Mode::Interactive, f) => format!("(error) {}", f.text()),
                (Mode::Script(n), f) => format!("line {n}: {}", f.text()),
                (Mode::OneShot, Failure::Usage(m)) => m.clone(),
                (Mode::OneShot, f) => format!("error: {}", f.text()),
            };
            if took.is_empty() {
                eprintln!("{text}");
            } else {
                eprintln!("{text}  {took}");
            }
        }
    }
}

/// A result for scripts and one-shot use: the plain text on stdout, a
/// hint on stderr.
fn print_done(output: Output, line: Option<usize>, command: &Command, done: Done) {
    match output {
        Output::Json => print_json_done(line, &command.name(), done),
        // Its results are out already.
        Output::Text if done.streamed => {}
        Output::Text => {
            out(&done.plain);
            if let Some(hint) = &done.hint {
                eprintln!("hint: {hint}");
            }
        }
    }
}

/// `poncho-shell get foo`: the words as the calling shell split them.
fn run_one(client: &mut ClusterClient, words: &[String], output: Output) -> u8 {
    let tokens: Vec<Token> = words.iter().map(Token::plain).collect();
    let command = match commands::parse(&tokens) {
        Ok(c) if c.is_exit() => return 0,
        Ok(c) => c,
        Err(e) => {
            let word = words.first().map(|w| w.to_ascii_lowercase());
            print_failure(
                output,
                Mode::OneShot,
                word.as_deref(),
                &Failure::Usage(e.to_string()),
                "",
            );
            return 2;
        }
    };
    let mut command = command;
    exec::set_running(output, Mode::OneShot);
    let read = {
        let stdin = std::io::stdin();
        let prompts = stdin.is_terminal();
        let mut number = 0;
        // Let go of stdin before the command runs (`lock` reads it to its
        // end on a thread of its own).
        let mut locked = stdin.lock();
        let mut lines = StdinLines {
            stdin: &mut locked,
            number: &mut number,
            prompts,
        };
        command.read_lines(&mut lines)
    };
    if let Err(f) = read {
        print_failure(output, Mode::OneShot, Some(&command.name()), &f, "");
        return f.exit_code();
    }
    match command.run(client) {
        Ok(done) => {
            let status = done.status;
            print_done(output, None, &command, done);
            status
        }
        Err(f) => {
            print_failure(output, Mode::OneShot, Some(&command.name()), &f, "");
            f.exit_code()
        }
    }
}

/// Commands from stdin, one per line. The exit status is the first failing
/// command's (1, or 2 for usage), else 0.
fn run_script(client: &mut ClusterClient, output: Output, stop_on_error: bool) -> u8 {
    let mut stdin = std::io::stdin().lock();
    let mut status = 0u8;
    let mut bytes = Vec::new();
    let mut number = 0usize;
    loop {
        bytes.clear();
        match stdin.read_until(b'\n', &mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("poncho-shell: reading stdin: {e}");
                return 1;
            }
        }
        number += 1;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        // A command that reads the lines after it moves `number` on.
        let start = number;
        let mode = Mode::Script(start);
        exec::set_running(output, mode);
        let parsed = match std::str::from_utf8(&bytes) {
            Ok(line) => commands::parse_line(line).map_err(|e| e.to_string()),
            Err(_) => Err("the line is not valid UTF-8".to_string()),
        };
        let result = match parsed {
            Ok(None) => continue,
            Ok(Some(command)) if command.is_exit() => break,
            Ok(Some(mut command)) => {
                match read_and_run(client, &mut command, &mut stdin, &mut number) {
                    Ok(done) => {
                        let status = done.status;
                        print_done(output, Some(start), &command, done);
                        if status == 0 {
                            Ok(())
                        } else {
                            Err(status)
                        }
                    }
                    Err(f) => {
                        print_failure(output, mode, Some(&command.name()), &f, "");
                        Err(f.exit_code())
                    }
                }
            }
            Err(message) => {
                let word = String::from_utf8_lossy(&bytes)
                    .split_whitespace()
                    .next()
                    .map(|w| w.to_ascii_lowercase());
                print_failure(output, mode, word.as_deref(), &Failure::Usage(message), "");
                Err(2)
            }
        };
        if let Err(code) = result {
            if status == 0 {
                status = code;
            }
            if stop_on_error {
                break;
            }
        }
    }
    status
}

/// Runs a command of a script, reading its body first if it takes one
/// (`txn` with no arguments: the lines after it).
fn read_and_run(
    client: &mut ClusterClient,
    command: &mut Command,
    stdin: &mut std::io::StdinLock<'_>,
    number: &mut usize,
) -> Result<Done, Failure> {
    command.read_lines(&mut StdinLines {
        stdin,
        number,
        prompts: false,
    })?;
    command.run(client)
}

/// The lines after a command that reads them (`txn`), from stdin: in a
/// script (counting the lines, for the numbers errors carry), or after a
/// one-shot command (with each part's title on stderr if stdin is a
/// terminal).
struct StdinLines<'a, 'b> {
    stdin: &'a mut std::io::StdinLock<'b>,
    number: &'a mut usize,
    prompts: bool,
}

impl Lines for StdinLines<'_, '_> {
    fn section(&mut self, title: &str) {
        if self.prompts {
            eprintln!("{title}");
        }
    }

    fn next_line(&mut self) -> Result<NextLine, Failure> {
        let mut bytes = Vec::new();
        match self.stdin.read_until(b'\n', &mut bytes) {
            Ok(0) => return Ok(NextLine::End),
            Ok(_) => {}
            Err(e) => return Err(Failure::Usage(format!("reading stdin: {e}"))),
        }
        *self.number += 1;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Ok(match String::from_utf8(bytes) {
            Ok(line) => NextLine::Line(line),
            Err(_) => NextLine::Unreadable(format!("line {} is not valid UTF-8", self.number)),
        })
    }
}

/// An environment variable's value, unless unset or blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

/// The TLS the flags (else `$PONCHO_CACERT`, `$PONCHO_CERT`, `$PONCHO_KEY`)
/// ask for: `None` for plain TCP. A key file others may read is warned
/// about on stderr; the error names the file and what is wrong with it.
fn tls_from(args: &Args, env: impl Fn(&str) -> Option<String>) -> Result<Option<Tls>, String> {
    let path =
        |flag: &Option<PathBuf>, var: &str| flag.clone().or_else(|| env(var).map(PathBuf::from));
    let files = TlsFiles {
        trusted_ca: path(&args.cacert, "PONCHO_CACERT"),
        cert: path(&args.cert, "PONCHO_CERT"),
        key: path(&args.key, "PONCHO_KEY"),
    };
    if files == TlsFiles::default() {
        return Ok(None);
    }
    let (tls, warning) = Tls::from_files(&files).map_err(|e| e.to_string())?;
    if let Some(w) = warning {
        eprintln!("poncho-shell: warning: {w}");
    }
    Ok(Some(tls))
}

/// The credentials `--user` (else `$PONCHO_USER`) asks for, the password
/// from `passwords`; `None` to not log in.
fn credentials_from(
    args: &Args,
    env: impl Fn(&str) -> Option<String>,
    passwords: &secret::Source<'_>,
) -> Result<Option<Credentials>, String> {
    let Some(user) = args.user.clone().or_else(|| env("PONCHO_USER")) else {
        return Ok(None);
    };
    let user = user.trim().to_string();
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    let password = passwords.login(&user)?;
    Ok(Some(Credentials::new(user, password.0)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = args
        .cluster
        .clone()
        .or_else(|| env("PONCHO_CLUSTER"))
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    let addrs = match parse_cluster(&spec) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("poncho-shell: --cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let output = if args.json {
        Output::Json
    } else {
        Output::Text
    };
    let tls = match tls_from(&args, env) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("poncho-shell: TLS: {e}");
            return ExitCode::from(2);
        }
    };
    let credentials = match credentials_from(&args, env, &secret::source()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("poncho-shell: --user: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = ClusterClient::new(addrs, args.timeout, args.verbose)
        .with_tls(tls)
        .with_credentials(credentials);
    let run = if !args.command.is_empty() {
        exec::RunMode::OneShot
    } else if std::io::stdin().is_terminal() {
        exec::RunMode::Interactive
    } else {
        exec::RunMode::Script
    };
    exec::set_presentation(exec::Presentation {
        json: output == Output::Json,
        run,
    });
    let code = match run {
        exec::RunMode::OneShot => run_one(&mut client, &args.command, output),
        exec::RunMode::Interactive => repl::run(client, output),
        exec::RunMode::Script => run_script(&mut client, output, args.stop_on_error),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cluster_lists_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert_eq!(
            parse_cluster(" 127.0.0.1:1, localhost:2 ,").unwrap(),
            ["127.0.0.1:1", "localhost:2"]
        );
        assert!(parse_cluster("127.0.0.1").is_err());
        assert!(parse_cluster(",").is_err());
        assert_eq!(parse_cluster(DEFAULT_CLUSTER).unwrap().len(), 5);
    }

    #[test]
    fn the_command_line_parses() {
        let a = Args::try_parse_from(["poncho-shell", "--timeout", "1s", "cas", "k", "-1", "nil"])
            .unwrap();
        assert_eq!(a.command, ["cas", "k", "-1", "nil"]);
        assert_eq!(a.timeout, Duration::from_secs(1));
        let a = Args::try_parse_from(["poncho-shell", "--json", "--stop-on-error"]).unwrap();
        assert!(a.json && a.stop_on_error && a.command.is_empty());
    }

    #[test]
    fn the_user_comes_from_the_flag_else_the_environment_and_needs_a_password() {
        let none = |_: &str| None;
        let pw = |v: &str| (v == secret::PASSWORD_ENV).then(|| "pw-secret".to_string());
        let with_pw = secret::Source {
            ask: None,
            env: &pw,
        };
        let plain = Args::try_parse_from(["poncho-shell", "health"]).unwrap();
        assert_eq!(credentials_from(&plain, none, &with_pw), Ok(None));
        let flag = Args::try_parse_from(["poncho-shell", "--user", "alice"]).unwrap();
        let c = credentials_from(&flag, none, &with_pw).unwrap().unwrap();
        assert_eq!(c, Credentials::new("alice", "pw-secret"));
        let from_env = |v: &str| (v == "PONCHO_USER").then(|| "bob".to_string());
        let c = credentials_from(&plain, from_env, &with_pw)
            .unwrap()
            .unwrap();
        assert_eq!(c.user(), "bob");
        // The flag wins over the environment.
        let c = credentials_from(&flag, from_env, &with_pw)
            .unwrap()
            .unwrap();
        assert_eq!(c.user(), "alice");
        let no_pw = secret::Source {
            ask: None,
            env: &none,
        };
        let e = credentials_from(&flag, none, &no_pw).unwrap_err();
        assert!(e.contains("PONCHO_PASSWORD"), "{e}");
        let blank = Args::try_parse_from(["poncho-shell", "--user", " "]).unwrap();
        assert!(credentials_from(&blank, none, &with_pw).is_err());
    }

    #[test]
    fn tls_files_come_from_the_flags_else_the_environment() {
        let none = |_: &str| None;
        let plain = Args::try_parse_from(["poncho-shell", "health"]).unwrap();
        assert!(tls_from(&plain, none).unwrap().is_none());
        let flag =
            Args::try_parse_from(["poncho-shell", "--cacert", "/nonexistent/ca.pem"]).unwrap();
        let e = tls_from(&flag, none).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let from_env =
            |v: &str| (v == "PONCHO_CACERT").then(|| "/nonexistent/env-ca.pem".to_string());
        let e = tls_from(&plain, from_env).unwrap_err();
        assert!(e.contains("/nonexistent/env-ca.pem"), "{e}");
        // The flag wins over the environment.
        let e = tls_from(&flag, from_env).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let no_ca =
            Args::try_parse_from(["poncho-shell", "--cert", "c.pem", "--key", "k.pem"]).unwrap();
        let e = tls_from(&no_ca, none).unwrap_err();
        assert!(e.contains("--cacert"), "{e}");
    }
}
