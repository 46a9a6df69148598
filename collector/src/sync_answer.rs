//! What a sync answers besides its acknowledgements, decided from the settings: the
//! user's plan and rate for each product now, the running products' current windows
//! with the price of the next, and the reminders due. The handler (`api::sync`) reads
//! the store and serializes; the decisions are here, so that they are written once and
//! read without HTTP around them.

use chrono::{DateTime, Utc};
use daymeter_shared::entitlement::Plan;
use daymeter_shared::usage::UsageDay;
use serde::Serialize;

use crate::store::Settings;

/// An instant as the protocol writes it: UTC, whole seconds.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A product's plan and daily rate for the user now, as the sync answer lists them.
#[derive(Serialize)]
pub struct EntitlementNow<'a> {
    pub product: &'a str,
    pub plan: Plan,
    pub tokens_per_day: u64,
}

/// The user's plan and rate for every catalog product, now.
pub fn entitlements_of<'s>(
    settings: &'s Settings,
    user: &str,
    now: DateTime<Utc>,
) -> Vec<EntitlementNow<'s>> {
    let t = now.timestamp_nanos_opt().unwrap_or_default();
    settings
        .catalog
        .keys()
        .map(|id| {
            let (plan, tokens_per_day) = settings.pricing(user, id).at(t);
            EntitlementNow {
                product: id,
                plan,
                tokens_per_day,
            }
        })
        .collect()
}

/// The current window of a product the user has running.
#[derive(Serialize)]
pub struct OpenWindow {
    product: String,
    window_start: String,
    window_end: String,
    /// Tokens the next window will cost if the product is still open when this one ends.
    next_tokens: u64,
    #[serde(skip)]
    end: DateTime<Utc>,
}

/// The current window (at `now`) of each product in `open` (what the user has
/// running), from the user's stored windows containing `now` (`rows`), with what the
/// next window would cost.
pub fn open_windows(
    settings: &Settings,
    user: &str,
    open: &[(String, bool)],
    rows: &[UsageDay<'_>],
    now: DateTime<Utc>,
) -> Vec<OpenWindow> {
    let mut out = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.user == user && open.iter().any(|(p, _)| *p == r.product))
    {
        if row.window_start <= now && now < row.window_end {
            let next = settings
                .pricing(user, &row.product)
                .at(row.window_end.timestamp_nanos_opt().unwrap_or_default())
                .1;
            out.push(OpenWindow {
                product: row.product.to_string(),
                window_start: stamp(row.window_start),
                window_end: stamp(row.window_end),
                next_tokens: next,
                end: row.window_end,
            });
        }
    }
    out
}

/// A reminder in the sync answer (spec/protocol.md), with the text the agent shows.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reminder<'a> {
    WindowRollover {
        product: &'a str,
        at: String,
        window_end: String,
        tokens: u64,
        text: String,
    },
    InsufficientBalance {
        product: &'a str,
        balance: u64,
        tokens_per_day: u64,
        text: String,
    },
}

/// Reminders due now: a running product sitting idle whose window ends within
/// `remind_before` (closing it saves the next window's tokens), and Flex products the
/// team's balance (`remaining`) can no longer pay a day of.
pub fn reminders<'a>(
    settings: &Settings,
    entitlements: &[EntitlementNow<'a>],
    open: &[(String, bool)],
    windows: &'a [OpenWindow],
    remaining: u64,
    now: DateTime<Utc>,
) -> Vec<Reminder<'a>> {
    let mut out = Vec::new();
    let lead = chrono::TimeDelta::from_std(settings.policy.remind_before).unwrap_or_default();
    for w in windows {
        let product = w.product.as_str();
        let idle = open.iter().any(|(p, idle)| p == product && *idle);
        let at = w
            .end
            .checked_sub_signed(lead)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if idle && now >= at {
            let name = settings
                .catalog
                .get(product)
                .and_then(|p| p.name.clone())
                .unwrap_or_else(|| product.to_owned());
            let tokens = w.next_tokens;
            out.push(Reminder::WindowRollover {
                product,
                at: stamp(at),
                window_end: w.window_end.clone(),
                tokens,
                text: format!("{name} has been idle and its day ends at {}. Close it now to avoid being charged {tokens} tokens for another day.", w.window_end),
            });
        }
    }
    for e in entitlements {
        let rate = e.tokens_per_day;
        if e.plan != Plan::Flex || rate == 0 {
            continue;
        }
        let balance = remaining;
        if balance < rate {
            let product = e.product;
            out.push(Reminder::InsufficientBalance {
                product,
                balance,
                tokens_per_day: rate,
                text: format!("Your team has {balance} tokens left; a day of {product} costs {rate}. Ask your licence admin to add tokens: daymeter warns, it never closes a product for the balance."),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use daymeter_shared::catalog::Product;
    use daymeter_shared::entitlement::Entitlement;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// acad at 7 a day; Tom's subscription to it starts on Tuesday.
    fn settings() -> Settings {
        let mut s = Settings::default();
        let product = Product {
            name: Some("AutoCAD".into()),
            tokens_per_day: 7,
            matches: vec![],
            rate_confirmed: None,
        };
        s.catalog.insert("acad".into(), product);
        let sub = serde_json::json!({"user": "tom", "product": "acad", "plan": "subscription",
            "from": "2026-02-03T00:00:00Z"});
        s.entitlements.push(Entitlement::from_json(&sub).unwrap());
        s
    }

    fn window(user: &str, start: &str, end: &str) -> UsageDay<'static> {
        let start = at(start);
        UsageDay {
            user: user.to_owned().into(),
            product: "acad".into(),
            day: start.date_naive(),
            window_start: start,
            window_end: at(end),
            plan: Plan::Flex,
            tokens: 7,
        }
    }

    #[test]
    fn an_idle_product_near_its_window_end_is_reminded_with_the_next_windows_price() {
        let s = settings();
        let now = at("2026-02-03T08:50:00Z");
        let open = [("acad".to_owned(), true)];
        for (user, price) in [("sophie", 7), ("tom", 0)] {
            let rows = [window(user, "2026-02-02T09:00:00Z", "2026-02-03T09:00:00Z")];
            let windows = open_windows(&s, user, &open, &rows, now);
            assert_eq!(windows.len(), 1);
            assert_eq!(windows[0].next_tokens, price, "{user}");
            let due = reminders(&s, &[], &open, &windows, 100, now);
            assert!(
                matches!(due[..], [Reminder::WindowRollover { tokens, .. }] if tokens == price),
                "{user}"
            );
        }
    }

    #[test]
    fn a_flex_product_the_balance_cannot_pay_a_day_of_is_reminded() {
        let s = settings();
        let now = at("2026-02-02T08:00:00Z");
        let plans = entitlements_of(&s, "sophie", now);
        let due = reminders(&s, &plans, &[], &[], 6, now);
        assert!(matches!(
            due[..],
            [Reminder::InsufficientBalance {
                balance: 6,
                tokens_per_day: 7,
                ..
            }]
        ));
        assert!(reminders(&s, &plans, &[], &[], 7, now).is_empty());
        let tom = entitlements_of(&s, "tom", at("2026-02-03T08:00:00Z"));
        assert!(
            reminders(&s, &tom, &[], &[], 0, now).is_empty(),
            "on a subscription"
        );
    }
}
