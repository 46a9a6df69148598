//! The worst request the collector accepts, timed: the bound on the work one request can
//! cause (README, "Limits") shown with the largest sync and import it lets through.
//!
//! The worst sync is 500 sessions (the most a sync may carry), each of a product of its
//! own (so that no two share a window) and each spanning 999 charge windows (the cap is
//! 1,000): 499,500 usage days and as many ledger entries from one request. The worst
//! import then re-prices every one of them. Run with
//! `cargo bench -p daymeter-collector --bench worst_request`; `DAYMETER_BENCH_ROUNDS`
//! (default 3) sets how many fresh users send the worst sync.

mod machine;
mod server;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};

use machine::{load_average, machine};
use server::{ADMIN_TOKEN, ENROLLMENT_SECRET, Server};

const SESSIONS: usize = 500;
const WINDOWS: i64 = 999;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worst_request: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worst_request: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let rounds: usize = std::env::var("DAYMETER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (cores, model) = machine();
    println!(
        "worst request: {cores} cores, {model}, load {}",
        load_average()
    );
    let dir = std::env::temp_dir().join(format!("daymeter-worst-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, rounds).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(dir: &std::path::Path, rounds: usize) -> Result<()> {
    let mut server = Server::start(&dir.join("collector.db"), &dir.join("collector.log"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let base = server.base.clone();
    let catalog: serde_json::Map<String, Value> = (0..SESSIONS)
        .map(|i| (format!("p{i:03}"), json!({ "tokens_per_day": 1 })))
        .collect();
    post(
        &http,
        &format!("{base}/v1/admin/import"),
        ADMIN_TOKEN,
        &json!({ "catalog": catalog, "policy": { "window": "24h" } }),
    )
    .await?;
    post(
        &http,
        &format!("{base}/v1/admin/purchases"),
        ADMIN_TOKEN,
        &json!({ "tokens": 1_000_000_000u64 }),
    )
    .await?;
    let enrolled = post(
        &http,
        &format!("{base}/v1/enroll"),
        "",
        &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "bench", "os": "linux" }),
    )
    .await?;
    let token = enrolled["device_token"]
        .as_str()
        .context("no device token")?
        .to_owned();
    let end = Utc::now() - TimeDelta::hours(1);
    let start = end - TimeDelta::days(WINDOWS) + TimeDelta::minutes(1);
    let stamp = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    for round in 0..rounds {
        let sessions: Vec<Value> = (0..SESSIONS)
            .map(|i| {
                json!({ "id": format!("worst-{round}-{i}"), "product": format!("p{i:03}"),
                        "start": stamp(start), "end": stamp(end) })
            })
            .collect();
        let body = json!({ "user": format!("user-{round}"), "sessions": sessions });
        let bytes = body.to_string().len();
        let t = Instant::now();
        let answer = post(&http, &format!("{base}/v1/sync"), &token, &body).await?;
        let took = t.elapsed();
        let accepted = answer["accepted"].as_array().map_or(0, Vec::len);
        if accepted != SESSIONS {
            bail!(
                "the worst sync was not accepted whole: {}",
                answer["rejected"]
            );
        }
        println!(
            "worst sync {round}: {SESSIONS} sessions x {WINDOWS} windows = {} usage days, body {bytes} bytes: {:.2} s",
            SESSIONS as i64 * WINDOWS,
            took.as_secs_f64()
        );
    }
    let t = Instant::now();
    post(
        &http,
        &format!("{base}/v1/admin/import"),
        ADMIN_TOKEN,
        &json!({ "catalog": { "p000": { "tokens_per_day": 2 } } }),
    )
    .await?;
    println!(
        "worst import (re-prices every key: {} usage days): {:.2} s",
        rounds as i64 * SESSIONS as i64 * WINDOWS,
        t.elapsed().as_secs_f64()
    );
    println!("collector peak RSS: {}", peak_rss(server.child.id()));
    let status = server.stop()?;
    if !status.success() {
        bail!("the collector exited with {status}");
    }
    Ok(())
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Result<Value> {
    let mut req = http.post(url).json(body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.with_context(|| format!("POST {url}"))?;
    if !status.is_success() {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

/// The collector's peak resident memory (`VmHWM`), as the kernel reports it.
fn peak_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".to_owned())
}
