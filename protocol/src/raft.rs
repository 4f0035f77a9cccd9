//! The Raft RPCs that nodes exchange, and the log entry they carry.
//!
//! These are plain data: the Raft core in `poncho-server` consumes and produces
//! them, and the event loop frames them as JSON Lines on the wire. Field names
//! follow Figure 2 of the Raft paper where one exists.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::table::RaftMessage;

/// A node's identity in the cluster. Ids are small positive integers chosen by
/// the operator (`--id`); 0 is never a valid id.
pub type NodeId = u64;

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    #[serde(default)]
    pub kind: EntryKind,
    /// The command, opaque to Raft. Empty for a no-op. Shared, so the copies
    /// an entry needs (log, messages to each follower, apply) cost no copying.
    ///
    /// On the wire it is either a JSON string holding the text, or (what
    /// [`AppendEntries::write_payload`] sends for a command, which is a JSON
    /// object) the object itself, so that neither end escapes or unescapes
    /// it. Both read back as the same text.
    #[serde(default, deserialize_with = "data_from_wire")]
    pub data: Arc<str>,
}

impl Entry {
    /// An approximation of the entry's size on the wire and on disk, used to
    /// bound batches. Counts the payload plus a fixed overhead for the header.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 32
    }

    /// Whether `data` goes on the wire as the JSON object it holds. Only a
    /// command's data that looks like an object does: the node's commands are
    /// JSON objects by construction, and one received from a peer was parsed
    /// as one (`data_from_wire` checks it, in either form). Anything else is
    /// sent as a string, as before.
    fn data_is_object(&self) -> bool {
        self.kind == EntryKind::Command && self.data.starts_with('{') && self.data.ends_with('}')
    }
}

/// An entry's `data` as sent: a string (its contents), or a JSON object (its
/// text, byte for byte). A malformed object fails the whole message, as any
/// malformed JSON does.
fn data_from_wire<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    use serde::de::Error;
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => Ok(Arc::from(text)),
        Some(b'"') => {
            let data = serde_json::from_str::<Arc<str>>(text).map_err(D::Error::custom)?;
            // What looks like an object is sent on as one (`data_is_object`),
            // so it must be one: else this node, once leader, would send
            // lines no follower can read, and replication would stop there.
            let looks_like_object = data.starts_with('{') && data.ends_with('}');
            if looks_like_object
                && serde_json::from_str::<&serde_json::value::RawValue>(&data).is_err()
            {
                return Err(D::Error::custom(
                    "an entry's data string in braces must hold a valid JSON object",
                ));
            }
            Ok(data)
        }
        _ => Err(D::Error::custom(
            "an entry's data must be a string or a JSON object",
        )),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    /// A client command for the state machine.
    #[default]
    Command,
    /// Appended by every new leader at the start of its term (Raft thesis 6.4):
    /// committing it commits everything before it and lets the leader learn its
    /// commit index.
    Noop,
    /// A configuration (a [`crate::Membership`] as JSON): who votes, who
    /// learns, and their addresses. It takes effect on every node as soon
    /// as it is in the node's log, committed or not (Raft thesis 4.1).
    Config,
}

/// AppendEntries (Figure 2), also used as the heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    pub term: u64,
    pub leader_id: NodeId,
    pub prev_log_index: u64,
    pub prev_log_term: u64,
    #[serde(default)]
    pub entries: Vec<Entry>,
    pub leader_commit: u64,
    /// The leader's ReadIndex round when it sent this message. A reply in the
    /// same term echoes it and so confirms the leader was still leader then.
    #[serde(default)]
    pub read_round: u64,
}

