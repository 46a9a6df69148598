//! Reminders end to end, on a Linux desktop as far as one runs here: the real agent
//! service and collector, the real session helper (`daymeter-agent session`) in a
//! "desktop session" made of a private `dbus-daemon` with a recording notification
//! server and a stand-in GNOME idle monitor, and a stand-in logind on a private system
//! bus announcing sleep. Each reminder kind must reach the product owner's session once,
//! with the product's catalog name, its tokens and the instant in the helper's own zone;
//! a helper of another account hears nothing.

#![cfg(target_os = "linux")]

#[path = "../../agent/tests/support/bus.rs"]
mod bus;
#[path = "../../agent/tests/support/desktop.rs"]
mod desktop;
#[path = "../../agent/tests/support/logind.rs"]
mod logind;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use daymeter_tests::{Agent, Collector, Helper, Product, eventually};
use desktop::{IdleMonitor, Monitor, Notifications, Notified};

/// The helper's zone and clock style in these tests: not the machine's (UTC).
const ZONE: &str = "America/New_York";

/// `HH:MM` of `t` in [`ZONE`], as a 24-hour helper writes it.
fn local_hhmm(t: DateTime<Utc>) -> String {
    let zone: chrono_tz::Tz = ZONE.parse().expect("a zone");
    t.with_timezone(&zone).format("%H:%M").to_string()
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("an instant"))
        .expect("RFC 3339")
        .to_utc()
}

fn of_kind<'a>(seen: &'a [Notified], kind: &str) -> Vec<&'a Notified> {
    seen.iter()
        .filter(|n| n.kind.as_deref() == Some(kind))
        .collect()
}

/// Waits for a notification of `kind` and returns it.
async fn wait_kind(server: &Notifications, kind: &str) -> Notified {
    eventually(
        &format!("a {kind} notification"),
        Duration::from_secs(30),
        || async { of_kind(&server.all(), kind).first().map(|n| (*n).clone()) },
    )
    .await
}

/// A test folder every account may enter (the other account's helper must reach the
/// socket; the agent's data directory inside stays owner-only).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch folder");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test folder");
    dir
}

async fn import(collector: &Collector, catalog: Value, extra: Value, policy: Value) {
    let mut body = json!({"catalog": catalog, "policy": policy});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    collector.admin_post("/v1/admin/import", &body).await;
}

