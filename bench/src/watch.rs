//! `--watchers N`: watch fan-out. N watches of one prefix (`--watch-prefix`,
//! by default the bench's own keys), carried by `--watch-streams S`
//! connections (N/S watches each, the remainder on the first ones; default
//! one watch per connection, up to 1,000 connections), spread round-robin
//! over the nodes (`--watch-nodes`, by default every `--cluster` address),
//! while the `--clients` write. The same spread applies to both targets:
//!
//! - poncho: one connection per stream, each sending its N/S `WATCH
//!   create` requests (at most 1,000 per connection, the server's limit);
//!   any node serves a watch from its applied state.
//! - etcd: one HTTP/1.1 `POST /v3/watch` per stream, whose body holds its
//!   N/S `create_request`s (the gateway decodes them one after another into
//!   one gRPC watch stream, as etcd's own benchmark multiplexes watches on
//!   a stream), answered by a chunked stream of messages, one per line.
//!
//! Every event delivered to every watch counts once. The writers put, while
//! watchers run, the time they built the request (nanoseconds since the
//! Unix epoch, then `:`) at the start of each value; a watch's event is
//! timed from that to when its message is read (put-to-event latency, the
//! same clock on one machine). Watches are all created before the writers
//! start. Events read while the writers run give the rate (events per
//! second of the run); once they are done, the watchers go on reading for
//! up to `--watch-drain` seconds (until every write reached every watch, or
//! nothing came for a second), so the latency percentiles include the
//! events that came late, and the delivered fraction says how many came at
//! all.
//!
//! One or a few threads (`--watch-threads`), one mio poll each, read every
//! watch connection; the memory is the connections' buffers.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use poncho_client::{Credentials, MaybeTls, Tls};
use poncho_protocol::LineBuffer;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::etcd::{self, ChunkedStream};
use crate::{Stats, Target};

/// The most watches one connection carries (poncho's
/// `MAX_WATCHES_PER_CONNECTION`; held to for etcd too, so both get the
/// same spread).
pub const MAX_WATCHES_PER_STREAM: usize = 1_000;
/// How long creating every watch may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest message line read.
const MAX_MESSAGE_BYTES: usize = 1 << 24;

/// How many watches each stream carries: `watchers` over `streams`
/// connections (default: one each, up to 1,000 connections), the remainder
/// one more on the first ones.
pub fn spread(watchers: usize, streams: Option<usize>) -> Result<Vec<usize>, String> {
    if watchers == 0 {
        return Ok(Vec::new());
    }
    let streams = streams.unwrap_or_else(|| watchers.min(MAX_WATCHES_PER_STREAM));
    if streams == 0 || streams > watchers {
        return Err(format!(
            "--watch-streams {streams}: give 1 to --watchers ({watchers})"
        ));
    }
    if watchers.div_ceil(streams) > MAX_WATCHES_PER_STREAM {
        return Err(format!(
            "--watchers {watchers} on {streams} streams is more than {MAX_WATCHES_PER_STREAM} \
             watches per stream: give --watch-streams {} or more",
            watchers.div_ceil(MAX_WATCHES_PER_STREAM)
        ));
    }
    let (each, extra) = (watchers / streams, watchers % streams);
    Ok((0..streams)
        .map(|i| each + usize::from(i < extra))
        .collect())
}

/// The end of a prefix range as etcd names it: the prefix with its last
/// byte that is not 0xff increased by one (and what follows it dropped);
/// `\0` (every key) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Nanoseconds since the Unix epoch, the clock the values carry.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A value that starts with `nanos` and `:`, padded with `v` to `size`
/// bytes (longer if the stamp does not fit).
pub fn stamped_value(nanos: u64, size: usize, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(out, "{nanos}:");
    while out.len() < size {
        out.push('v');
    }
}

/// The send time a stamped value starts with.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    let colon = value.iter().take(21).position(|&b| b == b':')?;
    std::str::from_utf8(&value[..colon]).ok()?.parse().ok()
}

/// How the watch threads are told what to do.
const WARMING: u8 = 0;
const MEASURING: u8 = 1;
/// The writers are done: events still count (and are timed), apart.
const DRAINING: u8 = 2;
const STOPPING: u8 = 3;

struct Shared {
    state: AtomicU8,
    created: AtomicUsize,
    /// Events counted so far, run and drain.
    events: AtomicU64,
    /// Watches whose creation failed, and the first reason.
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
}

