//! The command language: tokenizing a line (with quotes and escapes), the
//! table of commands with their arguments, and parsing tokens into a
//! [`Command`] or a one-line usage message. No I/O here.
//!
//! Quoting follows the Unix shell where it can: `"..."` understands the
//! escapes `\" \\ \n \t \r \0 \u{HEX}`, `'...'` is literal, a backslash
//! outside quotes escapes the next character, and adjacent pieces join
//! (`a"b c"` is one word `ab c`). An unquoted `nil` stands for "absent"
//! (JSON `null`) where a command accepts it; `"nil"` is the string.

use std::fmt;

/// One word of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// Whether any part of the word was quoted or escaped, so that `"nil"`
    /// is the string and `nil` is null.
    pub quoted: bool,
}

impl Token {
    /// A word from the command line of the shell that started us: already
    /// split by that shell, so it is taken as it is, unquoted.
    pub fn plain(text: impl Into<String>) -> Token {
        Token {
            text: text.into(),
            quoted: false,
        }
    }

    /// `None` for an unquoted `nil`.
    fn nullable(&self) -> Option<String> {
        if !self.quoted && self.text == "nil" {
            None
        } else {
            Some(self.text.clone())
        }
    }
}

/// Splits a line into words. Fails on an unterminated quote or a bad `\u{..}`.
pub fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let scan = scan(line);
    match scan.error {
        Some(e) => Err(e),
        None => Ok(scan.tokens),
    }
}

/// The result of scanning a line, complete or not: what the hinter and the
/// completer see while the user is still typing.
#[derive(Debug, Default)]
pub struct Scan {
    pub tokens: Vec<Token>,
    /// The last token runs to the end of the line (the user is typing it).
    pub open_word: bool,
    pub error: Option<String>,
}

pub fn scan(line: &str) -> Scan {
    let mut out = Scan::default();
    let mut chars = line.chars().peekable();
    let mut word: Option<Token> = None;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if let Some(t) = word.take() {
                out.tokens.push(t);
            }
            continue;
        }
        let w = word.get_or_insert_with(|| Token {
            text: String::new(),
            quoted: false,
        });
        match c {
            '"' => {
                w.quoted = true;
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some('n') => w.text.push('\n'),
                            Some('t') => w.text.push('\t'),
                            Some('r') => w.text.push('\r'),
                            Some('0') => w.text.push('\0'),
                            Some('u') => match unicode_escape(&mut chars) {
                                Ok(c) => w.text.push(c),
                                Err(e) => {
                                    out.error.get_or_insert(e);
                                }
                            },
                            // \" \\ \' and any other character stand for
                            // themselves; an unknown escape keeps its
                            // backslash, as Python does.
                            Some(c @ ('"' | '\\' | '\'')) => w.text.push(c),
                            Some(c) => {
                                w.text.push('\\');
                                w.text.push(c);
                            }
                            None => break,
                        },
                        c => w.text.push(c),
                    }
                }
                if !closed {
                    out.error.get_or_insert("unterminated \" quote".to_string());
                }
            }
            '\'' => {
                w.quoted = true;
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    w.text.push(c);
                }
                if !closed {
                    out.error.get_or_insert("unterminated ' quote".to_string());
                }
            }
            '\\' => {
                w.quoted = true;
                if let Some(c) = chars.next() {
                    w.text.push(c);
                }
            }
            c => w.text.push(c),
        }
    }
    if let Some(t) = word.take() {
        out.tokens.push(t);
        out.open_word = true;
    }
    out
}

fn unicode_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    const BAD: &str = "bad \\u escape: write \\u{HEX}, e.g. \\u{e9}";
    if chars.next() != Some('{') {
        return Err(BAD.into());
    }
    let mut hex = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            return u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| BAD.to_string());
        }
        hex.push(c);
    }
    Err(BAD.into())
}

/// Spells a string so that [`tokenize`] reads it back as one word: as it is
/// when that is unambiguous, else in double quotes with escapes.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s != "nil"
        && !s.starts_with('#')
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\'' | '\\'));
    if plain {
        s.to_string()
    } else {
        quote_always(s)
    }
}

/// `s` in double quotes, escaped so that [`tokenize`] reads it back.
pub fn quote_always(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ----------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Set {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        value: Option<String>,
    },
    Keys {
        prefix: String,
    },
    Health,
    Status,
    Leader,
    Connect {
        addr: String,
    },
    Append,
    Vote,
    Help {
        topic: Option<String>,
    },
    /// `None`: toggle.
    Verbose(Option<bool>),
    Exit,
}

