//! Idle from a real desktop session, accounted by the collector: the session helper
//! reads a (stand-in) GNOME idle monitor, the service turns its reports into the
//! sessions' `idle` intervals, and under `rollover = active` the collector charges
//! exactly the usage days `replay` computes from the same sessions — fewer than a
//! product left open would cost under `rollover = open`.

#![cfg(target_os = "linux")]

#[path = "../../agent/tests/support/bus.rs"]
mod bus;
#[path = "../../agent/tests/support/desktop.rs"]
mod desktop;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use daymeter_tests::{Agent, Collector, Helper, Product, collector_bin};
use desktop::{IdleMonitor, Monitor, Notifications};

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("an instant"))
        .expect("RFC 3339")
        .to_utc()
}

/// `daymeter-collector replay` over `scenario`: its usage days.
fn replay(scenario: &Value) -> Vec<Value> {
    let mut child = Command::new(collector_bin())
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run replay");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scenario.to_string().as_bytes())
        .expect("write the scenario");
    let out = child.wait_with_output().expect("replay's output");
    assert!(out.status.success(), "replay failed on {scenario}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("replay prints JSON");
    v["usage_days"].as_array().cloned().unwrap_or_default()
}

/// What both sides must agree on, per usage day.
fn charged(rows: &[Value]) -> Vec<(String, String, String, u64)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["product"].as_str().unwrap_or_default().to_owned(),
                r["window_start"].as_str().unwrap_or_default().to_owned(),
                r["window_end"].as_str().unwrap_or_default().to_owned(),
                r["tokens"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_from_the_session_helper_makes_active_rollover_charge_what_replay_charges() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let collector = Collector::start(dir.path());
    let policy = json!({"window": "4s", "min_session": "1s", "idle_after": "1s",
                        "rollover": "active", "sync_interval": "1s", "retry_max": "1s"});
    collector
        .admin_post(
            "/v1/admin/import",
            &json!({"catalog": {"e2eidle": {"name": "Idle CAD", "tokens_per_day": 7,
                                            "match": [{"exe": "e2eidle-one"}]}},
                    "policy": policy}),
        )
        .await;
    let session_bus = bus::Bus::start();
    let _notes = Notifications::start(&session_bus.address, false).await;
    let mutter = IdleMonitor::start(&session_bus.address, Monitor::Mutter, Duration::ZERO).await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-idle");
    let _agent = Agent::start(&config);
    let _helper = Helper::start(&Agent::socket(dir.path()), &session_bus.address, &[], None);

    // At work for a moment, away for over two windows, back, then the product closes.
    let mut product = Product::start(dir.path(), "e2eidle-one");
    collector
        .sessions_where("user-idle", |s| s.len() == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mutter.set_idle_growing(Duration::ZERO);
    let away = Utc::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    mutter.set_idle(Duration::ZERO);
    let back = Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    product.stop();
    let sessions = collector
        .sessions_where("user-idle", |s| s[0]["end"].is_string())
        .await;
    let s = &sessions[0];

    // The idle interval the collector holds: from the last input + idle_after to the
    // next input, as the helper saw them (each within a report and a poll).
    let idle = s["idle"].as_array().expect("idle intervals");
    assert_eq!(idle.len(), 1, "{s}");
    let (from, to) = (instant(&idle[0][0]), instant(&idle[0][1]));
    let slack = chrono::TimeDelta::milliseconds(800);
    let after = chrono::TimeDelta::seconds(1);
    assert!(
        (from - (away + after)).abs() < slack,
        "idle from {from}, away at {away}: {s}"
    );
    assert!(
        (to - back).abs() < slack,
        "idle to {to}, back at {back}: {s}"
    );

    // The collector's usage days are replay's, for the same sessions and rules.
    let today = Utc::now().date_naive();
    let range = format!(
        "from={}&to={}",
        today.pred_opt().expect("a day"),
        today.succ_opt().expect("a day")
    );
    let stored = collector
        .admin_get(&format!("/v1/admin/usage-days?user=user-idle&{range}"))
        .await;
    let stored = stored["usage_days"].as_array().cloned().unwrap_or_default();
    let catalog = json!({"e2eidle": {"tokens_per_day": 7}});
    let scenario = json!({"policy": policy, "catalog": catalog, "sessions": sessions});
    assert_eq!(charged(&stored), charged(&replay(&scenario)), "{scenario}");

    // Idle-aware: the away time opened no day; a product merely left open would
    // have paid one more window at least.
    let mut open_policy = policy.clone();
    open_policy["rollover"] = json!("open");
    let open = replay(&json!({"policy": open_policy, "catalog": catalog, "sessions": sessions}));
    assert_eq!(
        stored.len(),
        2,
        "the launch's day and the day opened on return: {stored:?}"
    );
    assert!(open.len() > stored.len(), "{open:?} against {stored:?}");
}
