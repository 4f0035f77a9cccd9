//! `--interval SECS` and `--phase-file FILE`: what a long run did over time.
//!
//! Every interval, one line gives that interval's throughput and latency
//! (all operations together) and the phase it ended in. The phase is the
//! first line of the phase file, which a script driving the run rewrites as
//! the cluster goes through what is measured (say `before`, `catchup`,
//! `after`); the summary then gives each phase's throughput and latency, and
//! the phase `stop` ends the run as its deadline would.
//!
//! Both come from differences of the run's cumulative histograms (a copy is
//! kept at each boundary), so recording a reply costs nothing more.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::{by_op_json, ms, Stats};

/// How often the phase file is read: a phase's bounds are this exact.
const PHASE_POLL: Duration = Duration::from_millis(50);
/// The most of the phase file read; its first line is the phase.
const PHASE_FILE_BYTES: u64 = 256;
/// The phase before the file names one (or with no file).
const NO_PHASE: &str = "-";
/// The phase that ends the run (the replies still outstanding count in the
/// phase before).
const STOP_PHASE: &str = "stop";
/// Shortest --interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Most phases one run keeps (a file rewritten more often than that merges
/// the rest into the last one).
const MAX_PHASES: usize = 1_000;

/// One phase as it ran: its name, how long, and what was recorded in it.
pub struct PhaseResult {
    pub name: String,
    pub seconds: f64,
    pub stats: Stats,
}

/// The state of the interval lines and of the phases.
pub struct Report {
    interval: Option<Duration>,
    phase_file: Option<PathBuf>,
    json: bool,
    started: Instant,
    /// The current interval's start, and the run's stats then.
    interval_start: (Instant, Stats),
    next_phase_read: Instant,
    /// The current phase: its name, start, and the run's stats then.
    phase: (String, Instant, Stats),
    /// The phase file said `stop`.
    stopped: bool,
    pub phases: Vec<PhaseResult>,
}

impl Report {
    /// A report of `interval` lines (none: no lines) and phases read from
    /// `phase_file` (none: the whole run is one phase, `-`), printed as JSON
    /// lines if `json`.
    pub fn new(interval: Option<Duration>, phase_file: Option<PathBuf>, json: bool) -> Report {
        let now = Instant::now();
        Report {
            interval,
            phase_file,
            json,
            started: now,
            interval_start: (now, Stats::new()),
            next_phase_read: now,
            phase: (NO_PHASE.to_string(), now, Stats::new()),
            stopped: false,
            phases: Vec::new(),
        }
    }

    /// Whether this report does anything (else `tick` is not needed).
    pub fn enabled(&self) -> bool {
        self.interval.is_some() || self.phase_file.is_some()
    }

    /// The run starts at `now` with `stats` (empty).
    pub fn start(&mut self, now: Instant, stats: &Stats) {
        self.started = now;
        self.interval_start = (now, stats.clone());
        self.phase = (NO_PHASE.to_string(), now, stats.clone());
        self.next_phase_read = now;
        self.read_phase(now, stats);
    }

    /// Prints an interval line when one is due and follows the phase file:
    /// true once it says `stop`.
    pub fn tick(&mut self, now: Instant, stats: &Stats) -> bool {
        if let Some(every) = self.interval {
            if now >= self.interval_start.0 + every {
                self.print_interval(now, stats);
                self.interval_start = (now, stats.clone());
            }
        }
        if now >= self.next_phase_read {
            self.next_phase_read = now + PHASE_POLL;
            self.read_phase(now, stats);
        }
        self.stopped
    }

    /// The run ended at `now`: closes the last phase.
    pub fn finish(&mut self, now: Instant, stats: &Stats) {
        if self.phase_file.is_some() {
            self.close_phase(now, stats);
        }
    }

