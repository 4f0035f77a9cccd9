//! Users' passwords: salted argon2id hashes, in PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//!
//! Hashing and checking cost tens of milliseconds of CPU and 19 MiB by
//! design (OWASP's argon2id parameters), so the node never does either on
//! its event loop (see `node/logins.rs`). The salt comes from the OS
//! generator. A hash records its own parameters, so a stored hash stays
//! checkable if the defaults change.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A new salted hash of `password`.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` is the one `hash` was made from. A hash that is not a
/// valid PHC string matches nothing.
pub fn verify(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fixed hash of a random password, made once: what a login for a user
/// that does not exist is checked against.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = SaltString::generate(&mut OsRng);
        hash(random.as_str()).unwrap_or_default()
    })
}

/// Makes the hash unknown users are checked against now (the password
/// worker does as it starts), so that the first such login costs no more
/// than any other.
pub fn prepare() {
    dummy_hash();
}

/// Checks a login for a user that may not exist: against `hash` if it does,
/// else against a fixed hash of a random password, so that an unknown user
/// costs the same time as a wrong password and the answer's timing does not
/// tell which user names exist.
pub fn verify_login(stored: Option<&str>, password: &str) -> bool {
    match stored {
        Some(stored) => verify(stored, password),
        None => {
            let _ = verify(dummy_hash(), password);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_checks_its_password_only_and_is_salted() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("correct"));
        assert!(verify(&a, "correct horse"));
        assert!(verify(&b, "correct horse"));
        assert!(!verify(&a, "correct horse "));
        assert!(!verify("not a hash", "correct horse"));
        assert!(verify_login(Some(&a), "correct horse"));
        assert!(!verify_login(None, "correct horse"));
    }
}
