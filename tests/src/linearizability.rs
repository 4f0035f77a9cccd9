//! A linearizability checker for the histories that the fault-injection tests
//! record against poncho.
//!
//! Each key is a register (initially absent) that supports read, write and
//! compare-and-swap. A history is linearizable if every operation can be
//! given an instant inside its `[start_us, end_us]` interval at which it takes
//! effect atomically, such that the operations, replayed one at a time in
//! that order on a plain register, produce exactly the recorded outcomes.
//! Operations whose fate the client never learned (`Outcome::Unknown`) may
//! take effect at any instant after they started, or never; `Outcome::Failed`
//! operations never took effect.
//!
//! Registers are independent, so a history is linearizable iff each key's
//! sub-history is (linearizability is compositional); [`check`] splits the
//! history by key and checks the keys in parallel.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoisation, as in Porcupine: the call
//! and return events are put in one time-ordered list; a depth-first search
//! repeatedly picks a pending call whose operation is legal in the current
//! register state, "lifts" it (removes its call and return from the list) and
//! starts again from the head; reaching a return whose operation was not lifted
//! means the last choice was wrong, so it backtracks. A cache of (set of
//! linearized operations, register state) configurations already explored
//! keeps the search from redoing work, which makes it fast on the histories a
//! handful of clients produce (the frontier of concurrent operations is small).
//!
//! Unknown operations are what blow such a search up: they stay pending
//! forever, so each one doubles the configurations for the rest of the
//! history, and a failing search must visit them all. These exact (not
//! heuristic) reductions keep them cheap; the brute-force test checks them
//! against a plain enumeration of orders:
//! - an unknown operation is only linearized immediately before an
//!   operation that needs it (see `needs_unknown`), and only if a pending
//!   known operation that is illegal now could end up needing it
//!   (`Unknowns::offer`);
//! - a configuration is skipped if one with the same known operations and
//!   value but a subset of its unknown operations was explored (`Explored`),
//!   and known operations are tried before unknown ones so that the smaller
//!   sets come first;
//! - unknown operations with the same effect are used in start order only
//!   (`Pending::same_before`); values no operation can tell apart are merged
//!   (`UNOBSERVED`); unknown operations storing such a value are dropped if
//!   no failed CAS could need them.
//!
//! # Performance
//!
//! Measured in the test profile (opt-level 2) on the development machine,
//! for one key with 2,000 operations from 5 clients, writes of unique values,
//! 10% of outcomes unknown and 5% failed: accepted in ~3.3 ms (~12k search
//! steps); with its last read corrupted, rejected in ~8 ms (~70k steps,
//! exhaustive). See `two_thousand_ops_from_five_clients_check_quickly`. With
//! 30% unknown outcomes and 8 clients, rejecting takes ~7M steps (0.4 s).
//!
//! Write unique values (e.g. client id and sequence number). Checking is
//! NP-complete in general, and histories whose writes reuse a few values,
//! with many unknown outcomes, can be beyond any budget to reject: a
//! 2,000-operation one with 5 values was still undecided after 300M steps.
//! Those end in an inconclusive `Violation` rather than running forever.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

/// The search-step budget per key used by [`check`]. A step is one
/// operation offered to the search, or one backtrack: 10 million take about
/// half a second and well under 100 MB (the cache holds at most one entry
/// per step, in practice a tenth of that).
pub const DEFAULT_MAX_STEPS: u64 = 10_000_000;

/// How an exhausted budget's message starts (see [`Violation::is_inconclusive`]).
const GAVE_UP: &str = "gave up after";

/// One operation on a single-key register (initial value: absent = None).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Read,
    Write(String),
    /// Sets `new` if the register holds `expected`; `new: None` deletes.
    Cas {
        expected: Option<String>,
        new: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The value read.
    Read(Option<String>),
    /// A Write acknowledged.
    Written,
    /// A Cas acknowledged; swapped or not.
    Cas(bool),
    /// Definitely not applied (e.g. NOT_LEADER): dropped from the history.
    Failed,
    /// May or may not have taken effect, at any time after start (timeout,
    /// connection lost).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub op: Op,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
}

/// Why a key's history was not accepted.
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    pub message: String,
    /// That key's history, as given (operation `#i` in `message` is
    /// `operations[i]`).
    pub operations: Vec<Operation>,
}

impl Violation {
    /// True if the search ran out of its step budget: the history is neither
    /// proven linearizable nor proven not to be.
    pub fn is_inconclusive(&self) -> bool {
        self.message.starts_with(GAVE_UP)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} ({} operations): {}",
            self.key,
            self.operations.len(),
            self.message
        )
    }
}

impl std::error::Error for Violation {}

/// Checks every key's sub-history independently (registers are independent,
/// so linearizability is per key). Ok if each is linearizable; otherwise the
/// violation of the smallest key that has one. Each key gets
/// [`DEFAULT_MAX_STEPS`].
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let keys: Vec<(&str, Vec<Operation>)> = by_key.into_iter().collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(keys.len());
    if workers <= 1 {
        return keys
            .iter()
            .try_for_each(|(key, ops)| check_key(key, ops, DEFAULT_MAX_STEPS));
    }
    // Keys differ a lot in size, so workers take the next key when free
    // rather than a fixed share.
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Result<(), Violation>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, ops)) = keys.get(i) else { break };
                        mine.push((i, check_key(key, ops, DEFAULT_MAX_STEPS)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    // Report deterministically: the first failing key in key order.
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().try_for_each(|(_, r)| r)
}

/// Checks one key's history (operations on other keys in `ops` are ignored),
/// visiting at most `max_steps` search steps. If the budget runs out the
/// result is an `Err` whose message starts "gave up after N steps" and whose
/// [`Violation::is_inconclusive`] is true.
pub fn check_key(key: &str, ops: &[Operation], max_steps: u64) -> Result<(), Violation> {
    let history: Vec<Operation> = ops.iter().filter(|o| o.key == key).cloned().collect();
    let result = Model::new(&history).and_then(|model| model.search(max_steps));
    result.map_err(|message| Violation {
        key: key.to_string(),
        message,
        operations: history,
    })
}

/// A register value, interned: an index into `Model::values`.
type Value = u32;
/// The initial, absent value.
const ABSENT: Value = 0;
/// Every value stored by an unknown operation that no read returns and no
/// CAS expects. Such values are indistinguishable by every operation's
/// precondition, so merging them is exact; it makes the unknown operations
/// that store them interchangeable (see `Pending::same_before`) and lets the
/// cache treat "holds v17" and "holds v42" as one configuration.
const UNOBSERVED: Value = 1;

/// What an operation does to the register, given its recorded outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Effect {
    /// Legal only if the register holds the value.
    Read(Value),
    Write(Value),
    /// A CAS that swapped (or an unknown one that took effect: an unknown
    /// CAS that did not swap changed nothing, the same as never happening).
    Swap {
        expected: Value,
        new: Value,
    },
    /// A CAS acknowledged as not swapped: legal only if the register does
    /// not hold `expected`.
    NoSwap {
        expected: Value,
    },
}

