//! `lock NAME [--ttl SECS] [--wait D] [--for D] [COMMAND...]`: a
//! distributed lock (the client's [`recipes::lock`], etcd's `Mutex`), held
//! on a lease the shell keeps alive.
//!
//! Once acquired it prints the lock's key and its revision (the fencing
//! token), then holds it: while COMMAND runs (one word: `sh -c WORD`;
//! several: that program and its arguments), for `--for D`, or until
//! Ctrl-C (at the prompt) / Ctrl-C, SIGTERM or the end of stdin (one-shot).
//! A script needs COMMAND or `--for`, so that it goes on. Then it releases
//! the lock (deletes its key, revokes the lease) and, with COMMAND, exits
//! with COMMAND's status. `elect` (`elect.rs`) holds a leadership the same
//! way, with [`hold`].

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{recipes, ClientError, ClusterClient, LeaseSession};
use crate::exec::{presentation, Done, Failure, Outcome, RunMode};
use crate::line::{quote, quote_always};

pub const SPEC: Spec = Spec {
    name: "lock",
    aliases: &[],
    args: "NAME [--ttl SECS] [--wait D] [--for D] [COMMAND...]",
    summary: "acquire the lock NAME, hold it (while COMMAND runs), release it",
    details: "Waits for the lock (etcd's recipe: the key NAME/<lease>, on a lease of --ttl\n\
              seconds, 10 by default, kept alive while held; no polling), then prints\n\
              KEY REVISION: the revision only grows from holder to holder (a fencing\n\
              token). It holds the lock while COMMAND runs (one word: run by sh -c;\n\
              several: that program and its arguments), with $PONCHO_LOCK_NAME,\n\
              $PONCHO_LOCK_KEY, $PONCHO_LOCK_REV and $PONCHO_LEASE set, then exits with\n\
              COMMAND's status; or for --for D; or until Ctrl-C (one-shot: also the end of\n\
              stdin, or SIGTERM). A script needs COMMAND or --for. --wait D gives up\n\
              waiting after D (TIMEOUT). If the lease is lost while held (the cluster\n\
              unreachable for a TTL), it says so and fails with LEASE_LOST.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse,
};

/// How a lock or a leadership is held once acquired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holding {
    pub ttl: u64,
    /// Give up waiting after this.
    pub wait: Option<Duration>,
    /// Hold this long.
    pub hold_for: Option<Duration>,
    /// Hold while this runs.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lock {
    pub name: String,
    pub holding: Holding,
}

/// The default `--ttl`, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 10;

/// A command's own flag, given its name and how to read its value: true
/// if it was one.
pub type ExtraFlag<'a> = dyn FnMut(&str, &mut dyn FnMut(&str) -> Result<String, UsageError>) -> Result<bool, UsageError>
    + 'a;

