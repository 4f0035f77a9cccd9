//! Passwords the shell needs (`--user`, `login`, `user add`, `user
//! passwd`): asked for without echo when stdin is a terminal, else read
//! from an environment variable. Never printed.

use std::io::{self, IsTerminal};

use poncho_protocol::{Password, MAX_PASSWORD_BYTES};

/// The password of `--user` and `login` when stdin is not a terminal.
pub const PASSWORD_ENV: &str = "PONCHO_PASSWORD";
/// The password of `user add NAME` and `user passwd NAME` (without
/// `:PASSWORD`) when stdin is not a terminal.
pub const NEW_PASSWORD_ENV: &str = "PONCHO_NEW_PASSWORD";

/// Asks a person for a line without echoing it: `None` when there is no
/// terminal to ask on.
pub type Ask<'a> = Option<&'a dyn Fn(&str) -> io::Result<String>>;

/// Where passwords come from: the terminal or the environment.
pub struct Source<'a> {
    pub ask: Ask<'a>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

fn ask_terminal(prompt: &str) -> io::Result<String> {
    rpassword::prompt_password(prompt)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The real source: the terminal if stdin is one, and the environment.
pub fn source() -> Source<'static> {
    let ask: Ask<'static> = if io::stdin().is_terminal() {
        Some(&ask_terminal)
    } else {
        None
    };
    Source { ask, env: &env_var }
}

impl Source<'_> {
    /// The password `user` logs in with: asked for once on a terminal,
    /// else `$PONCHO_PASSWORD`.
    pub fn login(&self, user: &str) -> Result<Password, String> {
        self.obtain(PASSWORD_ENV, &format!("Password for {user}: "), false)
    }

    /// A new password for `user`: asked for twice on a terminal (both must
    /// match), else `$PONCHO_NEW_PASSWORD`.
    pub fn new_password(&self, user: &str) -> Result<Password, String> {
        self.obtain(
            NEW_PASSWORD_ENV,
            &format!("New password for {user}: "),
            true,
        )
    }

    fn obtain(&self, var: &str, prompt: &str, twice: bool) -> Result<Password, String> {
        let password = match self.ask {
            Some(ask) => {
                let read = |p: &str| ask(p).map_err(|e| format!("reading the password: {e}"));
                let first = read(prompt)?;
                if twice && read("Again: ")? != first {
                    return Err("the two passwords differ: nothing was changed".into());
                }
                first
            }
            None => (self.env)(var).ok_or_else(|| {
                format!(
                    "no password: stdin is not a terminal to ask on, and ${var} is not set \
                     (set it, or run the shell on a terminal)"
                )
            })?,
        };
        checked(password)
    }
}

/// `password`, unless it is empty or too long for the protocol.
pub fn checked(password: String) -> Result<Password, String> {
    match password.len() {
        0 => Err("the password is empty".into()),
        n if n > MAX_PASSWORD_BYTES => Err(format!(
            "the password is {n} bytes; the limit is {MAX_PASSWORD_BYTES}"
        )),
        _ => Ok(Password(password)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn without_a_terminal_the_environment_is_read_or_the_error_says_what_to_set() {
        let env = |v: &str| (v == PASSWORD_ENV).then(|| "pw-secret".to_string());
        let source = Source {
            ask: None,
            env: &env,
        };
        assert_eq!(source.login("alice"), Ok(Password("pw-secret".into())));
        let e = source.new_password("alice").unwrap_err();
        assert!(e.contains("$PONCHO_NEW_PASSWORD"), "{e}");
        let nothing = Source {
            ask: None,
            env: &no_env,
        };
        let e = nothing.login("alice").unwrap_err();
        assert!(
            e.contains("$PONCHO_PASSWORD") && e.contains("terminal"),
            "{e}"
        );
    }

    #[test]
    fn a_terminal_is_asked_once_to_log_in_and_twice_for_a_new_password() {
        let answers = RefCell::new(vec!["pw-b", "pw-a", "pw"]);
        let prompts = RefCell::new(Vec::new());
        let ask = |p: &str| {
            prompts.borrow_mut().push(p.to_string());
            Ok(answers.borrow_mut().pop().unwrap_or_default().to_string())
        };
        // The environment is not read when there is a terminal.
        let env = |_: &str| Some("from-env".to_string());
        let source = Source {
            ask: Some(&ask),
            env: &env,
        };
        assert_eq!(source.login("bob"), Ok(Password("pw".into())));
        let e = source.new_password("bob").unwrap_err();
        assert!(e.contains("differ"), "{e}");
        assert_eq!(
            *prompts.borrow(),
            ["Password for bob: ", "New password for bob: ", "Again: "]
        );
        let empty = |_: &str| Ok(String::new());
        let source = Source {
            ask: Some(&empty),
            env: &no_env,
        };
        assert_eq!(source.login("bob"), Err("the password is empty".into()));
    }
}
