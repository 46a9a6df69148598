//! The HTTP API (spec/protocol.md) on axum/hyper: enrolment, sync, admin, health.
//!
//! Every error body is the protocol's error object, including the ones hyper and axum
//! would otherwise answer in plain text (bodies over the limit, malformed JSON).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::catalog::Product;
use daymeter_shared::clock::Clock;
use daymeter_shared::entitlement::{Entitlement, Plan, Pricing};
use daymeter_shared::ledger::{DEFAULT_TEAM, Purchase, Team, default_expiry};
use daymeter_shared::policy::Policy;
use daymeter_shared::record::Problem;
use daymeter_shared::session::CLOCK_TOLERANCE;
use daymeter_shared::session::{MAX_WINDOWS, check_name};
use daymeter_shared::time::ZoneCache;
use daymeter_shared::usage::{Report, Totals};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Secret, new_token, same_hash, token_hash};
use crate::store::{
    Device, Incoming, Ingest, PurchaseCorrection, SessionFilter, Settings, Store, StoreError,
};
use crate::sync_body::{self, BodyError};

/// Largest request body (spec: over 1 MiB is 413).
pub const MAX_BODY: usize = 1 << 20;
/// Most sessions in one sync (spec: over 500 is 413).
pub const MAX_SESSIONS: usize = 500;

/// Shared by every request.
pub struct AppState<S> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub enrollment_secret: Secret,
    pub admin_token: Secret,
    /// Devices by token hash: every sync is authenticated without a database read.
    pub devices: RwLock<HashMap<[u8; 32], Device>>,
    /// Policy, catalog and entitlements; changed only by imports. The store prices
    /// with its own copy; this one answers requests.
    pub settings: RwLock<Arc<Settings>>,
    /// Held by an import from reading the settings it merges into until they are
    /// stored and published: imports apply one after the other, none lost.
    pub imports: tokio::sync::Mutex<()>,
    /// The settings' part of a sync's answer, serialized once per settings.
    fixed: Mutex<Option<Arc<Fixed>>>,
}

/// The parts of a sync's answer that depend on the settings alone (catalog and policy),
/// serialized once for each settings rather than for every sync: with 5-session syncs
/// they were a fifth of a request thread's instructions (callgrind).
struct Fixed {
    settings: Arc<Settings>,
    catalog: Box<serde_json::value::RawValue>,
    policy: Box<serde_json::value::RawValue>,
}

impl<S: Store> AppState<S> {
    /// Loads devices and settings from the store.
    pub async fn load(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        enrollment_secret: Secret,
        admin_token: Secret,
    ) -> Result<Self, StoreError> {
        let devices = store
            .devices()
            .await?
            .into_iter()
            .map(|d| (d.token_hash, d))
            .collect();
        let settings = store.settings().await?;
        Ok(AppState {
            store,
            clock,
            enrollment_secret,
            admin_token,
            devices: RwLock::new(devices),
            settings: RwLock::new(Arc::new(settings)),
            imports: tokio::sync::Mutex::new(()),
            fixed: Mutex::new(None),
        })
    }

    /// The serialized catalog and policy of `settings` (the current settings).
    fn fixed(&self, settings: &Arc<Settings>) -> Result<Arc<Fixed>, ApiError> {
        let mut cached = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cached
            .as_ref()
            .filter(|f| Arc::ptr_eq(&f.settings, settings))
        {
            return Ok(f.clone());
        }
        let raw = |v: Result<String, serde_json::Error>| {
            v.and_then(serde_json::value::RawValue::from_string)
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })
        };
        let fixed = Arc::new(Fixed {
            settings: settings.clone(),
            catalog: raw(serde_json::to_string(&settings.catalog))?,
            policy: raw(serde_json::to_string(&settings.policy))?,
        });
        *cached = Some(fixed.clone());
        Ok(fixed)
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// An error answered as `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

