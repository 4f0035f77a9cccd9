//! `append`: an AppendEntries probe that changes nothing.

use poncho_protocol::{AppendEntries, RaftMessage};

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::ClusterClient;
use crate::exec::{probe, Outcome};

pub const SPEC: Spec = Spec {
    name: "append",
    aliases: &[],
    args: "",
    summary: "send an AppendEntries probe (term 0) to the connected node, print its reply",
    details: "The probe has no src_id, so the node answers with its term, rejects it\n\
              and changes nothing (the prototype's `client append`).",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Append>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Append;

impl Action for Append {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let message = RaftMessage::AppendEntries(AppendEntries {
            term: 0,
            leader_id: 0,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit: 0,
            read_round: 0,
        });
        probe(client, &message)
    }
}
