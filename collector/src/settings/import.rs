//! The rules of an import (`POST /v1/admin/import`): a document merged into the
//! settings, every key checked by name, before anything is stored. Pure: the handler
//! reads, calls [`merge`], and stores.
//!
//! Merging adds or updates by key (product id, (user, product, from), team name, policy
//! key); `"replace": true` starts from empty settings. Unknown keys are refused at every
//! level, because a misspelt `grace_flexx` once kept the default grace in silence and a
//! top-level `users` was dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use daymeter_shared::catalog::Product;
use daymeter_shared::entitlement::Entitlement;
use daymeter_shared::ledger::Team;
use daymeter_shared::policy::Policy;
use daymeter_shared::record::Problem;
use daymeter_shared::session::{MAX_WINDOWS, check_name};
use serde_json::Value;

use super::{Person, Settings};

/// The highest daily rate a product may have: far above any real one, and low enough
/// that no sum of days overflows what the store keeps.
pub const MAX_TOKENS_PER_DAY: u64 = 1_000_000;

/// Why an import was refused: the record, a stable code, the message, the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl Refused {
    fn new(record: &str, problem: Problem) -> Refused {
        Refused {
            code: problem.code(),
            message: format!("{record}: {problem}"),
            field: problem.field().map(str::to_owned),
        }
    }
}

/// `doc` merged into `current`; whether it replaced everything.
pub fn merge(current: &Settings, doc: &Value) -> Result<(Settings, bool), Refused> {
    only_known_keys(doc)?;
    let replace = match doc.get("replace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Refused::new(
                "import",
                Problem::WrongType {
                    field: "replace",
                    expected: "true or false",
                },
            ));
        }
    };
    let mut settings = if replace {
        Settings::default()
    } else {
        current.clone()
    };
    if let Some(policy) = doc.get("policy").filter(|v| !v.is_null()) {
        settings
            .policy
            .merge(policy)
            .map_err(|p| Refused::new("policy", p))?;
    }
    if let Some(catalog) = doc.get("catalog").filter(|v| !v.is_null()) {
        merge_catalog(&mut settings, catalog)?;
    }
    if let Some(list) = doc.get("entitlements").filter(|v| !v.is_null()) {
        merge_entitlements(&mut settings, list)?;
    }
    if let Some(teams) = doc.get("teams").filter(|v| !v.is_null()) {
        merge_teams(&mut settings, teams)?;
    }
    if let Some(users) = doc.get("users").filter(|v| !v.is_null()) {
        merge_people(&mut settings, users)?;
    }
    merge_token_price(&mut settings, doc)?;
    Ok((settings, replace))
}

/// Whether `merged` shortens the window of `current`: only then must the stored
/// sessions be checked by [`window_fits`] (a longer window never splits a session into
/// more windows), and only then does the handler pay the store's scan for them.
pub fn shortens_window(current: &Settings, merged: &Settings) -> bool {
    merged.policy.window < current.policy.window
}

/// Whether the stored sessions still fit `window`: the longest of them (in seconds)
/// must span fewer windows than a sync may bring, or a window shortened from 24h to 1s
/// would turn a 900-day session into 77 million usage days in the recomputation.
pub fn window_fits(longest_session_secs: i64, window: Duration) -> Result<(), Refused> {
    let windows = u64::try_from(longest_session_secs).unwrap_or(0) / window.as_secs().max(1);
    if windows >= MAX_WINDOWS.unsigned_abs() {
        return Err(Refused::new(
            "policy",
            Problem::OutOfBounds {
                field: "window",
                bounds: "the longest stored session must span fewer than 1000 windows",
            },
        ));
    }
    Ok(())
}

fn merge_catalog(settings: &mut Settings, catalog: &Value) -> Result<(), Refused> {
    let Value::Object(entries) = catalog else {
        return Err(Refused::new(
            "catalog",
            Problem::WrongType {
                field: "catalog",
                expected: "an object of products by id",
            },
        ));
    };
    for (id, entry) in entries {
        let record = format!("catalog product {id:?}");
        check_name("product", id).map_err(|p| Refused::new(&record, p))?;
        let product = Product::from_json(entry).map_err(|p| Refused::new(&record, p))?;
        if product.tokens_per_day > MAX_TOKENS_PER_DAY {
            return Err(Refused::new(
                &record,
                Problem::OutOfBounds {
                    field: "tokens_per_day",
                    bounds: "at most 1000000",
                },
            ));
        }
        match entry.get("subscription_price") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let price = price(v, "subscription_price").map_err(|p| Refused::new(&record, p))?;
                settings.prices.subscription_price.insert(id.clone(), price);
            }
        }
        settings.catalog.insert(id.clone(), product);
    }
    Ok(())
}

/// A price: a finite number, 0 or more.
fn price(value: &Value, field: &'static str) -> Result<f64, Problem> {
    value
        .as_f64()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or(Problem::WrongType {
            field,
            expected: "a price: a number, 0 or more",
        })
}

