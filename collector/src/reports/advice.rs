//! Plan advice: for each user and product, what a year of Flex days cost against a
//! subscription, and the number of days a year from which a subscription is cheaper.
//!
//! Prices come from the import (`token_price` with its `currency`, and per product
//! `subscription_price` a year). Without them the advice still lists days and tokens,
//! and says nothing it cannot know (no cost, no recommendation). With them: Flex cost =
//! tokens × token price; break-even days = ⌈subscription price ÷ (daily rate × token
//! price)⌉; a subscription is advised when the Flex cost is above its price.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use daymeter_shared::entitlement::Plan;
use daymeter_shared::usage::UsageDay;
use serde::Serialize;

use super::{Filter, Teams, round2};

/// The import's prices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// The price of one token, and its currency (`EUR`).
    pub token: Option<(f64, String)>,
    /// A year's subscription, per product, in the token price's currency.
    pub subscription: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    Flex,
    Subscription,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdviceLine {
    pub user: String,
    pub team: String,
    pub product: String,
    pub days_used: usize,
    pub tokens: u64,
    pub currency: Option<String>,
    pub flex_cost: Option<f64>,
    pub subscription_price: Option<f64>,
    pub break_even_days: Option<u64>,
    pub recommendation: Option<Recommendation>,
}

/// Over Flex rows only (a subscription's days cost no tokens and need no advice), of the
/// twelve months `from..=to`; `rates` are the products' daily token rates.
pub fn lines(
    rows: &[UsageDay<'_>],
    from: NaiveDate,
    to: NaiveDate,
    rates: &BTreeMap<String, u64>,
    prices: &Prices,
    filter: &Filter,
    teams: &Teams,
) -> Vec<AdviceLine> {
    let mut per: BTreeMap<(&str, &str), (std::collections::BTreeSet<NaiveDate>, u64)> =
        BTreeMap::new();
    for r in rows.iter().filter(|r| {
        r.plan == Plan::Flex
            && from <= r.day
            && r.day <= to
            && filter.keeps(teams, &r.user, &r.product)
    }) {
        let e = per.entry((&r.user, &r.product)).or_default();
        e.0.insert(r.day);
        e.1 += r.tokens;
    }
    per.into_iter()
        .map(|((user, product), (days, tokens))| {
            let token_price = prices.token.as_ref().map(|(p, _)| *p);
            let subscription_price = prices.subscription.get(product).copied();
            let flex_cost = token_price.map(|p| round2(tokens as f64 * p));
            let daily = rates
                .get(product)
                .copied()
                .filter(|r| *r > 0)
                .zip(token_price)
                .map(|(rate, p)| rate as f64 * p)
                .filter(|d| *d > 0.0);
            let break_even_days = subscription_price
                .zip(daily)
                .map(|(year, day)| (year / day).ceil() as u64);
            let recommendation = flex_cost.zip(subscription_price).map(|(flex, sub)| {
                if flex > sub {
                    Recommendation::Subscription
                } else {
                    Recommendation::Flex
                }
            });
            AdviceLine {
                user: user.to_owned(),
                team: teams.of(user).to_owned(),
                product: product.to_owned(),
                days_used: days.len(),
                tokens,
                currency: prices.token.as_ref().map(|(_, c)| c.clone()),
                flex_cost,
                subscription_price,
                break_even_days,
                recommendation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use chrono::{DateTime, TimeDelta, Utc};

    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("a day")
    }

    fn flex_days(user: &str, n: u32) -> Vec<UsageDay<'static>> {
        (0..n)
            .map(|i| {
                let on = day("2026-01-01") + TimeDelta::days(i64::from(i));
                let start: DateTime<Utc> = on.and_hms_opt(9, 0, 0).expect("a time").and_utc();
                UsageDay {
                    user: Cow::Owned(user.to_owned()),
                    product: Cow::Borrowed("acad"),
                    day: on,
                    window_start: start,
                    window_end: start + TimeDelta::hours(24),
                    plan: Plan::Flex,
                    tokens: 7,
                }
            })
            .collect()
    }

    fn advise(rows: &[UsageDay<'_>], prices: &Prices) -> Vec<AdviceLine> {
        lines(
            rows,
            day("2026-01-01"),
            day("2026-12-31"),
            &BTreeMap::from([("acad".to_owned(), 7)]),
            prices,
            &Filter::default(),
            &Teams::default(),
        )
    }

    fn priced() -> Prices {
        Prices {
            token: Some((3.0, "EUR".to_owned())),
            subscription: BTreeMap::from([("acad".to_owned(), 2100.0)]),
        }
    }

    #[test]
    fn a_heavy_flex_user_is_advised_a_subscription_past_the_break_even() {
        // 7 tokens × 3 EUR = 21 EUR a day; 2100 EUR a year: 100 days break even.
        let mut rows = flex_days("ana", 120);
        rows.extend(flex_days("ben", 40));
        let lines = advise(&rows, &priced());
        let ana = &lines[0];
        assert_eq!(ana.break_even_days, Some(100));
        assert_eq!(ana.flex_cost, Some(2520.0));
        assert_eq!(ana.recommendation, Some(Recommendation::Subscription));
        assert_eq!(lines[1].recommendation, Some(Recommendation::Flex));
    }

    #[test]
    fn without_prices_the_advice_gives_days_and_tokens_only() {
        let lines = advise(&flex_days("ana", 10), &Prices::default());
        assert_eq!((lines[0].days_used, lines[0].tokens), (10, 70));
        assert_eq!(lines[0].flex_cost, None);
        assert_eq!(lines[0].recommendation, None);
        assert_eq!(lines[0].break_even_days, None);
    }
}
