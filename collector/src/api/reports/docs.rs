//! Each report's document, as `/v1/reports/…` answers it and the dashboard shows it:
//! what the store returns for the range, handed to the rules in [`crate::reports`].

use std::collections::{BTreeMap, HashMap};

use chrono::{TimeDelta, Utc};
use daymeter_shared::entitlement::Pricing;
use serde_json::json;

use super::{Asked, name_users, range_json};
use crate::api::{ApiError, AppState};
use crate::reports::{Teams, advice, concurrent, forecast, tokens, usage, waste};
use crate::store::{SessionFilter, Settings, Store};

/// `tokens`: used in the range, remaining, added and expired unused in the last 7 days,
/// tokens by day for the last year.
pub(crate) async fn tokens_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let first = a.range.from.min(tokens::by_day_from(a.today));
    let rows = state
        .store
        .usage_days(Some(first), Some(a.range.to.max(a.today)))
        .await?;
    let used = tokens::used(&rows, &a.range, &a.filter, &teams, a.today);
    let week_ago = a.now - TimeDelta::days(7);
    let (mut remaining, mut added, mut expired) = (0u64, 0u64, 0u64);
    for b in state
        .store
        .balances(a.now, Settings::clone(&state.settings()))
        .await?
    {
        if a.filter.team.as_deref().is_some_and(|t| t != b.team) {
            continue;
        }
        remaining += b.remaining;
        for p in &b.purchases {
            if p.purchase.purchased_at > week_ago && p.purchase.purchased_at <= a.now {
                added += p.purchase.tokens;
            }
            if p.purchase.expires_at > week_ago && p.purchase.expires_at <= a.now {
                expired += p.purchase.tokens.saturating_sub(p.used);
            }
        }
    }
    let doc = json!({
        "range": range_json(&a.range),
        "used": used.used,
        "remaining": remaining,
        "added_last_7_days": added,
        "removed_last_7_days": expired,
        "products_used": used.products_used,
        "users": used.users,
        "by_day": used.by_day,
    });
    Ok(doc)
}

/// `products`: per product, users, tokens, average per month, users per token band.
pub(crate) async fn products_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let teams = Teams::new(&state.settings().teams);
    let rows = state
        .store
        .usage_days(Some(a.range.from), Some(a.range.to))
        .await?;
    let lines = tokens::by_product(&rows, &a.range, &a.filter, &teams);
    let doc = json!({"range": range_json(&a.range), "products": lines});
    Ok(doc)
}

/// `users`: per user, products, tokens, days used, weekly days per product.
pub(crate) async fn users_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let rows = state
        .store
        .usage_days(Some(a.range.from), Some(a.range.to))
        .await?;
    let mut lines = tokens::by_user(&rows, &a.range, &a.filter, &teams);
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"range": range_json(&a.range), "users": lines});
    Ok(doc)
}

/// `usage`: per user and product, assignment, last access, days used and inactive,
/// status. Seat-style: rolling months.
pub(crate) async fn usage_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let mut lines = usage_lines(state, &settings, &teams, &a.range, &a.filter).await?;
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"range": range_json(&a.range), "usage": lines});
    Ok(doc)
}

/// The usage report's lines, by licence user id (before any pseudonym): for the JSON
/// report and the usage CSV alike.
pub(crate) async fn usage_lines<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    range: &crate::reports::range::ReportRange,
    filter: &crate::reports::Filter,
) -> Result<Vec<usage::UsageLine>, ApiError> {
    let rows = state
        .store
        .usage_days(Some(range.from), Some(range.to))
        .await?;
    let sessions = state
        .store
        .sessions(SessionFilter {
            user: filter.user.clone(),
            product: filter.product.clone(),
            from: None,
            to: Some(range.to),
        })
        .await?;
    let last = usage::last_accessed(&sessions, range.to);
    Ok(usage::lines(
        &rows,
        &settings.entitlements,
        &last,
        range,
        filter,
        teams,
    ))
}

