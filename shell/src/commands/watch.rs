//! `watch KEY [--prefix | --range END] [--rev R] [--prev] [--list]
//! [--count N] [--timeout D]`: the changes to a key, a prefix or a range,
//! printed as they happen, one line per change (`WATCH`, through the
//! client's [`Watcher`], which resumes on another node when its node is
//! lost: no change is missed or printed twice).
//!
//! It ends after `--count N` changes, when `--timeout D` has passed, at
//! Ctrl-C in the REPL, or when the watch cannot go on (`COMPACTED`, no node
//! for the shell's `--timeout`). In a script it needs `--count` or
//! `--timeout`, so that the script goes on; a one-shot `poncho-shell watch`
//! without either runs until it is stopped, as `tail -f` does.

use std::time::{Duration, Instant};

use poncho_protocol::{Event, EventType, KeyValue, WatchCreate};
use serde_json::{json, Value};

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClientError, ClusterClient, WatchEvent, Watcher};
use crate::exec::{presentation, Done, Failure, Outcome, RunMode};
use crate::line::{quote, quote_always};

pub const SPEC: Spec = Spec {
    name: "watch",
    aliases: &[],
    args: "KEY [--prefix] [--range END] [--rev R] [--prev] [--list] [--count N] [--timeout D]",
    summary: "print the changes to KEY (or a prefix or range) as they happen",
    details: "One line per change, in revision order: PUT KEY VALUE or DELETE KEY, each word\n\
              quoted as the shell reads it back. At the prompt each line starts with its\n\
              revision; --json prints one object per change, with its revision.\n\
              --prefix watches every key that starts with KEY, --range END the keys from KEY\n\
              up to END (\"\" for no end). --rev R starts at revision R (while the history\n\
              holds it), not now. --prev adds the value before the change (nil: none).\n\
              --list first prints every key of the range as LIST KEY VALUE, then the\n\
              changes after that listing (not with --rev).\n\
              It stops after --count N changes, after --timeout D (5s, 500ms, 1m), or at\n\
              Ctrl-C; a script needs --count or --timeout. If its node is lost the watch\n\
              goes on on another, from the revision after the last printed: no change is\n\
              missed or printed twice. COMPACTED: the revision is no longer held.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Watch {
    pub key: String,
    pub prefix: bool,
    pub end: Option<String>,
    pub rev: Option<u64>,
    pub prev: bool,
    pub list: bool,
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let mut key = None;
    let mut w = Watch::default();
    let mut tokens = args.tokens().iter();
    while let Some(t) = tokens.next() {
        if t.quoted || !t.text.starts_with("--") {
            if key.replace(t.text.clone()).is_some() {
                return Err(args.usage());
            }
            continue;
        }
        let mut value = |what: &str| {
            tokens
                .next()
                .map(|t| t.text.clone())
                .ok_or_else(|| args.wrong(format!("{} needs {what}", t.text)))
        };
        let number = |n: String, what: &str| match n.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(args.wrong(format!("{n} is not {what} (a number from 1)"))),
        };
        match t.text.as_str() {
            "--prefix" => w.prefix = true,
            "--range" => w.end = Some(value("an end key")?),
            "--rev" => w.rev = Some(number(value("a revision")?, "a revision")?),
            "--prev" => w.prev = true,
            "--list" => w.list = true,
            "--count" => w.count = Some(number(value("a number")?, "a count")?),
            "--timeout" => {
                let d = value("a duration")?;
                w.timeout = Some(crate::parse_duration(&d).map_err(|e| args.wrong(e))?);
            }
            other => return Err(args.wrong(format!("{other} is not a flag of watch"))),
        }
    }
    let Some(key) = key else {
        return Err(args.usage());
    };
    if w.prefix && w.end.is_some() {
        return Err(args.wrong("--prefix and --range exclude each other"));
    }
    if w.list && w.rev.is_some() {
        return Err(args
            .wrong("--list and --rev exclude each other (a listing is of the current revision)"));
    }
    w.key = key;
    Ok(Box::new(w))
}

