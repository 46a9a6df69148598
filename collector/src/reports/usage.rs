//! The usage report: per user and product, when it was assigned and last accessed, how
//! many days it was used in the range, how long it has lain unused, and a status.
//!
//! - **active**: used in the range;
//! - **inactive**: assigned for the whole range and not used in it — the seat to take
//!   back;
//! - **not_yet_active**: assigned during the range and not used yet;
//! - **not_used**: a Flex-only user who did not use the product in the range. Paying per
//!   day is the point of Flex: not using costs nothing, so such a user is never called
//!   inactive.
//!
//! A user is *assigned* a product by an entitlement of any plan (its `from`, UTC date;
//! none means since always); a Flex user with no entitlement is assigned nothing and
//! listed once they have used the product. Days inactive run from the later of the last
//! access and the assignment to the end of the range; with neither known, the whole
//! range.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use daymeter_shared::entitlement::{Entitlement, Plan};
use daymeter_shared::usage::UsageDay;
use serde::Serialize;

use super::range::ReportRange;
use super::{Filter, Teams};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Inactive,
    NotYetActive,
    NotUsed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageLine {
    pub user: String,
    pub team: String,
    pub product: String,
    /// `None`: assigned since always (an entitlement without `from`) or never (Flex).
    pub assigned_on: Option<NaiveDate>,
    pub last_accessed: Option<NaiveDate>,
    pub days_used: usize,
    pub days_inactive: i64,
    pub monthly_average: f64,
    pub tokens: u64,
    pub status: Status,
}

/// Assignment of one user and product, from the entitlements.
#[derive(Debug, Clone, Copy, Default)]
struct Assigned {
    /// Some entitlement names the pair.
    any: bool,
    /// The earliest `from`; `None` with `any`: since always.
    since: Option<NaiveDate>,
    open_ended: bool,
    /// A subscription or free assignment: not Flex only.
    seat: bool,
}

