//! `delete KEY`: a write that removes a key.

use poncho_protocol::{ClientRequest, DeleteReply, DeleteRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{payload, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "delete",
    aliases: &["del"],
    args: "KEY",
    summary: "remove KEY: 1 if it existed, else 0",
    details: "",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub key: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(Delete { key: args.text(0) }))
}

impl Action for Delete {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let r: DeleteReply = payload(client.write(|session| {
            ClientRequest::Delete(DeleteRequest {
                key: self.key.clone(),
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
}
