//! `keys [PREFIX]`: the sorted keys with a prefix.

use poncho_protocol::{ClientRequest, KeysReply, KeysRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{payload, Done, Outcome};
use crate::line::{quote, quote_always};

pub const SPEC: Spec = Spec {
    name: "keys",
    aliases: &[],
    args: "[PREFIX]",
    summary: "the keys starting with PREFIX (all keys without one), sorted",
    details: "At most 10,000 keys are returned.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub prefix: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(Keys {
        prefix: args.text(0),
    }))
}

impl Action for Keys {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let request = ClientRequest::Keys(KeysRequest {
            prefix: self.prefix.clone(),
        });
        let r: KeysReply = payload(client.request(&request, Route::Leader)?)?;
        let plain = r
            .keys
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Done::new(plain, pretty(&r.keys), json!({"keys": r.keys})))
    }
}

/// A numbered list, one key a line, for people.
fn pretty(keys: &[String]) -> String {
    if keys.is_empty() {
        return "(empty)".to_string();
    }
    let width = keys.len().to_string().len();
    keys.iter()
        .enumerate()
        .map(|(i, k)| format!("{:>width$}) {}", i + 1, quote_always(k)))
        .collect::<Vec<_>>()
        .join("\n")
}
