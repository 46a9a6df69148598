//! `serve` configuration: flags, environment, config file, and the generated dev config.
//!
//! Secrets (the enrolment secret and the admin token) come from the environment
//! (`DAYMETER_ENROLLMENT_SECRET`, `DAYMETER_ADMIN_TOKEN`) or a config file, never from a
//! flag that `ps` would show. With neither, `serve` generates both into a dev config in
//! the data directory, readable by its owner only, so the first run needs no set-up.
//!
//! The file's `[mail]` table configures mail over SMTP (see `mail::config`); its SMTP
//! credentials may come from `DAYMETER_SMTP_USERNAME` and `DAYMETER_SMTP_PASSWORD`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::auth::{Secret, new_token};
use crate::mail::config::{MailConfig, MailFile};

/// Flags of `daymeter-collector serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8650")]
    pub listen: SocketAddr,
    /// Database: `sqlite:///path/collector.db` (or a plain path). Default: a SQLite file
    /// in the platform data directory.
    #[arg(long)]
    pub db: Option<String>,
    /// TLS certificate chain (PEM); serves HTTPS with rustls when given with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Config file (TOML) with `enrollment_secret`, `admin_token`, and optionally
    /// `admin_password_hash` and a `[mail]` table.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The secrets file's shape. An unknown key is refused by name: a misspelt
/// `admin_tokn` would otherwise be ignored, and the collector would start on a generated
/// dev config with a random admin token instead of the one the operator wrote.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    enrollment_secret: Option<String>,
    admin_token: Option<String>,
    /// The dashboard's admin password, as an Argon2 PHC string (`hash-password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_password_hash: Option<String>,
    /// Mail over SMTP (`mail::config`); without it no mail is sent. Never written into
    /// a generated dev config.
    #[serde(default, skip_serializing)]
    mail: Option<MailFile>,
}

/// Where the collector keeps its data, and the secrets it checks.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub db_path: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub enrollment_secret: Secret,
    pub admin_token: Secret,
    /// The dashboard's admin password hash, when one is configured.
    pub admin_password_hash: Option<String>,
    /// Mail over SMTP, when the config file has a `[mail]` table.
    pub mail: Option<MailConfig>,
}

/// The platform data directory (`~/.local/share/daymeter` on Linux).
pub fn data_dir() -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "daymeter")
        .context("no home directory to keep data in; pass --db")?;
    Ok(dirs.data_dir().to_path_buf())
}

impl ServeConfig {
    pub fn load(args: ServeArgs) -> Result<ServeConfig> {
        let db_path = match &args.db {
            Some(db) => sqlite_path(db)?,
            None => data_dir()?.join("collector.db"),
        };
        let mut file = match &args.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        if let Ok(v) = std::env::var("DAYMETER_ENROLLMENT_SECRET") {
            file.enrollment_secret = Some(v);
        }
        if let Ok(v) = std::env::var("DAYMETER_ADMIN_TOKEN") {
            file.admin_token = Some(v);
        }
        if file.enrollment_secret.is_none() || file.admin_token.is_none() {
            let dir = db_path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let dev = dev_config(&dir)?;
            file.enrollment_secret = file.enrollment_secret.or(dev.enrollment_secret);
            file.admin_token = file.admin_token.or(dev.admin_token);
            file.admin_password_hash = file.admin_password_hash.or(dev.admin_password_hash);
        }
        let (Some(enrollment), Some(admin)) = (file.enrollment_secret, file.admin_token) else {
            bail!("no enrollment secret or admin token configured");
        };
        if enrollment.len() < 16 || admin.len() < 16 {
            bail!("the enrollment secret and admin token must be at least 16 characters");
        }
        if let Some(phc) = &file.admin_password_hash {
            crate::auth::check_password_hash(phc)
                .map_err(|e| anyhow::anyhow!("admin_password_hash: {e}"))?;
        }
        let mail = file
            .mail
            .take()
            .map(|m| m.resolve(|k| std::env::var(k).ok()))
            .transpose()?;
        Ok(ServeConfig {
            mail,
            listen: args.listen,
            db_path,
            tls: args.tls_cert.zip(args.tls_key),
            enrollment_secret: Secret::new(enrollment),
            admin_token: Secret::new(admin),
            admin_password_hash: file.admin_password_hash,
        })
    }
}

/// `sqlite:///abs/path`, `sqlite://rel/path` or a plain path.
fn sqlite_path(db: &str) -> Result<PathBuf> {
    if let Some(rest) = db.strip_prefix("sqlite://") {
        return Ok(PathBuf::from(rest));
    }
    if db.contains("://") {
        bail!("unsupported database {db:?}: this build stores data in SQLite (sqlite:///path)");
    }
    Ok(PathBuf::from(db))
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads, or creates with fresh secrets, `collector.toml` beside the database.
fn dev_config(dir: &Path) -> Result<FileConfig> {
    let path = dir.join("collector.toml");
    if path.exists() {
        return read_config(&path);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = FileConfig {
        enrollment_secret: Some(new_token()?),
        admin_token: Some(new_token()?),
        admin_password_hash: None,
        mail: None,
    };
    let text = toml::to_string(&config)?;
    write_owner_only(&path, text.as_bytes())?;
    tracing::warn!(path = %path.display(), "generated a development config with a new enrollment secret and admin token; set DAYMETER_ENROLLMENT_SECRET and DAYMETER_ADMIN_TOKEN or --config in production");
    Ok(config)
}

/// Writes a file only its owner can read (it holds secrets).
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_urls_and_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/x.db").unwrap(),
            PathBuf::from("/var/lib/x.db")
        );
        assert_eq!(sqlite_path("x.db").unwrap(), PathBuf::from("x.db"));
        assert!(sqlite_path("mysql://h/db").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn dev_config_is_owner_only_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("daymeter-devcfg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = dev_config(&dir).unwrap();
        let b = dev_config(&dir).unwrap();
        assert_eq!(a.admin_token, b.admin_token);
        let mode = fs::metadata(dir.join("collector.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