impl Command {
    /// Whether the command runs in the shell alone, without the cluster
    /// (the prompt shows no timing for it).
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Command::Help { .. } | Command::Verbose(_) | Command::Exit
        )
    }

    /// The name a result is reported under (`--json`'s `command`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } => "set",
            Command::Get { .. } => "get",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "cas",
            Command::Keys { .. } => "keys",
            Command::Health => "health",
            Command::Status => "status",
            Command::Leader => "leader",
            Command::Connect { .. } => "connect",
            Command::Append => "append",
            Command::Vote => "vote",
            Command::Help { .. } => "help",
            Command::Verbose(_) => ".verbose",
            Command::Exit => "exit",
        }
    }
}

/// A command as the user sees it: for help, usage, completion and hints.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// The arguments, e.g. `KEY VALUE`; `[X]` is optional.
    pub args: &'static str,
    pub summary: &'static str,
    pub details: &'static str,
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
}

pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "set",
        aliases: &[],
        args: "KEY VALUE",
        summary: "store VALUE under KEY",
        details: "Quote a value with spaces: set greeting \"hello world\".\n\
                  Prints OK once a majority of the cluster has the write.",
    },
    Spec {
        name: "get",
        aliases: &[],
        args: "KEY",
        summary: "the value of KEY, or (nil) if absent",
        details: "A linearizable read, served by the leader.",
    },
    Spec {
        name: "delete",
        aliases: &["del"],
        args: "KEY",
        summary: "remove KEY: 1 if it existed, else 0",
        details: "",
    },
    Spec {
        name: "cas",
        aliases: &[],
        args: "KEY EXPECTED NEW",
        summary: "compare-and-set: if KEY is EXPECTED, make it NEW (1 if swapped, else 0)",
        details: "An unquoted nil means absent: cas lock nil me creates lock only if it\n\
                  does not exist; cas lock me nil deletes it only if it is me.\n\
                  \"nil\" in quotes is the three-letter string.",
    },
    Spec {
        name: "keys",
        aliases: &[],
        args: "[PREFIX]",
        summary: "the keys starting with PREFIX (all keys without one), sorted",
        details: "At most 10,000 keys are returned.",
    },
    Spec {
        name: "health",
        aliases: &["healthcheck"],
        args: "",
        summary: "HEALTHCHECK the connected node (prints ok)",
        details: "",
    },
    Spec {
        name: "status",
        aliases: &[],
        args: "",
        summary: "a table of every node: role, term, commit index, last applied, lag",
        details: "LAG is the number of entries the leader has committed that the node has\n\
                  not applied yet. Nodes that do not answer are shown as unreachable;\n\
                  a node whose disk is full shows (NO_SPACE) after its role.",
    },
    Spec {
        name: "leader",
        aliases: &[],
        args: "",
        summary: "the leader's address (waits for an election if there is none)",
        details: "",
    },
    Spec {
        name: "connect",
        aliases: &[],
        args: "HOST:PORT",
        summary: "talk to this node from now on",
        details: "Reads and writes still follow the leader: a follower redirects them.",
    },
    Spec {
        name: "append",
        aliases: &[],
        args: "",
        summary: "send an AppendEntries probe (term 0) to the connected node, print its reply",
        details: "The probe has no src_id, so the node answers with its term, rejects it\n\
                  and changes nothing (the prototype's `client append`).",
    },
    Spec {
        name: "vote",
        aliases: &["request"],
        args: "",
        summary: "send a RequestVote probe (term 0) to the connected node, print its reply",
        details: "The probe has no src_id, so the node answers with its term, refuses its\n\
                  vote and changes nothing (the prototype's `client request`).",
    },
    Spec {
        name: "help",
        aliases: &["?"],
        args: "[COMMAND]",
        summary: "the list of commands, or one command's help",
        details: "",
    },
    Spec {
        name: ".verbose",
        aliases: &[],
        args: "[on|off]",
        summary: "show (or stop showing) the JSON sent (->) and received (<-)",
        details: "Without an argument it toggles. --verbose starts the shell with it on.",
    },
    Spec {
        name: "exit",
        aliases: &["quit"],
        args: "",
        summary: "leave the shell (Ctrl-D does too)",
        details: "",
    },
];

/// The command called `name` (or one of its aliases), case-insensitively.
pub fn find(name: &str) -> Option<&'static Spec> {
    let name = name.to_ascii_lowercase();
    COMMANDS
        .iter()
        .find(|s| s.name == name || s.aliases.contains(&name.as_str()))
}

