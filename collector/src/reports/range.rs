//! The time range of a report: `range=past-30-days`, `past-3-months` … `past-12-months`,
//! or `from=YYYY-MM-DD&to=YYYY-MM-DD`, as UTC calendar days (both ends included).
//!
//! What the names mean, as licence admins read the vendor's reports:
//! - **past-30-days** is rolling: the 30 days that end today (today included, so a
//!   launch an hour ago is in it).
//! - **past-N-months** (N = 3, 6, 9, 12) depends on the report. Token reports count
//!   *fully completed* months — on 6 December, past-3-months is 1 September to 30
//!   November — so that one month's bill is never compared with half a month. Seat
//!   reports are rolling: the N months that end today (7 September to 6 December).
//! - **from/to** is taken as given; `to` may not be before `from`, and the span is at
//!   most [`MAX_DAYS`] (a typo such as `from=2016-…` must not scan ten years).
//!
//! Averages "per month" divide by [`ReportRange::months`]: N for a month range (so a
//! year's tokens ÷ 12), otherwise the days ÷ the mean month (365.25 / 12 days).

use chrono::{Datelike, Months, NaiveDate, TimeDelta};

/// The longest custom range: two years and a day (a leap year's worth of slack).
pub const MAX_DAYS: i64 = 2 * 366 + 1;
/// The mean Gregorian month, in days.
const MEAN_MONTH_DAYS: f64 = 365.25 / 12.0;

/// Which rule a `past-N-months` range follows (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Token reports: fully completed months.
    CompletedMonths,
    /// Seat reports: rolling.
    Rolling,
}

/// A report's days, `from..=to`, and how many months they count as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The divisor of "per month" averages.
    pub months: f64,
}

impl ReportRange {
    /// Number of days in the range, both ends included.
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }

    pub fn contains(&self, day: NaiveDate) -> bool {
        self.from <= day && day <= self.to
    }
}

/// A range that cannot be used, with the query parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RangeError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> RangeError {
    RangeError {
        field,
        message: message.into(),
    }
}

/// The range named by the query parameters `range`, `from` and `to` on `today` (UTC):
/// `range` or `from` and `to`, not both; neither is past-30-days.
pub fn parse(
    range: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    basis: Basis,
    today: NaiveDate,
) -> Result<ReportRange, RangeError> {
    match (range, from, to) {
        (Some(_), Some(_), _) => Err(error("from", "give either range or from and to, not both")),
        (Some(_), None, Some(_)) => Err(error("to", "give either range or from and to, not both")),
        (Some(name), None, None) => named(name, basis, today),
        (None, Some(from), Some(to)) => custom(from, to),
        (None, Some(_), None) => Err(error("to", "from needs to (YYYY-MM-DD)")),
        (None, None, Some(_)) => Err(error("from", "to needs from (YYYY-MM-DD)")),
        (None, None, None) => named("past-30-days", basis, today),
    }
}

fn named(name: &str, basis: Basis, today: NaiveDate) -> Result<ReportRange, RangeError> {
    if name == "past-30-days" {
        let from = today - TimeDelta::days(29);
        return Ok(ReportRange {
            from,
            to: today,
            months: 30.0 / MEAN_MONTH_DAYS,
        });
    }
    let months = name
        .strip_prefix("past-")
        .and_then(|rest| rest.strip_suffix("-months"))
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| matches!(n, 3 | 6 | 9 | 12))
        .ok_or_else(|| {
            error(
                "range",
                format!(
                    "{name:?} is not a range: past-30-days, past-3-months, past-6-months, \
                     past-9-months or past-12-months (or from and to)"
                ),
            )
        })?;
    let (from, to) = match basis {
        Basis::CompletedMonths => {
            let this_month = today.with_day(1).unwrap_or(today);
            let to = this_month - TimeDelta::days(1);
            (this_month - Months::new(months), to)
        }
        Basis::Rolling => (today - Months::new(months) + TimeDelta::days(1), today),
    };
    Ok(ReportRange {
        from,
        to,
        months: f64::from(months),
    })
}

