//! What a mail schedule is, and the rules a new one is checked by before it is stored.
//!
//! Four kinds, each sent to one recipient:
//! - `report`: one of the three CSV exports (`token-usage`, `seat-usage`, `usage`),
//!   optionally for one team and one product, every week, two weeks, month or three
//!   months from `start`, with the CSV attached;
//! - `inactive_users`: the users whose assigned seats went unused for 30 days, 3, 6 or
//!   9 months or a year (the usage report's `inactive`), on the same frequencies;
//! - `waste_digest`: the week's days charged while nobody worked, every week;
//! - `low_balance`: when a team's balance crosses below its `low_balance` threshold
//!   (one team, or every team that has a threshold); sent on the event, not on a
//!   schedule, so it has no `every`.
//!
//! Decisions where the issue is silent, as an admin would expect them:
//! - `start` is an RFC 3339 instant, or a day (`YYYY-MM-DD`), which means 07:00 UTC
//!   that day — before the working day in Europe, the evening before in the Americas.
//!   Without it, the schedule starts now (its first mail goes out at the next tick).
//! - A start in the past does not send for the past: the first send is the first one
//!   stepped from `start` that is not before now.
//! - Recipients are compared without regard to case when counting the five schedules a
//!   recipient may have: `Ana@Firm.example` and `ana@firm.example` are one mailbox in
//!   practice.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::schedule::Every;
use crate::settings::Settings;

/// Which of the CSV exports a scheduled report attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Export {
    TokenUsage,
    SeatUsage,
    Usage,
}

impl Export {
    pub const ALL: [Export; 3] = [Export::TokenUsage, Export::SeatUsage, Export::Usage];

    /// The name in the API and in `/v1/exports/{name}.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Export::TokenUsage => "token-usage",
            Export::SeatUsage => "seat-usage",
            Export::Usage => "usage",
        }
    }

    /// What the mail's subject calls it.
    pub fn title(self) -> &'static str {
        match self {
            Export::TokenUsage => "Token usage",
            Export::SeatUsage => "Seat usage",
            Export::Usage => "Usage",
        }
    }
}

/// How long unused makes a user inactive: the usage report's ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InactiveFor {
    #[serde(rename = "30-days")]
    Days30,
    #[serde(rename = "3-months")]
    Months3,
    #[serde(rename = "6-months")]
    Months6,
    #[serde(rename = "9-months")]
    Months9,
    #[serde(rename = "1-year")]
    Year,
}

impl InactiveFor {
    pub const ALL: [InactiveFor; 5] = [
        InactiveFor::Days30,
        InactiveFor::Months3,
        InactiveFor::Months6,
        InactiveFor::Months9,
        InactiveFor::Year,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InactiveFor::Days30 => "30-days",
            InactiveFor::Months3 => "3-months",
            InactiveFor::Months6 => "6-months",
            InactiveFor::Months9 => "9-months",
            InactiveFor::Year => "1-year",
        }
    }

    /// The usage report's range of the same length (`range=` of `/v1/reports/usage`).
    pub fn range(self) -> &'static str {
        match self {
            InactiveFor::Days30 => "past-30-days",
            InactiveFor::Months3 => "past-3-months",
            InactiveFor::Months6 => "past-6-months",
            InactiveFor::Months9 => "past-9-months",
            InactiveFor::Year => "past-12-months",
        }
    }

    /// In words, for the mail.
    pub fn words(self) -> &'static str {
        match self {
            InactiveFor::Days30 => "30 days",
            InactiveFor::Months3 => "3 months",
            InactiveFor::Months6 => "6 months",
            InactiveFor::Months9 => "9 months",
            InactiveFor::Year => "a year",
        }
    }
}

