//! `POST /v1/enroll`: a device gets its token, or keeps its id with a new one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use daymeter_shared::session::{MAX_TEXT, check_text};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, json_response, parse_json, read_body};
use crate::auth::{new_token, same_hash, token_hash};
use crate::store::{Device, Store};

/// `POST /v1/enroll`'s body.
#[derive(Deserialize)]
struct EnrollRequest {
    enrollment_secret: String,
    hostname: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    agent_version: String,
    /// The device id an enrolling-again agent had: with [`Self::previous_device_token`]
    /// the device keeps this id, so that the copies of its sessions still open, sent
    /// before and after, agree on their device (copies that disagree are refused as
    /// `conflicting_copies`, and the session's real end would never be stored).
    #[serde(default)]
    previous_device_id: Option<String>,
    /// That device's latest token, revoked or not: proof of possession. A revocation
    /// retires a token, not a machine: whoever still holds the token *and* the
    /// enrolment secret could enrol afresh anyway; with the token it keeps its id.
    /// Without it a device id is never handed out again, so a revoked device whose
    /// token is lost stays revoked for good (its machine enrols as a new device).
    #[serde(default)]
    previous_device_token: Option<String>,
}

pub(super) async fn enroll<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body).await?;
    let req: EnrollRequest = parse_json(&bytes)?;
    if !state.enrollment_secret.matches(&req.enrollment_secret) {
        tracing::warn!(hostname = ?req.hostname, "enrolment refused: wrong enrollment secret");
        return Err(ApiError::unauthorized("wrong enrollment secret").field("enrollment_secret"));
    }
    // Stored and shown to admins: bounded, and without control characters. A host
    // name may be a fully qualified one, up to 253 bytes.
    for (field, text, max) in [
        ("hostname", &req.hostname, 255),
        ("os", &req.os, MAX_TEXT),
        ("agent_version", &req.agent_version, MAX_TEXT),
    ] {
        check_text(field, text, max).map_err(|p| {
            ApiError::new(StatusCode::BAD_REQUEST, p.code(), p.to_string()).field(field)
        })?;
    }
    let previous = previous_device(&state, &req)?;
    let token = new_token()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut device = Device {
        id: uuid::Uuid::now_v7().to_string(),
        hostname: req.hostname,
        os: req.os,
        agent_version: req.agent_version,
        token_hash: token_hash(&token),
        enrolled_at: state.clock.now(),
        revoked: false,
        last_sync: None,
    };
    match &previous {
        None => {
            state.store.add_device(device.clone()).await?;
            tracing::info!(device = %device.id, hostname = ?device.hostname, "device enrolled");
        }
        Some(old) => {
            device.id = old.id.clone();
            device.enrolled_at = old.enrolled_at;
            if !state
                .store
                .reenrol_device(device.clone(), old.token_hash)
                .await?
            {
                // Another enrolment with the same proof linked first.
                return Err(wrong_proof());
            }
            tracing::info!(device = %device.id, hostname = ?device.hostname, was_revoked = old.revoked, "device enrolled again");
        }
    }
    let id = device.id.clone();
    if let Ok(mut devices) = state.devices.write() {
        if let Some(old) = &previous {
            // The old token is refused from now on, as any unknown token.
            devices.remove(&old.token_hash);
        }
        devices.insert(device.token_hash, device);
    }
    Ok(json_response(
        &json!({ "device_id": id, "device_token": token }),
    ))
}

/// The device an enrolment asks to keep, once its proof is checked: `None` for a first
/// enrolment; 400 when only one of the two fields is given; 401 naming
/// `previous_device_token` when the token is not that device's latest one (an unknown
/// id answers the same, so that the answer does not tell which ids exist).
fn previous_device<S>(
    state: &AppState<S>,
    req: &EnrollRequest,
) -> Result<Option<Device>, ApiError> {
    let (id, token) = match (&req.previous_device_id, &req.previous_device_token) {
        (None, None) => return Ok(None),
        (Some(id), Some(token)) => (id, token),
        (Some(_), None) => return Err(missing_with("previous_device_token", "previous_device_id")),
        (None, Some(_)) => return Err(missing_with("previous_device_id", "previous_device_token")),
    };
    let proof = token_hash(token);
    let devices = state
        .devices
        .read()
        .map_err(|_| ApiError::unauthorized("device table unavailable"))?;
    // Found by id (enrolments are rare: a scan costs nothing that matters); the hashes
    // are then compared in constant time.
    match devices.values().find(|d| d.id == *id) {
        Some(d) if same_hash(&d.token_hash, &proof) => Ok(Some(d.clone())),
        _ => {
            tracing::warn!(device = ?id, "enrolment refused: wrong previous device token");
            Err(wrong_proof())
        }
    }
}

fn wrong_proof() -> ApiError {
    ApiError::unauthorized("previous_device_token is not the latest token of previous_device_id")
        .field("previous_device_token")
}

fn missing_with(missing: &'static str, given: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "missing_field",
        format!("{given} needs {missing}"),
    )
    .field(missing)
}