fn custom(from: &str, to: &str) -> Result<ReportRange, RangeError> {
    let day = |field: &'static str, v: &str| {
        v.parse::<NaiveDate>()
            .map_err(|_| error(field, format!("{v:?} is not a day (YYYY-MM-DD)")))
    };
    let (from, to) = (day("from", from)?, day("to", to)?);
    if to < from {
        return Err(error("to", format!("{to} is before from ({from})")));
    }
    let range = ReportRange {
        from,
        to,
        months: 0.0,
    };
    if range.days() > MAX_DAYS {
        return Err(error(
            "from",
            format!(
                "{} days from {from} to {to}: a report spans at most {MAX_DAYS} days",
                range.days()
            ),
        ));
    }
    Ok(ReportRange {
        months: range.days() as f64 / MEAN_MONTH_DAYS,
        ..range
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("a day")
    }

    fn range(name: &str, basis: Basis, today: &str) -> ReportRange {
        parse(Some(name), None, None, basis, day(today)).expect("a range")
    }

    #[test]
    fn past_30_days_is_rolling_and_ends_today() {
        let r = range("past-30-days", Basis::CompletedMonths, "2026-12-06");
        assert_eq!((r.from, r.to), (day("2026-11-07"), day("2026-12-06")));
        assert_eq!(r.days(), 30);
    }

    #[test]
    fn no_range_at_all_is_past_30_days() {
        let today = day("2026-12-06");
        assert_eq!(
            parse(None, None, None, Basis::Rolling, today),
            parse(Some("past-30-days"), None, None, Basis::Rolling, today)
        );
    }

    #[test]
    fn token_reports_count_fully_completed_months() {
        let r = range("past-3-months", Basis::CompletedMonths, "2026-12-06");
        assert_eq!((r.from, r.to), (day("2026-09-01"), day("2026-11-30")));
        assert_eq!(r.months, 3.0);
        let r = range("past-12-months", Basis::CompletedMonths, "2026-01-01");
        assert_eq!((r.from, r.to), (day("2025-01-01"), day("2025-12-31")));
    }

    #[test]
    fn seat_reports_are_rolling_months_ending_today() {
        let r = range("past-3-months", Basis::Rolling, "2026-12-06");
        assert_eq!((r.from, r.to), (day("2026-09-07"), day("2026-12-06")));
        // A month end: 31 May back three months is 28 February (chrono's clamping).
        let r = range("past-3-months", Basis::Rolling, "2027-05-31");
        assert_eq!((r.from, r.to), (day("2027-03-01"), day("2027-05-31")));
    }

    #[test]
    fn a_custom_range_includes_both_ends_and_counts_mean_months() {
        let r = parse(
            None,
            Some("2026-01-01"),
            Some("2026-12-31"),
            Basis::Rolling,
            day("2026-12-06"),
        )
        .expect("a range");
        assert_eq!(r.days(), 365);
        assert!((r.months - 365.0 / MEAN_MONTH_DAYS).abs() < 1e-9);
    }

    #[test]
    fn a_bad_range_names_its_parameter() {
        let today = day("2026-12-06");
        let field = |r: Option<&str>, f: Option<&str>, t: Option<&str>| {
            parse(r, f, t, Basis::Rolling, today)
                .expect_err("refused")
                .field
        };
        assert_eq!(field(Some("past-4-months"), None, None), "range");
        assert_eq!(field(Some("last-month"), None, None), "range");
        assert_eq!(field(None, Some("2026-13-01"), Some("2026-12-01")), "from");
        assert_eq!(field(None, Some("2026-12-01"), Some("yesterday")), "to");
        assert_eq!(field(None, Some("2026-12-02"), Some("2026-12-01")), "to");
        assert_eq!(field(None, Some("2026-12-02"), None), "to");
        assert_eq!(field(None, None, Some("2026-12-02")), "from");
        assert_eq!(
            field(Some("past-30-days"), Some("2026-12-02"), None),
            "from"
        );
        assert_eq!(field(None, Some("2016-01-01"), Some("2026-12-01")), "from");
    }
}
