//! `lease grant|revoke|ttl|list|keepalive`: leases (`LEASE`), in the style
//! of etcdctl's `lease` commands. A key written with `set KEY VALUE --lease
//! ID` is deleted when its lease is revoked, or expires because nobody kept
//! it alive for its TTL.
//!
//! `grant` and `revoke` are writes, sent exactly once in the shell's session;
//! `keepalive` may go to any node (a follower forwards it); `ttl` and `list`
//! are answered by the leader. `keepalive` without `--once` renews the lease
//! every third of its TTL, printing each renewal, until Ctrl-C or the lease
//! is gone; in a script it needs `--once` or `--count N`.

use std::time::{Duration, Instant};

use poncho_protocol::{ClientRequest, ErrorCode, LeaseReply, LeaseRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, Sub, UsageError};
use crate::client::{ClientError, ClusterClient, Route};
use crate::exec::{self, payload, plain_words, Done, Failure, Outcome};
use crate::line::quote_always;
use crate::Mode;

const KEYS_FLAG: &str = "--keys";
const ONCE_FLAG: &str = "--once";
const COUNT_FLAG: &str = "--count";

pub const SPEC: Spec = Spec {
    name: "lease",
    aliases: &[],
    args: "SUBCOMMAND ...",
    summary: "leases: grant, revoke, ttl, list, keepalive",
    details: "A lease is granted for TTL seconds (2 to 31536000) and gets an ID. Keys set\n\
              with set KEY VALUE --lease ID (or a txn's set ... --lease ID) are deleted,\n\
              all at one revision, when the lease is revoked or expires: when no\n\
              keepalive reached the leader for its TTL. grant prints the ID, revoke how\n\
              many keys it deleted, ttl the seconds left and the TTL granted (then the\n\
              keys, with --keys), list the IDs.\n\
              keepalive renews the lease at once, then every TTL/3 seconds, printing each\n\
              renewal, until Ctrl-C or the lease is gone (an error, LEASE_NOT_FOUND);\n\
              --once sends one, --count N sends N. In a script, give --once or --count N;\n\
              one-shot (poncho-shell lease keepalive ID) it runs until Ctrl-C ends it.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[
        Sub {
            name: "grant",
            args: "TTL",
            summary: "a new lease of TTL seconds: prints its id",
            secret: false,
        },
        Sub {
            name: "revoke",
            args: "ID",
            summary: "end a lease now, deleting its keys: prints how many",
            secret: false,
        },
        Sub {
            name: "ttl",
            args: "ID [--keys]",
            summary: "the seconds a lease has left and its TTL (and its keys)",
            secret: false,
        },
        Sub {
            name: "list",
            args: "",
            summary: "every lease's id",
            secret: false,
        },
        Sub {
            name: "keepalive",
            args: "ID [--once] [--count N]",
            summary: "renew a lease every TTL/3 until Ctrl-C (or once, or N times)",
            secret: false,
        },
    ],
    parse,
};

/// A `lease` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// `grant`, `revoke`, `ttl` or `list`: one request.
    Request(LeaseRequest),
    /// `keepalive`: `count` renewals (`--once` is 1), or with `None` until
    /// Ctrl-C or the lease is gone.
    Keepalive { id: u64, count: Option<u64> },
}

/// A lease id: a number from 1 (a lease's id is the log index of its
/// grant).
pub(super) fn lease_id(word: &str) -> Result<u64, Option<String>> {
    match word.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Some(format!("{word} is not a lease id (a number from 1)"))),
    }
}

/// A subcommand's words: the positional ones, and the flags given.
#[derive(Debug, Default)]
struct Words {
    positional: Vec<String>,
    keys: bool,
    once: bool,
    count: Option<u64>,
}

