//! The shell's commands, one file each: its [`Spec`] (name, arguments,
//! help), its parsing, its execution against the cluster and its rendering.
//! [`COMMANDS`] is the one table that parsing, `help`, completion and hints
//! read.
//!
//! Adding a command is a new file here (a `SPEC` and a type that is an
//! [`Action`]) and one row in [`COMMANDS`]. A command with subcommands
//! (`user add`, `role list`) lists them in [`Spec::subs`]: each has its own
//! arguments, help and completion, and its parse sees [`Args::sub`].

use std::any::Any;
use std::fmt;

use crate::client::ClusterClient;
use crate::exec::{Failure, Outcome};
use crate::line::{quote, tokenize, Token};

mod append;
mod auth;
mod cas;
mod connect;
mod delete;
mod elect;
mod exit;
mod get;
mod health;
mod help;
mod keys;
mod leader;
mod lease;
mod lock;
mod login;
mod member;
mod role;
mod set;
mod status;
mod transfer_leader;
mod txn;
mod user;
mod verbose;
mod vote;
mod watch;

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[&Spec] = &[
    &set::SPEC,
    &get::SPEC,
    &delete::SPEC,
    &cas::SPEC,
    &txn::SPEC,
    &watch::SPEC,
    &lease::SPEC,
    &lock::SPEC,
    &elect::SPEC,
    &keys::SPEC,
    &health::SPEC,
    &status::SPEC,
    &leader::SPEC,
    &connect::SPEC,
    &login::SPEC,
    &auth::SPEC,
    &user::SPEC,
    &role::SPEC,
    &member::SPEC,
    &transfer_leader::SPEC,
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
    /// Its subcommands, if it has any: the first argument names one, and
    /// the rest are that subcommand's [`Sub::args`].
    pub subs: &'static [Sub],
    /// Called with as many arguments as [`Spec::args`] (or the
    /// subcommand's) allows.
    pub parse: fn(&Args<'_>) -> Result<Box<dyn Action>, UsageError>,
}

/// A subcommand, such as `add` of `user add NAME[:PASSWORD]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Sub {
    pub name: &'static str,
    /// Its arguments, as [`Spec::args`].
    pub args: &'static str,
    pub summary: &'static str,
    /// Whether its line may carry a password: such lines never go into the
    /// history file.
    pub secret: bool,
}

impl Sub {
    pub fn arg_names(&self) -> Vec<&'static str> {
        self.args.split_whitespace().collect()
    }
}

/// How many arguments `args` (as [`Spec::args`] spells them) needs, and
/// how many it allows. Every word inside `[...]` is optional, so
/// `[--peer-addr ADDR]` is two words that may be left out; a word with
/// `...` (`[COMPARE...]`) may be repeated, so any number is allowed.
fn arity(args: &str) -> (usize, usize) {
    let (mut required, mut allowed, mut depth) = (0, 0, 0usize);
    for word in args.split_whitespace() {
        if depth == 0 && !word.starts_with('[') {
            required += 1;
        }
        allowed = if word.contains("...") {
            usize::MAX
        } else {
            allowed.saturating_add(1)
        };
        depth += word.matches('[').count();
        depth = depth.saturating_sub(word.matches(']').count());
    }
    (required, allowed)
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

    /// The names of the arguments, as [`Spec::args`] spells them.
    pub fn arg_names(&self) -> Vec<&'static str> {
        self.args.split_whitespace().collect()
    }

    /// The subcommand called `name`, case-insensitively.
    pub fn sub(&self, name: &str) -> Option<&'static Sub> {
        self.subs.iter().find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The subcommands' names, as one placeholder: `add|delete|list`.
    pub fn sub_names(&self) -> String {
        let names: Vec<&str> = self.subs.iter().map(|s| s.name).collect();
        names.join("|")
    }

    /// `user add NAME[:PASSWORD]`.
    pub fn sub_usage(&self, sub: &Sub) -> String {
        if sub.args.is_empty() {
            format!("{} {}", self.name, sub.name)
        } else {
            format!("{} {} {}", self.name, sub.name, sub.args)
        }
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
    /// The subcommand, for a command that has them (its name is not in
    /// `tokens`).
    sub: Option<&'static Sub>,
    tokens: &'a [Token],
}

