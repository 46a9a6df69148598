//! Each report's document, as `/v1/reports/…` answers it and the dashboard shows it:
//! what the store returns for the range, handed to the rules in [`crate::reports`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{NaiveDate, TimeDelta, Utc};
use serde_json::json;

use super::{Asked, name_users, range_json};
use crate::api::{ApiError, AppState};
use crate::reports::range::ReportRange;
use crate::reports::totals::{self, KeyUse};
use crate::reports::{Filter, Teams, advice, concurrent, forecast, tokens, usage, waste};
use crate::store::{SessionFilter, Settings, Store};

/// `tokens`: used in the range, remaining, added and expired unused in the last 7 days,
/// tokens by day for the last year.
pub(crate) async fn tokens_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let read = TokensRead::of(state, a).await?;
    Ok(read.tokens_doc(a))
}

/// The `tokens` and `products` documents from one read of the keys' totals, as the
/// dashboard shows both.
pub(crate) async fn tokens_and_products_docs<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<(serde_json::Value, serde_json::Value), ApiError> {
    let read = TokensRead::of(state, a).await?;
    Ok((read.tokens_doc(a), products_doc_of(a, &read.uses)))
}

/// What the token report reads, read side by side.
struct TokensRead {
    uses: Vec<KeyUse>,
    by_day: Vec<u64>,
    balances: Vec<crate::store::Balance>,
}

impl TokensRead {
    async fn of<S: Store>(state: &AppState<S>, a: &Asked) -> Result<TokensRead, ApiError> {
        let settings = state.settings();
        let teams = state.teams(&settings);
        let (uses, by_day, balances) = tokio::try_join!(
            key_uses(state, &a.range, &a.filter, &teams),
            tokens_by_day(state, &settings, &teams, &a.filter, a.today),
            async {
                Ok(state
                    .store
                    .balances(a.now, Settings::clone(&settings))
                    .await?)
            },
        )?;
        Ok(TokensRead {
            uses,
            by_day,
            balances,
        })
    }

    fn tokens_doc(&self, a: &Asked) -> serde_json::Value {
        let used = tokens::used_of(&self.uses, self.by_day.clone(), a.today);
        let week_ago = a.now - TimeDelta::days(7);
        let (mut remaining, mut added, mut expired) = (0u64, 0u64, 0u64);
        for b in &self.balances {
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
        json!({
            "range": range_json(&a.range),
            "used": used.used,
            "remaining": remaining,
            "added_last_7_days": added,
            "removed_last_7_days": expired,
            "products_used": used.products_used,
            "users": used.users,
            "by_day": used.by_day,
        })
    }
}

/// Each key's use in `range` that `filter` keeps, from the store's totals.
async fn key_uses<S: Store>(
    state: &AppState<S>,
    range: &ReportRange,
    filter: &Filter,
    teams: &Teams,
) -> Result<Vec<KeyUse>, ApiError> {
    let totals = state.store.key_totals(range.from, range.to).await?;
    Ok(totals::key_uses(totals, filter, teams))
}

/// Tokens of each day of the year before `today` (oldest first) that `filter` keeps:
/// from the products' days when no user or team is asked, a team's days when only a
/// team is, else from those users' months.
async fn tokens_by_day<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    filter: &Filter,
    today: NaiveDate,
) -> Result<Vec<u64>, ApiError> {
    let first = tokens::by_day_from(today);
    let mut by_day = vec![0u64; tokens::BY_DAY_DAYS as usize];
    let mut add = |day: NaiveDate, tokens: u64| {
        if let Ok(i) = usize::try_from((day - first).num_days())
            && let Some(slot) = by_day.get_mut(i)
        {
            *slot += tokens;
        }
    };
    if filter.user.is_none() && filter.team.is_none() {
        for p in state.store.product_days(first, today).await? {
            if filter.product.as_deref().is_none_or(|f| f == p.product) {
                add(p.day, p.tokens);
            }
        }
        return Ok(by_day);
    }
    if let (None, Some(team), None) = (&filter.user, &filter.team, &filter.product) {
        for t in state.store.team_days(first, today).await? {
            if t.team == *team {
                add(t.day, t.tokens);
            }
        }
        return Ok(by_day);
    }
    let users = match (&filter.user, &filter.team) {
        (Some(user), _) => Some(vec![user.clone()]),
        (None, Some(team)) => settings.teams.get(team).map(|t| t.users.clone()),
        (None, None) => None,
    };
    for m in state.store.key_months(first, today, users).await? {
        if filter.keeps(teams, &m.user, &m.product) {
            for (day, tokens, _) in m.days_between(first, today) {
                add(day, tokens);
            }
        }
    }
    Ok(by_day)
}

