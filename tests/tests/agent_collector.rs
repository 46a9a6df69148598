//! The agent and the collector together, as processes over real TCP, metering real
//! product processes: end to end, through kill -9, a collector outage and a revocation.

use std::time::Duration;

use serde_json::{Value, json};

use daymeter_tests::{Agent, Collector, Product};

/// Short minimum session and quick retries, so a test's few seconds of use count.
fn quick_policy() -> Value {
    json!({"min_session": "1s", "sync_interval": "2s", "retry_max": "1s"})
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("scratch folder")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_process_is_metered_end_to_end() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2ecad", "e2ecad-one")], quick_policy())
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-one");
    let _agent = Agent::start(&config);
    Agent::status_where(&config, "enrolled", |s| s["device_id"].is_string());

    let mut product = Product::start(dir.path(), "e2ecad-one");
    let open = collector.sessions_where("user-one", |s| s.len() == 1).await;
    assert_eq!(open[0]["product"], "e2ecad");
    assert!(open[0]["end"].is_null(), "{open:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    product.stop();

    let closed = collector
        .sessions_where("user-one", |s| s.len() == 1 && s[0]["end"].is_string())
        .await;
    assert_eq!(closed[0]["id"], open[0]["id"]);
    Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0 && s["open"].as_array().is_some_and(Vec::is_empty)
    });
    let days = collector.admin_get("/v1/admin/usage-days").await;
    let rows = days["usage_days"].as_array().expect("rows");
    assert_eq!(
        rows.iter().filter(|r| r["user"] == "user-one").count(),
        1,
        "{days}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_agent_adopts_the_running_product_and_closes_a_gone_one_at_last_seen() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2ekill", "e2ekill-two")], quick_policy())
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-two");
    let mut agent = Agent::start(&config);
    Agent::status_where(&config, "enrolled", |s| s["device_id"].is_string());
    let mut product = Product::start(dir.path(), "e2ekill-two");
    let first = collector.sessions_where("user-two", |s| s.len() == 1).await;
    let id = first[0]["id"].clone();

    // Crash while the product runs: the restarted agent adopts it into the same session.
    agent.kill();
    let mut agent = Agent::start(&config);
    let status = Agent::status_where(&config, "the product adopted", |s| {
        s["running"] == true && s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert_eq!(
        status["open"][0]["id"], id,
        "adopted, not reopened: {status}"
    );

    // Crash again, and the product ends while no agent runs: closed at its last_seen.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    agent.kill();
    product.stop();
    let _agent = Agent::start(&config);
    let closed = collector
        .sessions_where("user-two", |s| s.iter().any(|x| x["end"].is_string()))
        .await;
    assert_eq!(closed.len(), 1, "one session, never two: {closed:?}");
    assert_eq!(closed[0]["id"], id);
    Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_outage_loses_nothing_and_doubles_nothing() {
    let dir = scratch();
    let mut collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2eout", "e2eout-three")], quick_policy())
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-three");
    let _agent = Agent::start(&config);
    Agent::status_where(&config, "synced once", |s| s["last_sync"].is_string());

    collector.kill();
    let mut short = Product::start(dir.path(), "e2eout-three");
    Agent::status_where(&config, "the first product journaled", |s| {
        s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    short.stop();
    let mut long = Product::start(dir.path(), "e2eout-three");
    let offline = Agent::status_where(&config, "both products journaled", |s| {
        s["waiting_upload"] == 2 && s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert!(offline["last_error"].is_string(), "{offline}");

    collector.restart(dir.path());
    let back = collector
        .sessions_where("user-three", |s| s.len() == 2)
        .await;
    assert_eq!(
        back.iter().filter(|s| s["end"].is_string()).count(),
        1,
        "{back:?}"
    );
    long.stop();
    collector
        .sessions_where("user-three", |s| {
            s.len() == 2 && s.iter().all(|x| x["end"].is_string())
        })
        .await;
    Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0
    });
    assert_eq!(collector.sessions_of("user-three").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_keeps_journaling_and_waits_for_enroll() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2erev", "e2erev-four")], quick_policy())
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-four");
    let _agent = Agent::start(&config);
    // Synced once: the agent knows the collector's catalog, its only one.
    let status = Agent::status_where(&config, "enrolled and synced", |s| {
        s["device_id"].is_string() && s["last_sync"].is_string()
    });
    let device = status["device_id"].as_str().expect("device id").to_owned();
    collector
        .admin_post(&format!("/v1/admin/devices/{device}/revoke"), &json!({}))
        .await;

    let _product = Product::start(dir.path(), "e2erev-four");
    Agent::status_where(&config, "revoked", |s| s["revoked"] == true);
    let journaled = Agent::status_where(&config, "the session journaled", |s| {
        s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert!(collector.sessions_of("user-four").await.is_empty());

    let out = std::process::Command::new(daymeter_tests::agent_bin())
        .args(["enroll", "--config"])
        .arg(&config)
        .env("DAYMETER_LOG", "error")
        .output()
        .expect("daymeter-agent enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let synced = collector
        .sessions_where("user-four", |s| s.len() == 1)
        .await;
    assert_eq!(synced[0]["id"], journaled["open"][0]["id"]);
    let after = Agent::status_where(&config, "enrolled again", |s| s["revoked"] == false);
    // Its revoked token proved the device: it keeps its id.
    assert_eq!(after["device_id"], device);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_agent_cleanly_and_status_reads_the_journal() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2estop", "e2estop-five")], quick_policy())
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-five");
    let mut agent = Agent::start(&config);
    Agent::status_where(&config, "synced once", |s| s["last_sync"].is_string());
    let _product = Product::start(dir.path(), "e2estop-five");
    let running = Agent::status_where(&config, "metering", |s| {
        s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert_eq!(agent.terminate(), Some(0));
    let stopped = Agent::status(&config).expect("status without an agent");
    assert_eq!(stopped["running"], false);
    assert_eq!(stopped["open"][0]["id"], running["open"][0]["id"]);
    assert!(stopped["last_sync"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_agent_trusts_its_ca_file_and_nothing_else() {
    let dir = scratch();
    let (collector, ca) = Collector::start_tls(dir.path());
    collector
        .import_products(&[("e2etls", "e2etls-six")], quick_policy())
        .await;

    // Without the CA file the collector's certificate is not trusted: nothing syncs.
    let config = Agent::configure(dir.path(), &collector.url(), "user-six");
    let mut untrusting = Agent::start(&config);
    let refused = Agent::status_where(&config, "a sync error", |s| s["last_error"].is_string());
    assert!(refused["last_sync"].is_null(), "{refused}");
    assert_eq!(untrusting.terminate(), Some(0));

    let config = Agent::configure_with(
        dir.path(),
        &collector.url(),
        "user-six",
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    let _agent = Agent::start(&config);
    Agent::status_where(&config, "synced over HTTPS", |s| s["last_sync"].is_string());
    let _product = Product::start(dir.path(), "e2etls-six");
    collector.sessions_where("user-six", |s| s.len() == 1).await;
}
