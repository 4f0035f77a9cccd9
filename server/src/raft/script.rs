//! Golden scripts: scenario tests of the Raft core written as text.
//!
//! Each file in `testdata/` is a list of commands; below each command, after
//! a `----` line, the output it must print: messages sent, state changes,
//! entries persisted and applied, reads served. The runner executes the
//! commands against a small deterministic cluster (no clock, no randomness
//! but each node's seeded RNG, messages delivered only when a command says
//! so) and compares what it prints with what is written. `REWRITE=1` writes
//! the actual output back into the files instead. See `testdata/README.md`
//! for the language.
//!
//! The cluster drives the core only through its public API (inputs, `step`,
//! `Ready`, accessors), as a driver would.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use poncho_protocol::{
    AppendEntries, AppendEntriesReply, Entry, EntryKind, InstallSnapshotReply, Membership, NodeId,
    RaftMessage, RequestVote, RequestVoteReply, TimeoutNow,
};

use super::{BrokenRule, Config, HardState, Raft, Ready, Restored, Role};

// ------------------------------------------------------------ the file format

/// One command of a script with the output written below it.
struct Case {
    /// Comments and blank lines before the command, kept on rewrite.
    preamble: Vec<String>,
    /// 1-based line of the command.
    line: usize,
    command: String,
    /// Lines between the command and `----`.
    input: Vec<String>,
    expected: Vec<String>,
}

struct Script {
    cases: Vec<Case>,
    /// Comments and blank lines after the last case.
    trailer: Vec<String>,
}

fn is_filler(line: &str) -> bool {
    line.trim().is_empty() || line.trim_start().starts_with('#')
}

fn parse_script(text: &str) -> Result<Script, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases = Vec::new();
    let mut preamble = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if is_filler(lines[i]) {
            preamble.push(lines[i].to_string());
            i += 1;
            continue;
        }
        let line = i + 1;
        let command = lines[i].trim().to_string();
        i += 1;
        let mut input = Vec::new();
        while i < lines.len() && lines[i] != "----" {
            input.push(lines[i].to_string());
            i += 1;
        }
        if i == lines.len() {
            return Err(format!("line {line}: `{command}` has no `----` line"));
        }
        i += 1;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            expected.push(lines[i].to_string());
            i += 1;
        }
        cases.push(Case {
            preamble: std::mem::take(&mut preamble),
            line,
            command,
            input,
            expected,
        });
    }
    Ok(Script {
        cases,
        trailer: preamble,
    })
}

/// The script with `outputs` in place of what was written.
fn render_script(script: &Script, outputs: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (case, actual) in script.cases.iter().zip(outputs) {
        for line in &case.preamble {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}", case.command);
        for line in &case.input {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "----");
        for line in actual {
            let _ = writeln!(out, "{line}");
        }
    }
    for line in &script.trailer {
        let _ = writeln!(out, "{line}");
    }
    // Cases are separated by one blank line: the preamble of the next one
    // or the trailer supplies it.
    out
}

/// A line diff of `expected` against `actual` (longest common subsequence;
/// outputs are short).
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "   {}", expected[i]);
            (i, j) = (i + 1, j + 1);
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+  {}", actual[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "-  {}", expected[i]);
            i += 1;
        }
    }
    out
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft/testdata")
}

