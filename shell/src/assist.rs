//! What the prompt offers while a line is typed: completion of command
//! names and first arguments, and hints of the arguments left to type. Both
//! read the command table. No I/O here.

use crate::commands::{find, FirstArg, Sub, COMMANDS};
use crate::line::scan;

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
    let names = || COMMANDS.iter().map(|s| s.name.to_string());
    let options: Vec<String> = match (position, command.map(|s| s.first_arg)) {
        // Both ways to leave are offered: `exit` and its alias `quit`.
        (0, _) => names().chain(leave_aliases().map(str::to_string)).collect(),
        (1, _) if command.is_some_and(|s| !s.subs.is_empty()) => command
            .map(|s| s.subs.iter().map(|sub| sub.name.to_string()).collect())
            .unwrap_or_default(),
        (1, Some(FirstArg::Command)) => names().collect(),
        (1, Some(FirstArg::Words(words))) => words.iter().map(|w| w.to_string()).collect(),
        (1, Some(FirstArg::Addr)) => addrs.to_vec(),
        (2.., _) if typing.starts_with("--") => {
            let sub = command
                .zip(scan.tokens.get(1))
                .and_then(|(s, t)| s.sub(&t.text));
            sub.map_or(Vec::new(), flags)
        }
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

/// The flags a subcommand takes, as its arguments spell them
/// (`[--learner]`, `[--peer-addr ADDR]`).
fn flags(sub: &Sub) -> Vec<String> {
    sub.arg_names()
        .iter()
        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

fn leave_aliases() -> impl Iterator<Item = &'static str> {
    COMMANDS
        .iter()
        .filter(|s| s.is_exit())
        .flat_map(|s| s.aliases.iter().copied())
}

/// When the word at the end of `line` is a key (a first argument that is
/// [`FirstArg::Key`], as in get and set): where that word starts and
/// what was typed of it. `None` for anything else, and for a word with
/// quotes or escapes in it, whose start the completer cannot replace safely.
pub fn key_being_typed(line: &str) -> Option<(usize, String)> {
    let scan = scan(line);
    if scan.error.is_some() {
        return None;
    }
    let command = find(&scan.tokens.first()?.text)?;
    if command.first_arg != FirstArg::Key {
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
/// after `set`, `NAME[:PASSWORD]` after `user add`. `None` when there is
/// nothing useful to show.
pub fn hint(line: &str) -> Option<String> {
    let scan = scan(line);
    let spec = find(&scan.tokens.first()?.text)?;
    // The placeholders of the words after the command's name.
    let names: Vec<String> = if spec.subs.is_empty() {
        spec.arg_names().iter().map(|n| n.to_string()).collect()
    } else {
        let sub = scan.tokens.get(1).and_then(|t| spec.sub(&t.text));
        let args = sub.map_or(Vec::new(), Sub::arg_names);
        std::iter::once(spec.sub_names())
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    };
    if scan.tokens.len() == 1 && scan.open_word {
        // Still typing the command name: hint only once it is a whole name.
        if names.is_empty() {
            return None;
        }
        return Some(format!(" {}", names.join(" ")));
    }
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
        assert_eq!(complete("q", &[]), (0, vec!["quit ".to_string()]));
        assert_eq!(complete(".verbose o", &[]).1, ["on ", "off "]);
        let addrs = vec!["127.0.0.1:8001".to_string()];
        assert_eq!(
            complete("connect ", &addrs),
            (8, vec!["127.0.0.1:8001 ".into()])
        );
        assert!(complete("set k", &[]).1.is_empty());
        // Subcommands.
        assert_eq!(
            complete("user ", &[]).1,
            [
                "add ",
                "delete ",
                "get ",
                "list ",
                "passwd ",
                "grant-role ",
                "revoke-role "
            ]
        );
        assert_eq!(complete("role g", &[]).1, ["get ", "grant-permission "]);
        assert_eq!(complete("auth ", &[]).1, ["enable ", "disable ", "status "]);
        assert_eq!(complete("log", &[]), (0, vec!["login ".to_string()]));
        assert!(complete("user add ", &[]).1.is_empty());
        // Membership: subcommands, and the flags of the one typed.
        assert_eq!(
            complete("member ", &[]).1,
            ["list ", "add ", "promote ", "remove ", "update "]
        );
        assert_eq!(complete("tr", &[]).1, ["transfer-leader "]);
        assert_eq!(
            complete("member add 4 127.0.0.1:8004 --", &[]),
            (
                28,
                vec![
                    "--peer-addr ".to_string(),
                    "--learner ".to_string(),
                    "--force ".to_string()
                ]
            )
        );
        assert_eq!(complete("member add 4 --l", &[]).1, ["--learner "]);
        assert_eq!(complete("member promote 4 --", &[]).1, ["--force "]);
        assert_eq!(
            complete("role revoke-permission r k --", &[]).1,
            ["--prefix "]
        );
        assert!(complete("member list --", &[]).1.is_empty());
        assert!(complete("member frob --", &[]).1.is_empty());
        assert!(complete("set k --", &[]).1.is_empty());
    }

    #[test]
    fn hints_show_the_arguments_left_to_type() {
        assert_eq!(hint("set").as_deref(), Some(" KEY VALUE [--lease ID]"));
        assert_eq!(hint("set ").as_deref(), Some("KEY VALUE [--lease ID]"));
        assert_eq!(hint("set foo").as_deref(), Some(" VALUE [--lease ID]"));
        assert_eq!(hint("set foo ").as_deref(), Some("VALUE [--lease ID]"));
        assert_eq!(hint("set foo bar").as_deref(), Some(" [--lease ID]"));
        assert_eq!(hint("set foo bar --lease 7"), None);
        assert_eq!(hint("cas k ").as_deref(), Some("EXPECTED NEW"));
        assert_eq!(hint("keys").as_deref(), Some(" [PREFIX]"));
        assert_eq!(hint("se"), None);
        assert_eq!(hint("status"), None);
        assert_eq!(hint(""), None);
        // Subcommands: their names, then the chosen one's arguments.
        assert_eq!(hint("auth").as_deref(), Some(" enable|disable|status"));
        assert_eq!(hint("user add").as_deref(), Some(" NAME[:PASSWORD]"));
        assert_eq!(hint("user ad"), None);
        assert_eq!(
            hint("role grant-permission app ").as_deref(),
            Some("read|write|readwrite KEY [--prefix]")
        );
        assert_eq!(hint("role list"), None);
        assert_eq!(hint("login").as_deref(), Some(" USER"));
        assert_eq!(
            hint("member").as_deref(),
            Some(" list|add|promote|remove|update")
        );
        assert_eq!(
            hint("member add 4 ").as_deref(),
            Some("ADDR [--peer-addr ADDR] [--learner] [--force]")
        );
        assert_eq!(hint("member promote").as_deref(), Some(" ID [--force]"));
        assert_eq!(hint("transfer-leader").as_deref(), Some(" ID"));
        assert_eq!(hint("member list"), None);
    }
}