/// `token_price` and `currency` (ISO 4217: three capital letters), for plan advice.
fn merge_token_price(settings: &mut Settings, doc: &Value) -> Result<(), Refused> {
    if let Some(v) = doc.get("token_price").filter(|v| !v.is_null()) {
        settings.prices.token_price =
            Some(price(v, "token_price").map_err(|p| Refused::new("import", p))?);
    }
    if let Some(v) = doc.get("currency").filter(|v| !v.is_null()) {
        let currency = v
            .as_str()
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| {
                Refused::new(
                    "import",
                    Problem::WrongType {
                        field: "currency",
                        expected: "an ISO 4217 code such as \"EUR\"",
                    },
                )
            })?;
        settings.prices.currency = Some(currency.to_owned());
    }
    if settings.prices.token_price.is_some() && settings.prices.currency.is_none() {
        let mut refused = Refused::new(
            "import",
            Problem::Malformed("token_price needs its currency (\"currency\": \"EUR\")".to_owned()),
        );
        refused.field = Some("currency".to_owned());
        return Err(refused);
    }
    Ok(())
}

fn merge_entitlements(settings: &mut Settings, list: &Value) -> Result<(), Refused> {
    let Value::Array(list) = list else {
        return Err(Refused::new(
            "entitlements",
            Problem::WrongType {
                field: "entitlements",
                expected: "a list",
            },
        ));
    };
    for (i, e) in list.iter().enumerate() {
        let record = format!("entitlement #{}", i + 1);
        let e = Entitlement::from_json(e).map_err(|p| Refused::new(&record, p))?;
        check_name("user", &e.user).map_err(|p| Refused::new(&record, p))?;
        if !settings.catalog.contains_key(&e.product) {
            // replay refuses it too: a plan for a product nobody prices.
            return Err(Refused::new(&record, Problem::UnknownProduct(e.product)));
        }
        settings
            .entitlements
            .retain(|x| !(x.user == e.user && x.product == e.product && x.from == e.from));
        settings.entitlements.push(e);
    }
    Ok(())
}

fn merge_teams(settings: &mut Settings, teams: &Value) -> Result<(), Refused> {
    let teams: BTreeMap<String, Team> = serde_json::from_value(teams.clone()).map_err(|e| {
        Refused::new(
            "teams",
            Problem::Malformed(format!(
                "teams must map names to {{\"users\": [...], \"low_balance\": n}}: {e}"
            )),
        )
    })?;
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, team) in &teams {
        let record = format!("team {name:?}");
        check_name("team", name).map_err(|p| Refused::new(&record, p))?;
        for user in &team.users {
            check_name("users", user).map_err(|p| Refused::new(&record, p))?;
            if let Some(first) = seen.insert(user, name) {
                let mut refused = Refused::new(
                    &record,
                    Problem::Malformed(format!(
                        "user {user:?} is listed in teams {first:?} and {name:?}; a user belongs to one team"
                    )),
                );
                refused.field = Some("users".to_owned());
                return Err(refused);
            }
        }
    }
    for (name, team) in teams {
        // A user belongs to one team: an import that lists them elsewhere moves them.
        for other in settings.teams.values_mut() {
            other.users.retain(|u| !team.users.contains(u));
        }
        settings.teams.insert(name, team);
    }
    Ok(())
}

/// `"users": {"ana": {"email": …, "first_name": …, "last_name": …}}`: who each licence
/// user is, merged by user (a user given again is replaced whole).
fn merge_people(settings: &mut Settings, users: &Value) -> Result<(), Refused> {
    let Value::Object(entries) = users else {
        return Err(Refused::new(
            "users",
            Problem::WrongType {
                field: "users",
                expected: "an object of people by licence user",
            },
        ));
    };
    for (user, entry) in entries {
        let record = format!("user {user:?}");
        check_name("users", user).map_err(|p| Refused::new(&record, p))?;
        let person: Person = serde_json::from_value(entry.clone()).map_err(|e| {
            Refused::new(
                &record,
                Problem::Malformed(format!(
                    "a user is {{\"email\": …, \"first_name\": …, \"last_name\": …}}, each a string: {e}"
                )),
            )
        })?;
        for (field, value) in [
            ("email", &person.email),
            ("first_name", &person.first_name),
            ("last_name", &person.last_name),
        ] {
            if let Some(v) = value {
                check_name(field, v).map_err(|p| Refused::new(&record, p))?;
            }
        }
        settings.people.insert(user.clone(), person);
    }
    Ok(())
}

