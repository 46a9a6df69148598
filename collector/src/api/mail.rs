//! `POST /v1/admin/mail/schedules`, `GET /v1/admin/mail/schedules` and
//! `DELETE /v1/admin/mail/schedules/{id}`: the mail schedules, admin token only. What a
//! schedule may be is [`crate::mail::kinds`]' rules; the limit per recipient is the
//! store's, checked in the transaction that inserts.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{ApiError, AppState, check_admin, json_response, read_body};
use crate::mail::kinds::Request;
use crate::mail::schedule::MAX_PER_RECIPIENT;
use crate::store::Store;

pub(super) async fn create<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let request: Request = serde_path_to_error::deserialize(&mut de).map_err(refused_json)?;
    let id = uuid::Uuid::now_v7().to_string();
    let schedule = request
        .check(id, &state.settings(), state.clock.now())
        .map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message).field(e.field)
        })?;
    if !state
        .store
        .add_mail_schedule(schedule.clone(), MAX_PER_RECIPIENT)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_schedules",
            format!(
                "{} already has {MAX_PER_RECIPIENT} mail schedules, the most one recipient may have; delete one first",
                schedule.recipient
            ),
        )
        .field("recipient"));
    }
    tracing::info!(schedule = %schedule.id, "mail schedule added");
    Ok(json_response(&schedule))
}

pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let schedules = state.store.mail_schedules().await?;
    Ok(json_response(&json!({ "schedules": schedules })))
}

pub(super) async fn delete<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    if !state.store.delete_mail_schedule(id.clone()).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_schedule",
            format!("no mail schedule {id}"),
        )
        .field("id"));
    }
    tracing::info!(schedule = %id, "mail schedule deleted");
    Ok(json_response(&json!({ "id": id, "deleted": true })))
}

/// The 400 for a body that is not a schedule's JSON, naming the key: an unknown one (so
/// that a misspelt `inactive_for` is never taken as "not given"), or one whose value is
/// not text.
fn refused_json(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let detail = e.into_inner().to_string();
    let unknown = detail
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    match unknown {
        Some(key) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_key",
            format!("{key:?} is not a key of a mail schedule"),
        )
        .field(key),
        None if path != "." => super::bad_json(format!("{path}: {detail}")).field(path),
        None => super::bad_json(detail),
    }
}