/// Waits until the agent's status shows a connected helper of `uid`.
fn helper_connected(config: &Path, uid: u32) {
    Agent::status_where(config, &format!("a session helper of uid {uid}"), |s| {
        s["activity"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["uid"] == json!(uid) && x["helper"] == json!(true))
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_pre_sleep_and_rollover_reminders_reach_the_owners_session_once() {
    let dir = open_dir();
    let collector = Collector::start(dir.path());
    import(
        &collector,
        json!({"e2erem": {"name": "Rem CAD", "tokens_per_day": 7,
                          "match": [{"exe": "e2erem-one"}]}}),
        json!({}),
        json!({"window": "12s", "min_session": "1s", "idle_after": "1s",
               "remind_before": "6s", "sync_interval": "1s", "retry_max": "1s"}),
    )
    .await;

    // The owner's desktop session (this test's account), another account's session,
    // and the system bus with logind.
    let ours = bus::Bus::start();
    let notes = Notifications::start(&ours.address, true).await;
    let mutter = IdleMonitor::start(&ours.address, Monitor::Mutter, Duration::ZERO).await;
    let theirs = bus::Bus::start();
    let their_notes = Notifications::start(&theirs.address, true).await;
    let system = bus::Bus::start();
    let mut logind = logind::StandIn::start(&system.address).await;

    let config = Agent::configure(dir.path(), &collector.url(), "user-rem");
    let _agent = Agent::start_with(&config, &[("DBUS_SYSTEM_BUS_ADDRESS", &system.address)]);
    let socket = Agent::socket(dir.path());
    let zone = [("TZ", ZONE), ("LANG", "en_GB.UTF-8")];
    let _helper = Helper::start(&socket, &ours.address, &zone, None);
    let _other = Helper::start(&socket, &theirs.address, &zone, Some(65534));
    helper_connected(&config, 0);
    helper_connected(&config, 65534);
    let _lock = logind.next_inhibit().await;

    // A launch opens a charged day: the launch reminder, with the day's tokens.
    let _product = Product::start(dir.path(), "e2erem-one");
    let launch = wait_kind(&notes, "launch").await;
    assert_eq!(launch.summary, "Rem CAD", "{launch:?}");
    assert_eq!(
        launch.body, "Rem CAD opened a new day (7 tokens). Closing within 1 second is free.",
        "{launch:?}"
    );
    assert_eq!(launch.app_name, "daymeter");
    assert!(
        launch.actions.contains(&"Open daymeter status".to_owned()),
        "the server supports actions: {launch:?}"
    );
    let sessions = collector.sessions_where("user-rem", |s| s.len() == 1).await;
    let start = instant(&sessions[0]["start"]);
    let first_end = start + chrono::TimeDelta::seconds(12);
    assert!(
        Utc::now() < first_end - chrono::TimeDelta::seconds(6),
        "the machine is too slow for this test's 12 s window"
    );

    // The machine goes to sleep with the Flex product open (past the free first
    // second, so its day is charged): the next charge and its tokens, before logind
    // may proceed.
    let charged = start + chrono::TimeDelta::milliseconds(1500);
    tokio::time::sleep((charged - Utc::now()).to_std().unwrap_or_default()).await;
    logind.prepare_for_sleep(true).await;
    let pre_sleep = wait_kind(&notes, "pre_sleep").await;
    assert_eq!(pre_sleep.summary, "Rem CAD");
    assert!(
        pre_sleep
            .body
            .starts_with("Rem CAD is still open. A new day — 7 tokens — starts at ")
            && pre_sleep.body.contains(&local_hhmm(first_end)),
        "the day's end in New York time: {pre_sleep:?}"
    );
    logind.prepare_for_sleep(false).await;

    // The designer walks away: six seconds before the day ends, the rollover reminder.
    mutter.set_idle_growing(Duration::ZERO);
    let walked_away = Utc::now();
    let rollover = wait_kind(&notes, "window_rollover").await;
    let shown_at = Utc::now();
    assert!(
        // (the collector's window bounds are whole seconds)
        shown_at >= first_end - chrono::TimeDelta::seconds(7) && shown_at < first_end,
        "shown within the lead time before the day ends at {first_end}, not at {shown_at}"
    );
    assert_eq!(rollover.summary, "Rem CAD");
    let since = [
        local_hhmm(walked_away - chrono::TimeDelta::seconds(2)),
        local_hhmm(walked_away + chrono::TimeDelta::seconds(2)),
    ];
    assert!(
        since.iter().any(|t| rollover.body.starts_with(&format!(
            "Rem CAD has been idle since {t}. A new day — 7 tokens — starts at {}. Close it to avoid the charge.",
            local_hhmm(first_end)
        ))),
        "idle since {since:?}, a new day at {}: {rollover:?}",
        local_hhmm(first_end)
    );

    // Not repeated within the window, though the product stays idle and every poll
    // looks again.
    let until = first_end - chrono::TimeDelta::milliseconds(300);
    tokio::time::sleep((until - Utc::now()).to_std().unwrap_or_default()).await;
    let seen = notes.all();
    assert_eq!(of_kind(&seen, "window_rollover").len(), 1, "{seen:#?}");
    assert_eq!(of_kind(&seen, "launch").len(), 1, "{seen:#?}");
    assert_eq!(of_kind(&seen, "pre_sleep").len(), 1, "{seen:#?}");

    // The other account's session heard nothing of this account's product.
    assert!(
        their_notes.all().is_empty(),
        "another account's helper hears nothing: {:#?}",
        their_notes.all()
    );

    // `status` lists the reminders sent in the current window, as shown.
    let status = Agent::status(&config).expect("status");
    let kinds: Vec<&str> = status["reminders"]
        .as_array()
        .expect("reminders")
        .iter()
        .filter(|r| r["shown"] == json!(true))
        .filter_map(|r| r["kind"].as_str())
        .collect();
    for kind in ["launch", "pre_sleep", "window_rollover"] {
        assert!(kinds.contains(&kind), "{kind} in {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_and_grace_reminders_reach_the_owners_session() {
    let dir = open_dir();
    let mut collector = Collector::start(dir.path());
    // A Flex product on a team with no tokens, a subscription; a Flex grace of
    // a few seconds (its warnings, hours ahead, are skipped for so short a grace).
    import(
        &collector,
        json!({
            "e2egf1": {"name": "Flex One", "tokens_per_day": 7, "match": [{"exe": "e2egf-one"}]},
            "e2egs": {"name": "Sub CAD", "tokens_per_day": 5, "match": [{"exe": "e2egs-one"}]}
        }),
        json!({
            "entitlements": [
                {"user": "user-gr", "product": "e2egf1", "plan": "flex"},
                {"user": "user-gr", "product": "e2egs", "plan": "subscription"}
            ],
            "teams": {"broke": {"users": ["user-gr"]}}
        }),
        json!({"window": "24h", "min_session": "1s", "sync_interval": "1s", "retry_max": "1s",
               "grace_flex": "5s", "enforce": "warn"}),
    )
    .await;
    let ours = bus::Bus::start();
    let notes = Notifications::start(&ours.address, false).await;
    let _mutter = IdleMonitor::start(&ours.address, Monitor::Mutter, Duration::ZERO).await;

    let config = Agent::configure(dir.path(), &collector.url(), "user-gr");
    let _agent = Agent::start(&config);
    let socket = Agent::socket(dir.path());
    let _helper = Helper::start(&socket, &ours.address, &[("TZ", ZONE)], None);
    helper_connected(&config, 0);

    // The collector said at the agent's first sync that the team cannot pay a day, so
    // a launch warns about the balance (and nothing closes the product for that).
    Agent::status_where(&config, "a first sync", |s| s["last_sync"].is_string());
    let mut flex = Product::start(dir.path(), "e2egf-one");
    let balance = wait_kind(&notes, "insufficient_balance").await;
    assert_eq!(balance.summary, "Flex One");
    assert_eq!(
        balance.body,
        "Flex One opened a new day (7 tokens) but your team has only 0 tokens left. \
         Ask your licence admin to add tokens.",
        "{balance:?}"
    );
    assert!(
        balance.actions.is_empty(),
        "no actions capability: {balance:?}"
    );
    collector.sessions_where("user-gr", |s| s.len() == 1).await;

    // Offline: a subscription launched while the collector is away is warned at once…
    collector.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _sub = Product::start(dir.path(), "e2egs-one");
    let warning = wait_kind(&notes, "grace_warning").await;
    assert_eq!(warning.summary, "Sub CAD");
    assert!(
        warning.body.starts_with("Sub CAD may run offline until ")
            && warning
                .body
                .ends_with("(subscription). Connect to the network before then to keep working."),
        "{warning:?}"
    );

    // …and the Flex product's grace runs out: told once, at the owner's session.
    let expired = wait_kind(&notes, "grace_expired").await;
    assert_eq!(expired.summary, "Flex One");
    assert!(
        expired.body
            == "Flex One has been offline too long (Flex). Connect to the network to keep using it.",
        "{expired:?}"
    );
    assert_eq!(expired.urgency, Some(2), "critical: {expired:?}");
    // Under `enforce = warn` nothing is closed, for the grace or for the balance.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(flex.running(), "a warning only");
    let seen = notes.all();
    assert_eq!(of_kind(&seen, "grace_expired").len(), 1, "{seen:#?}");
    assert_eq!(of_kind(&seen, "grace_warning").len(), 1, "{seen:#?}");
    assert_eq!(of_kind(&seen, "insufficient_balance").len(), 1, "{seen:#?}");
}