/// Refuses the keys an import does not know, at every level, by name.
fn only_known_keys(doc: &Value) -> Result<(), Refused> {
    let check = |record: &str, value: &Value, allowed: &[&str]| match value {
        Value::Object(map) => match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(Refused {
                code: "unknown_key",
                message: format!(
                    "{record}: unknown key {key:?} (known: {})",
                    allowed.join(", ")
                ),
                field: Some(key.clone()),
            }),
            None => Ok(()),
        },
        _ => Ok(()), // the wrong type is refused, by name, where the value is read
    };
    let Value::Object(top) = doc else {
        return Err(Refused::new(
            "import",
            Problem::WrongType {
                field: "import",
                expected: "an object",
            },
        ));
    };
    check(
        "import",
        doc,
        &[
            "catalog",
            "entitlements",
            "teams",
            "users",
            "policy",
            "token_price",
            "currency",
            "replace",
        ],
    )?;
    if let Some(policy) = top.get("policy") {
        check("policy", policy, Policy::KEYS)?;
    }
    if let Some(Value::Object(catalog)) = top.get("catalog") {
        for (id, product) in catalog {
            let record = format!("catalog product {id:?}");
            check(
                &record,
                product,
                &[
                    "name",
                    "tokens_per_day",
                    "match",
                    "rate_confirmed",
                    "subscription_price",
                ],
            )?;
            if let Some(Value::Array(rules)) = product.get("match") {
                for rule in rules {
                    check(&record, rule, &["exe", "args_contain"])?;
                }
            }
        }
    }
    if let Some(Value::Array(list)) = top.get("entitlements") {
        for (i, e) in list.iter().enumerate() {
            check(
                &format!("entitlement #{}", i + 1),
                e,
                &["user", "product", "plan", "from", "to"],
            )?;
        }
    }
    if let Some(Value::Object(teams)) = top.get("teams") {
        for (name, team) in teams {
            check(
                &format!("team {name:?}"),
                team,
                &["users", "low_balance", "personal_data"],
            )?;
        }
    }
    if let Some(Value::Object(users)) = top.get("users") {
        for (user, person) in users {
            check(
                &format!("user {user:?}"),
                person,
                &["email", "first_name", "last_name"],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(doc: Value) -> Refused {
        merge(&Settings::default(), &doc).expect_err("refused")
    }

    #[test]
    fn a_misspelt_policy_key_is_refused_by_name() {
        let r = refused(json!({"policy": {"grace_flexx": "48h"}}));
        assert_eq!(
            (r.code, r.field.as_deref()),
            ("unknown_key", Some("grace_flexx"))
        );
    }

    #[test]
    fn people_and_a_teams_personal_data_are_imported_and_a_misspelt_key_refused() {
        let (s, _) = merge(
            &Settings::default(),
            &json!({
                "teams": {"hr": {"users": ["ben"], "personal_data": "hashed"}},
                "users": {"ben": {"email": "ben@firm.example", "first_name": "Ben"}}
            }),
        )
        .expect("merged");
        assert_eq!(
            s.teams["hr"].personal_data,
            daymeter_shared::ledger::PersonalData::Hashed
        );
        assert_eq!(s.people["ben"].email.as_deref(), Some("ben@firm.example"));
        let r = refused(json!({"users": {"ben": {"e_mail": "ben@firm.example"}}}));
        assert_eq!(
            (r.code, r.field.as_deref()),
            ("unknown_key", Some("e_mail"))
        );
        let r = refused(json!({"teams": {"hr": {"personal_data": "hidden"}}}));
        assert!(r.message.contains("hidden"), "{}", r.message);
    }

    #[test]
    fn merge_keeps_what_the_import_does_not_name() {
        let (first, _) = merge(
            &Settings::default(),
            &json!({"catalog": {"acad": {"tokens_per_day": 7}}, "policy": {"window": "1h"}}),
        )
        .unwrap();
        let (second, replace) = merge(
            &first,
            &json!({"catalog": {"revit": {"tokens_per_day": 10}}}),
        )
        .unwrap();
        assert!(!replace);
        assert_eq!(second.catalog.len(), 2);
        assert_eq!(second.policy.window, Duration::from_secs(3600));
        let (replaced, replace) = merge(&second, &json!({"replace": true})).unwrap();
        assert!(replace);
        assert_eq!(replaced, Settings::default());
    }

    #[test]
    fn a_user_moves_to_the_team_an_import_lists_them_in() {
        let (first, _) = merge(
            &Settings::default(),
            &json!({"teams": {"a": {"users": ["sophie"]}}}),
        )
        .unwrap();
        let (second, _) = merge(&first, &json!({"teams": {"b": {"users": ["sophie"]}}})).unwrap();
        assert!(second.teams["a"].users.is_empty());
        assert_eq!(second.teams["b"].users, ["sophie"]);
    }

    #[test]
    fn a_window_too_short_for_the_longest_stored_session_is_refused() {
        let ten_days = 10 * 86_400;
        assert!(window_fits(ten_days, Duration::from_secs(3600)).is_ok());
        let r = window_fits(ten_days, Duration::from_secs(600)).unwrap_err();
        assert_eq!(r.field.as_deref(), Some("window"));
    }
}
