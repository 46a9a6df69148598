//! Sleep and the offline grace, end to end: the real agent and collector, real product
//! processes. A suspend cannot happen here, so it is made as it looks from inside: the
//! agent is stopped (SIGSTOP) while wall time goes on, and the test-only sleep file
//! grows the boot-time clock by as much before it continues (SIGCONT).

use std::time::Duration;

use serde_json::{Value, json};

use daymeter_tests::{Agent, Collector, Product, eventually};

fn seconds(interval: &Value) -> f64 {
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(interval[i].as_str().expect("an instant"))
            .expect("RFC 3339")
    };
    (at(1) - at(0)).num_milliseconds() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspend_reaches_the_collector_as_suspended_and_folded_into_idle() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("e2esleep", "e2esleep-one")],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s"}),
        )
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-sleep");
    let sleep_file = dir.path().join("slept");
    std::fs::write(&sleep_file, "0").expect("the sleep file");
    let agent = Agent::start_with(
        &config,
        &[(
            "DAYMETER_TEST_SLEEP_FILE",
            sleep_file.to_str().expect("utf-8"),
        )],
    );
    let _product = Product::start(dir.path(), "e2esleep-one");
    collector
        .sessions_where("user-sleep", |s| s.len() == 1)
        .await;

    // "Suspend" for 3 s.
    let pid = agent.pid().expect("the agent runs") as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(&sleep_file, "3").expect("the sleep file");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    let sessions = collector
        .sessions_where("user-sleep", |s| {
            s[0]["suspended"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let s = &sessions[0];
    let suspended = s["suspended"].as_array().expect("suspended");
    assert_eq!(suspended.len(), 1, "{s}");
    assert!(
        (seconds(&suspended[0]) - 3.0).abs() < 0.01,
        "the sleep lasted exactly 3 s: {s}"
    );
    assert_eq!(s["idle"], s["suspended"], "asleep is idle: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grace_run_out_asks_the_product_to_close_and_never_kills_one_that_asks_to_save() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let mut collector = Collector::start(dir.path());
    collector
        .import_products(
            &[
                ("e2egrace", "e2egrace-one"),
                ("e2egracesave", "e2egrace-save"),
            ],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s",
                   "grace_flex": "4s", "enforce": "close", "close_delay": "2s"}),
        )
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-grace");
    let _agent = Agent::start(&config);
    let mut plain = Product::start(dir.path(), "e2egrace-one");
    let mut asks = Product::start_asking_to_save(dir.path(), "e2egrace-save");
    collector
        .sessions_where("user-grace", |s| s.len() == 2)
        .await;

    // Offline: the last sign-in was the last sync; 4 s later the grace is over.
    collector.kill();
    let signal = eventually(
        "the product asked to close",
        Duration::from_secs(30),
        || {
            let s = plain.ended_by();
            async move { s }
        },
    )
    .await;
    assert_eq!(signal, libc::SIGTERM, "asked with SIGTERM, not killed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        asks.running(),
        "a product that asks to save is never killed under enforce = close"
    );
    let status = Agent::status_where(&config, "grace told", |s| {
        s["reminders"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|r| r["kind"] == "grace_expired").count() == 2)
    });
    let grace = status["grace"].as_array().expect("grace");
    assert!(grace.iter().any(|g| g["plan"] == "flex"), "{status}");
    drop(collector);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_set_back_while_offline_does_not_extend_the_grace() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let mut collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("e2egraceclock", "e2egraceclock-one")],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s",
                   "grace_flex": "6s", "enforce": "close"}),
        )
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-graceclock");
    let mut agent = Agent::start(&config);
    let mut product = Product::start(dir.path(), "e2egraceclock-one");
    collector
        .sessions_where("user-graceclock", |s| s.len() == 1)
        .await;
    collector.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The designer sets the clock back an hour and restarts the agent.
    agent.terminate();
    let _agent = Agent::start_skewed(&config, "-1h");
    let signal = eventually(
        "the product asked to close despite the clock",
        Duration::from_secs(30),
        || {
            let s = product.ended_by();
            async move { s }
        },
    )
    .await;
    assert_eq!(signal, libc::SIGTERM);
}