/// What the watchers saw during the writers' run.
pub struct WatchStats {
    /// Events read while the writers ran.
    pub events: u64,
    /// Events read after the writers were done (`drain`).
    pub drained: u64,
    pub drain_seconds: f64,
    /// Put-to-event latency of the events that carried a stamp, in us.
    pub latency: Histogram<u64>,
    /// Watches the server ended (poncho `SLOW_WATCHER`, etcd `canceled`)
    /// and error messages.
    pub errors: u64,
    /// Watch connections lost (closed, or a reply that could not be read).
    pub streams_lost: u64,
    pub error_sample: Option<String>,
}

impl WatchStats {
    fn new() -> WatchStats {
        WatchStats {
            events: 0,
            drained: 0,
            drain_seconds: 0.0,
            latency: Stats::empty_histogram(),
            errors: 0,
            streams_lost: 0,
            error_sample: None,
        }
    }

    fn merge(&mut self, other: WatchStats) {
        self.events += other.events;
        self.drained += other.drained;
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        self.streams_lost += other.streams_lost;
        if self.error_sample.is_none() {
            self.error_sample = other.error_sample;
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.error_sample.get_or_insert(e);
    }
}

/// The plan of a fan-out: where each stream goes and how many watches it
/// carries.
pub struct Plan {
    pub target: Target,
    pub nodes: Vec<SocketAddr>,
    pub per_stream: Vec<usize>,
    pub prefix: String,
    pub threads: usize,
}

/// The running watchers.
pub struct Watchers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<WatchStats>>,
    pub watchers: usize,
    pub streams: usize,
    pub nodes: usize,
}

enum Input {
    Lines(LineBuffer),
    /// etcd: the HTTP stream's chunks, decoded into lines.
    Http(ChunkedStream, LineBuffer),
}

struct WatchConn {
    stream: MaybeTls<TcpStream>,
    out: Vec<u8>,
    written: usize,
    input: Input,
    /// Watches asked for and not yet created.
    creating: usize,
    lost: bool,
}

