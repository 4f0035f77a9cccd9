//! `txn [COMPARE...] [then OP...] [else OP...]`: a transaction (`TXN`), in
//! etcdctl's spirit. If every comparison holds, the `then` operations run,
//! else the `else` ones, all at one revision.
//!
//! One line: each comparison and each operation is one word (quote it), cut
//! into its own words by the shell's tokenizer, so quoting inside works:
//!
//! ```text
//! txn 'version(lock) = 0' 'value(cfg) != "x"' then 'set lock me' 'del old --prefix' else 'get lock'
//! ```
//!
//! With no arguments it reads the lines after it, as `etcdctl txn -i` does:
//! the comparisons one a line up to an empty line, then the `then`
//! operations up to an empty line, then the `else` ones up to an empty line
//! (or the end of the input).

use poncho_protocol::{
    ClientRequest, Compare, CompareOp, CompareTarget, CompareValue, RangeReply, RangeRequest,
    SessionFields, Txn, TxnOp, TxnOpReply, TxnReply, TxnRequest, MAX_RANGE_LIMIT,
};
use serde_json::json;

use super::get::{self, Get};
use super::set;
use super::{Action, Args, FirstArg, Kind, Lines, NextLine, Spec, UsageError};
use crate::client::{ClientError, ClusterClient, Route};
use crate::exec::{payload, plain_value, pretty_value, Done, Failure, Outcome};
use crate::line::{quote, quote_always, tokenize, Token};

pub const SPEC: Spec = Spec {
    name: "txn",
    aliases: &[],
    args: "[COMPARE...] [then OP...] [else OP...]",
    summary: "a transaction: if every COMPARE holds run the then OPs, else the else OPs",
    details: "All at one revision, atomically. Each COMPARE and each OP is one word: quote it.\n\
              txn 'version(lock) = 0' then 'set lock me' 'get lock' else 'get lock'\n\
              A COMPARE is value(KEY) OP \"TEXT\", version(KEY) OP N, create(KEY) OP N\n\
              or mod(KEY) OP N (create and mod revisions), with OP one of = (or ==) != < >.\n\
              A missing key has version, create and mod 0 (version(k) = 0: k is absent),\n\
              and no value: a value comparison of it fails. Quote a key with spaces:\n\
              'version(\"my key\") > 0'.\n\
              An OP is set KEY VALUE [--lease ID], del KEY [--prefix | --range END] or\n\
              get KEY [--prefix | --range END] [--limit N] [--keys-only] [--count].\n\
              A branch writes each key at most once; at most 128 compares and 128 OPs each.\n\
              With no arguments, txn reads the lines after it: the compares one a line,\n\
              an empty line, the then OPs, an empty line, the else OPs, an empty line.\n\
              Prints SUCCESS or FAILURE, then each OP's result: OK for set, the number\n\
              deleted for del, what get prints for get.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse,
};

/// What a comparison word looks like, for errors.
const COMPARE_FORM: &str = "a comparison is value(KEY) OP \"TEXT\", version(KEY) OP N, \
                            create(KEY) OP N or mod(KEY) OP N, OP one of = != < >";

/// The transaction, or (with no arguments) one whose body is still to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub txn: Txn,
    /// It reads its body from the lines after it ([`Action::read_lines`]).
    pub interactive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Compare,
    Success,
    Failure,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let interactive = args.tokens().is_empty();
    let mut txn = Txn::default();
    let mut part = Part::Compare;
    for t in args.tokens() {
        // An unquoted then or else separates the parts; "then" is a word.
        let keyword = (!t.quoted).then(|| t.text.to_ascii_lowercase());
        match (keyword.as_deref(), part) {
            (Some("then"), Part::Compare) => part = Part::Success,
            (Some("then"), Part::Success) => return Err(args.wrong("then is given twice")),
            (Some("then"), Part::Failure) => return Err(args.wrong("then comes before else")),
            (Some("else"), Part::Failure) => return Err(args.wrong("else is given twice")),
            (Some("else"), _) => part = Part::Failure,
            _ => add(&mut txn, part, &t.text).map_err(|what| args.wrong(what))?,
        }
    }
    Ok(Box::new(Transaction { txn, interactive }))
}