/// `last_accessed` holds, per (user, product), the UTC date of the last sync that
/// carried the product.
pub fn lines(
    rows: &[UsageDay<'_>],
    entitlements: &[Entitlement],
    last_accessed: &HashMap<(String, String), NaiveDate>,
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Vec<UsageLine> {
    let mut assigned: BTreeMap<(&str, &str), Assigned> = BTreeMap::new();
    for e in entitlements {
        let a = assigned.entry((&e.user, &e.product)).or_default();
        a.any = true;
        match e.from.map(|f| f.naive_utc().date()) {
            None => a.open_ended = true,
            Some(d) => a.since = Some(a.since.map_or(d, |s| s.min(d))),
        }
        a.seat |= e.plan != Plan::Flex;
    }
    let mut used: BTreeMap<(&str, &str), (BTreeSet<NaiveDate>, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| range.contains(r.day)) {
        let u = used.entry((&r.user, &r.product)).or_default();
        u.0.insert(r.day);
        u.1 += r.tokens;
    }
    let pairs: BTreeSet<(&str, &str)> = assigned
        .keys()
        .copied()
        .chain(used.keys().copied())
        .chain(last_accessed.keys().map(|(u, p)| (u.as_str(), p.as_str())))
        .filter(|(u, p)| filter.keeps(teams, u, p))
        .collect();
    pairs
        .into_iter()
        .map(|(user, product)| {
            let a = assigned.get(&(user, product)).copied().unwrap_or_default();
            let assigned_on = if a.open_ended { None } else { a.since };
            let (days, tokens) = used
                .get(&(user, product))
                .map_or((0, 0), |(d, t)| (d.len(), *t));
            let last = last_accessed
                .get(&(user.to_owned(), product.to_owned()))
                .copied();
            let later = last.max(assigned_on);
            let days_inactive = later.map_or(range.days(), |d| {
                (range.to - d).num_days().clamp(0, range.days())
            });
            let status = if days > 0 {
                Status::Active
            } else if !a.seat {
                Status::NotUsed
            } else if assigned_on.is_some_and(|d| d > range.from) {
                Status::NotYetActive
            } else {
                Status::Inactive
            };
            UsageLine {
                user: user.to_owned(),
                team: teams.of(user).to_owned(),
                product: product.to_owned(),
                assigned_on,
                last_accessed: last,
                days_used: days,
                days_inactive,
                monthly_average: super::per_month(days as f64, range.months),
                tokens,
                status,
            }
        })
        .collect()
}

/// Per (user, product), the UTC date the product was last seen in use — a session's
/// effective end, which is the day of the last sync that carried it — at most `to`.
pub fn last_accessed(
    sessions: &[daymeter_shared::session::Session<'_>],
    to: NaiveDate,
) -> HashMap<(String, String), NaiveDate> {
    let mut last: HashMap<(String, String), NaiveDate> = HashMap::new();
    for s in sessions {
        let Some(user) = s.user.as_deref() else {
            continue;
        };
        let day = s.effective_end().naive_utc().date().min(to);
        let entry = last
            .entry((user.to_owned(), s.product.to_string()))
            .or_insert(day);
        *entry = (*entry).max(day);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::testing::day;

    fn row(user: &str, product: &str, on: &str) -> UsageDay<'static> {
        crate::reports::testing::row(user, product, on, 0)
    }

    fn seat(user: &str, product: &str, from: Option<&str>) -> Entitlement {
        serde_json::from_value(serde_json::json!({
            "user": user, "product": product, "plan": "subscription",
            "from": from.map(|f| format!("{f}T00:00:00Z")),
        }))
        .expect("an entitlement")
    }

    fn november() -> ReportRange {
        ReportRange {
            from: day("2026-11-01"),
            to: day("2026-11-30"),
            months: 1.0,
        }
    }

    fn status_of(lines: &[UsageLine], user: &str) -> Status {
        lines
            .iter()
            .find(|l| l.user == user)
            .map(|l| l.status)
            .expect("a line")
    }

    #[test]
    fn assigned_and_used_in_the_range_is_active() {
        let lines = lines(
            &[row("ana", "acad", "2026-11-10")],
            &[seat("ana", "acad", Some("2026-01-01"))],
            &HashMap::from([(("ana".into(), "acad".into()), day("2026-11-10"))]),
            &november(),
            &Filter::default(),
            &Teams::default(),
        );
        assert_eq!(status_of(&lines, "ana"), Status::Active);
        assert_eq!(lines[0].days_inactive, 20);
        assert_eq!(lines[0].days_used, 1);
    }

    #[test]
    fn assigned_for_the_whole_range_and_unused_is_inactive() {
        let lines = lines(
            &[],
            &[seat("ben", "acad", Some("2026-01-01"))],
            &HashMap::from([(("ben".into(), "acad".into()), day("2026-08-31"))]),
            &november(),
            &Filter::default(),
            &Teams::default(),
        );
        assert_eq!(status_of(&lines, "ben"), Status::Inactive);
        assert_eq!(
            lines[0].days_inactive, 30,
            "at most the range: from its start"
        );
    }

    #[test]
    fn assigned_during_the_range_and_unused_is_not_yet_active() {
        let lines = lines(
            &[],
            &[seat("cleo", "acad", Some("2026-11-20"))],
            &HashMap::new(),
            &november(),
            &Filter::default(),
            &Teams::default(),
        );
        assert_eq!(status_of(&lines, "cleo"), Status::NotYetActive);
        assert_eq!(lines[0].days_inactive, 10);
    }

    #[test]
    fn a_flex_only_user_is_never_inactive() {
        let lines = lines(
            &[],
            &[],
            &HashMap::from([(("dan".into(), "acad".into()), day("2026-03-01"))]),
            &november(),
            &Filter::default(),
            &Teams::default(),
        );
        assert_eq!(status_of(&lines, "dan"), Status::NotUsed);
    }
}
