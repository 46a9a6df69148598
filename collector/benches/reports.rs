//! Reports at scale: seeds a collector through its real ingest path (`/v1/sync` of the
//! release `serve`, one enrolled device per user), then times every report, the
//! dashboard's first page and the CSV exports over loopback HTTP.
//!
//! ```sh
//! cargo bench -p daymeter-collector --bench reports                      # 10,000 users
//! DAYMETER_BENCH_USERS=1000 cargo bench -p daymeter-collector --bench reports
//! DAYMETER_BENCH_DB=/tmp/reports.db cargo bench -p daymeter-collector --bench reports
//! ```
//!
//! `DAYMETER_BENCH_DB` keeps the seeded database at that path, and a later run with the
//! same path times the reports on it without seeding again (to measure a change to the
//! reports alone, or to profile a collector started by hand on it).
//!
//! Each user uses three products (acad 7, revit 10, civil3d 10 tokens a day) on about
//! two working days in three over the past year, one session a day, 09:00 to 17:00 UTC,
//! some left open overnight and some over a weekend, idle from Friday evening. Each
//! user's device syncs its sessions in time order, four weeks a sync, as an agent that
//! was offline for weeks at a time would (an agent online syncs every few minutes, which
//! is slower to seed and leaves the store shaped the same way: a sync's sessions are
//! neighbours in time). Printed: the seeding rate, then per report and range the
//! latency over up to 20 requests (fewer when a request takes seconds: each report gets
//! 30 s), p50 and p95; the dashboard's first page; each CSV export's rows per second and
//! the collector's peak resident memory before and after it (`VmHWM`). Goals: p95 < 100
//! ms for every report's first page and the dashboard, ≥ 300,000 CSV rows/s with flat
//! memory.

mod machine;
mod server;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{Datelike, NaiveDate, TimeDelta, Utc, Weekday};
use serde_json::{Value, json};

use machine::{load_average, machine};
use server::{ADMIN_TOKEN, ENROLLMENT_SECRET, Server};