    fn read_phase(&mut self, now: Instant, stats: &Stats) {
        let Some(path) = &self.phase_file else {
            return;
        };
        let mut text = String::new();
        // Unreadable, or empty (a shell's `>` truncates before it writes):
        // the phase stays as it was.
        let read =
            File::open(path).and_then(|f| f.take(PHASE_FILE_BYTES).read_to_string(&mut text));
        let name = text.lines().next().unwrap_or("").trim();
        if read.is_err() || name.is_empty() || name == self.phase.0 {
            return;
        }
        if name == STOP_PHASE {
            // The replies still to come belong to the phase they were
            // asked in.
            self.stopped = true;
            return;
        }
        let name = name.to_string();
        if self.phases.len() < MAX_PHASES {
            self.close_phase(now, stats);
            self.phase = (name, now, stats.clone());
        } else {
            // Counted in the last phase kept.
            self.phase.0 = name;
        }
    }

    fn close_phase(&mut self, now: Instant, stats: &Stats) {
        let (name, since, at_start) = &self.phase;
        let seconds = (now - *since).as_secs_f64();
        // The time before the file first named a phase counts only if
        // something ran in it.
        let delta = stats.since(at_start);
        if name == NO_PHASE && delta.total() == 0 && delta.errors == 0 {
            return;
        }
        self.phases.push(PhaseResult {
            name: name.clone(),
            seconds,
            stats: delta,
        });
    }

    fn print_interval(&self, now: Instant, stats: &Stats) {
        let (since, at_start) = &self.interval_start;
        let secs = (now - *since).as_secs_f64();
        let delta = stats.since(at_start);
        let all = delta.combined();
        let at = (now - self.started).as_secs_f64();
        let (ops, errors) = (all.len(), delta.errors);
        let phase = &self.phase.0;
        if self.json {
            let line = json!({
                "interval_end_s": at, "seconds": secs, "phase": phase, "ops": ops,
                "ops_per_sec": ops as f64 / secs, "p50_ms": ms(&all, 0.5),
                "p99_ms": ms(&all, 0.99), "max_ms": all.max() as f64 / 1000.0, "errors": errors,
            });
            println!("{line}");
        } else {
            println!(
                "  {at:>7.1} s  {phase:<12} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {errors} errors",
                ops as f64 / secs,
                ms(&all, 0.5),
                ms(&all, 0.99),
            );
        }
    }
}

impl PhaseResult {
    /// The phase in the --json summary.
    pub fn json(&self) -> serde_json::Value {
        let all = self.stats.combined();
        let secs = self.seconds.max(f64::MIN_POSITIVE);
        json!({
            "name": self.name, "seconds": self.seconds, "ops": all.len(),
            "ops_per_sec": all.len() as f64 / secs, "errors": self.stats.errors,
            "p50_ms": ms(&all, 0.5), "p99_ms": ms(&all, 0.99), "p999_ms": ms(&all, 0.999),
            "max_ms": all.max() as f64 / 1000.0, "by_op": by_op_json(&self.stats, secs),
        })
    }

    /// The phase as a line of the text summary.
    pub fn text(&self) -> String {
        let all = self.stats.combined();
        format!(
            "  phase {:<12} {:>7.1} s {:>10} ops {:>9.0} ops/s  p50 {:>7.2}  p99 {:>7.2}  max {:>8.2} ms  {} errors",
            self.name,
            self.seconds,
            all.len(),
            all.len() as f64 / self.seconds.max(f64::MIN_POSITIVE),
            ms(&all, 0.5),
            ms(&all, 0.99),
            all.max() as f64 / 1000.0,
            self.stats.errors
        )
    }
}

impl Stats {
    /// What was recorded since `earlier`, a copy of these stats taken
    /// before (counts only grow, so the difference is a histogram too).
    pub fn since(&self, earlier: &Stats) -> Stats {
        let mut delta = self.clone();
        for (h, e) in delta.histograms.iter_mut().zip(&earlier.histograms) {
            h.subtract(e)
                .expect("the same bounds, and counts only grow");
        }
        delta.errors -= earlier.errors.min(delta.errors);
        delta
    }

    /// Every operation's latencies in one histogram.
    pub fn combined(&self) -> Histogram<u64> {
        let mut all = Stats::empty_histogram();
        for h in &self.histograms {
            all.add(h).expect("the same bounds");
        }
        all
    }
}