/// Runs one script file; with `REWRITE` set, writes the actual outputs back.
fn run_file(name: &str) {
    let (script, outputs, failures) = run_script(name, None);
    if std::env::var_os("REWRITE").is_some() {
        let path = testdata().join(name);
        std::fs::write(&path, render_script(&script, &outputs))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    assert!(
        failures.is_empty(),
        "golden script {name} differs (- written, + actual; REWRITE=1 rewrites):{failures}"
    );
}

/// Runs a script, every node breaking `broken` if given: the script, each
/// command's actual output, and the diffs where they differ from it.
fn run_script(name: &str, broken: Option<BrokenRule>) -> (Script, Vec<Output>, String) {
    let path = testdata().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let script = parse_script(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut cluster = Cluster {
        broken,
        ..Cluster::default()
    };
    let mut outputs = Vec::new();
    let mut failures = String::new();
    for case in &script.cases {
        let actual = cluster
            .run(&case.command, &case.input)
            .unwrap_or_else(|e| panic!("{name}:{}: `{}`: {e}", case.line, case.command));
        if actual != case.expected {
            let _ = write!(
                failures,
                "\n{name}:{}: {}\n{}",
                case.line,
                case.command,
                diff(&case.expected, &actual)
            );
        }
        outputs.push(actual);
    }
    (script, outputs, failures)
}

// ------------------------------------------------------------ arguments

/// A command line: `name pos pos key=value`. Brackets and quotes group.
struct Args {
    name: String,
    positional: VecDeque<String>,
    named: BTreeMap<String, String>,
}

/// Splits on spaces outside `[...]` and `"..."`.
fn tokens(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ' ' if !quoted && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Args {
    fn parse(line: &str) -> Result<Args, String> {
        let mut toks = tokens(line).into_iter();
        let name = toks.next().ok_or("empty command")?;
        let mut args = Args {
            name,
            positional: VecDeque::new(),
            named: BTreeMap::new(),
        };
        for t in toks {
            match t.split_once('=') {
                Some((k, v)) => {
                    args.named.insert(k.to_string(), v.to_string());
                }
                None => args.positional.push_back(t),
            }
        }
        Ok(args)
    }

    fn take<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.named.remove(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("bad value {key}={v}")),
        }
    }

    fn or<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T, String> {
        Ok(self.take(key)?.unwrap_or(default))
    }

    fn id(&mut self) -> Result<NodeId, String> {
        let p = self.positional.pop_front().ok_or("missing node id")?;
        p.parse().map_err(|_| format!("bad node id {p}"))
    }

    /// The remaining positional arguments as node ids.
    fn ids(&mut self) -> Result<Vec<NodeId>, String> {
        std::iter::from_fn(|| self.positional.pop_front())
            .map(|p| p.parse().map_err(|_| format!("bad node id {p}")))
            .collect()
    }

    fn done(&self) -> Result<(), String> {
        if let Some(p) = self.positional.front() {
            return Err(format!("unexpected argument {p}"));
        }
        if let Some(k) = self.named.keys().next() {
            return Err(format!("unknown argument {k}="));
        }
        Ok(())
    }
}

fn id_list(s: &str) -> Result<Vec<NodeId>, String> {
    s.split(',')
        .map(|p| p.trim().parse().map_err(|_| format!("bad id list {s}")))
        .collect()
}

/// `1,1,2` or `1*3,2` (term 1 three times): the terms of a log's entries.
fn term_list(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("bad log {s}");
    let mut terms = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (term, count) = part.split_once('*').unwrap_or((part, "1"));
        let term: u64 = term.parse().map_err(|_| bad())?;
        let count: usize = count.parse().map_err(|_| bad())?;
        terms.extend(std::iter::repeat_n(term, count));
    }
    Ok(terms)
}

fn pair(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("bad index/term {s}");
    let (a, b) = s.split_once('/').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

// ------------------------------------------------------------ entries and messages

/// Entries as `1..3/1, 4/2 noop, 5/2 x`: a run of empty commands of one
/// term is one range; a no-op is marked; a command shows its data.
fn fmt_entries(entries: &[Entry]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let e = &entries[i];
        let plain = |x: &Entry| x.kind == EntryKind::Command && x.data.is_empty();
        if plain(e) {
            let mut j = i;
            while j + 1 < entries.len()
                && plain(&entries[j + 1])
                && entries[j + 1].term == e.term
                && entries[j + 1].index == entries[j].index + 1
            {
                j += 1;
            }
            parts.push(if j == i {
                format!("{}/{}", e.index, e.term)
            } else {
                format!("{}..{}/{}", e.index, entries[j].index, e.term)
            });
            i = j + 1;
            continue;
        }
        parts.push(match e.kind {
            EntryKind::Noop => format!("{}/{} noop", e.index, e.term),
            EntryKind::Config => match Membership::decode(&e.data) {
                Ok(m) => format!("{}/{} config{:?}", e.index, e.term, m.voters()),
                Err(_) => format!("{}/{} config?", e.index, e.term),
            },
            EntryKind::Command if e.data.contains([' ', ',', '"', '[', ']']) => {
                format!("{}/{} {:?}", e.index, e.term, &*e.data)
            }
            EntryKind::Command => format!("{}/{} {}", e.index, e.term, e.data),
        });
        i += 1;
    }
    parts.join(", ")
}

fn parse_entries(s: &str) -> Result<Vec<Entry>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("entries must be in brackets: {s}"))?;
    let mut out = Vec::new();
    for item in inner.split(", ").filter(|i| !i.is_empty()) {
        let (id, rest) = item.split_once(' ').unwrap_or((item, ""));
        let (range, term) = id.split_once('/').ok_or(format!("bad entry {item}"))?;
        let term: u64 = term.parse().map_err(|_| format!("bad entry {item}"))?;
        let (first, last) = range.split_once("..").unwrap_or((range, range));
        let bad = || format!("bad entry {item}");
        let (first, last): (u64, u64) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        let (kind, data) = match rest {
            "noop" => (EntryKind::Noop, String::new()),
            r => (EntryKind::Command, r.trim_matches('"').to_string()),
        };
        for index in first..=last {
            out.push(Entry {
                index,
                term,
                kind,
                data: data.as_str().into(),
            });
        }
    }
    Ok(out)
}

