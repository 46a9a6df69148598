//! Reports over the store's totals rather than its days: each key's use in a range,
//! summed from whole months and the days of the months the range cuts; and, for a page
//! of users, their days rebuilt from their months for the rules that read days.
//!
//! Why: a year of 10,000 users is millions of usage days but a few hundred thousand
//! key-months, and a range of whole months is one row a key (see `store::tally`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate, TimeDelta};
use daymeter_shared::entitlement::Plan;
use daymeter_shared::usage::UsageDay;

use super::range::ReportRange;
use super::{Filter, Teams};
use crate::store::KeyTotal;
use crate::store::tally::KeyMonth;

/// One key's use in a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub user: String,
    pub product: String,
    pub tokens: u64,
    /// Calendar days with a usage day of the key.
    pub days_used: u64,
}

/// How a range reads the totals: the whole months inside it (first day of the first,
/// last day of the last), and the cut months' days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub whole: Option<(NaiveDate, NaiveDate)>,
    /// Day ranges inside one month each, read day by day.
    pub cut: Vec<(NaiveDate, NaiveDate)>,
}

fn month_first(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

fn month_last(day: NaiveDate) -> NaiveDate {
    month_first(day)
        .checked_add_months(Months::new(1))
        .and_then(|d| d.pred_opt())
        .unwrap_or(day)
}

/// Splits `[from, to]` into whole months and the cut ones.
pub fn split(from: NaiveDate, to: NaiveDate) -> Split {
    if from > to {
        return Split {
            whole: None,
            cut: Vec::new(),
        };
    }
    if month_first(from) == month_first(to) {
        let whole = from.day() == 1 && to == month_last(to);
        return if whole {
            Split {
                whole: Some((from, to)),
                cut: Vec::new(),
            }
        } else {
            Split {
                whole: None,
                cut: vec![(from, to)],
            }
        };
    }
    let mut cut = Vec::new();
    let first_whole = if from.day() == 1 {
        from
    } else {
        cut.push((from, month_last(from)));
        month_last(from) + TimeDelta::days(1)
    };
    let last_whole = if to == month_last(to) {
        to
    } else {
        cut.push((month_first(to), to));
        month_first(to) - TimeDelta::days(1)
    };
    Split {
        whole: (first_whole <= last_whole).then_some((first_whole, last_whole)),
        cut,
    }
}

/// Each key's use in `range` that `filter` keeps: `whole` summed over the whole months
/// of [`split`], `cut` the months it cuts (their days outside the range left out).
pub fn key_uses(
    whole: &[KeyTotal],
    cut: &[KeyMonth],
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Vec<KeyUse> {
    let mut per: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for t in whole {
        if filter.keeps(teams, &t.user, &t.product) {
            let e = per.entry((&t.user, &t.product)).or_default();
            e.0 += t.tokens;
            e.1 += t.days_used;
        }
    }
    for m in cut {
        if !filter.keeps(teams, &m.user, &m.product) {
            continue;
        }
        let (mut tokens, mut days) = (0, 0);
        for (_, t, _) in m.days_between(range.from, range.to) {
            tokens += t;
            days += 1;
        }
        if days > 0 {
            let e = per.entry((&m.user, &m.product)).or_default();
            e.0 += tokens;
            e.1 += days;
        }
    }
    per.into_iter()
        .filter(|(_, (_, days))| *days > 0)
        .map(|((user, product), (tokens, days_used))| KeyUse {
            user: user.to_owned(),
            product: product.to_owned(),
            tokens,
            days_used,
        })
        .collect()
}

/// The usage days of `months` in `[from, to]`, one per key and date (a date's usage
/// days merged, their tokens summed), for the rules that read days: a page of users,
/// not everyone. Windows are not kept: each row's window is its date's UTC day. A day
/// with tokens is Flex; one without is a subscription's (a free short launch on Flex
/// reads as one too, which no rule over these rows counts as spent).
pub fn day_rows(months: &[KeyMonth], from: NaiveDate, to: NaiveDate) -> Vec<UsageDay<'_>> {
    let mut out = Vec::new();
    for m in months {
        for (day, tokens, _) in m.days_between(from, to) {
            let start = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
            out.push(UsageDay {
                user: Cow::Borrowed(&m.user),
                product: Cow::Borrowed(&m.product),
                day,
                window_start: start,
                window_end: start + TimeDelta::hours(24),
                plan: if tokens > 0 {
                    Plan::Flex
                } else {
                    Plan::Subscription
                },
                tokens,
            });
        }
    }
    out
}

/// Each key's use in `range` from its days: what [`key_uses`] gives from totals.
pub fn key_uses_of_days(
    rows: &[UsageDay<'_>],
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Vec<KeyUse> {
    let mut per: BTreeMap<(&str, &str), (u64, std::collections::BTreeSet<NaiveDate>)> =
        BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| range.contains(r.day) && filter.keeps(teams, &r.user, &r.product))
    {
        let e = per.entry((&r.user, &r.product)).or_default();
        e.0 += r.tokens;
        e.1.insert(r.day);
    }
    per.into_iter()
        .map(|((user, product), (tokens, days))| KeyUse {
            user: user.to_owned(),
            product: product.to_owned(),
            tokens,
            days_used: days.len() as u64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::testing::day;
    use crate::store::tally::Tally;

    #[test]
    fn a_range_splits_into_whole_months_and_the_cut_ends() {
        let s = split(day("2026-01-15"), day("2026-04-10"));
        assert_eq!(s.whole, Some((day("2026-02-01"), day("2026-03-31"))));
        assert_eq!(
            s.cut,
            vec![
                (day("2026-01-15"), day("2026-01-31")),
                (day("2026-04-01"), day("2026-04-10"))
            ]
        );
        let s = split(day("2026-02-01"), day("2026-02-28"));
        assert_eq!(s.whole, Some((day("2026-02-01"), day("2026-02-28"))));
        assert!(s.cut.is_empty());
        let s = split(day("2026-02-03"), day("2026-02-05"));
        assert_eq!((s.whole, s.cut.len()), (None, 1));
        let s = split(day("2026-02-03"), day("2026-03-02"));
        assert_eq!((s.whole, s.cut.len()), (None, 2));
    }

    #[test]
    fn a_cut_month_counts_only_its_days_in_the_range() {
        let mut t = Tally::default();
        t.count("2026-01-10", 5, 1);
        t.count("2026-01-20", 7, 1);
        t.count("2026-01-20", 0, 1);
        let m = KeyMonth {
            user: "ana".into(),
            product: "acad".into(),
            first: day("2026-01-01"),
            month: t.months["2026-01"].clone(),
        };
        let range = ReportRange {
            from: day("2026-01-15"),
            to: day("2026-02-13"),
            months: 1.0,
        };
        let uses = key_uses(&[], &[m], &range, &Filter::default(), &Teams::default());
        assert_eq!(uses.len(), 1);
        assert_eq!((uses[0].tokens, uses[0].days_used), (7, 1));
    }
}
