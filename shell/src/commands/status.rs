//! `status`: a table of every node, asked in parallel.

use std::time::{Duration, Instant};

use poncho_protocol::{ClientRequest, StatusReply};
use serde_json::{json, Value};

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::{status_as, ClusterClient, Credentials, Route, Tls};
use crate::exec::{payload, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "status",
    aliases: &[],
    args: "",
    summary: "a table of every node: role, term, commit index, last applied, lag",
    details: "LAG is the number of entries the leader has committed that the node has\n\
              not applied yet. Nodes that do not answer are shown as unreachable;\n\
              a node whose disk is full shows (NO_SPACE) after its role.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Status>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status;

impl Action for Status {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let started = Instant::now();
        let here: StatusReply = payload(client.request(&ClientRequest::Status, Route::Here)?)?;
        let left = client.timeout.saturating_sub(started.elapsed());
        let per_node = left.clamp(Duration::from_millis(100), Duration::from_secs(1));
        let rows = ask_all(&here, per_node, client.tls(), client.credentials());
        if client.verbose {
            for (_, wire) in &rows {
                for line in wire {
                    eprintln!("{line}");
                }
            }
        }
        let rows: Vec<Row> = rows.into_iter().map(|(r, _)| r).collect();
        Ok(render(&rows))
    }
}

/// One row of the status table.
struct Row {
    id: u64,
    addr: String,
    status: Result<StatusReply, String>,
}

/// Every member `here` knows (and `here`), with the wire lines of the
/// queries for `--verbose`. The others are asked in parallel, so a node
/// that hangs costs one `per_node` timeout; each connection logs in with
/// `credentials` first, if there are any.
fn ask_all(
    here: &StatusReply,
    per_node: Duration,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Vec<(Row, Vec<String>)> {
    let mut members: Vec<(u64, String)> = here
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    if !members.iter().any(|(id, _)| *id == here.id) {
        members.push((here.id, here.addr.clone()));
        members.sort();
    }
    let row = |id: u64, addr: &str, status| Row {
        id,
        addr: addr.to_string(),
        status,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|(id, addr)| {
                let here = (*id == here.id).then(|| here.clone());
                s.spawn(move || match here {
                    Some(h) => (row(*id, addr, Ok(h)), Vec::new()),
                    None => {
                        let (status, wire) = status_as(addr, per_node, tls, credentials);
                        (row(*id, addr, status), wire)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&members)
            .map(|(h, (id, addr))| {
                h.join().unwrap_or_else(|_| {
                    (row(*id, addr, Err("the query failed".into())), Vec::new())
                })
            })
            .collect()
    })
}

/// The table (plain and pretty alike) and the `--json` nodes.
fn render(rows: &[Row]) -> Done {
    let leader = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term);
    let lag = |s: &StatusReply| leader.map(|l| l.commit_index.saturating_sub(s.last_applied));

    let header = ["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut nodes: Vec<Value> = Vec::new();
    for row in rows {
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
    Done::new(text.clone(), text, json!({"nodes": nodes}))
}

/// Columns lined up, two spaces apart, no trailing blanks.
pub(super) fn render_table(rows: &[Vec<String>]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