impl Watch {
    /// A script's watch must end on its own, or the script would stop at
    /// it: `--count` or `--timeout`.
    fn may_run(&self, run: RunMode) -> Result<(), Failure> {
        if run == RunMode::Script && self.count.is_none() && self.timeout.is_none() {
            return Err(Failure::Usage(format!(
                "in a script, watch needs --count N or --timeout D, or the script would \
                 stop here; usage: {}",
                SPEC.usage()
            )));
        }
        Ok(())
    }

    fn create(&self) -> WatchCreate {
        WatchCreate {
            key: self.key.clone(),
            prefix: self.prefix,
            range_end: self.end.clone(),
            start_revision: self.rev,
            prev_kv: self.prev,
            progress_notify: false,
            list: self.list,
        }
    }
}

/// How the lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// For scripts: `PUT key value`, words quoted as the shell reads them.
    Plain,
    /// For people at the prompt: the revision first, values quoted.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Why a watch ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Count,
    Timeout,
    Interrupt,
}

impl Ended {
    fn name(self) -> &'static str {
        match self {
            Ended::Count => "count",
            Ended::Timeout => "timeout",
            Ended::Interrupt => "interrupt",
        }
    }
}

/// What a watch printed, when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub revision: Option<u64>,
    pub resumes: u64,
    pub ended: Ended,
}

impl Action for Watch {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let p = presentation();
        self.may_run(p.run)?;
        let style = match (p.json, p.run) {
            (true, _) => Style::Json,
            (false, RunMode::Interactive) => Style::Pretty,
            (false, _) => Style::Plain,
        };
        let mut watcher = Watcher::for_client(client, self.create());
        let summary = stream(&mut watcher, self, style, &mut |line| crate::out(line))?;
        let mut pretty = format!(
            "({} {}{}",
            summary.events,
            if summary.events == 1 {
                "change"
            } else {
                "changes"
            },
            summary
                .revision
                .map(|r| format!(", up to revision {r}"))
                .unwrap_or_default()
        );
        if summary.resumes > 0 {
            pretty.push_str(&format!("; resumed {} times", summary.resumes));
        }
        if summary.ended == Ended::Interrupt {
            pretty.push_str("; ended by Ctrl-C");
        }
        pretty.push(')');
        Ok(Done::streamed(
            pretty,
            json!({
                "events": summary.events,
                "revision": summary.revision,
                "resumes": summary.resumes,
                "ended": summary.ended.name(),
            }),
        ))
    }
}

/// Reads `watcher` and prints each change through `emit`, until `w`'s
/// count or timeout or Ctrl-C; an error after what was printed.
pub fn stream(
    watcher: &mut Watcher,
    w: &Watch,
    style: Style,
    emit: &mut dyn FnMut(&str),
) -> Result<Summary, Failure> {
    let end = w.timeout.map(|t| Instant::now() + t);
    let mut events = 0u64;
    let ended = loop {
        if w.count.is_some_and(|n| events >= n) {
            break Ended::Count;
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break Ended::Timeout;
        }
        let deadline = end.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        match watcher.next(deadline) {
            Ok(None) => {}
            Ok(Some(WatchEvent::Progress { .. })) => {}
            Ok(Some(WatchEvent::Changes {
                revision,
                events: evs,
            })) => {
                for e in &evs {
                    if w.count.is_some_and(|n| events >= n) {
                        break;
                    }
                    emit(&render_event(style, revision, e, w.prev));
                    events += 1;
                }
            }
            Ok(Some(WatchEvent::Listed {
                revision,
                kvs,
                restarted,
                ..
            })) => {
                if restarted {
                    emit(&render_restart(style, revision));
                }
                for kv in &kvs {
                    emit(&render_listed(style, revision, kv));
                }
            }
            Err(ClientError::Interrupted) => break Ended::Interrupt,
            Err(e) => return Err(Failure::Call(e)),
        }
    };
    Ok(Summary {
        events,
        revision: watcher.revision(),
        resumes: watcher.resumes(),
        ended,
    })
}

/// A key's JSON fields, as `get -w json` gives them.
fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": kv.key,
        "value": kv.value,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