impl Effect {
    /// The register after this operation, or None if it is not legal now.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Effect::Read(v) => (state == v).then_some(state),
            Effect::Write(v) => Some(v),
            Effect::Swap { expected, new } => (state == expected).then_some(new),
            Effect::NoSwap { expected } => (state != expected).then_some(state),
        }
    }

    /// The value it stores, if it stores one.
    fn stores(self) -> Option<Value> {
        match self {
            Effect::Write(v) | Effect::Swap { new: v, .. } => Some(v),
            Effect::Read(_) | Effect::NoSwap { .. } => None,
        }
    }
}

/// An operation that takes part in the search.
struct Pending {
    /// Its index in the key's history.
    index: usize,
    effect: Effect,
    start: u64,
    /// None for an unknown outcome: no deadline, and optional.
    end: Option<u64>,
    /// For unknown operations: the previous unknown operation (by start)
    /// with the same effect. Those are interchangeable (any linearization
    /// that uses a later one and not an earlier one can use the earlier one
    /// in its place, since it started no later and has no deadline), so the
    /// search uses them in start order, which turns 2^k subsets into k+1.
    same_before: Option<usize>,
}

struct Model<'a> {
    history: &'a [Operation],
    /// Value ids to what they stand for; `values[UNOBSERVED]` is unused.
    values: Vec<Option<&'a str>>,
    ops: Vec<Pending>,
}

