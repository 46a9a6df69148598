//! `GET /v1/reports/{tokens,products,users,usage,waste,forecast,advice,concurrent}`:
//! admin auth, JSON, or with `format=csv` the report's table as CSV (tokens: by day). Each handler reads what the store returns for the range and hands
//! it to the rules in [`crate::reports`]; nothing here decides a number.
//!
//! Users of a team whose `personal_data` is `hashed` appear under their keyed pseudonym
//! ([`People`]), as in the CSV exports.
//!
//! Query parameters, all optional: `range` (`past-30-days`, the default, or
//! `past-3-months` … `past-12-months`) or `from` and `to` (UTC days, both included);
//! `team`, `user`, `product`. Unknown parameters are refused by name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use daymeter_shared::entitlement::Pricing;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, bad_query, check_reader};
use crate::reports::people::People;
use crate::reports::range::{self, Basis, ReportRange};
use crate::reports::{Filter, Teams, advice, concurrent, forecast, tokens, usage, waste};
use crate::store::{SessionFilter, Settings, Store};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
    team: Option<String>,
    user: Option<String>,
    product: Option<String>,
    format: Option<String>,
    delimiter: Option<String>,
}

/// What every report starts from.
pub(crate) struct Asked {
    range: ReportRange,
    filter: Filter,
    today: NaiveDate,
    now: DateTime<Utc>,
    format: Format,
}

/// `format=json` (the default) or `format=csv` (with `delimiter=,` or `;`).
#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv(u8),
}

fn format_of(format: Option<&str>, delimiter: Option<&str>) -> Result<Format, ApiError> {
    let delimiter = match delimiter {
        None | Some(",") => b',',
        Some(";") => b';',
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_delimiter",
                format!("delimiter {other:?}: \",\" (the default) or \";\""),
            )
            .field("delimiter"));
        }
    };
    match format {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv(delimiter)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_format",
            format!("format {other:?}: json (the default) or csv"),
        )
        .field("format")),
    }
}

/// The report as asked: the whole document as JSON, or its table (`doc[table]`, a list)
/// as CSV — one row per entry, a column per field, nested fields as `parent.child`,
/// lists as JSON text in their cell.
fn answer(
    a: &Asked,
    doc: serde_json::Value,
    table: &str,
    file: &str,
) -> Result<Response, ApiError> {
    let Format::Csv(delimiter) = a.format else {
        return Ok(Json(doc).into_response());
    };
    let empty = Vec::new();
    let entries = doc.get(table).and_then(|t| t.as_array()).unwrap_or(&empty);
    let rows: Vec<Vec<(String, String)>> = entries
        .iter()
        .map(|e| {
            let mut cells = Vec::new();
            flatten("", e, &mut cells);
            cells
        })
        .collect();
    let header: Vec<&str> = rows
        .first()
        .map(|r| r.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let internal =
        |e: csv::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    let mut out = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(b"\xEF\xBB\xBF".to_vec());
    out.write_record(&header).map_err(internal)?;
    for row in &rows {
        let cell = |k: &&str| {
            row.iter()
                .find(|(name, _)| name == k)
                .map_or("", |(_, v)| v.as_str())
        };
        out.write_record(header.iter().map(cell))
            .map_err(internal)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}.csv\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), String::new())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(_) | Value::Bool(_) | Value::Number(_) => {
            out.push((prefix.to_owned(), value.to_string()))
        }
    }
}

fn asked<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
    basis: Basis,
) -> Result<Asked, ApiError> {
    check_reader(state, headers)?;
    let Query(q) = q.map_err(bad_query)?;
    let now = state.clock.now();
    let today = now.date_naive();
    let range = range::parse(
        q.range.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        basis,
        today,
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_range", e.message).field(e.field))?;
    let format = format_of(q.format.as_deref(), q.delimiter.as_deref())?;
    Ok(Asked {
        range,
        filter: Filter {
            team: q.team,
            user: q.user,
            product: q.product,
        },
        today,
        now,
        format,
    })
}

/// Puts each line's user as reports show them: the id, or the keyed pseudonym of a
/// team that hashes its people ([`People`]).
fn name_users<S, T>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    lines: &mut [T],
    user: impl Fn(&mut T) -> &mut String,
) {
    let people = People::new(settings, teams, state.admin_token.expose());
    for line in lines {
        let u = user(line);
        *u = people.user(u);
    }
}