/// `Kind field=value ...`, the sender and recipient left to the caller.
fn fmt_message(from: NodeId, m: &RaftMessage) -> String {
    let req = |req: u64, term: u64| {
        if req == term {
            String::new()
        } else {
            format!(" req={req}")
        }
    };
    let by = |id: NodeId, what: &str| {
        if id == from {
            String::new()
        } else {
            format!(" {what}={id}")
        }
    };
    match m {
        RaftMessage::AppendEntries(a) => {
            let mut s = format!(
                "Append term={}{} prev={}/{} commit={}",
                a.term,
                by(a.leader_id, "leader"),
                a.prev_log_index,
                a.prev_log_term,
                a.leader_commit
            );
            if a.read_round != 0 {
                let _ = write!(s, " round={}", a.read_round);
            }
            if !a.entries.is_empty() {
                let _ = write!(s, " entries=[{}]", fmt_entries(&a.entries));
            }
            s
        }
        RaftMessage::AppendEntriesReply(r) => {
            let mut s = format!(
                "AppendReply term={}{} {} index={}",
                r.term,
                req(r.request_term, r.term),
                if r.success { "ok" } else { "reject" },
                r.index
            );
            if r.conflict_index != 0 || r.conflict_term != 0 {
                let _ = write!(s, " hint={}/{}", r.conflict_index, r.conflict_term);
            }
            if r.read_round != 0 {
                let _ = write!(s, " round={}", r.read_round);
            }
            s
        }
        RaftMessage::RequestVote(v) => format!(
            "{} term={}{} last={}/{}{}",
            if v.pre_vote { "PreVote" } else { "Vote" },
            v.term,
            by(v.candidate_id, "candidate"),
            v.last_log_index,
            v.last_log_term,
            if v.leader_transfer { " transfer" } else { "" }
        ),
        RaftMessage::RequestVoteReply(r) => format!(
            "{} term={}{} {}",
            if r.pre_vote {
                "PreVoteReply"
            } else {
                "VoteReply"
            },
            r.term,
            req(r.request_term, r.term),
            if r.vote_granted {
                "granted"
            } else {
                "rejected"
            }
        ),
        RaftMessage::TimeoutNow(t) => {
            format!("TimeoutNow term={}{}", t.term, by(t.leader_id, "leader"))
        }
        RaftMessage::LeaseKeepalive(k) => format!("LeaseKeepalive term={} id={}", k.term, k.id),
        RaftMessage::LeaseKeepaliveReply(k) => {
            format!("LeaseKeepaliveReply term={} id={}", k.term, k.id)
        }
        RaftMessage::InstallSnapshot(s) => format!(
            "Snapshot term={}{} snap={}/{} offset={} bytes={}{}",
            s.term,
            by(s.leader_id, "leader"),
            s.last_included_index,
            s.last_included_term,
            s.offset,
            s.data.len(),
            if s.done { " done" } else { "" }
        ),
        RaftMessage::InstallSnapshotReply(r) => format!(
            "SnapshotReply term={}{} snap={} next={}{}",
            r.term,
            req(r.request_term, r.term),
            r.last_included_index,
            r.next_offset,
            if r.installed { " installed" } else { "" }
        ),
    }
}

fn fmt_envelope(from: NodeId, to: NodeId, m: &RaftMessage) -> String {
    format!("{from}->{to} {}", fmt_message(from, m))
}

/// Reads a message in the form `fmt_envelope` prints (not snapshots).
fn parse_envelope(line: &str) -> Result<(NodeId, NodeId, RaftMessage), String> {
    let mut args = Args::parse(line.trim())?;
    let (from, to) = args
        .name
        .split_once("->")
        .ok_or_else(|| format!("a message starts with from->to: {line}"))?;
    let bad = || format!("bad sender or recipient in {line}");
    let (from, to): (NodeId, NodeId) = (
        from.parse().map_err(|_| bad())?,
        to.parse().map_err(|_| bad())?,
    );
    let kind = args
        .positional
        .pop_front()
        .ok_or_else(|| format!("no message kind in {line}"))?;
    let flags: BTreeSet<String> = args.positional.drain(..).collect();
    let flag = |f: &str| flags.contains(f);
    let term: u64 = args.take("term")?.ok_or("a message needs term=")?;
    let req = args.or("req", term)?;
    let pair_of = |args: &mut Args, key: &str| -> Result<(u64, u64), String> {
        args.take::<String>(key)?
            .map(|v| pair(&v))
            .unwrap_or(Ok((0, 0)))
    };
    let message = match kind.as_str() {
        "Append" => {
            let prev = pair_of(&mut args, "prev")?;
            let entries = match args.take::<String>("entries")? {
                Some(e) => parse_entries(&e)?,
                None => Vec::new(),
            };
            RaftMessage::AppendEntries(AppendEntries {
                term,
                leader_id: args.or("leader", from)?,
                prev_log_index: prev.0,
                prev_log_term: prev.1,
                entries,
                leader_commit: args.or("commit", 0)?,
                read_round: args.or("round", 0)?,
            })
        }
        "AppendReply" => {
            let hint = pair_of(&mut args, "hint")?;
            RaftMessage::AppendEntriesReply(AppendEntriesReply {
                term,
                request_term: req,
                success: flag("ok"),
                index: args.or("index", 0)?,
                conflict_term: hint.1,
                conflict_index: hint.0,
                read_round: args.or("round", 0)?,
            })
        }
        "Vote" | "PreVote" => {
            let last = pair_of(&mut args, "last")?;
            RaftMessage::RequestVote(RequestVote {
                term,
                candidate_id: args.or("candidate", from)?,
                last_log_index: last.0,
                last_log_term: last.1,
                pre_vote: kind == "PreVote",
                leader_transfer: flag("transfer"),
            })
        }
        "VoteReply" | "PreVoteReply" => RaftMessage::RequestVoteReply(RequestVoteReply {
            term,
            request_term: req,
            vote_granted: flag("granted"),
            pre_vote: kind == "PreVoteReply",
        }),
        "TimeoutNow" => RaftMessage::TimeoutNow(TimeoutNow {
            term,
            leader_id: args.or("leader", from)?,
        }),
        "SnapshotReply" => RaftMessage::InstallSnapshotReply(InstallSnapshotReply {
            term,
            request_term: req,
            last_included_index: args.or("snap", 0)?,
            next_offset: args.or("next", 0)?,
            installed: flag("installed"),
        }),
        other => return Err(format!("cannot read a {other} message")),
    };
    args.done()?;
    Ok((from, to, message))
}

