//! The state machine's tests, a file per room (`store`, `session`,
//! `command`, `snapshot`, `auth`), driven through `KvStore::apply` as the node drives
//! it; the helpers they share are here.

use std::io;
use std::sync::Arc;

use poncho_protocol::{
    decode_request, CasReply, CasRequest, ClientRequest, DeleteReply, DeleteRequest, Entry,
    EntryKind, ErrorCode, ErrorReply, RegisterClientReply, Request, SessionFields, SetReply,
    SetRequest,
};

use super::session::{session_bytes, Session, SESSION_OVERHEAD_BYTES};
use super::snapshot::{KeyLine, SessionLine};
use super::*;

mod auth;
mod command;
mod lease;
mod revisions;
mod session;
mod snapshot;
mod store;
mod txn;

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn delete(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

fn cas(key: &str, expected: Option<&str>, value: Option<&str>) -> Op {
    Op::Cas {
        key: key.into(),
        expected: expected.map(Into::into),
        value: value.map(Into::into),
    }
}

fn command_entry(index: u64, command: &Command) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Command,
        data: Arc::from(command.encode()),
    }
}

fn noop_entry(index: u64) -> Entry {
    Entry {
        index,
        term: 2,
        kind: EntryKind::Noop,
        data: Arc::from(""),
    }
}

/// Feeds commands to a store, numbering entries after `last_applied`.
struct Feed {
    store: KvStore,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            store: KvStore::new(),
        }
    }

    fn command(&mut self, command: Command) -> ApplyResult {
        let index = self.store.last_applied() + 1;
        let result = self
            .store
            .apply(&command_entry(index, &command))
            .expect("a command entry gives a result");
        self.store.check_session_index();
        result
    }

    fn plain(&mut self, op: Op) -> ApplyResult {
        self.plain_at(op, 0)
    }

    fn plain_at(&mut self, op: Op, ts_ms: u64) -> ApplyResult {
        self.command(Command {
            op,
            client_id: None,
            seq: None,
            user: None,
            ts_ms,
        })
    }

    fn with_session_limits(session_timeout_ms: u64, max_sessions: usize) -> Feed {
        Feed {
            store: KvStore::with_session_limits(session_timeout_ms, max_sessions),
        }
    }

    /// Opens a session at log time `ts_ms`: its id.
    fn register_at(&mut self, ts_ms: u64) -> u64 {
        let index = self.store.last_applied() + 1;
        match self.plain_at(Op::RegisterClient, ts_ms) {
            ApplyResult::Register(r) => {
                assert_eq!(r.client_id, index, "a session's id is its entry's index");
                r.client_id
            }
            other => panic!("REGISTER_CLIENT gave {other:?}"),
        }
    }

    fn register(&mut self) -> u64 {
        self.register_at(0)
    }

    fn session(&mut self, client_id: u64, seq: u64, ts_ms: u64, op: Op) -> ApplyResult {
        self.command(Command {
            op,
            client_id: Some(client_id),
            seq: Some(seq),
            user: None,
            ts_ms,
        })
    }
}

fn set_reply(key: &str, index: u64) -> ApplyResult {
    ApplyResult::Set(SetReply {
        key: key.into(),
        index,
    })
}

fn cas_reply(key: &str, swapped: bool, current: Option<&str>, index: u64) -> ApplyResult {
    ApplyResult::Cas(CasReply {
        key: key.into(),
        swapped,
        current: current.map(Into::into),
        index,
    })
}

fn error_code(result: &ApplyResult) -> ErrorCode {
    match result {
        ApplyResult::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A deterministic mix of every kind of entry: writes with and without
/// sessions, retries, stale sequences, no-ops, garbage, and clock jumps
/// that expire sessions.
fn mixed_log(len: u64) -> Vec<Entry> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seqs = [0u64; 8];
    // Each client's session: the index of its registration (which the
    // entry kinds below sometimes turn into a no-op or garbage, so the
    // client then writes in a session that was never opened).
    let mut ids: [Option<u64>; 8] = [None; 8];
    (1..=len)
        .map(|index| {
            let r = next();
            let key = format!("k{}", r % 13);
            let ts_ms = index * 20_000 + (r % 7) * 1_000; // leaders' clocks jitter
            let mut op = match r % 6 {
                0 => delete(&key),
                5 => Op::Txn(poncho_protocol::Txn {
                    compare: vec![poncho_protocol::Compare {
                        key: key.clone(),
                        target: poncho_protocol::CompareTarget::Version,
                        op: poncho_protocol::CompareOp::Less,
                        value: poncho_protocol::CompareValue::Number(3),
                    }],
                    success: vec![
                        poncho_protocol::TxnOp::Put {
                            key: key.clone(),
                            value: format!("t{}", r % 3),
                            lease: None,
                        },
                        poncho_protocol::TxnOp::Range(poncho_protocol::RangeRequest::prefix("k1")),
                    ],
                    failure: vec![poncho_protocol::TxnOp::Delete {
                        key: "k1".into(),
                        range_end: None,
                        prefix: true,
                    }],
                }),
                1 => cas(&key, Some("v1"), None),
                2 => cas(&key, None, Some(&format!("v{}", r % 3))),
                _ => set(&key, &format!("v{}", r % 3)),
            };
            let client = (r >> 8) as usize % 10;
            let (client_id, seq) = if client >= seqs.len() {
                (None, None)
            } else if ids[client].is_none() || (r >> 32) % 12 == 0 {
                // A new session (sometimes while the old one lives on).
                ids[client] = Some(index);
                seqs[client] = 0;
                op = Op::RegisterClient;
                (None, None)
            } else {
                // Mostly a new seq, sometimes a retry or a stale one.
                match (r >> 16) % 6 {
                    0 => {}
                    1 => seqs[client] = seqs[client].saturating_sub(1),
                    _ => seqs[client] += 1,
                }
                (ids[client], Some(seqs[client].max(1)))
            };
            match (r >> 24) % 20 {
                0 => noop_entry(index),
                1 => Entry {
                    index,
                    term: 1,
                    kind: EntryKind::Command,
                    data: Arc::from("{\"op\":"),
                },
                _ => command_entry(
                    index,
                    &Command {
                        op,
                        client_id,
                        seq,
                        user: None,
                        ts_ms,
                    },
                ),
            }
        })
        .collect()
}

/// The snapshot's lines, as a background thread would write them.
fn snapshot_lines(store: &KvStore) -> Vec<String> {
    let mut lines = Vec::new();
    store
        .snapshot()
        .write_lines(|line| {
            lines.push(line.to_owned());
            Ok(())
        })
        .expect("collecting lines cannot fail");
    lines
}

fn restore_lines(lines: &[String]) -> Result<KvStore, String> {
    KvStore::restore(lines.iter().cloned().map(Ok::<_, std::convert::Infallible>))
}

/// Snapshot to bytes as a file would hold them, then restore through
/// `BufRead::lines`, as a node reading the file would.
fn round_trip(store: &KvStore) -> KvStore {
    use std::io::{BufRead, Write};
    let mut file = Vec::new();
    store
        .snapshot()
        .write_lines(|line| {
            assert!(!line.contains('\n'), "{line}");
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")
        })
        .expect("writing to a Vec cannot fail");
    KvStore::restore(std::io::Cursor::new(file).lines()).expect("a snapshot restores")
}

fn apply_all(store: &mut KvStore, entries: &[Entry]) -> Vec<Option<ApplyResult>> {
    entries.iter().map(|e| store.apply(e)).collect()
}
