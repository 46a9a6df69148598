//! The Windows agent, cross-built, run under Wine against the real collector on
//! loopback: a product `.exe` metered from start to end, the journal kept through
//! `taskkill /f` with the collector away, and the service under Wine's service control
//! manager. `scripts/test-windows` builds the agent, sets up Wine and runs these with
//! `--ignored --test-threads=1` (they share one Wine prefix and its service list);
//! a plain `cargo test` lists them as ignored.
#![cfg(target_os = "linux")]

use std::time::Duration;

use serde_json::{Value, json};

use daymeter_tests::Collector;
use daymeter_tests::wine::{
    WinAgent, WinProduct, agent_exe, configure, product_exe, win_path, wine, wine_builtin,
};

fn quick_policy() -> Value {
    json!({"min_session": "1s", "sync_interval": "2s", "retry_max": "1s"})
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("scratch folder")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build and Wine: scripts/test-windows"]
async fn a_product_exe_is_metered_from_start_to_end_into_the_collector() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("acad", "acad.exe")], quick_policy())
        .await;
    let config = configure(dir.path(), &collector.url(), "ana-wine", "");
    let _agent = WinAgent::start(&config);

    let mut product = WinProduct::start(&product_exe(dir.path(), "acad.exe"));
    let open = collector
        .sessions_where("ana-wine", |s| s.len() == 1 && s[0]["end"].is_null())
        .await;
    assert_eq!(open[0]["product"], "acad");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    product.stop();
    let closed = collector
        .sessions_where("ana-wine", |s| s.len() == 1 && s[0]["end"].is_string())
        .await;
    assert_eq!(
        closed[0]["id"], open[0]["id"],
        "one session, opened then closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build and Wine: scripts/test-windows"]
async fn a_session_journaled_offline_survives_taskkill_and_reaches_the_collector_once() {
    let dir = scratch();
    let mut collector = Collector::start(dir.path());
    collector
        .import_products(&[("revit", "revit.exe")], quick_policy())
        .await;
    let config = configure(dir.path(), &collector.url(), "ben-wine", "");
    let mut agent = WinAgent::start(&config);
    // Enrolled and the catalog learnt at the first sync (the agent retries within a
    // second while the collector is there).
    tokio::time::sleep(Duration::from_secs(5)).await;

    collector.kill();
    let mut product = WinProduct::start(&product_exe(dir.path(), "revit.exe"));
    // Metered offline into the journal only; then the agent is ended without warning.
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.terminate_process();
    product.stop();

    collector.restart(dir.path());
    let _agent = WinAgent::start(&config);
    let sessions = collector
        .sessions_where("ben-wine", |s| s.len() == 1 && s[0]["end"].is_string())
        .await;
    assert_eq!(sessions[0]["product"], "revit");
    // Nothing more arrives later: one session, not two.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(collector.sessions_of("ben-wine").await.len(), 1);
}

/// Removes the test's service however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = wine(&agent_exe(), &["uninstall-service"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build and Wine: scripts/test-windows"]
async fn the_service_meters_under_the_service_manager_and_stops_cleanly() {
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("inventor", "inventor.exe")], quick_policy())
        .await;
    // A service gets no environment from whoever installs it: the secret is in the
    // file (owner-only on a real machine).
    let config = configure(
        dir.path(),
        &collector.url(),
        "cleo-wine",
        &format!(
            "enrollment_secret = \"{}\"\n",
            daymeter_tests::ENROLLMENT_SECRET
        ),
    );
    let exe = agent_exe();
    let _ = wine(&exe, &["uninstall-service"]);
    let installed = wine(&exe, &["install-service", "--config", &win_path(&config)]);
    let _guard = Installed;
    assert!(
        installed.status.success(),
        "install-service: {}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let mut product = WinProduct::start(&product_exe(dir.path(), "inventor.exe"));
    let open = collector
        .sessions_where("cleo-wine", |s| s.len() == 1 && s[0]["end"].is_null())
        .await;
    assert_eq!(open[0]["product"], "inventor");

    let stopped = wine_builtin(&["sc", "stop", "daymeter-agent"]);
    assert!(stopped.status.success(), "sc stop: {stopped:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let query = loop {
        let q = String::from_utf8_lossy(&wine_builtin(&["sc", "query", "daymeter-agent"]).stdout)
            .into_owned();
        if q.contains("STOPPED") {
            break q;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not stop: {q}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exit_code = query
        .lines()
        .find(|l| l.contains("WIN32_EXIT_CODE"))
        .unwrap_or_default()
        .to_owned();
    assert!(exit_code.contains(": 0"), "{query}");
    product.stop();
    let removed = wine(&exe, &["uninstall-service"]);
    assert!(
        removed.status.success(),
        "uninstall-service: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
}
