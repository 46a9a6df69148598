//! `GET /v1/reports/{tokens,products,users,usage,waste,forecast,advice,concurrent}`:
//! admin auth, JSON, or with `format=csv` the report's table as CSV (tokens: by day). Each handler reads what the store returns for the range and hands
//! it to the rules in [`crate::reports`]; nothing here decides a number.
//!
//! Users of a team whose `personal_data` is `hashed` appear under their keyed pseudonym
//! ([`People`]), as in the CSV exports.
//!
//! Query parameters, all optional: `range` (`past-30-days`, the default, or
//! `past-3-months` … `past-12-months`) or `from` and `to` (UTC days, both included);
//! `team`, `user`, `product`. Unknown parameters are refused by name.

mod docs;

pub(crate) use docs::{report_users, usage_lines};

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, bad_query, check_reader};
use crate::reports::people::People;
use crate::reports::range::{self, Basis, ReportRange};
use crate::reports::{Filter, Teams};
use crate::store::{Settings, Store};
use daymeter_shared::ledger::DEFAULT_TEAM;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
    team: Option<String>,
    user: Option<String>,
    product: Option<String>,
    format: Option<String>,
    delimiter: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// Which users of a per-user report (`users`, `usage`, `waste`, `advice`, `concurrent`)
/// this answer holds: `page` (from 1) of `per_page` users, in user order. As CSV, with
/// no `page` asked, every user: a file is read whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    number: usize,
    per_page: usize,
}

/// Users per page unless asked.
pub(crate) const PER_PAGE: usize = 100;
/// Users per page unless asked, for the reports that read each user's sessions
/// (`waste`, `concurrent`): a year of 100 users is 50,000 sessions to parse, 150–200
/// ms on a 2-core machine; a page of 25 answers within 100 ms (docs/performance.md).
pub(crate) const SESSIONS_PER_PAGE: usize = 25;
/// The most users a page may hold.
pub(crate) const MAX_PER_PAGE: usize = 1000;

impl Page {
    pub(crate) const FIRST: Page = Page::first(PER_PAGE);
    const ALL: Page = Page {
        number: 1,
        per_page: usize::MAX,
    };

    /// The first page of `per_page` users.
    pub(crate) const fn first(per_page: usize) -> Page {
        Page {
            number: 1,
            per_page,
        }
    }

    /// `per_page` as asked, else `default`.
    fn parse(page: Option<&str>, per_page: Option<&str>, default: usize) -> Result<Page, ApiError> {
        let number = |field: &'static str, text: Option<&str>, default: usize, max: usize| {
            let Some(text) = text else {
                return Ok(default);
            };
            match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_page",
                    format!("{field} {text:?}: a whole number from 1 to {max}"),
                )
                .field(field)),
            }
        };
        Ok(Page {
            number: number("page", page, 1, usize::MAX / MAX_PER_PAGE)?,
            per_page: number("per_page", per_page, default, MAX_PER_PAGE)?,
        })
    }

    /// This page's users of `all`, and what the answer says of the paging.
    pub(crate) fn of<'a>(&self, all: &'a [String]) -> (&'a [String], serde_json::Value) {
        let start = (self.number - 1)
            .saturating_mul(self.per_page)
            .min(all.len());
        let end = start.saturating_add(self.per_page).min(all.len());
        let next = (end < all.len()).then_some(self.number + 1);
        let per_page = (self.per_page != usize::MAX).then_some(self.per_page);
        let paging = json!({
            "number": self.number,
            "per_page": per_page,
            "users": all.len(),
            "next": next,
        });
        (&all[start..end], paging)
    }
}

/// What every report starts from.
#[derive(Clone)]
pub(crate) struct Asked {
    range: ReportRange,
    filter: Filter,
    today: NaiveDate,
    now: DateTime<Utc>,
    format: Format,
    page: Page,
    /// Every user the per-user reports cover under `filter`, when read already: the
    /// dashboard reads them once for its four per-user tables.
    everyone: Option<Arc<Vec<String>>>,
}

/// `format=json` (the default) or `format=csv` (with `delimiter=,` or `;`).
#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv(u8),
}

/// `delimiter=,` (the default) or `;`, for CSV.
pub(super) fn delimiter_of(delimiter: Option<&str>) -> Result<u8, ApiError> {
    match delimiter {
        None | Some(",") => Ok(b','),
        Some(";") => Ok(b';'),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_delimiter",
            format!("delimiter {other:?}: \",\" (the default) or \";\""),
        )
        .field("delimiter")),
    }
}

