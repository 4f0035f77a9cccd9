//! Watches (issue 14): `WATCH`, a stream of the changes to a key, a prefix
//! or a range, on the connection that asked.
//!
//! A client creates a watch with `{"op": "create", ...}` and gets its
//! `watch_id` (numbered per connection from 1) in the reply. From then on
//! the node sends, without a `req_id`, `WATCH` messages for that watch:
//! every change to a key of the range, in revision order, one message per
//! revision (so the changes of one transaction come together), none
//! missing and none twice. A watch starts at `start_revision` (the changes
//! at that revision and after), or by default just after the node's current
//! revision; one from a revision the node's history no longer holds is
//! refused with `COMPACTED` and the oldest revision it still holds. With
//! `list`, the watch first sends every key of the range as it is at the
//! node's current revision (in `kvs` pages, the last without `more`), then
//! every change after that revision: a consistent list and a watch in one
//! request. Any node serves watches from its applied state, followers too,
//! so a client that loses its node resumes on any other from the revision
//! after the last it saw, and sees no gap and no duplicate.
//!
//! A watch ends when the client cancels it (`{"op": "cancel"}`), when its
//! connection closes, or when the node cancels it: its client does not read
//! fast enough and the connection's buffer of unsent messages fills
//! (`SLOW_WATCHER`), or the node's history lost revisions the watch had not
//! been sent yet (`COMPACTED`). A cancellation by the node is a `WATCH`
//! message with `canceled` and the error, and says from which revision to
//! resume.

use serde::{Deserialize, Serialize};

use crate::client::{check_key, ErrorReply, InvalidRequest, RequestPayload};
use crate::kv::{KeyValue, RangeRequest};

/// The most watches one connection holds at once.
pub const MAX_WATCHES_PER_CONNECTION: usize = 1_000;

/// `WATCH`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WatchRequest {
    Create(WatchCreate),
    Cancel {
        watch_id: u64,
    },
    /// Asks for the revision up to which every watch of the connection has
    /// been sent every change (a progress notification, on demand).
    Progress,
}

/// A new watch: which keys, from when, and with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WatchCreate {
    pub key: String,
    /// Every key that starts with `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
    /// The keys in `[key, range_end)` (`""`: no end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// The first revision whose changes it gets (0 or absent: the node's
    /// current revision + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_revision: Option<u64>,
    /// Each change carries the key as it was before it (`prev_kv`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev_kv: bool,
    /// While the watch has nothing to send, a message with no events and
    /// the node's revision every `--watch-progress-ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_notify: bool,
    /// The range's keys first, at the node's current revision, then the
    /// changes after it (`start_revision` must then be absent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list: bool,
}

impl WatchCreate {
    /// The range it watches, named as a `RANGE` names it.
    pub fn range(&self) -> RangeRequest {
        RangeRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            prefix: self.prefix,
            ..RangeRequest::default()
        }
    }
}

impl RequestPayload for WatchRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            WatchRequest::Create(c) => {
                check_key(&c.key)?;
                if c.list && c.start_revision.is_some_and(|r| r != 0) {
                    return Err(InvalidRequest::ListAndStartRevision);
                }
                c.range().validate()
            }
            WatchRequest::Cancel { .. } | WatchRequest::Progress => Ok(()),
        }
    }
}

/// What changed a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Put,
    Delete,
}

/// One change to one key. For a put, `kv` is the key as written; for a
/// delete, `kv` holds the key and the revision that deleted it as
/// `mod_revision` (its value absent, version 0, as etcd's). `prev_kv` is
/// the key before the change, if it existed and the watch asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub kv: KeyValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// A `WATCH` message: the reply to a request (with its `req_id`), or,
/// without one, a watch's news: its changes at one revision (`events`), a
/// page of its list (`kvs`), a progress notification (neither, only
/// `revision`), or its cancellation (`canceled` with `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WatchReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_id: Option<u64>,
    /// Created, in reply to `create`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// Ended: in reply to `cancel`, or the node ended it (see `error`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceled: bool,
    /// The revision of the events; for a progress notification, a reply or
    /// a cancellation, the revision up to which everything was sent (resume
    /// from the one after it).
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// A page of the range's keys (a `list` watch), at `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvs: Option<Vec<KeyValue>>,
    /// More list pages follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// Why the node canceled the watch (`SLOW_WATCHER`, `COMPACTED`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

/// Appends a watch's changes at `revision` as a `WATCH` message, with its
/// `events` already encoded as a JSON array (`events_json`): the line
/// [`crate::encode_reply`] writes for the same [`WatchReply`], for a node
/// that sends one revision's changes to many watches and encodes them once.
pub fn encode_events(out: &mut Vec<u8>, watch_id: u64, revision: u64, events_json: &[u8]) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"msg_type":"WATCH","payload":{{"watch_id":{watch_id},"revision":{revision},"events":"#
    );
    out.extend_from_slice(events_json);
    out.extend_from_slice(b"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_request, ClientRequest, Request};

    #[test]
    fn events_encoded_once_make_the_line_serde_would() {
        let events = vec![Event {
            kind: EventType::Delete,
            kv: KeyValue {
                key: "a \"q\"".into(),
                value: None,
                create_revision: 0,
                mod_revision: 9,
                version: 0,
            },
            prev_kv: None,
        }];
        let reply = WatchReply {
            watch_id: Some(3),
            revision: 9,
            events: events.clone(),
            ..WatchReply::default()
        };
        let mut want = Vec::new();
        crate::encode_reply(&mut want, None, &reply);
        let mut got = Vec::new();
        let json = serde_json::to_vec(&events).expect("json");
        encode_events(&mut got, 3, 9, &json);
        assert_eq!(String::from_utf8(got), String::from_utf8(want));
    }

    fn parse(payload: &str) -> Result<WatchRequest, String> {
        let line = format!(r#"{{"msg_type":"WATCH","payload":{payload}}}"#);
        match decode_request(line.as_bytes()) {
            Ok(Request::Client {
                request: ClientRequest::Watch(w),
                ..
            }) => Ok(w),
            Ok(other) => Err(format!("not a WATCH: {other:?}")),
            Err(e) => Err(e.error.message),
        }
    }

    #[test]
    fn watch_requests_read_and_bad_ones_are_refused() {
        let w =
            parse(r#"{"op":"create","key":"a/","prefix":true,"start_revision":5,"prev_kv":true}"#)
                .expect("parses");
        let WatchRequest::Create(c) = w else {
            panic!("{w:?}")
        };
        assert!(c.prefix && c.prev_kv && !c.list);
        assert_eq!(c.start_revision, Some(5));
        assert_eq!(
            parse(r#"{"op":"cancel","watch_id":3}"#),
            Ok(WatchRequest::Cancel { watch_id: 3 })
        );
        assert_eq!(parse(r#"{"op":"progress"}"#), Ok(WatchRequest::Progress));
        for (payload, why) in [
            (r#"{"op":"create","key":"a","bogus":1}"#, "unknown field"),
            (
                r#"{"op":"create","key":"a","list":true,"start_revision":3}"#,
                "list",
            ),
            (
                r#"{"op":"create","key":"a","prefix":true,"range_end":"b"}"#,
                "not both",
            ),
            (r#"{"op":"nope"}"#, "unknown variant"),
        ] {
            let e = parse(payload).expect_err(payload);
            assert!(e.contains(why), "{payload}: {e}");
        }
    }
}
