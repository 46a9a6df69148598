//! `POST /v1/admin/import`: catalog, entitlements, teams and policy merged into the
//! settings by [`crate::settings::import`]'s rules, stored, and published.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiError, AppState, admin_json, json_response};
use crate::settings::import;
use crate::store::Store;

/// `POST /v1/admin/import`: the document merged by [`crate::settings::import`]'s rules, stored,
/// and published; every key's usage days are recomputed by the store.
pub(super) async fn import<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let doc: Value = admin_json(&state, &headers, body).await?;
    let _one_import_at_a_time = state.imports.lock().await;
    let current = state.settings();
    let (settings, replace) = import::merge(&current, &doc).map_err(refused)?;
    if import::shortens_window(&current, &settings) {
        let longest = state.store.longest_session().await?;
        import::window_fits(longest, settings.policy.window).map_err(refused)?;
    }
    state.store.put_settings(settings.clone()).await?;
    tracing::info!(
        products = settings.catalog.len(),
        entitlements = settings.entitlements.len(),
        replace,
        "import applied"
    );
    let answer = json!({ "catalog": settings.catalog.len(), "entitlements": settings.entitlements.len(), "policy": settings.policy });
    if let Ok(mut s) = state.settings.write() {
        *s = Arc::new(settings);
    }
    Ok(json_response(&answer))
}

fn refused(r: import::Refused) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message);
    e.field = r.field;
    e
}