/// Reads the flags `lock` and `elect` share (`--ttl`, `--wait`, `--for`)
/// and the words after the positional ones (`positional` of them) as
/// COMMAND; `extra` reads a flag of the command's own (true if it was).
pub fn parse_holding(
    args: &Args<'_>,
    command: &str,
    positional: usize,
    extra: &mut ExtraFlag<'_>,
) -> Result<(Vec<String>, Holding), UsageError> {
    let mut words = Vec::new();
    let mut h = Holding {
        ttl: DEFAULT_TTL_SECS,
        ..Holding::default()
    };
    let tokens = args.tokens();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        i += 1;
        let flag = !t.quoted && t.text.starts_with("--");
        if words.len() >= positional && (!flag || t.text == "--") {
            // COMMAND: the rest, as typed.
            let start = if t.text == "--" && !t.quoted {
                i
            } else {
                i - 1
            };
            h.command = tokens[start..].iter().map(|t| t.text.clone()).collect();
            if h.command.is_empty() {
                return Err(args.wrong("-- must be followed by a COMMAND"));
            }
            break;
        }
        if !flag {
            words.push(t.text.clone());
            continue;
        }
        let name = t.text.clone();
        let mut value = |what: &str| -> Result<String, UsageError> {
            let v = tokens
                .get(i)
                .map(|t| t.text.clone())
                .ok_or_else(|| args.wrong(format!("{name} needs {what}")))?;
            i += 1;
            Ok(v)
        };
        match name.as_str() {
            "--ttl" => {
                let v = value("a number of seconds")?;
                h.ttl = match v.parse::<u64>() {
                    Ok(n) if n >= poncho_protocol::MIN_LEASE_TTL_SECS => n,
                    _ => {
                        return Err(args.wrong(format!(
                            "{v} is not a TTL (whole seconds, at least {})",
                            poncho_protocol::MIN_LEASE_TTL_SECS
                        )))
                    }
                }
            }
            "--wait" => {
                let v = value("a duration")?;
                h.wait = Some(crate::parse_duration(&v).map_err(|e| args.wrong(e))?);
            }
            "--for" => {
                let v = value("a duration")?;
                h.hold_for = Some(crate::parse_duration(&v).map_err(|e| args.wrong(e))?);
            }
            other => {
                if !extra(other, &mut value)? {
                    return Err(args.wrong(format!("{other} is not a flag of {command}")));
                }
            }
        }
    }
    if h.hold_for.is_some() && !h.command.is_empty() {
        return Err(args.wrong("--for and COMMAND exclude each other"));
    }
    Ok((words, h))
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let (words, holding) = parse_holding(args, "lock", 1, &mut |_, _| Ok(false))?;
    let [name] = <[String; 1]>::try_from(words).map_err(|_| args.usage())?;
    if name.is_empty() {
        return Err(args.wrong("the lock's NAME is empty"));
    }
    Ok(Box::new(Lock { name, holding }))
}

impl Holding {
    /// A script's hold must end on its own, or the script would stop there.
    pub fn may_run(&self, run: RunMode, usage: &str) -> Result<(), Failure> {
        if run == RunMode::Script && self.command.is_empty() && self.hold_for.is_none() {
            return Err(Failure::Usage(format!(
                "in a script, this needs a COMMAND to run or --for D, or the script would \
                 stop here; usage: {usage}"
            )));
        }
        Ok(())
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// COMMAND exited with this status (128 + N for signal N).
    Command(u8),
    For,
    Interrupt,
    /// The end of stdin (one-shot).
    Eof,
    /// The session was lost while holding (why).
    Lost(ClientError),
}

impl Ended {
    pub fn name(&self) -> &'static str {
        match self {
            Ended::Command(_) => "command",
            Ended::For => "for",
            Ended::Interrupt => "interrupt",
            Ended::Eof => "eof",
            Ended::Lost(_) => "lost",
        }
    }
}