/// `products`: per product, users, tokens, average per month, users per token band.
pub(crate) async fn products_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let teams = state.teams(&state.settings());
    let uses = key_uses(state, &a.range, &a.filter, &teams).await?;
    Ok(products_doc_of(a, &uses))
}

fn products_doc_of(a: &Asked, uses: &[KeyUse]) -> serde_json::Value {
    let lines = tokens::by_product_of(uses, &a.range);
    json!({"range": range_json(&a.range), "products": lines})
}

/// The users a per-user report covers, in order: those that sent sessions and those
/// with an entitlement, kept by `filter`.
pub(crate) async fn report_users<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    filter: &Filter,
) -> Result<Vec<String>, ApiError> {
    if let Some(user) = &filter.user {
        return Ok(vec![user.clone()]);
    }
    let mut users: BTreeSet<String> = state
        .store
        .users_page(None, usize::MAX)
        .await?
        .into_iter()
        .collect();
    users.extend(settings.entitlements.iter().map(|e| e.user.clone()));
    Ok(users
        .into_iter()
        .filter(|u| filter.team.as_deref().is_none_or(|t| t == teams.of(u)))
        .collect())
}

/// What a per-user report starts from: the settings, each user's team, this page's
/// users and what the answer says of the paging.
struct Paged {
    settings: std::sync::Arc<Settings>,
    teams: std::sync::Arc<Teams>,
    page: Vec<String>,
    paging: serde_json::Value,
}

async fn paged<S: Store>(state: &AppState<S>, a: &Asked) -> Result<Paged, ApiError> {
    let settings = state.settings();
    let teams = state.teams(&settings);
    let all = match &a.everyone {
        Some(everyone) => everyone.clone(),
        None => std::sync::Arc::new(report_users(state, &settings, &teams, &a.filter).await?),
    };
    let (page, paging) = a.page.of(&all);
    let page = page.to_vec();
    Ok(Paged {
        settings,
        teams,
        page,
        paging,
    })
}

/// `users`: per user, products, tokens, days used, weekly days per product; a page of
/// users at a time.
pub(crate) async fn users_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let Paged {
        settings,
        teams,
        page,
        paging,
    } = paged(state, a).await?;
    let months = state
        .store
        .key_months(a.range.from, a.range.to, Some(page.clone()))
        .await?;
    let rows = totals::day_rows(&months, a.range.from, a.range.to);
    let mut lines = tokens::by_user(&rows, &a.range, &a.filter, &teams);
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"range": range_json(&a.range), "page": paging, "users": lines});
    Ok(doc)
}

/// `usage`: per user and product, assignment, last access, days used and inactive,
/// status. Seat-style: rolling months. A page of users at a time.
pub(crate) async fn usage_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let Paged {
        settings,
        teams,
        page,
        paging,
    } = paged(state, a).await?;
    let mut lines = usage_lines(state, &settings, &teams, &a.range, &a.filter, &page).await?;
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"range": range_json(&a.range), "page": paging, "usage": lines});
    Ok(doc)
}

