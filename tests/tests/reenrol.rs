//! Enrolling again after a revocation, end to end: the real collector and agent, a real
//! product process, and `daymeter-agent enroll` as an admin would run it.

use std::time::Duration;

use serde_json::json;

use daymeter_tests::{Agent, Collector, Product, agent_bin};

/// `daymeter-agent enroll` (with `extra` flags), as an admin runs it; its output.
fn enroll_output(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(agent_bin())
        .args(["enroll", "--config"])
        .arg(config)
        .args(extra)
        .env("DAYMETER_LOG", "error")
        .output()
        .expect("daymeter-agent enroll")
}

/// `daymeter-agent enroll`, as an admin runs it; its output line.
fn enroll(config: &std::path::Path, extra: &[&str]) -> String {
    let out = enroll_output(config, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_running_through_a_revocation_and_enroll_ends_once_under_the_same_device() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("e2ereenrol", "e2ereenrol-one")],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s"}),
        )
        .await;
    let config = Agent::configure(dir.path(), &collector.url(), "user-reenrol");
    let _agent = Agent::start(&config);
    let status = Agent::status_where(&config, "enrolled", |s| s["device_id"].is_string());
    let device = status["device_id"].as_str().expect("device id").to_owned();

    // The product runs and its open copy reaches the collector.
    let mut product = Product::start(dir.path(), "e2ereenrol-one");
    let open = collector
        .sessions_where("user-reenrol", |s| s.len() == 1)
        .await;
    assert!(open[0]["end"].is_null(), "{open:?}");
    assert_eq!(open[0]["device"], json!(device));

    // Revoked: the agent notices at its next sync and keeps journaling.
    collector
        .admin_post(&format!("/v1/admin/devices/{device}/revoke"), &json!({}))
        .await;
    Agent::status_where(&config, "revoked", |s| s["revoked"] == true);
    let before = collector.sessions_of("user-reenrol").await;
    let last_seen_at_revocation = before[0]["last_seen"]
        .as_str()
        .expect("last_seen")
        .to_owned();

    assert_eq!(enroll(&config, &[]), format!("enrolled as device {device}"));
    let after = Agent::status_where(&config, "enrolled again", |s| s["revoked"] == false);
    assert_eq!(after["device_id"], json!(device), "the device keeps its id");

    // In good standing, `enroll` asks for --force and says what it would do.
    let refused = enroll_output(&config, &[]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("--force"),
        "{said}"
    );

    // Two `enroll --force` at once: the agent takes them one after the other, each
    // proving the device with the token the one before got, so neither makes a new device.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| enroll(&config, &["--force"]));
        let b = s.spawn(|| enroll(&config, &["--force"]));
        (a.join(), b.join())
    });
    for out in [a, b] {
        assert_eq!(
            out.expect("an enroll thread"),
            format!("enrolled as device {device}")
        );
    }

    // The product keeps running a little, then stops: its real end arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    product.stop();
    let ended = collector
        .sessions_where("user-reenrol", |s| s.iter().any(|x| x["end"].is_string()))
        .await;
    assert_eq!(ended.len(), 1, "one session, never two: {ended:?}");
    let session = &ended[0];
    assert_eq!(session["id"], open[0]["id"]);
    assert_eq!(session["device"], json!(device));
    // Instants from one agent share their offset and format: text order is time order.
    let end = session["end"].as_str().expect("end");
    assert!(
        end > last_seen_at_revocation.as_str(),
        "the end {end} is the product's, after the revocation ({last_seen_at_revocation})"
    );
    let done = Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0 && s["open"].as_array().is_some_and(Vec::is_empty)
    });
    assert_eq!(done["rejected"], json!([]), "{done}");
}
