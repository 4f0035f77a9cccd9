//! `keys [PREFIX]`: the sorted keys with a prefix.

use poncho_protocol::{ClientRequest, KeysReply, KeysRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{next_page, numbered, payload, plain_words, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "keys",
    aliases: &[],
    args: "[PREFIX]",
    summary: "the keys starting with PREFIX (all keys without one), sorted",
    details: "Every key is listed, page by page (10,000 keys a request).",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
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
        // Page by page (a reply holds at most 10,000 keys), to the end.
        let mut keys = Vec::new();
        let mut from = None;
        loop {
            let started_at = from.clone().unwrap_or_else(|| self.prefix.clone());
            let request = ClientRequest::Keys(KeysRequest {
                prefix: self.prefix.clone(),
                from: from.take(),
            });
            let r: KeysReply = payload(client.request(&request, Route::Leader)?)?;
            keys.extend(r.keys);
            match r.next_key {
                Some(next) if r.more => from = Some(next_page(&started_at, next)?),
                _ => break,
            }
        }
        Ok(Done::new(
            plain_words(&keys),
            numbered(&keys),
            json!({ "keys": keys }),
        ))
    }
}
