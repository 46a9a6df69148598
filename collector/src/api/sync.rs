//! `POST /v1/sync`: a device's sessions checked one by one and stored, and the answer
//! the agent meters by (catalog, policy, entitlements, grace, open windows, reminders).

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use daymeter_shared::record::Problem;
use daymeter_shared::session::{CLOCK_TOLERANCE, check_name};
use daymeter_shared::time::ZoneCache;
use serde::Serialize;
use serde_json::Value;

use super::{
    ApiError, AppState, MAX_SESSIONS, bad_json, device_of, error_object, json_response, read_body,
};
use crate::store::{Incoming, Ingest, Settings, Store};
use crate::sync_answer::{
    self, EntitlementNow, OpenWindow, Reminder, entitlements_of, reminders, stamp,
};
use crate::sync_body::{self, BodyError};

#[derive(Serialize)]
struct Rejected {
    id: Option<String>,
    error: Value,
}

pub(super) async fn sync<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let device = device_of(&state, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let text = std::str::from_utf8(&bytes).map_err(bad_json)?;
    let req = sync_body::read(text, MAX_SESSIONS).map_err(|e| match e {
        BodyError::TooMany(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_sessions",
            e.to_string(),
        )
        .field("sessions"),
        BodyError::Json(m) => bad_json(m),
    })?;
    check_name("user", &req.user).map_err(|p| {
        ApiError::new(StatusCode::BAD_REQUEST, p.code(), p.to_string()).field("user")
    })?;
    let settings = state.settings();
    let window = settings.policy.rules().window;
    let mut zones = ZoneCache::new();
    // Instants past this are a device clock running ahead, not a use to charge yet.
    let latest = state.clock.now() + CLOCK_TOLERANCE;
    let mut good = Vec::with_capacity(req.sessions.len());
    let mut rejected = Vec::new();
    for element in req.sessions {
        let checked = match element.parsed {
            Ok(r) => {
                let id = r.id.as_deref().map(str::to_owned);
                r.check(&mut zones)
                    .and_then(|(s, z)| s.check_not_later_than(latest).map(|()| (s, z)))
                    .and_then(|(s, z)| s.check_admissible(window).map(|()| (s, z)))
                    .map_err(|p| (id, p))
            }
            Err(e) => {
                let id = serde_json::from_str::<daymeter_shared::session::IdOnly<'_>>(element.text)
                    .ok()
                    .and_then(|i| i.id)
                    .map(|c| c.into_owned());
                Err((id, Problem::Malformed(e.to_string())))
            }
        };
        // A session that did not parse: name the field where it failed (read again on
        // this rare path, with the path the parser was at).
        let checked = checked.map_err(|(id, problem)| {
            let field =
                matches!(problem, Problem::Malformed(_)).then(|| malformed_field(element.text));
            (id, problem, field)
        });
        match checked {
            Ok((mut session, zone)) => {
                session.user = Some(Cow::Owned(req.user.to_string()));
                session.device = Some(Cow::Owned(device.id.clone()));
                good.push(Incoming {
                    session: session.into_owned(),
                    zone,
                    body: element.text.to_owned(),
                });
            }
            Err((id, problem, field)) => rejected.push(Rejected {
                error: error_object(
                    problem.code(),
                    &problem.to_string(),
                    field.as_deref().or(problem.field()),
                ),
                id,
            }),
        }
    }
    let now = state.clock.now();
    // Running products, and whether each is idle now (its last idle interval is still
    // running: it ends at the session's last_seen).
    let open: Vec<(String, bool)> = good
        .iter()
        .map(|i| &i.session)
        .filter(|s| s.end.is_none())
        .map(|s| {
            (
                s.product.to_string(),
                s.idle
                    .last()
                    .is_some_and(|[_, to]| Some(to) == s.last_seen.as_ref()),
            )
        })
        .collect();
    let ingest = Ingest::received(req.user.to_string(), device.id.clone(), good, now);
    let outcome = state.store.ingest(ingest).await?;
    let team_remaining = outcome.team_remaining;
    for (id, problem) in outcome.rejected {
        rejected.push(Rejected {
            id: Some(id),
            error: error_object(problem.code(), &problem.to_string(), problem.field()),
        });
    }
    tracing::debug!(device = %device.id, user = ?req.user, accepted = outcome.accepted.len(), rejected = rejected.len(), "sync");

    let open_windows = open_windows(&state, &settings, &req.user, &open, now).await?;
    let entitlements = entitlements_of(&settings, &req.user, now);
    let reminders = reminders(
        &settings,
        &entitlements,
        &open,
        &open_windows,
        team_remaining,
        now,
    );
    let grace =
        // Checked: a policy stored before its bounds were enforced may hold any span.
        |d: std::time::Duration| {
            stamp(
                chrono::TimeDelta::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            )
        };
    let fixed = state.fixed(&settings)?;
    let response = SyncResponse {
        server_time: stamp(now),
        accepted: &outcome.accepted,
        rejected: &rejected,
        catalog: &fixed.catalog,
        entitlements,
        grace_until: Grace {
            flex: grace(settings.policy.grace_flex),
            subscription: grace(settings.policy.grace_subscription),
        },
        open_windows: &open_windows,
        reminders: &reminders,
        policy: &fixed.policy,
    };
    Ok(json_response(&response))
}

/// The field at which a session's text fails to parse (`start`, `idle[0]`…); `session`
/// when the element is not an object at all.
fn malformed_field(text: &str) -> String {
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, daymeter_shared::session::RawSession<'_>>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            if path.is_empty() || path == "." {
                "session".to_owned()
            } else {
                path
            }
        }
        Ok(_) => "session".to_owned(),
    }
}

/// The answer to a sync (spec/protocol.md), serialized straight from the settings.
#[derive(Serialize)]
struct SyncResponse<'a> {
    server_time: String,
    accepted: &'a [String],
    rejected: &'a [Rejected],
    catalog: &'a serde_json::value::RawValue,
    entitlements: Vec<EntitlementNow<'a>>,
    grace_until: Grace,
    open_windows: &'a [OpenWindow],
    reminders: &'a [Reminder<'a>],
    policy: &'a serde_json::value::RawValue,
}

#[derive(Serialize)]
struct Grace {
    flex: String,
    subscription: String,
}

/// The current window of each product the user has running.
async fn open_windows<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    user: &str,
    open: &[(String, bool)],
    now: DateTime<Utc>,
) -> Result<Vec<OpenWindow>, ApiError> {
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let rows = state.store.current_windows(user.to_owned(), now).await?;
    Ok(sync_answer::open_windows(settings, user, open, &rows, now))
}
