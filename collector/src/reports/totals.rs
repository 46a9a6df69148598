//! Reports over the store's totals rather than its days: each key's use in a range;
//! and, for a page of users, their days rebuilt from their months for the rules that
//! read days.
//!
//! Why: a year of 10,000 users is millions of usage days but a few hundred thousand
//! key-months, and a range of whole months is one row a key (see `store::tally`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{NaiveDate, TimeDelta};
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

/// Each key's use that `filter` keeps, from the store's totals over the range
/// ([`crate::store::Store::key_totals`]: one row a key, in key order).
pub fn key_uses(totals: Vec<KeyTotal>, filter: &Filter, teams: &Teams) -> Vec<KeyUse> {
    totals
        .into_iter()
        .filter(|t| t.days_used > 0 && filter.keeps(teams, &t.user, &t.product))
        .map(|t| KeyUse {
            user: t.user,
            product: t.product,
            tokens: t.tokens,
            days_used: t.days_used,
        })
        .collect()
}

/// The usage days of `months` in `[from, to]`, one per key and date (a date's usage
/// days merged, their tokens summed), for the rules that read days: a page of users,
/// not everyone. Windows are not kept: each row's window is its date's UTC day. A day
/// with tokens is Flex; one without is a subscription's (a free short launch on Flex
/// reads as one too, which no rule over these rows counts as spent).
pub fn day_rows(months: &[KeyMonth], from: NaiveDate, to: NaiveDate) -> Vec<UsageDay<'_>> {
    let rows = months
        .iter()
        .map(|m| m.month.days.iter().filter(|&&d| d > 0).count())
        .sum();
    let mut out = Vec::with_capacity(rows);
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
