//! Policy: the values that shape accounting, sync and grace.
//!
//! Every length of time is a policy value, never a constant, so that an end-to-end test
//! can run a 24-hour window in seconds. Durations travel as humantime strings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::Problem;
use crate::time::{Nanos, duration_nanos, humantime_str, parse_duration};

/// Which calendar a usage day's date is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DayBasis {
    /// The time zone of the session open at the window start.
    #[default]
    Local,
    Utc,
}

/// When a product left open past a window's end is charged again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollover {
    /// Any open time past the window end, suspend included (the original Flex terms).
    #[default]
    Open,
    /// Only once the product is in use again (idle-aware, as newer versions do).
    Active,
}

/// What happens to sessions shorter than `min_session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortSessions {
    #[default]
    Ignore,
    /// Reported as their own 0-token rows, as newer usage reports do.
    CountFree,
}

/// What the agent does when the offline grace runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforce {
    Warn,
    /// Ask the product to close (SIGTERM / WM_CLOSE), so unsaved work can be saved.
    #[default]
    Close,
    Kill,
}

/// Every policy key of the protocol, with its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    #[serde(with = "humantime_str")]
    pub window: Duration,
    #[serde(with = "humantime_str")]
    pub min_session: Duration,
    pub day_basis: DayBasis,
    pub rollover: Rollover,
    #[serde(with = "humantime_str")]
    pub idle_after: Duration,
    pub short_sessions: ShortSessions,
    #[serde(with = "humantime_str")]
    pub sync_interval: Duration,
    #[serde(with = "humantime_str")]
    pub retry_max: Duration,
    #[serde(with = "humantime_str")]
    pub remind_before: Duration,
    #[serde(with = "humantime_str")]
    pub grace_flex: Duration,
    #[serde(with = "humantime_str")]
    pub grace_subscription: Duration,
    pub enforce: Enforce,
    /// How long a product launched past its offline grace may run before it is asked to
    /// close: enough to save the work opened in it.
    #[serde(with = "humantime_str")]
    pub close_delay: Duration,
}

const HOUR: u64 = 3600;
/// The shortest charge window a policy may set.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest offline grace a policy may set (ten years of 366 days).
pub const MAX_GRACE: Duration = Duration::from_secs(3660 * 24 * HOUR);

impl Default for Policy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(24 * HOUR),
            min_session: Duration::from_secs(5 * 60),
            day_basis: DayBasis::Local,
            rollover: Rollover::Open,
            idle_after: Duration::from_secs(15 * 60),
            short_sessions: ShortSessions::Ignore,
            sync_interval: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(60),
            remind_before: Duration::from_secs(HOUR),
            grace_flex: Duration::from_secs(24 * HOUR),
            grace_subscription: Duration::from_secs(30 * 24 * HOUR),
            enforce: Enforce::Close,
            close_delay: Duration::from_secs(5 * 60),
        }
    }
}

/// The part of the policy the day-window walk reads, on the engine's time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub window: Nanos,
    pub min_session: Nanos,
    pub day_basis: DayBasis,
    pub rollover: Rollover,
    pub short_sessions: ShortSessions,
}

impl Policy {
    /// Every policy key, as an import names them.
    pub const KEYS: &'static [&'static str] = &[
        "window",
        "min_session",
        "day_basis",
        "rollover",
        "idle_after",
        "short_sessions",
        "sync_interval",
        "retry_max",
        "remind_before",
        "grace_flex",
        "grace_subscription",
        "enforce",
        "close_delay",
    ];

    /// Policy defaults overlaid with the keys of `object`, each validated.
    pub fn from_json(object: &Value) -> Result<Policy, Problem> {
        let mut policy = Policy::default();
        policy.merge(object)?;
        Ok(policy)
    }

    /// Overlays the keys present in `object` (an import merges policy key by key).
    /// Unknown keys are ignored so that an older build accepts a newer collector's
    /// policy; known keys are checked in the protocol's order and the first bad one is
    /// reported by name. On error `self` is left unchanged.
    pub fn merge(&mut self, object: &Value) -> Result<(), Problem> {
        let Value::Object(map) = object else {
            return Err(Problem::WrongType {
                field: "policy",
                expected: "an object",
            });
        };
        let mut next = self.clone();
        duration(map, "window", &mut next.window)?;
        duration(map, "min_session", &mut next.min_session)?;
        choice(map, "day_basis", &mut next.day_basis, "local, utc")?;
        choice(map, "rollover", &mut next.rollover, "open, active")?;
        duration(map, "idle_after", &mut next.idle_after)?;
        choice(
            map,
            "short_sessions",
            &mut next.short_sessions,
            "ignore, count_free",
        )?;
        duration(map, "sync_interval", &mut next.sync_interval)?;
        duration(map, "retry_max", &mut next.retry_max)?;
        duration(map, "remind_before", &mut next.remind_before)?;
        duration(map, "grace_flex", &mut next.grace_flex)?;
        duration(map, "grace_subscription", &mut next.grace_subscription)?;
        choice(map, "enforce", &mut next.enforce, "warn, close, kill")?;
        duration(map, "close_delay", &mut next.close_delay)?;
        next.check()?;
        *self = next;
        Ok(())
    }

    /// The invariants the engine relies on, and the bounds that keep the work one
    /// request can cause, and every instant computed from the policy, finite: a window
    /// of one nanosecond would make a single session billions of usage days, and a grace
    /// of 300,000 years overflowed the date of `grace_until`. The window's floor of one
    /// second still lets a test run a day in seconds; a year caps every other span, ten
    /// years the offline grace.
    pub fn check(&self) -> Result<(), Problem> {
        if self.window.is_zero() {
            return Err(Problem::NotPositive { field: "window" });
        }
        if self.window < MIN_WINDOW {
            return Err(Problem::OutOfBounds {
                field: "window",
                bounds: "from 1s to 366d",
            });
        }
        let year = Duration::from_secs(366 * 24 * HOUR);
        for (field, d, max, bounds) in [
            ("window", self.window, year, "from 1s to 366d"),
            ("min_session", self.min_session, year, "at most 366d"),
            ("idle_after", self.idle_after, year, "at most 366d"),
            ("sync_interval", self.sync_interval, year, "at most 366d"),
            ("retry_max", self.retry_max, year, "at most 366d"),
            ("remind_before", self.remind_before, year, "at most 366d"),
            ("close_delay", self.close_delay, year, "at most 366d"),
            ("grace_flex", self.grace_flex, MAX_GRACE, "at most 3660d"),
            (
                "grace_subscription",
                self.grace_subscription,
                MAX_GRACE,
                "at most 3660d",
            ),
        ] {
            if d > max {
                return Err(Problem::OutOfBounds { field, bounds });
            }
        }
        Ok(())
    }

    /// The engine's view. Call on a policy that passed [`Policy::check`].
    pub fn rules(&self) -> Rules {
        Rules {
            window: duration_nanos(self.window).unwrap_or(i64::MAX).max(1),
            min_session: duration_nanos(self.min_session).unwrap_or(i64::MAX),
            day_basis: self.day_basis,
            rollover: self.rollover,
            short_sessions: self.short_sessions,
        }
    }
}

