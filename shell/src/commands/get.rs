//! `get KEY [--prefix | --range END] [--limit N] [--keys-only] [--count]`: a
//! linearizable read of one key, or of a prefix or range (`RANGE`), page by
//! page.

use poncho_protocol::{ClientRequest, GetReply, GetRequest, KeyValue, RangeReply, RangeRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{
    next_page, numbered, numbered_lines, payload, plain_value, plain_words, pretty_value, Done,
    Outcome,
};
use crate::line::{quote, Token};

pub const SPEC: Spec = Spec {
    name: "get",
    aliases: &[],
    args: "KEY [--prefix] [--range END] [--limit N] [--rev R] [--keys-only] [--count]",
    summary: "the value of KEY, or (nil) if absent; or the keys of a prefix or range",
    details: "A linearizable read, served by the leader. With --prefix, every key that \
              starts with KEY (\"\" for all keys); with --range END, the keys from KEY up to \
              but not including END (\"\" for no end). A range is listed in key order, key \
              then value, page by page to the end, or to --limit N keys. --keys-only \
              leaves the values out; --count prints only how many keys there are. With \
              `-w json` output each key carries its create_revision, mod_revision and \
              version. --rev R reads the keys as they were at revision R, while the \
              history holds it; a listing of several pages is read at the first page's \
              revision.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Get {
    Key(String),
    Range(Range),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    pub key: String,
    pub prefix: bool,
    pub end: Option<String>,
    pub limit: Option<u64>,
    pub rev: Option<u64>,
    pub keys_only: bool,
    pub count: bool,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    match parse_words(args.tokens()) {
        Ok(get) => Ok(Box::new(get)),
        Err(Some(what)) => Err(args.wrong(what)),
        Err(None) => Err(args.usage()),
    }
}

/// The words after `get` (also a `get` of `txn`): `Err(None)` if they are
/// not the arguments get takes, `Err(Some(what))` saying what is wrong.
pub(super) fn parse_words(tokens: &[Token]) -> Result<Get, Option<String>> {
    let mut key = None;
    let mut range = Range::default();
    let mut flags = false;
    let mut tokens = tokens.iter();
    while let Some(t) = tokens.next() {
        if t.quoted || !t.text.starts_with("--") {
            if key.replace(t.text.clone()).is_some() {
                return Err(None);
            }
            continue;
        }
        flags = true;
        let mut value = |what: &str| {
            tokens
                .next()
                .map(|t| t.text.clone())
                .ok_or_else(|| Some(format!("{} needs {what}", t.text)))
        };
        match t.text.as_str() {
            "--prefix" => range.prefix = true,
            "--range" => range.end = Some(value("an end key")?),
            "--limit" => {
                let n = value("a number")?;
                match n.parse::<u64>() {
                    Ok(n) if n > 0 => range.limit = Some(n),
                    _ => return Err(Some(format!("{n} is not a limit (a number from 1)"))),
                }
            }
            "--rev" => {
                let r = value("a revision")?;
                match r.parse::<u64>() {
                    Ok(r) if r > 0 => range.rev = Some(r),
                    _ => return Err(Some(format!("{r} is not a revision (a number from 1)"))),
                }
            }
            "--keys-only" => range.keys_only = true,
            "--count" => range.count = true,
            other => return Err(Some(format!("{other} is not a flag of get"))),
        }
    }
    let Some(key) = key else {
        return Err(None);
    };
    if range.prefix && range.end.is_some() {
        return Err(Some("--prefix and --range exclude each other".into()));
    }
    if range.count && range.keys_only {
        return Err(Some("--count and --keys-only exclude each other".into()));
    }
    if !flags {
        return Ok(Get::Key(key));
    }
    range.key = key;
    Ok(Get::Range(range))
}

impl Action for Get {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        match self {
            Get::Key(key) => get(client, key),
            Get::Range(range) => read_range(client, range),
        }
    }
}

fn get(client: &mut ClusterClient, key: &str) -> Outcome {
    let request = ClientRequest::Get(GetRequest {
        key: key.to_string(),
        stale: false,
    });
    let r: GetReply = payload(client.request(&request, Route::Leader)?)?;
    let plain = r.value.as_deref().map_or("(nil)".into(), plain_value);
    Ok(Done::new(
        plain,
        pretty_value(&r.value),
        json!({
            "key": r.key,
            "value": r.value,
            "create_revision": r.create_revision,
            "mod_revision": r.mod_revision,
            "version": r.version,
            "revision": r.revision,
        }),
    ))
}

/// Every page of the range (or up to `limit` keys), at the leader.
fn read_range(client: &mut ClusterClient, range: &Range) -> Outcome {
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut from = None;
    let mut rev = range.rev;
    let mut first: Option<RangeReply> = None;
    let mut more;
    loop {
        let started_at = from.clone().unwrap_or_else(|| range.key.clone());
        let left = range.limit.map(|l| l.saturating_sub(kvs.len() as u64));
        let request = ClientRequest::Range(RangeRequest {
            key: range.key.clone(),
            range_end: range.end.clone(),
            prefix: range.prefix,
            from: from.take(),
            limit: left,
            keys_only: range.keys_only,
            count_only: range.count,
            stale: false,
            rev,
        });
        let mut r: RangeReply = payload(client.request(&request, Route::Leader)?)?;
        kvs.append(&mut r.kvs);
        let full = range.limit.is_some_and(|l| kvs.len() as u64 >= l);
        more = r.more;
        let next = r.next_key.take();
        if first.is_none() {
            // Every later page at the first's revision: one consistent listing.
            rev = Some(r.revision);
            first = Some(r);
        }
        match next {
            Some(next) if more && !full && !range.count => {
                from = Some(next_page(&started_at, next)?)
            }
            _ => break,
        }
    }
    if let Some(limit) = range.limit {
        kvs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let first = first.expect("one page at least");
    if range.count {
        return Ok(Done::new(
            first.count.to_string(),
            first.count.to_string(),
            json!({"count": first.count, "revision": first.revision}),
        ));
    }
    let (plain, pretty) = render_kvs(&kvs, range.keys_only);
    Ok(Done::new(
        plain,
        pretty,
        json!({
            "kvs": kvs,
            "count": first.count,
            "more": more,
            "revision": first.revision,
        }),
    ))
}

/// A listing, plain and pretty: for scripts each key then its value, a line
/// each (with `keys_only` the keys on one line); for people numbered lines.
pub(super) fn render_kvs(kvs: &[KeyValue], keys_only: bool) -> (String, String) {
    if keys_only {
        let keys: Vec<String> = kvs.iter().map(|k| k.key.clone()).collect();
        return (plain_words(&keys), numbered(&keys));
    }
    let lines: Vec<String> = kvs
        .iter()
        .map(|k| {
            let v = k.value.as_deref().unwrap_or_default();
            format!("{}\n{}", quote(&k.key), plain_value(v))
        })
        .collect();
    let pretty: Vec<String> = kvs
        .iter()
        .map(|k| format!("{} = {}", quote(&k.key), pretty_value(&k.value)))
        .collect();
    (lines.join("\n"), numbered_lines(&pretty))
}
