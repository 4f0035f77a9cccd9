//! `transfer-leader ID`: the leader hands leadership to voter ID (it brings
//! it up to date, then tells it to campaign at once: Raft's TimeoutNow).

use poncho_protocol::{ErrorCode, NodeId};
use serde_json::json;

use super::member::id;
use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClientError, ClusterClient};
use crate::exec::{Done, Failure, Outcome};

pub const SPEC: Spec = Spec {
    name: "transfer-leader",
    aliases: &[],
    args: "ID",
    summary: "hand leadership to voter ID, once it has caught up",
    details: "The leader brings ID up to date, then tells it to campaign at once; the\n\
              command returns once ID leads. Needs root.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLeader {
    pub to: NodeId,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(TransferLeader {
        to: id(args, &args.text(0))?,
    }))
}

impl Action for TransferLeader {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let to = self.to;
        match client.transfer_leader(to) {
            Ok(r) => Ok(Done::new(
                "OK",
                format!("node {} leads now (term {})", r.leader_id, r.term),
                json!({"leader_id": r.leader_id, "term": r.term}),
            )),
            Err(ClientError::Server(mut e)) if e.code == ErrorCode::MembershipRefused => {
                e.message = format!(
                    "{}; `member list` shows who votes (a learner votes once \
                     `member promote ID` has made it a voter)",
                    e.message
                );
                Err(Failure::Call(ClientError::Server(e)))
            }
            Err(e) => Err(e.into()),
        }
    }
}
