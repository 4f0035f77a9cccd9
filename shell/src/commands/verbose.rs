//! `.verbose [on|off]`: show the JSON on the wire.

use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{Done, Outcome};

pub const SPEC: Spec = Spec {
    name: ".verbose",
    aliases: &[],
    args: "[on|off]",
    summary: "show (or stop showing) the JSON sent (->) and received (<-)",
    details: "Without an argument it toggles. --verbose starts the shell with it on.",
    kind: Kind::Local,
    first_arg: FirstArg::Words(&["on", "off"]),
    subs: &[],
    parse,
};

/// `None`: toggle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbose(pub Option<bool>);

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let setting = match args.get(0).map(|t| t.text.to_ascii_lowercase()) {
        None => None,
        Some(a) if a == "on" => Some(true),
        Some(a) if a == "off" => Some(false),
        Some(_) => return Err(args.usage()),
    };
    Ok(Box::new(Verbose(setting)))
}

impl Action for Verbose {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        client.verbose = self.0.unwrap_or(!client.verbose);
        let text = if client.verbose {
            format!(
                "verbose on: -> is sent, <- is received, -- is what the shell does; \
                 writes carry {}",
                match client.client_id() {
                    Some(id) => format!("client_id {id}"),
                    None => "the client_id the first write registers".to_string(),
                }
            )
        } else {
            "verbose off".to_string()
        };
        Ok(Done::new(
            if client.verbose { "on" } else { "off" },
            text,
            json!({"verbose": client.verbose}),
        ))
    }
}
