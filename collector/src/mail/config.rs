//! The `[mail]` table of the collector's config file: where the SMTP server is, how the
//! connection is protected, who the mail is from, and how often the scheduler looks.
//!
//! ```toml
//! [mail]
//! host = "smtp.firm.example"
//! port = 587                 # default: 587 for starttls, 465 for tls, 25 for none
//! security = "starttls"      # "starttls" (default), "tls" or "none"
//! username = "daymeter"      # or DAYMETER_SMTP_USERNAME
//! password = "…"             # or DAYMETER_SMTP_PASSWORD
//! from = "daymeter <licences@firm.example>"
//! tick = "1m"                # how often due mail is looked for (default 1 minute)
//! root_certificate = "/etc/daymeter/smtp-ca.pem"   # trusted beside the system's roots
//! ```
//!
//! `security = "none"` sends the mail and the password in clear text: only sensible to a
//! relay on the same machine (`localhost`), which is why the collector logs a warning
//! when it is used towards any other host. The password is a secret: from the file
//! (readable by the collector's account only) or the environment, never a flag that
//! `ps` shows, and never written to the log (its `Debug` is redacted).
//!
//! Unknown keys are refused by name, as everywhere in the config file: a misspelt
//! `pasword` must not silently send without credentials.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Secret;

/// The environment variables that hold the SMTP credentials (they win over the file).
pub const USERNAME_ENV: &str = "DAYMETER_SMTP_USERNAME";
pub const PASSWORD_ENV: &str = "DAYMETER_SMTP_PASSWORD";

/// How often the scheduler looks for due mail unless `tick` says otherwise: sends go out
/// within a minute of their time.
pub const DEFAULT_TICK: Duration = Duration::from_secs(60);

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on loopback.
    None,
}

impl Security {
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

/// The `[mail]` table as written in the file (its `Debug` leaves the password out).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailFile {
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    security: Security,
    username: Option<String>,
    password: Option<String>,
    from: Option<String>,
    tick: Option<String>,
    root_certificate: Option<PathBuf>,
}

impl std::fmt::Debug for MailFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailFile")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("from", &self.from)
            .field("tick", &self.tick)
            .field("root_certificate", &self.root_certificate)
            .finish()
    }
}

/// The mail settings the collector runs with.
#[derive(Debug)]
pub struct MailConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<(String, Secret)>,
    pub from: lettre::message::Mailbox,
    /// How often the scheduler looks for due mail (a short one in tests).
    pub tick: Duration,
    pub root_certificate: Option<PathBuf>,
}

/// A `[mail]` table that cannot be used, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("[mail] {key}: {message}")]
pub struct MailConfigError {
    pub key: &'static str,
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> MailConfigError {
    MailConfigError {
        key,
        message: message.into(),
    }
}

impl MailFile {
    /// Checks the table; `env` reads an environment variable (the credentials there win
    /// over the file's).
    pub fn resolve(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<MailConfig, MailConfigError> {
        let host = self
            .host
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| error("host", "the SMTP server's host name is required"))?;
        let from = self
            .from
            .ok_or_else(|| error("from", "the sender's address is required"))?;
        let from = lettre::message::Mailbox::from_str(&from)
            .map_err(|e| error("from", format!("{from:?} is not an address: {e}")))?;
        let tick = match self.tick.as_deref() {
            None => DEFAULT_TICK,
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| error("tick", format!("{text:?} is not a duration like 1m: {e}")))?,
        };
        if tick < Duration::from_millis(10) || tick > Duration::from_secs(3600) {
            return Err(error("tick", "must lie between 10ms and 1h"));
        }
        let username = env(USERNAME_ENV).or(self.username);
        let password = env(PASSWORD_ENV).or(self.password);
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, Secret::new(p))),
            (None, None) => None,
            (Some(_), None) => return Err(error("password", "a username needs a password")),
            (None, Some(_)) => return Err(error("username", "a password needs a username")),
        };
        if let Some(path) = &self.root_certificate
            && !path.is_file()
        {
            return Err(error(
                "root_certificate",
                format!("{} is not a readable file", path.display()),
            ));
        }
        let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]");
        if self.security == Security::None && !loopback {
            tracing::warn!(
                host = ?host,
                "[mail] security = \"none\": mail and SMTP password cross the network in clear text; use starttls or tls beyond a local relay"
            );
        }
        Ok(MailConfig {
            port: self.port.unwrap_or(self.security.default_port()),
            host,
            security: self.security,
            credentials,
            from,
            tick,
            root_certificate: self.root_certificate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<MailFile, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn a_misspelt_mail_key_is_refused_by_name() {
        let e = table("host = \"smtp.firm.example\"\npasword = \"x\"\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn the_port_follows_the_security_and_the_environment_wins_for_credentials() {
        let t = table(
            "host = \"smtp.firm.example\"\nsecurity = \"tls\"\nfrom = \"licences@firm.example\"\nusername = \"file\"\npassword = \"from-file\"\n",
        )
        .expect("a table");
        let c = t
            .resolve(|k| (k == PASSWORD_ENV).then(|| "from-env".to_owned()))
            .expect("usable");
        assert_eq!(c.port, 465);
        let (user, password) = c.credentials.expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("file", "from-env"));
        assert!(!format!("{:?}", password).contains("from-env"), "redacted");
    }

    #[test]
    fn a_username_without_a_password_names_the_password() {
        let t = table("host = \"h\"\nfrom = \"a@b.example\"\nusername = \"u\"\n").expect("a table");
        assert_eq!(t.resolve(|_| None).expect_err("refused").key, "password");
        let t = table("host = \"h\"\nfrom = \"not an address\"\n").expect("a table");
        assert_eq!(t.resolve(|_| None).expect_err("refused").key, "from");
    }
}
