//! Token reports over usage days: what was used in the range and by day, by product,
//! by user. Every figure is a sum or a count of distinct days over the rows the
//! [`Filter`] keeps; the ledger's side (remaining, added, removed) is the forecast's.
//!
//! Decisions where the spec is silent:
//! - A user's **days used** counts calendar days with any product used (so it is a
//!   share of the days in the range, at most all of them); per product, the weekly
//!   figures count that product's days.
//! - A product's **token bands** place each user by the tokens *they* spent on that
//!   product in the range (0–100, 101–500, 501–1000, over 1000).
//! - Weeks start on Monday (ISO 8601), as in the vendor's weekly views.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate, TimeDelta};
use daymeter_shared::usage::UsageDay;
use serde::Serialize;

use super::range::ReportRange;
use super::totals::{KeyUse, key_uses_of_days};
use super::{Filter, Teams};

/// The days "tokens by day" covers: a year, today included.
pub const BY_DAY_DAYS: i64 = 365;

/// Upper bounds (inclusive) of the token bands; a last band takes the rest.
const BANDS: [(u64, &str); 3] = [(100, "0-100"), (500, "101-500"), (1000, "501-1000")];
const TOP_BAND: &str = "over-1000";

/// The first day of "tokens by day" for `today`.
pub fn by_day_from(today: NaiveDate) -> NaiveDate {
    today - TimeDelta::days(BY_DAY_DAYS - 1)
}

/// Tokens used in the range, and by day over the last year.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Used {
    pub used: u64,
    pub products_used: usize,
    pub users: usize,
    /// One entry per day of the last year, days without tokens included (a chart's x
    /// axis has no holes).
    pub by_day: Vec<DayTokens>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayTokens {
    pub day: NaiveDate,
    pub tokens: u64,
}

/// `rows` must hold at least the range and the year before `today`.
pub fn used(
    rows: &[UsageDay<'_>],
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
    today: NaiveDate,
) -> Used {
    let first = by_day_from(today);
    let mut by_day = vec![0u64; BY_DAY_DAYS as usize];
    for r in rows
        .iter()
        .filter(|r| filter.keeps(teams, &r.user, &r.product))
    {
        if let Ok(i) = usize::try_from((r.day - first).num_days())
            && let Some(slot) = by_day.get_mut(i)
        {
            *slot += r.tokens;
        }
    }
    used_of(&key_uses_of_days(rows, range, filter, teams), by_day, today)
}

/// [`Used`] from each key's use in the range and the tokens of each day of the year
/// before `today` (oldest first, [`BY_DAY_DAYS`] of them).
pub fn used_of(uses: &[KeyUse], by_day: Vec<u64>, today: NaiveDate) -> Used {
    let first = by_day_from(today);
    let products: BTreeSet<&str> = uses.iter().map(|u| u.product.as_str()).collect();
    let users: BTreeSet<&str> = uses.iter().map(|u| u.user.as_str()).collect();
    Used {
        used: uses.iter().map(|u| u.tokens).sum(),
        products_used: products.len(),
        users: users.len(),
        by_day: by_day
            .into_iter()
            .enumerate()
            .map(|(i, tokens)| DayTokens {
                day: first + TimeDelta::days(i as i64),
                tokens,
            })
            .collect(),
    }
}

/// One product's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductLine {
    pub product: String,
    pub users: usize,
    pub tokens: u64,
    pub days_used: usize,
    pub average_tokens_per_month: f64,
    /// Users per token band, every band listed.
    pub users_by_band: BTreeMap<&'static str, usize>,
}