/// Parses `word` as a comparison or an operation of `part`, and adds it.
fn add(txn: &mut Txn, part: Part, word: &str) -> Result<(), String> {
    match part {
        Part::Compare => txn.compare.push(parse_compare(word)?),
        Part::Success => txn.success.push(parse_op(word)?),
        Part::Failure => txn.failure.push(parse_op(word)?),
    }
    Ok(())
}

/// `value(KEY) OP "TEXT"`, `version(KEY) OP N`, `create(KEY) OP N` or
/// `mod(KEY) OP N`.
pub fn parse_compare(word: &str) -> Result<Compare, String> {
    let shown = quote(word);
    let tokens = tokenize(word).map_err(|e| format!("{shown}: {e}"))?;
    let operation = tokens.first().is_some_and(|t| {
        matches!(
            t.text.to_ascii_lowercase().as_str(),
            "set" | "put" | "get" | "del" | "delete"
        )
    });
    if operation {
        return Err(format!(
            "{shown} is not a comparison: operations come after then"
        ));
    }
    let [target, op, value] = tokens.as_slice() else {
        let hint = if tokens.len() == 1 {
            " (quote each comparison as one word: 'version(k) = 0')"
        } else {
            ""
        };
        return Err(format!("{shown} is not a comparison: {COMPARE_FORM}{hint}"));
    };
    let (name, key) = target
        .text
        .split_once('(')
        .and_then(|(name, rest)| Some((name, rest.strip_suffix(')')?)))
        .ok_or_else(|| format!("{shown} is not a comparison: {COMPARE_FORM}"))?;
    let target = match name.to_ascii_lowercase().as_str() {
        "value" => CompareTarget::Value,
        "version" => CompareTarget::Version,
        "create" | "create_revision" => CompareTarget::CreateRevision,
        "mod" | "mod_revision" => CompareTarget::ModRevision,
        _ => {
            return Err(format!(
                "in {shown}: {} is not value, version, create or mod",
                quote(name)
            ))
        }
    };
    let op = match op.text.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => return Err(format!("in {shown}: {} is not =, !=, < or >", quote(other))),
    };
    let value = match target {
        CompareTarget::Value if value.nullable().is_none() => {
            return Err(format!(
            "in {shown}: an unquoted nil is no value; compare version({}) = 0 for an absent key",
            quote(key)
        ))
        }
        CompareTarget::Value => CompareValue::Text(value.text.clone()),
        _ => match value.text.parse::<u64>() {
            Ok(n) => CompareValue::Number(n),
            Err(_) => {
                return Err(format!(
                    "in {shown}: {} is not a number (0 or more)",
                    quote(&value.text)
                ))
            }
        },
    };
    Ok(Compare {
        key: key.to_string(),
        target,
        op,
        value,
    })
}

const SET_USAGE: &str = "set KEY VALUE [--lease ID]";
const DEL_USAGE: &str = "del KEY [--prefix | --range END]";
const GET_USAGE: &str = "get KEY [--prefix | --range END] [--limit N] [--keys-only] [--count]";

/// `set KEY VALUE [--lease ID]`, `del KEY [--prefix | --range END]` or `get KEY
/// [--prefix | --range END] [--limit N] [--keys-only] [--count]`.
pub fn parse_op(word: &str) -> Result<TxnOp, String> {
    let shown = quote(word);
    let tokens = tokenize(word).map_err(|e| format!("{shown}: {e}"))?;
    let Some((name, rest)) = tokens.split_first() else {
        return Err(format!("{shown} is not an operation: set, del or get"));
    };
    let usage = |usage: &str| {
        let hint = if rest.is_empty() {
            " (quote each operation as one word: 'set k v')"
        } else {
            ""
        };
        format!("in {shown}: usage: {usage}{hint}")
    };
    match name.text.to_ascii_lowercase().as_str() {
        "set" | "put" => match set::parse_words(rest) {
            Ok(s) => Ok(TxnOp::Put {
                key: s.key,
                value: s.value,
                lease: s.lease,
            }),
            Err(Some(what)) => Err(format!("in {shown}: {what}")),
            Err(None) => Err(usage(SET_USAGE)),
        },
        "del" | "delete" => parse_delete(rest).map_err(|what| match what {
            Some(what) => format!("in {shown}: {what}"),
            None => usage(DEL_USAGE),
        }),
        "get" => match get::parse_words(rest) {
            Ok(Get::Key(key)) => Ok(TxnOp::Range(RangeRequest {
                key,
                ..RangeRequest::default()
            })),
            Ok(Get::Range(r)) if r.rev.is_some() => Err(format!(
                "in {shown}: --rev does not apply: a transaction reads at its own revision"
            )),
            Ok(Get::Range(r)) => Ok(TxnOp::Range(RangeRequest {
                key: r.key,
                range_end: r.end,
                prefix: r.prefix,
                limit: r.limit,
                keys_only: r.keys_only,
                count_only: r.count,
                ..RangeRequest::default()
            })),
            Err(Some(what)) => Err(format!("in {shown}: {what}")),
            Err(None) => Err(usage(GET_USAGE)),
        },
        _ => Err(format!(
            "in {shown}: {} is not an operation: set, del or get",
            quote(&name.text)
        )),
    }
}

