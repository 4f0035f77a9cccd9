//! Revisions and range reads (issue 14): the key/value metadata every read
//! returns, and `RANGE`, the read of a key, a prefix or a range with paging.
//!
//! **Revisions.** The cluster's revision is the log index of the last entry
//! that changed any key: a write that changes keys (a SET, a DELETE that
//! deleted, a CAS that swapped) has its entry's index as its revision, and
//! one entry changes keys at one revision however many it changes. Entries
//! that change no key (no-ops, configurations, a failed CAS, a DELETE of an
//! absent key, sessions, users) leave it as it was. So revisions only grow,
//! every node gives the same one to the same write, and the `index` a write
//! reply carries is that write's revision. Every key carries, as etcd's
//! `mvccpb.KeyValue` does, `create_revision` (the revision that created it),
//! `mod_revision` (the last that changed it) and `version` (how many times
//! it was written since it was created, 1 at first). Deleting a key ends its
//! history: written again, it starts over at version 1 with a new
//! `create_revision`.

use serde::{Deserialize, Serialize};

use crate::client::{check_key, InvalidRequest, RequestPayload};

/// The most keys one `RANGE` reply holds; a larger `limit` (or none) is cut
/// to it, and the reply says `more`.
pub const MAX_RANGE_LIMIT: u64 = 10_000;
/// A `RANGE` reply stops adding keys once their keys and values add up to
/// this many bytes (it always holds at least one), and says `more`.
pub const MAX_RANGE_REPLY_BYTES: usize = 4 << 20;

/// A key as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    /// Absent in a `keys_only` read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// `RANGE`: the keys in a range, in key order.
///
/// Which keys: `key` alone is that one key; with `prefix`, every key that
/// starts with `key` (`""` is every key); with `range_end`, the keys from
/// `key` up to but not including `range_end` (`""` meaning no end, etcd's
/// `"\0"`). Paging: a reply that leaves keys out says `more` and gives
/// `next_key`; the same request with `from` set to it returns the next page.
/// `limit` caps the keys returned (at most [`MAX_RANGE_LIMIT`], the
/// default). `count_only` returns no keys, only `count`; `keys_only` leaves
/// the values out. `stale` serves this node's state without a linearizable
/// read, as GET's does. While auth is on, the keys the user may not read are
/// left out, of `kvs` and of `count` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
    /// Where this page starts (a previous reply's `next_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Read the keys as they were at this revision (0 or absent: now),
    /// while the node's history still holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<u64>,
}

impl RangeRequest {
    /// The keys of `prefix`.
    pub fn prefix(prefix: &str) -> RangeRequest {
        RangeRequest {
            key: prefix.to_string(),
            prefix: true,
            ..RangeRequest::default()
        }
    }

    /// The keys this request's range holds, from `from` on.
    pub fn bounds(&self) -> RangeBounds<'_> {
        let end = RangeEnd::of(&self.key, self.range_end.as_deref(), self.prefix);
        let start = match &self.from {
            Some(from) if from.as_str() > self.key.as_str() => from,
            _ => &self.key,
        };
        RangeBounds {
            key: &self.key,
            start,
            end,
        }
    }

    /// The most keys a reply may hold.
    pub fn page_limit(&self) -> usize {
        let limit = match self.limit {
            Some(0) | None => MAX_RANGE_LIMIT,
            Some(n) => n.min(MAX_RANGE_LIMIT),
        };
        limit as usize
    }
}

/// Where a range starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeBounds<'a> {
    /// The request's `key`.
    pub key: &'a str,
    /// The first key this page may hold: `key`, or `from` past it.
    pub start: &'a str,
    pub end: RangeEnd<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Only `key` itself.
    Key,
    /// Keys that start with this.
    Prefix(&'a str),
    /// Keys before this one.
    Before(&'a str),
    Unbounded,
}

impl<'a> RangeEnd<'a> {
    /// Where a range from `key` ends, given its `range_end` and `prefix`
    /// (as `RANGE` names them).
    pub fn of(key: &'a str, range_end: Option<&'a str>, prefix: bool) -> RangeEnd<'a> {
        match (range_end, prefix) {
            (Some(""), _) => RangeEnd::Unbounded,
            (Some(end), _) => RangeEnd::Before(end),
            (None, true) => RangeEnd::Prefix(key),
            (None, false) => RangeEnd::Key,
        }
    }
}

