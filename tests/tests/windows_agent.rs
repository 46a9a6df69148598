//! The Windows agent, cross-built, run under Wine against the real collector on
//! loopback: a product `.exe` metered from start to end, the journal kept through
//! `taskkill /f` with the collector away, the grace enforced by `WM_CLOSE` through the
//! session helper over the named pipe, and the service under Wine's service control
//! manager. The windowed product needs an X display: `scripts/test-windows` runs these
//! under `xvfb-run`. `scripts/test-windows` builds the agent, sets up Wine and runs these with
//! `--ignored --test-threads=1` (they share one Wine prefix and its service list);
//! a plain `cargo test` lists them as ignored.
#![cfg(target_os = "linux")]

use std::time::Duration;

use serde_json::{Value, json};

use daymeter_tests::Collector;
use daymeter_tests::wine::{
    WINDOW_CLOSE_SEEN, WINDOW_CLOSED_EXIT, WinAgent, WinHelper, WinProduct, agent_exe, configure,
    product_exe, status_over_pipe, test_pipe, win_path, window_product_exe, wine, wine_builtin,
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

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build and Wine: scripts/test-windows"]
async fn grace_run_out_closes_the_product_window_through_the_session_helper() {
    let dir = scratch();
    let mut collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("acad", "acad.exe")],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s",
                   "grace_flex": "6s", "enforce": "close", "close_delay": "2s"}),
        )
        .await;
    let pipe = test_pipe("grace");
    let config = configure(
        dir.path(),
        &collector.url(),
        "dan-wine",
        &format!("socket = '{pipe}'\n"),
    );
    let _agent = WinAgent::start(&config);
    let mut helper = WinHelper::start(&pipe);
    helper.logged(
        &["connected to the daymeter service"],
        Duration::from_secs(60),
    );
    let mut product = WinProduct::start_windowed(&window_product_exe(dir.path(), "acad.exe"));
    collector
        .sessions_where("dan-wine", |s| s.len() == 1 && s[0]["end"].is_null())
        .await;

    // `status` asks the running agent over its pipe.
    let status = status_over_pipe(&pipe).expect("status over the named pipe");
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["open"][0]["product"], "acad", "{status}");

    // Offline: 6 s after the last sync the grace is over.
    collector.kill();
    assert_eq!(
        product.next_line(Duration::from_secs(60)).as_deref(),
        Some(WINDOW_CLOSE_SEEN),
        "the product's window was asked to close"
    );
    assert_eq!(
        product.exited_within(Duration::from_secs(30)),
        Some(WINDOW_CLOSED_EXIT),
        "the product closed itself, as a user closing its window"
    );
    helper.logged(&["WM_CLOSE posted"], Duration::from_secs(10));
    // The reminder went over the pipe to the helper, which showed it.
    helper.logged(
        &["reminder shown", "grace_expired"],
        Duration::from_secs(10),
    );
    let status = status_over_pipe(&pipe).expect("status over the named pipe");
    let reminders = status["reminders"].as_array().expect("reminders");
    assert!(
        reminders
            .iter()
            .any(|r| r["kind"] == "grace_expired" && r["shown"] == true),
        "{status}"
    );
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

/// Uninstalls the MSI and removes what it leaves on purpose (the installer's values,
/// the journal), however the test ends.
struct MsiInstalled(std::path::PathBuf);

impl Drop for MsiInstalled {
    fn drop(&mut self) {
        let _ = wine_builtin(&["msiexec", "/x", &win_path(&self.0), "/qn"]);
        let _ = wine_builtin(&["reg", "delete", r"HKLM\Software\Daymeter", "/f"]);
        let _ = std::fs::remove_dir_all(program_data());
    }
}

/// `%ProgramData%\daymeter` in the test's Wine prefix, where the service keeps its
/// journal.
fn program_data() -> std::path::PathBuf {
    let prefix = std::env::var_os("WINEPREFIX").expect("WINEPREFIX");
    std::path::Path::new(&prefix).join("drive_c/ProgramData/daymeter")
}