/// The usage report's lines of `users`, by licence user id (before any pseudonym): for
/// the JSON report and the usage CSV alike.
pub(crate) async fn usage_lines<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    range: &crate::reports::range::ReportRange,
    filter: &crate::reports::Filter,
    users: &[String],
) -> Result<Vec<usage::UsageLine>, ApiError> {
    let months = state
        .store
        .key_months(range.from, range.to, Some(users.to_vec()))
        .await?;
    let rows = totals::day_rows(&months, range.from, range.to);
    // Last access from each key's latest session end; a key whose sessions reach past
    // the range's end is read from its sessions (the last one before the end counts).
    let mut last = HashMap::new();
    let mut past = Vec::new();
    for r in state.store.reaches(Some(users.to_vec())).await? {
        let day = r.last_end.date_naive();
        if day <= range.to {
            last.insert((r.user, r.product), day);
        } else if !past.contains(&r.user) {
            past.push(r.user);
        }
    }
    if !past.is_empty() {
        let sessions = state
            .store
            .sessions(SessionFilter {
                users: Some(past),
                product: filter.product.clone(),
                to: Some(range.to),
                ..SessionFilter::default()
            })
            .await?;
        last.extend(usage::last_accessed(&sessions, range.to));
    }
    let wanted: HashSet<&str> = users.iter().map(String::as_str).collect();
    let entitlements: Vec<_> = settings
        .entitlements
        .iter()
        .filter(|e| wanted.contains(e.user.as_str()))
        .cloned()
        .collect();
    Ok(usage::lines(
        &rows,
        &entitlements,
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
    let Paged {
        settings,
        teams,
        page,
        paging,
    } = paged(state, a).await?;
    // The totals over everyone the filter keeps, the page's days, and the sessions that
    // reach into their windows (a window may start the day before its session's days),
    // read side by side.
    let (sums, rows, sessions) = tokio::try_join!(
        state
            .store
            .waste_totals(a.range.from, a.range.to, a.filter.user.clone()),
        state
            .store
            .users_days(page.clone(), a.range.from, a.range.to),
        state.store.sessions(SessionFilter {
            user: None,
            users: Some(page.clone()),
            product: a.filter.product.clone(),
            from: Some(a.range.from - TimeDelta::days(1)),
            to: Some(a.range.to + TimeDelta::days(1)),
        }),
    )?;
    let (wasted, save) = waste::totals(&sums, &a.filter, &teams);
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
    let min_session = settings.policy.rules().min_session;
    let mut keys = Vec::new();
    for ((user, product), (days, sessions)) in &by_key {
        let w = waste::key_waste(user, product, sessions, days, min_session);
        if !w.idle_windows.is_empty() || !w.rollovers.is_empty() {
            keys.push(w);
        }
    }
    name_users(state, &settings, &teams, &mut keys, |k| &mut k.user);
    let doc = json!({
        "range": range_json(&a.range),
        "page": paging,
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
    let settings = state.settings();
    let first = a.today - TimeDelta::days(89);
    let mut charged: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for t in state.store.team_days(first, a.today).await? {
        if let Ok(i) = usize::try_from((t.day - first).num_days())
            && i < 90
        {
            charged.entry(t.team).or_insert_with(|| vec![0; 90])[i] += t.tokens;
        }
    }
    let mut out = Vec::new();
    for b in state
        .store
        .balances(a.now, Settings::clone(&settings))
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
        let by_day = charged.remove(b.team.as_str()).unwrap_or_default();
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
    let Paged {
        settings,
        teams,
        page,
        paging,
    } = paged(state, a).await?;
    // Always the last twelve months: a year is what a subscription is priced for.
    let from = a.today - TimeDelta::days(364);
    let months = state
        .store
        .key_months(from, a.today, Some(page.clone()))
        .await?;
    let rows = totals::day_rows(&months, from, a.today);
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
    let doc = json!({"from": from, "to": a.today, "page": paging, "advice": lines});
    Ok(doc)
}

/// `concurrent`: one user's sessions of one product overlapping on two devices.
pub(crate) async fn concurrent_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let Paged {
        settings,
        teams,
        page,
        paging,
    } = paged(state, a).await?;
    let sessions = state
        .store
        .sessions(SessionFilter {
            user: None,
            users: Some(page.clone()),
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
    let doc = json!({"range": range_json(&a.range), "page": paging, "overlaps": overlaps});
    Ok(doc)
}