/// The words after `del`: `Err(None)` for the wrong number of them.
fn parse_delete(tokens: &[Token]) -> Result<TxnOp, Option<String>> {
    let mut key = None;
    let mut prefix = false;
    let mut range_end = None;
    let mut tokens = tokens.iter();
    while let Some(t) = tokens.next() {
        if t.quoted || !t.text.starts_with("--") {
            if key.replace(t.text.clone()).is_some() {
                return Err(None);
            }
            continue;
        }
        match t.text.as_str() {
            "--prefix" => prefix = true,
            "--range" => {
                let end = tokens
                    .next()
                    .ok_or_else(|| Some("--range needs an end key".to_string()))?;
                range_end = Some(end.text.clone());
            }
            other => return Err(Some(format!("{other} is not a flag of del"))),
        }
    }
    let key = key.ok_or(None)?;
    if prefix && range_end.is_some() {
        return Err(Some("--prefix and --range exclude each other".into()));
    }
    Ok(TxnOp::Delete {
        key,
        range_end,
        prefix,
    })
}

impl Transaction {
    /// The error for a bad word of the body, as for the one-line form.
    fn wrong(what: String) -> Failure {
        Failure::Usage(UsageError::Wrong(what, Box::new(UsageError::Arguments(&SPEC))).to_string())
    }
}

impl Action for Transaction {
    fn read_lines(&mut self, lines: &mut dyn Lines) -> Result<(), Failure> {
        if !self.interactive {
            return Ok(());
        }
        self.interactive = false;
        // A bad line does not stop the reading: the rest of the body must
        // not be run as commands. The first error is reported at the end.
        let mut error = None;
        for (part, title) in [
            (Part::Compare, "compares:"),
            (Part::Success, "success requests (get, set, del):"),
            (Part::Failure, "failure requests (get, set, del):"),
        ] {
            lines.section(title);
            loop {
                let line = match lines.next_line()? {
                    NextLine::End => return error.map_or(Ok(()), Err),
                    NextLine::Unreadable(why) => {
                        error.get_or_insert(Failure::Usage(why));
                        continue;
                    }
                    NextLine::Line(line) => line,
                };
                let word = line.trim();
                if word.is_empty() {
                    break;
                }
                if word.starts_with('#') {
                    continue;
                }
                if let Err(what) = add(&mut self.txn, part, word) {
                    error.get_or_insert(Transaction::wrong(what));
                }
            }
        }
        error.map_or(Ok(()), Err)
    }

    fn run(&self, client: &mut ClusterClient) -> Outcome {
        if self.interactive {
            return Err(Failure::Usage(
                "txn with no arguments reads its body from the lines after it, \
                 which were not read"
                    .into(),
            ));
        }
        let reply = if self.txn.is_read_only() {
            // Answered as a read, outside the log: no session needed.
            let request = ClientRequest::Txn(TxnRequest {
                txn: self.txn.clone(),
                session: SessionFields::default(),
            });
            client.request(&request, Route::Leader)?
        } else {
            client.write(|session| {
                ClientRequest::Txn(TxnRequest {
                    txn: self.txn.clone(),
                    session,
                })
            })?
        };
        render(&self.txn, payload(reply)?)
    }
}