impl Args<'_> {
    /// The subcommand's name (empty for a command without subcommands).
    pub fn sub(&self) -> &'static str {
        self.sub.map_or("", |s| s.name)
    }

    /// The arguments, as typed.
    pub fn tokens(&self) -> &[Token] {
        self.tokens
    }

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
        match self.sub {
            Some(sub) => UsageError::SubArguments(self.spec, sub),
            None => UsageError::Arguments(self.spec),
        }
    }

    /// A usage error that says what is wrong, then the usage line.
    pub fn wrong(&self, what: impl Into<String>) -> UsageError {
        UsageError::Wrong(what.into(), Box::new(self.usage()))
    }
}

/// [`Spec::parse`] for a command without arguments.
pub fn no_args<T: Action + Default>(_: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(T::default()))
}

/// A parsed command, ready to run.
pub trait Action: fmt::Debug + Any {
    fn run(&self, client: &mut ClusterClient) -> Outcome;

    /// For a command that takes the lines after its own as its body (`txn`
    /// with no arguments): reads them from `lines` before it runs. Others
    /// read nothing.
    fn read_lines(&mut self, _lines: &mut dyn Lines) -> Result<(), Failure> {
        Ok(())
    }
}

/// Where a command that reads the lines after its own gets them: the REPL's
/// line editor, the next lines of a script, or stdin after a one-shot
/// command.
pub trait Lines {
    /// A part of the body begins (`compares:`): its title is shown on a
    /// terminal, and not in a script.
    fn section(&mut self, title: &str);
    /// The next line. `Err` stops reading at once (Ctrl-C, stdin failed).
    fn next_line(&mut self) -> Result<NextLine, Failure>;
}

/// What [`Lines::next_line`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextLine {
    Line(String),
    /// A line that is there but cannot be read (not UTF-8): why.
    Unreadable(String),
    /// The end of the input.
    End,
}

/// A line the user typed, parsed: which command, and its action.
#[derive(Debug)]
pub struct Command {
    pub spec: &'static Spec,
    pub sub: Option<&'static Sub>,
    action: Box<dyn Action>,
}