/// Why a line is not a command: one line, fit to print as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tokenizes and parses a line. `Ok(None)` for a blank line or a comment.
pub fn parse_line(line: &str) -> Result<Option<Command>, UsageError> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let tokens = tokenize(line).map_err(UsageError)?;
    parse(&tokens).map(Some)
}

/// Parses words into a command, checking the number of arguments.
pub fn parse(tokens: &[Token]) -> Result<Command, UsageError> {
    let (first, args) = tokens
        .split_first()
        .ok_or_else(|| UsageError("empty command".into()))?;
    let spec = find(&first.text).ok_or_else(|| {
        UsageError(format!(
            "unknown command {}: type help for the list",
            quote(&first.text)
        ))
    })?;
    let (min, max) = spec.arity();
    let usage = || UsageError(format!("usage: {}", spec.usage()));
    if args.len() < min || args.len() > max {
        return Err(usage());
    }
    let arg = |i: usize| args[i].text.clone();
    Ok(match spec.name {
        "set" => Command::Set {
            key: arg(0),
            value: arg(1),
        },
        "get" => Command::Get { key: arg(0) },
        "delete" => Command::Delete { key: arg(0) },
        "cas" => Command::Cas {
            key: arg(0),
            expected: args[1].nullable(),
            value: args[2].nullable(),
        },
        "keys" => Command::Keys {
            prefix: args.first().map(|t| t.text.clone()).unwrap_or_default(),
        },
        "health" => Command::Health,
        "status" => Command::Status,
        "leader" => Command::Leader,
        "connect" => {
            let addr = arg(0);
            if !looks_like_host_port(&addr) {
                return Err(usage());
            }
            Command::Connect { addr }
        }
        "append" => Command::Append,
        "vote" => Command::Vote,
        "help" => match args.first() {
            None => Command::Help { topic: None },
            Some(t) => match find(&t.text) {
                Some(spec) => Command::Help {
                    topic: Some(spec.name.to_string()),
                },
                None => {
                    return Err(UsageError(format!(
                        "no command {}: type help for the list",
                        quote(&t.text)
                    )))
                }
            },
        },
        ".verbose" => match args.first().map(|t| t.text.to_ascii_lowercase()) {
            None => Command::Verbose(None),
            Some(a) if a == "on" => Command::Verbose(Some(true)),
            Some(a) if a == "off" => Command::Verbose(Some(false)),
            Some(_) => return Err(usage()),
        },
        "exit" => Command::Exit,
        other => unreachable!("command {other} in the table but not parsed"),
    })
}

/// `HOST:PORT` with a numeric port (`[::1]:8002` too).
pub fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// The text of `help` or `help COMMAND`.
pub fn help_text(topic: Option<&str>) -> String {
    match topic.and_then(find) {
        Some(spec) => {
            let mut out = format!("usage: {}\n  {}", spec.usage(), spec.summary);
            if !spec.aliases.is_empty() {
                out.push_str(&format!("\n  also spelt: {}", spec.aliases.join(", ")));
            }
            for line in spec.details.lines() {
                out.push_str("\n  ");
                out.push_str(line.trim_start());
            }
            out
        }
        None => {
            let width = COMMANDS.iter().map(|s| s.usage().len()).max().unwrap_or(0);
            let mut out = String::from("Commands:\n");
            for spec in COMMANDS {
                out.push_str(&format!("  {:width$}  {}\n", spec.usage(), spec.summary));
            }
            out.push_str(
                "Quote values with spaces: set greeting \"hello world\". An unquoted nil is\n\
                 \"absent\" for cas. help COMMAND tells more. Lines starting with # are comments.",
            );
            out
        }
    }
}

/// Completions for the word being typed at the end of `line`: the start of
/// that word and the candidates (each with a trailing space when it ends the
/// word). `addrs` are offered after `connect`.
pub fn complete(line: &str, addrs: &[String]) -> (usize, Vec<String>) {
    let scan = scan(line);
    let typing = if scan.open_word {
        scan.tokens.last().map(|t| t.text.as_str()).unwrap_or("")
    } else {
        ""
    };
    let start = line.len() - if scan.open_word { word_len(line) } else { 0 };
    let position = if scan.open_word {
        scan.tokens.len().saturating_sub(1)
    } else {
        scan.tokens.len()
    };
    let command = scan.tokens.first().and_then(|t| find(&t.text));
    let options: Vec<String> = match (position, command.map(|s| s.name)) {
        (0, _) => {
            let mut names: Vec<String> = COMMANDS.iter().map(|s| s.name.to_string()).collect();
            names.push("quit".into());
            names
        }
        (1, Some("help")) => COMMANDS.iter().map(|s| s.name.to_string()).collect(),
        (1, Some(".verbose")) => vec!["on".into(), "off".into()],
        (1, Some("connect")) => addrs.to_vec(),
        _ => Vec::new(),
    };
    let typed_lower = typing.to_ascii_lowercase();
    let mut candidates: Vec<String> = options
        .into_iter()
        .filter(|o| o.starts_with(&typed_lower) || o.starts_with(typing))
        .map(|o| format!("{o} "))
        .collect();
    candidates.dedup();
    (start, candidates)
}

