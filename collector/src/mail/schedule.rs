//! When scheduled mail goes out: the rules, apart from SMTP and storage.
//!
//! - A schedule sends from its start, every week, two weeks, month or three months. The
//!   k-th send is computed from the start, not from the previous send, so a monthly
//!   report started on 31 January goes on 28 February, then 31 March — never drifting
//!   to the 28th for good.
//! - The next send is stored. A collector that was down across one or more sends sends
//!   **once** when it is back (the report then covers up to now), and the next send is
//!   the first one after now: never one mail per missed period.
//! - At most [`MAX_PER_RECIPIENT`] schedules per recipient.
//! - Alerts fire once per crossing: a team's low-balance alert when its balance goes
//!   from at or above its threshold to below it, not at every sync while it stays low.

use chrono::{DateTime, Months, NaiveDate, TimeDelta, Utc};

/// The most schedules one recipient may have.
pub const MAX_PER_RECIPIENT: usize = 5;

/// How often a scheduled report goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    Week,
    TwoWeeks,
    Month,
    ThreeMonths,
}

impl Every {
    /// The `k`-th send after `start` (`k = 0` is the start itself).
    pub fn nth(self, start: DateTime<Utc>, k: u32) -> Option<DateTime<Utc>> {
        match self {
            Every::Week => start.checked_add_signed(TimeDelta::weeks(i64::from(k))),
            Every::TwoWeeks => start.checked_add_signed(TimeDelta::weeks(2 * i64::from(k))),
            Every::Month => start.checked_add_months(Months::new(k)),
            Every::ThreeMonths => start.checked_add_months(Months::new(3 * k)),
        }
    }

    /// The first send strictly after `after` (the start itself when it is later).
    pub fn first_after(self, start: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if start > after {
            return Some(start);
        }
        // A first guess from the mean period, then step: a few iterations at most.
        let period_days = match self {
            Every::Week => 7.0,
            Every::TwoWeeks => 14.0,
            Every::Month => 30.44,
            Every::ThreeMonths => 91.31,
        };
        let elapsed = (after - start).num_seconds() as f64 / 86_400.0;
        let mut k = ((elapsed / period_days).floor() as u32).saturating_sub(1);
        loop {
            let at = self.nth(start, k)?;
            if at > after {
                return Some(at);
            }
            k = k.checked_add(1)?;
        }
    }
}

/// What to do with a schedule whose stored next send is `next`, at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Send now: the stored send time has come (however many sends were missed).
    pub send: bool,
    /// The next send to store.
    pub next: DateTime<Utc>,
}

pub fn due(
    start: DateTime<Utc>,
    every: Every,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Due> {
    if next > now {
        return Some(Due { send: false, next });
    }
    Some(Due {
        send: true,
        next: every.first_after(start, now)?,
    })
}

/// The days a report covers when the send due at `due` goes out at `now`: the period
/// before the due day (a weekly report sent on Monday covers Monday to Sunday before
/// it), stretched to yesterday when the send is late — a collector that was down sends
/// once, covering everything since. At most [`crate::reports::range::MAX_DAYS`] days.
pub fn covered(every: Every, due: DateTime<Utc>, now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let due_day = due.date_naive();
    let to = due_day.max(now.date_naive()) - TimeDelta::days(1);
    let from = match every {
        Every::Week => due_day.checked_sub_signed(TimeDelta::weeks(1)),
        Every::TwoWeeks => due_day.checked_sub_signed(TimeDelta::weeks(2)),
        Every::Month => due_day.checked_sub_months(Months::new(1)),
        Every::ThreeMonths => due_day.checked_sub_months(Months::new(3)),
    }
    .unwrap_or(to);
    let earliest = to - TimeDelta::days(crate::reports::range::MAX_DAYS - 1);
    (from.max(earliest).min(to), to)
}

/// Whether a team's balance crossed below its alert threshold between two readings.
pub fn crossed_below(before: u64, after: u64, threshold: u64) -> bool {
    before >= threshold && after < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an instant")
    }

    #[test]
    fn a_monthly_report_keeps_its_day_of_the_month_from_the_start() {
        let start = at("2026-01-31T07:00:00Z");
        let sends: Vec<_> = (0..4)
            .map(|k| {
                Every::Month
                    .nth(start, k)
                    .expect("a date")
                    .date_naive()
                    .to_string()
            })
            .collect();
        assert_eq!(
            sends,
            ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
        );
    }

    #[test]
    fn missed_sends_are_sent_once_and_the_next_is_after_now() {
        let start = at("2026-11-02T07:00:00Z");
        // Down from before the 9th until the 25th: the 9th, 16th and 23rd were missed.
        let d = due(
            start,
            Every::Week,
            at("2026-11-09T07:00:00Z"),
            at("2026-11-25T12:00:00Z"),
        )
        .expect("due");
        assert!(d.send, "sent once");
        assert_eq!(d.next, at("2026-11-30T07:00:00Z"));
        let later = due(start, Every::Week, d.next, at("2026-11-25T12:01:00Z")).expect("due");
        assert!(!later.send, "not again");
    }

    #[test]
    fn every_frequency_steps_from_the_start() {
        let start = at("2026-01-15T07:00:00Z");
        let after = at("2026-06-20T00:00:00Z");
        let first = |e: Every| {
            e.first_after(start, after)
                .expect("a date")
                .date_naive()
                .to_string()
        };
        assert_eq!(first(Every::Week), "2026-06-25");
        assert_eq!(first(Every::TwoWeeks), "2026-07-02");
        assert_eq!(first(Every::Month), "2026-07-15");
        assert_eq!(first(Every::ThreeMonths), "2026-07-15");
        assert_eq!(
            Every::Month.first_after(start, at("2025-12-01T00:00:00Z")),
            Some(start),
            "a start in the future is the first send"
        );
    }

    #[test]
    fn a_report_covers_the_period_before_its_day_and_a_late_one_reaches_yesterday() {
        let day = |s: &str| s.parse::<NaiveDate>().expect("a day");
        let due = at("2026-11-09T07:00:00Z");
        assert_eq!(
            covered(Every::Week, due, at("2026-11-09T07:00:30Z")),
            (day("2026-11-02"), day("2026-11-08"))
        );
        assert_eq!(
            covered(
                Every::Month,
                at("2026-03-31T07:00:00Z"),
                at("2026-03-31T08:00:00Z")
            ),
            (day("2026-02-28"), day("2026-03-30"))
        );
        assert_eq!(
            covered(Every::Week, due, at("2026-12-01T12:00:00Z")),
            (day("2026-11-02"), day("2026-11-30")),
            "down for three weeks: one report over all of it"
        );
    }

    #[test]
    fn a_low_balance_alert_fires_once_per_crossing() {
        assert!(crossed_below(120, 90, 100));
        assert!(
            !crossed_below(90, 80, 100),
            "already below: no second alert"
        );
        assert!(
            !crossed_below(120, 100, 100),
            "at the threshold is not below"
        );
        assert!(crossed_below(100, 99, 100));
    }
}