/// The protocol's error object.
pub fn error_object(code: &str, message: &str, field: Option<&str>) -> Value {
    let mut e = json!({ "code": code, "message": message });
    if let Some(f) = field {
        e["field"] = json!(f);
    }
    e
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": error_object(self.code, &self.message, self.field.as_deref()) });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the collector could not store this request; retry later",
        )
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

/// How much of an oversized body is still read (and dropped) before the 413 is sent.
///
/// A reply sent while the client is still sending, followed by closing the connection,
/// reaches the client as a reset instead of the 413 (the unread bytes make the kernel
/// abort the connection): an agent would then retry a batch it should split. Bodies
/// declared larger than this are refused at once.
const DRAIN_LIMIT: usize = 8 << 20;

/// Reads a body up to [`MAX_BODY`]; larger is 413 before anything is parsed.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body over {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = body;
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        if seen <= MAX_BODY {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > MAX_BODY {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(bad_json)
}

/// The 400 for a body that is not the JSON an endpoint expects.
fn bad_json(detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_json",
        format!("body is not the expected JSON: {detail}"),
    )
}

/// The token of an `Authorization: Bearer …` header; the scheme's name is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` is the same scheme.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn check_admin<S>(state: &AppState<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if state.admin_token.matches(t) => Ok(()),
        _ => Err(ApiError::unauthorized("admin token missing or wrong")),
    }
}

fn device_of<S>(state: &AppState<S>, headers: &HeaderMap) -> Result<Device, ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("device token missing"))?;
    let hash = token_hash(token);
    let devices = state
        .devices
        .read()
        .map_err(|_| ApiError::unauthorized("device table unavailable"))?;
    // The map finds the entry by hash; the stored hash is then compared in constant time.
    match devices.get(&hash) {
        Some(d) if same_hash(&d.token_hash, &hash) && !d.revoked => Ok(d.clone()),
        Some(_) => Err(ApiError::unauthorized(
            "device revoked; re-enrol with `daymeter-agent enroll`",
        )),
        None => Err(ApiError::unauthorized("unknown device token")),
    }
}

/// Builds the router.
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/enroll", post(enroll::<S>))
        .route("/v1/sync", post(sync::<S>))
        .route("/v1/admin/import", post(import::<S>))
        .route("/v1/admin/usage-days", get(usage_days::<S>))
        .route("/v1/admin/sessions", get(sessions::<S>))
        .route("/v1/admin/devices/{id}/revoke", post(revoke::<S>))
        .route("/v1/admin/purchases", post(purchase::<S>))
        .route(
            "/v1/admin/purchases/{id}/corrections",
            post(correct_purchase::<S>),
        )
        .route("/v1/admin/balances", get(balances::<S>))
        .route("/v1/admin/ledger", get(ledger::<S>))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(state)
}

async fn healthz() -> Response {
    json_response(&json!({ "status": "ok" }))
}

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

async fn enroll<S: Store>(
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

#[derive(Serialize)]
struct Rejected {
    id: Option<String>,
    error: Value,
}

async fn sync<S: Store>(
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

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The user's plan and rate for every catalog product, now.
/// A product's plan and daily rate for the user now, as the sync answer lists them.
#[derive(Serialize)]
struct EntitlementNow<'a> {
    product: &'a str,
    plan: Plan,
    tokens_per_day: u64,
}

fn entitlements_of<'s>(
    settings: &'s Settings,
    user: &str,
    now: DateTime<Utc>,
) -> Vec<EntitlementNow<'s>> {
    let t = now.timestamp_nanos_opt().unwrap_or_default();
    settings
        .catalog
        .iter()
        .map(|(id, product)| {
            let held: Vec<&Entitlement> = settings
                .entitlements
                .iter()
                .filter(|e| e.user == user && &e.product == id)
                .collect();
            let (plan, tokens_per_day) = Pricing {
                tokens_per_day: product.tokens_per_day,
                entitlements: &held,
            }
            .at(t);
            EntitlementNow {
                product: id,
                plan,
                tokens_per_day,
            }
        })
        .collect()
}

