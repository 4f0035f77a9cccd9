//! `login USER`: log this shell in as USER from now on.

use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::{ClusterClient, Credentials};
use crate::exec::{Done, Failure, Outcome};
use crate::secret;

pub const SPEC: Spec = Spec {
    name: "login",
    aliases: &[],
    args: "USER",
    summary: "log this shell in as USER (asks for the password)",
    details: "On a terminal the password is asked for without echo; otherwise it is\n\
              read from $PONCHO_PASSWORD. Every connection the shell opens from now\n\
              on logs in as USER first. Needed after `auth enable` by a shell that\n\
              started without --user.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let user = args.text(0);
    if user.is_empty() {
        return Err(args.wrong("the user name is empty"));
    }
    Ok(Box::new(Login { user }))
}

impl Action for Login {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let password = secret::source().login(&self.user).map_err(Failure::Usage)?;
        client.login(Credentials::new(self.user.clone(), password.0))?;
        let node = client.connected().unwrap_or_default().to_string();
        Ok(Done::new(
            "OK",
            format!("logged in as {} at {node}", self.user),
            json!({"user": self.user, "node": node}),
        ))
    }
}