fn range_json(r: &ReportRange) -> serde_json::Value {
    json!({"from": r.from, "to": r.to, "days": r.days(), "months": r.months})
}

pub(super) async fn tokens<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::CompletedMonths)?;
    let doc = tokens_doc(&state, &a).await?;
    // As CSV: the tokens by day.
    answer(&a, doc, "by_day", "tokens-by-day")
}

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

pub(super) async fn products<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::CompletedMonths)?;
    let doc = products_doc(&state, &a).await?;
    answer(&a, doc, "products", "products")
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

pub(super) async fn users<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::CompletedMonths)?;
    let doc = users_doc(&state, &a).await?;
    answer(&a, doc, "users", "users")
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

pub(super) async fn usage<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::Rolling)?;
    let doc = usage_doc(&state, &a).await?;
    answer(&a, doc, "usage", "usage")
}

/// `usage`: per user and product, assignment, last access, days used and inactive,
/// status. Seat-style: rolling months.
pub(crate) async fn usage_doc<S: Store>(
    state: &AppState<S>,
    a: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let settings = state.settings();
    let teams = Teams::new(&settings.teams);
    let rows = state
        .store
        .usage_days(Some(a.range.from), Some(a.range.to))
        .await?;
    let sessions = state
        .store
        .sessions(SessionFilter {
            user: a.filter.user.clone(),
            product: a.filter.product.clone(),
            from: None,
            to: Some(a.range.to),
        })
        .await?;
    // Last accessed: the UTC date the product was last seen in use (a session's
    // effective end), which is the day of the last sync that carried it.
    let mut last: HashMap<(String, String), NaiveDate> = HashMap::new();
    for s in &sessions {
        let Some(user) = s.user.as_deref() else {
            continue;
        };
        let day = s.effective_end().naive_utc().date().min(a.range.to);
        let entry = last
            .entry((user.to_owned(), s.product.to_string()))
            .or_insert(day);
        *entry = (*entry).max(day);
    }
    let mut lines = usage::lines(
        &rows,
        &settings.entitlements,
        &last,
        &a.range,
        &a.filter,
        &teams,
    );
    name_users(state, &settings, &teams, &mut lines, |l| &mut l.user);
    let doc = json!({"range": range_json(&a.range), "usage": lines});
    Ok(doc)
}

pub(super) async fn waste<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::CompletedMonths)?;
    let doc = waste_doc(&state, &a).await?;
    answer(&a, doc, "keys", "waste")
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
        let w = waste::key_waste(user, product, sessions, days, &rules, &pricing);
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

pub(super) async fn forecast<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::Rolling)?;
    let doc = forecast_doc(&state, &a).await?;
    answer(&a, doc, "teams", "forecast")
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

pub(super) async fn advice<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::Rolling)?;
    let doc = advice_doc(&state, &a).await?;
    answer(&a, doc, "advice", "advice")
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

pub(super) async fn concurrent<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let a = asked(&state, &headers, q, Basis::Rolling)?;
    let doc = concurrent_doc(&state, &a).await?;
    answer(&a, doc, "overlaps", "concurrent")
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

impl Asked {
    /// A named range (`past-30-days` …) over everything, as the dashboard asks.
    fn named(range: &str, basis: Basis, now: DateTime<Utc>) -> Result<Asked, ApiError> {
        let today = now.date_naive();
        let range = range::parse(Some(range), None, None, basis, today).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_range", e.message).field(e.field)
        })?;
        Ok(Asked {
            range,
            filter: Filter::default(),
            today,
            now,
            format: Format::Json,
        })
    }
}

/// Every report the dashboard shows over `range`, as the JSON API answers them.
pub async fn report_docs<S: Store>(
    state: &AppState<S>,
    range: &str,
) -> Result<crate::dashboard::page::Docs, ApiError> {
    let now = state.clock.now();
    let tokens_range = Asked::named(range, Basis::CompletedMonths, now)?;
    let seats_range = Asked::named(range, Basis::Rolling, now)?;
    Ok(crate::dashboard::page::Docs {
        tokens: tokens_doc(state, &tokens_range).await?,
        products: products_doc(state, &tokens_range).await?,
        users: users_doc(state, &tokens_range).await?,
        usage: usage_doc(state, &seats_range).await?,
        waste: waste_doc(state, &tokens_range).await?,
        forecast: forecast_doc(state, &seats_range).await?,
        advice: advice_doc(state, &seats_range).await?,
    })
}