impl RangeBounds<'_> {
    /// Whether `k`, at or after `start`, is still in the range.
    pub fn admits(&self, k: &str) -> bool {
        match self.end {
            RangeEnd::Key => k == self.key,
            RangeEnd::Prefix(p) => k.starts_with(p),
            RangeEnd::Before(end) => k < end,
            RangeEnd::Unbounded => true,
        }
    }
}

impl RequestPayload for RangeRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key)?;
        if let Some(end) = &self.range_end {
            check_key(end)?;
            if self.prefix {
                return Err(InvalidRequest::PrefixAndRangeEnd);
            }
        }
        if let Some(from) = &self.from {
            check_key(from)?;
        }
        if self.keys_only && self.count_only {
            return Err(InvalidRequest::KeysOnlyAndCountOnly);
        }
        Ok(())
    }
}

/// `RANGE`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeReply {
    /// In key order; empty with `count_only`.
    pub kvs: Vec<KeyValue>,
    /// How many keys the whole range holds (from `key`, not only this page
    /// or from `from`), that the user may read.
    pub count: u64,
    /// Keys after this page are left out: ask again with `from: next_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_key: Option<String>,
    /// The revision the keys are at: the request's `rev`, or the current
    /// revision (page through a range with `rev` set to the first page's
    /// to see it at one revision).
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_key_prefix_range_end_and_from() {
        let mut r = RangeRequest {
            key: "b".into(),
            ..RangeRequest::default()
        };
        let b = r.bounds();
        assert!(b.admits("b") && !b.admits("ba"));
        r.prefix = true;
        let b = r.bounds();
        assert!(b.admits("ba") && !b.admits("c"));
        r.prefix = false;
        r.range_end = Some("d".into());
        let b = r.bounds();
        assert!(b.admits("c") && !b.admits("d"));
        r.range_end = Some(String::new());
        assert!(r.bounds().admits("zzz"));
        r.from = Some("c".into());
        assert_eq!(r.bounds().start, "c");
        r.from = Some("a".into());
        assert_eq!(r.bounds().start, "b", "from before key starts at key");
    }

    #[test]
    fn limits_are_cut_to_the_maximum_and_conflicting_options_refused() {
        let mut r = RangeRequest::prefix("");
        assert_eq!(r.page_limit(), MAX_RANGE_LIMIT as usize);
        r.limit = Some(5);
        assert_eq!(r.page_limit(), 5);
        r.limit = Some(u64::MAX);
        assert_eq!(r.page_limit(), MAX_RANGE_LIMIT as usize);
        r.range_end = Some("z".into());
        assert_eq!(r.validate(), Err(InvalidRequest::PrefixAndRangeEnd));
        let both = RangeRequest {
            keys_only: true,
            count_only: true,
            ..RangeRequest::default()
        };
        assert_eq!(both.validate(), Err(InvalidRequest::KeysOnlyAndCountOnly));
        let long = RangeRequest {
            from: Some("x".repeat(crate::MAX_KEY_BYTES + 1)),
            ..RangeRequest::default()
        };
        assert!(matches!(
            long.validate(),
            Err(InvalidRequest::KeyTooLong { .. })
        ));
        let keys = crate::KeysRequest {
            prefix: String::new(),
            from: Some("x".repeat(crate::MAX_KEY_BYTES + 1)),
        };
        assert!(matches!(
            keys.validate(),
            Err(InvalidRequest::KeyTooLong { .. })
        ));
    }
}
