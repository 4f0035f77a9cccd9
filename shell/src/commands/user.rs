//! `user add|delete|get|list|passwd|grant-role|revoke-role`: manage users,
//! in the style of etcdctl's `user` commands.

use poncho_protocol::{ClientRequest, Password, UserInfo, UserReply, UserRequest};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, Sub, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{payload, plain_words, Done, Failure, Outcome};
use crate::line::quote;
use crate::secret;

pub const SPEC: Spec = Spec {
    name: "user",
    aliases: &[],
    args: "SUBCOMMAND ...",
    summary: "manage users: add, delete, get, list, passwd, grant-role, revoke-role",
    details: "Without :PASSWORD, add and passwd ask for the password twice, without\n\
              echo, on a terminal; otherwise they read $PONCHO_NEW_PASSWORD. Lines\n\
              of add and passwd are never saved in the history. Changes need root.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[
        Sub {
            name: "add",
            args: "NAME[:PASSWORD]",
            summary: "add a user with a password",
            secret: true,
        },
        Sub {
            name: "delete",
            args: "NAME",
            summary: "remove a user",
            secret: false,
        },
        Sub {
            name: "get",
            args: "NAME",
            summary: "a user's roles",
            secret: false,
        },
        Sub {
            name: "list",
            args: "",
            summary: "every user, by name",
            secret: false,
        },
        Sub {
            name: "passwd",
            args: "NAME[:PASSWORD]",
            summary: "give a user a new password",
            secret: true,
        },
        Sub {
            name: "grant-role",
            args: "NAME ROLE",
            summary: "give a user a role",
            secret: false,
        },
        Sub {
            name: "revoke-role",
            args: "NAME ROLE",
            summary: "take a role from a user",
            secret: false,
        },
    ],
    parse,
};

/// A `user` command: the request, except that a password not given on the
/// line is asked for when the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// `add` or `passwd` (`passwd: true`); `None`: ask for the password.
    SetPassword {
        passwd: bool,
        name: String,
        password: Option<Password>,
    },
    Other(UserRequest),
}

/// `NAME[:PASSWORD]`: the name, and the password if one follows the first
/// colon (user names hold no colon).
fn name_and_password(args: &Args<'_>) -> Result<(String, Option<Password>), UsageError> {
    let word = args.text(0);
    let (name, password) = match word.split_once(':') {
        Some((name, password)) => {
            let password = secret::checked(password.to_string()).map_err(|e| args.wrong(e))?;
            (name.to_string(), Some(password))
        }
        None => (word, None),
    };
    if name.is_empty() {
        return Err(args.wrong("the user name is empty"));
    }
    Ok((name, password))
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let name = args.text(0);
    let role = args.text(1);
    let request = match args.sub() {
        sub @ ("add" | "passwd") => {
            let (name, password) = name_and_password(args)?;
            return Ok(Box::new(User::SetPassword {
                passwd: sub == "passwd",
                name,
                password,
            }));
        }
        "delete" => UserRequest::Delete { name },
        "get" => UserRequest::Get { name },
        "list" => UserRequest::List,
        "grant-role" => UserRequest::GrantRole { name, role },
        "revoke-role" => UserRequest::RevokeRole { name, role },
        _ => return Err(args.usage()),
    };
    Ok(Box::new(User::Other(request)))
}

impl User {
    /// The request to send, with the password asked for now if needed.
    fn request(&self) -> Result<UserRequest, Failure> {
        let (passwd, name, password) = match self {
            User::Other(request) => return Ok(request.clone()),
            User::SetPassword {
                passwd,
                name,
                password,
            } => (*passwd, name.clone(), password),
        };
        let password = match password {
            Some(p) => p.clone(),
            None => secret::source()
                .new_password(&name)
                .map_err(Failure::Usage)?,
        };
        Ok(if passwd {
            UserRequest::Passwd { name, password }
        } else {
            UserRequest::Add { name, password }
        })
    }
}

impl Action for User {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let request = self.request()?;
        let reply = client.request(&ClientRequest::User(request.clone()), Route::Leader)?;
        let r: UserReply = payload(reply)?;
        Ok(render(&request, r))
    }
}

/// What a reply shows: the user or users read, or what changed.
fn render(request: &UserRequest, r: UserReply) -> Done {
    let users = r.users.unwrap_or_default();
    let (pretty, json) = match request {
        UserRequest::Get { .. } => return one(users),
        UserRequest::List => {
            let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
            return Done::names(&names, json!({"users": users}));
        }
        UserRequest::Add { name, .. } => {
            (format!("user {} added", quote(name)), json!({"user": name}))
        }
        UserRequest::Delete { name } => (
            format!("user {} deleted", quote(name)),
            json!({"user": name}),
        ),
        UserRequest::Passwd { name, .. } => (
            format!("password of user {} changed", quote(name)),
            json!({"user": name}),
        ),
        UserRequest::GrantRole { name, role } => (
            format!("role {} granted to user {}", quote(role), quote(name)),
            json!({"user": name, "role": role}),
        ),
        UserRequest::RevokeRole { name, role } => (
            format!("role {} revoked from user {}", quote(role), quote(name)),
            json!({"user": name, "role": role}),
        ),
    };
    Done::changed(pretty, r.index, json)
}

/// `user get`: the roles on one line for scripts; `User: NAME`, `Roles: ...`
/// for people.
fn one(users: Vec<UserInfo>) -> Done {
    let Some(user) = users.into_iter().next() else {
        return Done::new("", "(no such user)", json!({"user": null}));
    };
    let roles = if user.roles.is_empty() {
        "(none)".to_string()
    } else {
        user.roles
            .iter()
            .map(|r| quote(r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Done::new(
        plain_words(&user.roles),
        format!("User: {}\nRoles: {roles}", quote(&user.name)),
        json!({"user": user}),
    )
}
