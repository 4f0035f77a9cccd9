//! `auth enable|disable|status`: turn users and roles on or off.

use poncho_protocol::{AuthReply, AuthRequest, ClientRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, Sub, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{payload, Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "auth",
    aliases: &[],
    args: "SUBCOMMAND",
    summary: "turn users and roles on or off, or ask whether they are on",
    details: "`auth enable` needs a user root holding the role root:\n\
              user add root, then user grant-role root root. Once it is on, every\n\
              request needs a logged-in user (--user NAME, or `login NAME`).",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[
        Sub {
            name: "enable",
            args: "",
            summary: "turn auth on (needs root)",
            secret: false,
        },
        Sub {
            name: "disable",
            args: "",
            summary: "turn auth off (needs root)",
            secret: false,
        },
        Sub {
            name: "status",
            args: "",
            summary: "whether auth is on: enabled or disabled",
            secret: false,
        },
    ],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth(pub AuthRequest);

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let request = match args.sub() {
        "enable" => AuthRequest::Enable,
        "disable" => AuthRequest::Disable,
        "status" => AuthRequest::Status,
        _ => return Err(args.usage()),
    };
    Ok(Box::new(Auth(request)))
}

impl Action for Auth {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let request = ClientRequest::Auth(self.0.clone());
        let r: AuthReply = payload(client.request(&request, Route::Leader)?)?;
        let word = if r.enabled { "enabled" } else { "disabled" };
        if self.0 == AuthRequest::Status {
            return Ok(Done::new(word, word, json!({"enabled": r.enabled})));
        }
        let done = Done::changed(
            format!("auth {word}"),
            r.index,
            json!({"enabled": r.enabled}),
        );
        // This shell's connection did not log in: from now on it may do
        // nothing until it does.
        let hint = (r.enabled && client.credentials().is_none())
            .then(|| "this shell has not logged in: run `login root` to go on".to_string());
        Ok(done.with_hint(hint))
    }
}
