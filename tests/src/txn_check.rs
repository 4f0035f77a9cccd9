//! A linearizability checker for multi-key transactions and range reads.
//!
//! [`crate::linearizability`] checks single-key registers, one key at a
//! time, which is exact because registers are independent. A transaction
//! that compares one key and writes two, or a range read that returns
//! several, ties keys together, so here the object is a whole key space (a
//! map from keys to values, initially empty) and every operation on it is
//! a transaction: comparisons, then one branch of puts, deletes and range
//! reads. A plain `RANGE` is a transaction with no comparisons and one
//! read. Keep the transaction key space apart from the registers' keys: the
//! two objects are then independent, and a history is linearizable if the
//! registers' and the transactions' are.
//!
//! The search is Wing & Gong's with Lowe's memoisation, as in the register
//! checker, without its special handling of unknown outcomes: an operation
//! whose outcome the client never learned may take effect at any instant
//! after it started, or never. The cache of explored configurations (set of
//! operations linearized, state) is kept as 128-bit hashes; a collision
//! could only make the search skip a configuration, so its odds
//! (about n² / 2¹²⁸ for n configurations) are the odds of a false alarm.
//! A budget of search steps bounds the work; running out is reported as an
//! inconclusive violation, never as success.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// Search steps allowed by [`check`] (each is one operation tried or one
/// backtrack).
pub const MAX_STEPS: u64 = 20_000_000;

/// A condition on one key before the transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// The key is absent (`version = 0`).
    Absent,
    /// The key holds this value.
    Equals(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Put(String, String),
    Delete(String),
    DeletePrefix(String),
    /// Every key with this prefix, with its value, in key order.
    ReadPrefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnSpec {
    pub compare: Vec<(String, Cond)>,
    pub success: Vec<Step>,
    pub failure: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Which branch ran, and what each of its reads returned, in order.
    Done {
        succeeded: bool,
        reads: Vec<Vec<(String, String)>>,
    },
    /// Definitely not applied.
    Failed,
    /// May have taken effect, at any instant after it started.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOperation {
    pub client: u64,
    pub txn: TxnSpec,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: TxnOutcome,
}

impl TxnSpec {
    /// Whether it writes in neither branch.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|s| matches!(s, Step::ReadPrefix(_)))
    }
}

type State = BTreeMap<String, String>;