impl<'a> Model<'a> {
    fn new(history: &'a [Operation]) -> Result<Model<'a>, String> {
        // Values some operation can tell apart from others.
        let mut observed: HashSet<Option<&str>> = HashSet::new();
        for op in history {
            match (&op.op, &op.outcome) {
                (Op::Read, Outcome::Read(v)) => {
                    observed.insert(v.as_deref());
                }
                (Op::Cas { expected, .. }, _) => {
                    observed.insert(expected.as_deref());
                }
                _ => {}
            }
        }
        let mut values: Vec<Option<&str>> = vec![None, None];
        let mut ids: HashMap<Option<&str>, Value> = HashMap::from([(None, ABSENT)]);
        // Only unknown operations' values are merged (see UNOBSERVED), so
        // that messages can name the acknowledged values.
        let mut intern = |v: Option<&'a str>, merge: bool| -> Value {
            if merge && v.is_some() && !observed.contains(&v) {
                return UNOBSERVED;
            }
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                (values.len() - 1) as Value
            })
        };

        let mut ops = Vec::new();
        for (index, op) in history.iter().enumerate() {
            let merge = op.outcome == Outcome::Unknown;
            let effect = match (&op.op, &op.outcome) {
                // Failed never happened; an unknown read says nothing.
                (_, Outcome::Failed) | (Op::Read, Outcome::Unknown) => continue,
                (Op::Read, Outcome::Read(v)) => Effect::Read(intern(v.as_deref(), false)),
                (Op::Write(v), Outcome::Written | Outcome::Unknown) => {
                    Effect::Write(intern(Some(v.as_str()), merge))
                }
                (Op::Cas { expected, new }, Outcome::Cas(true) | Outcome::Unknown) => {
                    Effect::Swap {
                        expected: intern(expected.as_deref(), false),
                        new: intern(new.as_deref(), merge),
                    }
                }
                (Op::Cas { expected, .. }, Outcome::Cas(false)) => Effect::NoSwap {
                    expected: intern(expected.as_deref(), false),
                },
                _ => {
                    return Err(format!(
                        "malformed history: operation {} has an outcome that does not fit it",
                        describe(index, op)
                    ))
                }
            };
            let end = match op.outcome {
                Outcome::Unknown => None,
                _ if op.end_us < op.start_us => {
                    return Err(format!(
                        "malformed history: operation {} ends before it starts",
                        describe(index, op)
                    ))
                }
                _ => Some(op.end_us),
            };
            ops.push(Pending {
                index,
                effect,
                start: op.start_us,
                end,
                same_before: None,
            });
        }

        // An unknown operation that stores an unobserved value is useless to
        // a linearization unless a later not-swapped CAS needs the register
        // to differ from its `expected`: after it, no read or CAS can be
        // legal until something overwrites the value, so removing it changes
        // nothing. A not-swapped CAS can only come after it if it ends at or
        // after the unknown operation's start.
        let last_no_swap_end = ops
            .iter()
            .filter(|p| matches!(p.effect, Effect::NoSwap { .. }))
            .filter_map(|p| p.end)
            .max();
        ops.retain(|p| {
            let useless = p.end.is_none()
                && p.effect.stores() == Some(UNOBSERVED)
                && last_no_swap_end.is_none_or(|e| e < p.start);
            !useless
        });

        // Chain interchangeable unknown operations in start order.
        let mut unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].end.is_none()).collect();
        unknown.sort_by_key(|&i| (ops[i].start, i));
        let mut last_with: HashMap<Effect, usize> = HashMap::new();
        for i in unknown {
            ops[i].same_before = last_with.insert(ops[i].effect, i);
        }

        Ok(Model {
            history,
            values,
            ops,
        })
    }

    fn search(&self, max_steps: u64) -> Result<(), String> {
        let n = self.ops.len();
        // Time order; at equal times calls come before returns, so intervals
        // that touch count as concurrent. Node 0 is the list head; event k
        // is node k + 1, so node numbers increase with time.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, p) in self.ops.iter().enumerate() {
            order.push((p.start, false, i));
            if let Some(end) = p.end {
                order.push((end, true, i));
            }
        }
        order.sort_unstable();
        let mut events = vec![(usize::MAX, false)];
        let mut call_node = vec![0; n];
        let mut return_node = vec![0; n];
        for &(_, is_return, i) in &order {
            if is_return {
                return_node[i] = events.len();
            } else {
                call_node[i] = events.len();
            }
            events.push((i, !is_return));
        }
        // Only known operations' events are in the list: unknown operations
        // have no return and would otherwise sit at its head for the rest of
        // the search, to be stepped over by every scan. They are indexed
        // instead, each index in call order.
        let known_nodes = (1..events.len()).filter(|&k| self.ops[events[k].0].end.is_some());
        let mut list = List::new(events.len(), known_nodes);
        let mut unknown = Unknowns {
            effect: self.ops.iter().map(|p| p.effect).collect(),
            call_node: call_node.clone(),
            all: Vec::new(),
            storing: vec![Vec::new(); self.values.len()],
            expecting: vec![Vec::new(); self.values.len()],
        };
        let mut unknown_bit = vec![usize::MAX; n];
        for &(_, _, i) in &order {
            let effect = self.ops[i].effect;
            if self.ops[i].end.is_some() {
                continue;
            }
            unknown_bit[i] = unknown.all.len();
            unknown.all.push(i);
            if let Some(v) = effect.stores() {
                unknown.storing[v as usize].push(i);
            }
            if let Effect::Swap { expected, .. } = effect {
                unknown.expecting[expected as usize].push(i);
            }
        }

        // The known operations linearized are identified by a Zobrist
        // fingerprint: a random 128-bit word per operation, XORed in and out
        // in O(1). Two distinct sets collide with probability 2^-128, so
        // even 10^7 cached configurations have a ~10^-25 chance of a false
        // "seen", against ~250 bytes and an O(n) hash per entry for an exact
        // bitset. The unknown operations linearized are an exact bitset,
        // because the cache compares those sets by inclusion.
        let mut seed = 0x5eed_f1ea_u64;
        let zobrist: Vec<u128> = (0..n)
            .map(|_| (splitmix64(&mut seed) as u128) << 64 | splitmix64(&mut seed) as u128)
            .collect();
        let mut used = vec![0u64; unknown.all.len().div_ceil(64)];
        let mut explored = Explored::default();

        let mut linearized = vec![false; n];
        let mut fingerprint = 0u128;
        let mut state = ABSENT;
        // After an unknown operation, the value before it; else FREE.
        let mut after_unknown = FREE;
        // The lists of unknown operations that the configurations on the
        // stack offer (see `Unknowns::offer`), innermost last.
        let mut offers: Vec<Value> = Vec::new();
        // The operations linearized so far, each with what to restore when
        // it is undone.
        let mut stack: Vec<Frame> = Vec::new();
        // The latest return the search failed at, and the states it had
        // there: no linearization gets past that operation.
        let mut furthest = HEAD;
        let mut states_there = BTreeSet::new();
        let mut steps = 0u64;

        // A configuration's pending calls are offered known operations
        // first, then unknown ones. Exploring the configurations that use
        // fewer unknown operations first is what lets the dominance check
        // in `Explored` prune the others.
        let mut scan = Scan::Known(list.next[HEAD]);
        loop {
            steps += 1;
            if steps > max_steps {
                return Err(format!(
                    "{GAVE_UP} {max_steps} steps: the search could not decide whether these {n} \
                     operations are linearizable (too many concurrent or unknown-outcome \
                     operations, or writes that reuse values?){}",
                    match furthest {
                        HEAD => String::new(),
                        node => format!(
                            "; no order it tried had got past {}",
                            self.culprit(&events, node)
                        ),
                    }
                ));
            }
            // The operation to try next, and where the scan goes after it.
            let (i, next_scan) = match scan {
                Scan::Known(NIL) => return Ok(()), // every known operation is linearized
                Scan::Known(node) => {
                    let (i, is_call) = events[node];
                    if is_call {
                        (i, Scan::Known(list.next[node]))
                    } else {
                        // The first pending deadline: only calls before it
                        // can be linearized now. On to the unknown ones.
                        let start = offers.len();
                        if after_unknown == FREE {
                            let pending = std::iter::successors(Some(list.next[HEAD]), |&k| {
                                Some(list.next[k])
                            })
                            .take_while(|&k| k != node)
                            .map(|k| self.ops[events[k].0].effect);
                            unknown.offer(pending, node, state, &linearized, &mut offers);
                        } else {
                            offers.push(CHAIN);
                        }
                        scan = Scan::Unknown {
                            deadline: node,
                            offer: start,
                            end: offers.len(),
                            index: 0,
                        };
                        continue;
                    }
                }
                Scan::Unknown {
                    deadline,
                    offer,
                    end,
                    index,
                } if offer < end => {
                    let candidates = match offers[offer] {
                        ANY => &unknown.all,
                        CHAIN => &unknown.expecting[state as usize],
                        v => &unknown.storing[v as usize],
                    };
                    match candidates.get(index) {
                        Some(&i) if call_node[i] < deadline => {
                            let next = Scan::Unknown {
                                deadline,
                                offer,
                                end,
                                index: index + 1,
                            };
                            (i, next)
                        }
                        _ => {
                            scan = Scan::Unknown {
                                deadline,
                                offer: offer + 1,
                                end,
                                index: 0,
                            };
                            continue;
                        }
                    }
                }
                Scan::Unknown { deadline, .. } => {
                    // Nothing pending can be linearized (again) before this
                    // deadline: undo the last choice.
                    if deadline >= furthest {
                        if deadline > furthest {
                            furthest = deadline;
                            states_there.clear();
                        }
                        states_there.insert(state);
                    }
                    let Some(frame) = stack.pop() else {
                        return Err(self.explain(&events, furthest, &states_there));
                    };
                    let j = frame.op;
                    state = frame.state;
                    after_unknown = frame.after_unknown;
                    offers.truncate(frame.offers);
                    if self.ops[j].end.is_some() {
                        fingerprint ^= zobrist[j];
                        list.unlift(call_node[j], return_node[j]);
                    } else {
                        set_bit(&mut used, unknown_bit[j], false);
                        linearized[j] = false;
                    }
                    scan = frame.resume;
                    continue;
                }
            };
            scan = next_scan;

            // Try linearizing operation i now.
            let p = &self.ops[i];
            let is_unknown = p.end.is_none();
            if is_unknown && (linearized[i] || !p.same_before.is_none_or(|j| linearized[j])) {
                continue;
            }
            if after_unknown != FREE && !needs_unknown(p.effect, after_unknown) {
                continue;
            }
            let Some(next_state) = p.effect.apply(state) else {
                continue;
            };
            if is_unknown && next_state == state {
                continue; // a no-op: never needed
            }
            let (next_fingerprint, constraint) = if is_unknown {
                set_bit(&mut used, unknown_bit[i], true);
                (fingerprint, state)
            } else {
                (fingerprint ^ zobrist[i], FREE)
            };
            if !explored.first_visit(next_fingerprint, next_state, constraint, &used) {
                if is_unknown {
                    set_bit(&mut used, unknown_bit[i], false);
                }
                continue;
            }
            stack.push(Frame {
                op: i,
                state,
                after_unknown,
                offers: offers.len(),
                resume: scan,
            });
            state = next_state;
            after_unknown = constraint;
            fingerprint = next_fingerprint;
            if is_unknown {
                linearized[i] = true;
            } else {
                list.lift(call_node[i], return_node[i]);
            }
            scan = Scan::Known(list.next[HEAD]);
        }
    }

    /// The operation whose event is at `node`.
    fn culprit(&self, events: &[(usize, bool)], node: usize) -> String {
        let index = self.ops[events[node].0].index;
        describe(index, &self.history[index])
    }

    /// The failure message: the operation no linearization could get past,
    /// what the register could hold there, and the operations around it.
    fn explain(&self, events: &[(usize, bool)], node: usize, states: &BTreeSet<Value>) -> String {
        let (i, _) = events[node];
        let blocked = &self.history[self.ops[i].index];
        let held: Vec<String> = states.iter().map(|&v| self.show(v)).collect();
        let mut message = format!(
            "not linearizable: no order of the operations gets past {}: it must take effect by \
             {}us, but wherever the search ran out of options before then, the register held \
             {}",
            self.culprit(events, node),
            blocked.end_us,
            held.join(" or "),
        );

        // Context: what overlaps it, and the last few operations that had
        // finished before it started (e.g. the write a stale read missed).
        // Unknown operations are shown by the interval the client waited,
        // with a count of the earlier ones, which may have landed any time.
        let (start, end) = (blocked.start_us, blocked.end_us);
        let overlapping = |o: &Operation| o.start_us <= end && o.end_us >= start;
        let mut before: Vec<usize> = (0..self.history.len())
            .filter(|&k| {
                let o = &self.history[k];
                o.outcome != Outcome::Unknown && o.end_us < start
            })
            .collect();
        before.sort_by_key(|&k| self.history[k].end_us);
        let mut nearby: Vec<usize> = before.split_off(before.len().saturating_sub(3));
        nearby.extend((0..self.history.len()).filter(|&k| overlapping(&self.history[k])));
        nearby.sort_by_key(|&k| (self.history[k].start_us, k));
        nearby.dedup();
        const SHOWN: usize = 20;
        message.push_str(
            "\n  nearby operations (the last 3 to finish before it, and all overlapping it):",
        );
        for &k in nearby.iter().take(SHOWN) {
            message.push_str(&format!("\n    {}", describe(k, &self.history[k])));
        }
        if nearby.len() > SHOWN {
            message.push_str(&format!("\n    ... and {} more", nearby.len() - SHOWN));
        }
        let earlier_unknown = (0..self.history.len())
            .filter(|k| !nearby.contains(k))
            .filter(|&k| {
                let o = &self.history[k];
                o.outcome == Outcome::Unknown && o.start_us <= end
            })
            .count();
        if earlier_unknown > 0 {
            message.push_str(&format!(
                "\n  and {earlier_unknown} earlier operations with unknown outcomes, \
                 which may have taken effect at any time after they started"
            ));
        }
        message
    }

    fn show(&self, v: Value) -> String {
        match (v, self.values[v as usize]) {
            (ABSENT, _) => "nothing (absent)".to_string(),
            (UNOBSERVED, _) => "a value of an unknown-outcome write that no read saw".to_string(),
            (_, Some(s)) => format!("{s:?}"),
            (_, None) => unreachable!("only ABSENT stands for None"),
        }
    }
}

