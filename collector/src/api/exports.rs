//! `GET /v1/exports/{token-usage,seat-usage,usage}.csv`: the reports' filters, CSV out.
//!
//! RFC 4180 (the `csv` crate), UTF-8 with a byte-order mark so that Excel reads accents
//! right, `delimiter=;` for spreadsheets in locales whose decimal separator is the
//! comma. The file is written on a blocking thread in 64 KiB chunks that go out as they
//! fill, so a large export is never held whole as text. (The rows it is written from
//! are the store's answer for the range, in memory.)

use std::io::{self, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use daymeter_shared::usage::UsageDay;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ApiError, AppState, bad_query, check_reader};
use crate::reports::people::People;
use crate::reports::range::{self, Basis};
use crate::reports::{Filter, Teams, exports, usage};
use crate::settings::Settings;
use crate::store::Store;

/// A chunk goes out once it holds this much.
const CHUNK: usize = 64 * 1024;
/// Users whose days are read at once.
const PAGE_USERS: usize = 500;
/// What Excel needs to read a CSV file as UTF-8.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
    team: Option<String>,
    user: Option<String>,
    product: Option<String>,
    delimiter: Option<String>,
}

/// Which export.
#[derive(Clone, Copy)]
enum Kind {
    TokenUsage,
    SeatUsage,
    Usage,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::TokenUsage => "token-usage.csv",
            Kind::SeatUsage => "seat-usage.csv",
            Kind::Usage => "usage.csv",
        }
    }

    /// Token exports count completed months, seat and usage exports rolling ones, as
    /// their reports do.
    fn basis(self) -> Basis {
        match self {
            Kind::TokenUsage => Basis::CompletedMonths,
            Kind::SeatUsage | Kind::Usage => Basis::Rolling,
        }
    }
}

pub(super) async fn token_usage<S: Store>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export(state, headers, q, Kind::TokenUsage).await
}

pub(super) async fn seat_usage<S: Store>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export(state, headers, q, Kind::SeatUsage).await
}

pub(super) async fn usage_csv<S: Store>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export(state, headers, q, Kind::Usage).await
}

