//! `leader`: who leads, waiting for an election if there is none.

use std::time::{Duration, Instant};

use poncho_protocol::{ClientRequest, ErrorCode, ErrorReply, StatusReply};
use serde_json::json;

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::{ClientError, ClusterClient, Route};
use crate::exec::{payload, Done, Failure, Outcome};

pub const SPEC: Spec = Spec {
    name: "leader",
    aliases: &[],
    args: "",
    summary: "the leader's address (waits for an election if there is none)",
    details: "",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Leader>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader;

impl Action for Leader {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let timeout = client.timeout;
        let result = ask_until_known(client, timeout);
        client.timeout = timeout;
        result
    }
}

/// Asks the node we talk to who leads, until one is known or `timeout`
/// passes; a node that knows none is asked again after the others.
fn ask_until_known(client: &mut ClusterClient, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut no_leader: Option<Failure> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(
                no_leader.unwrap_or(Failure::Call(ClientError::Unreachable(format!(
                    "gave up after {timeout:?}"
                )))),
            );
        }
        client.timeout = left;
        let s: StatusReply = match client.request(&ClientRequest::Status, Route::Here) {
            Ok(r) => payload(r)?,
            Err(ClientError::Interrupted) => return Err(ClientError::Interrupted.into()),
            Err(e) => return Err(no_leader.unwrap_or(e.into())),
        };
        if let (Some(id), Some(addr)) = (s.leader_id, s.leader_addr.clone()) {
            return Ok(Done::new(
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
    }
}