fn text<'m>(map: &'m Map<String, Value>, field: &'static str) -> Result<Option<&'m str>, Problem> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Problem::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn duration(
    map: &Map<String, Value>,
    field: &'static str,
    into: &mut Duration,
) -> Result<(), Problem> {
    if let Some(s) = text(map, field)? {
        *into = parse_duration(field, s)?;
    }
    Ok(())
}

fn choice<T: for<'de> Deserialize<'de>>(
    map: &Map<String, Value>,
    field: &'static str,
    into: &mut T,
    allowed: &'static str,
) -> Result<(), Problem> {
    if let Some(s) = text(map, field)? {
        *into = serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
            Problem::UnknownValue {
                field,
                value: s.to_owned(),
                allowed,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_the_protocol_table() {
        let p = Policy::from_json(&json!({})).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"window": "24h", "min_session": "5m", "day_basis": "local", "rollover": "open",
                   "idle_after": "15m", "short_sessions": "ignore", "sync_interval": "5m",
                   "retry_max": "1m", "remind_before": "1h", "grace_flex": "24h",
                   "grace_subscription": "720h", "enforce": "close", "close_delay": "5m"})
        );
    }

    #[test]
    fn keys_are_the_serialized_keys() {
        let v = serde_json::to_value(Policy::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = Policy::KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn window_of_zero_is_refused() {
        assert_eq!(
            Policy::from_json(&json!({"window": "0s"})),
            Err(Problem::NotPositive { field: "window" })
        );
    }

    #[test]
    fn a_huge_grace_is_refused_by_name() {
        let e = Policy::from_json(&json!({"grace_flex": "300000y"})).unwrap_err();
        assert_eq!(e.field(), Some("grace_flex"));
        assert_eq!(e.code(), "out_of_bounds");
    }

    #[test]
    fn a_window_under_one_second_is_refused() {
        let e = Policy::from_json(&json!({"window": "1ns"})).unwrap_err();
        assert_eq!(e.field(), Some("window"));
        assert!(Policy::from_json(&json!({"window": "1s"})).is_ok());
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = Policy::from_json(&json!({"min_session": "five minutes"})).unwrap_err();
        assert_eq!(e.field(), Some("min_session"));
        assert!(e.to_string().contains("five minutes"), "{e}");
    }

    #[test]
    fn unknown_policy_value_is_refused() {
        let e = Policy::from_json(&json!({"rollover": "sometimes"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rollover \"sometimes\" is not one of open, active"
        );
    }

    #[test]
    fn merge_keeps_other_keys_and_is_atomic() {
        let mut p = Policy::from_json(&json!({"rollover": "active"})).unwrap();
        p.merge(&json!({"window": "1h"})).unwrap();
        assert_eq!(p.rollover, Rollover::Active);
        assert_eq!(p.window, Duration::from_secs(3600));
        assert!(
            p.merge(&json!({"window": "2h", "enforce": "maybe"}))
                .is_err()
        );
        assert_eq!(p.window, Duration::from_secs(3600));
    }

    #[test]
    fn policy_round_trips_through_serde() {
        let p =
            Policy::from_json(&json!({"short_sessions": "count_free", "window": "90s"})).unwrap();
        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
