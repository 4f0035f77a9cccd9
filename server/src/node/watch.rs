//! Watches (issue 14; the protocol is `poncho_protocol::watch`): which
//! connection watches which range, and how far each has been sent.
//!
//! Every watch has `next_rev`, the first revision it has not been sent.
//! A watch is *synced* when that is the revision after the store's: each
//! entry applied that changes keys is then published to it at once
//! ([`Node::publish_changes`]), straight from the store's history. Any
//! other watch (one that starts in the past, one still listing its range,
//! or one whose `created` reply is still queued behind earlier replies on
//! its connection) catches up from the history in bounded steps
//! ([`Node::sync_watches`]), a chunk at a time while its connection has
//! room, until it is synced. So a watch gets every revision once and in
//! order whether it is live or behind, and the node never buffers more
//! than a chunk past a watcher's limit for a client that is slow.
//!
//! A synced watch whose connection already holds `watch_buffer_bytes` of
//! unsent output is canceled (`SLOW_WATCHER`, naming the revision to resume
//! from) rather than buffered without bound; one catching up just waits
//! for its connection to drain. A watch that falls behind the history's
//! window is canceled with `COMPACTED`: after a snapshot is installed, the
//! history starts over at its revision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_events, encode_reply, ErrorCode, ErrorReply, Event, RangeRequest, WatchCreate,
    WatchReply, WatchRequest, MAX_RANGE_LIMIT, MAX_WATCHES_PER_CONNECTION,
};
use slab::Slab;

use super::conn::{Conn, Conns};
use super::Node;
use crate::kv::KeysAt;

/// Watches a node serves at once, by default (`--max-watches`).
pub const MAX_WATCHES: usize = 100_000;
/// A synced watch is canceled when its connection holds this much unsent
/// output (`--watch-buffer-bytes`).
pub const WATCH_BUFFER_BYTES: usize = 8 << 20;
/// A watch with `progress_notify` that has sent nothing this long gets a
/// progress notification (`--watch-progress-ms`).
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Changes one catch-up step reads from the history for one watch.
const CATCH_UP_EVENTS: usize = 1_000;
/// Keys and bytes in one page of a `list` watch.
const LIST_PAGE_KEYS: usize = 1_000;
const LIST_PAGE_BYTES: usize = 1 << 20;
/// Changes (or keys) all catch-up in one loop iteration may send, so that
/// a node with many watches behind still answers everything else promptly;
/// the rest waits for the next iteration, which comes at once.
const CATCH_UP_BUDGET: usize = 20_000;

pub(super) struct Watches {
    list: Slab<Watch>,
    pub(super) max_watches: usize,
    pub(super) buffer_bytes: usize,
    pub(super) progress_interval: Duration,
    /// Set when catch-up left work undone: the loop must not sleep.
    pub(super) busy: bool,
    /// Some watch may not be synced: catch-up has a look.
    behind: bool,
    /// When progress notifications are next looked for.
    next_progress_scan: Instant,
}

struct Watch {
    conn: usize,
    generation: u64,
    id: u64,
    range: RangeRequest,
    prev_kv: bool,
    progress_notify: bool,
    user: Option<Arc<str>>,
    /// The first revision not sent yet.
    next_rev: u64,
    /// The `created` reply's slot on its connection: nothing is sent
    /// before it.
    created_slot: u64,
    /// The keys still to list, for a `list` watch, and where the next page
    /// starts.
    listing: Option<(KeysAt, Option<String>)>,
    last_sent: Instant,
}