/// One change, as a line.
pub fn render_event(style: Style, revision: u64, e: &Event, prev: bool) -> String {
    let prev_value = e.prev_kv.as_ref().and_then(|p| p.value.as_deref());
    match style {
        Style::Plain => {
            let mut line = match e.kind {
                EventType::Put => format!(
                    "PUT {} {}",
                    quote(&e.kv.key),
                    quote(e.kv.value.as_deref().unwrap_or_default())
                ),
                EventType::Delete => format!("DELETE {}", quote(&e.kv.key)),
            };
            if prev {
                line.push(' ');
                line.push_str(&prev_value.map_or_else(|| "nil".to_string(), quote));
            }
            line
        }
        Style::Pretty => {
            let mut line = match e.kind {
                EventType::Put => format!(
                    "{revision}: PUT {} = {}",
                    quote(&e.kv.key),
                    quote_always(e.kv.value.as_deref().unwrap_or_default())
                ),
                EventType::Delete => format!("{revision}: DELETE {}", quote(&e.kv.key)),
            };
            if prev {
                line.push_str(&match prev_value {
                    Some(v) => format!("  (was {})", quote_always(v)),
                    None => "  (was absent)".to_string(),
                });
            }
            line
        }
        Style::Json => {
            let mut object = kv_json(&e.kv);
            object["type"] = json!(match e.kind {
                EventType::Put => "put",
                EventType::Delete => "delete",
            });
            object["revision"] = json!(revision);
            if prev {
                object["prev_kv"] = e.prev_kv.as_ref().map_or(Value::Null, kv_json);
            }
            object.to_string()
        }
    }
}

/// One key of a `--list` listing, as a line.
pub fn render_listed(style: Style, revision: u64, kv: &KeyValue) -> String {
    let value = kv.value.as_deref().unwrap_or_default();
    match style {
        Style::Plain => format!("LIST {} {}", quote(&kv.key), quote(value)),
        Style::Pretty => format!(
            "{revision}: LIST {} = {}",
            quote(&kv.key),
            quote_always(value)
        ),
        Style::Json => {
            let mut object = kv_json(kv);
            object["type"] = json!("list");
            object["revision"] = json!(revision);
            object.to_string()
        }
    }
}