/// The reply: `SUCCESS` or `FAILURE`, then a line (or a few) per operation
/// of the branch that ran.
fn render(txn: &Txn, r: TxnReply) -> Outcome {
    let branch = if r.succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    if r.responses.len() != branch.len() {
        return Err(Failure::Call(ClientError::Protocol(format!(
            "the TXN reply holds {} responses for {} requests",
            r.responses.len(),
            branch.len()
        ))));
    }
    let verdict = if r.succeeded { "SUCCESS" } else { "FAILURE" };
    let mut plain = vec![verdict.to_string()];
    let mut pretty = vec![format!("{verdict} (revision {})", r.revision)];
    let mut hints = Vec::new();
    let width = branch.len().to_string().len();
    for (i, (op, response)) in branch.iter().zip(&r.responses).enumerate() {
        let shown = describe(op);
        let (p, nice) = render_response(op, response);
        plain.push(p);
        let lead = format!("{:>width$}) {shown}:", i + 1);
        if nice.contains('\n') {
            let indent = " ".repeat(width + 4);
            let body: Vec<String> = nice.lines().map(|l| format!("{indent}{l}")).collect();
            pretty.push(format!("{lead}\n{}", body.join("\n")));
        } else {
            pretty.push(format!("{lead} {nice}"));
        }
        if let Some(hint) = truncated(op, response, r.revision) {
            hints.push(format!("{shown}: {hint}"));
        }
    }
    let done = Done::new(
        plain.join("\n"),
        pretty.join("\n"),
        json!({
            "succeeded": r.succeeded,
            "responses": r.responses,
            "revision": r.revision,
            "index": r.index,
        }),
    );
    Ok(done.with_hint((!hints.is_empty()).then(|| hints.join("; "))))
}

/// One operation's result, plain and pretty.
fn render_response(op: &TxnOp, response: &TxnOpReply) -> (String, String) {
    match response {
        TxnOpReply::Put {} => ("OK".into(), "OK".into()),
        TxnOpReply::Delete { deleted } => (deleted.to_string(), format!("{deleted} deleted")),
        TxnOpReply::Range(range) => {
            let default = RangeRequest::default();
            let request = match op {
                TxnOp::Range(request) => request,
                _ => &default,
            };
            render_range(request, range)
        }
    }
}

/// As `get` prints it: a key's value (or `(nil)`), a listing, or a count.
fn render_range(request: &RangeRequest, range: &RangeReply) -> (String, String) {
    if request.count_only {
        return (range.count.to_string(), range.count.to_string());
    }
    let one_key = !request.prefix && request.range_end.is_none() && !request.keys_only;
    if one_key {
        let value = range.kvs.first().and_then(|kv| kv.value.clone());
        let plain = value.as_deref().map_or("(nil)".into(), plain_value);
        return (plain, pretty_value(&value));
    }
    let (plain, pretty) = get::render_kvs(&range.kvs, request.keys_only);
    if range.kvs.is_empty() {
        return (plain, pretty);
    }
    let keys = if range.count == 1 { "key" } else { "keys" };
    let pretty = format!("{} of {} {keys}\n{pretty}", range.kvs.len(), range.count);
    (plain, pretty)
}

/// What to say of a listing the reply cut short (not by the `--limit`
/// asked for).
fn truncated(op: &TxnOp, response: &TxnOpReply, revision: u64) -> Option<String> {
    let (TxnOp::Range(request), TxnOpReply::Range(range)) = (op, response) else {
        return None;
    };
    let listed = range.kvs.len() as u64;
    if !range.more || request.count_only || request.limit.is_some_and(|l| listed >= l) {
        return None;
    }
    Some(format!(
        "the reply lists {listed} of {} keys (at most {MAX_RANGE_LIMIT} or 4 MiB a reply); \
         read the rest with get ... --rev {revision}",
        range.count
    ))
}

