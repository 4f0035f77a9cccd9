//! `health`: HEALTHCHECK the connected node.

use poncho_protocol::ClientRequest;
use serde_json::{json, Value};

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::{ClusterClient, Route};
use crate::exec::{Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "health",
    aliases: &["healthcheck"],
    args: "",
    summary: "HEALTHCHECK the connected node (prints ok)",
    details: "",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Health>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health;

impl Action for Health {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
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
}