impl AppendEntries {
    /// Appends this message's payload as JSON: what serde writes, except that
    /// a command's data is embedded as the object it is instead of a string
    /// (see [`Entry::data`]). Escaping every quote of every command for each
    /// follower, and unescaping it again on the other side, cost more than
    /// anything else in sending entries.
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Every field, by name, so that a new one cannot be left out here.
        let AppendEntries {
            term,
            leader_id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            read_round,
        } = self;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            r#"{{"term":{term},"leader_id":{leader_id},"prev_log_index":{prev_log_index},"prev_log_term":{prev_log_term},"entries":["#
        );
        for (i, entry) in entries.iter().enumerate() {
            let Entry {
                index,
                term,
                kind,
                data,
            } = entry;
            let kind = match kind {
                EntryKind::Command => "COMMAND",
                EntryKind::Noop => "NOOP",
                EntryKind::Config => "CONFIG",
            };
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                r#"{comma}{{"index":{index},"term":{term},"kind":"{kind}","data":"#
            );
            if entry.data_is_object() {
                out.extend_from_slice(data.as_bytes());
            } else {
                serde_json::to_writer(&mut *out, &**data).expect("a string serializes");
            }
            out.push(b'}');
        }
        let _ = write!(
            out,
            r#"],"leader_commit":{leader_commit},"read_round":{read_round}}}"#
        );
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesReply {
    /// The replier's current term (a leader that sees a higher one steps down).
    pub term: u64,
    /// The `term` of the request this answers. The leader takes the reply as
    /// an answer (progress, read rounds) only if this is its current term: a
    /// reply to a message of an earlier term says nothing about this one.
    pub request_term: u64,
    pub success: bool,
    /// On success: the follower's log matches the leader's up to here.
    /// On failure: the `prev_log_index` of the request that was rejected, so the
    /// leader can tell a stale rejection from a current one.
    pub index: u64,
    /// On failure: the term of the follower's entry at `prev_log_index`, if it
    /// has one (0 if its log is shorter).
    #[serde(default)]
    pub conflict_term: u64,
    /// On failure: the first index the leader should try next. With a
    /// `conflict_term` this is the follower's first entry of that term, else
    /// the end of the follower's log + 1 (the fast backup of section 5.3).
    #[serde(default)]
    pub conflict_index: u64,
    /// Echo of the request's `read_round`.
    #[serde(default)]
    pub read_round: u64,
}

/// RequestVote (Figure 2), also the PreVote request (thesis 9.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// For a pre-vote: the term the candidate would campaign in, not its own.
    pub term: u64,
    pub candidate_id: NodeId,
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// A pre-vote changes no state on the voter (thesis 9.6).
    #[serde(default)]
    pub pre_vote: bool,
    /// Sent after a TimeoutNow: voters must not ignore it because they heard
    /// from the current leader recently (thesis 3.10).
    #[serde(default)]
    pub leader_transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteReply {
    pub term: u64,
    /// The `term` of the request this answers, so a candidate counts only
    /// answers to the election it is running.
    pub request_term: u64,
    pub vote_granted: bool,
    #[serde(default)]
    pub pre_vote: bool,
}

/// Leader transfer (thesis 3.10): the recipient starts an election at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    pub term: u64,
    pub leader_id: NodeId,
}

/// A client's lease keepalive that reached a follower, forwarded to the
/// leader (issue 14). Not Raft's: the node handles it, the core never sees
/// it. `token` matches the reply to the client waiting at the follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepalive {
    pub term: u64,
    pub token: u64,
    pub id: u64,
}

/// The leader's answer to a [`LeaseKeepalive`]: the lease's TTL if it was
/// kept alive, `None` if no such lease exists; `leader: false` if the
/// recipient does not lead (the follower then answers `NO_LEADER`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepaliveReply {
    pub term: u64,
    pub token: u64,
    pub id: u64,
    pub ttl: Option<u64>,
    pub leader: bool,
}

