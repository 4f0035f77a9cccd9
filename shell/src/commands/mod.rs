//! The shell's commands, one file each: its [`Spec`] (name, arguments,
//! help), its parsing, its execution against the cluster and its rendering.
//! [`COMMANDS`] is the one table that parsing, `help`, completion and hints
//! read.
//!
//! Adding a command is a new file here (a `SPEC` and a type that is an
//! [`Action`]) and one row in [`COMMANDS`].

use std::any::Any;
use std::fmt;

use crate::client::ClusterClient;
use crate::exec::Outcome;
use crate::line::{quote, tokenize, Token};

mod append;
mod cas;
mod connect;
mod delete;
mod exit;
mod get;
mod health;
mod help;
mod keys;
mod leader;
mod set;
mod status;
mod verbose;
mod vote;

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[&Spec] = &[
    &set::SPEC,
    &get::SPEC,
    &delete::SPEC,
    &cas::SPEC,
    &keys::SPEC,
    &health::SPEC,
    &status::SPEC,
    &leader::SPEC,
    &connect::SPEC,
    &append::SPEC,
    &vote::SPEC,
    &help::SPEC,
    &verbose::SPEC,
    &exit::SPEC,
];

/// A command as the user sees it (help, usage, completion, hints) and how
/// its words become an [`Action`].
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// The arguments, e.g. `KEY VALUE`; `[X]` is optional.
    pub args: &'static str,
    pub summary: &'static str,
    pub details: &'static str,
    pub kind: Kind,
    /// What Tab offers for the first argument.
    pub first_arg: FirstArg,
    /// Called with as many arguments as [`Spec::args`] allows.
    pub parse: fn(&Args<'_>) -> Result<Box<dyn Action>, UsageError>,
}

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It asks the cluster (the prompt shows how long it took).
    Cluster,
    /// In the shell alone, without the cluster (no timing shown).
    Local,
    /// It ends the shell or the script.
    Exit,
}

/// What the first argument is, for completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstArg {
    /// Nothing to offer.
    Free,
    /// A key (or a key prefix): Tab asks the cluster for key names.
    Key,
    /// A command's name.
    Command,
    /// One of these words.
    Words(&'static [&'static str]),
    /// One of the cluster's addresses.
    Addr,
}

impl Spec {
    pub fn usage(&self) -> String {
        if self.args.is_empty() {
            self.name.to_string()
        } else {
            format!("{} {}", self.name, self.args)
        }
    }

    fn arity(&self) -> (usize, usize) {
        let words: Vec<&str> = self.args.split_whitespace().collect();
        let required = words.iter().filter(|w| !w.starts_with('[')).count();
        (required, words.len())
    }

    /// The names of the arguments, brackets removed.
    pub fn arg_names(&self) -> Vec<&'static str> {
        self.args.split_whitespace().collect()
    }

    pub fn is_exit(&self) -> bool {
        self.kind == Kind::Exit
    }
}

/// Specs are told apart by name (there is one per command).
impl PartialEq for Spec {
    fn eq(&self, other: &Spec) -> bool {
        self.name == other.name
    }
}

impl Eq for Spec {}

/// The arguments of one command, their number already checked.
pub struct Args<'a> {
    spec: &'static Spec,
    tokens: &'a [Token],
}

impl Args<'_> {
    /// Argument `i` as typed (empty if it was not given).
    pub fn text(&self, i: usize) -> String {
        self.tokens
            .get(i)
            .map(|t| t.text.clone())
            .unwrap_or_default()
    }

    /// Argument `i`, `None` for an unquoted `nil` (or if not given).
    pub fn nullable(&self, i: usize) -> Option<String> {
        self.tokens.get(i).and_then(Token::nullable)
    }

    /// Optional argument `i`, if it was given.
    pub fn get(&self, i: usize) -> Option<&Token> {
        self.tokens.get(i)
    }

    /// "Not the arguments this command takes": its usage line.
    pub fn usage(&self) -> UsageError {
        UsageError::Arguments(self.spec)
    }
}

/// [`Spec::parse`] for a command without arguments.
pub fn no_args<T: Action + Default>(_: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(T::default()))
}

/// A parsed command, ready to run.
pub trait Action: fmt::Debug + Any {
    fn run(&self, client: &mut ClusterClient) -> Outcome;
}

/// A line the user typed, parsed: which command, and its action.
#[derive(Debug)]
pub struct Command {
    pub spec: &'static Spec,
    action: Box<dyn Action>,
}

impl Command {
    /// The name a result is reported under (`--json`'s `command`).
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// Whether the command runs in the shell alone (no timing shown).
    pub fn is_local(&self) -> bool {
        self.spec.kind != Kind::Cluster
    }

    pub fn is_exit(&self) -> bool {
        self.spec.is_exit()
    }

    pub fn run(&self, client: &mut ClusterClient) -> Outcome {
        self.action.run(client)
    }
}

/// The command called `name` (or one of its aliases), case-insensitively.
pub fn find(name: &str) -> Option<&'static Spec> {
    let name = name.to_ascii_lowercase();
    COMMANDS
        .iter()
        .copied()
        .find(|s| s.name == name || s.aliases.contains(&name.as_str()))
}

/// Why a line is not a command. Its text is one line, fit to print as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// The line does not split into words: an open quote, a bad escape.
    Words(String),
    Empty,
    /// The first word names no command.
    Unknown(String),
    /// Not the arguments this command takes.
    Arguments(&'static Spec),
    /// `help X` where X names no command.
    NoTopic(String),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::Words(m) => f.write_str(m),
            UsageError::Empty => f.write_str("empty command"),
            UsageError::Unknown(w) => {
                write!(f, "unknown command {}: type help for the list", quote(w))
            }
            UsageError::Arguments(spec) => write!(f, "usage: {}", spec.usage()),
            UsageError::NoTopic(w) => write!(f, "no command {}: type help for the list", quote(w)),
        }
    }
}