/// Splits the arguments into positional words and the `flags` this
/// subcommand takes (unquoted, anywhere; `--count N` or `--count=N`).
fn words(args: &Args<'_>, flags: &[&str]) -> Result<Words, UsageError> {
    let mut out = Words::default();
    let mut tokens = args.tokens().iter();
    while let Some(t) = tokens.next() {
        if t.quoted || !t.text.starts_with("--") {
            out.positional.push(t.text.clone());
            continue;
        }
        let (flag, inline) = match t.text.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (t.text.as_str(), None),
        };
        if !flags.contains(&flag) {
            return Err(args.wrong(format!("{flag} is not a flag of lease {}", args.sub())));
        }
        let seen = match flag {
            COUNT_FLAG => {
                let n = inline.or_else(|| tokens.next().map(|t| t.text.clone()));
                let n = n.ok_or_else(|| args.wrong("--count needs a number"))?;
                let n = match n.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(args.wrong(format!("{n} is not a count (a number from 1)"))),
                };
                out.count.replace(n).is_some()
            }
            KEYS_FLAG => std::mem::replace(&mut out.keys, true),
            _ => std::mem::replace(&mut out.once, true),
        };
        if seen {
            return Err(args.wrong(format!("{flag} is given twice")));
        }
    }
    Ok(out)
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let flags: &[&str] = match args.sub() {
        "ttl" => &[KEYS_FLAG],
        "keepalive" => &[ONCE_FLAG, COUNT_FLAG],
        _ => &[],
    };
    let w = words(args, flags)?;
    let [first] = w.positional.as_slice() else {
        if args.sub() == "list" && w.positional.is_empty() {
            return Ok(Box::new(Lease::Request(LeaseRequest::List)));
        }
        return Err(args.usage());
    };
    let id = || lease_id(first).map_err(|e| args.wrong(e.unwrap_or_default()));
    let request = match args.sub() {
        "grant" => {
            let ttl = first
                .parse::<u64>()
                .map_err(|_| args.wrong(format!("{first} is not a TTL (a number of seconds)")))?;
            LeaseRequest::Grant {
                ttl,
                client_id: None,
                seq: None,
            }
        }
        "revoke" => LeaseRequest::Revoke {
            id: id()?,
            client_id: None,
            seq: None,
        },
        "ttl" => LeaseRequest::Ttl {
            id: id()?,
            keys: w.keys,
        },
        "keepalive" => {
            if w.once && w.count.is_some() {
                return Err(args.wrong("--once and --count exclude each other"));
            }
            let count = if w.once { Some(1) } else { w.count };
            return Ok(Box::new(Lease::Keepalive { id: id()?, count }));
        }
        _ => return Err(args.usage()),
    };
    Ok(Box::new(Lease::Request(request)))
}

impl Action for Lease {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        match self {
            Lease::Request(request) => {
                let reply = match request {
                    LeaseRequest::Grant { .. } | LeaseRequest::Revoke { .. } => {
                        client.write(|session| {
                            let mut request = request.clone();
                            request.set_session(session);
                            ClientRequest::Lease(request)
                        })?
                    }
                    _ => client.request(&ClientRequest::Lease(request.clone()), Route::Leader)?,
                };
                Ok(render(request, payload(reply)?))
            }
            Lease::Keepalive { id, count } => {
                let in_script = matches!(exec::running(), Some((_, Mode::Script(_))));
                if count.is_none() && in_script {
                    return Err(Failure::Usage(
                        "in a script, lease keepalive needs --once or --count N \
                         (without, it runs until Ctrl-C)"
                            .into(),
                    ));
                }
                keep_alive(client, *id, *count, &mut |done| {
                    exec::show_partial("lease keepalive", done)
                })
            }
        }
    }
}

/// `s` for a count other than one.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What a reply to `grant`, `revoke`, `ttl` or `list` shows. `--json` is
/// the reply object.
fn render(request: &LeaseRequest, r: LeaseReply) -> Done {
    let json = serde_json::to_value(&r).unwrap_or_default();
    let id = r.id.unwrap_or_default();
    match request {
        LeaseRequest::Grant { .. } => {
            let ttl = r.ttl.unwrap_or_default();
            Done::new(
                id.to_string(),
                format!("lease {id} granted with TTL({ttl}s)"),
                json,
            )
        }
        LeaseRequest::Revoke { .. } => {
            let deleted = r.deleted.unwrap_or_default();
            Done::new(
                deleted.to_string(),
                format!(
                    "lease {id} revoked: {} deleted",
                    plural(deleted, "key", "keys")
                ),
                json,
            )
        }
        LeaseRequest::Ttl { keys: listed, .. } => {
            let (left, granted) = (r.ttl.unwrap_or_default(), r.granted_ttl.unwrap_or_default());
            let mut plain = format!("{left} {granted}");
            let mut pretty = format!("lease {id} granted with TTL({granted}s), remaining({left}s)");
            let keys = r.keys.unwrap_or_default();
            if *listed {
                if !keys.is_empty() {
                    plain = format!("{plain} {}", plain_words(&keys));
                }
                let quoted: Vec<String> = keys.iter().map(|k| quote_always(k)).collect();
                pretty = match quoted.as_slice() {
                    [] => format!("{pretty}, no keys attached"),
                    _ => format!("{pretty}, attached keys: {}", quoted.join(", ")),
                };
            }
            let hint = r.keys_more.then(|| {
                format!(
                    "the reply lists the first {} keys attached; the lease holds more",
                    keys.len()
                )
            });
            Done::new(plain, pretty, json).with_hint(hint)
        }
        LeaseRequest::List => {
            let ids = r.leases.unwrap_or_default();
            let words: Vec<String> = ids.iter().map(u64::to_string).collect();
            let pretty = match words.as_slice() {
                [] => "no leases".to_string(),
                _ => format!(
                    "{}\n{}",
                    plural(ids.len() as u64, "lease", "leases"),
                    words.join("\n")
                ),
            };
            let hint = r.more.then(|| {
                format!(
                    "the reply lists the first {} leases; the cluster holds more",
                    ids.len()
                )
            });
            Done::new(words.join(" "), pretty, json).with_hint(hint)
        }
        LeaseRequest::Keepalive { .. } => renewal(id, &r),
    }
}