/// `#3 client 2: write "a" [100us, 250us] -> ok`: the operation at index 3
/// of the key's history.
fn describe(index: usize, o: &Operation) -> String {
    fn value(v: &Option<String>) -> String {
        v.as_ref()
            .map_or("absent".to_string(), |s| format!("{s:?}"))
    }
    let op = match &o.op {
        Op::Read => "read".to_string(),
        Op::Write(v) => format!("write {v:?}"),
        Op::Cas { expected, new } => format!("cas {} -> {}", value(expected), value(new)),
    };
    let (end, outcome) = match &o.outcome {
        Outcome::Read(v) => (format!("{}us", o.end_us), format!("read {}", value(v))),
        Outcome::Written => (format!("{}us", o.end_us), "ok".to_string()),
        Outcome::Cas(true) => (format!("{}us", o.end_us), "swapped".to_string()),
        Outcome::Cas(false) => (format!("{}us", o.end_us), "not swapped".to_string()),
        Outcome::Failed => (
            format!("{}us", o.end_us),
            "failed (not applied)".to_string(),
        ),
        // An unknown outcome's end is only when the client stopped waiting.
        Outcome::Unknown if o.end_us >= o.start_us => (
            format!("gave up at {}us", o.end_us),
            "unknown (may apply any time after its start)".to_string(),
        ),
        Outcome::Unknown => (
            "?".to_string(),
            "unknown (may apply any time after its start)".to_string(),
        ),
    };
    format!(
        "#{index} client {}: {op} [{}us, {end}] -> {outcome}",
        o.client, o.start_us
    )
}

/// No constraint: the last operation linearized was a known one.
const FREE: Value = Value::MAX;

/// Whether `effect`, linearized right after an unknown operation that
/// changed the register from `before`, needs that change.
///
/// The search only linearizes an unknown operation immediately before an
/// operation that needs it. That loses no linearization: in one with the
/// fewest unknown operations, an unknown operation followed by a write
/// could be dropped, and one followed by a failed CAS that does not need the
/// change can swap places with it (the CAS passes before it too, and the
/// unknown operation has no deadline, so it can always move later); after
/// such moves each is followed by a read that sees its value, a CAS that
/// expects its value, or a failed CAS that needed the value to change.
/// (Unknown operations that change nothing are never linearized at all.)
/// This is what keeps an unknown write from multiplying the search by the
/// number of places it could go.
fn needs_unknown(effect: Effect, before: Value) -> bool {
    match effect {
        // Legal after it only if they see its value, which `before` is not.
        Effect::Read(_) | Effect::Swap { .. } => true,
        Effect::NoSwap { expected } => expected == before,
        Effect::Write(_) => false,
    }
}

