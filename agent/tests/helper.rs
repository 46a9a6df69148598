//! `daymeter-agent session`, the real binary, in a desktop session made of a private
//! `dbus-daemon` as the session bus and stand-ins for the notification server and the
//! idle monitors (`support/desktop.rs`), against a scripted service: a Unix listener in
//! the test that speaks the wire protocol (the real service is covered by the
//! end-to-end tests).

#![cfg(target_os = "linux")]

#[path = "support/bus.rs"]
mod bus;
#[path = "support/desktop.rs"]
mod desktop;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use daymeter_agent::helper::render::{ClockStyle, Style, render};
use daymeter_agent::reminder::wire::{FromHelper, ToHelper};
use daymeter_agent::reminder::{Kind, Reminder};
use desktop::{IdleMonitor, Monitor, Notifications, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How often the scripted service asks for idle reports.
const REPORT_EVERY_MS: u64 = 100;

/// A session: its bus, a directory for the service's socket and the helpers' logs.
struct Session {
    bus: bus::Bus,
    dir: tempfile::TempDir,
}

impl Session {
    fn new() -> Session {
        Session {
            bus: bus::Bus::start(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Starts a helper in this session with `env` besides the bus; its log goes to
    /// `helper-{n}.log`. No `DISPLAY`, and the private bus as the system bus too (no
    /// logind on it), so only the stand-ins can answer for idle.
    fn helper(&self, n: u32, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.log_path(n)).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_daymeter-agent"));
        command
            .arg("session")
            .arg("--socket")
            .arg(self.socket())
            .env_clear()
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus.address)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus.address)
            .env("TZ", "UTC")
            .env("LANG", "C.UTF-8")
            .env("DAYMETER_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        command.spawn().expect("start the helper")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("helper-{n}.log"))
    }

    fn log(&self, n: u32) -> String {
        std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
    }
}

/// The scripted service's listener.
struct Service {
    listener: UnixListener,
}

/// One connection the scripted service accepted.
enum Caller {
    Helper(Peer),
    /// A `status` request (the status action).
    Status(UnixStream),
}

impl Service {
    fn bind(path: &Path) -> Service {
        let _ = std::fs::remove_file(path);
        Service {
            listener: UnixListener::bind(path).expect("bind the scripted service"),
        }
    }

    /// The next connection and its first line.
    async fn caller(&self) -> (String, OwnedReadHalf, OwnedWriteHalf) {
        let (stream, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut first = String::new();
        timeout(WAIT, reader.read_line(&mut first))
            .await
            .expect("a first line in time")
            .expect("read");
        (first.trim().to_owned(), reader.into_inner(), write)
    }

    /// Accepts a helper and says hello.
    async fn helper(&self) -> Peer {
        match self.accept().await {
            Caller::Helper(peer) => peer,
            Caller::Status(_) => panic!("a status request where a helper was expected"),
        }
    }

    async fn accept(&self) -> Caller {
        let (first, read, write) = self.caller().await;
        match first.as_str() {
            "session" => {
                let mut peer = Peer {
                    lines: BufReader::new(read).lines(),
                    write,
                };
                peer.send(&ToHelper::Hello {
                    uid: 1000,
                    report_every_ms: REPORT_EVERY_MS,
                })
                .await;
                Caller::Helper(peer)
            }
            "status" => Caller::Status(read.reunite(write).expect("one stream")),
            other => panic!("the helper opened with {other:?}"),
        }
    }

    /// Accepts a helper and refuses it, as the service does when it cannot tell who
    /// is asking.
    async fn refuse(&self, error: &str) {
        let (first, _read, mut write) = self.caller().await;
        assert_eq!(first, "session");
        let line = format!(
            "{}\n",
            serde_json::to_string(&ToHelper::Refused {
                error: error.to_owned()
            })
            .unwrap()
        );
        write.write_all(line.as_bytes()).await.expect("write");
    }
}

/// The scripted service's end of one helper link.
struct Peer {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Peer {
    async fn send(&mut self, message: &ToHelper) {
        let line = format!("{}\n", serde_json::to_string(message).unwrap());
        self.write
            .write_all(line.as_bytes())
            .await
            .expect("write to the helper");
    }

    async fn remind(&mut self, reminder: &Reminder) {
        self.send(&ToHelper::Remind(reminder.clone())).await;
    }

    /// The next report the helper sends.
    async fn report(&mut self) -> FromHelper {
        let line = timeout(WAIT, self.lines.next_line())
            .await
            .expect("a report in time")
            .expect("read")
            .expect("the helper is connected");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Reports until one satisfies `wanted`; panics after [`WAIT`].
    async fn report_where(&mut self, wanted: impl Fn(&FromHelper) -> bool) -> FromHelper {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            let report = self.report().await;
            if wanted(&report) {
                return report;
            }
            last = Some(report);
        }
        panic!("no such report within {WAIT:?}; the last was {last:?}");
    }
}

async fn exits(child: &mut Child) -> ExitStatus {
    timeout(WAIT, child.wait())
        .await
        .expect("the helper exits in time")
        .expect("wait for the helper")
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// A reminder of each kind with every field its wording needs.
fn reminders() -> Vec<Reminder> {
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let mut r = Reminder::new(kind, "acad", "AutoCAD");
            r.at = Some(utc("2031-03-03T19:00:00Z"));
            r.idle_since = Some(utc("2031-03-03T14:10:00Z"));
            r.tokens = Some(7);
            r.balance = Some(3);
            r.free_within = Some(Duration::from_secs(300));
            r.plan = Some("flex".to_owned());
            r
        })
        .collect()
}

/// A number field of `/proc/PID/status` (`VmHWM` in kB, `Threads`).
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn each_kind_becomes_one_notification_with_its_rendered_text_and_hint() {
    let session = Session::new();
    let server = Notifications::start(&session.bus.address, true).await;
    let service = Service::bind(&session.socket());
    let mut helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    for r in reminders() {
        peer.remind(&r).await;
    }
    let shown = server.wait_for(Kind::ALL.len()).await;
    let style = Style {
        zone: chrono_tz::Tz::UTC,
        clock: ClockStyle::TwentyFourHour,
    };
    for (r, n) in reminders().iter().zip(&shown) {
        let expected = render(r, &style, Utc::now());
        assert_eq!(n.app_name, "daymeter");
        assert_eq!(n.summary, "AutoCAD");
        assert_eq!(n.body, expected.body, "{:?}", r.kind);
        assert_eq!(n.kind.as_deref(), Some(r.kind.as_str()));
        assert_eq!(n.desktop_entry.as_deref(), Some("daymeter-session"));
        let urgency = if r.kind == Kind::GraceExpired { 2 } else { 1 };
        assert_eq!(n.urgency, Some(urgency), "{:?}", r.kind);
    }
    assert_eq!(
        shown[0].body,
        "AutoCAD opened a new day (7 tokens). Closing within 5 minutes is free."
    );
    assert!(
        shown[1].body.contains("starts on Mon 3 Mar at 19:00."),
        "{}",
        shown[1].body
    );
    // Once each: nothing more arrives after a few more reports.
    for _ in 0..3 {
        peer.report().await;
    }
    assert_eq!(server.all().len(), Kind::ALL.len());
    let pid = helper.id().expect("running");
    // The footprint, for the record (`--nocapture`; a debug build is about twice a
    // release one's): the helper runs all day in every session.
    let field = |f| proc_status(pid, f).unwrap_or(0);
    eprintln!(
        "helper after {} reminders: peak RSS (VmHWM) {} kB (now {} kB anonymous, {} kB file-backed), {} threads",
        Kind::ALL.len(),
        field("VmHWM"),
        field("RssAnon"),
        field("RssFile"),
        field("Threads"),
    );
    helper.start_kill().expect("stop the helper");
}

#[tokio::test]
async fn idle_is_reported_from_mutter_when_it_answers() {
    let session = Session::new();
    let mutter = IdleMonitor::start(
        &session.bus.address,
        Monitor::Mutter,
        Duration::from_millis(4242),
    )
    .await;
    let _screensaver = IdleMonitor::start(
        &session.bus.address,
        Monitor::ScreenSaver,
        Duration::from_millis(99),
    )
    .await;
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    let first = peer.report().await;
    assert_eq!(first.idle_ms, Some(4242));
    assert_eq!(first.source.as_deref(), Some("mutter"));
    mutter.set_idle(Duration::from_millis(10));
    peer.report_where(|r| r.idle_ms == Some(10) && r.source.as_deref() == Some("mutter"))
        .await;
}

#[tokio::test]
async fn idle_is_reported_from_the_screensaver_when_mutter_is_absent() {
    let session = Session::new();
    let _screensaver = IdleMonitor::start(
        &session.bus.address,
        Monitor::ScreenSaver,
        Duration::from_millis(1234),
    )
    .await;
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    let first = peer.report().await;
    assert_eq!(first.idle_ms, Some(1234));
    assert_eq!(first.source.as_deref(), Some("screensaver"));
}

#[tokio::test]
async fn idle_is_null_when_no_monitor_answers() {
    let session = Session::new();
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    for _ in 0..2 {
        let report = peer.report().await;
        assert_eq!(
            report,
            FromHelper {
                idle_ms: None,
                source: None
            }
        );
    }
}

#[tokio::test]
async fn a_second_helper_in_the_same_session_exits_and_leaves_the_first_alone() {
    let session = Session::new();
    let server = Notifications::start(&session.bus.address, false).await;
    let service = Service::bind(&session.socket());
    let _first = session.helper(1, &[]);
    // The first took the session's name before it connected.
    let mut peer = service.helper().await;
    let mut second = session.helper(2, &[]);
    let status = exits(&mut second).await;
    assert!(status.success(), "{status}: {}", session.log(2));
    assert!(
        session.log(2).contains("already runs in this session"),
        "{}",
        session.log(2)
    );
    // The first still reports and shows reminders, once.
    peer.report().await;
    peer.remind(&reminders()[0]).await;
    server.wait_for(1).await;
    peer.report().await;
    assert_eq!(server.all().len(), 1);
}

#[tokio::test]
async fn the_status_action_is_offered_only_when_the_server_has_the_actions_capability() {
    for actions in [false, true] {
        let session = Session::new();
        let server = Notifications::start(&session.bus.address, actions).await;
        let service = Service::bind(&session.socket());
        let _helper = session.helper(1, &[]);
        let mut peer = service.helper().await;
        peer.remind(&reminders()[0]).await;
        let shown = server.wait_for(1).await;
        let expected: Vec<String> = if actions {
            vec!["status".into(), "Open daymeter status".into()]
        } else {
            Vec::new()
        };
        assert_eq!(shown[0].actions, expected, "actions capability: {actions}");
    }
}

#[tokio::test]
async fn invoking_the_status_action_shows_the_services_status() {
    let session = Session::new();
    let server = Notifications::start(&session.bus.address, true).await;
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    peer.remind(&reminders()[0]).await;
    let shown = server.wait_for(1).await;
    // Another application's notification id is not ours: ignored.
    server.invoke_action(shown[0].id + 100, "status").await;
    server.invoke_action(shown[0].id, "status").await;
    let Caller::Status(mut asked) = service.accept().await else {
        panic!("a helper where a status request was expected");
    };
    let status = serde_json::json!({
        "running": true, "now": "2031-03-03T12:00:00Z", "collector_url": "https://collector.example",
        "device_id": "dev-1", "revoked": false, "last_sync": null, "last_error": null,
        "grace_until": {}, "open": [], "waiting_upload": 0, "rejected": [],
    });
    asked
        .write_all(status.to_string().as_bytes())
        .await
        .expect("answer");
    asked.shutdown().await.expect("close");
    let shown = server.wait_for(2).await;
    assert_eq!(shown[1].summary, "daymeter status");
    assert_eq!(shown[1].kind.as_deref(), Some("status"));
    assert!(
        shown[1].actions.is_empty(),
        "no action on the status itself"
    );
    assert!(
        shown[1].body.contains("collector.example"),
        "{}",
        shown[1].body
    );
    peer.report().await;
    assert_eq!(server.all().len(), 2, "the foreign id showed nothing");
    // The unused read half: the helper sent only its one line.
    let mut rest = String::new();
    let _ = asked.read_to_string(&mut rest).await;
}

#[tokio::test]
async fn a_12_hour_locale_shows_12_hour_times() {
    let session = Session::new();
    let server = Notifications::start(&session.bus.address, false).await;
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[("LANG", "en_US.UTF-8"), ("TZ", "America/New_York")]);
    let mut peer = service.helper().await;
    let pre_sleep = reminders()
        .into_iter()
        .find(|r| r.kind == Kind::PreSleep)
        .unwrap();
    peer.remind(&pre_sleep).await;
    let shown = server.wait_for(1).await;
    // 19:00 UTC is 2 PM in New York in March (EST).
    assert!(
        shown[0]
            .body
            .contains("starts on Mon 3 Mar at 2:00 PM even"),
        "{}",
        shown[0].body
    );
}

#[tokio::test]
async fn the_helper_reconnects_after_the_service_restarts() {
    let session = Session::new();
    let server = Notifications::start(&session.bus.address, false).await;
    let service = Service::bind(&session.socket());
    let _helper = session.helper(1, &[]);
    let mut peer = service.helper().await;
    peer.report().await;
    drop(peer);
    drop(service);
    // The restarted service binds its socket afresh.
    let service = Service::bind(&session.socket());
    let mut peer = service.helper().await;
    peer.report().await;
    peer.remind(&reminders()[0]).await;
    server.wait_for(1).await;
}

#[tokio::test]
async fn a_refusal_ends_the_helper_with_an_error() {
    let session = Session::new();
    let service = Service::bind(&session.socket());
    let mut helper = session.helper(1, &[]);
    service
        .refuse("the agent cannot tell which account is asking")
        .await;
    let status = exits(&mut helper).await;
    assert!(!status.success(), "{status}");
    let log = session.log(1);
    assert!(
        log.contains("refused this helper: the agent cannot tell which account is asking"),
        "{log}"
    );
}
