//! What licence admins ask of the collector, answered by backend-neutral rules over what
//! the store returns (usage days, sessions, the ledger, the settings): no report reads
//! a database, so a PostgreSQL backend gets every report for free and each rule is
//! tested on plain rows.
//!
//! - [`range`] — `range=past-30-days` … `past-12-months`, or `from`/`to`.
//! - [`tokens`] — tokens used and by day; by product (bands, averages); by user
//!   (days used, weekly days per product).
//! - [`usage`] — per user and product: days used and inactive, last accessed, status.
//! - [`forecast`] — a team's burn rate, when its balance runs out, what expires unused.
//! - [`advice`] — Flex tokens against a subscription, per user and product.
//! - [`concurrent`] — one user's sessions of one product overlapping on two devices.
//! - [`totals`] — each key's use in a range from the store's monthly totals; a page's
//!   days rebuilt from its months.
//! - [`people`] — names and emails as imported, or a keyed hash for a hashed team.
//! - [`exports`] — the CSV exports' rows, with the vendor's columns.
//! - [`waste`] — days charged while the product was idle or asleep, rollovers, and what
//!   `rollover = active` would save.
//!
//! A report covers the users a [`Filter`] keeps: `team`, `user` and `product`, each
//! optional, combined with "and".

pub mod advice;
pub mod concurrent;
pub mod exports;
pub mod forecast;
pub mod people;
pub mod range;
pub mod tokens;
pub mod totals;
pub mod usage;
pub mod waste;

use std::collections::{BTreeMap, HashMap};

use daymeter_shared::ledger::{DEFAULT_TEAM, Team};

/// Which rows a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub team: Option<String>,
    pub user: Option<String>,
    pub product: Option<String>,
}

/// Each user's team, looked up once per report rather than by scanning every team's
/// list for every row (10,000 users make that 10⁸ comparisons).
#[derive(Debug, Clone, Default)]
pub struct Teams {
    by_user: HashMap<String, String>,
}

impl Teams {
    pub fn new(teams: &BTreeMap<String, Team>) -> Teams {
        let mut by_user = HashMap::new();
        // The first team (by name) that lists a user is theirs, as `ledger::team_of`
        // decides.
        for (name, team) in teams {
            for user in &team.users {
                by_user.entry(user.clone()).or_insert_with(|| name.clone());
            }
        }
        Teams { by_user }
    }

    /// The user's team (`default` if none lists them).
    pub fn of<'a>(&'a self, user: &str) -> &'a str {
        self.by_user.get(user).map_or(DEFAULT_TEAM, String::as_str)
    }
}

/// Two decimals: what a spreadsheet shows, and what a test can compare exactly.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `count ÷ months`, or 0 for a range of no months.
pub(crate) fn per_month(count: f64, months: f64) -> f64 {
    if months > 0.0 {
        round2(count / months)
    } else {
        0.0
    }
}

impl Filter {
    /// Whether the report covers `product` used by `user`.
    pub fn keeps(&self, teams: &Teams, user: &str, product: &str) -> bool {
        self.user.as_deref().is_none_or(|u| u == user)
            && self.product.as_deref().is_none_or(|p| p == product)
            && self.team.as_deref().is_none_or(|t| t == teams.of(user))
    }
}

/// Rows for the rules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::borrow::Cow;

    use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
    use daymeter_shared::entitlement::Plan;
    use daymeter_shared::usage::UsageDay;

    pub fn day(s: &str) -> NaiveDate {
        s.parse().expect("a day")
    }

    /// A day of `product` for `user` opened at 09:00 UTC on `on`: Flex with `tokens`,
    /// or a subscription's day with none.
    pub fn row(user: &str, product: &str, on: &str, tokens: u64) -> UsageDay<'static> {
        let start: DateTime<Utc> = format!("{on}T09:00:00Z").parse().expect("an instant");
        UsageDay {
            user: Cow::Owned(user.to_owned()),
            product: Cow::Owned(product.to_owned()),
            day: day(on),
            window_start: start,
            window_end: start + TimeDelta::hours(24),
            plan: if tokens > 0 {
                Plan::Flex
            } else {
                Plan::Subscription
            },
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_no_team_lists_is_in_the_default_team() {
        let mut teams = BTreeMap::new();
        teams.insert(
            "civil".to_owned(),
            Team {
                users: vec!["ana".to_owned()],
                low_balance: None,
                ..Team::default()
            },
        );
        let teams = Teams::new(&teams);
        assert_eq!(teams.of("ana"), "civil");
        assert_eq!(teams.of("ben"), DEFAULT_TEAM);
    }

    #[test]
    fn a_filter_combines_team_user_and_product_with_and() {
        let mut map = BTreeMap::new();
        map.insert(
            "civil".to_owned(),
            Team {
                users: vec!["ana".to_owned()],
                low_balance: None,
                ..Team::default()
            },
        );
        let teams = Teams::new(&map);
        let f = Filter {
            team: Some("civil".to_owned()),
            user: None,
            product: Some("acad".to_owned()),
        };
        assert!(f.keeps(&teams, "ana", "acad"));
        assert!(!f.keeps(&teams, "ana", "revit"));
        assert!(!f.keeps(&teams, "ben", "acad"));
        assert!(Filter::default().keeps(&teams, "ben", "revit"));
    }
}
