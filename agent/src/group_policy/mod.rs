//! Group Policy: the settings a Windows domain pushes to the agent, and the installer's
//! copy of them for machines without a GPO.
//!
//! Where the values live:
//! - **policy**: `HKLM\Software\Policies\Daymeter\Agent`, written by the ADMX template
//!   (`packaging/windows/daymeter.admx`) through the Group Policy editor;
//! - **installer**: `HKLM\Software\Daymeter\Agent`, written by the MSI when given
//!   `COLLECTOR_URL=…` / `ENROLLMENT_SECRET=…` on the `msiexec` command line.
//!
//! Both hold string values (REG_SZ) named as in [`VALUE_NAMES`], the one list the
//! agent, the ADMX test and the docs agree on.
//!
//! Precedence, for each setting on its own: **policy, installer, environment
//! (`DAYMETER_ENROLLMENT_SECRET`), file, default**. Policy wins because a domain
//! admin's GPO is re-applied every 90 minutes and is meant to be the last word; the
//! installer's values rank below it so that a machine installed by hand and later put
//! under a GPO follows the GPO without a reinstall; both rank above the file, which on
//! Windows is optional (`%ProgramData%\daymeter\agent.toml`) once either gives
//! `CollectorUrl`. `RemindBefore` and `GraceEnforcement` have no file key: they
//! override, on this machine only, the `remind_before` and `enforce` of the policy the
//! collector sends ([`LocalPolicy`]).
//!
//! A value name the agent does not read is refused by name, as are empty and malformed
//! values (naming key and value): a misspelt `CollectorURl` must stop the agent with a
//! message, not leave it on a default no one chose. Names are compared without regard
//! to case, as the registry itself does (`collectorurl` *is* `CollectorUrl` to every
//! Windows tool).
//!
//! The rules here are pure and tested on every platform; reading the registry is
//! `windows.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use daymeter_shared::policy::{Enforce, Policy};

use crate::config::{self, Secret};
use crate::users::{UserMap, UserMapFile};

#[cfg(windows)]
mod windows;

/// The policy key under HKLM, as the ADMX template's `key` attribute writes it.
pub const POLICY_KEY: &str = r"Software\Policies\Daymeter\Agent";
/// The installer's key under HKLM (the MSI's COLLECTOR_URL and ENROLLMENT_SECRET).
pub const INSTALLER_KEY: &str = r"Software\Daymeter\Agent";

/// Every value name the agent reads under [`POLICY_KEY`] and [`INSTALLER_KEY`]; the
/// ADMX template writes exactly these (`agent/tests/group_policy.rs` checks).
pub const VALUE_NAMES: [&str; 7] = [
    "CollectorUrl",
    "EnrollmentSecret",
    "CaFile",
    "UserMap",
    "PollInterval",
    "RemindBefore",
    "GraceEnforcement",
];

/// The values `GraceEnforcement` accepts: the collector policy's `enforce` values.
pub const GRACE_ENFORCEMENT_VALUES: [&str; 3] = ["warn", "close", "kill"];

/// The longest `RemindBefore`: the collector's own bound on `remind_before`.
const MAX_REMIND_BEFORE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A setting the registry can carry; serialised by its configuration-file name
/// (`collector_url`), as `status` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    CollectorUrl,
    EnrollmentSecret,
    CaFile,
    UserMap,
    PollInterval,
    RemindBefore,
    GraceEnforcement,
}

impl Setting {
    /// In the order of [`VALUE_NAMES`].
    pub const ALL: [Setting; 7] = [
        Setting::CollectorUrl,
        Setting::EnrollmentSecret,
        Setting::CaFile,
        Setting::UserMap,
        Setting::PollInterval,
        Setting::RemindBefore,
        Setting::GraceEnforcement,
    ];

    /// The registry value name (`CollectorUrl`).
    pub fn value_name(self) -> &'static str {
        VALUE_NAMES[self as usize]
    }

    /// The setting a registry value name stands for, case aside.
    pub fn from_value_name(name: &str) -> Option<Setting> {
        Setting::ALL
            .into_iter()
            .find(|s| s.value_name().eq_ignore_ascii_case(name))
    }
}

/// Where a setting's value came from, as `status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `HKLM\Software\Policies\Daymeter\Agent` (Group Policy).
    Policy,
    /// `HKLM\Software\Daymeter\Agent` (the MSI's properties).
    Installer,
    /// `DAYMETER_ENROLLMENT_SECRET`.
    Environment,
    /// The configuration file.
    File,
    /// The collector's policy (its default until the first sync): `remind_before` and
    /// `grace_enforcement` when no local override is set.
    Collector,
    /// Not set anywhere: the built-in default (or none, for a secret or CA file).
    Default,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Policy => "policy",
            Origin::Installer => "installer",
            Origin::Environment => "environment",
            Origin::File => "file",
            Origin::Collector => "collector",
            Origin::Default => "default",
        }
    }
}

