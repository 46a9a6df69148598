//! The agent's configuration: a small TOML file pushed by IT, with the enrolment secret
//! preferably in the environment; on Windows, Group Policy and the installer's registry
//! values rank above both ([`crate::group_policy`] has the order and why), and the file
//! is optional once the registry names the collector.
//!
//! ```toml
//! collector_url = "https://licensing.example.com:8650"
//! enrollment_secret = "…"          # or DAYMETER_ENROLLMENT_SECRET
//! # optional: data_dir, user, poll_interval = "1s", ca_file = "/etc/daymeter/ca.pem"
//! # optional: journal = "redb" (default) or "sled"; a journal the other one wrote is
//! # migrated when the agent starts (docs/journal.md)
//! # optional: the products recognised before the collector's catalog arrives, instead
//! # of the built-in list (`catalog = {}`: only what the collector lists)
//! [catalog.acad]
//! match = [{ exe = "acad.exe" }]
//! ```
//!
//! Unknown keys are refused rather than ignored: a misspelt `poll_intervall` silently
//! falling back to a default is the kind of mistake an admin only finds months later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use daymeter_shared::catalog::{Catalog, MatchRule, Product};

use crate::group_policy::{self, GroupPolicyError, Layers, LocalPolicy, Origin, Origins, Setting};
use crate::journal::JournalKind;
use crate::users::{UserMap, UserMapFile};

/// Environment variable that carries the enrolment secret (wins over the file).
pub const SECRET_ENV: &str = "DAYMETER_ENROLLMENT_SECRET";

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The file as written (all of it optional: the registry may give the collector).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    collector_url: Option<String>,
    #[serde(default)]
    enrollment_secret: Option<Secret>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    poll_interval: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    catalog: Option<std::collections::BTreeMap<String, CatalogEntry>>,
    #[serde(default)]
    user_map: Option<UserMapFile>,
    #[serde(default)]
    socket: Option<PathBuf>,
    /// Read as text and matched by [`JournalKind::from_name`], rather than as the enum,
    /// so that a misspelt value is refused naming the key and the values allowed (the
    /// TOML parser's own message names neither the key nor the file).
    #[serde(default)]
    journal: Option<String>,
}

/// A product of the `catalog` table. Its own type so that a misspelt key (`mach`) is
/// refused by name like every other key, not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogEntry {
    #[serde(default)]
    name: Option<String>,
    /// Informational on the agent: the collector prices days.
    #[serde(default)]
    tokens_per_day: u64,
    #[serde(rename = "match")]
    matches: Vec<MatchEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchEntry {
    exe: String,
    #[serde(default)]
    args_contain: Option<String>,
}

/// The agent's settings, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the collector (`https://host:8650`); no trailing slash.
    pub collector_url: String,
    pub enrollment_secret: Option<Secret>,
    /// Journal and status socket live here.
    pub data_dir: PathBuf,
    /// The licence user of every session on this machine, whoever runs the product
    /// (a single-user machine's override); `None`: each session's user is the owner of
    /// its process, through `user_map` (see [`crate::users`]).
    pub user: Option<String>,
    /// How an owner's login name becomes a licence user.
    pub user_map: UserMap,
    /// The local socket the service answers on (`status`, `enroll`, session helpers);
    /// on Windows the name of a named pipe (`\\.\pipe\…`).
    pub socket: PathBuf,
    pub poll_interval: Duration,
    /// A CA trusted in addition to the system roots (a company CA for the collector).
    pub ca_file: Option<PathBuf>,
    /// The products recognised before (and beside) the collector's catalog, instead of
    /// the built-in list; `None` keeps the built-in list. A site whose executables the
    /// built-in list does not know names them here; `catalog = {}` meters only what the
    /// collector's catalog lists (nothing before the first sync), which is also how the
    /// end-to-end tests keep the machine's own products out of their agents.
    pub catalog: Option<Catalog>,
    /// The journal's backend: redb by default, for its smaller memory and disk
    /// (`journal/redb.rs` has the figures); sled, the design's first choice, passes the
    /// same crash torture. A journal the other backend wrote is migrated when the agent
    /// starts, or the agent refuses to start and says why (`journal/migrate.rs`).
    pub journal: JournalKind,
    /// Where each registry-backed setting came from, for `status`.
    pub origins: Origins,
    /// This machine's overrides of the collector's policy (`RemindBefore`,
    /// `GraceEnforcement` in the registry): apply with [`LocalPolicy::over`] to every
    /// policy the agent takes in.
    pub overrides: LocalPolicy,
}

