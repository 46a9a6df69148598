//! The CSV exports' rows, with the columns licence admins know from the vendor's
//! exports — plus `User`, the licence user id, after the names: an import need not give
//! emails, and a row must still say whose it is.
//!
//! - **token usage**: one row per charged Flex day: Team, Email, First name, Last name,
//!   User, Product (the catalog's name), Feature (the product id), Day used, Tokens used.
//! - **seat usage**: one row per day of a subscription (or free assignment): Team,
//!   Email, First name, Last name, User, Product, Day used.
//! - **usage**: the usage report's lines ([`super::usage`]).
//!
//! People appear as [`People`] says (names, or a keyed hash for a hashed team).

use daymeter_shared::catalog::Catalog;
use daymeter_shared::entitlement::Plan;
use daymeter_shared::usage::UsageDay;

use super::people::People;
use super::range::ReportRange;
use super::usage::{Status, UsageLine};
use super::{Filter, Teams};

pub const TOKEN_USAGE: &[&str] = &[
    "Team",
    "Email",
    "First name",
    "Last name",
    "User",
    "Product",
    "Feature",
    "Day used",
    "Tokens used",
];

pub const SEAT_USAGE: &[&str] = &[
    "Team",
    "Email",
    "First name",
    "Last name",
    "User",
    "Product",
    "Day used",
];

pub const USAGE: &[&str] = &[
    "Team",
    "Email",
    "First name",
    "Last name",
    "User",
    "Product",
    "Status",
    "Assigned",
    "Days used",
    "Days inactive",
    "Last accessed",
    "Monthly average",
    "Tokens used",
];

fn person(people: &People<'_>, teams: &Teams, user: &str) -> [String; 5] {
    let id = people.identity(user);
    [
        teams.of(user).to_owned(),
        id.email,
        id.first_name,
        id.last_name,
        id.user,
    ]
}

fn product_name(catalog: &Catalog, product: &str) -> String {
    catalog
        .get(product)
        .and_then(|p| p.name.clone())
        .unwrap_or_else(|| product.to_owned())
}

/// Token usage rows, in the store's order (user, product, day).
pub fn token_usage<'a>(
    rows: &'a [UsageDay<'_>],
    range: &'a ReportRange,
    filter: &'a Filter,
    teams: &'a Teams,
    people: &'a People<'a>,
    catalog: &'a Catalog,
) -> impl Iterator<Item = Vec<String>> + 'a {
    rows.iter()
        .filter(move |r| {
            r.plan == Plan::Flex
                && range.contains(r.day)
                && filter.keeps(teams, &r.user, &r.product)
        })
        .map(move |r| {
            let mut record = person(people, teams, &r.user).to_vec();
            record.extend([
                product_name(catalog, &r.product),
                r.product.to_string(),
                r.day.to_string(),
                r.tokens.to_string(),
            ]);
            record
        })
}

/// Seat usage rows: the days counted under a subscription or a free assignment.
pub fn seat_usage<'a>(
    rows: &'a [UsageDay<'_>],
    range: &'a ReportRange,
    filter: &'a Filter,
    teams: &'a Teams,
    people: &'a People<'a>,
    catalog: &'a Catalog,
) -> impl Iterator<Item = Vec<String>> + 'a {
    rows.iter()
        .filter(move |r| {
            r.plan != Plan::Flex
                && range.contains(r.day)
                && filter.keeps(teams, &r.user, &r.product)
        })
        .map(move |r| {
            let mut record = person(people, teams, &r.user).to_vec();
            record.extend([product_name(catalog, &r.product), r.day.to_string()]);
            record
        })
}

/// The users of `users` whose days can be a seat's: those with a subscription or a
/// free assignment, or everyone when the catalog has a product at rate 0 (its days are
/// free for all). Days are priced under the current settings (an import reprices
/// them), so the seat-usage export reads these users' days only — at 10,000 Flex users
/// it read every day to find none.
pub fn seat_users(users: &[String], settings: &crate::settings::Settings) -> Vec<String> {
    if settings.catalog.values().any(|p| p.tokens_per_day == 0) {
        return users.to_vec();
    }
    let seated: std::collections::HashSet<&str> = settings
        .entitlements
        .iter()
        .filter(|e| e.plan != Plan::Flex)
        .map(|e| e.user.as_str())
        .collect();
    users
        .iter()
        .filter(|u| seated.contains(u.as_str()))
        .cloned()
        .collect()
}