/// One chunk of a snapshot, streamed by the leader to a follower that needs
/// entries the leader has already compacted away. Chunks are whole lines of
/// the snapshot file, sent one at a time: the next is sent only when the
/// follower acknowledges this one (flow control, bounded memory both sides).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    pub term: u64,
    pub leader_id: NodeId,
    pub last_included_index: u64,
    pub last_included_term: u64,
    /// Byte offset of `data` in the snapshot file.
    pub offset: u64,
    pub data: String,
    /// This chunk ends the file.
    pub done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotReply {
    pub term: u64,
    /// The `term` of the chunk this answers (see `AppendEntriesReply`).
    pub request_term: u64,
    pub last_included_index: u64,
    /// The byte offset the follower expects next.
    pub next_offset: u64,
    /// The snapshot is installed (or the follower already had everything in
    /// it): the follower's log now matches the leader's up to
    /// `last_included_index`.
    pub installed: bool,
}

impl RaftMessage {
    /// The sender's term, carried by every Raft message.
    pub fn term(&self) -> u64 {
        match self {
            RaftMessage::AppendEntries(m) => m.term,
            RaftMessage::AppendEntriesReply(m) => m.term,
            RaftMessage::RequestVote(m) => m.term,
            RaftMessage::RequestVoteReply(m) => m.term,
            RaftMessage::TimeoutNow(m) => m.term,
            RaftMessage::InstallSnapshot(m) => m.term,
            RaftMessage::InstallSnapshotReply(m) => m.term,
            RaftMessage::LeaseKeepalive(m) => m.term,
            RaftMessage::LeaseKeepaliveReply(m) => m.term,
        }
    }

