//! `set KEY VALUE [--lease ID]`: a write, attached to a lease if given.

use poncho_protocol::{ClientRequest, SetReply, SetRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{payload, Done, Outcome};
use crate::line::Token;

pub const SPEC: Spec = Spec {
    name: "set",
    aliases: &[],
    args: "KEY VALUE [--lease ID]",
    summary: "store VALUE under KEY",
    details: "Quote a value with spaces: set greeting \"hello world\".\n\
              With --lease ID the key is attached to that lease (see help lease): it is\n\
              deleted when the lease ends. Without, a key that was attached is not any more.\n\
              A key or value that starts with -- is quoted: set k \"--lease\"; after a bare --\n\
              every word is one (for one-shot use: poncho-shell set k -- --lease).\n\
              Prints OK once a majority of the cluster has the write.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub key: String,
    pub value: String,
    pub lease: Option<u64>,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    match parse_words(args.tokens()) {
        Ok(set) => Ok(Box::new(set)),
        Err(Some(what)) => Err(args.wrong(what)),
        Err(None) => Err(args.usage()),
    }
}

/// The words after `set` (also a `set` of `txn`): `Err(None)` if they are
/// not the arguments set takes, `Err(Some(what))` saying what is wrong.
///
/// An unquoted word that starts with `--` is a flag: `--lease ID` (or
/// `--lease=ID`), anywhere; a bare `--` ends the flags, so that in one-shot
/// mode (where your shell has taken the quotes off) `set k -- --lease`
/// stores `--lease`. A quoted word is always a key or a value.
pub(super) fn parse_words(tokens: &[Token]) -> Result<Set, Option<String>> {
    let mut positional = Vec::new();
    let mut lease = None;
    let mut flags_done = false;
    let mut tokens = tokens.iter();
    while let Some(t) = tokens.next() {
        if flags_done || t.quoted || !t.text.starts_with("--") {
            positional.push(t.text.clone());
            continue;
        }
        let (flag, inline) = match t.text.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (t.text.as_str(), None),
        };
        match flag {
            "--" if inline.is_none() => flags_done = true,
            "--lease" => {
                let id = inline
                    .or_else(|| tokens.next().map(|t| t.text.clone()))
                    .ok_or_else(|| Some("--lease needs a lease id".to_string()))?;
                let id = super::lease::lease_id(&id)?;
                if lease.replace(id).is_some() {
                    return Err(Some("--lease is given twice".into()));
                }
            }
            _ => {
                return Err(Some(format!(
                    "{} is not a flag of set (quote a key or value that starts with --)",
                    t.text
                )))
            }
        }
    }
    let [key, value]: [String; 2] = positional.try_into().map_err(|_| None)?;
    Ok(Set { key, value, lease })
}

impl Action for Set {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let r: SetReply = payload(client.write(|session| {
            ClientRequest::Set(SetRequest {
                key: self.key.clone(),
                value: self.value.clone(),
                lease: self.lease,
                session,
            })
        })?)?;
        let mut json = json!({"key": r.key, "index": r.index});
        if let Some(id) = self.lease {
            json["lease"] = id.into();
        }
        Ok(Done::new("OK", "OK", json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::tokenize;

    fn words(line: &str) -> Result<Set, Option<String>> {
        parse_words(&tokenize(line).unwrap())
    }

    fn set(key: &str, value: &str, lease: Option<u64>) -> Set {
        Set {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    #[test]
    fn set_takes_a_lease_anywhere_and_quoted_words_are_never_flags() {
        for (line, expected) in [
            ("k v", set("k", "v", None)),
            ("k v --lease 7", set("k", "v", Some(7))),
            ("--lease 7 k v", set("k", "v", Some(7))),
            ("k --lease=12 v", set("k", "v", Some(12))),
            // Values that look like flags, quoted, as before leases.
            ("k \"--lease\"", set("k", "--lease", None)),
            ("\"--k\" '--x' --lease 3", set("--k", "--x", Some(3))),
            ("k -1", set("k", "-1", None)),
            ("k \"\"", set("k", "", None)),
            // After a bare --, every word is a key or a value.
            ("k -- --lease", set("k", "--lease", None)),
            ("--lease 2 -- --k --v", set("--k", "--v", Some(2))),
        ] {
            assert_eq!(words(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn bad_set_words_say_what_is_wrong() {
        for (line, says) in [
            ("k v --lease", Some("--lease needs a lease id")),
            (
                "k v --lease x",
                Some("x is not a lease id (a number from 1)"),
            ),
            ("k v --lease 0", Some("0 is not a lease id")),
            ("k v --lease -3", Some("-3 is not a lease id")),
            ("k v --lease 1 --lease 2", Some("--lease is given twice")),
            ("k --leas 5", Some("--leas is not a flag of set")),
            (
                "k --value",
                Some("quote a key or value that starts with --"),
            ),
            ("k", None),
            ("k v w", None),
            ("k --lease 3", None),
            ("k v -- --lease 3", None),
        ] {
            let e = words(line).expect_err(line);
            match says {
                Some(says) => assert!(e.as_deref().unwrap_or("").contains(says), "{line}: {e:?}"),
                None => assert_eq!(e, None, "{line}"),
            }
        }
    }
}
