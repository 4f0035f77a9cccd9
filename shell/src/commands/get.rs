//! `get KEY`: a linearizable read.

use poncho_protocol::{ClientRequest, GetReply, GetRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{payload, plain_value, pretty_value, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "get",
    aliases: &[],
    args: "KEY",
    summary: "the value of KEY, or (nil) if absent",
    details: "A linearizable read, served by the leader.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub key: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(Get { key: args.text(0) }))
}

impl Action for Get {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let request = ClientRequest::Get(GetRequest {
            key: self.key.clone(),
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
}
