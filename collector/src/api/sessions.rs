//! `GET /v1/admin/sessions`: the stored sessions, filtered by user, product and days.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, bad_query, check_admin, day_param, json_response};
use crate::store::{SessionFilter, Store};

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
        users: None,
        product: q.product,
    };
    let sessions = state.store.sessions(filter).await?;
    Ok(json_response(&json!({ "sessions": sessions })))
}