/// Why a configuration cannot be used; names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message and not a `source`, so that a report of the
    /// whole chain says it once.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error(
        "{path}: no data_dir set and no home or service data directory could be found for this account"
    )]
    NoDataDir { path: PathBuf },
    #[error(transparent)]
    Registry(#[from] GroupPolicyError),
}

impl Config {
    /// Reads the registry (Group Policy, then the installer's values; nothing outside
    /// Windows), the file, then the environment. The file may be missing when the
    /// registry names the collector.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let layers = group_policy::read()?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && layers.collector_url().is_some() =>
            {
                None
            }
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        let env_secret = std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty());
        Config::assemble(path, text.as_deref(), env_secret, layers)
    }

    /// Parses a configuration text; `path` only names it in errors.
    pub fn parse(
        path: &Path,
        text: &str,
        env_secret: Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::assemble(path, Some(text), env_secret, Layers::default())
    }

    /// The registry's layers over the file (`None`: no file) and the environment's
    /// secret, each setting from the first that sets it; `path` only names the file in
    /// errors.
    pub fn assemble(
        path: &Path,
        text: Option<&str>,
        env_secret: Option<String>,
        layers: Layers,
    ) -> Result<Config, ConfigError> {
        let file: File = match text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })?,
            None => File::default(),
        };
        let value_error = |key: &'static str, message: String| ConfigError::Value {
            path: path.to_owned(),
            key,
            message,
        };
        let Layers { policy, installer } = layers;
        let mut origins = Origins::new();
        let mut chosen = |setting: Setting, origin: Option<Origin>| {
            origins.insert(setting, origin.unwrap_or(Origin::Default));
        };
        let file_url = file
            .collector_url
            .as_deref()
            .map(check_collector_url)
            .transpose()
            .map_err(|m| value_error("collector_url", m))?;
        let (origin, collector_url) = group_policy::pick([
            (Origin::Policy, policy.collector_url),
            (Origin::Installer, installer.collector_url),
            (Origin::File, file_url),
        ])
        .ok_or_else(|| {
            value_error(
                "collector_url",
                "missing: set it in the file (or by Group Policy's CollectorUrl on Windows)"
                    .to_owned(),
            )
        })?;
        chosen(Setting::CollectorUrl, Some(origin));
        let file_poll = file
            .poll_interval
            .as_deref()
            .map(check_poll_interval)
            .transpose()
            .map_err(|m| value_error("poll_interval", m))?;
        let poll = group_policy::pick([
            (Origin::Policy, policy.poll_interval),
            (Origin::Installer, installer.poll_interval),
            (Origin::File, file_poll),
        ]);
        chosen(Setting::PollInterval, poll.map(|p| p.0));
        let poll_interval = poll.map_or(Duration::from_secs(1), |p| p.1);
        let data_dir = match file.data_dir {
            Some(dir) => dir,
            None => default_data_dir().ok_or_else(|| ConfigError::NoDataDir {
                path: path.to_owned(),
            })?,
        };
        let journal = match file.journal.as_deref() {
            None => JournalKind::default(),
            Some(text) => JournalKind::from_name(text).ok_or_else(|| {
                let allowed: Vec<String> = JournalKind::ALL
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect();
                value_error(
                    "journal",
                    format!(
                        "`{text}` is not a journal backend; allowed: {} (default \"{}\")",
                        allowed.join(" or "),
                        JournalKind::default()
                    ),
                )
            })?,
        };
        let user = file.user.filter(|u| !u.trim().is_empty());
        let file_map = file
            .user_map
            .map(UserMap::from_file)
            .transpose()
            .map_err(|e| value_error("user_map", e))?;
        let map = group_policy::pick([
            (Origin::Policy, policy.user_map),
            (Origin::Installer, installer.user_map),
            (Origin::File, file_map),
        ]);
        chosen(Setting::UserMap, map.as_ref().map(|m| m.0));
        let user_map = map.map_or(UserMap::Login, |m| m.1);
        let secret = group_policy::pick([
            (Origin::Policy, policy.enrollment_secret),
            (Origin::Installer, installer.enrollment_secret),
            (Origin::Environment, env_secret.map(Secret::new)),
            (Origin::File, file.enrollment_secret),
        ]);
        chosen(Setting::EnrollmentSecret, secret.as_ref().map(|s| s.0));
        let ca = group_policy::pick([
            (Origin::Policy, policy.ca_file),
            (Origin::Installer, installer.ca_file),
            (Origin::File, file.ca_file),
        ]);
        chosen(Setting::CaFile, ca.as_ref().map(|c| c.0));
        let remind_before = group_policy::pick([
            (Origin::Policy, policy.remind_before),
            (Origin::Installer, installer.remind_before),
        ]);
        let enforce = group_policy::pick([
            (Origin::Policy, policy.grace_enforcement),
            (Origin::Installer, installer.grace_enforcement),
        ]);
        // Without an override these two are the collector's policy, not a default.
        let local = |o: Option<Origin>| Some(o.unwrap_or(Origin::Collector));
        chosen(Setting::RemindBefore, local(remind_before.map(|r| r.0)));
        chosen(Setting::GraceEnforcement, local(enforce.map(|e| e.0)));
        let overrides = LocalPolicy {
            remind_before: remind_before.map(|r| r.1),
            enforce: enforce.map(|e| e.1),
        };
        let socket = file.socket.unwrap_or_else(|| default_socket(&data_dir));
        let catalog = match file.catalog {
            None => None,
            Some(entries) => {
                let mut catalog = Catalog::new();
                for (id, entry) in entries {
                    if entry.matches.is_empty() {
                        return Err(value_error(
                            "catalog",
                            format!(
                                "product `{id}` has no match rule: it would never be recognised"
                            ),
                        ));
                    }
                    let matches = entry
                        .matches
                        .into_iter()
                        .map(|m| MatchRule {
                            exe: m.exe,
                            args_contain: m.args_contain,
                        })
                        .collect();
                    let product = Product {
                        name: entry.name,
                        tokens_per_day: entry.tokens_per_day,
                        matches,
                        rate_confirmed: None,
                    };
                    catalog.insert(id, product);
                }
                Some(catalog)
            }
        };
        Ok(Config {
            collector_url,
            enrollment_secret: secret.map(|s| s.1),
            data_dir,
            user,
            user_map,
            socket,
            poll_interval,
            ca_file: ca.map(|c| c.1),
            catalog,
            journal,
            origins,
            overrides,
        })
    }

    /// Where the journal lives.
    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// The licence user of a session whose process `uid` runs: the configured `user`
    /// when set, else the owner's login name through `user_map`; a process whose owner
    /// is unknown (a platform that does not tell) is the agent's own account's.
    pub fn licence_user(&self, login: Option<&str>) -> String {
        if let Some(user) = &self.user {
            return user.clone();
        }
        match login {
            Some(login) => self.user_map.licence_user(login),
            None => self
                .user_map
                .licence_user(&signed_in_user().unwrap_or_else(|| "unknown".to_owned())),
        }
    }
}