    /// The reply that refuses this request, sent by a node at `term`: not a
    /// success, not a vote, nothing installed; it names the request's term,
    /// so a sender that has since moved on does not take it as an answer.
    /// None for replies and TimeoutNow, which are never answered.
    pub fn refusal(&self, term: u64) -> Option<RaftMessage> {
        let request_term = self.term();
        Some(match self {
            RaftMessage::AppendEntries(m) => RaftMessage::AppendEntriesReply(AppendEntriesReply {
                term,
                request_term,
                success: false,
                index: m.prev_log_index,
                conflict_term: 0,
                conflict_index: 0,
                read_round: m.read_round,
            }),
            RaftMessage::RequestVote(m) => RaftMessage::RequestVoteReply(RequestVoteReply {
                term,
                request_term,
                vote_granted: false,
                pre_vote: m.pre_vote,
            }),
            RaftMessage::InstallSnapshot(m) => {
                RaftMessage::InstallSnapshotReply(InstallSnapshotReply {
                    term,
                    request_term,
                    last_included_index: m.last_included_index,
                    next_offset: 0,
                    installed: false,
                })
            }
            RaftMessage::RequestVoteReply(_)
            | RaftMessage::AppendEntriesReply(_)
            | RaftMessage::InstallSnapshotReply(_)
            | RaftMessage::TimeoutNow(_)
            | RaftMessage::LeaseKeepalive(_)
            | RaftMessage::LeaseKeepaliveReply(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_entries_round_trips_through_json_with_its_wire_name() {
        let msg = RaftMessage::AppendEntries(AppendEntries {
            term: 3,
            leader_id: 1,
            prev_log_index: 7,
            prev_log_term: 2,
            entries: vec![Entry {
                index: 8,
                term: 3,
                kind: EntryKind::Noop,
                data: Arc::from(""),
            }],
            leader_commit: 7,
            read_round: 0,
        });
        let line = serde_json::to_string(&msg).unwrap();
        assert!(line.starts_with(r#"{"msg_type":"APPEND_ENTRY","payload":{"term":3"#));
        let back: RaftMessage = serde_json::from_str(&line).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn a_probe_with_only_the_required_fields_parses() {
        let line = r#"{"msg_type":"REQUEST_VOTE","payload":{"term":0,"candidate_id":9,"last_log_index":0,"last_log_term":0}}"#;
        let msg: RaftMessage = serde_json::from_str(line).unwrap();
        assert_eq!(msg.term(), 0);
        assert!(matches!(
            msg,
            RaftMessage::RequestVote(RequestVote {
                pre_vote: false,
                ..
            })
        ));
    }

    fn entry(index: u64, kind: EntryKind, data: &str) -> Entry {
        Entry {
            index,
            term: 3,
            kind,
            data: Arc::from(data),
        }
    }

    fn sent(message: &AppendEntries) -> String {
        let mut out = Vec::new();
        crate::envelope::encode_peer(
            &mut out,
            Some(1),
            Some(9),
            &RaftMessage::AppendEntries(message.clone()),
        );
        String::from_utf8(out).unwrap()
    }

    fn received(line: &str) -> Result<RaftMessage, String> {
        match crate::envelope::decode_request(line.trim_end().as_bytes()) {
            Ok(crate::envelope::Request::Peer { src_id, message }) => {
                assert_eq!(src_id, Some(1));
                Ok(message)
            }
            Ok(other) => panic!("not a peer message: {other:?}"),
            Err(e) => Err(e.error.message),
        }
    }

    #[test]
    fn a_commands_data_is_sent_as_the_object_it_holds_and_read_back_byte_for_byte() {
        let command = r#"{"op":{"type":"SET","key":"k \"q\"","value":"v\n"},"client_id":6,"seq":4,"ts_ms":17}"#;
        let message = AppendEntries {
            term: 3,
            leader_id: 1,
            prev_log_index: 7,
            prev_log_term: 2,
            entries: vec![
                entry(8, EntryKind::Noop, ""),
                entry(9, EntryKind::Command, command),
                // Not an object: sent as a string, as serde would.
                entry(10, EntryKind::Command, "plain \"text\""),
                // An object's text in a no-op stays a string too.
                entry(11, EntryKind::Noop, "{}"),
            ],
            leader_commit: 7,
            read_round: 5,
        };
        let line = sent(&message);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(
            line.contains(&format!(r#""kind":"COMMAND","data":{command}}}"#)),
            "the command is embedded, not escaped: {line}"
        );
        assert_eq!(
            received(&line),
            Ok(RaftMessage::AppendEntries(message.clone()))
        );

        // The same JSON as serde's encoding, but for the embedded objects.
        let mut ours: serde_json::Value = serde_json::from_str(&line).unwrap();
        ours["payload"]["entries"][1]["data"] = serde_json::Value::String(command.to_string());
        let serde = serde_json::json!({
            "msg_type": "APPEND_ENTRY",
            "req_id": 9,
            "src_id": 1,
            "payload": serde_json::to_value(&message).unwrap(),
        });
        assert_eq!(ours, serde);
    }

    #[test]
    fn an_entrys_data_may_come_as_a_string_but_not_as_other_json_or_a_broken_object() {
        let line = |data: &str| {
            format!(
                r#"{{"msg_type":"APPEND_ENTRY","src_id":1,"payload":{{"term":3,"leader_id":1,"prev_log_index":0,"prev_log_term":0,"entries":[{{"index":1,"term":3,"data":{data}}}],"leader_commit":0}}}}"#
            )
        };
        let data_of = |message: RaftMessage| match message {
            RaftMessage::AppendEntries(m) => m.entries[0].data.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            data_of(received(&line(r#""{\"a\":1}""#)).unwrap()),
            r#"{"a":1}"#
        );
        assert_eq!(
            data_of(received(&line(r#"{"a": 1}"#)).unwrap()),
            r#"{"a": 1}"#
        );
        // A string in braces would be sent on as an object: it must be one.
        for bad in ["17", "[1]", "null", r#"{"a":}"#, r#""{not json}""#] {
            let error = received(&line(bad)).unwrap_err();
            // A broken object already fails the envelope; the rest the payload.
            assert!(
                error.contains("bad APPEND_ENTRY payload") || error.contains("not valid JSON"),
                "{bad}: {error}"
            );
        }
    }
}
