//! The admin's dashboard in the browser: `/` (a visitor without a session is sent to
//! `/login`), `POST /login` with the admin token, `POST /logout`.
//!
//! - [`sessions`] — login sessions, the cookie and CSRF tokens.
//! - [`page`] — the HTML (maud), from the report documents of [`crate::api`].
//! - [`chart`] — inline SVG charts.
//!
//! The page is server-rendered and works with JavaScript off. Its numbers are the JSON
//! API's: each section is drawn from the same document `/v1/reports/…` answers with.
//! The CSV export buttons are plain links: the exports accept the session cookie as
//! well as the admin token (reads only; a session never authorises a change but its
//! own logout, which also needs the form's CSRF token).

pub mod chart;
pub mod page;
pub mod sessions;

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::api::{ApiError, AppState, report_docs};
use crate::store::Store;

/// The login form: the admin token, or the admin password where one is configured.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

/// Password checks running at once (see [`login`]).
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    range: Option<String>,
}

fn html(markup: maud::Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing of the page may be framed, sniffed or cached by a shared proxy.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

pub async fn login_page<S: Store>(State(state): State<Arc<AppState<S>>>) -> Response {
    html(page::login(state.admin_password_hash.is_some(), None))
}

pub async fn login<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let by_token = !form.token.is_empty() && state.admin_token.matches(&form.token);
    let by_password = match (&state.admin_password_hash, form.password.is_empty()) {
        (Some(phc), false) => {
            // Argon2 takes tens of milliseconds of CPU on purpose: off the request threads,
            // and two at a time at most, so that a flood of guesses cannot take every core
            // from the syncs.
            let _turn = VERIFYING.acquire().await;
            let (phc, password) = (phc.clone(), form.password.clone());
            tokio::task::spawn_blocking(move || crate::auth::verify_password(&phc, &password))
                .await
                .unwrap_or(false)
        }
        _ => false,
    };
    if !(by_token || by_password) {
        tracing::warn!("dashboard login refused: wrong admin token or password");
        let has_password = state.admin_password_hash.is_some();
        let mut r = html(page::login(
            has_password,
            Some("That is not the admin token or password."),
        ));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    }
    let opened = state
        .sessions
        .open(state.clock.now())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tracing::info!("dashboard login");
    let mut r = Redirect::to("/").into_response();
    if let Ok(cookie) = sessions::set_cookie(&opened.id, state.secure_cookies).parse() {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(r)
}

pub async fn logout<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Some(id) = sessions::cookie_of(&headers) {
        let expected = state.sessions.csrf_of(id, state.clock.now());
        if expected.is_some_and(|c| crate::auth::same_secret(c.as_bytes(), form.csrf.as_bytes())) {
            state.sessions.close(id);
        } else {
            return (StatusCode::FORBIDDEN, "the form is stale: reload the page").into_response();
        }
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(cookie) = sessions::clear_cookie().parse() {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    r
}

pub async fn index<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(crate::api::bad_query)?;
    let now = state.clock.now();
    let Some(csrf) = sessions::cookie_of(&headers).and_then(|id| state.sessions.csrf_of(id, now))
    else {
        return Ok(Redirect::to("/login").into_response());
    };
    let range = q.range.unwrap_or_else(|| "past-30-days".to_owned());
    if !page::RANGES.iter().any(|(r, _)| *r == range) {
        return Ok(Redirect::to("/").into_response());
    }
    let docs = report_docs(&state, &range).await?;
    Ok(html(page::dashboard(&range, &csrf, &docs)))
}