/// `waste`: per user and product, idle windows and rollovers with their sessions, and
/// what `rollover = active` would save.
pub(crate) async fn waste_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let rows = state
        .store
        .usage_days(Some(a.range.from), Some(a.range.to))
        .await?;
    // The sessions that reach into the range's windows: a window may start the day
    // before its session's days.
    let sessions = state
        .store
        .sessions(SessionFilter {
            user: a.filter.user.clone(),
            product: a.filter.product.clone(),
            from: Some(a.range.from - TimeDelta::days(1)),
            to: Some(a.range.to + TimeDelta::days(1)),
        })
        .await?;
    let mut by_key: BTreeMap<(String, String), (Vec<_>, Vec<_>)> = BTreeMap::new();
    for r in rows
        .into_iter()
        .filter(|r| a.filter.keeps(&teams, &r.user, &r.product))
    {
        by_key
            .entry((r.user.to_string(), r.product.to_string()))
            .or_default()
            .0
            .push(r);
    }
    for s in sessions {
        let Some(user) = s.user.as_deref().map(str::to_owned) else {
            continue;
        };
        if let Some(key) = by_key.get_mut(&(user, s.product.to_string())) {
            key.1.push(s);
        }
    }
    let rules = settings.policy.rules();
    let mut keys = Vec::new();
    for ((user, product), (days, sessions)) in &by_key {
        let entitlements: Vec<_> = settings
            .entitlements
            .iter()
            .filter(|e| &e.user == user && &e.product == product)
            .collect();
        let pricing = Pricing {
            tokens_per_day: settings
                .catalog
                .get(product)
                .map_or(0, |p| p.tokens_per_day),
            entitlements: &entitlements,
        };
        let w = waste::key_waste(user, product, sessions, days, &a.range, &rules, &pricing);
        if !w.idle_windows.is_empty() || !w.rollovers.is_empty() {
            keys.push(w);
        }
    }
    name_users(state, &settings, &teams, &mut keys, |k| &mut k.user);
    let wasted: u64 = keys.iter().map(|k| k.wasted_tokens).sum();
    let save: u64 = keys.iter().map(|k| k.active_rollover_would_save).sum();
    let doc = json!({
        "range": range_json(&a.range),
        "wasted_tokens": wasted,
        "active_rollover_would_save": save,
        "keys": keys,
    });
    Ok(doc)
}

/// `forecast`: per team, burn rates, run-out date, tokens expiring unused.
pub(crate) async fn forecast_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let teams = Teams::new(&state.settings().teams);
    let first = a.today - TimeDelta::days(89);
    let rows = state.store.usage_days(Some(first), Some(a.today)).await?;
    let mut charged: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &rows {
        let Ok(i) = usize::try_from((r.day - first).num_days()) else {
            continue;
        };
        if i < 90 {
            charged
                .entry(teams.of(&r.user))
                .or_insert_with(|| vec![0; 90])[i] += r.tokens;
        }
    }
    let mut out = Vec::new();
    for b in state
        .store
        .balances(a.now, Settings::clone(&state.settings()))
        .await?
    {
        if a.filter.team.as_deref().is_some_and(|t| t != b.team) {
            continue;
        }
        let holdings: Vec<forecast::Holding> = b
            .purchases
            .iter()
            .map(|p| forecast::Holding {
                remaining: p.purchase.tokens.saturating_sub(p.used),
                expires_on: p.purchase.expires_at.date_naive(),
            })
            .collect();
        let by_day = charged.get(b.team.as_str()).cloned().unwrap_or_default();
        out.push(forecast::forecast(&b.team, &holdings, &by_day, a.today));
    }
    let doc = json!({"today": a.today, "teams": out});
    Ok(doc)
}

/// `advice`: per user and product, a year of Flex tokens against a subscription.
pub(crate) async fn advice_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    // Always the last twelve months: a year is what a subscription is priced for.
    let from = a.today - TimeDelta::days(364);
    let rows = state.store.usage_days(Some(from), Some(a.today)).await?;
    let rates: BTreeMap<String, u64> = settings
        .catalog
        .iter()
        .map(|(id, p)| (id.clone(), p.tokens_per_day))
        .collect();
    let mut lines = advice::lines(
        &rows,
        from,
        a.today,
        &rates,
        &advice::Prices {
            token: settings
                .prices
                .token_price
                .zip(settings.prices.currency.clone()),
            subscription: settings.prices.subscription_price.clone(),
        },
        &a.filter,
        &teams,
    );
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"from": from, "to": a.today, "advice": lines});
    Ok(doc)
}

/// `concurrent`: one user's sessions of one product overlapping on two devices.
pub(crate) async fn concurrent_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let sessions = state
        .store
        .sessions(SessionFilter {
            user: a.filter.user.clone(),
            product: a.filter.product.clone(),
            from: Some(a.range.from),
            to: Some(a.range.to),
        })
        .await?;
    let spans: Vec<concurrent::Span> = sessions
        .iter()
        .filter_map(|s| {
            Some(concurrent::Span {
                id: s.id.to_string(),
                user: s.user.as_deref()?.to_owned(),
                product: s.product.to_string(),
                device: s.device.as_deref()?.to_owned(),
                start: s.start.with_timezone(&Utc),
                end: s.effective_end().with_timezone(&Utc),
            })
        })
        .collect();
    let mut overlaps = concurrent::overlaps(&spans, &a.filter, &teams);
    let hostnames: HashMap<String, String> = state
        .store
        .devices()
        .await?
        .into_iter()
        .map(|d| (d.id, d.hostname))
        .collect();
    concurrent::name_devices(&mut overlaps, |id| hostnames.get(id).cloned());
    name_users(state, &settings, &teams, &mut overlaps, |o| &mut o.user);
    let doc = json!({"range": range_json(&a.range), "overlaps": overlaps});
    Ok(doc)
}