fn set_bit(bits: &mut [u64], bit: usize, on: bool) {
    if on {
        bits[bit / 64] |= 1 << (bit % 64);
    } else {
        bits[bit / 64] &= !(1 << (bit % 64));
    }
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

/// The configurations the search has entered: (known operations
/// linearized, register value) -> the minimal sets of unknown operations
/// linearized along with them.
///
/// A configuration is skipped if it is dominated by one already entered:
/// same known operations, same value, and a subset of its unknown
/// operations. The dominating one has the same obligations and strictly
/// more optional operations left, so it can finish any way the dominated
/// one could (using the earliest-started of interchangeable unknown
/// operations instead, if need be). Every configuration entered is either
/// still being explored or has failed, so the dominated one would fail too.
/// With no unknown operations this is Lowe's plain memoisation; with them
/// it keeps each unknown operation from doubling the search space for the
/// rest of the history.
#[derive(Default)]
struct Explored {
    #[allow(clippy::type_complexity)]
    seen: HashMap<(u128, Value, Value), Vec<Box<[u64]>>, BuildHasherDefault<FingerprintHasher>>,
}

impl Explored {
    /// Records the configuration; false if it was dominated (skip it).
    /// `after_unknown` is its constraint on the next operation (see
    /// `needs_unknown`); an unconstrained configuration dominates a
    /// constrained one too.
    fn first_visit(
        &mut self,
        known: u128,
        state: Value,
        after_unknown: Value,
        unknown: &[u64],
    ) -> bool {
        if after_unknown != FREE {
            if let Some(sets) = self.seen.get(&(known, state, FREE)) {
                if sets.iter().any(|seen| is_subset(seen, unknown)) {
                    return false;
                }
            }
        }
        let sets = self.seen.entry((known, state, after_unknown)).or_default();
        if sets.iter().any(|seen| is_subset(seen, unknown)) {
            return false;
        }
        // Sets it dominates can no longer prune anything it would not.
        sets.retain(|seen| !is_subset(unknown, seen));
        sets.push(unknown.into());
        true
    }
}

/// Where the search is in offering a configuration's pending calls.
#[derive(Clone, Copy)]
enum Scan {
    /// At this node of the list of known operations' events.
    Known(usize),
    /// At `index` of the list of unknown operations named by
    /// `offers[offer]`, offering those called before node `deadline`;
    /// `offers[offer..end]` are this configuration's lists.
    Unknown {
        deadline: usize,
        offer: usize,
        end: usize,
        index: usize,
    },
}

/// A linearized operation, and what to restore when it is undone.
struct Frame {
    op: usize,
    state: Value,
    after_unknown: Value,
    offers: usize,
    resume: Scan,
}

/// In `offers`: every unknown operation.
const ANY: Value = Value::MAX - 1;
/// In `offers`: the unknown CASes expecting the current value.
const CHAIN: Value = Value::MAX - 2;

/// The unknown operations, each list in call order.
struct Unknowns {
    /// Every operation's effect and call node, for looking them up.
    effect: Vec<Effect>,
    call_node: Vec<usize>,
    all: Vec<usize>,
    /// By the value they store.
    storing: Vec<Vec<usize>>,
    /// Unknown CASes, by the value they expect.
    expecting: Vec<Vec<usize>>,
}

impl Unknowns {
    /// Pushes onto `offers` which unknown operations an unconstrained
    /// configuration should offer: a value v (those storing v) or ANY.
    ///
    /// By the argument at `needs_unknown`, a run of unknown operations is
    /// only worth starting if it ends right before a pending known operation
    /// that is illegal now: a read of another value v or a CAS expecting
    /// another value v (the run must end with v), or a failed CAS that
    /// expects the current value (any change will do), or that expects
    /// another value v (the run must pass through v). Those pending known
    /// operations are the few calls before the first deadline. The run gets
    /// to v either directly or via unknown CASes w -> v, so v's set is
    /// closed under those; the first operation of the run stores one of
    /// the values.
    fn offer(
        &self,
        pending: impl Iterator<Item = Effect>,
        deadline: usize,
        state: Value,
        linearized: &[bool],
        offers: &mut Vec<Value>,
    ) {
        let start = offers.len();
        let add = |offers: &mut Vec<Value>, v: Value| {
            if v != state && !offers[start..].contains(&v) {
                offers.push(v);
            }
        };
        for effect in pending {
            match effect {
                Effect::Read(v) | Effect::Swap { expected: v, .. } => add(offers, v),
                Effect::NoSwap { expected } if expected == state => {
                    offers.truncate(start);
                    offers.push(ANY);
                    return;
                }
                Effect::NoSwap { expected } => add(offers, expected),
                Effect::Write(_) => {}
            }
        }
        let mut k = start;
        while k < offers.len() {
            for &u in &self.storing[offers[k] as usize] {
                if self.call_node[u] >= deadline {
                    break;
                }
                if let (false, Effect::Swap { expected, .. }) = (linearized[u], self.effect[u]) {
                    add(offers, expected);
                }
            }
            k += 1;
        }
    }
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// A doubly linked list of event nodes whose removals can be undone in
/// reverse order in O(1) ("dancing links"): a removed node keeps its own
/// links, which say exactly where it goes back.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    /// A list of nodes `1..len` (node 0 is its head) holding `members`, in
    /// that (increasing) order.
    fn new(len: usize, members: impl Iterator<Item = usize>) -> List {
        let mut list = List {
            next: vec![NIL; len],
            prev: vec![NIL; len],
        };
        let mut last = HEAD;
        for k in members {
            list.next[last] = k;
            list.prev[k] = last;
            last = k;
        }
        list
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    fn lift(&mut self, call: usize, ret: usize) {
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, call: usize, ret: usize) {
        self.relink(ret);
        self.relink(call);
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cache keys are already uniformly random fingerprints, so hashing
/// them only needs to fold them to 64 bits (SipHash would cost more than
/// the rest of a search step).
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    }

    fn write_u32(&mut self, v: u32) {
        // Mixes the state into all bits, high ones included (hashbrown uses
        // the top 7 bits as a tag).
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn at(client: u64, op: Op, start_us: u64, end_us: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".to_string(),
            op,
            start_us,
            end_us,
            outcome,
        }
    }

    fn write(client: u64, v: &str, start: u64, end: u64) -> Operation {
        at(client, Op::Write(v.into()), start, end, Outcome::Written)
    }

    fn read(client: u64, v: Option<&str>, start: u64, end: u64) -> Operation {
        at(
            client,
            Op::Read,
            start,
            end,
            Outcome::Read(v.map(String::from)),
        )
    }

    fn cas(
        client: u64,
        expected: Option<&str>,
        new: Option<&str>,
        start: u64,
        end: u64,
        swapped: bool,
    ) -> Operation {
        let op = Op::Cas {
            expected: expected.map(String::from),
            new: new.map(String::from),
        };
        at(client, op, start, end, Outcome::Cas(swapped))
    }

    fn unknown(mut op: Operation) -> Operation {
        op.outcome = Outcome::Unknown;
        op
    }

    fn failed(mut op: Operation) -> Operation {
        op.outcome = Outcome::Failed;
        op
    }

    #[track_caller]
    fn accepted(history: &[Operation]) {
        if let Err(v) = check(history) {
            panic!("expected linearizable, got: {v}");
        }
    }

    #[track_caller]
    fn rejected(history: &[Operation]) -> Violation {
        match check(history) {
            Ok(()) => panic!("expected a violation: {history:#?}"),
            Err(v) => {
                assert!(!v.is_inconclusive(), "{v}");
                v
            }
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        accepted(&[]);
        accepted(&[read(1, None, 0, 10)]);
    }

    #[test]
    fn stale_read_after_sequential_write_is_rejected() {
        rejected(&[write(1, "a", 0, 10), read(2, None, 20, 30)]);
        rejected(&[
            write(1, "a", 0, 10),
            write(1, "b", 20, 30),
            read(2, Some("a"), 40, 50),
        ]);
        accepted(&[
            write(1, "a", 0, 10),
            write(1, "b", 20, 30),
            read(2, Some("b"), 40, 50),
        ]);
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in [Some("a"), Some("b")] {
            accepted(&[
                write(1, "a", 0, 10),
                write(1, "b", 20, 40),
                read(2, seen, 25, 30),
            ]);
        }
        for seen in [None, Some("a")] {
            accepted(&[write(1, "a", 0, 10), read(2, seen, 5, 15)]);
        }
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // The read starts at the instant the write ends: either order.
        accepted(&[write(1, "a", 0, 10), read(2, None, 10, 20)]);
        rejected(&[write(1, "a", 0, 10), read(2, None, 11, 20)]);
    }

    #[test]
    fn read_of_value_never_written_is_rejected() {
        rejected(&[read(1, Some("ghost"), 0, 10)]);
        rejected(&[write(1, "a", 0, 10), read(2, Some("ghost"), 5, 15)]);
    }

    #[test]
    fn new_old_inversion_is_rejected() {
        // The write of b overlaps both reads, but once a read has seen b a
        // later read cannot see a again.
        rejected(&[
            write(1, "a", 0, 10),
            write(1, "b", 20, 100),
            read(2, Some("b"), 30, 40),
            read(3, Some("a"), 50, 60),
        ]);
        accepted(&[
            write(1, "a", 0, 10),
            write(1, "b", 20, 100),
            read(2, Some("a"), 30, 40),
            read(3, Some("b"), 50, 60),
        ]);
    }

    #[test]
    fn successful_cas_twice_from_the_same_value_is_rejected() {
        rejected(&[
            cas(1, None, Some("a"), 0, 10, true),
            cas(2, None, Some("a"), 20, 30, true),
        ]);
        // Even concurrently, only one of two CASes from absent can win.
        rejected(&[
            cas(1, None, Some("a"), 0, 30, true),
            cas(2, None, Some("b"), 0, 30, true),
        ]);
        accepted(&[
            cas(1, None, Some("a"), 0, 30, true),
            cas(2, None, Some("b"), 0, 30, false),
            read(3, Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn cas_then_read_of_new_value_is_accepted() {
        accepted(&[
            write(1, "a", 0, 10),
            cas(1, Some("a"), Some("b"), 20, 30, true),
            read(2, Some("b"), 40, 50),
        ]);
        rejected(&[
            write(1, "a", 0, 10),
            cas(1, Some("a"), Some("b"), 20, 30, true),
            read(2, Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn failed_cas_needs_a_different_value() {
        rejected(&[
            write(1, "a", 0, 10),
            cas(2, Some("a"), Some("b"), 20, 30, false),
        ]);
        rejected(&[cas(1, None, Some("b"), 0, 10, false)]);
        accepted(&[
            write(1, "a", 0, 10),
            cas(2, Some("c"), Some("b"), 20, 30, false),
            read(2, Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn cas_to_none_deletes() {
        let history = [
            write(1, "a", 0, 10),
            cas(1, Some("a"), None, 20, 30, true),
            read(2, None, 40, 50),
        ];
        accepted(&history);
        let mut stale = history.to_vec();
        stale.push(read(2, Some("a"), 60, 70));
        rejected(&stale);
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        rejected(&[
            write(1, "a", 0, 10),
            read(2, Some("a"), 20, 30),
            read(3, None, 100, 110),
        ]);
        // ... unless a delete may have happened in between.
        accepted(&[
            write(1, "a", 0, 10),
            read(2, Some("a"), 20, 30),
            unknown(cas(4, Some("a"), None, 50, 60, true)),
            read(3, None, 100, 110),
        ]);
    }

    #[test]
    fn unknown_write_observed_later_is_accepted() {
        // The client gave up at 20us; the write landed after 40us.
        accepted(&[
            unknown(write(1, "a", 10, 20)),
            read(2, None, 30, 40),
            read(2, Some("a"), 1000, 1010),
        ]);
    }

    #[test]
    fn unknown_write_never_observed_is_accepted() {
        accepted(&[
            write(1, "a", 0, 5),
            unknown(write(1, "b", 10, 20)),
            read(2, Some("a"), 30, 40),
            read(2, Some("a"), 1000, 1010),
        ]);
    }

    #[test]
    fn unknown_write_observed_before_its_start_is_rejected() {
        rejected(&[read(2, Some("a"), 0, 5), unknown(write(1, "a", 10, 20))]);
    }

    #[test]
    fn unknown_write_takes_effect_at_most_once() {
        // a may land after b (seen at 40-50), but then b cannot come back.
        let history = vec![
            unknown(write(1, "a", 0, 5)),
            write(2, "b", 20, 30),
            read(3, Some("a"), 40, 50),
        ];
        accepted(&history);
        let mut b_again = history.clone();
        b_again.push(read(3, Some("b"), 60, 70));
        rejected(&b_again);
        // Nor can it land twice: after c, a second a needs a second write.
        let mut a_again = history.clone();
        a_again.extend([write(2, "c", 52, 55), read(3, Some("a"), 60, 70)]);
        rejected(&a_again);
        a_again.push(unknown(write(4, "a", 1, 6)));
        accepted(&a_again);
    }

    #[test]
    fn unknown_read_is_ignored() {
        accepted(&[
            write(1, "a", 0, 10),
            at(2, Op::Read, 20, 30, Outcome::Unknown),
        ]);
    }

    #[test]
    fn failed_write_observed_is_rejected() {
        rejected(&[failed(write(1, "a", 0, 10)), read(2, Some("a"), 20, 30)]);
        rejected(&[failed(write(1, "a", 0, 10)), read(2, Some("a"), 5, 6)]);
    }

    #[test]
    fn failed_write_unobserved_is_accepted() {
        accepted(&[
            write(1, "a", 0, 10),
            failed(write(1, "b", 20, 30)),
            read(2, Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn unobserved_unknown_write_can_explain_a_failed_cas() {
        // Nobody reads "z", but it landing is the only way the CAS from "x"
        // can have failed: the pruning of unobserved unknown writes must
        // keep it.
        let cas_fails = cas(3, Some("x"), Some("y"), 30, 40, false);
        accepted(&[
            write(1, "x", 0, 10),
            unknown(write(2, "z", 20, 25)),
            cas_fails.clone(),
        ]);
        rejected(&[write(1, "x", 0, 10), cas_fails.clone()]);
        // It cannot help a CAS that finished before it started.
        rejected(&[
            write(1, "x", 0, 10),
            cas(3, Some("x"), Some("y"), 12, 18, false),
            unknown(write(2, "z", 20, 25)),
        ]);
    }

    #[test]
    fn keys_are_independent() {
        let mut other = read(2, Some("a"), 20, 30);
        other.key = "other".into();
        let v = rejected(&[write(1, "a", 0, 10), other.clone()]);
        assert_eq!(v.key, "other");
        assert_eq!(v.operations, vec![other.clone()]);

        let mut both = vec![write(1, "a", 0, 10), read(2, Some("a"), 20, 30)];
        let mut w = write(1, "a", 0, 10);
        w.key = "other".into();
        both.extend([w, other]);
        accepted(&both);
    }

    #[test]
    fn check_key_ignores_other_keys() {
        let mut other = read(2, Some("zzz"), 20, 30);
        other.key = "other".into();
        let history = [write(1, "a", 0, 10), other, read(2, Some("a"), 20, 30)];
        assert!(check_key("k", &history, 1000).is_ok());
        assert!(check_key("other", &history, 1000).is_err());
    }

    #[test]
    fn malformed_operations_are_reported() {
        let v = check(&[at(1, Op::Read, 0, 10, Outcome::Written)]).unwrap_err();
        assert!(v.message.contains("malformed"), "{v}");
        let v = check(&[write(1, "a", 10, 5)]).unwrap_err();
        assert!(v.message.contains("ends before it starts"), "{v}");
    }

    #[test]
    fn violation_message_names_the_blocking_operation() {
        let v = rejected(&[
            write(1, "a", 0, 10),
            write(1, "b", 20, 30),
            read(7, Some("a"), 40, 50),
        ]);
        let text = v.to_string();
        assert!(
            text.contains("past #2 client 7: read [40us, 50us] -> read \"a\""),
            "{text}"
        );
        assert!(text.contains("the register held \"b\""), "{text}");
        assert!(text.contains("#1 client 1: write \"b\""), "{text}");
        assert_eq!(v.operations.len(), 3);
    }

    #[test]
    fn exhausted_budget_is_reported_as_inconclusive() {
        let mut rng = Rng(7);
        let history = linearizable_history(&mut rng, 5, 100);
        let v = check_key("k", &history, 10).unwrap_err();
        assert!(v.is_inconclusive(), "{v}");
        assert!(v.message.starts_with("gave up after 10 steps"), "{v}");
        assert!(check_key("k", &history, DEFAULT_MAX_STEPS).is_ok());
    }

    #[test]
    fn history_round_trips_through_json() {
        let history = vec![
            unknown(cas(1, None, Some("a"), 0, 10, true)),
            read(2, Some("a"), 20, 30),
            failed(write(3, "b", 5, 6)),
        ];
        let json = serde_json::to_string(&history).unwrap();
        let back: Vec<Operation> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, history);
    }

    /// splitmix64, so the tests need no extra dependency and are reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            splitmix64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Fate {
        Acked,
        Unknown,
        Failed,
    }

    /// A history of `clients` clients each doing `per_client` sequential
    /// operations on a real register: each applied operation takes effect
    /// at a random instant of its interval (an unknown one at any instant
    /// after its start, possibly long after the client gave up, or never),
    /// and its outcome is what the register did. Linearizable by
    /// construction. Written values are unique, as in the fault suite.
    fn linearizable_history(rng: &mut Rng, clients: u64, per_client: usize) -> Vec<Operation> {
        shaped_history(rng, clients, per_client, Shape::default())
    }

    /// How `shaped_history` draws operations.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        /// Percentage of operations with an unknown outcome (5% more fail).
        unknown_percent: u64,
        /// Operations last 1..=max_duration us (gaps are 0..15 us).
        max_duration: u64,
        /// Write values drawn from this many, instead of all distinct.
        values: Option<u64>,
    }

    impl Default for Shape {
        fn default() -> Shape {
            Shape {
                unknown_percent: 10,
                max_duration: 40,
                values: None,
            }
        }
    }

    fn shaped_history(
        rng: &mut Rng,
        clients: u64,
        per_client: usize,
        shape: Shape,
    ) -> Vec<Operation> {
        struct Planned {
            client: u64,
            start: u64,
            end: u64,
            kind: u64,
            fate: Fate,
        }
        let mut planned = Vec::new();
        let mut points = Vec::new();
        for client in 1..=clients {
            let mut t = rng.below(20);
            for _ in 0..per_client {
                let (start, end) = (t, t + 1 + rng.below(shape.max_duration));
                let fate = match rng.below(100) {
                    p if p < shape.unknown_percent => Fate::Unknown,
                    p if p < shape.unknown_percent + 5 => Fate::Failed,
                    _ => Fate::Acked,
                };
                let point = match fate {
                    Fate::Acked => Some(start + rng.below(end - start + 1)),
                    Fate::Unknown if rng.chance(50) => Some(start + rng.below(300)),
                    _ => None,
                };
                if let Some(point) = point {
                    points.push((point, rng.next(), planned.len()));
                }
                planned.push(Planned {
                    client,
                    start,
                    end,
                    kind: rng.below(10),
                    fate,
                });
                t = end + rng.below(15);
            }
        }
        points.sort_unstable();

        let mut fresh = 0;
        let mut fresh_value = |rng: &mut Rng| {
            fresh += 1;
            format!("v{}", shape.values.map_or(fresh, |k| 1 + rng.below(k)))
        };
        let mut written: Vec<String> = Vec::new();
        let mut state: Option<String> = None;
        let mut done: Vec<Option<(Op, Outcome)>> = vec![None; planned.len()];
        for (_, _, i) in points {
            done[i] = Some(match planned[i].kind {
                0..=3 => (Op::Read, Outcome::Read(state.clone())),
                4..=6 => {
                    let v = fresh_value(rng);
                    written.push(v.clone());
                    state = Some(v.clone());
                    (Op::Write(v), Outcome::Written)
                }
                _ => {
                    let expected = if rng.chance(60) || written.is_empty() {
                        state.clone()
                    } else if rng.chance(20) {
                        None
                    } else {
                        Some(written[rng.below(written.len() as u64) as usize].clone())
                    };
                    let new = if rng.chance(15) {
                        None
                    } else {
                        Some(fresh_value(rng))
                    };
                    if let Some(v) = &new {
                        written.push(v.clone());
                    }
                    let swapped = state == expected;
                    if swapped {
                        state = new.clone();
                    }
                    (Op::Cas { expected, new }, Outcome::Cas(swapped))
                }
            });
        }

        let mut history: Vec<Operation> = planned
            .iter()
            .zip(done)
            .map(|(p, done)| {
                let (op, outcome) = done.unwrap_or_else(|| match p.kind {
                    0..=3 => (Op::Read, Outcome::Failed),
                    4..=6 => (Op::Write(fresh_value(rng)), Outcome::Failed),
                    _ => {
                        let op = Op::Cas {
                            expected: None,
                            new: Some(fresh_value(rng)),
                        };
                        (op, Outcome::Failed)
                    }
                });
                let outcome = match p.fate {
                    Fate::Acked => outcome,
                    Fate::Unknown => Outcome::Unknown,
                    Fate::Failed => Outcome::Failed,
                };
                at(p.client, op, p.start, p.end, outcome)
            })
            .collect();
        history.sort_by_key(|o| o.start_us);
        history
    }

    /// The history with one acknowledged read changed to see a different
    /// value that was written (or absent). Often, not always, a violation.
    fn corrupt_one_read(rng: &mut Rng, history: &[Operation]) -> Option<Vec<Operation>> {
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Outcome::Read(_)))
            .collect();
        let &i = reads.get(rng.below(reads.len().max(1) as u64) as usize)?;
        let mut candidates: Vec<Option<String>> = vec![None];
        for o in history {
            match &o.op {
                Op::Write(v) => candidates.push(Some(v.clone())),
                Op::Cas { new: Some(v), .. } => candidates.push(Some(v.clone())),
                _ => {}
            }
        }
        let mut corrupted = history.to_vec();
        let Outcome::Read(seen) = &history[i].outcome else {
            unreachable!()
        };
        candidates.retain(|c| c != seen);
        let pick = candidates[rng.below(candidates.len() as u64) as usize].clone();
        corrupted[i].outcome = Outcome::Read(pick);
        Some(corrupted)
    }

    #[test]
    fn random_linearizable_histories_are_accepted_and_corruptions_caught() {
        let mut rng = Rng(2024);
        let (mut tried, mut caught) = (0, 0);
        for round in 0..300 {
            let clients = 1 + rng.below(5);
            let per_client = 5 + rng.below(40) as usize;
            let history = linearizable_history(&mut rng, clients, per_client);
            if let Err(v) = check(&history) {
                panic!("round {round}: a linearizable history was rejected: {v}");
            }
            if let Some(corrupted) = corrupt_one_read(&mut rng, &history) {
                tried += 1;
                match check(&corrupted) {
                    Ok(()) => {}
                    Err(v) if v.is_inconclusive() => panic!("round {round}: {v}"),
                    Err(_) => caught += 1,
                }
            }
        }
        println!("rejected {caught} of {tried} histories with one corrupted read");
        assert!(caught > 0);
        // Most corruptions are detectable: with this seed, nearly all are.
        assert!(caught * 2 > tried, "only {caught} of {tried} caught");
    }

    /// An independent, exhaustive checker for tiny histories: tries every
    /// subset of the unknown writes/CASes and every order of the operations
    /// that respects real time.
    fn brute_force(history: &[Operation]) -> bool {
        let ops: Vec<&Operation> = history
            .iter()
            .filter(|o| {
                o.outcome != Outcome::Failed && !(o.op == Op::Read && o.outcome == Outcome::Unknown)
            })
            .collect();
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].outcome == Outcome::Unknown)
            .collect();
        (0..1u32 << unknown.len()).any(|mask| {
            let included: Vec<usize> = (0..ops.len())
                .filter(|i| match unknown.iter().position(|u| u == i) {
                    Some(bit) => mask & (1 << bit) != 0,
                    None => true,
                })
                .collect();
            orders(&ops, &included, &mut vec![false; ops.len()], None)
        })
    }

    fn orders(
        ops: &[&Operation],
        included: &[usize],
        used: &mut Vec<bool>,
        state: Option<&str>,
    ) -> bool {
        if included.iter().all(|&i| used[i]) {
            return true;
        }
        for &i in included {
            if used[i] {
                continue;
            }
            // Everything that must precede i (finished before it started)
            // must already be placed.
            let blocked = included.iter().any(|&j| {
                !used[j]
                    && j != i
                    && ops[j].outcome != Outcome::Unknown
                    && ops[j].end_us < ops[i].start_us
            });
            if blocked {
                continue;
            }
            let next: Option<Option<&str>> = match (&ops[i].op, &ops[i].outcome) {
                (Op::Read, Outcome::Read(v)) => (v.as_deref() == state).then_some(state),
                (Op::Write(v), _) => Some(Some(v.as_str())),
                (Op::Cas { expected, new }, Outcome::Cas(true) | Outcome::Unknown) => {
                    (expected.as_deref() == state).then_some(new.as_deref())
                }
                (Op::Cas { expected, .. }, Outcome::Cas(false)) => {
                    (expected.as_deref() != state).then_some(state)
                }
                other => unreachable!("{other:?}"),
            };
            if let Some(next) = next {
                used[i] = true;
                let found = orders(ops, included, used, next);
                used[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    /// Tiny arbitrary (mostly non-linearizable) histories over a 3-value
    /// domain, so that value collisions, deletes, unknown CASes and failed
    /// CASes all interact.
    fn arbitrary_history(rng: &mut Rng, max_len: u64, unknown_percent: u64) -> Vec<Operation> {
        let value = |rng: &mut Rng| match rng.below(3) {
            0 => None,
            1 => Some("a".to_string()),
            _ => Some("b".to_string()),
        };
        let len = 1 + rng.below(max_len);
        (0..len)
            .map(|_| {
                let start = rng.below(30);
                let end = start + rng.below(15);
                let (op, outcome) = match rng.below(3) {
                    0 => (Op::Read, Outcome::Read(value(rng))),
                    1 => (
                        Op::Write(value(rng).unwrap_or_else(|| "a".into())),
                        Outcome::Written,
                    ),
                    _ => (
                        Op::Cas {
                            expected: value(rng),
                            new: value(rng),
                        },
                        Outcome::Cas(rng.chance(50)),
                    ),
                };
                let outcome = match rng.below(100) {
                    p if p < unknown_percent => Outcome::Unknown,
                    p if p < unknown_percent + 10 => Outcome::Failed,
                    _ => outcome,
                };
                at(rng.below(3), op, start, end, outcome)
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        // Mostly known outcomes, then mostly unknown ones (chains of unknown
        // CASes, unknown writes enabling failed CASes...), which exercise the
        // reductions of the unknown operations' search. LIN_BRUTE_ROUNDS
        // sets the rounds per mix (300,000 each passed during development).
        let rounds: u64 = std::env::var("LIN_BRUTE_ROUNDS").map_or(10_000, |r| r.parse().unwrap());
        for (max_len, unknown_percent) in [(7, 20), (8, 45)] {
            let mut rng = Rng(99 + unknown_percent);
            let mut linearizable = 0;
            for round in 0..rounds {
                let history = arbitrary_history(&mut rng, max_len, unknown_percent);
                let expected = brute_force(&history);
                let got = check(&history);
                assert_eq!(
                    got.is_ok(),
                    expected,
                    "round {round}: checker says {got:?}, brute force {expected}: {history:#?}"
                );
                linearizable += u64::from(expected);
            }
            // Both answers are well represented.
            println!("{unknown_percent}% unknown: {linearizable} of {rounds} linearizable");
            assert!(
                (rounds / 10..rounds * 9 / 10).contains(&linearizable),
                "{linearizable}"
            );
        }
    }

    /// 2,000 operations on one key from 5 clients, 10% unknown and 5%
    /// failed: accepted in ~3.3 ms; with its last read corrupted to a value
    /// never written (so the search must exhaust nearly all of it), rejected
    /// in ~8 ms (test profile, opt-level 2, development machine).
    #[test]
    fn two_thousand_ops_from_five_clients_check_quickly() {
        let mut rng = Rng(1);
        let history = linearizable_history(&mut rng, 5, 400);
        assert_eq!(history.len(), 2000);

        let started = Instant::now();
        let result = check(&history);
        let accept_time = started.elapsed();
        assert!(result.is_ok(), "{}", result.unwrap_err());

        let corrupted = corrupt_last_read(&history);
        let started = Instant::now();
        let result = check(&corrupted);
        let reject_time = started.elapsed();
        let v = result.unwrap_err();
        assert!(!v.is_inconclusive(), "{v}");

        println!(
            "2000 ops, 5 clients: accepted in {accept_time:?}, corrupted copy rejected in \
             {reject_time:?}"
        );
    }

    /// The last read of the history made to return a value never written,
    /// so the search must exhaust nearly all of the history to say no.
    fn corrupt_last_read(history: &[Operation]) -> Vec<Operation> {
        let mut corrupted = history.to_vec();
        let last_read = (0..corrupted.len())
            .rev()
            .find(|&i| matches!(corrupted[i].outcome, Outcome::Read(_)))
            .expect("a read");
        corrupted[last_read].outcome = Outcome::Read(Some("never written".into()));
        corrupted
    }

    /// Harder shapes than the fault suite should produce, with unique
    /// values: up to 30% unknown outcomes, intervals up to 150us. The worst,
    /// 30% unknown with the last read corrupted, takes ~50k search steps
    /// with 5 clients (and ~7M, 0.4 s, with 8).
    #[test]
    fn histories_with_many_unknown_outcomes_are_decided() {
        for shape in [
            Shape {
                unknown_percent: 30,
                ..Shape::default()
            },
            Shape {
                unknown_percent: 10,
                max_duration: 150,
                values: None,
            },
            Shape {
                unknown_percent: 30,
                max_duration: 150,
                values: None,
            },
        ] {
            let mut rng = Rng(3);
            let history = shaped_history(&mut rng, 5, 400, shape);
            if let Err(v) = check(&history) {
                panic!("{shape:?}: {v}");
            }
            match check(&corrupt_last_read(&history)) {
                Ok(()) => panic!("{shape:?}: corruption not caught"),
                Err(v) => assert!(!v.is_inconclusive(), "{shape:?}: {v}"),
            }
        }
    }
}
