//! The dashboard's logins: a random session id in an HttpOnly, SameSite=Strict cookie
//! (Secure when the collector serves TLS), kept in memory as its SHA-256 only, with a
//! CSRF token for the forms that change something (logging out).
//!
//! In memory on purpose: a restart logs admins out, which costs one login, and no
//! session id ever reaches the database or its backups. A session lasts [`LIFETIME`].

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

use crate::auth::{new_token, token_hash};

/// The cookie's name.
pub const COOKIE: &str = "daymeter_session";
/// How long a login lasts: a working day.
pub const LIFETIME: TimeDelta = TimeDelta::hours(12);

#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

struct Session {
    expires: DateTime<Utc>,
    csrf: String,
}

/// A new session: the id for the cookie, and its CSRF token for the forms.
pub struct Opened {
    pub id: String,
    pub csrf: String,
}

impl Sessions {
    pub fn open(&self, now: DateTime<Utc>) -> Result<Opened, getrandom::Error> {
        let id = new_token()?;
        let csrf = new_token()?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // Expired sessions go when a new one comes: the map stays as small as the
        // logins of a day.
        open.retain(|_, s| s.expires > now);
        open.insert(
            token_hash(&id),
            Session {
                expires: now + LIFETIME,
                csrf: csrf.clone(),
            },
        );
        Ok(Opened { id, csrf })
    }

    /// The CSRF token of the live session `id`.
    pub fn csrf_of(&self, id: &str, now: DateTime<Utc>) -> Option<String> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&token_hash(id))
            .filter(|s| s.expires > now)
            .map(|s| s.csrf.clone())
    }

    pub fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&token_hash(id));
    }
}

/// The session id a request's `Cookie` header carries, if any.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value for a new session (`secure`: served over TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.num_seconds()
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_its_lifetime_and_ends_at_logout() {
        let sessions = Sessions::default();
        let now = Utc::now();
        let s = sessions.open(now).expect("random");
        assert_eq!(
            sessions.csrf_of(&s.id, now).as_deref(),
            Some(s.csrf.as_str())
        );
        assert!(sessions.csrf_of(&s.id, now + LIFETIME).is_none(), "expired");
        assert!(sessions.csrf_of("forged", now).is_none());
        sessions.close(&s.id);
        assert!(sessions.csrf_of(&s.id, now).is_none(), "logged out");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let c = set_cookie("abc", true);
        for part in [
            "daymeter_session=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "theme=dark; daymeter_session=xyz"
                .parse()
                .expect("a header"),
        );
        assert_eq!(cookie_of(&headers), Some("xyz"));
    }
}