/// Which mail a schedule sends (stored as this JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Report {
        report: Export,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product: Option<String>,
    },
    InactiveUsers {
        inactive_for: InactiveFor,
    },
    WasteDigest,
    LowBalance {
        /// `None`: every team with a `low_balance` threshold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<String>,
    },
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub id: String,
    pub recipient: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// `None` for a low-balance alert, which is sent on the event.
    pub every: Option<Every>,
    pub start: DateTime<Utc>,
    /// The next send; `None` for a low-balance alert.
    pub next_run: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/admin/mail/schedules` as sent: every value as text, so that a bad one is
/// refused naming its field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub recipient: Option<String>,
    pub kind: Option<String>,
    pub report: Option<String>,
    pub team: Option<String>,
    pub product: Option<String>,
    pub inactive_for: Option<String>,
    pub every: Option<String>,
    pub start: Option<String>,
}

/// A request refused, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// The longest recipient address (RFC 5321's limit on a path).
const MAX_RECIPIENT: usize = 254;

/// When a `start` given as a day sends.
pub fn morning_of(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::from_hms_opt(7, 0, 0).unwrap_or_default())
        .and_utc()
}

impl Request {
    /// The schedule asked for, checked against `settings` (teams and products must be
    /// known) at `now`; `id` names it.
    pub fn check(
        self,
        id: String,
        settings: &Settings,
        now: DateTime<Utc>,
    ) -> Result<Schedule, Invalid> {
        let recipient = self
            .recipient
            .ok_or_else(|| invalid("recipient", "an email address is required"))?;
        let recipient = recipient.trim().to_owned();
        if recipient.len() > MAX_RECIPIENT
            || recipient.chars().any(char::is_control)
            || lettre::Address::from_str(&recipient).is_err()
        {
            return Err(invalid(
                "recipient",
                format!("{recipient:?} is not one email address (name@domain)"),
            ));
        }
        let kind_name = self.kind.as_deref().ok_or_else(|| {
            invalid(
                "kind",
                "required: report, inactive_users, waste_digest or low_balance",
            )
        })?;
        let team = self.team.map(|t| known_team(settings, t)).transpose()?;
        let only = |field: &'static str, given: bool, kinds: &str| {
            if given {
                Err(invalid(field, format!("only for {kinds}")))
            } else {
                Ok(())
            }
        };
        let kind = match kind_name {
            "report" => {
                let report = self
                    .report
                    .as_deref()
                    .ok_or_else(|| invalid("report", "required: token-usage, seat-usage or usage"))
                    .and_then(|r| {
                        Export::ALL
                            .into_iter()
                            .find(|e| e.name() == r)
                            .ok_or_else(|| {
                                invalid(
                                    "report",
                                    format!("{r:?}: token-usage, seat-usage or usage"),
                                )
                            })
                    })?;
                let product = match self.product {
                    Some(p) if !settings.catalog.contains_key(&p) => {
                        return Err(invalid("product", format!("{p:?} is not in the catalog")));
                    }
                    p => p,
                };
                only(
                    "inactive_for",
                    self.inactive_for.is_some(),
                    "inactive_users",
                )?;
                Kind::Report {
                    report,
                    team,
                    product,
                }
            }
            "inactive_users" => {
                let name = self.inactive_for.as_deref().ok_or_else(|| {
                    invalid(
                        "inactive_for",
                        "required: 30-days, 3-months, 6-months, 9-months or 1-year",
                    )
                })?;
                let inactive_for = InactiveFor::ALL
                    .into_iter()
                    .find(|i| i.name() == name)
                    .ok_or_else(|| {
                        invalid(
                            "inactive_for",
                            format!("{name:?}: 30-days, 3-months, 6-months, 9-months or 1-year"),
                        )
                    })?;
                only("report", self.report.is_some(), "report")?;
                only("team", team.is_some(), "report and low_balance")?;
                only("product", self.product.is_some(), "report")?;
                Kind::InactiveUsers { inactive_for }
            }
            "waste_digest" => {
                only("report", self.report.is_some(), "report")?;
                only("team", team.is_some(), "report and low_balance")?;
                only("product", self.product.is_some(), "report")?;
                only(
                    "inactive_for",
                    self.inactive_for.is_some(),
                    "inactive_users",
                )?;
                Kind::WasteDigest
            }
            "low_balance" => {
                only("report", self.report.is_some(), "report")?;
                only("product", self.product.is_some(), "report")?;
                only(
                    "inactive_for",
                    self.inactive_for.is_some(),
                    "inactive_users",
                )?;
                if self.every.is_some() {
                    return Err(invalid(
                        "every",
                        "a low-balance alert goes out when the team's balance crosses its threshold, not on a schedule",
                    ));
                }
                if self.start.is_some() {
                    return Err(invalid("start", "a low-balance alert has no start"));
                }
                Kind::LowBalance { team }
            }
            other => {
                return Err(invalid(
                    "kind",
                    format!("{other:?}: report, inactive_users, waste_digest or low_balance"),
                ));
            }
        };
        if let Kind::LowBalance { .. } = kind {
            return Ok(Schedule {
                id,
                recipient,
                kind,
                every: None,
                start: now,
                next_run: None,
                created_at: now,
            });
        }
        let every = match (&kind, self.every.as_deref()) {
            (Kind::WasteDigest, None | Some("week")) => Every::Week,
            (Kind::WasteDigest, Some(_)) => {
                return Err(invalid("every", "the waste digest goes out every week"));
            }
            (_, None) => {
                return Err(invalid(
                    "every",
                    "required: week, two_weeks, month or three_months",
                ));
            }
            (_, Some(e)) => serde_json::from_value(serde_json::Value::String(e.to_owned()))
                .map_err(|_| {
                    invalid(
                        "every",
                        format!("{e:?}: week, two_weeks, month or three_months"),
                    )
                })?,
        };
        let start = match self.start.as_deref() {
            None => now,
            Some(s) => parse_start(s)?,
        };
        let next_run = if start >= now {
            Some(start)
        } else {
            every.first_after(start, now)
        }
        .ok_or_else(|| invalid("start", "no send after now can be computed from it"))?;
        Ok(Schedule {
            id,
            recipient,
            kind,
            every: Some(every),
            start,
            next_run: Some(next_run),
            created_at: now,
        })
    }
}

fn known_team(settings: &Settings, team: String) -> Result<String, Invalid> {
    if team == daymeter_shared::ledger::DEFAULT_TEAM || settings.teams.contains_key(&team) {
        Ok(team)
    } else {
        Err(invalid("team", format!("{team:?} is not an imported team")))
    }
}

/// An RFC 3339 instant, or a day meaning 07:00 UTC that day; years 2000 to 2199.
fn parse_start(s: &str) -> Result<DateTime<Utc>, Invalid> {
    let at = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.to_utc(),
        Err(_) => morning_of(s.parse::<NaiveDate>().map_err(|_| {
            invalid(
                "start",
                format!("{s:?} is neither an instant (RFC 3339) nor a day (YYYY-MM-DD)"),
            )
        })?),
    };
    let year = chrono::Datelike::year(&at);
    if !(2000..2200).contains(&year) {
        return Err(invalid("start", "must lie in the years 2000 to 2199"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an instant")
    }

    fn settings() -> Settings {
        let mut s = Settings {
            teams: BTreeMap::from([("civil".to_owned(), Default::default())]),
            ..Settings::default()
        };
        s.catalog.insert(
            "acad".to_owned(),
            serde_json::from_value(serde_json::json!({"tokens_per_day": 7})).expect("a product"),
        );
        s
    }

    fn request(v: serde_json::Value) -> Request {
        serde_json::from_value(v).expect("a request")
    }

    fn refused(v: serde_json::Value) -> &'static str {
        request(v)
            .check("x".into(), &settings(), at("2026-12-06T10:00:00Z"))
            .expect_err("refused")
            .field
    }

    #[test]
    fn a_start_given_as_a_day_sends_at_seven_utc_and_a_past_start_does_not_send_for_the_past() {
        let now = at("2026-12-06T10:00:00Z");
        let s = request(serde_json::json!({
            "recipient": "ana@firm.example", "kind": "report", "report": "token-usage",
            "every": "month", "start": "2026-12-07"
        }))
        .check("a".into(), &settings(), now)
        .expect("accepted");
        assert_eq!(s.next_run, Some(at("2026-12-07T07:00:00Z")));
        let s = request(serde_json::json!({
            "recipient": "ana@firm.example", "kind": "waste_digest", "start": "2026-11-02"
        }))
        .check("b".into(), &settings(), now)
        .expect("accepted");
        assert_eq!(s.every, Some(Every::Week));
        assert_eq!(s.next_run, Some(at("2026-12-07T07:00:00Z")));
    }

    #[test]
    fn a_bad_schedule_is_refused_naming_its_field() {
        use serde_json::json;
        assert_eq!(refused(json!({"kind": "report"})), "recipient");
        assert_eq!(
            refused(json!({"recipient": "not an address", "kind": "report"})),
            "recipient"
        );
        assert_eq!(refused(json!({"recipient": "a@b.example"})), "kind");
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "digest"})),
            "kind"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "report", "every": "week"})),
            "report"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "report",
                           "report": "usage", "every": "fortnight"})),
            "every"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "report",
                           "report": "usage", "every": "week", "team": "hr"})),
            "team"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "report",
                           "report": "usage", "every": "week", "product": "maya"})),
            "product"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "inactive_users",
                           "inactive_for": "2-months", "every": "week"})),
            "inactive_for"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "waste_digest", "every": "month"})),
            "every"
        );
        assert_eq!(
            refused(json!({"recipient": "a@b.example", "kind": "low_balance", "every": "week"})),
            "every"
        );
        assert_eq!(
            refused(
                json!({"recipient": "a@b.example", "kind": "report", "report": "usage",
                           "every": "week", "start": "next monday"})
            ),
            "start"
        );
    }
}
