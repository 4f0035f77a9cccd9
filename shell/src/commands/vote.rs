//! `vote`: a RequestVote probe that changes nothing.

use poncho_protocol::{RaftMessage, RequestVote};

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::ClusterClient;
use crate::exec::{probe, Outcome};

pub const SPEC: Spec = Spec {
    name: "vote",
    aliases: &["request"],
    args: "",
    summary: "send a RequestVote probe (term 0) to the connected node, print its reply",
    details: "The probe has no src_id, so the node answers with its term, refuses its\n\
              vote and changes nothing (the prototype's `client request`).",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Vote>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vote;

impl Action for Vote {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let message = RaftMessage::RequestVote(RequestVote {
            term: 0,
            candidate_id: 0,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leader_transfer: false,
        });
        probe(client, &message)
    }
}
