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

/// A test's product, executable and licence user, told apart per journal backend so
/// that the same body can run on both at once without metering the other's processes.
struct Names {
    product: String,
    exe: String,
    user: String,
}

fn names(product: &str, exe: &str, user: &str, journal: &str) -> Names {
    Names {
        product: format!("{product}{journal}"),
        exe: format!("{exe}-{journal}"),
        user: format!("{user}-{journal}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_process_is_metered_end_to_end() {
    metered_end_to_end("redb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_process_is_metered_end_to_end_on_sled() {
    metered_end_to_end("sled").await;
}

async fn metered_end_to_end(journal: &str) {
    let Names { product, exe, user } = names("e2ecad", "e2ecad-one", "user-one", journal);
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[(&product, &exe)], quick_policy())
        .await;
    let config = Agent::configure_journal(dir.path(), &collector.url(), &user, journal);
    let _agent = Agent::start(&config);
    Agent::status_where(&config, "enrolled", |s| s["device_id"].is_string());

    let mut running = Product::start(dir.path(), &exe);
    let open = collector.sessions_where(&user, |s| s.len() == 1).await;
    assert_eq!(open[0]["product"], product.as_str());
    assert!(open[0]["end"].is_null(), "{open:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop();

    let closed = collector
        .sessions_where(&user, |s| s.len() == 1 && s[0]["end"].is_string())
        .await;
    assert_eq!(closed[0]["id"], open[0]["id"]);
    Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0 && s["open"].as_array().is_some_and(Vec::is_empty)
    });
    let days = collector.admin_get("/v1/admin/usage-days").await;
    let rows = days["usage_days"].as_array().expect("rows");
    assert_eq!(
        rows.iter().filter(|r| r["user"] == user.as_str()).count(),
        1,
        "{days}"
    );
    assert_journal_kind(dir.path(), journal);
}

/// The journal directory holds the database of `journal`'s kind, and only it.
fn assert_journal_kind(dir: &std::path::Path, journal: &str) {
    let journal_dir = Agent::journal_dir(dir);
    let (own, other) = match journal {
        "sled" => ("sled", "journal.redb"),
        _ => ("journal.redb", "sled"),
    };
    assert!(
        journal_dir.join(own).exists(),
        "{own} in {}",
        journal_dir.display()
    );
    assert!(
        !journal_dir.join(other).exists(),
        "{other} in {}",
        journal_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_agent_adopts_the_running_product_and_closes_a_gone_one_at_last_seen() {
    kill_9_adopts_and_closes("redb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_agent_on_sled_adopts_the_running_product_and_closes_a_gone_one() {
    kill_9_adopts_and_closes("sled").await;
}

async fn kill_9_adopts_and_closes(journal: &str) {
    let Names { product, exe, user } = names("e2ekill", "e2ekill-two", "user-two", journal);
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[(&product, &exe)], quick_policy())
        .await;
    let config = Agent::configure_journal(dir.path(), &collector.url(), &user, journal);
    let mut agent = Agent::start(&config);
    Agent::status_where(&config, "enrolled", |s| s["device_id"].is_string());
    let mut running = Product::start(dir.path(), &exe);
    let first = collector.sessions_where(&user, |s| s.len() == 1).await;
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
    running.stop();
    let _agent = Agent::start(&config);
    let closed = collector
        .sessions_where(&user, |s| s.iter().any(|x| x["end"].is_string()))
        .await;
    assert_eq!(closed.len(), 1, "one session, never two: {closed:?}");
    assert_eq!(closed[0]["id"], id);
    Agent::status_where(&config, "nothing left to upload", |s| {
        s["waiting_upload"] == 0
    });
    assert_journal_kind(dir.path(), journal);
}

/// The admin switches a running installation from redb to sled: the restarted agent
/// migrates the journal and goes on with the same open session, the same device and
/// the collector's cached answer; the collector never sees a second copy.
#[tokio::test(flavor = "multi_thread")]
async fn switching_the_journal_to_sled_keeps_the_open_session_and_the_device() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("e2eswitch", "e2eswitch-seven")], quick_policy())
        .await;
    let config = Agent::configure_journal(dir.path(), &collector.url(), "user-seven", "redb");
    let mut agent = Agent::start(&config);
    let before = Agent::status_where(&config, "enrolled and synced", |s| {
        s["device_id"].is_string() && s["last_sync"].is_string()
    });
    let mut running = Product::start(dir.path(), "e2eswitch-seven");
    let first = collector
        .sessions_where("user-seven", |s| s.len() == 1)
        .await;
    assert_eq!(agent.terminate(), Some(0));

    let config = Agent::configure_journal(dir.path(), &collector.url(), "user-seven", "sled");
    let _agent = Agent::start(&config);
    let after = Agent::status_where(&config, "the product adopted on sled", |s| {
        s["running"] == true && s["open"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert_eq!(after["open"][0]["id"], first[0]["id"], "{after}");
    assert_eq!(after["device_id"], before["device_id"]);
    assert!(after["last_sync"].is_string(), "{after}");
    assert_journal_kind(dir.path(), "sled");
    let kept = std::fs::read_dir(Agent::journal_dir(dir.path()))
        .expect("journal dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("journal.redb.migrated-to-sled-")
        })
        .count();
    assert_eq!(kept, 1, "the redb journal kept aside once");

    running.stop();
    let closed = collector
        .sessions_where("user-seven", |s| s.iter().any(|x| x["end"].is_string()))
        .await;
    assert_eq!(closed.len(), 1, "one session, never two: {closed:?}");
    assert_eq!(closed[0]["id"], first[0]["id"]);
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