fn registry_value(key: &str, name: &str) -> Option<String> {
    let out = wine_builtin(&["reg", "query", key, "/v", name]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split("REG_SZ").nth(1))
        .map(|v| v.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build, its MSI and Wine: scripts/test-windows"]
async fn the_msi_installs_a_service_that_enrols_and_meters_with_no_config_file() {
    let Some(msi) = std::env::var_os("DAYMETER_WINDOWS_MSI").map(std::path::PathBuf::from) else {
        panic!("DAYMETER_WINDOWS_MSI is not set: scripts/test-windows builds the MSI first");
    };
    let dir = scratch();
    let collector = Collector::start(dir.path());
    collector
        .import_products(&[("acad", "acad.exe")], quick_policy())
        .await;
    // A machine that never had the agent.
    let _ = wine(&agent_exe(), &["uninstall-service"]);
    let _ = std::fs::remove_dir_all(program_data());
    let _ = wine_builtin(&["reg", "delete", r"HKLM\Software\Daymeter", "/f"]);

    let _installed = MsiInstalled(msi.clone());
    let url = collector.url();
    let install = wine_builtin(&[
        "msiexec",
        "/i",
        &win_path(&msi),
        "/qn",
        &format!("COLLECTOR_URL={url}"),
        &format!("ENROLLMENT_SECRET={}", daymeter_tests::ENROLLMENT_SECRET),
    ]);
    assert!(install.status.success(), "msiexec /i: {install:?}");

    // What the MSI wrote.
    let prefix = std::env::var_os("WINEPREFIX").expect("WINEPREFIX");
    let installed_exe =
        std::path::Path::new(&prefix).join("drive_c/Program Files/daymeter/daymeter-agent.exe");
    assert!(
        installed_exe.is_file(),
        "{} installed",
        installed_exe.display()
    );
    assert_eq!(
        registry_value(r"HKLM\Software\Daymeter\Agent", "CollectorUrl").as_deref(),
        Some(url.as_str())
    );
    let run = registry_value(
        r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run",
        "daymeter-session",
    )
    .expect("the session helper's Run value");
    assert!(run.ends_with(r#"daymeter-agent.exe" session"#), "{run}");

    // The service the MSI started enrols with the installer's secret and meters.
    let mut product = WinProduct::start(&product_exe(dir.path(), "acad.exe"));
    let status = daymeter_tests::eventually(
        "the installed service meters the product",
        Duration::from_secs(60),
        || async {
            status_over_pipe(daymeter_agent_pipe()).filter(|s| {
                s["open"].as_array().is_some_and(|o| o.len() == 1) && s["device_id"].is_string()
            })
        },
    )
    .await;
    assert_eq!(status["open"][0]["product"], "acad", "{status}");
    let user = status["open"][0]["user"]
        .as_str()
        .expect("the licence user: the product owner's login")
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !collector
        .sessions_of(&user)
        .await
        .first()
        .is_some_and(|s| s["product"] == "acad")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no session of {user} reached the collector; the service's log:\n{}",
            std::fs::read_to_string(program_data().join("logs").join("agent.log"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    product.stop();

    let removed = wine_builtin(&["msiexec", "/x", &win_path(&msi), "/qn"]);
    assert!(removed.status.success(), "msiexec /x: {removed:?}");
    assert!(!installed_exe.exists(), "the program is removed");
    let query = wine_builtin(&["sc", "query", "daymeter-agent"]);
    assert!(
        !String::from_utf8_lossy(&query.stdout).contains("RUNNING"),
        "the service is stopped and removed: {query:?}"
    );
    assert_eq!(
        registry_value(r"HKLM\Software\Daymeter\Agent", "CollectorUrl").as_deref(),
        Some(url.as_str()),
        "the installer's values outlive an uninstall, as the journal does"
    );
}

/// The installed service's pipe.
fn daymeter_agent_pipe() -> &'static str {
    r"\\.\pipe\daymeter-agent"
}
