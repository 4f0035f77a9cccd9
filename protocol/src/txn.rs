//! Transactions (issue 14): `TXN`, an `if` of comparisons, a `then` and an
//! `else` of operations, applied atomically at one revision.
//!
//! The comparisons are all evaluated against the state before the
//! transaction; if every one holds, `success` runs, else `failure`. Either
//! branch's operations run in order on the state the previous ones left, so
//! a range read after a put sees the put. Whatever the branch writes is one
//! change at one revision (the transaction's log index): every key it puts
//! gets that `mod_revision`, its `version` goes up by one, and a watcher
//! sees the branch's events together. As etcd does, a branch may not write
//! one key twice (two puts, or a put and a delete of it), so each key
//! changes at most once per revision.
//!
//! A missing key compares as version, create and mod revision 0, so
//! `version = 0` is "the key is absent"; a comparison of its value is false
//! whatever the operator (there is no value to compare).

use serde::{Deserialize, Serialize};

use crate::client::{check_key, check_value, InvalidRequest, RequestPayload, SessionFields};
use crate::kv::{RangeReply, RangeRequest};

/// The most comparisons a transaction holds, and the most operations each
/// of its branches holds (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// What a comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value,
    Version,
    CreateRevision,
    ModRevision,
}

/// How the key's side relates to the comparison's `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = ">")]
    Greater,
}

impl CompareOp {
    /// Whether `ordering` (the key's side against the constant) satisfies
    /// this operator.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        matches!(
            (self, ordering),
            (CompareOp::Equal, Equal)
                | (CompareOp::NotEqual, Less | Greater)
                | (CompareOp::Less, Less)
                | (CompareOp::Greater, Greater)
        )
    }

    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Equal => "=",
            CompareOp::NotEqual => "!=",
            CompareOp::Less => "<",
            CompareOp::Greater => ">",
        }
    }
}

/// The constant a comparison holds: a string for `value`, a number for the
/// others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CompareValue {
    Number(u64),
    Text(String),
}

/// One condition of a transaction's `compare`:
/// `{"key":"a","target":"version","op":">","value":2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOp,
    pub value: CompareValue,
}

impl Compare {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)?;
        match (self.target, &self.value) {
            (CompareTarget::Value, CompareValue::Text(v)) => check_value(Some(v)),
            (CompareTarget::Value, CompareValue::Number(_)) => {
                Err(InvalidRequest::CompareType { wants_text: true })
            }
            (_, CompareValue::Number(_)) => Ok(()),
            (_, CompareValue::Text(_)) => Err(InvalidRequest::CompareType { wants_text: false }),
        }
    }
}

/// One operation of a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxnOp {
    /// Sets `key` to `value`, attached to `lease` if given.
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    /// Deletes `key`, or with `prefix` every key that starts with it, or
    /// with `range_end` the keys in `[key, range_end)` (`""`: no end).
    Delete {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range_end: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        prefix: bool,
    },
    /// Reads as `RANGE` does, at the transaction's revision (with what the
    /// branch wrote before it); `rev` and `stale` do not apply.
    Range(RangeRequest),
}

impl TxnOp {
    /// The range a delete removes, as a range read of it would name it.
    pub fn delete_range(key: &str, range_end: &Option<String>, prefix: bool) -> RangeRequest {
        RangeRequest {
            key: key.to_string(),
            range_end: range_end.clone(),
            prefix,
            ..RangeRequest::default()
        }
    }

    fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            TxnOp::Put { key, value, .. } => {
                check_key(key)?;
                check_value(Some(value))
            }
            TxnOp::Delete {
                key,
                range_end,
                prefix,
            } => TxnOp::delete_range(key, range_end, *prefix).validate(),
            TxnOp::Range(range) => {
                if range.stale || range.rev.is_some_and(|r| r != 0) {
                    return Err(InvalidRequest::TxnRangeRevision);
                }
                range.validate()
            }
        }
    }

    /// The one key this operation writes, if it writes exactly one.
    fn written_key(&self) -> Option<&str> {
        match self {
            TxnOp::Put { key, .. } => Some(key),
            TxnOp::Delete {
                key,
                range_end: None,
                prefix: false,
            } => Some(key),
            _ => None,
        }
    }
}