/// Ctrl-C for the time a command holds something: the client's flag at the
/// prompt; else SIGINT and SIGTERM caught (and let go after) so that the
/// hold ends by releasing, not by dying.
pub struct Interrupt {
    pub flag: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Interrupt {
    pub fn install(client: &mut ClusterClient) -> Interrupt {
        if let Some(flag) = client.interrupt() {
            return Interrupt { flag, ids: vec![] };
        }
        let flag = Arc::new(AtomicBool::new(false));
        let ids = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
            .into_iter()
            .filter_map(|s| signal_hook::flag::register(s, Arc::clone(&flag)).ok())
            .collect();
        client.set_interrupt(Arc::clone(&flag));
        Interrupt { flag, ids }
    }

    fn take(&self) -> bool {
        self.flag.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Holds what `session` holds as `h` says, then says how that ended.
/// `env` goes into COMMAND's environment.
pub fn hold(
    session: &LeaseSession,
    h: &Holding,
    env: &[(&str, String)],
    interrupt: &Interrupt,
) -> Result<Ended, Failure> {
    let tick = Duration::from_millis(50);
    if !h.command.is_empty() {
        let mut cmd = if h.command.len() == 1 {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(&h.command[0]);
            c
        } else {
            let mut c = std::process::Command::new(&h.command[0]);
            c.args(&h.command[1..]);
            c
        };
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = cmd
            .stdin(Stdio::inherit())
            .spawn()
            .map_err(|e| Failure::Usage(format!("cannot run {}: {e}", quote(&h.command[0]))))?;
        let mut lost = None;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let code = exit_code(status);
                    return Ok(match lost {
                        Some(e) => Ended::Lost(with_status(e, code)),
                        None => Ended::Command(code),
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Usage(format!("waiting for the command: {e}"))),
            }
            if lost.is_none() {
                if let Some(e) = session.lost() {
                    eprintln!(
                        "poncho-shell: warning: {}: the command runs on without it",
                        e.message()
                    );
                    lost = Some(e);
                }
            }
            // Ctrl-C reaches the command too; its end ends the hold.
            interrupt.take();
            std::thread::sleep(tick);
        }
    }
    let until = h.hold_for.map(|d| Instant::now() + d);
    let eof = Arc::new(AtomicBool::new(false));
    if presentation().run == RunMode::OneShot && h.hold_for.is_none() {
        let eof = Arc::clone(&eof);
        // Left blocked in read if the hold ends otherwise: the process
        // exits after a one-shot command.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            eof.store(true, Ordering::SeqCst);
        });
    }
    loop {
        if let Some(e) = session.lost() {
            return Ok(Ended::Lost(e));
        }
        if interrupt.take() {
            return Ok(Ended::Interrupt);
        }
        if eof.load(Ordering::SeqCst) {
            return Ok(Ended::Eof);
        }
        let now = Instant::now();
        if until.is_some_and(|u| now >= u) {
            return Ok(Ended::For);
        }
        let next = until.map_or(now + tick, |u| u.min(now + tick));
        session.wait_lost(next);
    }
}

fn with_status(e: ClientError, code: u8) -> ClientError {
    ClientError::LeaseLost(format!(
        "{} (while the command ran; it exited with status {code})",
        e.message()
    ))
}

/// A child's exit status as a shell gives it: 128 + N for signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// The words for what ended a hold, for people.
pub fn ended_text(ended: &Ended) -> String {
    match ended {
        Ended::Command(0) => "the command exited with status 0".into(),
        Ended::Command(c) => format!("the command exited with status {c}"),
        Ended::For => "--for passed".into(),
        Ended::Interrupt => "Ctrl-C".into(),
        Ended::Eof => "the end of stdin".into(),
        Ended::Lost(_) => "the lease was lost".into(),
    }
}

/// The line printed once acquired.
pub fn acquired_line(json_fields: Value, plain: String, pretty: String) -> String {
    let p = presentation();
    if p.json {
        json_fields.to_string()
    } else if p.run == RunMode::Interactive {
        pretty
    } else {
        plain
    }
}