/// The node was lost while listing: the listing starts over.
fn render_restart(style: Style, revision: u64) -> String {
    match style {
        Style::Plain => "RELIST".to_string(),
        Style::Pretty => format!(
            "(the node was lost while listing: the listing starts over, at revision {revision})"
        ),
        Style::Json => json!({"type": "relist", "revision": revision}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_node::fake_node;

    fn kv(key: &str, value: Option<&str>, rev: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.map(str::to_string),
            create_revision: 2,
            mod_revision: rev,
            version: if value.is_some() { 2 } else { 0 },
        }
    }

    fn put(key: &str, value: &str, prev: Option<&str>) -> Event {
        Event {
            kind: EventType::Put,
            kv: kv(key, Some(value), 7),
            prev_kv: prev.map(|p| kv(key, Some(p), 3)),
        }
    }

    fn delete(key: &str, prev: Option<&str>) -> Event {
        Event {
            kind: EventType::Delete,
            kv: kv(key, None, 7),
            prev_kv: prev.map(|p| kv(key, Some(p), 3)),
        }
    }

    #[test]
    fn changes_print_as_words_the_shell_reads_back_or_as_json() {
        let plain = |e: &Event, prev| render_event(Style::Plain, 7, e, prev);
        assert_eq!(plain(&put("app/a", "1", None), false), "PUT app/a 1");
        assert_eq!(
            plain(&put("my key", "two words", Some("x")), false),
            "PUT \"my key\" \"two words\""
        );
        assert_eq!(plain(&put("k", "", None), false), "PUT k \"\"");
        assert_eq!(plain(&put("k", "a\nb", None), false), "PUT k \"a\\nb\"");
        assert_eq!(plain(&delete("app/a", None), false), "DELETE app/a");
        // --prev: the value before, nil if the key was absent ("nil" quoted).
        assert_eq!(plain(&put("k", "2", Some("1")), true), "PUT k 2 1");
        assert_eq!(plain(&put("k", "2", None), true), "PUT k 2 nil");
        assert_eq!(plain(&put("k", "2", Some("nil")), true), "PUT k 2 \"nil\"");
        assert_eq!(
            plain(&delete("k", Some("old v")), true),
            "DELETE k \"old v\""
        );

        let pretty = |e: &Event, prev| render_event(Style::Pretty, 7, e, prev);
        assert_eq!(
            pretty(&put("k", "v", Some("u")), true),
            "7: PUT k = \"v\"  (was \"u\")"
        );
        assert_eq!(
            pretty(&delete("k", None), true),
            "7: DELETE k  (was absent)"
        );
        assert_eq!(pretty(&put("k", "v", None), false), "7: PUT k = \"v\"");

        let object: Value = serde_json::from_str(&render_event(
            Style::Json,
            7,
            &put("k", "v", Some("u")),
            true,
        ))
        .unwrap();
        assert_eq!(
            object,
            json!({"type": "put", "key": "k", "value": "v", "revision": 7,
                   "create_revision": 2, "mod_revision": 7, "version": 2,
                   "prev_kv": {"key": "k", "value": "u", "create_revision": 2,
                               "mod_revision": 3, "version": 2}})
        );
        let object: Value =
            serde_json::from_str(&render_event(Style::Json, 7, &delete("k", None), false)).unwrap();
        assert_eq!(object["type"], "delete");
        assert_eq!(object["value"], Value::Null);
        assert!(object.get("prev_kv").is_none());

        let listed = kv("a b", Some("v"), 4);
        assert_eq!(render_listed(Style::Plain, 9, &listed), "LIST \"a b\" v");
        assert_eq!(
            render_listed(Style::Pretty, 9, &listed),
            "9: LIST \"a b\" = \"v\""
        );
        let object: Value = serde_json::from_str(&render_listed(Style::Json, 9, &listed)).unwrap();
        assert_eq!(
            (&object["type"], &object["revision"]),
            (&json!("list"), &json!(9))
        );
    }

    fn parsed(line: &str) -> Watch {
        let command = crate::commands::parse_line(line).unwrap().unwrap();
        let action: &dyn std::any::Any = command.action.as_ref();
        action.downcast_ref::<Watch>().unwrap().clone()
    }

    #[test]
    fn watch_parses_its_flags_and_says_what_is_wrong() {
        assert_eq!(
            parsed("watch app/ --prefix --rev 5 --prev --count 3 --timeout 2s"),
            Watch {
                key: "app/".into(),
                prefix: true,
                rev: Some(5),
                prev: true,
                count: Some(3),
                timeout: Some(Duration::from_secs(2)),
                ..Watch::default()
            }
        );
        assert_eq!(
            parsed("watch a --range c --list"),
            Watch {
                key: "a".into(),
                end: Some("c".into()),
                list: true,
                ..Watch::default()
            }
        );
        // A quoted flag is a key.
        assert_eq!(parsed("watch \"--prefix\"").key, "--prefix");
        let e = |l: &str| crate::commands::parse_line(l).unwrap_err().to_string();
        let usage = format!("usage: {}", SPEC.usage());
        assert_eq!(e("watch"), usage);
        assert_eq!(e("watch a b"), usage);
        for (line, what) in [
            (
                "watch a --prefix --range b",
                "--prefix and --range exclude each other",
            ),
            (
                "watch a --list --rev 3",
                "--list and --rev exclude each other",
            ),
            ("watch a --count 0", "0 is not a count (a number from 1)"),
            ("watch a --rev x", "x is not a revision (a number from 1)"),
            ("watch a --count", "--count needs a number"),
            ("watch a --timeout soon", "is not a duration"),
            ("watch a --frob", "--frob is not a flag of watch"),
        ] {
            let got = e(line);
            assert!(got.contains(what) && got.ends_with(&usage), "{line}: {got}");
        }
        let script = RunMode::Script;
        assert!(parsed("watch a").may_run(script).is_err());
        assert_eq!(
            parsed("watch a").may_run(script).unwrap_err().exit_code(),
            2
        );
        assert!(parsed("watch a --count 1").may_run(script).is_ok());
        assert!(parsed("watch a --timeout 1s").may_run(script).is_ok());
        assert!(parsed("watch a").may_run(RunMode::OneShot).is_ok());
        assert!(parsed("watch a").may_run(RunMode::Interactive).is_ok());
    }

    const CREATED: &str = r#"{"msg_type":"WATCH","req_id":{req_id},"payload":{"watch_id":1,"created":true,"revision":4}}"#;

    fn news(rev: u64, events: &[(&str, &str)]) -> String {
        let events: Vec<Value> = events
            .iter()
            .map(|(k, v)| {
                json!({"type": "put", "kv": {"key": k, "value": v, "create_revision": rev,
                                             "mod_revision": rev, "version": 1}})
            })
            .collect();
        json!({"msg_type": "WATCH", "payload": {"watch_id": 1, "revision": rev, "events": events}})
            .to_string()
    }

    fn run(w: &Watch, script: String) -> (Result<Summary, Failure>, Vec<String>, Vec<String>) {
        let (addr, node) = fake_node(vec![script]);
        let client = ClusterClient::new(vec![addr], Duration::from_secs(2), false);
        let mut watcher = Watcher::for_client(&client, w.create());
        let mut lines = Vec::new();
        let result = stream(&mut watcher, w, Style::Plain, &mut |l| {
            lines.push(l.to_string())
        });
        drop(watcher);
        (result, lines, node.join().unwrap())
    }

    #[test]
    fn a_watch_prints_each_change_and_stops_at_its_count_mid_transaction() {
        let w = Watch {
            key: "app/".into(),
            prefix: true,
            count: Some(3),
            ..Watch::default()
        };
        let script = [
            CREATED.to_string(),
            news(5, &[("app/a", "1")]),
            news(6, &[("app/b", "2"), ("app/c", "3"), ("app/d", "4")]),
        ]
        .join("\n");
        let (result, lines, requests) = run(&w, script);
        assert_eq!(lines, ["PUT app/a 1", "PUT app/b 2", "PUT app/c 3"]);
        let summary = result.unwrap();
        assert_eq!((summary.events, summary.ended), (3, Ended::Count));
        assert_eq!(summary.revision, Some(6));
        let request: Value = serde_json::from_str(&requests[0]).unwrap();
        assert_eq!(
            request["payload"],
            json!({"op": "create", "key": "app/", "prefix": true})
        );
    }

    #[test]
    fn a_watch_stops_at_its_timeout_and_reports_a_final_error_after_its_changes() {
        let w = Watch {
            key: "k".into(),
            timeout: Some(Duration::from_millis(300)),
            ..Watch::default()
        };
        let started = Instant::now();
        // The fake node keeps the connection until the watcher closes it.
        let (addr, node) = crate::fake_node::fake_node(vec![
            [CREATED.to_string(), news(5, &[("k", "1")])].join("\n"),
            String::new(),
        ]);
        let client = ClusterClient::new(vec![addr], Duration::from_secs(2), false);
        let mut watcher = Watcher::for_client(&client, w.create());
        let mut lines = Vec::new();
        let summary = stream(&mut watcher, &w, Style::Plain, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(lines, ["PUT k 1"]);
        assert_eq!((summary.events, summary.ended), (1, Ended::Timeout));
        drop(watcher);
        node.join().unwrap();

        let refused = r#"{"msg_type":"WATCH","payload":{"watch_id":1,"canceled":true,"revision":9,"error":{"code":"PERMISSION_DENIED","message":"no"}}}"#;
        let w = Watch {
            key: "k".into(),
            count: Some(5),
            ..Watch::default()
        };
        let (result, lines, _) = run(&w, [CREATED, &news(5, &[("k", "1")]), refused].join("\n"));
        assert_eq!(lines, ["PUT k 1"]);
        assert_eq!(result.unwrap_err().code(), "PERMISSION_DENIED");
    }
}