// ------------------------------------------------------------ the cluster

/// What a node's disk holds.
#[derive(Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: (u64, u64),
    log: Vec<Entry>,
}

impl Disk {
    /// Stores `entries`, replacing what is stored at and after the first.
    fn write(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            let keep = first.index.saturating_sub(self.snapshot.0 + 1) as usize;
            self.log.truncate(keep);
            self.log.extend_from_slice(entries);
        }
    }
}

/// A Ready's write, not yet durable.
struct PendingWrite {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    after_persist: Vec<super::Outbound>,
}

struct Node {
    config: Config,
    /// The configuration the log starts from (scripts change none).
    base: Membership,
    seed: u64,
    /// `None` while crashed.
    raft: Option<Raft>,
    disk: Disk,
    pending: VecDeque<PendingWrite>,
}

impl Node {
    fn start(&mut self) -> Result<(), String> {
        let d = &self.disk;
        self.raft = Some(Raft::with_snapshot(
            self.config.clone(),
            d.hard_state,
            d.snapshot,
            self.base.clone(),
            d.log.clone(),
            self.seed,
        )?);
        Ok(())
    }
}

struct Envelope {
    from: NodeId,
    to: NodeId,
    message: RaftMessage,
}

#[derive(Default)]
struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, oldest first.
    network: Vec<Envelope>,
    /// Links (from, to) that drop every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// A rule every node breaks, to show the scripts catch it.
    broken: Option<BrokenRule>,
    /// The leader each term had, from the Readies: a second one for a term
    /// fails the script (election safety).
    leaders: BTreeMap<u64, NodeId>,
}

type Output = Vec<String>;

impl Cluster {
    /// Runs one command; its output lines, or an error in the script itself.
    fn run(&mut self, line: &str, input: &[String]) -> Result<Output, String> {
        let mut args = Args::parse(line)?;
        let mut out = Vec::new();
        match args.name.as_str() {
            "add-nodes" => self.add_nodes(&mut args)?,
            "reset" => {
                *self = Cluster {
                    broken: self.broken,
                    ..Cluster::default()
                }
            }
            "repeat" => {
                let n: usize = args
                    .positional
                    .pop_front()
                    .ok_or("repeat N")?
                    .parse()
                    .map_err(|_| "bad N")?;
                for _ in 0..n {
                    for line in input {
                        out.extend(self.run(line, &[])?);
                    }
                }
            }
            "campaign" => self.raft(args.id()?)?.campaign_now(),
            "tick" => {
                let count = args.or("count", 1)?;
                let ids = args.ids()?;
                for _ in 0..count {
                    for &id in &ids {
                        self.raft(id)?.tick();
                    }
                }
            }
            "propose" => {
                let id = args.id()?;
                let data = args.positional.pop_front().ok_or("propose ID DATA")?;
                let data = data.trim_matches('"').to_string();
                let count: u64 = args.or("count", 1)?;
                self.propose(id, &data, count, &mut out)?;
            }
            "run" => {
                let ticks = args
                    .positional
                    .pop_front()
                    .ok_or("run TICKS")?
                    .parse()
                    .map_err(|_| "bad TICKS")?;
                self.run_ticks(ticks, &mut out)?;
            }
            "read-index" => {
                let id = args.id()?;
                let reads = id_list(&args.take::<String>("id")?.ok_or("read-index ID id=N,M")?)?;
                for read in reads {
                    if let Err(e) = self.raft(id)?.read_index(read) {
                        out.push(format!("error: {e}"));
                    }
                }
            }
            "transfer" => {
                let id = args.id()?;
                let to = args.take("to")?.ok_or("transfer ID to=N")?;
                if let Err(e) = self.raft(id)?.transfer_leadership(to) {
                    out.push(format!("error: {e}"));
                }
            }
            "ready" => {
                let persist = args.or("persist", true)?;
                for id in args.ids()? {
                    self.process_ready(id, persist, &mut out)?;
                }
            }
            "persist" => {
                for id in args.ids()? {
                    self.persist(id)?;
                }
            }
            "step" => {
                for line in input {
                    let (from, to, m) = parse_envelope(line)?;
                    self.raft(to)?.step(from, m);
                }
            }
            "deliver" => {
                let (from, to) = (args.take("from")?, args.take("to")?);
                self.deliver(from, to, true, &mut out)?;
            }
            "drop" => {
                let (from, to) = (args.take("from")?, args.take("to")?);
                for e in self.take_messages(from, to) {
                    out.push(format!(
                        "dropped: {}",
                        fmt_envelope(e.from, e.to, &e.message)
                    ));
                }
            }
            "stabilize" => self.stabilize(&mut out)?,
            _ => return self.run_more(args, out),
        }
        args.done()?;
        Ok(out)
    }