impl Command {
    /// The name a result is reported under (`--json`'s `command`):
    /// `get`, or with its subcommand, `user add`.
    pub fn name(&self) -> String {
        match self.sub {
            Some(sub) => format!("{} {}", self.spec.name, sub.name),
            None => self.spec.name.to_string(),
        }
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

    /// Reads the command's body from the lines after it, if it takes one
    /// ([`Action::read_lines`]). Call it before [`Command::run`].
    pub fn read_lines(&mut self, lines: &mut dyn Lines) -> Result<(), Failure> {
        self.action.read_lines(lines)
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
    /// Not the arguments this command takes (for a command with
    /// subcommands: no subcommand, or an unknown one).
    Arguments(&'static Spec),
    /// Not the arguments this subcommand takes.
    SubArguments(&'static Spec, &'static Sub),
    /// What is wrong (`read|write|readwrite, not x`), then the usage.
    Wrong(String, Box<UsageError>),
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
            UsageError::Arguments(spec) if !spec.subs.is_empty() => write!(
                f,
                "usage: {} {} ... (help {} tells more)",
                spec.name,
                spec.sub_names(),
                spec.name
            ),
            UsageError::Arguments(spec) => write!(f, "usage: {}", spec.usage()),
            UsageError::SubArguments(spec, sub) => write!(f, "usage: {}", spec.sub_usage(sub)),
            UsageError::Wrong(what, usage) => write!(f, "{what}; {usage}"),
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
    let (sub, args) = match args.split_first() {
        _ if spec.subs.is_empty() => (None, args),
        Some((name, rest)) => match spec.sub(&name.text) {
            Some(sub) => (Some(sub), rest),
            None => return Err(UsageError::Arguments(spec)),
        },
        None => return Err(UsageError::Arguments(spec)),
    };
    let args = Args {
        spec,
        sub,
        tokens: args,
    };
    let (min, max) = arity(sub.map_or(spec.args, |s| s.args));
    if args.tokens.len() < min || args.tokens.len() > max {
        return Err(args.usage());
    }
    let action = (spec.parse)(&args)?;
    Ok(Command { spec, sub, action })
}

/// Whether `line` may hold a password, and so must stay out of the history:
/// a subcommand marked [`Sub::secret`] (`user add NAME:PASSWORD`), or a
/// command that has one with a subcommand it does not know (a typo may
/// still carry one). Reads as much of the line as it can.
pub fn holds_secret(line: &str) -> bool {
    let tokens = crate::line::scan(line).tokens;
    let Some(spec) = tokens.first().and_then(|t| find(&t.text)) else {
        return false;
    };
    match tokens.get(1).and_then(|t| spec.sub(&t.text)) {
        Some(sub) => sub.secret,
        None => spec.subs.iter().any(|s| s.secret),
    }
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
                value: "v w".into(),
                lease: None
            }
        );
        assert_eq!(parsed::<get::Get>("get k"), get::Get::Key("k".into()));
        assert_eq!(
            parsed::<get::Get>("get app/ --prefix --limit 5 --keys-only"),
            get::Get::Range(get::Range {
                key: "app/".into(),
                prefix: true,
                limit: Some(5),
                keys_only: true,
                ..get::Range::default()
            })
        );
        assert_eq!(
            parsed::<get::Get>("get a --range c --count"),
            get::Get::Range(get::Range {
                key: "a".into(),
                end: Some("c".into()),
                count: true,
                ..get::Range::default()
            })
        );
        // A quoted word that looks like a flag is a key.
        assert_eq!(
            parsed::<get::Get>("get \"--prefix\""),
            get::Get::Key("--prefix".into())
        );
        for (line, says) in [
            ("get a --prefix --range b", "exclude each other"),
            ("get a --count --keys-only", "exclude each other"),
            ("get a --limit 0", "not a limit"),
            ("get a --limit", "needs a number"),
            ("get a --sorted", "not a flag of get"),
            ("get a --prefix --rev x", "not a revision"),
        ] {
            let error = parse_line(line).expect_err(line).to_string();
            assert!(error.contains(says), "{line}: {error}");
        }
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
    fn parses_the_auth_user_role_and_login_commands() {
        use poncho_protocol::{
            Access, AuthRequest as A, KeySpec, Password, RoleRequest as R, UserRequest as U,
        };
        let pw = |p: &str| Some(Password(p.into()));
        assert_eq!(parsed::<auth::Auth>("auth enable"), auth::Auth(A::Enable));
        assert_eq!(parsed::<auth::Auth>("AUTH Disable"), auth::Auth(A::Disable));
        assert_eq!(parsed::<auth::Auth>("auth status"), auth::Auth(A::Status));
        assert_eq!(
            parsed::<login::Login>("login root"),
            login::Login {
                user: "root".into()
            }
        );
        let set_password = |passwd, name: &str, password| user::User::SetPassword {
            passwd,
            name: name.into(),
            password,
        };
        assert_eq!(
            parsed::<user::User>("user add alice:pw:with:colons"),
            set_password(false, "alice", pw("pw:with:colons"))
        );
        assert_eq!(
            parsed::<user::User>("user add alice"),
            set_password(false, "alice", None)
        );
        assert_eq!(
            parsed::<user::User>("user passwd bob:\"new pw\""),
            set_password(true, "bob", pw("new pw"))
        );
        let other = |r| user::User::Other(r);
        for (line, request) in [
            ("user delete bob", U::Delete { name: "bob".into() }),
            ("user get bob", U::Get { name: "bob".into() }),
            ("user list", U::List),
            (
                "user grant-role bob app",
                U::GrantRole {
                    name: "bob".into(),
                    role: "app".into(),
                },
            ),
            (
                "user revoke-role bob app",
                U::RevokeRole {
                    name: "bob".into(),
                    role: "app".into(),
                },
            ),
        ] {
            assert_eq!(parsed::<user::User>(line), other(request), "{line}");
        }
        let key = |k: &str| KeySpec {
            key: Some(k.into()),
            prefix: None,
        };
        let prefix = |p: &str| KeySpec {
            key: None,
            prefix: Some(p.into()),
        };
        let grant = |keys, access| R::GrantPermission {
            name: "app".into(),
            keys,
            access,
        };
        let revoke = |keys| R::RevokePermission {
            name: "app".into(),
            keys,
        };
        for (line, request) in [
            ("role add app", R::Add { name: "app".into() }),
            ("role delete app", R::Delete { name: "app".into() }),
            ("role get app", R::Get { name: "app".into() }),
            ("role list", R::List),
            (
                "role grant-permission app readwrite app/ --prefix",
                grant(prefix("app/"), Access::Readwrite),
            ),
            (
                "role grant-permission --prefix app read \"\"",
                grant(prefix(""), Access::Read),
            ),
            (
                "role grant-permission app WRITE config",
                grant(key("config"), Access::Write),
            ),
            // A quoted --prefix is a key.
            (
                "role grant-permission app read \"--prefix\"",
                grant(key("--prefix"), Access::Read),
            ),
            ("role revoke-permission app config", revoke(key("config"))),
            (
                "role revoke-permission app app/ --prefix",
                revoke(prefix("app/")),
            ),
        ] {
            assert_eq!(parsed::<role::Role>(line), role::Role(request), "{line}");
        }
        let command = parse_line("user add alice:pw").unwrap().unwrap();
        assert_eq!(command.name(), "user add");
        assert!(!format!("{command:?}").contains("pw\""), "{command:?}");
    }

    #[test]
    fn the_auth_user_role_and_login_commands_say_their_usage() {
        let e = |l: &str| parse_line(l).unwrap_err().to_string();
        assert_eq!(
            e("user"),
            "usage: user add|delete|get|list|passwd|grant-role|revoke-role ... \
             (help user tells more)"
        );
        assert!(e("user frob x").starts_with("usage: user add|delete"));
        assert_eq!(e("user add"), "usage: user add NAME[:PASSWORD]");
        assert_eq!(e("user add a b"), "usage: user add NAME[:PASSWORD]");
        assert_eq!(
            e("user add alice:"),
            "the password is empty; usage: user add NAME[:PASSWORD]"
        );
        assert_eq!(
            e("user add :pw"),
            "the user name is empty; usage: user add NAME[:PASSWORD]"
        );
        assert_eq!(e("user list all"), "usage: user list");
        assert_eq!(e("user grant-role bob"), "usage: user grant-role NAME ROLE");
        assert_eq!(
            e("auth on"),
            "usage: auth enable|disable|status ... (help auth tells more)"
        );
        assert_eq!(e("auth enable now"), "usage: auth enable");
        assert_eq!(e("login"), "usage: login USER");
        let grant = "usage: role grant-permission NAME read|write|readwrite KEY [--prefix]";
        assert_eq!(e("role grant-permission app read"), grant);
        assert_eq!(e("role grant-permission app read k extra"), grant);
        assert_eq!(
            e("role grant-permission app all k"),
            format!("all is not read, write or readwrite; {grant}")
        );
        assert_eq!(
            e("role add app --prefix"),
            "usage: role add NAME",
            "--prefix is for permissions"
        );
        assert_eq!(e("role add --prefix"), "usage: role add NAME");
        assert_eq!(
            e("role revoke-permission app"),
            "usage: role revoke-permission NAME KEY [--prefix]"
        );
    }

    #[test]
    fn parses_the_member_and_transfer_leader_commands() {
        use poncho_protocol::MemberRequest as M;
        let a = |s: &str| s.parse().unwrap();
        for (line, request) in [
            ("member list", M::List),
            (
                "member add 4 127.0.0.1:8004 --learner",
                M::Add {
                    id: 4,
                    addr: a("127.0.0.1:8004"),
                    peer_addr: None,
                    learner: true,
                    force: false,
                },
            ),
            (
                "MEMBER ADD --force 5 [::1]:8005 --peer-addr=[::1]:9005",
                M::Add {
                    id: 5,
                    addr: a("[::1]:8005"),
                    peer_addr: Some(a("[::1]:9005")),
                    learner: false,
                    force: true,
                },
            ),
            (
                "member add 6 127.0.0.1:8006 --peer-addr 127.0.0.1:9006 --learner --force",
                M::Add {
                    id: 6,
                    addr: a("127.0.0.1:8006"),
                    peer_addr: Some(a("127.0.0.1:9006")),
                    learner: true,
                    force: true,
                },
            ),
            (
                "member promote 4",
                M::Promote {
                    id: 4,
                    force: false,
                },
            ),
            (
                "member promote 4 --force",
                M::Promote { id: 4, force: true },
            ),
            ("member remove --force 3", M::Remove { id: 3, force: true }),
            (
                "member remove 3",
                M::Remove {
                    id: 3,
                    force: false,
                },
            ),
            (
                "member update 2 127.0.0.1:7002",
                M::Update {
                    id: 2,
                    addr: a("127.0.0.1:7002"),
                    peer_addr: None,
                },
            ),
            (
                "member update 2 127.0.0.1:7002 --peer-addr 127.0.0.1:9002",
                M::Update {
                    id: 2,
                    addr: a("127.0.0.1:7002"),
                    peer_addr: Some(a("127.0.0.1:9002")),
                },
            ),
        ] {
            assert_eq!(
                parsed::<member::Member>(line),
                member::Member(request),
                "{line}"
            );
        }
        assert_eq!(
            parsed::<transfer_leader::TransferLeader>("transfer-leader 2"),
            transfer_leader::TransferLeader { to: 2 }
        );
        assert_eq!(
            parse_line("member add 4 127.0.0.1:1")
                .unwrap()
                .unwrap()
                .name(),
            "member add"
        );
    }

    #[test]
    fn the_member_commands_say_what_is_wrong() {
        let e = |l: &str| parse_line(l).unwrap_err().to_string();
        let add = "usage: member add ID ADDR [--peer-addr ADDR] [--learner] [--force]";
        assert_eq!(
            e("member"),
            "usage: member list|add|promote|remove|update ... (help member tells more)"
        );
        assert_eq!(e("member add 4"), add);
        assert_eq!(e("member add 4 --learner"), add);
        assert_eq!(e("member add 4 127.0.0.1:1 x"), add);
        assert_eq!(
            e("member add four 127.0.0.1:1"),
            format!("four is not a member id (a number from 1); {add}")
        );
        assert_eq!(
            e("member add 0 127.0.0.1:1"),
            format!("0 is not a member id (a number from 1); {add}")
        );
        assert_eq!(
            e("member add 4 localhost"),
            format!("localhost is not an address IP:PORT (like 127.0.0.1:8004); {add}")
        );
        assert_eq!(
            e("member add 4 127.0.0.1:1 --peer-addr"),
            format!("--peer-addr needs an address; {add}")
        );
        assert_eq!(
            e("member add 4 127.0.0.1:1 --learner --learner"),
            format!("--learner is given twice; {add}")
        );
        assert_eq!(
            e("member promote 4 --learner"),
            "--learner is not a flag of member promote; usage: member promote ID [--force]"
        );
        assert_eq!(
            e("member update 2 127.0.0.1:1 --force"),
            "--force is not a flag of member update; usage: member update ID ADDR [--peer-addr ADDR]"
        );
        assert_eq!(e("member remove"), "usage: member remove ID [--force]");
        assert_eq!(e("member list all"), "usage: member list");
        // A quoted flag is a word, not a flag.
        assert_eq!(
            e("member remove \"--force\""),
            "--force is not a member id (a number from 1); usage: member remove ID [--force]"
        );
        assert_eq!(e("transfer-leader"), "usage: transfer-leader ID");
        assert_eq!(
            e("transfer-leader x"),
            "x is not a member id (a number from 1); usage: transfer-leader ID"
        );
    }

    #[test]
    fn optional_groups_count_as_optional_words() {
        assert_eq!(arity("KEY VALUE"), (2, 2));
        assert_eq!(arity("[PREFIX]"), (0, 1));
        assert_eq!(
            arity("[COMPARE...] [then OP...] [else OP...]"),
            (0, usize::MAX)
        );
        assert_eq!(arity("NAME[:PASSWORD]"), (1, 1));
        assert_eq!(
            arity("ID ADDR [--peer-addr ADDR] [--learner] [--force]"),
            (2, 6)
        );
    }

    #[test]
    fn lines_that_may_hold_a_password_are_known() {
        for line in [
            "user add alice:pw",
            "USER passwd alice:pw",
            "user add alice",
            "user ad alice:pw",
            "user",
            "user add \"alice:pw",
        ] {
            assert!(holds_secret(line), "{line}");
        }
        for line in [
            "user list",
            "user grant-role alice app",
            "role add app",
            "login root",
            "set k v",
            "frob x:y",
            "",
        ] {
            assert!(!holds_secret(line), "{line}");
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
        assert_eq!(e("set k"), "usage: set KEY VALUE [--lease ID]");
        assert_eq!(e("set k v extra"), "usage: set KEY VALUE [--lease ID]");
        assert_eq!(
            e("get"),
            "usage: get KEY [--prefix] [--range END] [--limit N] [--rev R] [--keys-only] [--count]"
        );
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