/// A transaction: `if` every comparison holds `then` `success` `else`
/// `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Txn {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<TxnOp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Whether neither branch writes: such a transaction may be answered
    /// as a read.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, TxnOp::Range(_)))
    }

    pub fn validate(&self) -> Result<(), InvalidRequest> {
        for (what, len) in [
            ("compare", self.compare.len()),
            ("success", self.success.len()),
            ("failure", self.failure.len()),
        ] {
            if len > MAX_TXN_OPS {
                return Err(InvalidRequest::TxnTooLarge { what, len });
            }
        }
        for c in &self.compare {
            c.validate()?;
        }
        for branch in [&self.success, &self.failure] {
            for op in branch {
                op.validate()?;
            }
            check_writes_once(branch)?;
        }
        Ok(())
    }
}

/// A branch writes each key at most once: no key put or deleted twice, and
/// no key put or deleted by itself inside a range the branch deletes.
fn check_writes_once(branch: &[TxnOp]) -> Result<(), InvalidRequest> {
    let mut keys: Vec<&str> = branch.iter().filter_map(TxnOp::written_key).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(InvalidRequest::TxnKeyWrittenTwice);
    }
    for op in branch {
        if let TxnOp::Delete {
            key,
            range_end,
            prefix,
        } = op
        {
            if op.written_key().is_some() {
                continue;
            }
            let range = TxnOp::delete_range(key, range_end, *prefix);
            let bounds = range.bounds();
            if keys.iter().any(|k| *k >= bounds.start && bounds.admits(k)) {
                return Err(InvalidRequest::TxnKeyWrittenTwice);
            }
        }
    }
    Ok(())
}

/// `TXN`'s request: the transaction and the session it runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TxnWire")]
pub struct TxnRequest {
    #[serde(flatten)]
    pub txn: Txn,
    #[serde(flatten)]
    pub session: SessionFields,
}

// serde cannot deny unknown fields through `flatten`: read flat, then split.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnWire {
    #[serde(default)]
    compare: Vec<Compare>,
    #[serde(default)]
    success: Vec<TxnOp>,
    #[serde(default)]
    failure: Vec<TxnOp>,
    client_id: Option<u64>,
    seq: Option<u64>,
}

impl From<TxnWire> for TxnRequest {
    fn from(w: TxnWire) -> TxnRequest {
        TxnRequest {
            txn: Txn {
                compare: w.compare,
                success: w.success,
                failure: w.failure,
            },
            session: SessionFields {
                client_id: w.client_id,
                seq: w.seq,
            },
        }
    }
}

impl RequestPayload for TxnRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        self.session.check()?;
        self.txn.validate()
    }
}

/// What one operation of the branch that ran gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxnOpReply {
    Put {},
    /// How many keys it deleted.
    Delete {
        deleted: u64,
    },
    Range(RangeReply),
}

/// `TXN`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReply {
    /// Whether every comparison held (so `success` ran, else `failure`).
    pub succeeded: bool,
    /// One per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpReply>,
    /// The revision after the transaction: its own if it changed a key,
    /// else the one it read at.
    pub revision: u64,
    /// The log index it was applied at (0 for a read-only transaction,
    /// which is answered without the log).
    pub index: u64,
}