    /// The commands about faults and inspection.
    fn run_more(&mut self, mut args: Args, mut out: Output) -> Result<Output, String> {
        match args.name.as_str() {
            "crash" => {
                for id in args.ids()? {
                    let node = self.node(id)?;
                    node.raft = None;
                    node.pending.clear();
                }
            }
            "restart" => {
                for id in args.ids()? {
                    self.node(id)?.start()?;
                }
            }
            "isolate" => {
                for id in args.ids()? {
                    for &other in self.nodes.keys() {
                        self.cut.insert((id, other));
                        self.cut.insert((other, id));
                    }
                }
            }
            "partition" => {
                let groups: Vec<Vec<NodeId>> = args
                    .positional
                    .drain(..)
                    .map(|g| id_list(&g))
                    .collect::<Result<_, _>>()?;
                for (i, g) in groups.iter().enumerate() {
                    for (j, h) in groups.iter().enumerate() {
                        if i != j {
                            self.cut
                                .extend(g.iter().flat_map(|&a| h.iter().map(move |&b| (a, b))));
                        }
                    }
                }
            }
            "heal" => self.cut.clear(),
            "restore-snapshot" => self.restore_snapshot(&mut args, &mut out)?,
            "status" => {
                for id in self.ids_or_all(&mut args)? {
                    self.status(id, &mut out)?;
                }
            }
            "log" => {
                for id in self.ids_or_all(&mut args)? {
                    let d = &self.node(id)?.disk;
                    let snap = match d.snapshot {
                        (0, _) => String::new(),
                        (i, t) => format!(" snapshot={i}/{t}"),
                    };
                    out.push(format!("{id}:{snap} [{}]", fmt_entries(&d.log)));
                }
            }
            other => return Err(format!("unknown command {other}")),
        }
        args.done()?;
        Ok(out)
    }