async fn export<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, QueryRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    check_reader(&state, &headers)?;
    let Query(q) = q.map_err(bad_query)?;
    let delimiter = super::reports::delimiter_of(q.delimiter.as_deref())?;
    let today = state.clock.now().date_naive();
    let range = range::parse(
        q.range.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        kind.basis(),
        today,
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_range", e.message).field(e.field))?;
    let filter = super::reports::filter_of(&state, q.team, q.user, q.product)?;
    let settings = state.settings();
    let teams = state.teams(&settings);
    let users = super::reports::report_users(&state, &settings, &teams, &filter).await?;
    let secret = state.admin_token.expose().to_owned();
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let runtime = tokio::runtime::Handle::current();
    let store = state.clone();
    tokio::task::spawn_blocking(move || {
        let out = Chunks {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        // The days are read a page of users at a time, so that memory stays flat
        // whatever the export's size.
        let written = write_csv(
            out,
            delimiter,
            kind,
            &settings,
            &users,
            |page| page_days(&runtime, &store, page, &range),
            |page| page_lines(&runtime, &store, &settings, page, &range, &filter),
            &range,
            &filter,
            &secret,
        );
        if let Err(e) = written {
            // The client sees a cut-off body; the log says why.
            tracing::warn!(file = kind.file(), error = %e, "a CSV export stopped");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let disposition = format!("attachment; filename=\"{}\"", kind.file());
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        stream,
    )
        .into_response())
}

/// An export as a whole file, for a scheduled report's attachment: the same rows, the
/// same columns and the same writer as the API's, so the mail and a download of the
/// same range agree line for line. Comma-delimited.
pub(crate) async fn csv_file<S: Store>(
    state: &Arc<AppState<S>>,
    export: crate::mail::kinds::Export,
    range: &range::ReportRange,
    filter: &Filter,
) -> Result<Vec<u8>, ApiError> {
    use crate::mail::kinds::Export;
    let kind = match export {
        Export::TokenUsage => Kind::TokenUsage,
        Export::SeatUsage => Kind::SeatUsage,
        Export::Usage => Kind::Usage,
    };
    let settings = state.settings();
    let teams = state.teams(&settings);
    let users = super::reports::report_users(state, &settings, &teams, filter).await?;
    let secret = state.admin_token.expose().to_owned();
    let (range, filter) = (*range, filter.clone());
    let runtime = tokio::runtime::Handle::current();
    let store = state.clone();
    // Written on a blocking thread, as the API's exports are, from the same pages: a
    // year of rows is seconds of work that must not hold a runtime thread.
    tokio::task::spawn_blocking(move || {
        let mut file = Vec::new();
        write_csv(
            &mut file,
            b',',
            kind,
            &settings,
            &users,
            |page| page_days(&runtime, &store, page, &range),
            |page| page_lines(&runtime, &store, &settings, page, &range, &filter),
            &range,
            &filter,
            &secret,
        )
        .map(|()| file)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// A page of users' days in the range, read from a blocking thread.
fn page_days<S: Store>(
    runtime: &tokio::runtime::Handle,
    state: &AppState<S>,
    page: &[String],
    range: &range::ReportRange,
) -> io::Result<Vec<UsageDay<'static>>> {
    runtime
        .block_on(state.store.users_days(page.to_vec(), range.from, range.to))
        .map_err(io::Error::other)
}

/// A page of users' usage lines, computed from a blocking thread.
fn page_lines<S: Store>(
    runtime: &tokio::runtime::Handle,
    state: &AppState<S>,
    settings: &Settings,
    page: &[String],
    range: &range::ReportRange,
    filter: &Filter,
) -> io::Result<Vec<usage::UsageLine>> {
    let teams = Teams::new(&settings.teams);
    runtime
        .block_on(super::reports::usage_lines(
            state, settings, &teams, range, filter, page,
        ))
        .map_err(|e| io::Error::other(e.message))
}

#[allow(clippy::too_many_arguments)]
fn write_csv(
    out: impl Write,
    delimiter: u8,
    kind: Kind,
    settings: &Settings,
    users: &[String],
    days: impl Fn(&[String]) -> io::Result<Vec<UsageDay<'static>>>,
    lines: impl Fn(&[String]) -> io::Result<Vec<usage::UsageLine>>,
    range: &range::ReportRange,
    filter: &Filter,
    secret: &str,
) -> io::Result<()> {
    let teams = Teams::new(&settings.teams);
    let people = People::new(settings, &teams, secret);
    let mut out = out;
    out.write_all(BOM)?;
    let mut csv = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(out);
    let catalog = &settings.catalog;
    match kind {
        Kind::TokenUsage => {
            csv.write_record(exports::TOKEN_USAGE)?;
            for page in users.chunks(PAGE_USERS) {
                let rows = days(page)?;
                for r in exports::token_usage(&rows, range, filter, &teams, &people, catalog) {
                    csv.write_record(&r)?;
                }
            }
        }
        Kind::SeatUsage => {
            csv.write_record(exports::SEAT_USAGE)?;
            for page in exports::seat_users(users, settings).chunks(PAGE_USERS) {
                let rows = days(page)?;
                for r in exports::seat_usage(&rows, range, filter, &teams, &people, catalog) {
                    csv.write_record(&r)?;
                }
            }
        }
        Kind::Usage => {
            csv.write_record(exports::USAGE)?;
            for page in users.chunks(PAGE_USERS) {
                for r in exports::usage(&lines(page)?, &teams, &people, catalog) {
                    csv.write_record(&r)?;
                }
            }
        }
    }
    let mut out = csv.into_inner().map_err(|e| e.into_error())?;
    out.flush()
}

/// A writer that sends what it holds as a body chunk each time it passes [`CHUNK`].
struct Chunks {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}