/// An operation as it is typed: `del old --prefix`.
fn describe(op: &TxnOp) -> String {
    // A key that looks like a flag is quoted, as it must be typed.
    let quote = |s: &str| {
        if s.starts_with("--") {
            quote_always(s)
        } else {
            quote(s)
        }
    };
    match op {
        TxnOp::Put { key, value, lease } => {
            let mut s = format!("set {} {}", quote(key), quote(value));
            if let Some(id) = lease {
                s.push_str(&format!(" --lease {id}"));
            }
            s
        }
        TxnOp::Delete {
            key,
            range_end,
            prefix,
        } => {
            let mut s = format!("del {}", quote(key));
            if *prefix {
                s.push_str(" --prefix");
            }
            if let Some(end) = range_end {
                s.push_str(&format!(" --range {}", quote(end)));
            }
            s
        }
        TxnOp::Range(r) => {
            let mut s = format!("get {}", quote(&r.key));
            if r.prefix {
                s.push_str(" --prefix");
            }
            if let Some(end) = &r.range_end {
                s.push_str(&format!(" --range {}", quote(end)));
            }
            if let Some(limit) = r.limit {
                s.push_str(&format!(" --limit {limit}"));
            }
            if r.keys_only {
                s.push_str(" --keys-only");
            }
            if r.count_only {
                s.push_str(" --count");
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;
    use std::collections::VecDeque;

    use poncho_protocol::KeyValue;

    use super::*;
    use crate::commands::parse_line;

    fn compare(key: &str, target: CompareTarget, op: CompareOp, value: CompareValue) -> Compare {
        Compare {
            key: key.into(),
            target,
            op,
            value,
        }
    }

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    fn range(key: &str) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        }
    }

    /// The transaction a line parses to.
    fn parsed(line: &str) -> Transaction {
        let command = parse_line(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .expect("a command");
        let action: &dyn Any = command.action.as_ref();
        action
            .downcast_ref::<Transaction>()
            .unwrap_or_else(|| panic!("{line} parsed as {command:?}"))
            .clone()
    }

    fn error(line: &str) -> String {
        parse_line(line).expect_err(line).to_string()
    }

    #[test]
    fn every_comparison_form_parses() {
        use CompareOp::*;
        use CompareTarget::*;
        use CompareValue::{Number, Text};
        for (word, expected) in [
            (
                r#"value(cfg) = "x y""#,
                compare("cfg", Value, Equal, Text("x y".into())),
            ),
            (
                "value(cfg) == plain",
                compare("cfg", Value, Equal, Text("plain".into())),
            ),
            (
                r#"value(cfg) != "nil""#,
                compare("cfg", Value, NotEqual, Text("nil".into())),
            ),
            (
                r#"value(k) < """#,
                compare("k", Value, Less, Text(String::new())),
            ),
            (
                "version(lock) = 0",
                compare("lock", Version, Equal, Number(0)),
            ),
            (
                "VERSION(lock) > 2",
                compare("lock", Version, Greater, Number(2)),
            ),
            (
                "create(a) < 10",
                compare("a", CreateRevision, Less, Number(10)),
            ),
            (
                "create_revision(a) != 3",
                compare("a", CreateRevision, NotEqual, Number(3)),
            ),
            ("mod(a) > 7", compare("a", ModRevision, Greater, Number(7))),
            (
                "mod_revision(a) = 7",
                compare("a", ModRevision, Equal, Number(7)),
            ),
            // A key with spaces is quoted; one with parentheses needs not be.
            (
                r#"version("my key") > 0"#,
                compare("my key", Version, Greater, Number(0)),
            ),
            (
                "version(f(x)) = 1",
                compare("f(x)", Version, Equal, Number(1)),
            ),
            (
                "  version(k)   =   1 ",
                compare("k", Version, Equal, Number(1)),
            ),
        ] {
            assert_eq!(parse_compare(word), Ok(expected), "{word}");
        }
    }

    #[test]
    fn bad_comparisons_say_which_word_and_why() {
        for (word, says) in [
            ("version(k)", "quote each comparison as one word"),
            ("version(k) = 0 1", "is not a comparison"),
            ("", "is not a comparison"),
            ("set k v", "operations come after then"),
            ("version k = 0", "is not a comparison"),
            ("version(k = 0", "is not a comparison"),
            (
                "verion(k) = 0",
                "verion is not value, version, create or mod",
            ),
            ("lease(k) = 0", "lease is not value"),
            ("version(k) <= 0", "<= is not =, !=, < or >"),
            ("version(k) = x", "x is not a number"),
            ("version(k) = -1", "-1 is not a number"),
            ("mod(k) = \"\"", "\"\" is not a number"),
            ("value(k) = nil", "compare version(k) = 0"),
            ("value(k) = \"open", "unterminated"),
        ] {
            let e = parse_compare(word).expect_err(word);
            assert!(e.contains(says), "{word}: {e}");
            assert!(e.contains(&quote(word)), "{word}: names the word: {e}");
        }
    }

    #[test]
    fn every_operation_form_parses() {
        let del = |key: &str, range_end: Option<&str>, prefix| TxnOp::Delete {
            key: key.into(),
            range_end: range_end.map(str::to_string),
            prefix,
        };
        for (word, expected) in [
            ("set lock me", put("lock", "me")),
            (r#"SET "my key" 'a "b"'"#, put("my key", "a \"b\"")),
            ("put k nil", put("k", "nil")),
            (
                "set svc/a up --lease 7",
                TxnOp::Put {
                    key: "svc/a".into(),
                    value: "up".into(),
                    lease: Some(7),
                },
            ),
            (
                r#"set --lease=3 k "--lease""#,
                TxnOp::Put {
                    key: "k".into(),
                    value: "--lease".into(),
                    lease: Some(3),
                },
            ),
            (r#"set "--k" '--v'"#, put("--k", "--v")),
            ("del old", del("old", None, false)),
            ("delete old --prefix", del("old", None, true)),
            ("del a --range c", del("a", Some("c"), false)),
            (r#"del a --range """#, del("a", Some(""), false)),
            (r#"del "--prefix""#, del("--prefix", None, false)),
            (
                r#"get "--count" --range "--z""#,
                TxnOp::Range(RangeRequest {
                    range_end: Some("--z".into()),
                    ..range("--count")
                }),
            ),
            ("get lock", TxnOp::Range(range("lock"))),
            (
                "get app/ --prefix --limit 5 --keys-only",
                TxnOp::Range(RangeRequest {
                    prefix: true,
                    limit: Some(5),
                    keys_only: true,
                    ..range("app/")
                }),
            ),
            (
                "get a --range c --count",
                TxnOp::Range(RangeRequest {
                    range_end: Some("c".into()),
                    count_only: true,
                    ..range("a")
                }),
            ),
        ] {
            assert_eq!(parse_op(word).as_ref(), Ok(&expected), "{word}");
            // What the pretty output labels it with reads back the same.
            assert_eq!(parse_op(&describe(&expected)), Ok(expected), "{word}");
        }
    }

    #[test]
    fn bad_operations_say_which_word_and_why() {
        for (word, says) in [
            ("", "is not an operation"),
            ("cas k a b", "cas is not an operation: set, del or get"),
            ("set k", "usage: set KEY VALUE"),
            ("set k v w", "usage: set KEY VALUE [--lease ID]"),
            ("set k v --lease", "--lease needs a lease id"),
            ("set k v --lease 0", "0 is not a lease id (a number from 1)"),
            ("set k --x", "--x is not a flag of set"),
            ("del", "usage: del KEY [--prefix | --range END]"),
            ("del a b", "usage: del KEY"),
            ("del a --prefix --range b", "exclude each other"),
            ("del a --range", "--range needs an end key"),
            ("del a --force", "--force is not a flag of del"),
            ("get", "usage: get KEY"),
            ("get a --rev 3", "--rev does not apply"),
            ("get a --limit 0", "not a limit"),
            ("get a --count --keys-only", "exclude each other"),
            ("get a --sorted", "--sorted is not a flag of get"),
            ("set k \"v", "unterminated"),
        ] {
            let e = parse_op(word).expect_err(word);
            assert!(e.contains(says), "{word}: {e}");
            assert!(e.contains(&quote(word)), "{word}: names the word: {e}");
        }
    }

    #[test]
    fn the_one_line_form_splits_at_then_and_else() {
        let t = parsed(
            r#"txn 'version(lock) = 0' 'value(cfg) != "x"' then 'set lock me' 'del old --prefix' 'get lock' else 'get lock'"#,
        );
        assert!(!t.interactive);
        assert_eq!(
            t.txn.compare,
            [
                parse_compare("version(lock) = 0").unwrap(),
                parse_compare("value(cfg) != \"x\"").unwrap()
            ]
        );
        assert_eq!(
            t.txn.success,
            [
                put("lock", "me"),
                parse_op("del old --prefix").unwrap(),
                TxnOp::Range(range("lock"))
            ]
        );
        assert_eq!(t.txn.failure, [TxnOp::Range(range("lock"))]);
        // The keywords are case-insensitive; either part may be left out.
        let t = parsed("TXN \"version(k) = 0\" ELSE \"get k\"");
        assert_eq!(t.txn.compare.len(), 1);
        assert!(t.txn.success.is_empty());
        assert_eq!(t.txn.failure, [TxnOp::Range(range("k"))]);
        let t = parsed("txn then 'set k v'");
        assert!(t.txn.compare.is_empty() && t.txn.failure.is_empty());
        assert_eq!(t.txn.success, [put("k", "v")]);
        // No arguments: the body comes from the lines after.
        let t = parsed("txn");
        assert!(t.interactive);
        assert_eq!(t.txn, Txn::default());
    }

    #[test]
    fn the_one_line_form_says_what_is_wrong() {
        let usage = "usage: txn [COMPARE...] [then OP...] [else OP...]";
        assert_eq!(
            error("txn then 'set k v' then 'get k'"),
            format!("then is given twice; {usage}")
        );
        assert_eq!(
            error("txn else 'get k' then 'set k v'"),
            format!("then comes before else; {usage}")
        );
        assert_eq!(
            error("txn else 'get k' else 'get k'"),
            format!("else is given twice; {usage}")
        );
        // A quoted then is a word, and no comparison.
        assert!(error("txn \"then\" 'set k v'").starts_with("then is not a comparison"));
        assert_eq!(
            error("txn 'version(k) = 0' then 'sett k v'"),
            format!("in \"sett k v\": sett is not an operation: set, del or get; {usage}")
        );
        // Unquoted, the words of one comparison are comparisons each.
        assert!(error("txn version(k) = 0 then 'set k v'")
            .starts_with("version(k) is not a comparison"));
        assert!(error("txn 'version(k) = 0' then set k v").starts_with(
            "in set: usage: set KEY VALUE [--lease ID] (quote each operation as one word"
        ));
    }

    /// Lines as a script gives them, with the titles it was told.
    struct Script {
        lines: VecDeque<Result<NextLine, Failure>>,
        titles: Vec<String>,
    }

    impl Script {
        fn new(lines: &[&str]) -> Script {
            Script {
                lines: lines
                    .iter()
                    .map(|l| Ok(NextLine::Line(l.to_string())))
                    .collect(),
                titles: Vec::new(),
            }
        }
    }

    impl Lines for Script {
        fn section(&mut self, title: &str) {
            self.titles.push(title.to_string());
        }

        fn next_line(&mut self) -> Result<NextLine, Failure> {
            self.lines.pop_front().unwrap_or(Ok(NextLine::End))
        }
    }

    fn read(script: &mut Script) -> Result<Txn, Failure> {
        let mut t = parsed("txn");
        t.read_lines(script)?;
        assert!(!t.interactive);
        Ok(t.txn)
    }

    #[test]
    fn the_interactive_form_reads_three_parts_ended_by_empty_lines() {
        let mut script = Script::new(&[
            "version(lock) = 0",
            "# a comment",
            "  value(cfg) != \"x\"  ",
            "",
            "set lock me",
            "get lock",
            "   ",
            "get lock --count",
            "",
            "set after the body",
        ]);
        let txn = read(&mut script).expect("reads");
        assert_eq!(txn.compare.len(), 2);
        assert_eq!(
            txn.success,
            [put("lock", "me"), TxnOp::Range(range("lock"))]
        );
        assert_eq!(txn.failure, [parse_op("get lock --count").unwrap()]);
        assert_eq!(
            script.titles,
            [
                "compares:",
                "success requests (get, set, del):",
                "failure requests (get, set, del):"
            ]
        );
        // The line after the body is left for the next command.
        assert_eq!(
            script.lines.pop_front(),
            Some(Ok(NextLine::Line("set after the body".into())))
        );
        // The end of the input ends the body.
        let txn = read(&mut Script::new(&["version(k) = 0", "", "set k v"])).expect("reads");
        assert_eq!(txn.success, [put("k", "v")]);
        assert!(txn.failure.is_empty());
        assert_eq!(read(&mut Script::new(&[])), Ok(Txn::default()));
    }

    #[test]
    fn a_bad_line_of_the_body_is_reported_after_the_whole_body_is_read() {
        let mut script = Script::new(&[
            "version(k) = 0",
            "",
            "set k",
            "del k --frob",
            "",
            "get k",
            "",
            "next command",
        ]);
        let e = read(&mut script).expect_err("set k");
        assert_eq!(
            e,
            Failure::Usage(
                "in \"set k\": usage: set KEY VALUE [--lease ID]; \
                 usage: txn [COMPARE...] [then OP...] [else OP...]"
                    .into()
            )
        );
        assert_eq!(script.lines.len(), 1, "the body was read to its end");
        let mut script = Script::new(&["version(k) = 0"]);
        script
            .lines
            .insert(1, Ok(NextLine::Unreadable("line 3 is bad".into())));
        assert_eq!(
            read(&mut script),
            Err(Failure::Usage("line 3 is bad".into()))
        );
        // Ctrl-C (or a failing stdin) stops at once.
        let mut script = Script::new(&["version(k) = 0", "", "set k v"]);
        script
            .lines
            .insert(1, Err(Failure::Usage("cancelled".into())));
        assert_eq!(read(&mut script), Err(Failure::Usage("cancelled".into())));
        assert_eq!(script.lines.len(), 2);
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value.into()),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        }
    }

    fn listing(kvs: Vec<KeyValue>, count: u64, more: bool) -> TxnOpReply {
        TxnOpReply::Range(RangeReply {
            kvs,
            count,
            more,
            next_key: None,
            revision: 9,
        })
    }

    #[test]
    fn replies_render_plain_pretty_and_json() {
        let t = parsed(
            "txn 'version(lock) = 0' then 'set lock me' 'del old --prefix' 'get lock' \
             'get missing' 'get a/ --prefix' 'get a/ --prefix --keys-only' 'get a/ --prefix --count' \
             'get z --prefix'",
        );
        let reply = TxnReply {
            succeeded: true,
            responses: vec![
                TxnOpReply::Put {},
                TxnOpReply::Delete { deleted: 3 },
                listing(vec![kv("lock", "me")], 1, false),
                listing(vec![], 0, false),
                listing(vec![kv("a/1", "x"), kv("a/2", "two\nlines")], 2, false),
                listing(vec![kv("a/1", "x"), kv("a/2", "y")], 2, false),
                listing(vec![], 2, false),
                listing(vec![], 0, false),
            ],
            revision: 9,
            index: 9,
        };
        let done = render(&t.txn, reply.clone()).expect("renders");
        assert_eq!(
            done.plain,
            "SUCCESS\nOK\n3\nme\n(nil)\na/1\nx\na/2\n\"two\\nlines\"\na/1 a/2\n2\n"
        );
        assert_eq!(
            done.pretty,
            "SUCCESS (revision 9)\n\
             1) set lock me: OK\n\
             2) del old --prefix: 3 deleted\n\
             3) get lock: \"me\"\n\
             4) get missing: (nil)\n\
             5) get a/ --prefix:\n     \
                2 of 2 keys\n     \
                1) a/1 = \"x\"\n     \
                2) a/2 = \"two\\nlines\"\n\
             6) get a/ --prefix --keys-only:\n     \
                2 of 2 keys\n     \
                1) \"a/1\"\n     \
                2) \"a/2\"\n\
             7) get a/ --prefix --count: 2\n\
             8) get z --prefix: (empty)"
        );
        assert_eq!(done.hint, None);
        assert_eq!(done.json["succeeded"], true);
        assert_eq!(done.json["revision"], 9);
        assert_eq!(done.json["index"], 9);
        assert_eq!(done.json["responses"][0], json!({"type": "put"}));
        assert_eq!(
            done.json["responses"][1],
            json!({"type": "delete", "deleted": 3})
        );
        assert_eq!(done.json["responses"][2]["kvs"][0]["value"], "me");

        // The failure branch; nothing in it.
        let failed = TxnReply {
            succeeded: false,
            responses: vec![],
            revision: 4,
            index: 0,
        };
        let done = render(&t.txn, failed).expect("renders");
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("FAILURE", "FAILURE (revision 4)")
        );

        // A reply that does not match the requests is refused.
        let mut short = reply;
        short.responses.pop();
        let e = render(&t.txn, short).expect_err("short");
        assert!(
            e.text().contains("7 responses for 8 requests"),
            "{}",
            e.text()
        );
    }

    #[test]
    fn a_listing_the_reply_cut_short_is_hinted() {
        let t = parsed("txn then 'get a/ --prefix' 'get b/ --prefix --limit 1'");
        let reply = TxnReply {
            succeeded: true,
            responses: vec![
                listing(vec![kv("a/1", "x")], 5, true),
                listing(vec![kv("b/1", "x")], 5, true),
            ],
            revision: 9,
            index: 0,
        };
        let done = render(&t.txn, reply).expect("renders");
        let hint = done.hint.expect("a hint");
        assert!(
            hint.starts_with("get a/ --prefix: the reply lists 1 of 5 keys"),
            "{hint}"
        );
        assert!(hint.contains("--rev 9"), "{hint}");
        assert!(!hint.contains("get b/"), "the limit asked for: {hint}");
    }
}