/// When the word at the end of `line` is a key (the first argument of set,
/// get, delete and cas, or the prefix of keys): where that word starts and
/// what was typed of it. `None` for anything else, and for a word with
/// quotes or escapes in it, whose start the completer cannot replace safely.
pub fn key_being_typed(line: &str) -> Option<(usize, String)> {
    let scan = scan(line);
    if scan.error.is_some() {
        return None;
    }
    let command = find(&scan.tokens.first()?.text)?;
    if !matches!(command.name, "set" | "get" | "delete" | "cas" | "keys") {
        return None;
    }
    if scan.open_word {
        let word = scan.tokens.last()?;
        let typed = &line[line.len() - word_len(line)..];
        if scan.tokens.len() != 2 || word.quoted || typed != word.text {
            return None;
        }
        Some((line.len() - typed.len(), word.text.clone()))
    } else if scan.tokens.len() == 1 && line.ends_with(char::is_whitespace) {
        Some((line.len(), String::new()))
    } else {
        None
    }
}

/// Length in bytes of the last whitespace-free run at the end of `line`.
fn word_len(line: &str) -> usize {
    line.len()
        - line
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8())
}

/// The arguments still to type after what is on the line, e.g. `KEY VALUE`
/// after `set`. `None` when there is nothing useful to show.
pub fn hint(line: &str) -> Option<String> {
    let scan = scan(line);
    let first = scan.tokens.first()?;
    if scan.tokens.len() == 1 && scan.open_word {
        // Still typing the command name: hint only once it is a whole name.
        let spec = find(&first.text)?;
        if spec.args.is_empty() {
            return None;
        }
        return Some(format!(" {}", spec.args));
    }
    let spec = find(&first.text)?;
    let names = spec.arg_names();
    let done = scan.tokens.len() - 1;
    let rest = names.get(done..)?;
    if rest.is_empty() {
        return None;
    }
    let lead = if scan.open_word { " " } else { "" };
    Some(format!("{lead}{}", rest.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn tokenizes_quotes_escapes_and_joined_pieces() {
        assert_eq!(words("set  k   v"), ["set", "k", "v"]);
        assert_eq!(
            words(r#"set greeting "hello world""#),
            ["set", "greeting", "hello world"]
        );
        assert_eq!(words(r#"set k 'a "b" \n'"#), ["set", "k", r#"a "b" \n"#]);
        assert_eq!(
            words(r#"set k "tab\there\nnl \"q\" \\ \u{e9} \d""#),
            ["set", "k", "tab\there\nnl \"q\" \\ \u{e9} \\d"]
        );
        assert_eq!(words(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(words(r"hello\ world"), ["hello world"]);
        assert_eq!(words(r#"set "" """#), ["set", "", ""]);
        assert_eq!(words("  "), Vec::<String>::new());
    }

    #[test]
    fn unterminated_quotes_and_bad_escapes_are_errors() {
        assert!(tokenize(r#"set k "oops"#)
            .unwrap_err()
            .contains("unterminated"));
        assert!(tokenize("set k 'oops")
            .unwrap_err()
            .contains("unterminated"));
        assert!(tokenize(r#"set k "\u{zz}""#).unwrap_err().contains("\\u"));
        assert!(tokenize(r#"set k "\u{110000}""#).is_err());
    }

    #[test]
    fn quote_round_trips_through_tokenize() {
        for s in [
            "plain",
            "",
            "nil",
            "two words",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "'single'",
            "#hash",
            "bell\u{7}",
            "é ü",
            "tab\t",
        ] {
            let line = format!("x {}", quote(s));
            let tokens = tokenize(&line).unwrap();
            assert_eq!(tokens.len(), 2, "{line}");
            assert_eq!(tokens[1].text, s, "{line}");
        }
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("nil"), "\"nil\"");
    }

    #[test]
    fn parses_every_command_with_its_arguments() {
        let p = |l: &str| parse_line(l).unwrap().unwrap();
        assert_eq!(
            p("SET k \"v w\""),
            Command::Set {
                key: "k".into(),
                value: "v w".into()
            }
        );
        assert_eq!(p("get k"), Command::Get { key: "k".into() });
        assert_eq!(p("del k"), Command::Delete { key: "k".into() });
        assert_eq!(
            p("cas k nil v"),
            Command::Cas {
                key: "k".into(),
                expected: None,
                value: Some("v".into())
            }
        );
        assert_eq!(
            p("cas k \"nil\" nil"),
            Command::Cas {
                key: "k".into(),
                expected: Some("nil".into()),
                value: None
            }
        );
        assert_eq!(p("keys"), Command::Keys { prefix: "".into() });
        assert_eq!(
            p("keys user/"),
            Command::Keys {
                prefix: "user/".into()
            }
        );
        assert_eq!(p("health"), Command::Health);
        assert_eq!(p("healthcheck"), Command::Health);
        assert_eq!(p("status"), Command::Status);
        assert_eq!(p("leader"), Command::Leader);
        assert_eq!(
            p("connect 127.0.0.1:8002"),
            Command::Connect {
                addr: "127.0.0.1:8002".into()
            }
        );
        assert_eq!(p("append"), Command::Append);
        assert_eq!(p("vote"), Command::Vote);
        assert_eq!(p("help"), Command::Help { topic: None });
        assert_eq!(
            p("help del"),
            Command::Help {
                topic: Some("delete".into())
            }
        );
        assert_eq!(p(".verbose"), Command::Verbose(None));
        assert_eq!(p(".verbose on"), Command::Verbose(Some(true)));
        assert_eq!(p("quit"), Command::Exit);
        assert_eq!(p("exit"), Command::Exit);
    }

    #[test]
    fn blank_lines_and_comments_are_nothing() {
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("   ").unwrap(), None);
        assert_eq!(parse_line("  # set k v").unwrap(), None);
    }

    #[test]
    fn wrong_arguments_give_a_one_line_usage() {
        let e = |l: &str| parse_line(l).unwrap_err().0;
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
    fn every_command_has_help_and_usage() {
        let all = help_text(None);
        for spec in COMMANDS {
            assert!(all.contains(&spec.usage()), "{}", spec.name);
            assert!(help_text(Some(spec.name)).starts_with(&format!("usage: {}", spec.usage())));
        }
    }

    #[test]
    fn knows_when_a_key_is_being_typed() {
        assert_eq!(key_being_typed("get "), Some((4, String::new())));
        assert_eq!(key_being_typed("get us"), Some((4, "us".to_string())));
        assert_eq!(
            key_being_typed("  SET user/1"),
            Some((6, "user/1".to_string()))
        );
        assert_eq!(key_being_typed("cas lo"), Some((4, "lo".to_string())));
        assert_eq!(key_being_typed("keys "), Some((5, String::new())));
        // Not a key: the command name, a value, other commands, quoted words.
        assert_eq!(key_being_typed("ge"), None);
        assert_eq!(key_being_typed("get"), None);
        assert_eq!(key_being_typed("set k v"), None);
        assert_eq!(key_being_typed("set k "), None);
        assert_eq!(key_being_typed("connect 127"), None);
        assert_eq!(key_being_typed("get \"a b"), None);
        assert_eq!(key_being_typed("get a\\b"), None);
    }

    #[test]
    fn completes_command_names_and_some_arguments() {
        assert_eq!(complete("se", &[]), (0, vec!["set ".to_string()]));
        assert_eq!(
            complete("s", &[]),
            (0, vec!["set ".to_string(), "status ".to_string()])
        );
        assert_eq!(complete("help de", &[]), (5, vec!["delete ".to_string()]));
        assert_eq!(complete(".verbose o", &[]).1, ["on ", "off "]);
        let addrs = vec!["127.0.0.1:8001".to_string()];
        assert_eq!(
            complete("connect ", &addrs),
            (8, vec!["127.0.0.1:8001 ".into()])
        );
        assert!(complete("set k", &[]).1.is_empty());
    }

    #[test]
    fn hints_show_the_arguments_left_to_type() {
        assert_eq!(hint("set").as_deref(), Some(" KEY VALUE"));
        assert_eq!(hint("set ").as_deref(), Some("KEY VALUE"));
        assert_eq!(hint("set foo").as_deref(), Some(" VALUE"));
        assert_eq!(hint("set foo ").as_deref(), Some("VALUE"));
        assert_eq!(hint("set foo bar"), None);
        assert_eq!(hint("cas k ").as_deref(), Some("EXPECTED NEW"));
        assert_eq!(hint("keys").as_deref(), Some(" [PREFIX]"));
        assert_eq!(hint("se"), None);
        assert_eq!(hint("status"), None);
        assert_eq!(hint(""), None);
    }
}