impl std::error::Error for UsageError {}

/// Tokenizes and parses a line. `Ok(None)` for a blank line or a comment.
pub fn parse_line(line: &str) -> Result<Option<Command>, UsageError> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let tokens = tokenize(line).map_err(UsageError::Words)?;
    parse(&tokens).map(Some)
}

/// Parses words into a command, checking the number of arguments.
pub fn parse(tokens: &[Token]) -> Result<Command, UsageError> {
    let (first, args) = tokens.split_first().ok_or(UsageError::Empty)?;
    let spec = find(&first.text).ok_or_else(|| UsageError::Unknown(first.text.clone()))?;
    let (min, max) = spec.arity();
    if args.len() < min || args.len() > max {
        return Err(UsageError::Arguments(spec));
    }
    let action = (spec.parse)(&Args { spec, tokens: args })?;
    Ok(Command { spec, action })
}

/// `HOST:PORT` with a numeric port (`[::1]:8002` too).
pub fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The action `line` parses to, as the command's own type.
    fn parsed<T: Action + Clone>(line: &str) -> T {
        let command = parse_line(line).unwrap().unwrap();
        let action: &dyn Any = command.action.as_ref();
        action
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("{line} parsed as {command:?}"))
            .clone()
    }

    #[test]
    fn parses_every_command_with_its_arguments() {
        assert_eq!(
            parsed::<set::Set>("SET k \"v w\""),
            set::Set {
                key: "k".into(),
                value: "v w".into()
            }
        );
        assert_eq!(parsed::<get::Get>("get k"), get::Get { key: "k".into() });
        assert_eq!(
            parsed::<delete::Delete>("del k"),
            delete::Delete { key: "k".into() }
        );
        assert_eq!(
            parsed::<cas::Cas>("cas k nil v"),
            cas::Cas {
                key: "k".into(),
                expected: None,
                value: Some("v".into())
            }
        );
        assert_eq!(
            parsed::<cas::Cas>("cas k \"nil\" nil"),
            cas::Cas {
                key: "k".into(),
                expected: Some("nil".into()),
                value: None
            }
        );
        assert_eq!(
            parsed::<keys::Keys>("keys"),
            keys::Keys { prefix: "".into() }
        );
        assert_eq!(
            parsed::<keys::Keys>("keys user/"),
            keys::Keys {
                prefix: "user/".into()
            }
        );
        assert_eq!(parsed::<health::Health>("health"), health::Health);
        assert_eq!(parsed::<health::Health>("healthcheck"), health::Health);
        assert_eq!(parsed::<status::Status>("status"), status::Status);
        assert_eq!(parsed::<leader::Leader>("leader"), leader::Leader);
        assert_eq!(
            parsed::<connect::Connect>("connect 127.0.0.1:8002"),
            connect::Connect {
                addr: "127.0.0.1:8002".into()
            }
        );
        assert_eq!(parsed::<append::Append>("append"), append::Append);
        assert_eq!(parsed::<vote::Vote>("vote"), vote::Vote);
        assert_eq!(parsed::<help::Help>("help"), help::Help { topic: None });
        assert_eq!(
            parsed::<help::Help>("help del"),
            help::Help {
                topic: Some("delete".into())
            }
        );
        assert_eq!(
            parsed::<verbose::Verbose>(".verbose"),
            verbose::Verbose(None)
        );
        assert_eq!(
            parsed::<verbose::Verbose>(".verbose on"),
            verbose::Verbose(Some(true))
        );
        for line in ["quit", "exit"] {
            assert_eq!(parsed::<exit::Exit>(line), exit::Exit);
            assert!(parse_line(line).unwrap().unwrap().is_exit());
        }
    }

    #[test]
    fn blank_lines_and_comments_are_nothing() {
        assert!(parse_line("").unwrap().is_none());
        assert!(parse_line("   ").unwrap().is_none());
        assert!(parse_line("  # set k v").unwrap().is_none());
    }

    #[test]
    fn wrong_arguments_give_a_one_line_usage() {
        let e = |l: &str| parse_line(l).unwrap_err().to_string();
        assert_eq!(e("set k"), "usage: set KEY VALUE");
        assert_eq!(e("set k v extra"), "usage: set KEY VALUE");
        assert_eq!(e("get"), "usage: get KEY");
        assert_eq!(e("cas k v"), "usage: cas KEY EXPECTED NEW");
        assert_eq!(e("keys a b"), "usage: keys [PREFIX]");
        assert_eq!(e("status now"), "usage: status");
        assert_eq!(e("connect nowhere"), "usage: connect HOST:PORT");
        assert_eq!(e(".verbose loud"), "usage: .verbose [on|off]");
        assert!(e("frobnicate x").starts_with("unknown command frobnicate"));
        assert!(e("help frob").starts_with("no command frob"));
        assert!(e("set k \"v").contains("unterminated"));
        for line in ["set k", "frob", "get", "cas 1 2"] {
            assert!(!e(line).contains('\n'));
        }
    }

    #[test]
    fn local_commands_show_no_timing() {
        for (line, local) in [("help", true), (".verbose", true), ("get k", false)] {
            assert_eq!(
                parse_line(line).unwrap().unwrap().is_local(),
                local,
                "{line}"
            );
        }
    }
}