/// One keepalive's reply: the TTL for scripts, etcdctl's line for people.
fn renewal(id: u64, r: &LeaseReply) -> Done {
    let ttl = r.ttl.unwrap_or_default();
    Done::new(
        ttl.to_string(),
        format!("lease {id} keepalived with TTL({ttl})"),
        serde_json::to_value(r).unwrap_or_default(),
    )
}

/// How long after a keepalive the next one goes: a third of the TTL (at
/// least a tenth of a second).
fn interval(ttl_secs: u64) -> Duration {
    Duration::from_millis(ttl_secs.saturating_mul(1000) / 3).max(Duration::from_millis(100))
}

/// How long to wait before trying again after a keepalive that failed while
/// the lease may still live.
const RETRY: Duration = Duration::from_millis(500);

/// Whether a failed keepalive is worth sending again while the lease may
/// still live: the cluster could not answer now (an election, a dead
/// node, a forwarded keepalive that timed out), not "no such lease".
fn worth_retrying(f: &Failure) -> bool {
    match f {
        Failure::Call(ClientError::Unreachable(_) | ClientError::NoReply(_)) => true,
        Failure::Call(ClientError::Server(e)) => matches!(
            e.code,
            ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::Timeout
                | ErrorCode::LeadershipLost
                | ErrorCode::Overloaded
        ),
        _ => false,
    }
}

fn send_keepalive(client: &mut ClusterClient, id: u64) -> Result<LeaseReply, Failure> {
    let request = ClientRequest::Lease(LeaseRequest::Keepalive { id });
    payload(client.request(&request, Route::Leader)?)
}