fn format_of(format: Option<&str>, delimiter: Option<&str>) -> Result<Format, ApiError> {
    let delimiter = delimiter_of(delimiter)?;
    match format {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv(delimiter)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_format",
            format!("format {other:?}: json (the default) or csv"),
        )
        .field("format")),
    }
}

/// The report as asked: the whole document as JSON, or its table (`doc[table]`, a list)
/// as CSV — one row per entry, a column per field, nested fields as `parent.child`,
/// lists as JSON text in their cell.
fn answer(
    a: &Asked,
    doc: serde_json::Value,
    table: &str,
    file: &str,
) -> Result<Response, ApiError> {
    let Format::Csv(delimiter) = a.format else {
        return Ok(Json(doc).into_response());
    };
    let empty = Vec::new();
    let entries = doc.get(table).and_then(|t| t.as_array()).unwrap_or(&empty);
    let rows: Vec<Vec<(String, String)>> = entries
        .iter()
        .map(|e| {
            let mut cells = Vec::new();
            flatten("", e, &mut cells);
            cells
        })
        .collect();
    let header: Vec<&str> = rows
        .first()
        .map(|r| r.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let internal =
        |e: csv::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    let mut out = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(b"\xEF\xBB\xBF".to_vec());
    out.write_record(&header).map_err(internal)?;
    for row in &rows {
        let cell = |k: &&str| {
            row.iter()
                .find(|(name, _)| name == k)
                .map_or("", |(_, v)| v.as_str())
        };
        out.write_record(header.iter().map(cell))
            .map_err(internal)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}.csv\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), String::new())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(_) | Value::Bool(_) | Value::Number(_) => {
            out.push((prefix.to_owned(), value.to_string()))
        }
    }
}

fn asked<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
    q: Result<Query<ReportQuery>, QueryRejection>,
    basis: Basis,
    per_page: usize,
) -> Result<Asked, ApiError> {
    check_reader(state, headers)?;
    let Query(q) = q.map_err(bad_query)?;
    let now = state.clock.now();
    let today = now.date_naive();
    let range = range::parse(
        q.range.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        basis,
        today,
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_range", e.message).field(e.field))?;
    let format = format_of(q.format.as_deref(), q.delimiter.as_deref())?;
    let filter = filter_of(state, q.team, q.user, q.product)?;
    let page = match (&format, &q.page, &q.per_page) {
        (Format::Csv(_), None, None) => Page::ALL,
        _ => Page::parse(q.page.as_deref(), q.per_page.as_deref(), per_page)?,
    };
    Ok(Asked {
        range,
        filter,
        today,
        now,
        format,
        page,
        everyone: None,
    })
}

/// The reports' and exports' filter: an unknown `team` refused (404, as elsewhere),
/// a hashed team's user named by the pseudonym reports show.
pub(super) fn filter_of<S: Store>(
    state: &AppState<S>,
    team: Option<String>,
    user: Option<String>,
    product: Option<String>,
) -> Result<Filter, ApiError> {
    let settings = state.settings();
    if let Some(team) = team.as_deref()
        && team != DEFAULT_TEAM
        && !settings.teams.contains_key(team)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_team",
            format!("no team {team:?} (import it under teams)"),
        )
        .field("team"));
    }
    let teams = state.teams(&settings);
    let people = People::new(&settings, &teams, state.admin_token.expose());
    Ok(Filter {
        team,
        user: user.map(|u| people.resolve(&u)),
        product,
    })
}

/// Puts each line's user as reports show them: the id, or the keyed pseudonym of a
/// team that hashes its people ([`People`]).
fn name_users<S, T>(
    state: &AppState<S>,
    settings: &Settings,
    teams: &Teams,
    lines: &mut [T],
    user: impl Fn(&mut T) -> &mut String,
) {
    let people = People::new(settings, teams, state.admin_token.expose());
    for line in lines {
        let u = user(line);
        *u = people.user(u);
    }
}

fn range_json(r: &ReportRange) -> serde_json::Value {
    json!({"from": r.from, "to": r.to, "days": r.days(), "months": r.months})
}

