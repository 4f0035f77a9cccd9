//! `cas KEY EXPECTED NEW`: compare-and-set, a write.

use poncho_protocol::{CasReply, CasRequest, ClientRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{payload, pretty_value, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "cas",
    aliases: &[],
    args: "KEY EXPECTED NEW",
    summary: "compare-and-set: if KEY is EXPECTED, make it NEW (1 if swapped, else 0)",
    details: "An unquoted nil means absent: cas lock nil me creates lock only if it\n\
              does not exist; cas lock me nil deletes it only if it is me.\n\
              \"nil\" in quotes is the three-letter string.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Key,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cas {
    pub key: String,
    /// `None`: the key must be absent.
    pub expected: Option<String>,
    /// `None`: delete the key.
    pub value: Option<String>,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    Ok(Box::new(Cas {
        key: args.text(0),
        expected: args.nullable(1),
        value: args.nullable(2),
    }))
}

impl Action for Cas {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let r: CasReply = payload(client.write(|session| {
            ClientRequest::Cas(CasRequest {
                key: self.key.clone(),
                expected: self.expected.clone(),
                value: self.value.clone(),
                session,
            })
        })?)?;
        let pretty = if r.swapped {
            format!("1 (swapped; now {})", pretty_value(&r.current))
        } else {
            format!("0 (not swapped; the value is {})", pretty_value(&r.current))
        };
        Ok(Done::new(
            if r.swapped { "1" } else { "0" },
            pretty,
            json!({"key": r.key, "swapped": r.swapped, "current": r.current, "index": r.index}),
        ))
    }
}