pub fn by_product(
    rows: &[UsageDay<'_>],
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Vec<ProductLine> {
    by_product_of(&key_uses_of_days(rows, range, filter, teams), range)
}

/// The products' lines from each key's use in the range.
pub fn by_product_of(uses: &[KeyUse], range: &ReportRange) -> Vec<ProductLine> {
    let mut per: BTreeMap<&str, Vec<&KeyUse>> = BTreeMap::new();
    for u in uses {
        per.entry(&u.product).or_default().push(u);
    }
    per.into_iter()
        .map(|(product, users)| {
            let tokens: u64 = users.iter().map(|u| u.tokens).sum();
            let mut users_by_band: BTreeMap<&'static str, usize> = BANDS
                .iter()
                .map(|(_, name)| (*name, 0))
                .chain([(TOP_BAND, 0)])
                .collect();
            for u in &users {
                *users_by_band.entry(band(u.tokens)).or_default() += 1;
            }
            ProductLine {
                product: product.to_owned(),
                users: users.len(),
                tokens,
                days_used: users.iter().map(|u| u.days_used as usize).sum(),
                average_tokens_per_month: super::per_month(tokens as f64, range.months),
                users_by_band,
            }
        })
        .collect()
}

fn band(tokens: u64) -> &'static str {
    BANDS
        .iter()
        .find(|(max, _)| tokens <= *max)
        .map_or(TOP_BAND, |(_, name)| name)
}

/// One user's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserLine {
    pub user: String,
    pub team: String,
    pub products: Vec<String>,
    pub tokens: u64,
    pub days_used: usize,
    pub days_in_range: i64,
    /// Days each product was used, week by week (weeks with no use left out).
    pub weekly: Vec<WeekLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeekLine {
    pub product: String,
    /// The week's Monday.
    pub week: NaiveDate,
    pub days_used: usize,
}

pub fn by_user(
    rows: &[UsageDay<'_>],
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Vec<UserLine> {
    struct Acc<'r> {
        tokens: u64,
        days: BTreeSet<NaiveDate>,
        weekly: BTreeMap<(&'r str, NaiveDate), BTreeSet<NaiveDate>>,
    }
    let mut per: BTreeMap<&str, Acc<'_>> = BTreeMap::new();
    for r in in_range(rows, range, filter, teams) {
        let acc = per.entry(&r.user).or_insert_with(|| Acc {
            tokens: 0,
            days: BTreeSet::new(),
            weekly: BTreeMap::new(),
        });
        acc.tokens += r.tokens;
        acc.days.insert(r.day);
        acc.weekly
            .entry((&r.product, monday_of(r.day)))
            .or_default()
            .insert(r.day);
    }
    per.into_iter()
        .map(|(user, acc)| UserLine {
            user: user.to_owned(),
            team: teams.of(user).to_owned(),
            products: acc
                .weekly
                .keys()
                .map(|(p, _)| *p)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            tokens: acc.tokens,
            days_used: acc.days.len(),
            days_in_range: range.days(),
            weekly: acc
                .weekly
                .into_iter()
                .map(|((product, week), days)| WeekLine {
                    product: product.to_owned(),
                    week,
                    days_used: days.len(),
                })
                .collect(),
        })
        .collect()
}

fn monday_of(day: NaiveDate) -> NaiveDate {
    day - TimeDelta::days(i64::from(day.weekday().num_days_from_monday()))
}

fn in_range<'r, 'a>(
    rows: &'r [UsageDay<'a>],
    range: &'r ReportRange,
    filter: &'r Filter,
    teams: &'r Teams,
) -> impl Iterator<Item = &'r UsageDay<'a>> {
    rows.iter()
        .filter(move |r| range.contains(r.day) && filter.keeps(teams, &r.user, &r.product))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::testing::{day, row};

    fn november() -> ReportRange {
        ReportRange {
            from: day("2026-11-01"),
            to: day("2026-11-30"),
            months: 1.0,
        }
    }

    #[test]
    fn used_counts_the_range_and_by_day_the_whole_year() {
        let rows = [
            row("ana", "acad", "2026-10-31", 7),
            row("ana", "acad", "2026-11-02", 7),
            row("ben", "revit", "2026-11-03", 10),
        ];
        let u = used(
            &rows,
            &november(),
            &Filter::default(),
            &Teams::default(),
            day("2026-12-06"),
        );
        assert_eq!((u.used, u.products_used, u.users), (17, 2, 2));
        assert_eq!(u.by_day.len(), 365);
        assert_eq!(u.by_day.last().map(|d| d.day), Some(day("2026-12-06")));
        let on = |d: &str| u.by_day.iter().find(|x| x.day == day(d)).map(|x| x.tokens);
        assert_eq!(
            on("2026-10-31"),
            Some(7),
            "outside the range, inside the year"
        );
        assert_eq!(on("2026-11-01"), Some(0), "a day without use is listed");
    }

    #[test]
    fn a_product_averages_its_tokens_over_the_months_and_bands_its_users() {
        let mut rows = Vec::new();
        for d in 1..=20 {
            rows.push(row("ana", "acad", &format!("2026-11-{d:02}"), 30)); // 600 tokens
        }
        rows.push(row("ben", "acad", "2026-11-05", 7));
        let range = ReportRange {
            months: 3.0,
            ..november()
        };
        let lines = by_product(&rows, &range, &Filter::default(), &Teams::default());
        assert_eq!(lines.len(), 1);
        let acad = &lines[0];
        assert_eq!((acad.users, acad.tokens, acad.days_used), (2, 607, 21));
        assert_eq!(acad.average_tokens_per_month, 202.33);
        assert_eq!(acad.users_by_band["0-100"], 1);
        assert_eq!(acad.users_by_band["501-1000"], 1);
        assert_eq!(acad.users_by_band["over-1000"], 0);
    }

    #[test]
    fn a_users_days_used_counts_calendar_days_and_weeks_count_per_product() {
        let rows = [
            row("ana", "acad", "2026-11-02", 7),   // Monday
            row("ana", "revit", "2026-11-02", 10), // same day, other product
            row("ana", "acad", "2026-11-08", 7),   // Sunday, same week
            row("ana", "acad", "2026-11-09", 7),   // next Monday
        ];
        let lines = by_user(&rows, &november(), &Filter::default(), &Teams::default());
        let ana = &lines[0];
        assert_eq!(ana.products, ["acad", "revit"]);
        assert_eq!((ana.tokens, ana.days_used, ana.days_in_range), (31, 3, 30));
        let weeks: Vec<_> = ana
            .weekly
            .iter()
            .map(|w| (w.product.as_str(), w.week, w.days_used))
            .collect();
        assert_eq!(
            weeks,
            [
                ("acad", day("2026-11-02"), 2),
                ("acad", day("2026-11-09"), 1),
                ("revit", day("2026-11-02"), 1)
            ]
        );
    }

    #[test]
    fn the_filter_keeps_only_its_rows() {
        let rows = [
            row("ana", "acad", "2026-11-02", 7),
            row("ben", "acad", "2026-11-02", 7),
        ];
        let only_ben = Filter {
            user: Some("ben".to_owned()),
            ..Filter::default()
        };
        let lines = by_user(&rows, &november(), &only_ben, &Teams::default());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].user, "ben");
    }
}
