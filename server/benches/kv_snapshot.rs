//! What snapshots of the key/value state machine cost: the pause the event
//! loop takes to start one, the time a background thread takes to write it
//! while the loop keeps applying, the time to restore from it, and apply
//! throughput with and without a snapshot alive.
//!
//! Run: `cargo bench -p poncho-server --bench kv_snapshot`
//! Options (environment): `BENCH_KEYS` (default 100,000), `BENCH_VALUE_BYTES`
//! (100), `BENCH_CLIENTS` (sessions, 1,000).
//!
//! It prints figures and checks only correctness, never timing.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use poncho_protocol::{Entry, EntryKind};
use poncho_server::kv::{Command, KvSnapshot, KvStore, Op};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: deterministic and cheap.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: u64) -> String {
    format!("user/{i:08}")
}

fn value(rng: &mut Rng, bytes: usize) -> String {
    let tag = format!("{:016x}", rng.next());
    tag.chars().cycle().take(bytes).collect()
}

fn set_data(key: String, value: String, session: Option<(u64, u64)>, ts_ms: u64) -> Arc<str> {
    let (client_id, seq) = match session {
        Some((client_id, seq)) => (Some(client_id), Some(seq)),
        None => (None, None),
    };
    Arc::from(
        Command {
            op: Op::Set {
                key,
                value,
                lease: None,
            },
            client_id,
            seq,
            user: None,
            ts_ms,
        }
        .encode(),
    )
}

fn entry(index: u64, data: &Arc<str>) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Command,
        data: Arc::clone(data),
    }
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Overwrites of random existing keys, used in turn (and again if a phase
/// needs more): no sessions, so reusing one changes only the index.
struct Overwrites {
    pool: Vec<Arc<str>>,
    next: usize,
}

impl Overwrites {
    /// Applies pooled entries, numbered on from `kv.last_applied()`, until
    /// `stop` says so; how many.
    fn apply_until(&mut self, kv: &mut KvStore, stop: impl Fn(usize) -> bool) -> usize {
        let mut applied = 0;
        while !stop(applied) {
            let index = kv.last_applied() + 1;
            kv.apply(&entry(index, &self.pool[self.next % self.pool.len()]));
            self.next += 1;
            applied += 1;
        }
        applied
    }
}

/// The store's shape, from the environment.
struct Shape {
    keys: u64,
    value_bytes: usize,
    clients: u64,
}

/// The entries that build the store (the sessions, then every key once),
/// and the overwrites the later phases apply.
fn workload(shape: &Shape, rng: &mut Rng, ts0: u64) -> (Vec<Arc<str>>, Overwrites) {
    let Shape {
        keys,
        value_bytes,
        clients,
    } = *shape;
    // The sessions first: client c's id is its registration's index, c + 1.
    let mut build: Vec<Arc<str>> = (0..clients)
        .map(|_| {
            let register = Command {
                op: Op::RegisterClient,
                client_id: None,
                seq: None,
                user: None,
                ts_ms: ts0,
            };
            Arc::from(register.encode())
        })
        .collect();
    // Every key once, in a scattered order (a multiplicative permutation).
    let mut seqs = vec![0u64; clients as usize];
    build.extend((0..keys).map(|i| {
        let k = key(i.wrapping_mul(2_654_435_761) % keys);
        let session = (i % 10 == 0).then(|| {
            let c = (rng.next() % clients) as usize;
            seqs[c] += 1;
            (c as u64 + 1, seqs[c])
        });
        set_data(k, value(rng, value_bytes), session, ts0 + i)
    }));
    let pool: Vec<Arc<str>> = (0..200_000u64)
        .map(|i| {
            let k = key(rng.next() % keys);
            set_data(k, value(rng, value_bytes), None, ts0 + keys + i)
        })
        .collect();
    (build, Overwrites { pool, next: 0 })
}

/// (d) Apply throughput: building the store, then overwriting.
fn apply_throughput(build: &[Arc<str>], keys: u64, overwrites: &mut Overwrites) -> KvStore {
    let mut kv = KvStore::new();
    let started = Instant::now();
    for (i, data) in build.iter().enumerate() {
        kv.apply(&entry(i as u64 + 1, data));
    }
    let elapsed = started.elapsed();
    assert_eq!(kv.len() as u64, keys);
    println!(
        "apply, building the store: {:.0} entries/s ({} entries in {:.1} ms)",
        per_second(build.len(), elapsed),
        build.len(),
        millis(elapsed)
    );
    println!(
        "store: {} keys, {} sessions, approximate_bytes {:.1} MB",
        kv.len(),
        kv.session_count(),
        kv.approximate_bytes() as f64 / 1e6
    );
    let count = 200_000;
    let started = Instant::now();
    overwrites.apply_until(&mut kv, |n| n == count);
    let elapsed = started.elapsed();
    println!(
        "apply, overwrites, no snapshot alive: {:.0} entries/s ({count} entries in {:.1} ms)",
        per_second(count, elapsed),
        millis(elapsed)
    );
    kv
}

/// (a) The event loop's pause: one snapshot() call.
fn snapshot_pause(kv: &mut KvStore, overwrites: &mut Overwrites) {
    let started = Instant::now();
    let first = kv.snapshot();
    let one = started.elapsed();
    drop(first);
    println!("snapshot(), first call: {:.2} us", micros(one));
    let mut pauses = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        overwrites.apply_until(kv, |n| n == 10);
        let started = Instant::now();
        let snapshot = kv.snapshot();
        pauses.push(started.elapsed());
        drop(snapshot);
    }
    pauses.sort();
    println!(
        "snapshot(), 1,000 calls 10 writes apart: median {:.2} us, max {:.2} us",
        micros(pauses[pauses.len() / 2]),
        micros(pauses[pauses.len() - 1])
    );
}

