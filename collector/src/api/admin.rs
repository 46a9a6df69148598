//! The admin endpoints that read and steer accounting: import, usage days, sessions,
//! device revocation, balances and the ledger.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use daymeter_shared::ledger::DEFAULT_TEAM;
use daymeter_shared::usage::{Report, Totals};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, admin_json, check_admin, json_response};
use crate::settings::import;
use crate::store::{SessionFilter, Settings, Store};

/// `POST /v1/admin/import`: the document merged by [`crate::settings::import`]'s rules, stored,
/// and published; every key's usage days are recomputed by the store.
pub(super) async fn import<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let doc: Value = admin_json(&state, &headers, body).await?;
    let _one_import_at_a_time = state.imports.lock().await;
    let current = state.settings();
    let (settings, replace) = import::merge(&current, &doc).map_err(refused)?;
    if import::shortens_window(&current, &settings) {
        let longest = state.store.longest_session().await?;
        import::window_fits(longest, settings.policy.window).map_err(refused)?;
    }
    state.store.put_settings(settings.clone()).await?;
    tracing::info!(
        products = settings.catalog.len(),
        entitlements = settings.entitlements.len(),
        replace,
        "import applied"
    );
    let answer = json!({ "catalog": settings.catalog.len(), "entitlements": settings.entitlements.len(), "policy": settings.policy });
    if let Ok(mut s) = state.settings.write() {
        *s = Arc::new(settings);
    }
    Ok(json_response(&answer))
}

fn refused(r: import::Refused) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message);
    e.field = r.field;
    e
}

/// The 400 for a query string an endpoint does not take: an unknown parameter, one
/// given twice, or a value of the wrong form — said by name, so that a misspelt filter
/// never answers as if no filter had been given.
fn bad_query(e: QueryRejection) -> ApiError {
    let detail = e.body_text();
    let detail = detail
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&detail);
    let field = detail
        .split('`')
        .nth(1)
        .filter(|_| detail.contains("unknown field") || detail.contains("duplicate field"))
        .map(str::to_owned);
    let mut error = ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_query",
        format!("query string: {detail}"),
    );
    error.field = field;
    error
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DayRange {
    from: Option<String>,
    to: Option<String>,
    user: Option<String>,
    product: Option<String>,
}

/// A `YYYY-MM-DD` query parameter, if given.
fn day_param(name: &'static str, value: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_day",
                    format!("{name} {v:?} is not a day (YYYY-MM-DD)"),
                )
                .field(name)
            })
        })
        .transpose()
}

pub(super) async fn usage_days<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<DayRange>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let Query(q) = q.map_err(bad_query)?;
    let from = day_param("from", q.from.as_deref())?;
    let to = day_param("to", q.to.as_deref())?;
    let mut rows = state.store.usage_days(from, to).await?;
    rows.retain(|r| {
        q.user.as_deref().is_none_or(|u| r.user == u)
            && q.product.as_deref().is_none_or(|p| r.product == p)
    });
    let report = Report {
        totals: Totals::of(&rows),
        usage_days: rows,
    };
    let mut out = Vec::new();
    report
        .write_json(&mut out)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionQuery {
    user: Option<String>,
    product: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub(super) async fn sessions<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let Query(q) = q.map_err(bad_query)?;
    let filter = SessionFilter {
        from: day_param("from", q.from.as_deref())?,
        to: day_param("to", q.to.as_deref())?,
        user: q.user,
        product: q.product,
    };
    let sessions = state.store.sessions(filter).await?;
    Ok(json_response(&json!({ "sessions": sessions })))
}

pub(super) async fn revoke<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    if !state.store.revoke_device(id.clone()).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device {id}"),
        ));
    }
    if let Ok(mut devices) = state.devices.write() {
        for d in devices.values_mut().filter(|d| d.id == id) {
            d.revoked = true;
        }
    }
    tracing::info!(device = ?id, "device revoked");
    Ok(json_response(&json!({ "device_id": id, "revoked": true })))
}

pub(super) async fn balances<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let balances = state
        .store
        .balances(state.clock.now(), Settings::clone(&state.settings()))
        .await?;
    Ok(json_response(&json!({ "balances": balances })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerQuery {
    team: Option<String>,
    /// The `seq` of the last entry of the previous page.
    after: Option<i64>,
    limit: Option<usize>,
}

/// Entries in one ledger page unless `limit` says otherwise, and the most it may say.
const LEDGER_PAGE: usize = 1000;
const LEDGER_PAGE_MAX: usize = 10_000;

pub(super) async fn ledger<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<LedgerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let Query(q) = q.map_err(bad_query)?;
    if let Some(team) = q.team.as_deref()
        && team != DEFAULT_TEAM
        && !state.settings().teams.contains_key(team)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_team",
            format!("no team {team:?} (import it under teams)"),
        )
        .field("team"));
    }
    let limit = q.limit.unwrap_or(LEDGER_PAGE);
    if !(1..=LEDGER_PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit must be from 1 to {LEDGER_PAGE_MAX}"),
        )
        .field("limit"));
    }
    let entries = state.store.ledger(q.team, q.after, limit).await?;
    // A full page may have more after it: `next_after` is where the next page starts.
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(json_response(
        &json!({ "entries": entries, "next_after": next_after }),
    ))
}
