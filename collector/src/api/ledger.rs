//! `GET /v1/admin/balances` and `GET /v1/admin/ledger`: the teams' token balances and
//! the ledger's entries, a page at a time.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use daymeter_shared::ledger::DEFAULT_TEAM;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, bad_query, check_admin, json_response};
use crate::store::{Settings, Store};

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