/// Runs `txn` on `state`: which branch ran and its reads.
fn apply(state: &mut State, txn: &TxnSpec) -> (bool, Vec<Vec<(String, String)>>) {
    let succeeded = txn.compare.iter().all(|(key, cond)| match cond {
        Cond::Absent => !state.contains_key(key),
        Cond::Equals(v) => state.get(key) == Some(v),
    });
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut reads = Vec::new();
    for step in branch {
        match step {
            Step::Put(k, v) => {
                state.insert(k.clone(), v.clone());
            }
            Step::Delete(k) => {
                state.remove(k);
            }
            Step::DeletePrefix(p) => state.retain(|k, _| !k.starts_with(p.as_str())),
            Step::ReadPrefix(p) => reads.push(
                state
                    .range(p.clone()..)
                    .take_while(|(k, _)| k.starts_with(p.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }
    }
    (succeeded, reads)
}

/// Why a history was not accepted.
#[derive(Clone, Debug)]
pub struct TxnViolation {
    pub message: String,
    pub inconclusive: bool,
}

impl fmt::Display for TxnViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks `history` with [`MAX_STEPS`].
pub fn check(history: &[TxnOperation]) -> Result<(), TxnViolation> {
    check_with_budget(history, MAX_STEPS)
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
}

pub fn check_with_budget(history: &[TxnOperation], max_steps: u64) -> Result<(), TxnViolation> {
    // Failed operations never happened; an unknown one that writes nothing
    // changes nothing, and what it read was never seen: both are dropped.
    let ops: Vec<&TxnOperation> = history
        .iter()
        .filter(|o| match o.outcome {
            TxnOutcome::Failed => false,
            TxnOutcome::Unknown => !o.txn.is_read_only(),
            TxnOutcome::Done { .. } => true,
        })
        .collect();
    // Calls and returns in time order; at one instant calls first, so that
    // operations that touch overlap (the lenient reading).
    let mut timed: Vec<(u64, bool, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        timed.push((o.start_us, false, i));
        if !matches!(o.outcome, TxnOutcome::Unknown) {
            timed.push((o.end_us.max(o.start_us), true, i));
        }
    }
    timed.sort();
    let events: Vec<Event> = timed
        .iter()
        .map(|&(_, is_return, op)| Event {
            op,
            call: !is_return,
        })
        .collect();
    let n = events.len();
    // A doubly linked list over the events, node n the head sentinel;
    // usize::MAX ends it.
    let mut next: Vec<usize> = (1..n).chain([usize::MAX, 0]).collect();
    let mut prev: Vec<usize> = std::iter::once(n).chain(0..n).collect();
    if n == 0 {
        next = vec![usize::MAX];
    }
    let mut return_of = vec![usize::MAX; ops.len()];
    for (i, e) in events.iter().enumerate() {
        if !e.call {
            return_of[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != usize::MAX {
            prev[nx] = i;
        }
    };
    let mut returns_left = events.iter().filter(|e| !e.call).count();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut state = State::new();
    let mut cache: HashSet<u128> = HashSet::new();
    // (call event lifted, state before it)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = next[n];
    let mut steps = 0u64;
    let mut deepest = 0usize;
    while returns_left > 0 {
        steps += 1;
        if steps > max_steps {
            return Err(TxnViolation {
                message: format!(
                    "gave up after {max_steps} steps ({} operations; at most {deepest} \
                     linearized in one order)",
                    ops.len()
                ),
                inconclusive: true,
            });
        }
        debug_assert!(entry != usize::MAX, "a return is always left to reach");
        let e = events[entry];
        if e.call {
            let op = ops[e.op];
            let mut after = state.clone();
            let (succeeded, reads) = apply(&mut after, &op.txn);
            let legal = match &op.outcome {
                TxnOutcome::Done {
                    succeeded: s,
                    reads: r,
                } => *s == succeeded && *r == reads,
                _ => true,
            };
            let mut fresh = false;
            if legal {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                fresh = cache.insert(config_hash(&linearized, &after));
                if !fresh {
                    linearized[e.op / 64] &= !(1 << (e.op % 64));
                }
            }
            if fresh {
                stack.push((entry, std::mem::replace(&mut state, after)));
                deepest = deepest.max(stack.len());
                unlink(&mut next, &mut prev, entry);
                if return_of[e.op] != usize::MAX {
                    unlink(&mut next, &mut prev, return_of[e.op]);
                    returns_left -= 1;
                }
                entry = next[n];
            } else {
                entry = next[entry];
            }
        } else {
            // A return whose operation has not taken effect: undo the last
            // choice and try the one after it.
            let Some((call, before)) = stack.pop() else {
                let o = ops[e.op];
                return Err(TxnViolation {
                    message: format!(
                        "not linearizable: no order of the {} operations explains them all; \
                         client {}'s {:?} -> {:?} (at {}..{} us) can take effect at no point",
                        ops.len(),
                        o.client,
                        o.txn,
                        o.outcome,
                        o.start_us,
                        o.end_us
                    ),
                    inconclusive: false,
                });
            };
            state = before;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            if return_of[op] != usize::MAX {
                relink(&mut next, &mut prev, return_of[op]);
                returns_left += 1;
            }
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Ok(())
}

fn config_hash(linearized: &[u64], state: &State) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0x5eed_u64.hash(&mut b);
    linearized.hash(&mut a);
    state.hash(&mut a);
    linearized.hash(&mut b);
    state.hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Step {
        Step::Put(k.into(), v.into())
    }

    fn read() -> Step {
        Step::ReadPrefix("t/".into())
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn op(client: u64, start: u64, end: u64, txn: TxnSpec, outcome: TxnOutcome) -> TxnOperation {
        TxnOperation {
            client,
            txn,
            start_us: start,
            end_us: end,
            outcome,
        }
    }

    fn writes(steps: Vec<Step>) -> TxnSpec {
        TxnSpec {
            success: steps,
            ..TxnSpec::default()
        }
    }

    fn done(reads: Vec<Vec<(String, String)>>) -> TxnOutcome {
        TxnOutcome::Done {
            succeeded: true,
            reads,
        }
    }

    #[test]
    fn a_read_must_see_both_writes_of_a_transaction_or_neither() {
        let w = op(
            1,
            0,
            10,
            writes(vec![put("t/a", "1"), put("t/b", "1")]),
            done(vec![]),
        );
        // Concurrent with the write: all or nothing is fine.
        for seen in [kv(&[]), kv(&[("t/a", "1"), ("t/b", "1")])] {
            let r = op(2, 5, 15, writes(vec![read()]), done(vec![seen]));
            assert!(check(&[w.clone(), r]).is_ok());
        }
        // Half a transaction is never visible.
        let torn = op(
            2,
            5,
            15,
            writes(vec![read()]),
            done(vec![kv(&[("t/a", "1")])]),
        );
        let v = check(&[w.clone(), torn]).expect_err("torn read");
        assert!(!v.inconclusive, "{v}");
        // After the write ended, a read must see it.
        let stale = op(2, 20, 30, writes(vec![read()]), done(vec![kv(&[])]));
        assert!(check(&[w, stale]).is_err());
    }

    #[test]
    fn comparisons_pick_the_branch_the_state_before_implies() {
        let first = op(1, 0, 10, writes(vec![put("t/a", "x")]), done(vec![]));
        let guarded = |succeeded| TxnOutcome::Done {
            succeeded,
            reads: vec![],
        };
        let txn = TxnSpec {
            compare: vec![("t/a".into(), Cond::Absent)],
            success: vec![put("t/b", "won")],
            failure: vec![],
        };
        // After "x" was written, "t/a absent" cannot hold.
        let wrong = op(2, 20, 30, txn.clone(), guarded(true));
        assert!(check(&[first.clone(), wrong]).is_err());
        let right = op(2, 20, 30, txn.clone(), guarded(false));
        assert!(check(&[first.clone(), right]).is_ok());
        // Concurrently, either branch is possible.
        let overlapping = op(2, 5, 15, txn, guarded(true));
        assert!(check(&[first, overlapping]).is_ok());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened_but_a_failed_one_never_did() {
        let w = |outcome| op(1, 0, 10, writes(vec![put("t/a", "1")]), outcome);
        let later = |seen| op(2, 20, 30, writes(vec![read()]), done(vec![seen]));
        for seen in [kv(&[]), kv(&[("t/a", "1")])] {
            assert!(check(&[w(TxnOutcome::Unknown), later(seen)]).is_ok());
        }
        assert!(check(&[w(TxnOutcome::Failed), later(kv(&[("t/a", "1")]))]).is_err());
        // An unknown write takes effect once, and stays until overwritten:
        // seen, then gone, then seen again is impossible.
        let reads = [
            later(kv(&[("t/a", "1")])),
            op(2, 40, 50, writes(vec![read()]), done(vec![kv(&[])])),
            op(
                2,
                60,
                70,
                writes(vec![read()]),
                done(vec![kv(&[("t/a", "1")])]),
            ),
        ];
        let mut h = vec![w(TxnOutcome::Unknown)];
        h.extend(reads);
        assert!(check(&h).is_err());
    }

    #[test]
    fn deletes_of_a_prefix_remove_every_key_under_it() {
        let setup = op(
            1,
            0,
            10,
            writes(vec![put("t/a", "1"), put("t/b", "1")]),
            done(vec![]),
        );
        let wipe = op(
            1,
            20,
            30,
            writes(vec![Step::DeletePrefix("t/".into()), read()]),
            done(vec![kv(&[])]),
        );
        assert!(check(&[setup.clone(), wipe]).is_ok());
        let half = op(
            1,
            20,
            30,
            writes(vec![Step::DeletePrefix("t/".into()), read()]),
            done(vec![kv(&[("t/b", "1")])]),
        );
        assert!(check(&[setup, half]).is_err());
    }

    #[test]
    fn a_long_history_of_sequential_transactions_checks_and_one_corrupt_read_fails_it() {
        // 5 clients, 600 transactions, run against a model with real
        // overlaps: each client's operation spans its neighbours'.
        let mut state = State::new();
        let mut history = Vec::new();
        for i in 0..600u64 {
            let key = format!("t/{}", i % 3);
            let txn = TxnSpec {
                compare: vec![(key.clone(), Cond::Absent)],
                success: vec![put(&key, &format!("v{i}")), read()],
                failure: vec![Step::Delete(key.clone()), read()],
            };
            let (succeeded, reads) = apply(&mut state, &txn);
            let outcome = if i % 50 == 7 {
                TxnOutcome::Unknown
            } else {
                TxnOutcome::Done { succeeded, reads }
            };
            history.push(op(i % 5, i * 10, i * 10 + 25, txn, outcome));
        }
        check(&history).expect("a serial run checks");
        let last = history.len() - 1;
        if let TxnOutcome::Done { reads, .. } = &mut history[last].outcome {
            reads[0].push(("t/zz".into(), "never".into()));
        }
        let v = check(&history).expect_err("corrupted");
        assert!(!v.inconclusive, "{v}");
    }
}
