//! `role add|delete|get|list|grant-permission|revoke-permission`: manage
//! roles and what they grant, in the style of etcdctl's `role` commands.

use poncho_protocol::{
    Access, ClientRequest, KeySpec, PermissionInfo, RoleInfo, RoleReply, RoleRequest,
};
use serde_json::json;

use super::{Action, Args, FirstArg, Kind, Spec, Sub, UsageError};
use crate::client::{ClusterClient, Route};
use crate::exec::{payload, Done, Outcome};
use crate::line::{quote, Token};

/// The flag that makes KEY a prefix, as etcdctl spells it.
const PREFIX_FLAG: &str = "--prefix";

pub const SPEC: Spec = Spec {
    name: "role",
    aliases: &[],
    args: "SUBCOMMAND ...",
    summary: "manage roles: add, delete, get, list, grant-permission, revoke-permission",
    details: "A permission grants read, write or readwrite on one KEY, or with --prefix\n\
              on every key that starts with KEY (--prefix \"\" is every key). Granting\n\
              on a key or prefix replaces what the role had on exactly that one.\n\
              The role root may do anything. Changes need root.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[
        Sub {
            name: "add",
            args: "NAME",
            summary: "add a role that grants nothing yet",
            secret: false,
        },
        Sub {
            name: "delete",
            args: "NAME",
            summary: "remove a role (from every user too)",
            secret: false,
        },
        Sub {
            name: "get",
            args: "NAME",
            summary: "what a role grants",
            secret: false,
        },
        Sub {
            name: "list",
            args: "",
            summary: "every role, by name",
            secret: false,
        },
        Sub {
            name: "grant-permission",
            args: "NAME read|write|readwrite KEY [--prefix]",
            summary: "let a role read, write or both on KEY (or keys starting with it)",
            secret: false,
        },
        Sub {
            name: "revoke-permission",
            args: "NAME KEY [--prefix]",
            summary: "take back what a role had on KEY (or on that prefix)",
            secret: false,
        },
    ],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(pub RoleRequest);

/// The arguments without `--prefix` (which may stand anywhere), and whether
/// it was there.
fn without_prefix_flag(tokens: &[Token]) -> (Vec<String>, bool) {
    let is_flag = |t: &Token| !t.quoted && t.text == PREFIX_FLAG;
    let words = tokens
        .iter()
        .filter(|t| !is_flag(t))
        .map(|t| t.text.clone())
        .collect();
    (words, tokens.iter().any(is_flag))
}

fn key_spec(key: String, prefix: bool) -> KeySpec {
    match prefix {
        true => KeySpec {
            key: None,
            prefix: Some(key),
        },
        false => KeySpec {
            key: Some(key),
            prefix: None,
        },
    }
}

fn parse_access(args: &Args<'_>, word: &str) -> Result<Access, UsageError> {
    match word.to_ascii_lowercase().as_str() {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "readwrite" => Ok(Access::Readwrite),
        _ => Err(args.wrong(format!("{} is not read, write or readwrite", quote(word)))),
    }
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let (words, prefix) = without_prefix_flag(args.tokens());
    let name = words.first().cloned().unwrap_or_default();
    let request = match (args.sub(), words.as_slice()) {
        ("add", _) => RoleRequest::Add { name },
        ("delete", _) => RoleRequest::Delete { name },
        ("get", _) => RoleRequest::Get { name },
        ("list", _) => RoleRequest::List,
        ("grant-permission", [_, access, key]) => RoleRequest::GrantPermission {
            access: parse_access(args, access)?,
            keys: key_spec(key.clone(), prefix),
            name,
        },
        ("revoke-permission", [_, key]) => RoleRequest::RevokePermission {
            keys: key_spec(key.clone(), prefix),
            name,
        },
        _ => return Err(args.usage()),
    };
    if prefix && !matches!(args.sub(), "grant-permission" | "revoke-permission") {
        return Err(args.usage());
    }
    Ok(Box::new(Role(request)))
}

impl Action for Role {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let request = ClientRequest::Role(self.0.clone());
        let r: RoleReply = payload(client.request(&request, Route::Leader)?)?;
        Ok(render(&self.0, r))
    }
}

/// `KEY` or `prefix KEY`, quoted as the shell reads it back.
fn keys_text(keys: &KeySpec) -> String {
    match (&keys.key, &keys.prefix) {
        (_, Some(prefix)) => format!("prefix {}", quote(prefix)),
        (Some(key), None) => format!("key {}", quote(key)),
        (None, None) => "nothing".to_string(),
    }
}

fn render(request: &RoleRequest, r: RoleReply) -> Done {
    let roles = r.roles.unwrap_or_default();
    let (pretty, json) = match request {
        RoleRequest::Get { .. } => return one(roles),
        RoleRequest::List => {
            let names: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
            return Done::names(&names, json!({"roles": roles}));
        }
        RoleRequest::Add { name } => (format!("role {} added", quote(name)), json!({"role": name})),
        RoleRequest::Delete { name } => (
            format!("role {} deleted", quote(name)),
            json!({"role": name}),
        ),
        RoleRequest::GrantPermission { name, keys, access } => (
            format!(
                "role {} may {} {}",
                quote(name),
                access.name(),
                keys_text(keys)
            ),
            json!({"role": name, "permission": {"key": keys.key, "prefix": keys.prefix, "access": access}}),
        ),
        RoleRequest::RevokePermission { name, keys } => (
            format!(
                "role {} lost its permission on {}",
                quote(name),
                keys_text(keys)
            ),
            json!({"role": name, "permission": {"key": keys.key, "prefix": keys.prefix}}),
        ),
    };
    Done::changed(pretty, r.index, json)
}

/// One permission a line: `readwrite prefix app/`.
fn permission_lines(permissions: &[PermissionInfo]) -> Vec<String> {
    permissions
        .iter()
        .map(|p| format!("{} {}", p.access.name(), keys_text(&p.keys)))
        .collect()
}

/// `role get`: one permission a line for scripts (nothing for none);
/// `Role: NAME` and the permissions, indented, for people.
fn one(roles: Vec<RoleInfo>) -> Done {
    let Some(role) = roles.into_iter().next() else {
        return Done::new("", "(no such role)", json!({"role": null}));
    };
    let lines = permission_lines(&role.permissions);
    let mut pretty = format!("Role: {}\nPermissions:", quote(&role.name));
    if lines.is_empty() {
        pretty.push_str(" (none)");
    }
    for line in &lines {
        pretty.push_str("\n  ");
        pretty.push_str(line);
    }
    Done::new(lines.join("\n"), pretty, json!({"role": role}))
}