/// The snapshot's lines as a file would hold them, and how many.
fn write_to_vec(snapshot: &KvSnapshot, value_bytes: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(snapshot.len() * (value_bytes + 40));
    let mut lines = 0usize;
    snapshot
        .write_lines(|line| {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            lines += 1;
            Ok(())
        })
        .expect("writing to a Vec cannot fail");
    (out, lines)
}

/// Writing with nothing else running, for reference.
fn write_quiet(kv: &KvStore, value_bytes: usize) {
    let snapshot = kv.snapshot();
    let started = Instant::now();
    let (out, _) = write_to_vec(&snapshot, value_bytes);
    let quiet = started.elapsed();
    drop(snapshot);
    println!(
        "write_lines to a Vec, store idle: {:.1} ms ({:.1} MB, {:.0} MB/s)",
        millis(quiet),
        out.len() as f64 / 1e6,
        out.len() as f64 / 1e6 / quiet.as_secs_f64()
    );
}

/// The copy-on-write cost alone: the same number of writes with no
/// snapshot, then with one held (on this thread, idle).
fn copy_on_write(kv: &mut KvStore, overwrites: &mut Overwrites) {
    let count = 25_000;
    let started = Instant::now();
    overwrites.apply_until(kv, |n| n == count);
    let free = started.elapsed();
    let held = kv.snapshot();
    let started = Instant::now();
    overwrites.apply_until(kv, |n| n == count);
    let shared = started.elapsed();
    drop(held);
    println!(
        "apply, {count} overwrites, no snapshot alive: {:.0} entries/s",
        per_second(count, free)
    );
    println!(
        "apply, {count} overwrites, a fresh snapshot held but idle (copy-on-write): {:.0} entries/s",
        per_second(count, shared)
    );
}

/// (b) Written on a thread while this one keeps applying to the store; the
/// lines and their count.
fn write_while_applying(
    kv: &mut KvStore,
    overwrites: &mut Overwrites,
    value_bytes: usize,
) -> (Vec<u8>, usize) {
    let snapshot = kv.snapshot();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let started = Instant::now();
            let (out, lines) = write_to_vec(&snapshot, value_bytes);
            let written = started.elapsed();
            done.store(true, Ordering::Release);
            // The snapshot goes here too, with the nodes it kept for itself.
            let started = Instant::now();
            drop(snapshot);
            (out, lines, written, started.elapsed())
        })
    };
    let started = Instant::now();
    let during = overwrites.apply_until(kv, |_| done.load(Ordering::Acquire));
    let applying = started.elapsed();
    let (out, lines, written, dropped) = writer.join().expect("the writer does not panic");
    println!(
        "write_lines to a Vec on a thread, store applying meanwhile: {:.1} ms ({lines} lines, {:.1} MB)",
        millis(written),
        out.len() as f64 / 1e6
    );
    println!(
        "apply while that snapshot was alive (copy-on-write): {:.0} entries/s ({during} entries in {:.1} ms)",
        per_second(during, applying),
        millis(applying)
    );
    println!(
        "dropping the snapshot on the thread afterwards: {:.2} ms",
        millis(dropped)
    );
    (out, lines)
}

fn main() {
    let shape = Shape {
        keys: env_or("BENCH_KEYS", 100_000) as u64,
        value_bytes: env_or("BENCH_VALUE_BYTES", 100),
        clients: env_or("BENCH_CLIENTS", 1_000).max(1) as u64,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ts0 = 1_700_000_000_000;
    println!(
        "kv_snapshot: {} keys, {}-byte values, every 10th write in one of {} client sessions",
        shape.keys, shape.value_bytes, shape.clients
    );
    let (build, mut overwrites) = workload(&shape, &mut rng, ts0);

    let mut kv = apply_throughput(&build, shape.keys, &mut overwrites);
    snapshot_pause(&mut kv, &mut overwrites);
    write_quiet(&kv, shape.value_bytes);
    copy_on_write(&mut kv, &mut overwrites);
    let expected_len = kv.len();
    let expected_applied = kv.last_applied();
    let (out, lines) = write_while_applying(&mut kv, &mut overwrites, shape.value_bytes);

    // (c) Restore from those lines.
    let started = Instant::now();
    let restored = KvStore::restore(out.lines()).expect("the snapshot restores");
    let elapsed = started.elapsed();
    assert_eq!(restored.len(), expected_len);
    assert_eq!(restored.last_applied(), expected_applied);
    println!(
        "restore from the lines: {:.1} ms ({:.0} lines/s)",
        millis(elapsed),
        per_second(lines, elapsed)
    );
}