    fn ids_or_all(&self, args: &mut Args) -> Result<Vec<NodeId>, String> {
        let ids = args.ids()?;
        Ok(if ids.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            ids
        })
    }

    fn node(&mut self, id: NodeId) -> Result<&mut Node, String> {
        self.nodes.get_mut(&id).ok_or(format!("no node {id}"))
    }

    fn raft(&mut self, id: NodeId) -> Result<&mut Raft, String> {
        self.node(id)?
            .raft
            .as_mut()
            .ok_or(format!("node {id} is down"))
    }

    fn add_nodes(&mut self, args: &mut Args) -> Result<(), String> {
        let count = args.positional.pop_front();
        let ids = match args.take::<String>("ids")? {
            Some(list) => id_list(&list)?,
            None => {
                let n: u64 = count
                    .ok_or("add-nodes N or ids=")?
                    .parse()
                    .map_err(|_| "bad N")?;
                (1..=n).collect()
            }
        };
        let voters = match args.take::<String>("voters")? {
            Some(list) => id_list(&list)?,
            None => ids.clone(),
        };
        let term = args.or("term", 0)?;
        let vote = args.take("vote")?;
        let terms = term_list(&args.or("log", String::new())?)?;
        let log: Vec<Entry> = (1..)
            .zip(terms)
            .map(|(index, term)| plain(index, term))
            .collect();
        let base = super::voters_of(&voters);
        let mut template = configured(args, voters)?;
        template.broken_rule = self.broken;
        for id in ids {
            let mut config = template.clone();
            config.id = id;
            let mut node = Node {
                config,
                base: base.clone(),
                seed: id,
                raft: None,
                disk: Disk {
                    hard_state: HardState { term, vote },
                    snapshot: (0, 0),
                    log: log.clone(),
                },
                pending: VecDeque::new(),
            };
            node.start()?;
            self.nodes.insert(id, node);
        }
        Ok(())
    }

    fn process_ready(&mut self, id: NodeId, persist: bool, out: &mut Output) -> Result<(), String> {
        let rd = self.raft(id)?.ready();
        if let Some(ss) = rd.soft_state.filter(|ss| ss.role == Role::Leader) {
            match self.leaders.insert(ss.term, id) {
                Some(other) if other != id => {
                    return Err(format!("nodes {other} and {id} both lead term {}", ss.term))
                }
                _ => {}
            }
        }
        if !rd.is_empty() {
            out.push(format!("> {id} ready"));
            let mut lines = Vec::new();
            fmt_ready(id, &rd, &mut lines);
            out.extend(merge_repeats(lines));
        }
        let Ready {
            hard_state,
            entries,
            messages,
            messages_after_persist,
            committed_entries,
            ..
        } = rd;
        for m in messages {
            self.send(id, m);
        }
        let node = self.node(id)?;
        node.pending.push_back(PendingWrite {
            hard_state,
            entries,
            after_persist: messages_after_persist,
        });
        if let Some(last) = committed_entries.last() {
            self.raft(id)?.advance_applied(last.index);
        }
        if persist {
            self.persist(id)?;
        }
        Ok(())
    }

    /// Completes every pending write of `id`, in order.
    fn persist(&mut self, id: NodeId) -> Result<(), String> {
        while let Some(w) = self.node(id)?.pending.pop_front() {
            let node = self.node(id)?;
            if let Some(hs) = w.hard_state {
                node.disk.hard_state = hs;
            }
            node.disk.write(&w.entries);
            if let Some(last) = w.entries.last() {
                self.raft(id)?.on_persisted(last.index, last.term);
            }
            for m in w.after_persist {
                self.send(id, m);
            }
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, m: super::Outbound) {
        self.network.push(Envelope {
            from,
            to: m.to,
            message: m.message,
        });
    }

    fn take_messages(&mut self, from: Option<NodeId>, to: Option<NodeId>) -> Vec<Envelope> {
        let matches =
            |e: &Envelope| from.is_none_or(|f| f == e.from) && to.is_none_or(|t| t == e.to);
        let (taken, kept) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(matches);
        self.network = kept;
        taken
    }

    /// Delivers the queued messages that match; a cut link or a node that is
    /// down drops a message. Prints what was delivered if `verbose`, and
    /// always what was dropped.
    fn deliver(
        &mut self,
        from: Option<NodeId>,
        to: Option<NodeId>,
        verbose: bool,
        out: &mut Output,
    ) -> Result<(), String> {
        let mut lines = Vec::new();
        for e in self.take_messages(from, to) {
            let line = fmt_envelope(e.from, e.to, &e.message);
            let up = self.node(e.to)?.raft.is_some();
            if !up || self.cut.contains(&(e.from, e.to)) {
                lines.push(format!("dropped: {line}"));
                continue;
            }
            if verbose {
                lines.push(line);
            }
            self.raft(e.to)?.step(e.from, e.message);
        }
        out.extend(merge_repeats(lines));
        Ok(())
    }

    /// Proposes `count` copies of `data` (`count > 1`: numbered `data0`,
    /// `data1`, ... unless `data` is empty) and prints the indexes they got,
    /// a run as `index=A..B`, or the first error.
    fn propose(
        &mut self,
        id: NodeId,
        data: &str,
        count: u64,
        out: &mut Output,
    ) -> Result<(), String> {
        let mut got: Option<(u64, u64, u64)> = None;
        for i in 0..count {
            let data = if count == 1 || data.is_empty() {
                data.to_string()
            } else {
                format!("{data}{i}")
            };
            match self.raft(id)?.propose(data) {
                Ok((index, term)) => {
                    let first = got.map_or(index, |(first, _, _)| first);
                    got = Some((first, index, term));
                }
                Err(e) => {
                    out.push(format!("error: {e}"));
                    break;
                }
            }
        }
        match got {
            Some((first, last, term)) if first == last => {
                out.insert(0, format!("index={first} term={term}"))
            }
            Some((first, last, term)) => {
                out.insert(0, format!("index={first}..{last} term={term}"))
            }
            None => {}
        }
        Ok(())
    }

    /// `ticks` rounds of: every node that is up ticks once, then readies and
    /// messages are processed until the cluster is quiet (messages take no
    /// time). Prints only each change of a node's role, term or leader that
    /// is still there at the end of a round, with the round it happened in,
    /// and every alert.
    fn run_ticks(&mut self, ticks: u64, out: &mut Output) -> Result<(), String> {
        let observe = |c: &Cluster| -> BTreeMap<NodeId, (Role, u64, Option<NodeId>)> {
            c.nodes
                .iter()
                .filter_map(|(&id, n)| {
                    let r = n.raft.as_ref()?;
                    Some((id, (r.role(), r.term(), r.leader_id())))
                })
                .collect()
        };
        let mut seen = observe(self);
        for tick in 1..=ticks {
            let up: Vec<NodeId> = seen.keys().copied().collect();
            for id in up {
                self.raft(id)?.tick();
            }
            let mut quiet = Vec::new();
            self.stabilize(&mut quiet)?;
            // Alerts are never quiet.
            let mut from = String::new();
            for line in quiet {
                if let Some(id) = line.strip_prefix("> ") {
                    from = id.trim_end_matches(" ready").to_string();
                } else if let Some(alert) = line.trim_start().strip_prefix("alert: ") {
                    out.push(format!("tick {tick}: {from} alert: {alert}"));
                }
            }
            let now = observe(self);
            for (&id, &(role, term, leader)) in &now {
                if seen.get(&id) != Some(&(role, term, leader)) {
                    out.push(format!(
                        "tick {tick}: {id} {role} term={term} leader={}",
                        opt(leader)
                    ));
                }
            }
            seen = now;
        }
        Ok(())
    }

    /// Processes readies and delivers messages until nothing is left to do.
    fn stabilize(&mut self, out: &mut Output) -> Result<(), String> {
        for _ in 0..10_000 {
            let ready: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.raft.as_ref().is_some_and(Raft::has_ready))
                .map(|(&id, _)| id)
                .collect();
            if ready.is_empty() && self.network.is_empty() {
                return Ok(());
            }
            for id in ready {
                self.process_ready(id, true, out)?;
            }
            self.deliver(None, None, false, out)?;
        }
        Err("stabilize: still busy after 10,000 rounds".into())
    }

    fn restore_snapshot(&mut self, args: &mut Args, out: &mut Output) -> Result<(), String> {
        let id = args.id()?;
        let leader = args.take("leader")?.ok_or("leader=")?;
        let index: u64 = args.take("index")?.ok_or("index=")?;
        let term = args.take("term")?.ok_or("term=")?;
        let base = self.node(id)?.base.clone();
        let restored = self.raft(id)?.restore_snapshot(leader, index, term, base);
        let disk = &mut self.node(id)?.disk;
        match restored {
            Restored::Stale => out.push("stale".into()),
            Restored::KeptLog => {
                out.push("installed, log kept".into());
                disk.log.retain(|e| e.index > index);
                disk.snapshot = (index, term);
            }
            Restored::DiscardedLog => {
                out.push("installed, log discarded".into());
                disk.log.clear();
                disk.snapshot = (index, term);
            }
        }
        Ok(())
    }

    fn status(&mut self, id: NodeId, out: &mut Output) -> Result<(), String> {
        let Some(raft) = self.node(id)?.raft.as_ref() else {
            out.push(format!("{id}: down"));
            return Ok(());
        };
        let s = raft.status();
        out.push(format!(
            "{id}: {} term={} vote={} leader={} commit={} applied={} last={}/{} persisted={}",
            s.role,
            s.term,
            opt(s.vote),
            opt(s.leader_id),
            s.commit_index,
            s.applied_index,
            s.last_log_index,
            s.last_log_term,
            s.persisted_index
        ));
        for f in s.followers {
            out.push(format!(
                "  {}: {} match={} next={} inflight={}",
                f.id,
                format!("{:?}", f.state).to_lowercase(),
                f.match_index,
                f.next_index,
                f.inflight_messages
            ));
        }
        Ok(())
    }
}

