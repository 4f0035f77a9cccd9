//! Runs a [`Command`] against the cluster and renders its result three ways:
//! `plain` for scripts and one-shot use, `pretty` for people at the prompt,
//! and `json` fields for `--json`.

use std::time::{Duration, Instant};

use poncho_protocol::{
    AppendEntries, CasReply, CasRequest, ClientRequest, DeleteReply, DeleteRequest, ErrorCode,
    ErrorReply, GetReply, GetRequest, KeysReply, KeysRequest, RaftMessage, RequestVote, SetReply,
    SetRequest, StatusReply,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::client::{status_of, ClientError, ClusterClient, Reply, Route};
use crate::command::{help_text, quote, quote_always, Command};

/// A command that worked.
#[derive(Debug, Default)]
pub struct Done {
    /// What `--json` prints besides `ok` and `command`.
    pub json: Map<String, Value>,
    /// For scripts: one line (a table for `status` and `help`).
    pub plain: String,
    /// For people at the prompt.
    pub pretty: String,
}

impl Done {
    fn new(plain: impl Into<String>, pretty: impl Into<String>, json: Value) -> Done {
        Done {
            json: match json {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            plain: plain.into(),
            pretty: pretty.into(),
        }
    }
}

/// A command that did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not a command, or the wrong arguments: exit status 2.
    Usage(String),
    /// The cluster said no, or could not be reached in time: exit status 1.
    Call(ClientError),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Call(_) => 1,
        }
    }

    pub fn code(&self) -> String {
        match self {
            Failure::Usage(_) => "USAGE".into(),
            Failure::Call(e) => e.code(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Usage(m) => m.clone(),
            Failure::Call(e) => e.message(),
        }
    }

    /// One line for people: `usage: ...` or `CODE: message`.
    pub fn text(&self) -> String {
        match self {
            Failure::Usage(m) => m.clone(),
            Failure::Call(e) => format!("{}: {}", e.code(), e.message()),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Call(e)
    }
}

pub type Outcome = Result<Done, Failure>;

fn payload<T: DeserializeOwned>(reply: Reply) -> Result<T, Failure> {
    serde_json::from_value(reply.envelope.payload).map_err(|e| {
        Failure::Call(ClientError::Protocol(format!(
            "unexpected {} reply from {}: {e}",
            reply.envelope.msg_type, reply.addr
        )))
    })
}

/// The value as a script prints it: as it is, unless it holds a control
/// character (a newline would break one line per command), then quoted.
pub fn plain_value(v: &str) -> String {
    if v.chars().any(char::is_control) {
        quote_always(v)
    } else {
        v.to_string()
    }
}

fn pretty_value(v: &Option<String>) -> String {
    match v {
        Some(v) => quote_always(v),
        None => "(nil)".to_string(),
    }
}

pub fn execute(client: &mut ClusterClient, command: &Command) -> Outcome {
    match command {
        Command::Set { key, value } => {
            let r: SetReply = payload(client.write(|session| {
                ClientRequest::Set(SetRequest {
                    key: key.clone(),
                    value: value.clone(),
                    session,
                })
            })?)?;
            Ok(Done::new(
                "OK",
                "OK",
                json!({"key": r.key, "index": r.index}),
            ))
        }
        Command::Get { key } => {
            let request = ClientRequest::Get(GetRequest {
                key: key.clone(),
                stale: false,
            });
            let r: GetReply = payload(client.request(&request, Route::Leader)?)?;
            let plain = r.value.as_deref().map_or("(nil)".into(), plain_value);
            Ok(Done::new(
                plain,
                pretty_value(&r.value),
                json!({"key": r.key, "value": r.value}),
            ))
        }
        Command::Delete { key } => {
            let r: DeleteReply = payload(client.write(|session| {
                ClientRequest::Delete(DeleteRequest {
                    key: key.clone(),
                    session,
                })
            })?)?;
            let (plain, pretty) = if r.deleted {
                ("1", "1 (deleted)")
            } else {
                ("0", "0 (no such key)")
            };
            Ok(Done::new(
                plain,
                pretty,
                json!({"key": r.key, "deleted": r.deleted, "index": r.index}),
            ))
        }
        Command::Cas {
            key,
            expected,
            value,
        } => {
            let r: CasReply = payload(client.write(|session| {
                ClientRequest::Cas(CasRequest {
                    key: key.clone(),
                    expected: expected.clone(),
                    value: value.clone(),
                    session,
                })
            })?)?;
            let pretty = if r.swapped {
                format!("1 (swapped; now {})", pretty_value(&r.current))
            } else {
                format!("0 (not swapped; the value is {})", pretty_value(&r.current))
            };
            Ok(Done::new(
                if r.swapped { "1" } else { "0" },
                pretty,
                json!({"key": r.key, "swapped": r.swapped, "current": r.current, "index": r.index}),
            ))
        }
        Command::Keys { prefix } => {
            let request = ClientRequest::Keys(KeysRequest {
                prefix: prefix.clone(),
            });
            let r: KeysReply = payload(client.request(&request, Route::Leader)?)?;
            let plain = r
                .keys
                .iter()
                .map(|k| quote(k))
                .collect::<Vec<_>>()
                .join(" ");
            let pretty = if r.keys.is_empty() {
                "(empty)".to_string()
            } else {
                let width = r.keys.len().to_string().len();
                r.keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{:>width$}) {}", i + 1, quote_always(k)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Done::new(plain, pretty, json!({"keys": r.keys})))
        }
        Command::Health => {
            let reply = client.request(&ClientRequest::Healthcheck, Route::Here)?;
            let addr = reply.addr.clone();
            let text = match &reply.envelope.payload {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(Done::new(
                text.clone(),
                format!("{text} ({addr})"),
                json!({"node": addr, "health": text}),
            ))
        }
        Command::Status => status(client),
        Command::Leader => leader(client),
        Command::Connect { addr } => {
            client.connect_to(addr)?;
            let role = client
                .quiet_status()
                .map_or("unknown role".to_string(), |s| s.role);
            Ok(Done::new(
                "OK",
                format!("connected to {addr} ({role})"),
                json!({"node": addr, "role": role}),
            ))
        }
        Command::Append | Command::Vote => {
            let message = if *command == Command::Append {
                RaftMessage::AppendEntries(AppendEntries {
                    term: 0,
                    leader_id: 0,
                    prev_log_index: 0,
                    prev_log_term: 0,
                    entries: Vec::new(),
                    leader_commit: 0,
                    read_round: 0,
                })
            } else {
                RaftMessage::RequestVote(RequestVote {
                    term: 0,
                    candidate_id: 0,
                    last_log_index: 0,
                    last_log_term: 0,
                    pre_vote: false,
                    leader_transfer: false,
                })
            };
            let reply = client.probe(&message)?;
            if let Some(e) = reply.envelope.error() {
                return Err(Failure::Call(ClientError::Server(e)));
            }
            let pretty = format!("{}  (from {})", reply.line, reply.addr);
            Ok(Done::new(
                reply.line.clone(),
                pretty,
                json!({
                    "node": reply.addr,
                    "msg_type": reply.envelope.msg_type,
                    "payload": reply.envelope.payload,
                }),
            ))
        }
        Command::Help { topic } => {
            let text = help_text(topic.as_deref());
            Ok(Done::new(text.clone(), text.clone(), json!({"text": text})))
        }
        Command::Verbose(setting) => {
            client.verbose = setting.unwrap_or(!client.verbose);
            let text = if client.verbose {
                format!(
                    "verbose on: -> is sent, <- is received, -- is what the shell does; \
                     writes carry {}",
                    match client.client_id() {
                        Some(id) => format!("client_id {id}"),
                        None => "the client_id the first write registers".to_string(),
                    }
                )
            } else {
                "verbose off".to_string()
            };
            Ok(Done::new(
                if client.verbose { "on" } else { "off" },
                text,
                json!({"verbose": client.verbose}),
            ))
        }
        Command::Exit => Ok(Done::default()),
    }
}

/// One row of the status table.
struct Row {
    id: u64,
    addr: String,
    status: Result<StatusReply, String>,
}

fn status(client: &mut ClusterClient) -> Outcome {
    let started = Instant::now();
    let here: StatusReply = payload(client.request(&ClientRequest::Status, Route::Here)?)?;
    let mut members: Vec<(u64, String)> = here
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    if !members.iter().any(|(id, _)| *id == here.id) {
        members.push((here.id, here.addr.clone()));
        members.sort();
    }
    let left = client.timeout.saturating_sub(started.elapsed());
    let per_node = left.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let verbose = client.verbose;
    // Ask the others in parallel, so a node that hangs costs one timeout.
    let rows: Vec<(Row, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|(id, addr)| {
                let here = (*id == here.id).then(|| here.clone());
                s.spawn(move || match here {
                    Some(h) => (
                        Row {
                            id: *id,
                            addr: addr.clone(),
                            status: Ok(h),
                        },
                        Vec::new(),
                    ),
                    None => {
                        let (status, wire) = status_of(addr, per_node);
                        (
                            Row {
                                id: *id,
                                addr: addr.clone(),
                                status,
                            },
                            wire,
                        )
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&members)
            .map(|(h, (id, addr))| {
                h.join().unwrap_or_else(|_| {
                    (
                        Row {
                            id: *id,
                            addr: addr.clone(),
                            status: Err("the query failed".into()),
                        },
                        Vec::new(),
                    )
                })
            })
            .collect()
    });
    if verbose {
        for (_, wire) in &rows {
            for line in wire {
                eprintln!("{line}");
            }
        }
    }
    let rows: Vec<Row> = rows.into_iter().map(|(r, _)| r).collect();
    let leader = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term);
    let lag = |s: &StatusReply| leader.map(|l| l.commit_index.saturating_sub(s.last_applied));

    let header = ["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut nodes = Vec::new();
    for row in &rows {
        match &row.status {
            Ok(s) => {
                // A node whose disk is full says so where it is seen first.
                let role = match s.storage.as_str() {
                    "ok" => s.role.clone(),
                    disk => format!("{} ({})", s.role, disk.to_uppercase()),
                };
                table.push(vec![
                    row.id.to_string(),
                    row.addr.clone(),
                    role,
                    s.term.to_string(),
                    s.commit_index.to_string(),
                    s.last_applied.to_string(),
                    lag(s).map_or("-".into(), |l| l.to_string()),
                ]);
                nodes.push(json!({
                    "id": row.id, "addr": row.addr, "reachable": true, "role": s.role,
                    "term": s.term, "commit_index": s.commit_index,
                    "last_applied": s.last_applied, "lag": lag(s),
                    "leader_id": s.leader_id, "storage": s.storage,
                    "storage_error": s.storage_error,
                }));
            }
            Err(e) => {
                let mut cells = vec![row.id.to_string(), row.addr.clone(), "unreachable".into()];
                cells.extend(vec!["-".to_string(); 4]);
                table.push(cells);
                nodes.push(json!({
                    "id": row.id, "addr": row.addr, "reachable": false, "error": e,
                }));
            }
        }
    }
    let text = render_table(&table);
    Ok(Done::new(text.clone(), text, json!({"nodes": nodes})))
}

fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asks the node we talk to who leads, until one is known or the deadline;
/// a node that knows none is asked again after the others.
fn leader(client: &mut ClusterClient) -> Outcome {
    let timeout = client.timeout;
    let deadline = Instant::now() + timeout;
    let mut no_leader: Option<Failure> = None;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(
                no_leader.unwrap_or(Failure::Call(ClientError::Unreachable(format!(
                    "gave up after {timeout:?}"
                )))),
            );
        }
        client.timeout = left;
        let s: StatusReply = match client.request(&ClientRequest::Status, Route::Here) {
            Ok(r) => match payload(r) {
                Ok(s) => s,
                Err(e) => break Err(e),
            },
            Err(ClientError::Interrupted) => break Err(ClientError::Interrupted.into()),
            Err(e) => break Err(no_leader.unwrap_or(e.into())),
        };
        if let (Some(id), Some(addr)) = (s.leader_id, s.leader_addr.clone()) {
            break Ok(Done::new(
                addr.clone(),
                format!("node {id} at {addr}"),
                json!({"id": id, "addr": addr}),
            ));
        }
        no_leader = Some(Failure::Call(ClientError::Server(ErrorReply::new(
            ErrorCode::NoLeader,
            format!(
                "node {} at {} knows no leader (gave up after {timeout:?})",
                s.id, s.addr
            ),
        ))));
        // This node may be cut off from the others: ask the next one.
        client.rotate();
        std::thread::sleep(Duration::from_millis(100).min(left));
    };
    client.timeout = timeout;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_on_one_line() {
        assert_eq!(plain_value("hello world"), "hello world");
        assert_eq!(plain_value("two\nlines"), "\"two\\nlines\"");
        assert_eq!(plain_value(""), "");
    }

    #[test]
    fn tables_line_up() {
        let rows = vec![
            vec!["ID".to_string(), "ROLE".to_string(), "LAG".to_string()],
            vec!["1".to_string(), "leader".to_string(), "0".to_string()],
            vec!["12".to_string(), "unreachable".to_string(), "-".to_string()],
        ];
        assert_eq!(
            render_table(&rows),
            "ID  ROLE         LAG\n1   leader       0\n12  unreachable  -"
        );
    }

    #[test]
    fn failures_have_exit_codes_and_one_line_texts() {
        let u = Failure::Usage("usage: get KEY".into());
        assert_eq!(
            (u.exit_code(), u.code(), u.text()),
            (2, "USAGE".into(), "usage: get KEY".into())
        );
        let c = Failure::Call(ClientError::Unreachable("no node answered".into()));
        assert_eq!(c.exit_code(), 1);
        assert_eq!(c.text(), "UNREACHABLE: no node answered");
    }
}