/// The current window of a product the user has running.
#[derive(Serialize)]
struct OpenWindow {
    product: String,
    window_start: String,
    window_end: String,
    /// Tokens the next window will cost if the product is still open when this one ends.
    next_tokens: u64,
    #[serde(skip)]
    end: DateTime<Utc>,
}

/// The current window of each product the user has running.
async fn open_windows<S: Store>(
    state: &AppState<S>,
    settings: &Settings,
    user: &str,
    open: &[(String, bool)],
    now: DateTime<Utc>,
) -> Result<Vec<OpenWindow>, ApiError> {
    let products: Vec<&str> = open.iter().map(|(p, _)| p.as_str()).collect();
    if products.is_empty() {
        return Ok(Vec::new());
    }
    let rows = state.store.current_windows(user.to_owned(), now).await?;
    let mut out = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.user == user && products.contains(&&*r.product))
    {
        if row.window_start <= now && now < row.window_end {
            let held: Vec<&Entitlement> = settings
                .entitlements
                .iter()
                .filter(|e| e.user == user && e.product == row.product)
                .collect();
            let rate = settings
                .catalog
                .get(&*row.product)
                .map_or(0, |p| p.tokens_per_day);
            let next = Pricing {
                tokens_per_day: rate,
                entitlements: &held,
            }
            .at(row.window_end.timestamp_nanos_opt().unwrap_or_default())
            .1;
            out.push(OpenWindow {
                product: row.product.to_string(),
                window_start: stamp(row.window_start),
                window_end: stamp(row.window_end),
                next_tokens: next,
                end: row.window_end,
            });
        }
    }
    Ok(out)
}

/// A reminder in the sync answer (spec/protocol.md), with the text the agent shows.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Reminder<'a> {
    WindowRollover {
        product: &'a str,
        at: String,
        window_end: String,
        tokens: u64,
        text: String,
    },
    InsufficientBalance {
        product: &'a str,
        balance: u64,
        tokens_per_day: u64,
        text: String,
    },
}

/// Reminders due now: a running product sitting idle whose window ends within
/// `remind_before` (closing it saves the next window's tokens), and Flex products the
/// team's balance (`remaining`) can no longer pay a day of.
fn reminders<'a>(
    settings: &Settings,
    entitlements: &[EntitlementNow<'a>],
    open: &[(String, bool)],
    windows: &'a [OpenWindow],
    remaining: u64,
    now: DateTime<Utc>,
) -> Vec<Reminder<'a>> {
    let mut out = Vec::new();
    let lead = chrono::TimeDelta::from_std(settings.policy.remind_before).unwrap_or_default();
    for w in windows {
        let product = w.product.as_str();
        let idle = open.iter().any(|(p, idle)| p == product && *idle);
        let at = w
            .end
            .checked_sub_signed(lead)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if idle && now >= at {
            let name = settings
                .catalog
                .get(product)
                .and_then(|p| p.name.clone())
                .unwrap_or_else(|| product.to_owned());
            let tokens = w.next_tokens;
            out.push(Reminder::WindowRollover {
                product,
                at: stamp(at),
                window_end: w.window_end.clone(),
                tokens,
                text: format!("{name} has been idle and its day ends at {}. Close it now to avoid being charged {tokens} tokens for another day.", w.window_end),
            });
        }
    }
    for e in entitlements {
        let rate = e.tokens_per_day;
        if e.plan != Plan::Flex || rate == 0 {
            continue;
        }
        let balance = remaining;
        if balance < rate {
            let product = e.product;
            out.push(Reminder::InsufficientBalance {
                product,
                balance,
                tokens_per_day: rate,
                text: format!("Your team has {balance} tokens left; a day of {product} costs {rate}. Launching it will be refused until tokens are added."),
            });
        }
    }
    out
}