impl Action for Lock {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        self.holding.may_run(presentation().run, &SPEC.usage())?;
        let interrupt = Interrupt::install(client);
        let session = LeaseSession::grant(client, Duration::from_secs(self.holding.ttl))?;
        let deadline = self.holding.wait.map(|w| Instant::now() + w);
        let lock = recipes::lock(client, &session, &self.name, deadline)?;
        let started = Instant::now();
        let lease = format!("{:x}", session.id());
        crate::out(&acquired_line(
            json!({"type": "acquired", "name": self.name, "key": lock.key(),
                   "revision": lock.revision(), "lease": lease, "ttl": self.holding.ttl}),
            format!("{} {}", quote(lock.key()), lock.revision()),
            format!(
                "acquired lock {}: key {}, revision {} (lease {lease}, TTL {}s){}",
                quote_always(&self.name),
                quote(lock.key()),
                lock.revision(),
                self.holding.ttl,
                if self.holding.command.is_empty() && self.holding.hold_for.is_none() {
                    "; holding it until Ctrl-C"
                } else {
                    ""
                }
            ),
        ));
        let env = [
            ("PONCHO_LOCK_NAME", self.name.clone()),
            ("PONCHO_LOCK_KEY", lock.key().to_string()),
            ("PONCHO_LOCK_REV", lock.revision().to_string()),
            ("PONCHO_LEASE", lease.clone()),
        ];
        let ended = hold(&session, &self.holding, &env, &interrupt);
        let held = started.elapsed();
        let (key, revision) = (lock.key().to_string(), lock.revision());
        // Released however the hold ended (the key, then the lease).
        let unlocked = lock.unlock(client);
        let closed = session.close();
        let ended = ended?;
        if let Ended::Lost(e) = ended {
            return Err(Failure::Call(e));
        }
        unlocked?;
        closed?;
        let status = match ended {
            Ended::Command(c) => c,
            _ => 0,
        };
        Ok(Done::streamed(
            format!(
                "(released lock {} after {:.1}s: {})",
                quote_always(&self.name),
                held.as_secs_f64(),
                ended_text(&ended)
            ),
            json!({"name": self.name, "key": key, "revision": revision, "released": true,
                   "held_ms": held.as_millis() as u64, "ended": ended.name(),
                   "status": matches!(ended, Ended::Command(_)).then_some(status)}),
        )
        .with_status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Lock {
        let command = crate::commands::parse_line(line).unwrap().unwrap();
        let action: &dyn std::any::Any = command.action.as_ref();
        action.downcast_ref::<Lock>().unwrap().clone()
    }

    #[test]
    fn lock_parses_its_flags_then_takes_the_rest_as_the_command() {
        assert_eq!(
            parsed("lock jobs"),
            Lock {
                name: "jobs".into(),
                holding: Holding {
                    ttl: 10,
                    ..Holding::default()
                }
            }
        );
        let l = parsed("lock --ttl 3 jobs --wait 2s sh -c 'echo $PONCHO_LOCK_REV' --ttl 4");
        assert_eq!(l.name, "jobs");
        assert_eq!(l.holding.ttl, 3);
        assert_eq!(l.holding.wait, Some(Duration::from_secs(2)));
        assert_eq!(
            l.holding.command,
            ["sh", "-c", "echo $PONCHO_LOCK_REV", "--ttl", "4"]
        );
        assert_eq!(parsed("lock a -- --ttl").holding.command, ["--ttl"]);
        assert_eq!(
            parsed("lock a --for 1m").holding.hold_for,
            Some(Duration::from_secs(60))
        );
        let e = |l: &str| crate::commands::parse_line(l).unwrap_err().to_string();
        let usage = format!("usage: {}", SPEC.usage());
        assert_eq!(e("lock"), usage);
        for (line, what) in [
            (
                "lock a --ttl 1",
                "1 is not a TTL (whole seconds, at least 2)",
            ),
            ("lock a --ttl", "--ttl needs a number of seconds"),
            ("lock a --for soon", "is not a duration"),
            (
                "lock a --for 1s echo hi",
                "--for and COMMAND exclude each other",
            ),
            ("lock a --frob", "--frob is not a flag of lock"),
            ("lock a --", "-- must be followed by a COMMAND"),
            ("lock \"\"", "the lock's NAME is empty"),
        ] {
            let got = e(line);
            assert!(got.contains(what) && got.ends_with(&usage), "{line}: {got}");
        }
        let script = RunMode::Script;
        let usage = SPEC.usage();
        assert_eq!(
            parsed("lock a")
                .holding
                .may_run(script, &usage)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert!(parsed("lock a true")
            .holding
            .may_run(script, &usage)
            .is_ok());
        assert!(parsed("lock a --for 1s")
            .holding
            .may_run(script, &usage)
            .is_ok());
        assert!(parsed("lock a")
            .holding
            .may_run(RunMode::OneShot, &usage)
            .is_ok());
    }

    #[test]
    fn exit_codes_are_a_shells() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