/// Keeps lease `id` alive: a keepalive now, then one every [`interval`] of
/// the TTL the last reply gave, `count` times, or with `None` until Ctrl-C.
/// Every renewal but the last is given to `show` as it comes; the last (or,
/// after Ctrl-C, how many there were) is the result. A lease that is gone
/// is an error; one the cluster cannot answer for now is asked again while
/// it may still live (its TTL since the last renewal).
fn keep_alive(
    client: &mut ClusterClient,
    id: u64,
    count: Option<u64>,
    show: &mut dyn FnMut(Done),
) -> Outcome {
    let stopped = |renewals: u64| {
        Done::new(
            renewals.to_string(),
            format!(
                "keepalive of lease {id} stopped (Ctrl-C) after {}",
                plural(renewals, "renewal", "renewals")
            ),
            json!({"id": id, "keepalives": renewals, "stopped": true}),
        )
    };
    let once = count == Some(1);
    let mut renewals = 0u64;
    // When the last renewal was sent, and the TTL it gave.
    let mut last: Option<(Instant, u64)> = None;
    loop {
        let sent = Instant::now();
        let next = match send_keepalive(client, id) {
            Ok(reply) => {
                renewals += 1;
                let ttl = reply.ttl.unwrap_or_default();
                last = Some((sent, ttl));
                let done = renewal(id, &reply);
                if count == Some(renewals) {
                    return Ok(done);
                }
                show(done);
                sent + interval(ttl)
            }
            Err(Failure::Call(ClientError::Interrupted)) if !once => return Ok(stopped(renewals)),
            Err(Failure::Call(ClientError::Server(mut e)))
                if e.code == ErrorCode::LeaseNotFound && renewals > 0 =>
            {
                e.message = format!(
                    "{}; keepalive stopped after {}",
                    e.message,
                    plural(renewals, "renewal", "renewals")
                );
                return Err(Failure::Call(ClientError::Server(e)));
            }
            Err(f) => {
                let until = last.map(|(at, ttl)| at + Duration::from_secs(ttl));
                let Some(until) = until.filter(|u| !once && worth_retrying(&f) && sent < *u) else {
                    return Err(f);
                };
                eprintln!(
                    "lease {id}: keepalive failed ({}); trying again for the {:.0?} it may have left",
                    f.text(),
                    until.saturating_duration_since(Instant::now())
                );
                Instant::now() + RETRY
            }
        };
        if let Err(ClientError::Interrupted) =
            client.sleep(next.saturating_duration_since(Instant::now()))
        {
            return Ok(stopped(renewals));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::commands::parse_line;
    use crate::fake_node::fake_node;

    fn parsed(line: &str) -> Lease {
        let command = parse_line(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .expect("a command");
        assert_eq!(
            command.name(),
            format!(
                "lease {}",
                line.split_whitespace().nth(1).unwrap().to_lowercase()
            )
        );
        let action: &dyn Any = command.action.as_ref();
        action
            .downcast_ref::<Lease>()
            .unwrap_or_else(|| panic!("{line} parsed as {command:?}"))
            .clone()
    }

    fn error(line: &str) -> String {
        parse_line(line).expect_err(line).to_string()
    }

    #[test]
    fn every_lease_subcommand_parses() {
        let request = |r| Lease::Request(r);
        for (line, expected) in [
            (
                "lease grant 10",
                request(LeaseRequest::Grant {
                    ttl: 10,
                    client_id: None,
                    seq: None,
                }),
            ),
            // The cluster judges the TTL: it says BAD_REQUEST and why.
            (
                "LEASE GRANT 1",
                request(LeaseRequest::Grant {
                    ttl: 1,
                    client_id: None,
                    seq: None,
                }),
            ),
            (
                "lease revoke 7",
                request(LeaseRequest::Revoke {
                    id: 7,
                    client_id: None,
                    seq: None,
                }),
            ),
            (
                "lease ttl 7",
                request(LeaseRequest::Ttl { id: 7, keys: false }),
            ),
            (
                "lease ttl --keys 7",
                request(LeaseRequest::Ttl { id: 7, keys: true }),
            ),
            ("lease list", request(LeaseRequest::List)),
            ("lease keepalive 7", Lease::Keepalive { id: 7, count: None }),
            (
                "lease keepalive 7 --once",
                Lease::Keepalive {
                    id: 7,
                    count: Some(1),
                },
            ),
            (
                "lease keepalive --count 3 7",
                Lease::Keepalive {
                    id: 7,
                    count: Some(3),
                },
            ),
            (
                "lease keepalive 7 --count=2",
                Lease::Keepalive {
                    id: 7,
                    count: Some(2),
                },
            ),
        ] {
            assert_eq!(parsed(line), expected, "{line}");
        }
    }

    #[test]
    fn bad_lease_commands_say_what_is_wrong() {
        assert_eq!(
            error("lease"),
            "usage: lease grant|revoke|ttl|list|keepalive ... (help lease tells more)"
        );
        assert!(error("lease renew 7").starts_with("usage: lease grant|revoke"));
        assert_eq!(error("lease grant"), "usage: lease grant TTL");
        assert_eq!(error("lease grant 5 6"), "usage: lease grant TTL");
        assert_eq!(
            error("lease grant ten"),
            "ten is not a TTL (a number of seconds); usage: lease grant TTL"
        );
        assert_eq!(
            error("lease grant -5"),
            "-5 is not a TTL (a number of seconds); usage: lease grant TTL"
        );
        assert_eq!(
            error("lease revoke 0"),
            "0 is not a lease id (a number from 1); usage: lease revoke ID"
        );
        assert_eq!(error("lease list 7"), "usage: lease list");
        assert_eq!(
            error("lease ttl 7 --once"),
            "--once is not a flag of lease ttl; usage: lease ttl ID [--keys]"
        );
        // More words than it takes: the usage alone.
        assert_eq!(
            error("lease ttl 7 --keys --keys"),
            "usage: lease ttl ID [--keys]"
        );
        assert_eq!(error("lease ttl --keys"), "usage: lease ttl ID [--keys]");
        let keepalive = "usage: lease keepalive ID [--once] [--count N]";
        assert_eq!(
            error("lease keepalive 7 --once --count 2"),
            format!("--once and --count exclude each other; {keepalive}")
        );
        assert_eq!(
            error("lease keepalive 7 --count"),
            format!("--count needs a number; {keepalive}")
        );
        assert_eq!(
            error("lease keepalive 7 --count=1 --count=2"),
            format!("--count is given twice; {keepalive}")
        );
        assert_eq!(
            error("lease keepalive 7 --count 0"),
            format!("0 is not a count (a number from 1); {keepalive}")
        );
        assert_eq!(
            error("lease keepalive x"),
            format!("x is not a lease id (a number from 1); {keepalive}")
        );
        // A quoted flag is a word, not a flag.
        assert_eq!(
            error("lease keepalive \"--once\""),
            format!("--once is not a lease id (a number from 1); {keepalive}")
        );
        assert_eq!(error("lease keepalive"), keepalive);
    }

    fn reply(json: Value) -> LeaseReply {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn replies_render_plain_pretty_and_json() {
        let grant = LeaseRequest::Grant {
            ttl: 10,
            client_id: None,
            seq: None,
        };
        let done = render(
            &grant,
            reply(json!({"id": 7, "ttl": 10, "granted_ttl": 10, "index": 7})),
        );
        assert_eq!(done.plain, "7");
        assert_eq!(done.pretty, "lease 7 granted with TTL(10s)");
        assert_eq!(
            Value::Object(done.json),
            json!({"id": 7, "ttl": 10, "granted_ttl": 10, "index": 7})
        );

        let revoke = LeaseRequest::Revoke {
            id: 7,
            client_id: None,
            seq: None,
        };
        let done = render(&revoke, reply(json!({"id": 7, "deleted": 2, "index": 9})));
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("2", "lease 7 revoked: 2 keys deleted")
        );
        assert_eq!(done.json["deleted"], 2);
        let done = render(&revoke, reply(json!({"id": 7, "deleted": 1, "index": 9})));
        assert_eq!(done.pretty, "lease 7 revoked: 1 key deleted");

        let ttl = LeaseRequest::Ttl { id: 7, keys: false };
        let done = render(&ttl, reply(json!({"id": 7, "ttl": 8, "granted_ttl": 10})));
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("8 10", "lease 7 granted with TTL(10s), remaining(8s)")
        );
        assert_eq!(done.hint, None);
        let ttl = LeaseRequest::Ttl { id: 7, keys: true };
        let keys = json!({"id": 7, "ttl": 8, "granted_ttl": 10, "keys": ["svc/a", "my key"]});
        let done = render(&ttl, reply(keys.clone()));
        assert_eq!(done.plain, "8 10 svc/a \"my key\"");
        assert_eq!(
            done.pretty,
            "lease 7 granted with TTL(10s), remaining(8s), attached keys: \"svc/a\", \"my key\""
        );
        assert_eq!(Value::Object(done.json), keys);
        let done = render(
            &ttl,
            reply(json!({"id": 7, "ttl": 8, "granted_ttl": 10, "keys": []})),
        );
        assert_eq!(done.plain, "8 10");
        assert!(
            done.pretty.ends_with(", no keys attached"),
            "{}",
            done.pretty
        );
        let done = render(
            &ttl,
            reply(json!({"id": 7, "ttl": 8, "granted_ttl": 10, "keys": ["a"], "keys_more": true})),
        );
        assert_eq!(
            done.hint.as_deref(),
            Some("the reply lists the first 1 keys attached; the lease holds more")
        );

        let done = render(&LeaseRequest::List, reply(json!({"leases": [7, 12]})));
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("7 12", "2 leases\n7\n12")
        );
        assert_eq!(done.json["leases"], json!([7, 12]));
        let done = render(&LeaseRequest::List, reply(json!({"leases": []})));
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("", "no leases")
        );
        let done = render(
            &LeaseRequest::List,
            reply(json!({"leases": [3], "more": true})),
        );
        assert!(done.hint.is_some_and(|h| h.contains("holds more")));

        let done = renewal(7, &reply(json!({"id": 7, "ttl": 10})));
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("10", "lease 7 keepalived with TTL(10)")
        );
        assert_eq!(Value::Object(done.json), json!({"id": 7, "ttl": 10}));
    }

    #[test]
    fn keepalives_come_every_third_of_the_ttl() {
        assert_eq!(interval(9), Duration::from_secs(3));
        assert_eq!(interval(10), Duration::from_millis(3333));
        assert_eq!(interval(0), Duration::from_millis(100));
        assert_eq!(interval(u64::MAX), Duration::from_millis(u64::MAX / 3));
    }

    const RENEWED: &str = r#"{"msg_type":"LEASE","req_id":{req_id},"payload":{"id":7,"ttl":1}}"#;
    const GONE: &str = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"LEASE_NOT_FOUND","message":"lease 7 does not exist"}}"#;

    fn client(addr: &str) -> ClusterClient {
        ClusterClient::new(vec![addr.to_string()], Duration::from_secs(2), false)
    }

    /// The requests the fake node read, as JSON.
    fn requests(node: std::thread::JoinHandle<Vec<String>>) -> Vec<Value> {
        node.join()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn keepalive_count_renews_that_many_times_a_third_of_the_ttl_apart() {
        let (addr, node) = fake_node(vec![RENEWED.into(); 3]);
        let mut shown = Vec::new();
        let started = Instant::now();
        let done =
            keep_alive(&mut client(&addr), 7, Some(3), &mut |d| shown.push(d)).expect("renewed");
        let took = started.elapsed();
        // Two waits of a third of the 1 s TTL.
        assert!(took >= Duration::from_millis(666), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(shown.len(), 2, "all but the last are shown as they come");
        assert_eq!(shown[0].pretty, "lease 7 keepalived with TTL(1)");
        assert_eq!(done.plain, "1");
        let sent = requests(node);
        assert_eq!(sent.len(), 3);
        for r in sent {
            assert_eq!(r["msg_type"], "LEASE");
            assert_eq!(r["payload"], json!({"op": "keepalive", "id": 7}));
        }
    }

    #[test]
    fn keepalive_stops_with_an_error_when_the_lease_is_gone() {
        let (addr, node) = fake_node(vec![RENEWED.into(), RENEWED.into(), GONE.into()]);
        let mut shown = Vec::new();
        let e = keep_alive(&mut client(&addr), 7, None, &mut |d| shown.push(d))
            .expect_err("the lease is gone");
        assert_eq!(shown.len(), 2);
        assert_eq!(
            e.text(),
            "LEASE_NOT_FOUND: lease 7 does not exist; keepalive stopped after 2 renewals"
        );
        assert_eq!(requests(node).len(), 3);
        // --once against a lease that is gone: the server's words alone.
        let (addr, _node) = fake_node(vec![GONE.into()]);
        let e =
            keep_alive(&mut client(&addr), 7, Some(1), &mut |_| panic!("shown")).expect_err("gone");
        assert_eq!(e.text(), "LEASE_NOT_FOUND: lease 7 does not exist");
    }

    #[test]
    fn keepalive_stops_at_ctrl_c_saying_how_many_renewals_there_were() {
        let (addr, _node) = fake_node(vec![RENEWED.into(); 5]);
        let mut client = client(&addr);
        let interrupt = Arc::new(AtomicBool::new(false));
        client.set_interrupt(Arc::clone(&interrupt));
        let mut shown = 0;
        let done = keep_alive(&mut client, 7, None, &mut |_| {
            shown += 1;
            if shown == 2 {
                // Ctrl-C while it waits for the next one.
                interrupt.store(true, Ordering::SeqCst);
            }
        })
        .expect("stopped");
        assert_eq!(shown, 2);
        assert_eq!(
            done.pretty,
            "keepalive of lease 7 stopped (Ctrl-C) after 2 renewals"
        );
        assert_eq!(
            Value::Object(done.json),
            json!({"id": 7, "keepalives": 2, "stopped": true})
        );
    }

    #[test]
    fn a_keepalive_the_cluster_cannot_answer_now_is_sent_again_while_the_lease_may_live() {
        let busy = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"BAD_REQUEST","message":"no"}}"#;
        // A refusal that will not change is not retried.
        let (addr, _node) = fake_node(vec![RENEWED.into(), busy.into()]);
        let e = keep_alive(&mut client(&addr), 7, Some(3), &mut |_| {}).expect_err("refused");
        assert_eq!(e.code(), "BAD_REQUEST");
        // A node that stops answering: the client gives up after its
        // timeout, then the keepalive, its lease's TTL (1 s) past.
        let (addr, _node) = fake_node(vec![RENEWED.into()]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_millis(300), false);
        let started = Instant::now();
        let e = keep_alive(&mut client, 7, None, &mut |_| {}).expect_err("unreachable");
        assert!(
            matches!(
                e,
                Failure::Call(ClientError::Unreachable(_) | ClientError::NoReply(_))
            ),
            "{e:?}"
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1000), "retried: {took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
}