async fn import<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let doc: Value = parse_json(&bytes)?;
    let bad = |record: String, p: Problem| {
        let field = p.field().map(str::to_owned);
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            p.code(),
            format!("{record}: {p}"),
        );
        e.field = field;
        e
    };
    only_known_keys(&doc)?;
    let replace = match doc.get("replace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "import".into(),
                Problem::WrongType {
                    field: "replace",
                    expected: "true or false",
                },
            ));
        }
    };
    let _one_import_at_a_time = state.imports.lock().await;
    let mut settings = if replace {
        Settings::default()
    } else {
        Settings::clone(&state.settings())
    };
    if let Some(policy) = doc.get("policy").filter(|v| !v.is_null()) {
        if replace {
            settings.policy = Policy::default();
        }
        settings
            .policy
            .merge(policy)
            .map_err(|p| bad("policy".into(), p))?;
    }
    if settings.policy.window < state.settings().policy.window {
        // Every stored session must still span fewer windows than a sync may bring:
        // a window shortened from 24h to 1s would turn a 900-day session into
        // 77 million usage days in the import's recomputation.
        let longest = state.store.longest_session().await?;
        let window = settings.policy.window.as_secs().max(1);
        let windows = u64::try_from(longest).unwrap_or(0) / window;
        if windows >= MAX_WINDOWS as u64 {
            return Err(bad(
                "policy".into(),
                Problem::OutOfBounds {
                    field: "window",
                    bounds: "the longest stored session must span fewer than 1000 windows",
                },
            ));
        }
    }
    if let Some(catalog) = doc.get("catalog").filter(|v| !v.is_null()) {
        let Value::Object(entries) = catalog else {
            return Err(bad(
                "catalog".into(),
                Problem::WrongType {
                    field: "catalog",
                    expected: "an object of products by id",
                },
            ));
        };
        for (id, entry) in entries {
            check_name("product", id).map_err(|p| bad(format!("catalog product {id:?}"), p))?;
            let product =
                Product::from_json(entry).map_err(|p| bad(format!("catalog product {id}"), p))?;
            if product.tokens_per_day > MAX_TOKENS_PER_DAY {
                return Err(bad(
                    format!("catalog product {id}"),
                    Problem::OutOfBounds {
                        field: "tokens_per_day",
                        bounds: "at most 1000000",
                    },
                ));
            }
            settings.catalog.insert(id.clone(), product);
        }
    }
    if let Some(list) = doc.get("entitlements").filter(|v| !v.is_null()) {
        let Value::Array(list) = list else {
            return Err(bad(
                "entitlements".into(),
                Problem::WrongType {
                    field: "entitlements",
                    expected: "a list",
                },
            ));
        };
        for (i, e) in list.iter().enumerate() {
            let e =
                Entitlement::from_json(e).map_err(|p| bad(format!("entitlement #{}", i + 1), p))?;
            if !settings.catalog.contains_key(&e.product) {
                // replay refuses it too: a plan for a product nobody prices.
                return Err(bad(
                    format!("entitlement #{}", i + 1),
                    Problem::UnknownProduct(e.product),
                ));
            }
            settings
                .entitlements
                .retain(|x| !(x.user == e.user && x.product == e.product && x.from == e.from));
            settings.entitlements.push(e);
        }
    }
    if let Some(teams) = doc.get("teams").filter(|v| !v.is_null()) {
        let teams: std::collections::BTreeMap<String, Team> = serde_json::from_value(teams.clone())
            .map_err(|e| {
                bad(
                    "teams".into(),
                    Problem::Malformed(format!(
                        "teams must map names to {{\"users\": [...], \"low_balance\": n}}: {e}"
                    )),
                )
            })?;
        let mut seen: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
        for (name, team) in &teams {
            check_name("team", name).map_err(|p| bad(format!("team {name:?}"), p))?;
            for user in &team.users {
                check_name("users", user).map_err(|p| bad(format!("team {name}"), p))?;
                if let Some(first) = seen.insert(user, name) {
                    return Err(bad(
                        format!("team {name}"),
                        Problem::Malformed(format!(
                            "user {user:?} is listed in teams {first} and {name}; a user belongs to one team"
                        )),
                    )
                    .field("users"));
                }
            }
        }
        for (name, team) in teams {
            // A user belongs to one team: an import that lists them elsewhere moves them.
            for other in settings.teams.values_mut() {
                other.users.retain(|u| !team.users.contains(u));
            }
            settings.teams.insert(name, team);
        }
    }
    state.store.put_settings(settings.clone()).await?;

    tracing::info!(
        products = settings.catalog.len(),
        entitlements = settings.entitlements.len(),
        replace,
        "import applied"
    );
    if let Ok(mut s) = state.settings.write() {
        *s = Arc::new(settings.clone());
    }
    Ok(json_response(
        &json!({ "catalog": settings.catalog.len(), "entitlements": settings.entitlements.len(), "policy": settings.policy }),
    ))
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