/// Identical lines once each, in the order of their first occurrence, with
/// a count where there were several (a node that ticks many times without a
/// `ready` sends the same heartbeat many times).
fn merge_repeats(lines: Vec<String>) -> Vec<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in lines {
        match counts.iter_mut().find(|(l, _)| *l == line) {
            Some((_, n)) => *n += 1,
            None => counts.push((line, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(l, n)| if n == 1 { l } else { format!("{l} (x{n})") })
        .collect()
}

fn opt(id: Option<NodeId>) -> String {
    id.map_or("none".into(), |i| i.to_string())
}

fn plain(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: "".into(),
    }
}

/// The configuration options `add-nodes` takes (id set by the caller).
fn configured(args: &mut Args, voters: Vec<NodeId>) -> Result<Config, String> {
    let mut c = Config::new(voters[0]);
    c.pre_vote = args.or("pre-vote", c.pre_vote)?;
    c.check_quorum = args.or("check-quorum", c.check_quorum)?;
    c.election_timeout_ticks = args.or("election", c.election_timeout_ticks)?;
    c.heartbeat_interval_ticks = args.or("heartbeat", c.heartbeat_interval_ticks)?;
    c.max_entries_per_message = args.or("max-entries", c.max_entries_per_message)?;
    c.max_inflight_messages = args.or("max-inflight", c.max_inflight_messages)?;
    c.max_uncommitted_entries = args.or("max-uncommitted", c.max_uncommitted_entries)?;
    c.bootstrap_leader = args.or("bootstrap", c.bootstrap_leader)?;
    Ok(c)
}

/// A Ready, one item per line, in the order the driver carries it out.
fn fmt_ready(id: NodeId, rd: &Ready, out: &mut Output) {
    if let Some(ss) = rd.soft_state {
        out.push(format!(
            "  state: {} term={} leader={}",
            ss.role,
            ss.term,
            opt(ss.leader_id)
        ));
    }
    if let Some(hs) = rd.hard_state {
        out.push(format!(
            "  hard state: term={} vote={}",
            hs.term,
            opt(hs.vote)
        ));
    }
    if !rd.entries.is_empty() {
        out.push(format!("  persist: {}", fmt_entries(&rd.entries)));
    }
    for m in &rd.messages {
        out.push(format!("  send: {}", fmt_envelope(id, m.to, &m.message)));
    }
    for m in &rd.messages_after_persist {
        out.push(format!(
            "  send after persist: {}",
            fmt_envelope(id, m.to, &m.message)
        ));
    }
    if !rd.committed_entries.is_empty() {
        out.push(format!("  apply: {}", fmt_entries(&rd.committed_entries)));
    }
    for r in &rd.reads {
        out.push(format!("  read: id={} index={}", r.id, r.index));
    }
    for r in &rd.failed_reads {
        out.push(format!("  read failed: id={r}"));
    }
    for to in &rd.snapshots_to_send {
        out.push(format!("  snapshot to send: {to}"));
    }
    for a in &rd.snapshot_acks {
        out.push(format!(
            "  snapshot ack: to={} snap={} next={}",
            a.to, a.index, a.next_offset
        ));
    }
    for (leader, chunk) in &rd.snapshot_chunks {
        out.push(format!(
            "  snapshot chunk: {}",
            fmt_envelope(*leader, id, &RaftMessage::InstallSnapshot(chunk.clone()))
        ));
    }
    for alert in &rd.alerts {
        out.push(format!("  alert: {alert}"));
    }
}

// ------------------------------------------------------------ the scripts

/// One test per script, so a failure names its scenario.
macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_file(concat!(stringify!($name), ".txt"));
            }
        )*

        /// Every script in `testdata/` is listed above, so none is skipped.
        #[test]
        fn every_script_is_run() {
            let listed: BTreeSet<String> =
                [$(concat!(stringify!($name), ".txt")),*].iter().map(|s| s.to_string()).collect();
            let found: BTreeSet<String> = std::fs::read_dir(testdata())
                .expect("testdata")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".txt"))
                .collect();
            assert_eq!(found, listed, "scripts in testdata/ and the list in script.rs differ");
        }
    };
}

