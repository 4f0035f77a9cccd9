//! Watchers for the fault-injection runs (issue 14): one per node, each
//! following the workload's prefix with a `list` watch through kills,
//! partitions and leader changes, resuming on the next node from the
//! revision after the last it saw when its node goes away. Besides the
//! faults, each drops its connection every second or so and resumes on the
//! next node while writes go on, so resuming is tested under load too.
//!
//! What each records is checked at the end of the run ([`check`]): its
//! revisions only grow (no duplicate, no reordering); every revision any
//! watcher saw inside the span another covered, that one saw too, with the
//! same changes (no gap, nothing different); and replaying its list and
//! changes gives the prefix as a linearizable read finds it at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use poncho_client::{Connection, Tls};
use poncho_protocol::{
    encode_request, AuthenticateRequest, ClientRequest, EventType, Password, WatchCreate,
    WatchReply, WatchRequest,
};

use crate::auth::Login;

/// One change as a watcher records it: (key, value; `None` for a delete).
pub type Change = (String, Option<String>);

/// A stretch of a watcher's stream with no gap: a list at `listed_at`, then
/// the changes of each revision after it.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub listed_at: u64,
    pub state: BTreeMap<String, String>,
    pub revisions: Vec<(u64, Vec<Change>)>,
    /// The latest progress reply's revision.
    pub progress: u64,
}

impl Segment {
    fn last(&self) -> u64 {
        self.revisions.last().map_or(self.listed_at, |(r, _)| *r)
    }

    /// The revision up to which it has everything: its last change's, or
    /// the node's word that nothing of the prefix changed since (a
    /// progress reply: the revisions that change other keys send nothing).
    fn covered(&self) -> u64 {
        self.last().max(self.progress)
    }
}

#[derive(Default)]
pub struct Record {
    pub segments: Vec<Segment>,
    /// How often it moved to another node and resumed.
    pub resumes: u64,
    /// Whether something broke the stream's own rules (a revision not
    /// after the last), with what.
    pub broken: Option<String>,
}

