//! The HTTP API (spec/protocol.md) on axum/hyper: enrolment, sync, admin, health.
//!
//! Every error body is the protocol's error object, including the ones hyper and axum
//! would otherwise answer in plain text (bodies over the limit, malformed JSON).
//!
//! Here: the shared state, the error object, body and query reading, authentication,
//! and the routes; one module per resource holds its handlers, which read the request,
//! call the store and the rules (`settings`, `sync_answer`), and answer.

mod devices;
mod enroll;
mod exports;
mod import;
mod ledger;
mod mail;
mod purchases;
mod reports;

pub(crate) use exports::csv_file;
pub use reports::report_docs;
pub(crate) use reports::{MailReport, doc_for_mail};
mod sessions;
mod sync;
mod usage_days;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use daymeter_shared::clock::Clock;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Secret, same_hash, token_hash};
use crate::store::{Device, Settings, Store, StoreError};

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
    /// Each user's team under the settings it was built from: a report used to build it
    /// for every request (10,000 users: a twelfth of the dashboard's time).
    teams: Mutex<Option<(Arc<Settings>, Arc<crate::reports::Teams>)>>,
    /// The dashboard's logins.
    pub sessions: crate::dashboard::sessions::Sessions,
    /// Served over TLS: the dashboard's cookie is `Secure`.
    pub secure_cookies: bool,
    /// The dashboard's admin password (an Argon2 PHC string), when configured.
    pub admin_password_hash: Option<String>,
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
            teams: Mutex::new(None),
            sessions: Default::default(),
            secure_cookies: false,
            admin_password_hash: None,
        })
    }

    /// Each user's team under `settings` (the current settings).
    pub(crate) fn teams(&self, settings: &Arc<Settings>) -> Arc<crate::reports::Teams> {
        let mut cached = self.teams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((of, teams)) = cached.as_ref()
            && Arc::ptr_eq(of, settings)
        {
            return teams.clone();
        }
        let teams = Arc::new(crate::reports::Teams::new(&settings.teams));
        *cached = Some((settings.clone(), teams.clone()));
        teams
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

    /// The settings now.
    pub(crate) fn settings(&self) -> Arc<Settings> {
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

/// For logs outside a request (the mail scheduler): the code and the message.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
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

/// An admin request's JSON body, once the admin token is checked.
async fn admin_json<S, T: serde::de::DeserializeOwned>(
    state: &AppState<S>,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    check_admin(state, headers)?;
    let bytes = read_body(headers, body).await?;
    parse_json(&bytes)
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

/// For reads only (reports and exports): the admin token, or a dashboard session's
/// cookie, so that the dashboard's export buttons are plain links. Never for a change:
/// a cookie rides along with requests a browser is tricked into sending.
fn check_reader<S>(state: &AppState<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    if bearer(headers).is_some() {
        return check_admin(state, headers);
    }
    let now = state.clock.now();
    match crate::dashboard::sessions::cookie_of(headers) {
        Some(id) if state.sessions.csrf_of(id, now).is_some() => Ok(()),
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

/// The 400 for a query string an endpoint does not take: an unknown parameter, one
/// given twice, or a value of the wrong form — said by name, so that a misspelt filter
/// never answers as if no filter had been given.
pub(crate) fn bad_query(e: QueryRejection) -> ApiError {
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

/// Builds the router.
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(crate::dashboard::index::<S>))
        .route(
            "/login",
            get(crate::dashboard::login_page::<S>).post(crate::dashboard::login::<S>),
        )
        .route("/logout", post(crate::dashboard::logout::<S>))
        .route("/v1/enroll", post(enroll::enroll::<S>))
        .route("/v1/sync", post(sync::sync::<S>))
        .route("/v1/admin/import", post(import::import::<S>))
        .route("/v1/admin/usage-days", get(usage_days::usage_days::<S>))
        .route("/v1/admin/sessions", get(sessions::sessions::<S>))
        .route("/v1/admin/devices", get(devices::list::<S>))
        .route("/v1/admin/devices/{id}/revoke", post(devices::revoke::<S>))
        .route("/v1/admin/purchases", post(purchases::purchase::<S>))
        .route(
            "/v1/admin/purchases/{id}/corrections",
            post(purchases::correct_purchase::<S>),
        )
        .route("/v1/admin/balances", get(ledger::balances::<S>))
        .route(
            "/v1/admin/mail/schedules",
            get(mail::list::<S>).post(mail::create::<S>),
        )
        .route(
            "/v1/admin/mail/schedules/{id}",
            axum::routing::delete(mail::delete::<S>),
        )
        .route("/v1/admin/ledger", get(ledger::ledger::<S>))
        .route(
            "/v1/exports/token-usage.csv",
            get(exports::token_usage::<S>),
        )
        .route("/v1/exports/seat-usage.csv", get(exports::seat_usage::<S>))
        .route("/v1/exports/usage.csv", get(exports::usage_csv::<S>))
        .route("/v1/reports/tokens", get(reports::tokens::<S>))
        .route("/v1/reports/products", get(reports::products::<S>))
        .route("/v1/reports/users", get(reports::users::<S>))
        .route("/v1/reports/usage", get(reports::usage::<S>))
        .route("/v1/reports/waste", get(reports::waste::<S>))
        .route("/v1/reports/forecast", get(reports::forecast::<S>))
        .route("/v1/reports/advice", get(reports::advice::<S>))
        .route("/v1/reports/concurrent", get(reports::concurrent::<S>))
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
