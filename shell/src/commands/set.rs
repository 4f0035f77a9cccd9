//! `set KEY VALUE`: a write.

use poncho_protocol::{ClientRequest, SetReply, SetRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{payload, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "set",
    aliases: &[],
    args: "KEY VALUE",
    summary: "store VALUE under KEY",
    details: "Quote a value with spaces: set greeting \"hello world\".\n\
              Prints OK once a majority of the cluster has the write.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub key: String,
    pub value: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(Set {
        key: args.text(0),
        value: args.text(1),
    }))
}

impl Action for Set {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let r: SetReply = payload(client.write(|session| {
            ClientRequest::Set(SetRequest {
                key: self.key.clone(),
                value: self.value.clone(),
                lease: None,
                session,
            })
        })?)?;
        Ok(Done::new(
            "OK",
            "OK",
            json!({"key": r.key, "index": r.index}),
        ))
    }
}
