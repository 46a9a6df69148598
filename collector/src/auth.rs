//! Device and admin tokens.
//!
//! A device token is 256 random bits, shown once to the agent and stored only as its
//! SHA-256. Every comparison of a presented secret runs in constant time, so response
//! timing tells an attacker nothing about how much of a guess was right.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret that never shows itself in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        same_secret(self.0.as_bytes(), presented.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Compares two secrets in constant time. Their hashes are compared, so that neither
/// content nor length shows in the timing.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.as_slice().ct_eq(hb.as_slice()).into()
}

/// 256 random bits, URL-safe base64 (43 characters).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a device token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time comparison of two token hashes.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_token_is_256_random_bits() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_comparison_and_debug() {
        let s = Secret::new("hunter2");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches(""));
        assert_eq!(format!("{s:?}"), "Secret(…)");
        assert!(same_hash(&token_hash("x"), &token_hash("x")));
        assert!(!same_hash(&token_hash("x"), &token_hash("y")));
    }
}

/// An admin password as stored in the config (`admin_password_hash`): Argon2id with a
/// random salt, as a PHC string (`$argon2id$v=19$…`). Made by
/// `daymeter-collector hash-password`, which reads the password from stdin so that it
/// is never in argv or a shell history.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `phc` is a password hash this collector can check, and if not why.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    argon2::password_hash::PasswordHash::new(phc)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not a PHC password hash ({e}); make one with `daymeter-collector hash-password`"
            )
        })
}

/// Whether `password` matches the stored hash `phc` (constant time inside argon2).
pub fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn a_password_checks_against_its_hash_and_no_other() {
        let phc = hash_password("correct horse battery staple").expect("hashed");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(check_password_hash(&phc).is_ok());
        assert!(verify_password(&phc, "correct horse battery staple"));
        assert!(!verify_password(&phc, "correct horse battery stapler"));
        assert!(check_password_hash("plaintext").is_err());
    }
}