/// Refuses the keys an import does not know, at every level, by name: a misspelt
/// `grace_flexx` once kept the default grace in silence, and a top-level `users` was
/// dropped.
fn only_known_keys(doc: &Value) -> Result<(), ApiError> {
    let unknown = |record: &str, key: &str, allowed: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_key",
            format!("{record}: unknown key {key:?} (known: {allowed})"),
        )
        .field(key.to_owned())
    };
    let check = |record: &str, value: &Value, allowed: &[&str]| match value {
        Value::Object(map) => match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(unknown(record, k, &allowed.join(", "))),
            None => Ok(()),
        },
        _ => Ok(()), // the wrong type is refused, by name, where the value is read
    };
    let Value::Object(top) = doc else {
        return Err(bad_json("an import is a JSON object"));
    };
    check(
        "import",
        doc,
        &["catalog", "entitlements", "teams", "policy", "replace"],
    )?;
    if let Some(policy) = top.get("policy") {
        check("policy", policy, Policy::KEYS)?;
    }
    if let Some(Value::Object(catalog)) = top.get("catalog") {
        for (id, product) in catalog {
            check(
                &format!("catalog product {id}"),
                product,
                &["name", "tokens_per_day", "match", "rate_confirmed"],
            )?;
            if let Some(Value::Array(rules)) = product.get("match") {
                for rule in rules {
                    check(
                        &format!("catalog product {id} match"),
                        rule,
                        &["exe", "args_contain"],
                    )?;
                }
            }
        }
    }
    if let Some(Value::Array(list)) = top.get("entitlements") {
        for (i, e) in list.iter().enumerate() {
            check(
                &format!("entitlement #{}", i + 1),
                e,
                &["user", "product", "plan", "from", "to"],
            )?;
        }
    }
    if let Some(Value::Object(teams)) = top.get("teams") {
        for (name, team) in teams {
            check(&format!("team {name}"), team, &["users", "low_balance"])?;
        }
    }
    Ok(())
}

/// The highest daily rate a product may have: far above any real one, and low enough
/// that no sum of days overflows what the store keeps.
pub const MAX_TOKENS_PER_DAY: u64 = 1_000_000;

/// The most tokens one purchase may add (a trillion): sums of purchases stay within
/// the 64-bit integers the store keeps.
pub const MAX_PURCHASE_TOKENS: u64 = 1_000_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DayRange {
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

async fn usage_days<S: Store>(
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
struct SessionQuery {
    user: Option<String>,
    product: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn sessions<S: Store>(
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

async fn revoke<S: Store>(
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

async fn purchase<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let req: PurchaseRequest = parse_json(&bytes)?;
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
async fn correct_purchase<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let req: CorrectionRequest = parse_json(&bytes)?;
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

async fn balances<S: Store>(
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
struct LedgerQuery {
    team: Option<String>,
    /// The `seq` of the last entry of the previous page.
    after: Option<i64>,
    limit: Option<usize>,
}

/// Entries in one ledger page unless `limit` says otherwise, and the most it may say.
const LEDGER_PAGE: usize = 1000;
const LEDGER_PAGE_MAX: usize = 10_000;

async fn ledger<S: Store>(
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
