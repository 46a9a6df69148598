//! A reminder: what the service tells a user's session helper to show, as structured
//! fields. The helper renders the text in the user's own zone and locale
//! (`crate::helper`), so the service never formats a time for someone else's desktop;
//! `text` carries the collector's English wording only as a fallback.

pub mod due;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which reminder; also the `x-daymeter-kind` hint of the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A launch opened a charged window ("Revit opened a new day (10 tokens)…").
    Launch,
    /// The product sits idle and its window ends within `remind_before`.
    WindowRollover,
    /// The machine is going to sleep with a Flex product open.
    PreSleep,
    /// The offline grace runs out soon.
    GraceWarning,
    /// The offline grace ran out: the product will be (or was) asked to close.
    GraceExpired,
    /// The team's balance cannot pay a day of the product just launched (warning only).
    InsufficientBalance,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Launch,
        Kind::WindowRollover,
        Kind::PreSleep,
        Kind::GraceWarning,
        Kind::GraceExpired,
        Kind::InsufficientBalance,
    ];

    /// The wire name (`window_rollover`…), as the `x-daymeter-kind` hint carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Launch => "launch",
            Kind::WindowRollover => "window_rollover",
            Kind::PreSleep => "pre_sleep",
            Kind::GraceWarning => "grace_warning",
            Kind::GraceExpired => "grace_expired",
            Kind::InsufficientBalance => "insufficient_balance",
        }
    }
}

/// One reminder for one user's session. Which fields are set depends on the kind:
///
/// | kind | `at` | other fields |
/// |---|---|---|
/// | launch | start of the day opened | `tokens` (the day's), `free_within` (`min_session`) |
/// | window_rollover | when the next day starts | `tokens` (next day), `idle_since` (last input) |
/// | pre_sleep | when the next day starts | `tokens` (next day) |
/// | grace_warning | when the grace runs out | `plan` |
/// | grace_expired | when the product is asked to close; none under `enforce = warn` | `plan` |
/// | insufficient_balance | — | `tokens` (a day), `balance` |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    pub kind: Kind,
    /// Catalog product id (`acad`).
    pub product: String,
    /// The product's name as the catalog gives it (`AutoCAD`); the id when it has none.
    pub product_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<u64>,
    /// How long after the launch closing the product is still free.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    pub free_within: Option<Duration>,
    /// `flex` or `subscription`, for the grace reminders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The collector's own text, shown only when the fields cannot be rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Reminder {
    /// A reminder of `kind` about `product` with every optional field empty.
    pub fn new(kind: Kind, product: &str, product_name: &str) -> Reminder {
        Reminder {
            kind,
            product: product.to_owned(),
            product_name: product_name.to_owned(),
            at: None,
            idle_since: None,
            tokens: None,
            balance: None,
            free_within: None,
            plan: None,
            text: None,
        }
    }
}

/// `Option<Duration>` as a humantime string (`"5m"`).
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// What the service and a session helper say to each other over the local socket, one
/// JSON document per line, after the helper opened the connection with the line
/// `session`.
pub mod wire {
    use serde::{Deserialize, Serialize};

    use super::Reminder;

    /// Service → helper.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ToHelper {
        /// First line: whom the service took the caller for (by its peer credentials)
        /// and how often it wants the idle time.
        Hello { uid: u32, report_every_ms: u64 },
        /// Show this.
        Remind(Reminder),
        /// The service refused the connection (the reason is for the helper's log).
        Refused { error: String },
        /// Ask this process of the helper's user to close, as closing its windows would
        /// (Windows: `WM_CLOSE` to its top-level windows, which a service outside the
        /// user's desktop cannot send). `pid` and `started` are the service's
        /// [`crate::watch::ProcessKey`]: the helper checks the start time before it
        /// touches anything, so a reused pid is never hit.
        Close { pid: u32, started: u64 },
    }

    /// Helper → service.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub struct FromHelper {
        /// Milliseconds since the user's last input; `None` when no idle source
        /// answers in this session (idle is then unknown, never assumed).
        pub idle_ms: Option<u64>,
        /// Which source answered (`mutter`, `screensaver`, `x11`, `logind`), for the
        /// service's status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reminder_travels_as_snake_case_fields_with_a_humantime_lead() {
        let mut r = Reminder::new(Kind::Launch, "revit", "Revit");
        r.tokens = Some(10);
        r.free_within = Some(Duration::from_secs(300));
        let text = serde_json::to_string(&wire::ToHelper::Remind(r.clone())).unwrap();
        assert_eq!(
            text,
            r#"{"remind":{"kind":"launch","product":"revit","product_name":"Revit","tokens":10,"free_within":"5m"}}"#
        );
        let back: wire::ToHelper = serde_json::from_str(&text).unwrap();
        assert_eq!(back, wire::ToHelper::Remind(r));
    }

    #[test]
    fn a_close_request_names_the_process_instance_and_travels_back_unchanged() {
        let close = wire::ToHelper::Close {
            pid: 4242,
            started: 1_764_979_200,
        };
        let text = serde_json::to_string(&close).unwrap();
        assert_eq!(text, r#"{"close":{"pid":4242,"started":1764979200}}"#);
        let back: wire::ToHelper = serde_json::from_str(&text).unwrap();
        assert_eq!(back, close);
    }

    #[test]
    fn every_kind_has_its_hint_name() {
        for kind in Kind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
    }
}
