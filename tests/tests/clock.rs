//! An agent whose clock is wrong, against a collector whose clock is right: the real
//! binaries, the agent's device clock moved on purpose (`DAYMETER_TEST_CLOCK_SKEW`).

use std::time::Duration;

use serde_json::{Value, json};

use daymeter_tests::{Agent, Collector, Product, eventually};

const LIMIT: Duration = Duration::from_secs(30);

fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("an instant"))
        .expect("RFC 3339")
        .to_utc()
}

/// The product runs before the agent starts, so its session is opened at the device's
/// time (two days ahead) before the agent has heard from the collector: the first sync
/// is refused as `clock_ahead`, the agent learns its offset from `server_time`, moves
/// the session once and sends it again; from then on it meters with the collector's time.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_clock_is_two_days_fast_still_meters_with_the_collectors_time() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("clockcad", "clockcad-fast")],
            json!({"min_session": "1s", "sync_interval": "2s", "retry_max": "1s"}),
        )
        .await;
    // Its own catalog, so that the product is metered from the agent's first poll,
    // before the collector's catalog (and its clock) are known.
    let config = Agent::configure(dir.path(), &collector.url(), "user-fast");
    let text = std::fs::read_to_string(&config).expect("the config");
    let text = text.replace(
        "catalog = {}\n",
        "[catalog.clockcad]\nmatch = [{ exe = \"clockcad-fast\" }]\n",
    );
    std::fs::write(&config, text).expect("rewrite the config");

    let before = chrono::Utc::now();
    let mut product = Product::start(dir.path(), "clockcad-fast");
    let _agent = Agent::start_skewed(&config, "2days");
    let open = eventually("the session at the collector", LIMIT, || async {
        let s = collector.sessions_of("user-fast").await;
        (s.len() == 1).then_some(s)
    })
    .await;
    let start = instant(&open[0]["start"]);
    let slack = chrono::TimeDelta::minutes(2);
    assert!(
        start >= before - slack && start <= chrono::Utc::now() + slack,
        "start {start} is not the collector's time (test began {before}): {open:?}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    product.stop();
    let closed = eventually("the session closed at the collector", LIMIT, || async {
        let s = collector.sessions_of("user-fast").await;
        (s.len() == 1 && s[0]["end"].is_string()).then_some(s)
    })
    .await;
    assert_eq!(closed[0]["id"], open[0]["id"], "one session, moved once");
    assert_eq!(
        closed[0]["start"], open[0]["start"],
        "its start never moved again"
    );
    let end = instant(&closed[0]["end"]);
    assert!(
        end >= start && end <= chrono::Utc::now() + slack,
        "end {end} is not the collector's time"
    );

    let status = Agent::status(&config).expect("status");
    assert_eq!(status["waiting_upload"], 0, "{status}");
    let days = collector.admin_get("/v1/admin/usage-days").await;
    let rows: Vec<&Value> = days["usage_days"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["user"] == "user-fast")
        .collect();
    assert_eq!(rows.len(), 1, "{days}");
    let window_start = instant(&rows[0]["window_start"]);
    assert_eq!(
        window_start.timestamp(),
        start.timestamp(),
        "the day opens at the corrected start: {days}"
    );
    let day = rows[0]["day"].as_str().expect("a day");
    let today = chrono::Utc::now().date_naive();
    assert!(
        [today.pred_opt(), Some(today), today.succ_opt()]
            .iter()
            .flatten()
            .any(|d| d.to_string() == day),
        "the usage day {day} is today's, not two days ahead"
    );
}
