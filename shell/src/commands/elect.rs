//! `elect NAME VALUE [--ttl SECS] [--wait D] [--for D] [COMMAND...]`:
//! campaigns in the election NAME with VALUE (the client's
//! [`Election::campaign`]), prints once elected, holds the leadership as
//! `lock` holds a lock ([`super::lock::hold`]), then resigns.
//!
//! `elect --listen NAME [--count N] [--timeout D]`: prints the leader's
//! value, then each new leader's (or new value), as they come
//! ([`recipes::observe`]); until `--count N` leaders, `--timeout D` or
//! Ctrl-C (a script needs `--count` or `--timeout`).

use std::time::{Duration, Instant};

use serde_json::json;

use super::lock::{acquired_line, ended_text, hold, parse_holding, Ended, Holding, Interrupt};
use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{recipes, ClientError, ClusterClient, Election, Leader, LeaseSession};
use crate::exec::{plain_value, presentation, Done, Failure, Outcome, RunMode};
use crate::line::{quote, quote_always};

pub const SPEC: Spec = Spec {
    name: "elect",
    aliases: &[],
    args: "NAME [VALUE] [--listen] [--ttl SECS] [--wait D] [--for D] [--count N] [--timeout D] [COMMAND...]",
    summary: "campaign to lead NAME with VALUE and hold it, or --listen to its leaders",
    details: "elect NAME VALUE campaigns (etcd's recipe: the leader is the oldest key under\n\
              NAME/, each on its candidate's lease of --ttl seconds, 10 by default) and\n\
              waits to be elected, then prints KEY REVISION and holds the leadership as\n\
              lock holds a lock: while COMMAND runs (with $PONCHO_ELECTION_NAME,\n\
              $PONCHO_ELECTION_KEY, $PONCHO_ELECTION_REV, $PONCHO_ELECTION_VALUE and\n\
              $PONCHO_LEASE set; exits with its status), for --for D, or until Ctrl-C\n\
              (one-shot: also the end of stdin, SIGTERM); then it resigns. A script needs\n\
              COMMAND or --for. --wait D gives up campaigning after D.\n\
              elect --listen NAME prints the leader's value, then each new leader's (and\n\
              each new value it proclaims), until --count N, --timeout D or Ctrl-C (a\n\
              script needs one of them).",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elect {
    Campaign {
        name: String,
        value: String,
        holding: Holding,
    },
    Listen {
        name: String,
        count: Option<u64>,
        timeout: Option<Duration>,
    },
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let listen = args
        .tokens()
        .iter()
        .any(|t| !t.quoted && t.text == "--listen");
    let (mut count, mut timeout) = (None, None);
    let mut extra = |flag: &str,
                     value: &mut dyn FnMut(&str) -> Result<String, UsageError>|
     -> Result<bool, UsageError> {
        match flag {
            "--listen" => {}
            "--count" => {
                let v = value("a number")?;
                count = Some(match v.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(args.wrong(format!("{v} is not a count (a number from 1)"))),
                });
            }
            "--timeout" => {
                let v = value("a duration")?;
                timeout = Some(crate::parse_duration(&v).map_err(|e| args.wrong(e))?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let positional = if listen { 1 } else { 2 };
    let (words, holding) = parse_holding(args, "elect", positional, &mut extra)?;
    if words.len() != positional {
        return Err(args.usage());
    }
    let name = words[0].clone();
    if name.is_empty() {
        return Err(args.wrong("the election's NAME is empty"));
    }
    if listen {
        if !holding.command.is_empty() || holding.hold_for.is_some() || holding.wait.is_some() {
            return Err(args.wrong("--listen takes no VALUE, COMMAND, --for or --wait"));
        }
        return Ok(Box::new(Elect::Listen {
            name,
            count,
            timeout,
        }));
    }
    if count.is_some() || timeout.is_some() {
        return Err(args.wrong("--count and --timeout go with --listen"));
    }
    Ok(Box::new(Elect::Campaign {
        name,
        value: words[1].clone(),
        holding,
    }))
}

impl Action for Elect {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        match self {
            Elect::Campaign {
                name,
                value,
                holding,
            } => campaign(client, name, value, holding),
            Elect::Listen {
                name,
                count,
                timeout,
            } => {
                if presentation().run == RunMode::Script && count.is_none() && timeout.is_none() {
                    return Err(Failure::Usage(format!(
                        "in a script, elect --listen needs --count N or --timeout D, or the \
                         script would stop here; usage: {}",
                        SPEC.usage()
                    )));
                }
                listen(client, name, *count, *timeout)
            }
        }
    }
}

fn campaign(client: &mut ClusterClient, name: &str, value: &str, holding: &Holding) -> Outcome {
    holding.may_run(presentation().run, &SPEC.usage())?;
    let interrupt = Interrupt::install(client);
    let session = LeaseSession::grant(client, Duration::from_secs(holding.ttl))?;
    let deadline = holding.wait.map(|w| Instant::now() + w);
    let election = Election::campaign(client, &session, name, value, deadline)?;
    let started = Instant::now();
    let lease = format!("{:x}", session.id());
    crate::out(&acquired_line(
        json!({"type": "elected", "name": name, "key": election.key(),
               "revision": election.revision(), "value": value, "lease": lease,
               "ttl": holding.ttl}),
        format!("{} {}", quote(election.key()), election.revision()),
        format!(
            "elected in {} with {}: key {}, revision {} (lease {lease}, TTL {}s){}",
            quote_always(name),
            quote_always(value),
            quote(election.key()),
            election.revision(),
            holding.ttl,
            if holding.command.is_empty() && holding.hold_for.is_none() {
                "; leading until Ctrl-C"
            } else {
                ""
            }
        ),
    ));
    let env = [
        ("PONCHO_ELECTION_NAME", name.to_string()),
        ("PONCHO_ELECTION_KEY", election.key().to_string()),
        ("PONCHO_ELECTION_REV", election.revision().to_string()),
        ("PONCHO_ELECTION_VALUE", value.to_string()),
        ("PONCHO_LEASE", lease),
    ];
    let ended = hold(&session, holding, &env, &interrupt);
    let held = started.elapsed();
    let (key, revision) = (election.key().to_string(), election.revision());
    let resigned = election.resign(client);
    let closed = session.close();
    let ended = ended?;
    if let Ended::Lost(e) = ended {
        return Err(Failure::Call(e));
    }
    resigned?;
    closed?;
    let status = match ended {
        Ended::Command(c) => c,
        _ => 0,
    };
    Ok(Done::streamed(
        format!(
            "(resigned from {} after {:.1}s: {})",
            quote_always(name),
            held.as_secs_f64(),
            ended_text(&ended)
        ),
        json!({"name": name, "key": key, "revision": revision, "resigned": true,
               "held_ms": held.as_millis() as u64, "ended": ended.name(),
               "status": matches!(ended, Ended::Command(_)).then_some(status)}),
    )
    .with_status(status))
}

/// A leader, as a line.
pub fn leader_line(l: &Leader, json: bool, run: RunMode, name: &str) -> String {
    if json {
        return json!({"type": "leader", "name": name, "key": l.key, "value": l.value,
                      "create_revision": l.create_revision, "mod_revision": l.mod_revision})
        .to_string();
    }
    match run {
        RunMode::Interactive => format!(
            "{}: leader {} ({})",
            l.mod_revision,
            quote_always(&l.value),
            quote(&l.key)
        ),
        _ => plain_value(&l.value),
    }
}

fn listen(
    client: &mut ClusterClient,
    name: &str,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Outcome {
    let p = presentation();
    let mut observer = recipes::observe(client, name);
    let end = timeout.map(|t| Instant::now() + t);
    let mut seen = 0u64;
    let ended = loop {
        if count.is_some_and(|n| seen >= n) {
            break "count";
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break "timeout";
        }
        let deadline = end.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        match observer.next(deadline) {
            Ok(Some(l)) => {
                crate::out(&leader_line(&l, p.json, p.run, name));
                seen += 1;
            }
            Ok(None) => {}
            Err(ClientError::Interrupted) => break "interrupt",
            Err(e) => return Err(Failure::Call(e)),
        }
    };
    Ok(Done::streamed(
        format!(
            "({seen} {}{})",
            if seen == 1 { "leader" } else { "leaders" },
            if ended == "interrupt" {
                "; ended by Ctrl-C"
            } else {
                ""
            }
        ),
        json!({"name": name, "leaders": seen, "revision": observer.revision(), "ended": ended}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Elect {
        let command = crate::commands::parse_line(line).unwrap().unwrap();
        let action: &dyn std::any::Any = command.action.as_ref();
        action.downcast_ref::<Elect>().unwrap().clone()
    }

    #[test]
    fn elect_parses_a_campaign_or_a_listener() {
        assert_eq!(
            parsed("elect web \"node one\" --ttl 4 --for 2s"),
            Elect::Campaign {
                name: "web".into(),
                value: "node one".into(),
                holding: Holding {
                    ttl: 4,
                    hold_for: Some(Duration::from_secs(2)),
                    ..Holding::default()
                }
            }
        );
        let Elect::Campaign { holding, .. } = parsed("elect web a ./serve --port 8080") else {
            panic!("a campaign")
        };
        assert_eq!(holding.command, ["./serve", "--port", "8080"]);
        assert_eq!(
            parsed("elect --listen web --count 2 --timeout 5s"),
            Elect::Listen {
                name: "web".into(),
                count: Some(2),
                timeout: Some(Duration::from_secs(5)),
            }
        );
        let e = |l: &str| crate::commands::parse_line(l).unwrap_err().to_string();
        let usage = format!("usage: {}", SPEC.usage());
        assert_eq!(e("elect"), usage);
        assert_eq!(e("elect web"), usage);
        for (line, what) in [
            ("elect --listen web v", "--listen takes no VALUE, COMMAND"),
            (
                "elect web v --count 2",
                "--count and --timeout go with --listen",
            ),
            ("elect --listen web --count 0", "0 is not a count"),
            ("elect web v --bogus", "--bogus is not a flag of elect"),
        ] {
            let got = e(line);
            assert!(got.contains(what) && got.ends_with(&usage), "{line}: {got}");
        }
    }

    #[test]
    fn leaders_print_as_their_value_or_with_their_revision_or_as_json() {
        let l = Leader {
            key: "web/1a".into(),
            value: "node one".into(),
            create_revision: 5,
            mod_revision: 7,
        };
        assert_eq!(leader_line(&l, false, RunMode::Script, "web"), "node one");
        assert_eq!(
            leader_line(&l, false, RunMode::Interactive, "web"),
            "7: leader \"node one\" (web/1a)"
        );
        let v: serde_json::Value =
            serde_json::from_str(&leader_line(&l, true, RunMode::OneShot, "web")).unwrap();
        assert_eq!(v["value"], "node one");
        assert_eq!(v["create_revision"], 5);
    }
}