impl TxnReply {
    /// The length of the strings it holds (what a session caching it
    /// counts).
    pub fn string_bytes(&self) -> usize {
        self.responses
            .iter()
            .map(|r| match r {
                TxnOpReply::Range(range) => {
                    range
                        .kvs
                        .iter()
                        .map(|kv| kv.key.len() + kv.value.as_ref().map_or(0, String::len))
                        .sum::<usize>()
                        + range.next_key.as_ref().map_or(0, String::len)
                }
                TxnOpReply::Put {} | TxnOpReply::Delete { .. } => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_request, ClientRequest, Request};

    fn parse(payload: &str) -> Result<TxnRequest, String> {
        let line = format!(r#"{{"msg_type":"TXN","payload":{payload}}}"#);
        match decode_request(line.as_bytes()) {
            Ok(Request::Client {
                request: ClientRequest::Txn(t),
                ..
            }) => Ok(t),
            Ok(other) => Err(format!("not a TXN: {other:?}")),
            Err(e) => Err(e.error.message),
        }
    }

    #[test]
    fn a_transaction_reads_from_json_and_round_trips() {
        let t = parse(
            r#"{"compare":[{"key":"a","target":"version","op":"=","value":0},
                {"key":"b","target":"value","op":"!=","value":"x"}],
               "success":[{"type":"put","key":"a","value":"1"},
                {"type":"delete","key":"p/","prefix":true},
                {"type":"range","key":"a","prefix":true,"keys_only":true}],
               "failure":[{"type":"range","key":"a"}],"client_id":3,"seq":4}"#,
        )
        .expect("parses");
        assert_eq!(t.txn.compare.len(), 2);
        assert_eq!(t.txn.compare[0].value, CompareValue::Number(0));
        assert_eq!(t.txn.compare[1].value, CompareValue::Text("x".into()));
        assert_eq!(t.txn.success.len(), 3);
        assert_eq!(t.session.seq, Some(4));
        assert!(!t.txn.is_read_only());
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(serde_json::from_str::<TxnRequest>(&json).ok(), Some(t));
    }

    #[test]
    fn bad_transactions_are_refused_with_the_reason() {
        let refused = [
            (r#"{"bogus":1}"#, "unknown field"),
            (
                r#"{"compare":[{"key":"a","target":"value","op":"=","value":3}]}"#,
                "compares a string",
            ),
            (
                r#"{"compare":[{"key":"a","target":"version","op":"=","value":"3"}]}"#,
                "compares a number",
            ),
            (
                r#"{"compare":[{"key":"a","target":"version","op":"~","value":3}]}"#,
                "unknown variant",
            ),
            (
                r#"{"success":[{"type":"put","key":"a","value":"1"},{"type":"put","key":"a","value":"2"}]}"#,
                "twice",
            ),
            (
                r#"{"success":[{"type":"put","key":"p/a","value":"1"},{"type":"delete","key":"p/","prefix":true}]}"#,
                "twice",
            ),
            (
                r#"{"success":[{"type":"range","key":"a","rev":3}]}"#,
                "transaction's revision",
            ),
            (
                r#"{"success":[{"type":"range","key":"a","bogus":true}]}"#,
                "unknown field",
            ),
            (
                r#"{"success":[{"type":"nope","key":"a"}]}"#,
                "unknown variant",
            ),
        ];
        for (payload, why) in refused {
            let error = parse(payload).expect_err(payload);
            assert!(error.contains(why), "{payload}: {error}");
        }
        let ops: Vec<String> = (0..=MAX_TXN_OPS)
            .map(|i| format!(r#"{{"type":"put","key":"k{i}","value":"v"}}"#))
            .collect();
        let error = parse(&format!(r#"{{"failure":[{}]}}"#, ops.join(","))).expect_err("large");
        assert!(error.contains("at most 128"), "{error}");
        // Two puts of one key in different branches are fine.
        parse(
            r#"{"success":[{"type":"put","key":"a","value":"1"}],
                "failure":[{"type":"put","key":"a","value":"2"}]}"#,
        )
        .expect("one write per branch");
    }

    #[test]
    fn operators_hold_as_named() {
        use std::cmp::Ordering::*;
        assert!(CompareOp::Equal.holds(Equal) && !CompareOp::Equal.holds(Less));
        assert!(CompareOp::NotEqual.holds(Greater) && !CompareOp::NotEqual.holds(Equal));
        assert!(CompareOp::Less.holds(Less) && !CompareOp::Less.holds(Greater));
        assert!(CompareOp::Greater.holds(Greater) && !CompareOp::Greater.holds(Equal));
    }
}
