//! `GET /v1/admin/devices`: every enrolled device, and
//! `POST /v1/admin/devices/{id}/revoke`: a device's token refused from now on.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{ApiError, AppState, check_admin, json_response};
use crate::store::Store;

/// Each device with its hostname, OS, agent version, enrolment, last sync (to the
/// minute) and whether it is revoked, by hostname; never its token hash.
pub(super) async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let mut devices = state.store.devices().await?;
    devices.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
    let list: Vec<_> = devices
        .iter()
        .map(|d| {
            json!({
                "device_id": d.id,
                "hostname": d.hostname,
                "os": d.os,
                "agent_version": d.agent_version,
                "enrolled_at": d.enrolled_at,
                "last_sync": d.last_sync,
                "revoked": d.revoked,
            })
        })
        .collect();
    Ok(json_response(&json!({ "devices": list })))
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