pub struct Watchers {
    stop: Arc<AtomicBool>,
    /// Watchers stop once they have seen this revision (0: not yet set).
    target: Arc<AtomicU64>,
    records: Vec<Arc<Mutex<Record>>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(r: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchers {
    /// Starts one watcher per address, the i-th on node i first.
    pub fn start(
        addrs: Vec<SocketAddr>,
        prefix: &str,
        tls: Option<Tls>,
        login: Option<Login>,
    ) -> Watchers {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicU64::new(0));
        let mut records = Vec::new();
        let mut threads = Vec::new();
        for first in 0..addrs.len() {
            let record = Arc::new(Mutex::new(Record::default()));
            records.push(record.clone());
            let mut w = Watcher {
                addrs: addrs.clone(),
                node: first,
                prefix: prefix.to_string(),
                tls: tls.clone(),
                login: login.clone(),
                record,
                next_req: 0,
                relist: true,
            };
            let (stop, target) = (stop.clone(), target.clone());
            threads.push(thread::spawn(move || w.run(&stop, &target)));
        }
        Watchers {
            stop,
            target,
            records,
            threads,
        }
    }

    /// Lets the watchers catch up to `revision` (the run's last), for at
    /// most `patience`, then stops them and returns what they recorded.
    pub fn finish(mut self, revision: u64, patience: Duration) -> Vec<Record> {
        self.target.store(revision.max(1), SeqCst);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline && !self.threads.iter().all(|t| t.is_finished()) {
            thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.records
            .iter()
            .map(|r| std::mem::take(&mut *lock(r)))
            .collect()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Watcher {
    addrs: Vec<SocketAddr>,
    node: usize,
    prefix: String,
    tls: Option<Tls>,
    login: Option<Login>,
    record: Arc<Mutex<Record>>,
    next_req: u64,
    /// The next watch lists the prefix (at first, and after a node could
    /// not resume without a gap).
    relist: bool,
}

impl Watcher {
    fn run(&mut self, stop: &AtomicBool, target: &AtomicU64) {
        while !stop.load(SeqCst) {
            let last = if self.relist {
                None
            } else {
                lock(&self.record).segments.last().map(Segment::last)
            };
            let goal = target.load(SeqCst);
            let covered = lock(&self.record).segments.last().map(Segment::covered);
            if goal > 0 && !self.relist && covered.is_some_and(|c| c >= goal) {
                return;
            }
            self.follow(last, stop, target);
            // The node went away (or refused): the next one.
            self.node = (self.node + 1) % self.addrs.len();
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects to the current node and follows the prefix there: listing
    /// it if `last` is `None` (or the node no longer holds `last + 1`),
    /// else resuming after `last`. Returns when the connection fails.
    fn follow(&mut self, last: Option<u64>, stop: &AtomicBool, target: &AtomicU64) {
        let addr = self.addrs[self.node].to_string();
        let Ok(mut conn) = Connection::connect(
            &addr,
            Instant::now() + Duration::from_secs(1),
            self.tls.as_ref(),
        ) else {
            return;
        };
        if let Some(login) = self.login.clone() {
            let request = ClientRequest::Authenticate(AuthenticateRequest {
                user: login.user.clone(),
                password: Password(login.password.clone()),
            });
            match self.exchange(&mut conn, &request) {
                Some(reply) if reply.msg_type == "AUTHENTICATE" => {}
                _ => return,
            }
        }
        let mut create = WatchCreate {
            key: self.prefix.clone(),
            prefix: true,
            ..WatchCreate::default()
        };
        match last {
            Some(rev) => create.start_revision = Some(rev + 1),
            None => create.list = true,
        }
        let request = ClientRequest::Watch(WatchRequest::Create(create));
        let Some(reply) = self.exchange(&mut conn, &request) else {
            return;
        };
        if reply.msg_type != "WATCH" {
            let code = reply.payload["code"].as_str().unwrap_or_default();
            if code == "COMPACTED" {
                // This node cannot resume without a gap: a new segment,
                // with a list.
                self.relist = true;
            }
            return;
        }
        match last {
            Some(_) => lock(&self.record).resumes += 1,
            None => {
                let listed_at = reply.payload["revision"].as_u64().unwrap_or_default();
                lock(&self.record).segments.push(Segment {
                    listed_at,
                    ..Segment::default()
                });
                self.relist = false;
            }
        }
        // Leaves this node after a while, as a client that loses it would
        // (not once the run is over: then it only catches up).
        let leave_at = Instant::now() + Duration::from_millis(700 + 97 * (self.next_req % 11));
        loop {
            if stop.load(SeqCst) {
                return;
            }
            let goal = target.load(SeqCst);
            if goal == 0 && Instant::now() >= leave_at {
                return;
            }
            if goal > 0 {
                let r = lock(&self.record);
                if r.segments.last().is_some_and(|s| s.covered() >= goal) {
                    return;
                }
                drop(r);
                // Has everything up to the goal been sent? (Its last
                // revisions may have changed keys outside the prefix.)
                let request = ClientRequest::Watch(WatchRequest::Progress);
                self.next_req += 1;
                let mut line = Vec::new();
                encode_request(&mut line, Some(self.next_req), &request);
                if conn
                    .send(&line, Instant::now() + Duration::from_secs(1))
                    .is_err()
                {
                    return;
                }
            }
            let reply = match conn.read_reply(Instant::now() + Duration::from_millis(200), None) {
                Ok(reply) => reply,
                Err(poncho_client::ConnError::Io { error, .. })
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            };
            let progress_reply = reply.envelope.req_id.is_some();
            let Ok(news) = serde_json::from_value::<WatchReply>(reply.envelope.payload) else {
                return;
            };
            if progress_reply {
                // Everything up to its revision was sent before the reply.
                if let Some(s) = lock(&self.record).segments.last_mut() {
                    s.progress = s.progress.max(news.revision);
                }
                continue;
            }
            if news.canceled {
                return; // SLOW_WATCHER or COMPACTED: resume elsewhere
            }
            self.note(news);
        }
    }

    fn note(&mut self, news: WatchReply) {
        let mut r = lock(&self.record);
        if let Some(kvs) = news.kvs {
            // A page of the list that began the segment.
            let Some(segment) = r.segments.last_mut() else {
                return;
            };
            if segment.listed_at != news.revision || !segment.revisions.is_empty() {
                r.broken = Some(format!(
                    "a list page at revision {} in a segment listed at {} with {} revisions",
                    news.revision,
                    segment.listed_at,
                    segment.revisions.len()
                ));
                return;
            }
            for kv in kvs {
                segment.state.insert(kv.key, kv.value.unwrap_or_default());
            }
            return;
        }
        if news.events.is_empty() {
            return; // progress
        }
        let Some(segment) = r.segments.last_mut() else {
            r.broken = Some(format!("events at {} before any list", news.revision));
            return;
        };
        if news.revision <= segment.last() {
            r.broken = Some(format!(
                "revision {} came after revision {}",
                news.revision,
                segment.last()
            ));
            return;
        }
        let changes = news
            .events
            .into_iter()
            .map(|e| match e.kind {
                EventType::Put => (e.kv.key, e.kv.value),
                EventType::Delete => (e.kv.key, None),
            })
            .collect();
        segment.revisions.push((news.revision, changes));
    }

    fn exchange(
        &mut self,
        conn: &mut Connection,
        request: &ClientRequest,
    ) -> Option<poncho_protocol::ReplyEnvelope> {
        self.next_req += 1;
        let mut line = Vec::new();
        encode_request(&mut line, Some(self.next_req), request);
        let deadline = Instant::now() + Duration::from_secs(2);
        conn.send(&line, deadline).ok()?;
        let reply = conn.read_reply(deadline, None).ok()?;
        Some(reply.envelope)
    }
}

/// Checks the watchers' records against each other and against `final_state`
/// (the prefix's keys as a linearizable read found them at `final_revision`,
/// after the last write). Returns how many revisions the watchers saw in all.
pub fn check(
    records: &[Record],
    final_revision: u64,
    final_state: &BTreeMap<String, String>,
) -> Result<usize, String> {
    let mut seen: BTreeMap<u64, (usize, Vec<Change>)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(broken) = &r.broken {
            return Err(format!("watcher {i}: {broken}"));
        }
        for s in &r.segments {
            for (rev, changes) in &s.revisions {
                match seen.get(rev) {
                    Some((j, theirs)) if theirs != changes => {
                        return Err(format!(
                            "revision {rev}: watcher {i} saw {changes:?}, watcher {j} saw \
                             {theirs:?}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(*rev, (i, changes.clone()));
                    }
                }
            }
        }
    }
    for (i, r) in records.iter().enumerate() {
        let segments: Vec<&Segment> = r.segments.iter().collect();
        let Some(last_segment) = segments.last() else {
            return Err(format!("watcher {i} never listed the prefix"));
        };
        for s in &segments {
            let mine: Vec<u64> = s.revisions.iter().map(|(r, _)| *r).collect();
            let theirs: Vec<u64> = seen
                .range(s.listed_at + 1..=s.last())
                .map(|(r, _)| *r)
                .collect();
            if mine != theirs {
                let missing: Vec<u64> = theirs
                    .iter()
                    .filter(|r| !mine.contains(r))
                    .copied()
                    .collect();
                return Err(format!(
                    "watcher {i}: between revisions {} and {} it missed {missing:?}, which \
                     others saw",
                    s.listed_at,
                    s.last()
                ));
            }
        }
        let mut state = last_segment.state.clone();
        for (_, changes) in &last_segment.revisions {
            for (k, v) in changes {
                match v {
                    Some(v) => state.insert(k.clone(), v.clone()),
                    None => state.remove(k),
                };
            }
        }
        if last_segment.covered() < final_revision {
            return Err(format!(
                "watcher {i} got only to revision {} of {final_revision}",
                last_segment.covered()
            ));
        }
        if &state != final_state {
            return Err(format!(
                "watcher {i}: its list and changes give {state:?} at revision {}, but the \
                 prefix is {final_state:?}",
                last_segment.last()
            ));
        }
    }
    Ok(seen.len())
}