/// Opens the streams (blocking), asks for their watches and waits until
/// every one is created.
pub fn start(
    plan: &Plan,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Result<Watchers, String> {
    let shared = Arc::new(Shared {
        state: AtomicU8::new(WARMING),
        created: AtomicUsize::new(0),
        events: AtomicU64::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let threads = plan.threads.clamp(1, plan.per_stream.len().max(1));
    let mut groups: Vec<Vec<WatchConn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, &count) in plan.per_stream.iter().enumerate() {
        let node = plan.nodes[i % plan.nodes.len()];
        let conn = open(plan, node, count, tls, credentials)?;
        groups[i % threads].push(conn);
    }
    let watchers: usize = plan.per_stream.iter().sum();
    let handles = groups
        .into_iter()
        .enumerate()
        .map(|(i, conns)| {
            let shared = Arc::clone(&shared);
            let target = plan.target;
            std::thread::Builder::new()
                .name(format!("watchers-{i}"))
                .spawn(move || serve(target, conns, &shared))
                .map_err(|e| format!("cannot start a watch thread: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let running = Watchers {
        shared,
        threads: handles,
        watchers,
        streams: plan.per_stream.len(),
        nodes: plan.nodes.len().min(plan.per_stream.len()),
    };
    let deadline = Instant::now() + CREATE_TIMEOUT;
    loop {
        let created = running.shared.created.load(Ordering::Acquire);
        let failed = running.shared.failed.load(Ordering::Acquire);
        if created == watchers {
            return Ok(running);
        }
        if failed > 0 || Instant::now() > deadline {
            let first = running.first_error();
            running.stop();
            return Err(format!(
                "only {created} of {watchers} watches were created ({failed} failed); \
                 first error: {}",
                first.as_deref().unwrap_or("none (timed out)")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Watchers {
    fn first_error(&self) -> Option<String> {
        self.shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// From now on, events count.
    pub fn measure(&self) {
        self.shared.state.store(MEASURING, Ordering::Release);
    }

    /// The writers are done: waits until `expected` events were read in
    /// all, or none came for a second, or `limit` passed, counting (and
    /// timing) the late ones apart; then stops.
    pub fn drain(self, expected: u64, limit: Duration) -> WatchStats {
        let started = Instant::now();
        self.shared.state.store(DRAINING, Ordering::Release);
        let (mut last, mut last_change) = (self.shared.events.load(Ordering::Acquire), started);
        while started.elapsed() < limit {
            let now_events = self.shared.events.load(Ordering::Acquire);
            if now_events >= expected {
                break;
            }
            if now_events != last {
                (last, last_change) = (now_events, Instant::now());
            } else if last_change.elapsed() >= Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stats = self.stop();
        stats.drain_seconds = started.elapsed().as_secs_f64();
        stats
    }

    /// Stops the threads and sums what they saw.
    pub fn stop(self) -> WatchStats {
        self.shared.state.store(STOPPING, Ordering::Release);
        let mut total = WatchStats::new();
        for t in self.threads {
            match t.join() {
                Ok(s) => total.merge(s),
                Err(_) => total.error("a watch thread panicked".into()),
            }
        }
        total
    }
}

/// Opens one stream to `node` and queues its `count` watch requests.
fn open(
    plan: &Plan,
    node: SocketAddr,
    count: usize,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Result<WatchConn, String> {
    let std = StdTcpStream::connect(node).map_err(|e| format!("connect {node}: {e}"))?;
    let mut out = Vec::new();
    let (stream, input) = match plan.target {
        Target::Poncho => {
            let stream = crate::open_unregistered(std, node, tls, credentials)?;
            for i in 0..count {
                let line = json!({"msg_type": "WATCH", "req_id": i,
                    "payload": {"op": "create", "key": plan.prefix, "prefix": true}});
                serde_json::to_writer(&mut out, &line).expect("json to vec");
                out.push(b'\n');
            }
            (stream, Input::Lines(LineBuffer::new(MAX_MESSAGE_BYTES)))
        }
        Target::Etcd => {
            let (mut key, mut end) = (String::new(), String::new());
            etcd::base64(plan.prefix.as_bytes(), &mut key);
            etcd::base64(&prefix_end(plan.prefix.as_bytes()), &mut end);
            let one = format!(r#"{{"create_request":{{"key":"{key}","range_end":"{end}"}}}}"#);
            let body = one.repeat(count);
            etcd::write_post(&mut out, &node.to_string(), "/v3/watch", &body);
            let lines = LineBuffer::new(MAX_MESSAGE_BYTES);
            (
                MaybeTls::Plain(std),
                Input::Http(ChunkedStream::default(), lines),
            )
        }
    };
    let sock = stream.get_ref();
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(WatchConn {
        stream: stream.map_socket(TcpStream::from_std),
        out,
        written: 0,
        input,
        creating: count,
        lost: false,
    })
}

/// A watch thread: reads its connections until told to stop.
fn serve(target: Target, mut conns: Vec<WatchConn>, shared: &Shared) -> WatchStats {
    let mut stats = WatchStats::new();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            shared.note_error(format!("poll: {e}"));
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return stats;
        }
    };
    for (i, c) in conns.iter_mut().enumerate() {
        if let Err(e) = poll.registry().register(
            c.stream.get_mut(),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            shared.note_error(format!("register: {e}"));
            shared.failed.fetch_add(c.creating, Ordering::AcqRel);
            c.lost = true;
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 << 10];
    let mut pending_out = true;
    loop {
        let state = shared.state.load(Ordering::Acquire);
        if state == STOPPING {
            break;
        }
        if pending_out {
            pending_out = false;
            for c in conns.iter_mut().filter(|c| !c.lost) {
                if let Err(e) = c.flush() {
                    c.lose(e, shared, &mut stats, &poll);
                }
                pending_out |= !c.out.is_empty();
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                stats.error(format!("poll: {e}"));
                break;
            }
        }
        let phase = shared.state.load(Ordering::Acquire);
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            if c.lost {
                continue;
            }
            let outcome = c
                .read_available(&mut chunk, event.is_read_closed())
                .and_then(|()| c.take_messages(target, phase, shared, &mut stats));
            if let Err(e) = outcome {
                c.lose(e, shared, &mut stats, &poll);
            }
        }
    }
    stats
}

/// The messages the watch connections read: only the fields counted.
#[derive(Deserialize)]
struct PonchoMessage<'a> {
    #[serde(borrow)]
    msg_type: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<PonchoPayload<'a>>,
}

#[derive(Deserialize)]
struct PonchoPayload<'a> {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, borrow)]
    events: Vec<PonchoEvent<'a>>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PonchoEvent<'a> {
    #[serde(borrow)]
    kv: PonchoKv<'a>,
}

#[derive(Deserialize)]
struct PonchoKv<'a> {
    #[serde(default, borrow)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EtcdMessage<'a> {
    #[serde(default, borrow)]
    result: Option<EtcdResult<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct EtcdResult<'a> {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, borrow)]
    events: Vec<EtcdEvent<'a>>,
}

#[derive(Deserialize)]
struct EtcdEvent<'a> {
    #[serde(default, borrow)]
    kv: Option<PonchoKv<'a>>,
}

/// What one message said.
#[derive(Debug, Default, PartialEq)]
struct Message {
    created: bool,
    /// The watch ended, or an error: why.
    error: Option<String>,
    /// The events' send stamps (`None`: a value without one).
    stamps: Vec<Option<u64>>,
}

/// The start of a message, for an error.
fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(line).chars().take(300).collect()
}

fn poncho_message(line: &[u8]) -> Result<Message, String> {
    let m: PonchoMessage =
        serde_json::from_slice(line).map_err(|e| format!("bad watch message: {e}"))?;
    let text = || excerpt(line);
    let Some(p) = m.payload else {
        return Err(format!("a message without a payload: {}", text()));
    };
    if m.msg_type == "ERROR" || p.code.is_some() {
        return Ok(Message {
            error: Some(text()),
            ..Message::default()
        });
    }
    if m.msg_type != "WATCH" {
        return Err(format!("not a watch message: {}", text()));
    }
    if p.canceled || p.error.is_some() {
        return Ok(Message {
            error: Some(text()),
            ..Message::default()
        });
    }
    Ok(Message {
        created: p.created,
        error: None,
        stamps: p
            .events
            .iter()
            .map(|e| e.kv.value.as_deref().and_then(|v| stamp_of(v.as_bytes())))
            .collect(),
    })
}

fn etcd_message(line: &[u8]) -> Result<Message, String> {
    let m: EtcdMessage =
        serde_json::from_slice(line).map_err(|e| format!("bad watch message: {e}"))?;
    let text = || excerpt(line);
    let Some(r) = m.result.filter(|_| m.error.is_none()) else {
        return Ok(Message {
            error: Some(text()),
            ..Message::default()
        });
    };
    if r.canceled {
        return Ok(Message {
            error: Some(text()),
            ..Message::default()
        });
    }
    let mut decoded = Vec::new();
    let stamps = r
        .events
        .iter()
        .map(|e| {
            let value = e.kv.as_ref()?.value.as_deref()?.as_bytes();
            // 28 characters are 21 bytes: a stamp of up to 20 digits and
            // its colon.
            decoded.clear();
            etcd::base64_decode(&value[..value.len().min(28)], &mut decoded).ok()?;
            stamp_of(&decoded)
        })
        .collect();
    Ok(Message {
        created: r.created,
        error: None,
        stamps,
    })
}

impl WatchConn {
    fn flush(&mut self) -> Result<(), String> {
        self.stream
            .flush_records()
            .map_err(|e| format!("write: {e}"))?;
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.written == self.out.len() {
            self.out = Vec::new();
            self.written = 0;
        }
        Ok(())
    }

    fn read_available(&mut self, chunk: &mut [u8], read_closed: bool) -> Result<(), String> {
        // As the writers' connections read (`Conn::read_available`).
        let short_read_drains = cfg!(target_os = "linux") && !read_closed;
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return Err("the server closed a watch connection".into()),
                Ok(n) => {
                    match &mut self.input {
                        Input::Lines(lines) => lines.extend(&chunk[..n]),
                        Input::Http(http, lines) => {
                            http.extend(&chunk[..n], |b| lines.extend(b))?
                        }
                    }
                    if short_read_drains
                        && n < chunk.len()
                        && self.stream.short_read_emptied_socket()
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn take_messages(
        &mut self,
        target: Target,
        phase: u8,
        shared: &Shared,
        stats: &mut WatchStats,
    ) -> Result<(), String> {
        let lines = match &mut self.input {
            Input::Lines(lines) | Input::Http(_, lines) => lines,
        };
        while let Some(line) = lines.next_line() {
            let line = line.map_err(|_| "a watch message too long".to_string())?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let m = match target {
                Target::Poncho => poncho_message(line)?,
                Target::Etcd => etcd_message(line)?,
            };
            if m.created {
                self.creating = self.creating.saturating_sub(1);
                shared.created.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(e) = m.error {
                if self.creating > 0 {
                    // A watch that could not be created (TOO_MANY_WATCHES).
                    self.creating -= 1;
                    shared.failed.fetch_add(1, Ordering::AcqRel);
                    shared.note_error(e.clone());
                }
                stats.error(e);
                continue;
            }
            if m.stamps.is_empty() || !(phase == MEASURING || phase == DRAINING) {
                continue;
            }
            let now = now_nanos();
            let n = m.stamps.len() as u64;
            if phase == MEASURING {
                stats.events += n;
            } else {
                stats.drained += n;
            }
            shared.events.fetch_add(n, Ordering::AcqRel);
            for sent in m.stamps.into_iter().flatten() {
                let micros = (now.saturating_sub(sent) / 1_000).max(1);
                let _ = stats.latency.record(micros);
            }
        }
        Ok(())
    }

    /// Gives up on this connection after `why`.
    fn lose(&mut self, why: String, shared: &Shared, stats: &mut WatchStats, poll: &Poll) {
        self.lost = true;
        stats.streams_lost += 1;
        if self.creating > 0 {
            shared.failed.fetch_add(self.creating, Ordering::AcqRel);
            shared.note_error(why.clone());
            self.creating = 0;
        }
        stats.error_sample.get_or_insert(why);
        let _ = poll.registry().deregister(self.stream.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_spread_over_streams() {
        assert_eq!(spread(0, None), Ok(vec![]));
        assert_eq!(spread(3, None), Ok(vec![1, 1, 1]));
        assert_eq!(spread(1000, None).unwrap().len(), 1000);
        let big = spread(2500, None).unwrap();
        assert_eq!((big.len(), big.iter().sum::<usize>()), (1000, 2500));
        assert_eq!(&big[..2], &[3, 3]);
        assert_eq!(big[999], 2);
        assert_eq!(spread(10, Some(4)), Ok(vec![3, 3, 2, 2]));
        assert_eq!(spread(1000, Some(1)), Ok(vec![1000]));
        assert!(spread(1001, Some(1))
            .unwrap_err()
            .contains("--watch-streams 2"));
        assert!(spread(3, Some(4)).is_err());
        assert!(spread(3, Some(0)).is_err());
    }

    #[test]
    fn prefix_ends_as_etcd_computes_them() {
        assert_eq!(prefix_end(b"key:"), b"key;");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn stamps_round_trip_through_values() {
        let mut v = String::new();
        stamped_value(1_712_345_678_901_234_567, 100, &mut v);
        assert_eq!(v.len(), 100);
        assert!(v.starts_with("1712345678901234567:vvv"));
        assert_eq!(stamp_of(v.as_bytes()), Some(1_712_345_678_901_234_567));
        stamped_value(42, 2, &mut v);
        assert_eq!(v, "42:");
        assert_eq!(stamp_of(b"vvvv"), None);
        assert_eq!(stamp_of(b"12x:vv"), None);
        assert_eq!(stamp_of(&[b'1'; 40]), None);
    }

    #[test]
    fn poncho_messages() {
        let created = br#"{"msg_type":"WATCH","req_id":3,"payload":{"watch_id":4,"created":true,"revision":9}}"#;
        assert_eq!(
            poncho_message(created),
            Ok(Message {
                created: true,
                ..Message::default()
            })
        );
        let news = br#"{"msg_type":"WATCH","payload":{"watch_id":4,"revision":10,"events":[{"type":"put","kv":{"key":"key:00000001","value":"1000:vv","create_revision":2,"mod_revision":10,"version":3}},{"type":"delete","kv":{"key":"key:2","create_revision":0,"mod_revision":10,"version":0}}]}}"#;
        assert_eq!(poncho_message(news).unwrap().stamps, vec![Some(1000), None]);
        for ended in [
            &br#"{"msg_type":"WATCH","payload":{"watch_id":4,"canceled":true,"revision":10,"error":{"code":"SLOW_WATCHER","message":"m"}}}"#[..],
            br#"{"msg_type":"ERROR","req_id":7,"payload":{"code":"TOO_MANY_WATCHES","message":"m"}}"#,
        ] {
            let m = poncho_message(ended).unwrap();
            assert!(m.error.is_some() && m.stamps.is_empty(), "{m:?}");
        }
        assert!(poncho_message(b"{").is_err());
    }

    #[test]
    fn etcd_messages() {
        let created = br#"{"result":{"header":{"cluster_id":"1","revision":"9"},"created":true}}"#;
        assert!(etcd_message(created).unwrap().created);
        let mut value = String::new();
        etcd::base64(b"1712345678901234567:vvvvvvvvvvvvvvvvvvvv", &mut value);
        let news = format!(
            r#"{{"result":{{"header":{{"revision":"10"}},"watch_id":"3","events":[{{"kv":{{"key":"a2V5","create_revision":"2","mod_revision":"10","version":"2","value":"{value}"}}}},{{"type":"DELETE","kv":{{"key":"a2V5","mod_revision":"11"}}}}]}}}}"#
        );
        assert_eq!(
            etcd_message(news.as_bytes()).unwrap().stamps,
            vec![Some(1_712_345_678_901_234_567), None]
        );
        for ended in [
            &br#"{"result":{"header":{},"watch_id":"3","canceled":true,"cancel_reason":"x"}}"#[..],
            br#"{"error":{"grpc_code":1,"message":"context canceled"}}"#,
        ] {
            assert!(etcd_message(ended).unwrap().error.is_some());
        }
    }
}
