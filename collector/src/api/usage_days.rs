//! `GET /v1/admin/usage-days`: the stored usage days of a range of days, with totals.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use daymeter_shared::usage::{Report, Totals};
use serde::Deserialize;

use super::{ApiError, AppState, bad_query, check_admin, day_param};
use crate::store::Store;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DayRange {
    from: Option<String>,
    to: Option<String>,
    user: Option<String>,
    product: Option<String>,
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
