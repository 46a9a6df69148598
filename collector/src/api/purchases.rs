//! Token purchases: recorded, and corrected or withdrawn by an appended correction.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::ledger::{DEFAULT_TEAM, Purchase, default_expiry};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, admin_json, json_response};
use crate::store::{PurchaseCorrection, Store};

/// The most tokens one purchase may add (a trillion): sums of purchases stay within
/// the 64-bit integers the store keeps.
pub const MAX_PURCHASE_TOKENS: u64 = 1_000_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseRequest {
    #[serde(default)]
    team: Option<String>,
    tokens: u64,
    #[serde(default)]
    purchased_at: Option<DateTime<Utc>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

pub(super) async fn purchase<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: PurchaseRequest = admin_json(&state, &headers, body).await?;
    let purchased_at = req.purchased_at.unwrap_or_else(|| state.clock.now());
    let expires_at = req
        .expires_at
        .unwrap_or_else(|| default_expiry(purchased_at));
    if req.tokens > MAX_PURCHASE_TOKENS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_bounds",
            format!("tokens must be at most {MAX_PURCHASE_TOKENS}"),
        )
        .field("tokens"));
    }
    for (field, t) in [("purchased_at", purchased_at), ("expires_at", expires_at)] {
        if !(purchase_range().contains(&t)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "out_of_range",
                format!("{field} must lie in the years 1970 to 2199"),
            )
            .field(field));
        }
    }
    if expires_at <= purchased_at {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "before_start",
            "expires_at is not after purchased_at",
        )
        .field("expires_at"));
    }
    let team = req.team.unwrap_or_else(|| DEFAULT_TEAM.to_owned());
    if team != DEFAULT_TEAM && !state.settings().teams.contains_key(&team) {
        // A misspelt team once became a team of its own that nobody's days could draw on.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_team",
            format!("no team {team:?} (import it under teams first)"),
        )
        .field("team"));
    }
    let p = Purchase {
        id: uuid::Uuid::now_v7().to_string(),
        team,
        tokens: req.tokens,
        purchased_at,
        expires_at,
    };
    state.store.add_purchase(p.clone()).await?;
    tracing::info!(team = ?p.team, tokens = p.tokens, "token purchase recorded");
    Ok(json_response(&p))
}

/// A correction of a purchase: its tokens and expiry from now on, and why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectionRequest {
    #[serde(default)]
    tokens: Option<u64>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    reason: String,
}

/// `POST /v1/admin/purchases/{id}/corrections`: a purchase entered wrong is set anew
/// (or withdrawn with `"tokens": 0`), never edited in place: the correction is kept
/// beside it with the values before and after. Days it already paid stay paid.
pub(super) async fn correct_purchase<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CorrectionRequest = admin_json(&state, &headers, body).await?;
    let unprocessable = |code, field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).field(field.to_owned())
    };
    if req.reason.trim().is_empty()
        || req.reason.len() > 500
        || req.reason.chars().any(char::is_control)
    {
        return Err(unprocessable(
            "bad_reason",
            "reason",
            "reason must say why, in 1 to 500 bytes without control characters".into(),
        ));
    }
    let Some(current) = state.store.purchase(id.clone()).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_purchase",
            format!("no purchase {id:?}"),
        ));
    };
    let tokens = req.tokens.unwrap_or(current.tokens);
    let expires_at = req.expires_at.unwrap_or(current.expires_at);
    if tokens > MAX_PURCHASE_TOKENS {
        return Err(unprocessable(
            "out_of_bounds",
            "tokens",
            format!("tokens must be at most {MAX_PURCHASE_TOKENS}"),
        ));
    }
    if !purchase_range().contains(&expires_at) {
        return Err(unprocessable(
            "out_of_range",
            "expires_at",
            "expires_at must lie in the years 1970 to 2199".into(),
        ));
    }
    if expires_at <= current.purchased_at {
        return Err(unprocessable(
            "before_start",
            "expires_at",
            "expires_at is not after purchased_at".into(),
        ));
    }
    let correction = PurchaseCorrection {
        id: uuid::Uuid::now_v7().to_string(),
        purchase: id.clone(),
        at: state.clock.now(),
        tokens,
        expires_at,
        reason: req.reason,
    };
    if !state.store.correct_purchase(correction.clone()).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_purchase",
            format!("no purchase {id:?}"),
        ));
    }
    tracing::info!(purchase = ?id, tokens, "token purchase corrected");
    Ok(json_response(&json!({
        "correction": correction,
        "before": { "tokens": current.tokens, "expires_at": current.expires_at },
    })))
}

/// The instants a purchase may carry: what the store writes and reads back as text,
/// with room for a default expiry a year on (one in year 10000 once made every balance
/// and sync fail to read it).
fn purchase_range() -> std::ops::Range<DateTime<Utc>> {
    let at = |y| {
        NaiveDate::from_ymd_opt(y, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(DateTime::<Utc>::MIN_UTC, |d| d.and_utc())
    };
    at(1970)..at(2200)
}
