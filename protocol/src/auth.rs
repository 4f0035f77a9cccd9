//! Users, roles and logging in: the payloads of `AUTHENTICATE`, `AUTH`,
//! `USER` and `ROLE`, their replies and their limits (modelled on etcd's
//! auth API; `docs/protocol.md` has the reference).
//!
//! A connection logs in once with `AUTHENTICATE` (or by its client
//! certificate's common name, on a port with `--client-cert-auth`). `AUTH`,
//! `USER` and `ROLE` each carry an `op`; the ones that change something go
//! through the log and are answered with the `index` they were applied at,
//! the others read the node's state. Passwords are [`Password`]s: written on
//! the wire, never in `Debug` output.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::client::{InvalidRequest, RequestPayload, MAX_KEY_BYTES};

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest user or role name, in bytes (names are also limited to letters,
/// digits and `-_.@`; the server checks that).
pub const MAX_NAME_BYTES: usize = 128;

/// A password as a request carries it. Its `Debug` never shows it, so a
/// request can be logged or printed whole.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

fn check_name(name: &str) -> Result<(), InvalidRequest> {
    match name.len() {
        bytes if bytes > MAX_NAME_BYTES => Err(InvalidRequest::NameTooLong { bytes }),
        _ => Ok(()),
    }
}

fn check_password(password: &Password) -> Result<(), InvalidRequest> {
    match password.0.len() {
        0 => Err(InvalidRequest::PasswordEmpty),
        bytes if bytes > MAX_PASSWORD_BYTES => Err(InvalidRequest::PasswordTooLong { bytes }),
        _ => Ok(()),
    }
}

fn check_range_key(key: &str) -> Result<(), InvalidRequest> {
    match key.len() {
        bytes if bytes > MAX_KEY_BYTES => Err(InvalidRequest::KeyTooLong { bytes }),
        _ => Ok(()),
    }
}

/// Logs the connection in as `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticateRequest {
    pub user: String,
    pub password: Password,
}

impl RequestPayload for AuthenticateRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        check_name(&self.user)?;
        check_password(&self.password)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateReply {
    /// Who the connection is from now on.
    pub user: String,
}

/// `AUTH`: turn auth on or off, or ask whether it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthRequest {
    /// Needs a user `root` that holds the role `root`.
    Enable,
    Disable,
    Status,
}

impl RequestPayload for AuthRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthReply {
    pub enabled: bool,
    /// The log index a change was applied at; absent for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// `USER`: manage users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UserRequest {
    Add {
        name: String,
        password: Password,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
    /// Sets a new password.
    Passwd {
        name: String,
        password: Password,
    },
    GrantRole {
        name: String,
        role: String,
    },
    RevokeRole {
        name: String,
        role: String,
    },
}

impl RequestPayload for UserRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            UserRequest::Add { name, password } | UserRequest::Passwd { name, password } => {
                check_name(name)?;
                check_password(password)
            }
            UserRequest::Delete { name } | UserRequest::Get { name } => check_name(name),
            UserRequest::GrantRole { name, role } | UserRequest::RevokeRole { name, role } => {
                check_name(name)?;
                check_name(role)
            }
            UserRequest::List => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserReply {
    /// The log index a change was applied at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// For `get` (one) and `list` (all, by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserInfo>>,
}

/// What a permission grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Readwrite,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Readwrite => "readwrite",
        }
    }
}

/// Which keys a permission covers: one `key`, or every key that starts
/// with `prefix` (the empty prefix: every key). Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl KeySpec {
    /// Exactly one of `key` and `prefix`, within `MAX_KEY_BYTES`.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        match (&self.key, &self.prefix) {
            (Some(k), None) | (None, Some(k)) => check_range_key(k),
            _ => Err(InvalidRequest::KeyOrPrefix),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PermissionInfo {
    #[serde(flatten)]
    pub keys: KeySpec,
    pub access: Access,
}

/// `ROLE`: manage roles and what they grant. (No `deny_unknown_fields`:
/// serde does not support it beside `flatten`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum RoleRequest {
    Add {
        name: String,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
    /// Grants `access` on a key or prefix, replacing what the role had on
    /// exactly that key or prefix.
    GrantPermission {
        name: String,
        #[serde(flatten)]
        keys: KeySpec,
        access: Access,
    },
    RevokePermission {
        name: String,
        #[serde(flatten)]
        keys: KeySpec,
    },
}

impl RequestPayload for RoleRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            RoleRequest::Add { name }
            | RoleRequest::Delete { name }
            | RoleRequest::Get { name } => check_name(name),
            RoleRequest::List => Ok(()),
            RoleRequest::GrantPermission { name, keys, .. }
            | RoleRequest::RevokePermission { name, keys } => {
                check_name(name)?;
                keys.check()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    pub name: String,
    pub permissions: Vec<PermissionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// For `get` (one) and `list` (all, by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<RoleInfo>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let request = UserRequest::Add {
            name: "alice".into(),
            password: Password("hunter2-secret".into()),
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"op":"add","name":"alice","password":"hunter2-secret"}"#
        );
    }

    #[test]
    fn limits_are_checked() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let add = |name: &str, pw: &str| UserRequest::Add {
            name: name.into(),
            password: Password(pw.into()),
        };
        assert!(add("alice", "pw").validate().is_ok());
        assert!(matches!(
            add(&long, "pw").validate(),
            Err(InvalidRequest::NameTooLong { .. })
        ));
        assert_eq!(add("a", "").validate(), Err(InvalidRequest::PasswordEmpty));
        assert!(matches!(
            add("a", &"p".repeat(MAX_PASSWORD_BYTES + 1)).validate(),
            Err(InvalidRequest::PasswordTooLong { .. })
        ));
        let both = RoleRequest::RevokePermission {
            name: "r".into(),
            keys: KeySpec {
                key: Some("a".into()),
                prefix: Some("b".into()),
            },
        };
        assert_eq!(both.validate(), Err(InvalidRequest::KeyOrPrefix));
        let grant: RoleRequest = serde_json::from_str(
            r#"{"op":"grant-permission","name":"app","prefix":"app/","access":"readwrite"}"#,
        )
        .unwrap();
        assert!(grant.validate().is_ok());
        assert_eq!(
            grant,
            RoleRequest::GrantPermission {
                name: "app".into(),
                keys: KeySpec {
                    key: None,
                    prefix: Some("app/".into())
                },
                access: Access::Readwrite,
            }
        );
    }
}