const PRODUCTS: &[(&str, u64)] = &[("acad", 7), ("revit", 10), ("civil3d", 10)];
/// Sessions per sync: the protocol's most.
const BATCH: usize = 500;
/// Syncs in flight at once.
const PARALLEL: usize = 8;
const REPORTS: &[&str] = &[
    "tokens",
    "products",
    "users",
    "usage",
    "waste",
    "forecast",
    "advice",
    "concurrent",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reports bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let users: usize = std::env::var("DAYMETER_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let kept = std::env::var_os("DAYMETER_BENCH_DB").map(std::path::PathBuf::from);
    let seeded = kept.as_ref().is_some_and(|db| db.exists());
    let dir = std::env::temp_dir().join(format!("daymeter-reports-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = kept.clone().unwrap_or_else(|| dir.join("collector.db"));
    let mut server = Server::start(&db, &dir.join("log"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (cores, model) = machine();
    println!(
        "machine: {cores} cores, {model}; load average {}",
        load_average()
    );
    let result = runtime.block_on(bench(&server.base, server.child.id(), users, seeded));
    let _ = server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(base: &str, pid: u32, users: usize, seeded: bool) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    if seeded {
        println!("seeded before: timing the reports on the database as it is");
    } else {
        seed(&http, base, users).await?;
    }
    time_reports(&http, base, pid).await
}

/// The teams, catalog and purchases, then every user's year through `/v1/sync`.
async fn seed(http: &reqwest::Client, base: &str, users: usize) -> Result<()> {
    let teams: serde_json::Map<String, Value> = (0..users.div_ceil(1000))
        .map(|t| {
            let members: Vec<String> = (t * 1000..((t + 1) * 1000).min(users))
                .map(user_name)
                .collect();
            (format!("team-{t:02}"), json!({ "users": members }))
        })
        .collect();
    let catalog: serde_json::Map<String, Value> = PRODUCTS
        .iter()
        .map(|(id, rate)| ((*id).to_owned(), json!({ "tokens_per_day": rate })))
        .collect();
    post(
        http,
        &format!("{base}/v1/admin/import"),
        Some(ADMIN_TOKEN),
        &json!({ "catalog": catalog, "teams": teams }),
    )
    .await?;
    for t in 0..users.div_ceil(1000) {
        post(
            http,
            &format!("{base}/v1/admin/purchases"),
            Some(ADMIN_TOKEN),
            &json!({ "team": format!("team-{t:02}"), "tokens": 50_000_000u64,
                     "purchased_at": "2020-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z" }),
        )
        .await?;
    }

    let today = Utc::now().date_naive();
    let started = Instant::now();
    let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        let (http, base, sessions, next) = (
            http.clone(),
            base.to_owned(),
            sessions.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= users {
                    return Ok::<(), anyhow::Error>(());
                }
                let n = seed_user(&http, &base, u, today).await?;
                sessions.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seeded = sessions.load(std::sync::atomic::Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    println!(
        "seeded {users} users x {} products, one year: {seeded} sessions in {took:.0} s ({:.0} sessions/s, through /v1/sync)",
        PRODUCTS.len(),
        seeded as f64 / took
    );
    Ok(())
}

/// Each report's latency over two ranges, the dashboard's, and the CSV exports' speed.
async fn time_reports(http: &reqwest::Client, base: &str, pid: u32) -> Result<()> {
    println!("\nreport                range            requests   p50 (ms)   p95 (ms)");
    for report in REPORTS {
        for range in ["past-30-days", "past-12-months"] {
            let url = format!("{base}/v1/reports/{report}?range={range}");
            let (n, p50, p95) = time_requests(http, &url, None).await?;
            println!("{report:<21} {range:<16} {n:>8}   {p50:>8.1}   {p95:>8.1}");
        }
    }
    let cookie = login(http, base).await?;
    let (n, p50, p95) = time_requests(http, &format!("{base}/"), Some(&cookie)).await?;
    println!(
        "{:<21} {:<16} {n:>8}   {p50:>8.1}   {p95:>8.1}",
        "dashboard /", "past-30-days"
    );

    println!(
        "\nexport                     rows     seconds    rows/s   collector VmHWM before → after (MiB)"
    );
    for export in ["token-usage", "seat-usage", "usage"] {
        let before = peak_rss_mib(pid);
        let started = Instant::now();
        let mut response = http
            .get(format!(
                "{base}/v1/exports/{export}.csv?range=past-12-months"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("{export}: {}", response.status());
        }
        let mut lines = 0usize;
        while let Some(chunk) = response.chunk().await? {
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let seconds = started.elapsed().as_secs_f64();
        let rows = lines.saturating_sub(1);
        println!(
            "{export:<22} {rows:>10} {seconds:>10.2} {:>9.0}   {before:.0} → {:.0}",
            rows as f64 / seconds,
            peak_rss_mib(pid)
        );
    }
    Ok(())
}

fn user_name(u: usize) -> String {
    format!("user-{u:05}")
}

/// Enrols the user's device and syncs their year in time order, four weeks a sync.
async fn seed_user(
    http: &reqwest::Client,
    base: &str,
    u: usize,
    today: NaiveDate,
) -> Result<usize> {
    let enrolled = post(
        http,
        &format!("{base}/v1/enroll"),
        None,
        &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": format!("ws-{u:05}"),
                 "os": "linux", "agent_version": "bench" }),
    )
    .await?;
    let token = enrolled["device_token"]
        .as_str()
        .context("a device token")?
        .to_owned();
    let mut syncs: Vec<Vec<Value>> = Vec::new();
    for back in (1..=365i64).rev() {
        if back % 28 == 0 || syncs.is_empty() {
            syncs.push(Vec::new());
        }
        let day = today - TimeDelta::days(back);
        if matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            continue;
        }
        for (p, (product, _)) in PRODUCTS.iter().enumerate() {
            // About two days in three, different days for different users and products.
            let h =
                (u as u64).wrapping_mul(2_654_435_761) ^ (back as u64 * 40_503) ^ (p as u64 * 97);
            if h.is_multiple_of(3) {
                continue;
            }
            let monday = day + TimeDelta::days(3);
            let session = if day.weekday() == Weekday::Fri && h % 10 == 1 && monday < today {
                // Left open over the weekend, idle from Friday evening: two rollovers,
                // each an idle window.
                json!({ "id": format!("u{u}-{back}-{p}"), "product": product,
                    "start": format!("{day}T09:00:00Z"), "end": format!("{monday}T08:30:00Z"),
                    "idle": [[format!("{day}T17:30:00Z"), format!("{monday}T08:30:00Z")]],
                    "tz": "UTC" })
            } else {
                // One in twenty left open overnight.
                let end = if h % 20 == 1 {
                    format!("{}T08:30:00Z", day + TimeDelta::days(1))
                } else {
                    format!("{day}T17:00:00Z")
                };
                json!({ "id": format!("u{u}-{back}-{p}"), "product": product,
                    "start": format!("{day}T09:00:00Z"), "end": end, "tz": "UTC" })
            };
            if let Some(sync) = syncs.last_mut() {
                sync.push(session);
            }
        }
    }
    let mut n = 0;
    for sessions in &syncs {
        for chunk in sessions.chunks(BATCH) {
            let body = json!({ "user": user_name(u), "agent_time": Utc::now().to_rfc3339(), "sessions": chunk });
            let answer = post(http, &format!("{base}/v1/sync"), Some(&token), &body).await?;
            let accepted = answer["accepted"].as_array().map_or(0, Vec::len);
            if accepted != chunk.len() {
                bail!(
                    "user {u}: {accepted} of {} accepted: {}",
                    chunk.len(),
                    answer["rejected"]
                );
            }
            n += chunk.len();
        }
    }
    Ok(n)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value> {
    let mut request = http.post(url).json(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let r = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let answer: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

/// Up to 20 requests, or as many as 30 s allow (at least 3); returns (n, p50, p95) in ms.
async fn time_requests(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> Result<(usize, f64, f64)> {
    let budget = Instant::now() + Duration::from_secs(30);
    let mut times = Vec::new();
    while times.len() < 20 && (times.len() < 3 || Instant::now() < budget) {
        let mut request = http.get(url);
        request = match cookie {
            Some(c) => request.header(reqwest::header::COOKIE, c),
            None => request.bearer_auth(ADMIN_TOKEN),
        };
        let started = Instant::now();
        let r = request.send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((times.len(), at(0.5), at(0.95)))
}

async fn login(http: &reqwest::Client, base: &str) -> Result<String> {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let _ = http;
    let r = no_redirects
        .post(format!("{base}/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("a session cookie")?;
    Ok(cookie.to_owned())
}

/// The collector's peak resident memory so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