/// A collector URL as the agent keeps it: http:// or https://, no trailing slash.
pub(crate) fn check_collector_url(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/').to_owned();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(format!("`{url}` is not an http:// or https:// URL"))
    }
}

/// A poll interval: a duration of 10 ms or more.
pub(crate) fn check_poll_interval(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration: {e}"))?;
    if d < Duration::from_millis(10) {
        return Err(format!("`{text}` is shorter than 10ms"));
    }
    Ok(d)
}

/// The system service answers in its 0755 runtime directory (systemd's
/// `RuntimeDirectory=daymeter`), where every user's session helper can reach it; an
/// agent run by a user answers in its data directory. On Windows `socket` is a named
/// pipe's name, [`PIPE`] unless configured.
fn default_socket(data_dir: &Path) -> PathBuf {
    #[cfg(windows)]
    {
        let _ = data_dir;
        PathBuf::from(PIPE)
    }
    #[cfg(not(windows))]
    {
        default_unix_socket(data_dir)
    }
}

/// The named pipe the Windows service answers on.
pub const PIPE: &str = r"\\.\pipe\daymeter-agent";

#[cfg(not(windows))]
fn default_unix_socket(data_dir: &Path) -> PathBuf {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/run/daymeter/agent.sock");
        }
    }
    data_dir.join("agent.sock")
}