/// Why the registry's settings cannot be used; names the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum GroupPolicyError {
    #[error(
        "HKLM\\{key}: unknown value `{name}` (a misspelt setting?); the agent reads only {}",
        VALUE_NAMES.join(", ")
    )]
    UnknownValue { key: String, name: String },
    #[error("HKLM\\{key}\\{name}: {message}")]
    BadValue {
        key: String,
        name: &'static str,
        message: String,
    },
    #[error("HKLM\\{key}\\{name}: must be a string (REG_SZ), not {kind}")]
    NotString {
        key: String,
        name: String,
        kind: String,
    },
    #[error("cannot read HKLM\\{key}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

/// One key's settings, checked; `None`: the key does not set it.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub collector_url: Option<String>,
    pub enrollment_secret: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub user_map: Option<UserMap>,
    pub poll_interval: Option<Duration>,
    pub remind_before: Option<Duration>,
    pub grace_enforcement: Option<Enforce>,
}

impl Settings {
    /// Checks the string values read under HKLM\\`key`: each name must be one of
    /// [`VALUE_NAMES`] and each value valid for it.
    pub fn parse(key: &str, values: &[(String, String)]) -> Result<Settings, GroupPolicyError> {
        let mut s = Settings::default();
        for (name, text) in values {
            let setting =
                Setting::from_value_name(name).ok_or_else(|| GroupPolicyError::UnknownValue {
                    key: key.to_owned(),
                    name: name.clone(),
                })?;
            let bad = |message: String| GroupPolicyError::BadValue {
                key: key.to_owned(),
                name: setting.value_name(),
                message,
            };
            let text = text.trim();
            if text.is_empty() {
                return Err(bad("is empty: delete the value or give it one".to_owned()));
            }
            match setting {
                Setting::CollectorUrl => {
                    s.collector_url = Some(config::check_collector_url(text).map_err(bad)?);
                }
                Setting::EnrollmentSecret => s.enrollment_secret = Some(Secret::new(text)),
                Setting::CaFile => s.ca_file = Some(PathBuf::from(text)),
                Setting::UserMap => {
                    s.user_map = Some(
                        UserMap::from_file(UserMapFile::Template(text.to_owned())).map_err(bad)?,
                    );
                }
                Setting::PollInterval => {
                    s.poll_interval = Some(config::check_poll_interval(text).map_err(bad)?);
                }
                Setting::RemindBefore => {
                    let d = humantime::parse_duration(text)
                        .map_err(|e| bad(format!("`{text}` is not a duration: {e}")))?;
                    if d > MAX_REMIND_BEFORE {
                        return Err(bad(format!("`{text}` is longer than 366 days")));
                    }
                    s.remind_before = Some(d);
                }
                Setting::GraceEnforcement => {
                    s.grace_enforcement = Some(enforce_from_name(text).ok_or_else(|| {
                        bad(format!(
                            "`{text}` is not one of {}",
                            GRACE_ENFORCEMENT_VALUES.join(", ")
                        ))
                    })?);
                }
            }
        }
        Ok(s)
    }
}

/// `GraceEnforcement`'s text as the collector's `enforce`; exact lower case, as the
/// ADMX enum writes it.
pub fn enforce_from_name(name: &str) -> Option<Enforce> {
    match name {
        "warn" => Some(Enforce::Warn),
        "close" => Some(Enforce::Close),
        "kill" => Some(Enforce::Kill),
        _ => None,
    }
}

/// The registry's two layers, policy above installer.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub policy: Settings,
    pub installer: Settings,
}

impl Layers {
    /// Whether either layer names the collector (then the file is optional).
    pub fn collector_url(&self) -> Option<&str> {
        self.policy
            .collector_url
            .as_deref()
            .or(self.installer.collector_url.as_deref())
    }
}

/// Reads both keys of this machine; nothing outside Windows.
pub fn read() -> Result<Layers, GroupPolicyError> {
    #[cfg(windows)]
    {
        Ok(Layers {
            policy: windows::read(POLICY_KEY)?,
            installer: windows::read(INSTALLER_KEY)?,
        })
    }
    #[cfg(not(windows))]
    {
        Ok(Layers::default())
    }
}

#[cfg(windows)]
pub use windows::read as read_key;

/// The first value set, in order of precedence, with where it came from.
pub fn pick<T>(choices: impl IntoIterator<Item = (Origin, Option<T>)>) -> Option<(Origin, T)> {
    choices.into_iter().find_map(|(o, v)| v.map(|v| (o, v)))
}

/// This machine's overrides of the collector's policy (`RemindBefore`,
/// `GraceEnforcement`). Applied wherever the agent takes a policy in — at start from
/// the cached answer and at every sync — so the reminders and the offline grace never
/// see the collector's value where an override is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalPolicy {
    pub remind_before: Option<Duration>,
    pub enforce: Option<Enforce>,
}

impl LocalPolicy {
    /// `policy` with this machine's overrides in place.
    pub fn over(&self, mut policy: Policy) -> Policy {
        if let Some(d) = self.remind_before {
            policy.remind_before = d;
        }
        if let Some(e) = self.enforce {
            policy.enforce = e;
        }
        policy
    }
}

/// Each setting's origin, for `status`.
pub type Origins = BTreeMap<Setting, Origin>;

#[cfg(test)]
mod tests;