/// The usage report's lines as rows.
pub fn usage<'a>(
    lines: &'a [UsageLine],
    teams: &'a Teams,
    people: &'a People<'a>,
    catalog: &'a Catalog,
) -> impl Iterator<Item = Vec<String>> + 'a {
    lines.iter().map(move |l| {
        let mut record = person(people, teams, &l.user).to_vec();
        let day = |d: Option<chrono::NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        record.extend([
            product_name(catalog, &l.product),
            status_text(l.status).to_owned(),
            day(l.assigned_on),
            l.days_used.to_string(),
            l.days_inactive.to_string(),
            day(l.last_accessed),
            format!("{:.2}", l.monthly_average),
            l.tokens.to_string(),
        ]);
        record
    })
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Active => "Active",
        Status::Inactive => "Inactive",
        Status::NotYetActive => "Not yet active",
        Status::NotUsed => "Not used",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use daymeter_shared::catalog::Product;

    use super::*;
    use crate::reports::testing::{day, row};
    use crate::settings::{Person, Settings};

    #[test]
    fn seat_days_are_looked_for_with_subscribers_or_a_free_product_only() {
        let mut settings = Settings::default();
        let product = |tokens_per_day| Product {
            name: None,
            tokens_per_day,
            matches: vec![],
            rate_confirmed: None,
        };
        settings.catalog.insert("acad".to_owned(), product(7));
        for (user, plan) in [
            ("ana", Plan::Subscription),
            ("bo", Plan::Flex),
            ("cy", Plan::Free),
        ] {
            settings
                .entitlements
                .push(daymeter_shared::entitlement::Entitlement {
                    user: user.to_owned(),
                    product: "acad".to_owned(),
                    plan,
                    from: None,
                    to: None,
                });
        }
        let users: Vec<String> = ["ana", "bo", "cy", "dee"].map(String::from).to_vec();
        assert_eq!(seat_users(&users, &settings), ["ana", "cy"]);
        settings.catalog.insert("viewer".to_owned(), product(0));
        assert_eq!(seat_users(&users, &settings), users);
    }

    #[test]
    fn a_token_usage_row_has_the_vendors_columns_with_the_catalog_name() {
        let mut settings = Settings::default();
        settings.catalog.insert(
            "acad".to_owned(),
            Product {
                name: Some("AutoCAD".to_owned()),
                tokens_per_day: 7,
                matches: vec![],
                rate_confirmed: None,
            },
        );
        settings.people.insert(
            "ana".to_owned(),
            Person {
                email: Some("ana@firm.example".to_owned()),
                first_name: Some("Ana".to_owned()),
                last_name: Some("Núñez".to_owned()),
            },
        );
        let teams = Teams::new(&BTreeMap::new());
        let people = People::new(&settings, &teams, "admin-token-0000000001");
        let rows = [
            row("ana", "acad", "2026-11-02", 7),
            row("ana", "acad", "2026-11-03", 0),
        ];
        let range = ReportRange {
            from: day("2026-11-01"),
            to: day("2026-11-30"),
            months: 1.0,
        };
        let filter = Filter::default();
        let out: Vec<_> =
            token_usage(&rows, &range, &filter, &teams, &people, &settings.catalog).collect();
        assert_eq!(
            out,
            [[
                "default",
                "ana@firm.example",
                "Ana",
                "Núñez",
                "ana",
                "AutoCAD",
                "acad",
                "2026-11-02",
                "7"
            ]]
        );
        assert_eq!(out[0].len(), TOKEN_USAGE.len());
        let seats: Vec<_> =
            seat_usage(&rows, &range, &filter, &teams, &people, &settings.catalog).collect();
        assert_eq!(seats.len(), 1, "the subscription's day");
        assert_eq!(seats[0].len(), SEAT_USAGE.len());
    }
}