impl Watches {
    pub(super) fn new(max_watches: usize, buffer_bytes: usize, progress: Duration) -> Watches {
        Watches {
            list: Slab::new(),
            max_watches,
            buffer_bytes,
            progress_interval: progress,
            busy: false,
            behind: false,
            next_progress_scan: Instant::now(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Drops the watches of connection `conn` (it closed).
    pub(super) fn drop_conn(&mut self, conn: usize) {
        if !self.list.is_empty() {
            self.list.retain(|_, w| w.conn != conn);
        }
    }

    fn count_on(&self, conn: usize, generation: u64) -> usize {
        self.list
            .iter()
            .filter(|(_, w)| w.conn == conn && w.generation == generation)
            .count()
    }
}

/// Whether `w` has been sent everything up to `revision` (revisions are
/// log indexes, so they skip: a watch waits for the next one, whatever it
/// is).
fn is_synced(w: &Watch, revision: u64) -> bool {
    w.listing.is_none() && w.next_rev > revision
}

/// A `WATCH` message without a `req_id`: a watch's news.
fn encode_news(out: &mut Vec<u8>, news: &WatchReply) {
    encode_reply(out, None, news)
}

const _: () = assert!(LIST_PAGE_KEYS as u64 <= MAX_RANGE_LIMIT);

impl Node {
    /// `WATCH` on connection `key`: create, cancel, or ask for progress.
    pub(super) fn handle_watch(&mut self, key: usize, req_id: Option<u64>, request: WatchRequest) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (generation, user) = (conn.generation, conn.user.clone());
        match request {
            WatchRequest::Create(create) => {
                self.create_watch(key, req_id, generation, user, create)
            }
            WatchRequest::Cancel { watch_id } => {
                let found = self
                    .watches
                    .list
                    .iter()
                    .find(|(_, w)| w.conn == key && w.generation == generation && w.id == watch_id)
                    .map(|(i, _)| i);
                match found {
                    Some(i) => {
                        self.remove_watch(i);
                        let reply = WatchReply {
                            watch_id: Some(watch_id),
                            canceled: true,
                            revision: self.kv.revision(),
                            ..WatchReply::default()
                        };
                        self.conns
                            .reply_now(key, |out| encode_reply(out, req_id, &reply));
                    }
                    None => {
                        let error = ErrorReply::bad_request(format!(
                            "this connection has no watch {watch_id}"
                        ));
                        self.reply_error_now(key, req_id, &error);
                    }
                }
            }
            WatchRequest::Progress => {
                // Everything up to the revision before the least advanced
                // watch of this connection has been sent.
                let current = self.kv.revision();
                let revision = self
                    .watches
                    .list
                    .iter()
                    .filter(|(_, w)| w.conn == key && w.generation == generation)
                    .map(|(_, w)| {
                        if w.listing.is_some() {
                            0
                        } else {
                            w.next_rev.saturating_sub(1).min(current)
                        }
                    })
                    .min()
                    .unwrap_or(current);
                let reply = WatchReply {
                    revision,
                    ..WatchReply::default()
                };
                self.conns
                    .reply_now(key, |out| encode_reply(out, req_id, &reply));
            }
        }
    }

    fn create_watch(
        &mut self,
        key: usize,
        req_id: Option<u64>,
        generation: u64,
        user: Option<Arc<str>>,
        create: WatchCreate,
    ) {
        let current = self.kv.revision();
        let on_conn = self.watches.count_on(key, generation);
        if on_conn >= MAX_WATCHES_PER_CONNECTION || self.watches.len() >= self.watches.max_watches {
            let error = ErrorReply::new(
                ErrorCode::TooManyWatches,
                format!(
                    "not created: this connection holds {on_conn} watches (at most \
                     {MAX_WATCHES_PER_CONNECTION}) and this node {} (at most {}, \
                     --max-watches); cancel some, or watch a wider range",
                    self.watches.len(),
                    self.watches.max_watches
                ),
            );
            return self.reply_error_now(key, req_id, &error);
        }
        let next_rev = match create.start_revision {
            None | Some(0) => current + 1,
            Some(rev) => rev,
        };
        if next_rev <= current {
            if let Err(compacted) = self.kv.history_holds(next_rev) {
                let error = ErrorReply::compacted(
                    compacted + 1,
                    format!(
                        "revision {next_rev} is no longer held: this node's history starts \
                         at revision {} (watch from there, or list the range and watch from \
                         its revision)",
                        compacted + 1
                    ),
                );
                return self.reply_error_now(key, req_id, &error);
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.next_watch_id += 1;
        let id = conn.next_watch_id;
        let created_slot = conn.reserve_slot();
        let listing = create.list.then(|| (self.kv.keys_now(), None));
        let reply = WatchReply {
            watch_id: Some(id),
            created: true,
            revision: current,
            ..WatchReply::default()
        };
        conn.fill_slot(created_slot, |out| encode_reply(out, req_id, &reply));
        self.conns.mark_dirty(key);
        self.watches.list.insert(Watch {
            conn: key,
            generation,
            id,
            range: create.range(),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            user,
            next_rev,
            created_slot,
            listing,
            last_sent: Instant::now(),
        });
        if let Some(conn) = self.conns.get_mut(key) {
            conn.watches += 1;
        }
        self.watches.behind = true;
    }

    fn remove_watch(&mut self, i: usize) -> Option<Watch> {
        let w = self.watches.list.try_remove(i)?;
        if let Some(conn) = conn_of(&mut self.conns, &w) {
            conn.watches -= 1;
        }
        Some(w)
    }

    /// After an entry is applied: sends its changes (if it made any) to
    /// every synced watch of their keys.
    pub(super) fn publish_changes(&mut self, revision_before: u64) {
        let revision = self.kv.revision();
        if revision == revision_before || self.watches.is_empty() {
            return;
        }
        let Ok(changes) = self.kv.changes_from(revision, usize::MAX) else {
            // The history holds at least the newest revision; a store that
            // keeps none leaves every watch to catch up (and be canceled).
            self.watches.behind = true;
            return;
        };
        let now = Instant::now();
        let auth = self.kv.auth();
        let buffer_bytes = self.watches.buffer_bytes;
        let mut canceled = Vec::new();
        // Watches of one range see the same changes: each distinct set
        // (and prev_kv) is encoded once.
        let mut encoded: HashMap<(Vec<u32>, bool), Vec<u8>> = HashMap::new();
        for (i, w) in self.watches.list.iter_mut() {
            // Synced before this revision, and not starting after it.
            if w.listing.is_some() || w.next_rev <= revision_before || w.next_rev > revision {
                if w.listing.is_some() || w.next_rev <= revision_before {
                    self.watches.behind = true;
                }
                continue;
            }
            let Some(conn) = conn_of(&mut self.conns, w) else {
                canceled.push((i, None));
                continue;
            };
            if !conn.slot_sent(w.created_slot) {
                // Its `created` is not out yet: it catches up once it is.
                self.watches.behind = true;
                continue;
            }
            let bounds = w.range.bounds();
            let everything = auth.may_read_everything(w.user.as_deref());
            let picked: Vec<u32> = changes
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key >= bounds.start && bounds.admits(c.key))
                .filter(|(_, c)| everything || auth.may_read(w.user.as_deref(), c.key))
                .map(|(n, _)| n as u32)
                .collect();
            if picked.is_empty() {
                w.next_rev = revision + 1;
                continue;
            }
            if conn.output_bytes() >= buffer_bytes {
                canceled.push((i, Some(slow_watcher(w, buffer_bytes))));
                continue;
            }
            w.next_rev = revision + 1;
            let prev_kv = w.prev_kv;
            let json = encoded
                .entry((picked, prev_kv))
                .or_insert_with_key(|(picked, _)| {
                    let events: Vec<Event> = picked
                        .iter()
                        .map(|&n| changes[n as usize].event(prev_kv))
                        .collect();
                    // Strings and integers only: this cannot fail.
                    serde_json::to_vec(&events).unwrap_or_default()
                });
            let id = w.id;
            conn.push_output(|out| encode_events(out, id, revision, json));
            w.last_sent = now;
            self.conns.mark_dirty(w.conn);
        }
        self.cancel_watches(canceled);
    }

    /// Ends the watches listed, sending each its reason (if its connection
    /// is still there to take it).
    /// The cancellation's `revision` is the last the watch was sent
    /// everything up to: resume from the one after it.
    fn cancel_watches(&mut self, canceled: Vec<(usize, Option<ErrorReply>)>) {
        for (i, error) in canceled {
            let Some(w) = self.remove_watch(i) else {
                continue;
            };
            let Some(error) = error else { continue };
            let news = WatchReply {
                watch_id: Some(w.id),
                canceled: true,
                revision: w.next_rev.saturating_sub(1),
                error: Some(error),
                ..WatchReply::default()
            };
            if let Some(conn) = conn_of(&mut self.conns, &w) {
                conn.push_output(|out| encode_news(out, &news));
                self.conns.mark_dirty(w.conn);
            }
        }
    }

    /// Moves watches that are behind forward from the history (or through
    /// their list), a chunk at a time while their connections have room,
    /// within one iteration's budget; progress notifications for idle
    /// watches that asked for them.
    pub(super) fn sync_watches(&mut self) {
        let now = Instant::now();
        let progress_due = now >= self.watches.next_progress_scan;
        if self.watches.is_empty() || (!self.watches.behind && !progress_due) {
            self.watches.busy = false;
            return;
        }
        if progress_due {
            let every = (self.watches.progress_interval / 4).max(Duration::from_millis(10));
            self.watches.next_progress_scan = now + every;
        }
        let current = self.kv.revision();
        let mut budget = CATCH_UP_BUDGET;
        let mut busy = false;
        let mut canceled = Vec::new();
        let room = self.watches.buffer_bytes / 2;
        let interval = self.watches.progress_interval;
        let keys: Vec<usize> = self.watches.list.iter().map(|(i, _)| i).collect();
        for i in keys {
            let Some(w) = self.watches.list.get_mut(i) else {
                continue;
            };
            let Some(conn) = conn_of(&mut self.conns, w) else {
                canceled.push((i, None));
                continue;
            };
            if is_synced(w, current) {
                if w.progress_notify && now.duration_since(w.last_sent) >= interval {
                    let news = WatchReply {
                        watch_id: Some(w.id),
                        revision: current,
                        ..WatchReply::default()
                    };
                    conn.push_output(|out| encode_news(out, &news));
                    w.last_sent = now;
                    self.conns.mark_dirty(w.conn);
                }
                continue;
            }
            if !conn.slot_sent(w.created_slot) {
                continue; // waits for replies queued before its `created`
            }
            while budget > 0 && conn.output_bytes() < room && !is_synced(w, current) {
                let auth = self.kv.auth();
                let everything = auth.may_read_everything(w.user.as_deref());
                let may_read = |k: &str| everything || auth.may_read(w.user.as_deref(), k);
                if let Some((keys, from)) = &mut w.listing {
                    let (kvs, next) = keys.page(
                        &w.range,
                        from.as_deref(),
                        LIST_PAGE_KEYS.min(budget),
                        LIST_PAGE_BYTES,
                        may_read,
                    );
                    budget = budget.saturating_sub(kvs.len().max(1));
                    let listed_at = keys.revision();
                    let news = WatchReply {
                        watch_id: Some(w.id),
                        revision: listed_at,
                        kvs: Some(kvs),
                        more: next.is_some(),
                        ..WatchReply::default()
                    };
                    conn.push_output(|out| encode_news(out, &news));
                    w.last_sent = now;
                    if next.is_some() {
                        *from = next;
                    } else {
                        w.next_rev = listed_at + 1;
                        w.listing = None;
                    }
                    continue;
                }
                let changes = match self
                    .kv
                    .changes_from(w.next_rev, CATCH_UP_EVENTS.min(budget))
                {
                    Ok(changes) => changes,
                    Err(compacted) => {
                        let error = ErrorReply::compacted(
                            compacted + 1,
                            format!(
                                "watch {} fell behind this node's history, which now starts \
                                 at revision {}: the changes from revision {} on are no longer \
                                 held (list the range again and watch from its revision)",
                                w.id,
                                compacted + 1,
                                w.next_rev
                            ),
                        );
                        canceled.push((i, Some(error)));
                        break;
                    }
                };
                budget = budget.saturating_sub(changes.len().max(1));
                let bounds = w.range.bounds();
                let last = changes.last().map_or(current, |c| c.revision);
                let mut at = 0;
                while at < changes.len() {
                    let revision = changes[at].revision;
                    let events: Vec<Event> = changes[at..]
                        .iter()
                        .take_while(|c| c.revision == revision)
                        .filter(|c| c.key >= bounds.start && bounds.admits(c.key))
                        .filter(|c| may_read(c.key))
                        .map(|c| c.event(w.prev_kv))
                        .collect();
                    at += changes[at..]
                        .iter()
                        .take_while(|c| c.revision == revision)
                        .count();
                    if !events.is_empty() {
                        let news = WatchReply {
                            watch_id: Some(w.id),
                            revision,
                            events,
                            ..WatchReply::default()
                        };
                        conn.push_output(|out| encode_news(out, &news));
                        w.last_sent = now;
                    }
                }
                w.next_rev = if last >= current {
                    current + 1
                } else {
                    last + 1
                };
            }
            self.conns.mark_dirty(w.conn);
            if !is_synced(w, current) {
                busy = true;
            }
        }
        self.cancel_watches(canceled);
        // Behind with the budget spent: the loop comes back at once. Behind
        // only because a connection is full (or a reply is queued before a
        // `created`): the connection's next event brings the loop back.
        self.watches.busy = busy && budget == 0;
        self.watches.behind = busy;
    }

    /// A snapshot replaced the store: a watch that had not been sent every
    /// change up to its revision can never be (the history starts there).
    pub(super) fn watches_after_restore(&mut self) {
        let current = self.kv.revision();
        let canceled: Vec<(usize, Option<ErrorReply>)> = self
            .watches
            .list
            .iter()
            .filter(|(_, w)| w.listing.is_none() && w.next_rev <= current)
            .map(|(i, w)| {
                let error = ErrorReply::compacted(
                    current + 1,
                    format!(
                        "watch {}: this node installed a snapshot at revision {current}, so \
                         it no longer holds the changes from revision {} on; list the range \
                         again and watch from its revision, or resume on another node",
                        w.id, w.next_rev
                    ),
                );
                (i, Some(error))
            })
            .collect();
        self.cancel_watches(canceled);
        self.watches.behind = true;
    }
}

/// The connection `w` belongs to, if it is still open (and not a later one
/// in its slot).
fn conn_of<'a>(conns: &'a mut Conns, w: &Watch) -> Option<&'a mut Conn> {
    conns
        .get_mut(w.conn)
        .filter(|c| c.generation == w.generation)
}

fn slow_watcher(w: &Watch, buffer_bytes: usize) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::SlowWatcher,
        format!(
            "watch {} canceled: its connection holds {buffer_bytes} bytes or more that the \
             client has not read (--watch-buffer-bytes); resume with a new watch from \
             revision {}",
            w.id, w.next_rev
        ),
    )
}
