//! What a transaction does to the map (see `poncho_protocol::txn` for its
//! meaning): its comparisons are read against the state before it, then
//! one branch's operations run in order, every write at the entry's index.
//! Permission for the whole transaction is checked before it runs
//! (`AuthStore::check` of `Need::Txn`), so a range read here returns every
//! key of its range.

use std::sync::Arc;

use poncho_protocol::{
    Compare, CompareTarget, CompareValue, ErrorReply, RangeRequest, Txn, TxnOp, TxnOpReply,
    TxnReply, MAX_RANGE_REPLY_BYTES,
};
use smol_str::SmolStr;

use super::lease::lease_not_found;
use super::store::{page, Data, Stored};

impl Data {
    /// A transaction that writes nothing (`Txn::is_read_only`), answered
    /// from the state as it is, outside the log (`index` 0).
    pub(super) fn read_txn(&self, txn: &Txn) -> TxnReply {
        let succeeded = self.compares_hold(txn);
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut budget = MAX_RANGE_REPLY_BYTES;
        let responses = branch
            .iter()
            .filter_map(|op| match op {
                TxnOp::Range(range) => Some(self.range_op(range, &mut budget)),
                // Not read-only after all: a caller's mistake, answered
                // with nothing done rather than half a transaction.
                TxnOp::Put { .. } | TxnOp::Delete { .. } => None,
            })
            .collect();
        TxnReply {
            succeeded,
            responses,
            revision: self.revision,
            index: 0,
        }
    }

    fn compares_hold(&self, txn: &Txn) -> bool {
        txn.compare
            .iter()
            .all(|c| holds(c, self.get_stored(&c.key)))
    }

    /// A range read of a transaction, taking what its keys and values
    /// weigh from `budget` (the range reads of one reply share one).
    fn range_op(&self, range: &RangeRequest, budget: &mut usize) -> TxnOpReply {
        let keys = self
            .from(range.bounds().start)
            .map(|(k, s)| (k.as_str(), s));
        let reply = page(range, keys, self.revision, |_| true, *budget);
        let used: usize = reply
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.as_ref().map_or(0, String::len))
            .sum();
        *budget = budget.saturating_sub(used);
        TxnOpReply::Range(reply)
    }

    /// Runs the transaction; an error (and nothing done) if the branch that
    /// runs puts a key with a lease that does not exist.
    pub(super) fn apply_txn(&mut self, index: u64, txn: Txn) -> Result<TxnReply, ErrorReply> {
        let succeeded = self.compares_hold(&txn);
        let branch = if succeeded { txn.success } else { txn.failure };
        for op in &branch {
            if let TxnOp::Put {
                lease: Some(id), ..
            } = op
            {
                if !self.has_lease(*id) {
                    return Err(lease_not_found(*id));
                }
            }
        }
        // The range reads of one reply share one budget of bytes.
        let mut budget = MAX_RANGE_REPLY_BYTES;
        let responses = branch
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    self.put(&key, Arc::from(value), index, lease.unwrap_or(0));
                    TxnOpReply::Put {}
                }
                TxnOp::Delete {
                    key,
                    range_end,
                    prefix,
                } => {
                    let range = TxnOp::delete_range(&key, &range_end, prefix);
                    let bounds = range.bounds();
                    let doomed: Vec<SmolStr> = self
                        .from(bounds.start)
                        .map(|(k, _)| k)
                        .take_while(|k| bounds.admits(k))
                        .cloned()
                        .collect();
                    let deleted = doomed.iter().filter(|k| self.take(k, index)).count();
                    TxnOpReply::Delete {
                        deleted: deleted as u64,
                    }
                }
                TxnOp::Range(range) => self.range_op(&range, &mut budget),
            })
            .collect();
        Ok(TxnReply {
            succeeded,
            responses,
            revision: self.revision,
            index,
        })
    }
}

/// Whether comparison `c` holds for the key as `stored` says it is. A
/// missing key has version and revisions 0 and no value, so a comparison of
/// its value is false.
fn holds(c: &Compare, stored: Option<&Stored>) -> bool {
    match (&c.value, c.target) {
        (CompareValue::Text(want), CompareTarget::Value) => {
            stored.is_some_and(|s| c.op.holds((*s.value).cmp(want.as_str())))
        }
        (CompareValue::Number(want), target) => {
            let have = stored.map_or(0, |s| match target {
                CompareTarget::Version => s.version,
                CompareTarget::CreateRevision => s.create_revision,
                CompareTarget::ModRevision => s.mod_revision,
                CompareTarget::Value => 0,
            });
            // A number against a value was refused when the request was
            // read; a log entry that holds one anyway compares false.
            target != CompareTarget::Value && c.op.holds(have.cmp(want))
        }
        (CompareValue::Text(_), _) => false,
    }
}