scripts!(
    commit,
    election,
    fast_backup,
    figure_7,
    figure_8,
    leadership,
    older_terms,
    partitions,
    reads,
    votes
);

/// The scripts fail when the core's behaviour changes: with a leader that
/// serves a read without a quorum round, the cut-off leader of `reads.txt`
/// serves the stale read instead of failing it.
#[test]
fn the_read_script_catches_reads_served_without_a_quorum_round() {
    if std::env::var_os("REWRITE").is_some() {
        return; // the script may be half written by its own test
    }
    let (_, _, failures) = run_script("reads.txt", Some(BrokenRule::ReadWithoutQuorum));
    assert!(
        failures.contains("+    read: id=2 index=2") && failures.contains("-    read failed: id=2"),
        "the stale read was not served:{failures}"
    );
}

/// With a leader that commits an older term's entry by counting replicas,
/// node 1 of `figure_8.txt` commits entry 2 (term 2), which node 5 later
/// overwrites.
#[test]
fn the_figure_8_script_catches_commit_by_counting_older_terms() {
    if std::env::var_os("REWRITE").is_some() {
        return; // the script may be half written by its own test
    }
    let broken = Some(BrokenRule::CommitOlderTermByCounting);
    let (_, _, failures) = run_script("figure_8.txt", broken);
    assert!(
        failures.contains("+  1: leader term=4 vote=1 leader=1 commit=2"),
        "entry 2 was not committed:{failures}"
    );
}

#[test]
fn the_diff_marks_missing_and_extra_lines() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let d = diff(&s(&["a", "b", "c"]), &s(&["a", "x", "c"]));
    assert_eq!(d, "   a\n+  x\n-  b\n   c\n");
}

#[test]
fn messages_read_back_as_printed() {
    let lines = [
        "1->2 Append term=3 prev=2/1 commit=5 round=7 entries=[3..4/1, 5/3 noop, 6/3 x]",
        "2->1 AppendReply term=3 req=2 reject index=2 hint=1/0",
        "1->3 PreVote term=4 last=6/3",
        "1->3 Vote term=4 candidate=2 last=6/3 transfer",
        "3->1 VoteReply term=4 granted",
        "1->2 TimeoutNow term=3",
        "2->1 SnapshotReply term=3 snap=9 next=0 installed",
    ];
    for line in lines {
        let (from, to, m) = parse_envelope(line).unwrap();
        assert_eq!(fmt_envelope(from, to, &m), line);
    }
}

/// The scripts check election safety at every Ready: with nodes that grant
/// every vote of a term, two nodes of `election.txt` lead term 1 at once.
#[test]
#[should_panic(expected = "both lead term 1")]
fn the_scripts_catch_two_leaders_in_one_term() {
    if std::env::var_os("REWRITE").is_some() {
        panic!("both lead term 1 (not run while rewriting)");
    }
    run_script("election.txt", Some(BrokenRule::VoteTwiceInATerm));
}

/// With votes granted without the up-to-date check (5.4.1), nodes whose logs
/// lack committed entries win elections in `partitions.txt`: the cluster
/// ends with another history than the one the script shows (the majority's
/// committed `new-majority` and `everyone` gone from every log), and a
/// follower asked to overwrite a committed entry refuses and raises alerts.
#[test]
fn the_partition_script_catches_votes_without_the_log_check() {
    if std::env::var_os("REWRITE").is_some() {
        return; // the script may be half written by its own test
    }
    let (_, _, failures) = run_script("partitions.txt", Some(BrokenRule::VoteWithoutLogCheck));
    assert!(
        failures.contains("alert: leader 2 (term 3) asked to overwrite committed entry 3")
            && failures.contains("partitions.txt:290: log")
            && failures.contains("-  5: [1/1 noop, 2/1, 3/2 noop, 4..63/2, 64/3 noop, 65/3 new-majority, 66/3 everyone]"),
        "the committed history survived a broken vote rule:{failures}"
    );
}