/// One thin handler per report: the query read and checked ([`asked`]), the document
/// built ([`docs`]), the answer in the asked format with the report's table for CSV.
macro_rules! report {
    ($name:ident, $doc:ident, $basis:expr, $table:literal, $file:literal) => {
        report!($name, $doc, $basis, $table, $file, PER_PAGE);
    };
    ($name:ident, $doc:ident, $basis:expr, $table:literal, $file:literal, $per_page:expr) => {
        pub(in crate::api) async fn $name<S: Store>(
            State(state): State<Arc<AppState<S>>>,
            headers: HeaderMap,
            q: Result<Query<ReportQuery>, QueryRejection>,
        ) -> Result<Response, ApiError> {
            let a = asked(&state, &headers, q, $basis, $per_page)?;
            let doc = docs::$doc(&state, &a).await?;
            answer(&a, doc, $table, $file)
        }
    };
}

// As CSV, the tokens report is its tokens by day.
report!(
    tokens,
    tokens_doc,
    Basis::CompletedMonths,
    "by_day",
    "tokens-by-day"
);
report!(
    products,
    products_doc,
    Basis::CompletedMonths,
    "products",
    "products"
);
report!(users, users_doc, Basis::CompletedMonths, "users", "users");
report!(usage, usage_doc, Basis::Rolling, "usage", "usage");
report!(
    waste,
    waste_doc,
    Basis::CompletedMonths,
    "keys",
    "waste",
    SESSIONS_PER_PAGE
);
report!(forecast, forecast_doc, Basis::Rolling, "teams", "forecast");
report!(advice, advice_doc, Basis::Rolling, "advice", "advice");
report!(
    concurrent,
    concurrent_doc,
    Basis::Rolling,
    "overlaps",
    "concurrent",
    SESSIONS_PER_PAGE
);

impl Asked {
    /// A named range (`past-30-days` …) over everything, as the dashboard asks.
    fn named(range: &str, basis: Basis, now: DateTime<Utc>) -> Result<Asked, ApiError> {
        let today = now.date_naive();
        let range = range::parse(Some(range), None, None, basis, today).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_range", e.message).field(e.field)
        })?;
        Ok(Asked {
            range,
            filter: Filter::default(),
            today,
            now,
            format: Format::Json,
            page: Page::FIRST,
            everyone: None,
        })
    }
}

/// The documents mail quotes (`crate::mail`), as the JSON API answers them over `range`
/// and `filter`: the same numbers, users named as there (pseudonyms included).
pub(crate) async fn doc_for_mail<S: Store>(
    state: &AppState<S>,
    report: MailReport,
    range: ReportRange,
    filter: Filter,
) -> Result<serde_json::Value, ApiError> {
    let now = state.clock.now();
    let a = Asked {
        range,
        filter,
        today: now.date_naive(),
        now,
        format: Format::Json,
        // A mail lists everyone, not a page.
        page: Page::ALL,
        everyone: None,
    };
    match report {
        MailReport::Usage => docs::usage_doc(state, &a).await,
        MailReport::Waste => docs::waste_doc(state, &a).await,
    }
}

/// Which report [`doc_for_mail`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MailReport {
    Usage,
    Waste,
}

/// Every report the dashboard shows over `range`, as the JSON API answers them.
pub async fn report_docs<S: Store>(
    state: &AppState<S>,
    range: &str,
) -> Result<crate::dashboard::page::Docs, ApiError> {
    let now = state.clock.now();
    let settings = state.settings();
    let teams = state.teams(&settings);
    let everyone = Some(Arc::new(
        docs::report_users(state, &settings, &teams, &Filter::default()).await?,
    ));
    let tokens_range = Asked {
        everyone: everyone.clone(),
        ..Asked::named(range, Basis::CompletedMonths, now)?
    };
    let seats_range = Asked {
        everyone,
        ..Asked::named(range, Basis::Rolling, now)?
    };
    let waste_range = Asked {
        page: Page::first(SESSIONS_PER_PAGE),
        ..tokens_range.clone()
    };
    // Side by side: each waits on its own store reads.
    let ((tokens, products), users, usage, waste, forecast, advice) = tokio::try_join!(
        docs::tokens_and_products_docs(state, &tokens_range),
        docs::users_doc(state, &tokens_range),
        docs::usage_doc(state, &seats_range),
        docs::waste_doc(state, &waste_range),
        docs::forecast_doc(state, &seats_range),
        docs::advice_doc(state, &seats_range),
    )?;
    Ok(crate::dashboard::page::Docs {
        tokens,
        products,
        users,
        usage,
        waste,
        forecast,
        advice,
    })
}
