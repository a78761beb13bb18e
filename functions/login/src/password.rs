//! Passwords: a [`NewPassword`] can only exist if it meets the policy of the
//! customer's handbook (seed 004, 3.4.3.2.6): 8..=128 characters, at least
//! three of four character classes, not a common password, not the username.
//! Stored as argon2id with OWASP's recommended parameters (19 MiB, t=2, p=1).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 128;

/// OWASP Password Storage Cheat Sheet: argon2id, m=19456 KiB, t=2, p=1.
pub fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A password that satisfies the policy. No `Display`; `Debug` is redacted.
pub struct NewPassword(String);

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

impl NewPassword {
    /// Checks the policy; the error lists every rule broken (never the password).
    pub fn parse(candidate: &str, username: &str) -> Result<NewPassword, Vec<String>> {
        let mut broken = Vec::new();
        let chars = candidate.chars().count();
        if chars < MIN_CHARS {
            broken.push(format!("must be at least {MIN_CHARS} characters"));
        }
        if chars > MAX_CHARS {
            broken.push(format!("must be at most {MAX_CHARS} characters"));
        }
        if candidate.chars().any(char::is_control) {
            broken.push("must not contain control characters".to_owned());
        }
        let classes = [
            candidate.chars().any(char::is_lowercase),
            candidate.chars().any(char::is_uppercase),
            candidate.chars().any(|c| c.is_ascii_digit()),
            candidate.chars().any(|c| !c.is_alphanumeric() && !c.is_control()),
        ];
        if classes.iter().filter(|c| **c).count() < 3 {
            broken.push(
                "must contain at least three of: lower-case letters, upper-case letters, digits, symbols".to_owned(),
            );
        }
        let lower = candidate.to_lowercase();
        let username = username.trim().to_lowercase();
        if !username.is_empty() && lower.contains(&username) {
            broken.push("must not contain the username".to_owned());
        }
        if is_common(&lower) {
            broken.push("is too common; choose a less predictable password".to_owned());
        }
        if broken.is_empty() {
            Ok(NewPassword(candidate.to_owned()))
        } else {
            Err(broken)
        }
    }

    /// argon2id PHC string with a fresh random salt.
    pub fn hash(&self) -> String {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).expect("the platform RNG is available");
        let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
        argon2()
            .hash_password(self.0.as_bytes(), &salt)
            .expect("argon2 hashing with valid parameters cannot fail")
            .to_string()
    }
}

/// A common password, or one that is a common word plus trailing digits
/// and symbols ("Sommer2024!").
fn is_common(lower: &str) -> bool {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let list = LIST.get_or_init(|| include_str!("common_passwords.txt").lines().collect());
    let core = lower.trim_end_matches(|c: char| !c.is_alphabetic());
    let core = core.trim_start_matches(|c: char| !c.is_alphabetic());
    list.contains(lower) || (core.chars().count() >= 4 && list.contains(core))
}

/// Verifies a password against a stored hash. Unknown, locked and inactive
/// accounts are checked against [`dummy_hash`] so every login costs the same.
pub fn verify(password: &str, phc: &str) -> bool {
    VERIFICATIONS.with(|n| n.set(n.get() + 1));
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

thread_local! {
    static VERIFICATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// argon2 verifications done on this thread so far. Lets tests prove that
/// every login outcome costs exactly one verification (equal timing profile)
/// without timing anything.
pub fn verifications_on_this_thread() -> u64 {
    VERIFICATIONS.with(|n| n.get())
}

/// A hash with the production parameters of a random password that was
/// thrown away. A constant, not computed at start-up: under Spin every
/// request is a fresh instance, and hashing on first use would make
/// unknown-user logins measurably slower than wrong-password ones.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$kv3Tx5ep7eJ3SoqeodhsOw$SZvCNurBkp+uM6xWQpRKRmGnZV3lRNisjNMhPRDvkqk"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(NewPassword::parse("Kx9#mPq2", "ola").is_ok());
        assert!(NewPassword::parse("kx9mpq2w", "ola").is_err(), "two classes only");
        assert!(NewPassword::parse("Kx9#m", "ola").is_err(), "too short");
        assert!(NewPassword::parse(&format!("Aa1!{}", "x".repeat(125)), "ola").is_err(), "too long");
        assert!(NewPassword::parse("Password1", "ola").is_err(), "common");
        assert!(NewPassword::parse("Sommer2024!", "ola").is_err(), "common word + digits");
        assert!(NewPassword::parse("Ola.Nordmann7", "ola.nordmann").is_err(), "contains username");
        assert!(NewPassword::parse("Æøå-blåbær-42", "ola").is_ok(), "unicode letters count");
        assert!(NewPassword::parse("Tab\tTab12xY", "ola").is_err(), "control characters");
    }

    #[test]
    fn errors_never_echo_the_password() {
        let err = NewPassword::parse("secretpw", "ola").unwrap_err();
        assert!(err.iter().all(|m| !m.contains("secretpw")));
        assert_eq!(format!("{:?}", NewPassword::parse("Kx9#mPq2", "o").unwrap()), "NewPassword(***)");
    }

    #[test]
    fn hash_and_verify() {
        let pw = NewPassword::parse("Kx9#mPq2zz", "ola").unwrap();
        let phc = pw.hash();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("Kx9#mPq2zz", &phc));
        assert!(!verify("Kx9#mPq2zZ", &phc));
        assert!(!verify("anything", "not a hash"));
        assert!(!verify("anything", dummy_hash()));
        assert!(dummy_hash().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "same cost as real hashes");
    }
}