/// A system service keeps its state where the system keeps services' state
/// (`/var/lib/daymeter` on Linux, ProgramData on Windows); an agent run by a user keeps
/// it in that user's data directory.
fn default_data_dir() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Some(PathBuf::from("/var/lib/daymeter"));
        }
    }
    #[cfg(windows)]
    {
        if let Some(program_data) = std::env::var_os("ProgramData") {
            return Some(PathBuf::from(program_data).join("daymeter"));
        }
    }
    directories::ProjectDirs::from("", "", "daymeter").map(|d| d.data_local_dir().to_owned())
}

/// The agent's own account, for processes whose owner the platform does not report.
fn signed_in_user() -> Option<String> {
    for var in ["USER", "USERNAME", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return Some(name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("agent.toml"), text, None)
    }

    #[test]
    fn the_floor_needs_only_the_collector_url() {
        let c = parse(
            "collector_url = \"https://c.example:8650/\"\nuser = \"sophie\"\ndata_dir = \"/tmp/d\"",
        )
        .unwrap();
        assert_eq!(c.collector_url, "https://c.example:8650");
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.user.as_deref(), Some("sophie"));
        assert!(c.enrollment_secret.is_none());
    }

    #[test]
    fn the_environment_secret_wins_over_the_file() {
        let c = Config::parse(
            Path::new("agent.toml"),
            "collector_url = \"http://127.0.0.1:1\"\nenrollment_secret = \"from-file\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"",
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(c.enrollment_secret.unwrap().expose(), "from-env");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = parse("collector_url = \"http://h\"\nenrollment_secret = \"hunter2-hunter2\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_keys_are_refused_naming_them() {
        let e = parse("collector_url = \"http://h\"\npoll_intervall = \"2s\"").unwrap_err();
        assert!(e.to_string().contains("poll_intervall"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_key() {
        let e = parse("collector_url = \"http://h\"\npoll_interval = \"soon\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"").unwrap_err();
        assert!(e.to_string().contains("poll_interval"), "{e}");
    }

    #[test]
    fn a_catalog_table_replaces_the_built_in_list_and_an_empty_one_recognises_nothing() {
        let base = "collector_url = \"http://h\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"\n";
        assert!(
            parse(base).unwrap().catalog.is_none(),
            "built-in by default"
        );
        let empty = parse(&format!("{base}catalog = {{}}\n")).unwrap();
        assert_eq!(empty.catalog, Some(Catalog::new()));
        let own = parse(&format!(
            "{base}[catalog.mycad]\nname = \"My CAD\"\nmatch = [{{ exe = \"mycad.exe\", args_contain = \"/pro\" }}]\n"
        ))
        .unwrap();
        let catalog = own.catalog.unwrap();
        assert_eq!(catalog["mycad"].matches[0].exe, "mycad.exe");
        assert_eq!(
            catalog["mycad"].matches[0].args_contain.as_deref(),
            Some("/pro")
        );
    }

    #[test]
    fn a_misspelt_catalog_key_is_refused_naming_it() {
        let e = parse("collector_url = \"http://h\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"\n[catalog.x]\nmatch = [{ exe = \"x\", args_contains = \"y\" }]\n").unwrap_err();
        assert!(e.to_string().contains("args_contains"), "{e}");
        let e = parse("collector_url = \"http://h\"\nuser = \"u\"\ndata_dir = \"/tmp/d\"\n[catalog.x]\nmatch = []\n").unwrap_err();
        assert!(e.to_string().contains("no match rule"), "{e}");
    }

    #[test]
    fn without_user_each_session_is_its_owners_through_user_map() {
        let c = parse(
            "collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\nuser_map = \"{login}@firm.com\"",
        )
        .unwrap();
        assert_eq!(c.licence_user(Some("sophie")), "sophie@firm.com");
        let c = parse("collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\nuser = \"ana\"\nuser_map = \"{login}@firm.com\"").unwrap();
        assert_eq!(
            c.licence_user(Some("sophie")),
            "ana",
            "user overrides the map"
        );
        let e = parse("collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\nuser_map = \"cad\"")
            .unwrap_err();
        assert!(e.to_string().contains("user_map"), "{e}");
    }

    #[test]
    fn the_socket_is_configurable() {
        let c = parse(
            "collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\nsocket = \"/tmp/d/s.sock\"",
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/d/s.sock"));
    }

    #[test]
    fn the_journal_is_redb_unless_sled_is_named_and_a_typo_is_refused_by_name() {
        let base = "collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\n";
        assert_eq!(parse(base).unwrap().journal, JournalKind::Redb);
        let sled = parse(&format!("{base}journal = \"sled\"\n")).unwrap();
        assert_eq!(sled.journal, JournalKind::Sled);
        let e = parse(&format!("{base}journal = \"sleed\"\n")).unwrap_err();
        let text = e.to_string();
        for named in ["agent.toml", "journal", "sleed", "\"redb\"", "\"sled\""] {
            assert!(text.contains(named), "{named} missing from: {text}");
        }
        let e = parse(&format!("{base}journal = \"Redb\"\n")).unwrap_err();
        assert!(e.to_string().contains("journal"), "{e}");
    }

    fn layer(pairs: &[(&str, &str)]) -> group_policy::Settings {
        let values: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        group_policy::Settings::parse("Software\\Test", &values).unwrap()
    }

    #[test]
    fn policy_wins_over_the_installer_which_wins_over_the_file() {
        let layers = Layers {
            policy: layer(&[("CollectorUrl", "https://policy"), ("PollInterval", "3s")]),
            installer: layer(&[
                ("CollectorUrl", "https://installer"),
                ("EnrollmentSecret", "from-installer"),
            ]),
        };
        let c = Config::assemble(
            Path::new("agent.toml"),
            Some("collector_url = \"https://file\"\nenrollment_secret = \"from-file\"\nuser_map = \"{login}@file\"\ndata_dir = \"/tmp/d\""),
            Some("from-env".into()),
            layers,
        )
        .unwrap();
        assert_eq!(c.collector_url, "https://policy");
        assert_eq!(c.poll_interval, Duration::from_secs(3));
        assert_eq!(
            c.enrollment_secret.as_ref().unwrap().expose(),
            "from-installer"
        );
        assert_eq!(c.licence_user(Some("ana")), "ana@file");
        let o = &c.origins;
        assert_eq!(o[&Setting::CollectorUrl], Origin::Policy);
        assert_eq!(o[&Setting::PollInterval], Origin::Policy);
        assert_eq!(o[&Setting::EnrollmentSecret], Origin::Installer);
        assert_eq!(o[&Setting::UserMap], Origin::File);
        assert_eq!(o[&Setting::CaFile], Origin::Default);
        assert_eq!(o[&Setting::RemindBefore], Origin::Collector);
        assert_eq!(o[&Setting::GraceEnforcement], Origin::Collector);
        assert_eq!(c.overrides, LocalPolicy::default());
    }

    #[test]
    fn with_the_collector_from_policy_no_file_is_needed() {
        let layers = Layers {
            policy: layer(&[
                ("CollectorUrl", "http://c:8650"),
                ("RemindBefore", "10m"),
                ("GraceEnforcement", "warn"),
            ]),
            installer: group_policy::Settings::default(),
        };
        let c = Config::assemble(Path::new("agent.toml"), None, None, layers).unwrap();
        assert_eq!(c.collector_url, "http://c:8650");
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.overrides.remind_before, Some(Duration::from_secs(600)));
        assert_eq!(
            c.overrides.enforce,
            Some(daymeter_shared::policy::Enforce::Warn)
        );
        assert_eq!(c.origins[&Setting::RemindBefore], Origin::Policy);
        assert_eq!(c.origins[&Setting::PollInterval], Origin::Default);
        let e =
            Config::assemble(Path::new("agent.toml"), None, None, Layers::default()).unwrap_err();
        assert!(e.to_string().contains("collector_url"), "{e}");
    }

    #[test]
    fn the_environment_secret_ranks_below_the_registry_and_above_the_file() {
        let c = Config::parse(
            Path::new("agent.toml"),
            "collector_url = \"http://h\"\nenrollment_secret = \"from-file\"\ndata_dir = \"/tmp/d\"",
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(c.origins[&Setting::EnrollmentSecret], Origin::Environment);
    }

    #[test]
    fn a_collector_url_must_be_http_or_https() {
        let e = parse("collector_url = \"ftp://h\"").unwrap_err();
        assert!(e.to_string().contains("collector_url"), "{e}");
    }
}
