//! Sleep on Linux: the boot clock, and logind's delay inhibitor and announcements against
//! a stand-in logind written here on zbus, on a private bus used as the system bus.

#![cfg(target_os = "linux")]

#[path = "support/bus.rs"]
mod bus;
#[path = "support/logind.rs"]
mod logind;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use daymeter_agent::power::linux::BootClock;
use daymeter_agent::power::logind::{LogindError, SleepEvent, SleepWatch};
use daymeter_agent::power::{SleepClock, SleepDetector, SleepReading};
use daymeter_shared::clock::ManualClock;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn time_asleep_is_never_negative_and_never_goes_back() {
    let clock = BootClock::new();
    let mut last = (clock.asleep(), clock.since_boot());
    for _ in 0..1000 {
        let now = (clock.asleep(), clock.since_boot());
        assert!(now.0 >= last.0, "asleep went back: {last:?} → {now:?}");
        assert!(now.1 >= last.1, "since_boot went back: {last:?} → {now:?}");
        assert!(now.1 >= now.0, "asleep longer than the time since boot");
        last = now;
    }
}

#[test]
fn the_test_file_adds_its_seconds_to_both_readings_and_reads_as_a_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slept");
    let plain = BootClock::new();
    let moved = BootClock::injected(file.clone());
    let mut detector = SleepDetector::new();
    assert!(detector.observe(SleepReading::of(&moved)).is_none());
    let missing = moved.asleep().saturating_sub(plain.asleep());
    assert!(
        missing < Duration::from_millis(100),
        "a missing file adds nothing"
    );

    std::fs::write(&file, "12.5\n").unwrap();
    let asleep = moved.asleep().saturating_sub(plain.asleep());
    let since_boot = moved.since_boot().saturating_sub(plain.since_boot());
    for added in [asleep, since_boot] {
        assert!(
            added >= Duration::from_millis(12_400) && added <= Duration::from_millis(12_600),
            "{added:?}"
        );
    }
    let slept = detector.observe(SleepReading::of(&moved)).expect("a sleep");
    assert!(slept.duration >= Duration::from_millis(12_400), "{slept:?}");
}

/// Whether the agent closed its end: EOF on ours, within `WAIT`.
fn closed(ours: &UnixStream) -> bool {
    ours.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    matches!((&*ours).read(&mut buf), Ok(0))
}

fn still_open(ours: &UnixStream) -> bool {
    ours.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!((&*ours).read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    ours.set_nonblocking(false).unwrap();
    open
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T23:00:00Z")
        .unwrap()
        .to_utc()
}

/// One test, because it points `DBUS_SYSTEM_BUS_ADDRESS` at its own bus for the whole
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logind_delays_sleep_until_released_and_is_locked_again_after_resume() {
    let bus = bus::Bus::start();
    // SAFETY: the only test of this binary that touches the environment, before it
    // starts anything that reads it.
    unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address) };
    let clock = Arc::new(ManualClock::new(t0()));

    // No logind on the bus: the service falls back to the clocks.
    let e = SleepWatch::connect(clock.clone())
        .await
        .err()
        .expect("no logind yet");
    assert!(matches!(e, LogindError::NoLogind(_)), "{e}");

    let mut logind = logind::StandIn::start(&bus.address).await;
    let mut watch = timeout(WAIT, SleepWatch::connect(clock.clone()))
        .await
        .expect("connect in time")
        .expect("connect");
    let first = logind.next_inhibit().await;
    assert_eq!(
        first.args,
        (
            "sleep".into(),
            "daymeter".into(),
            "show close-the-app reminders before sleep".into(),
            "delay".into()
        )
    );
    assert!(watch.holds_lock());
    assert!(still_open(&first.ours), "the lock is held");

    logind.prepare_for_sleep(true).await;
    let event = timeout(WAIT, watch.next()).await.expect("in time");
    assert_eq!(event, Some(SleepEvent::Suspending { at: t0() }));
    assert!(still_open(&first.ours), "held until released");

    watch.release();
    assert!(!watch.holds_lock());
    assert!(
        closed(&first.ours),
        "the stand-in sees the descriptor closed"
    );

    // An impostor's announcement is not logind's.
    let impostor = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    logind::emit(&impostor, true).await;
    logind.prepare_for_sleep(false).await;
    let event = timeout(WAIT, watch.next()).await.expect("in time");
    assert_eq!(event, Some(SleepEvent::Resumed));
    let second = logind.next_inhibit().await;
    assert_eq!(second.args.3, "delay");
    assert!(watch.holds_lock());
    assert!(still_open(&second.ours), "locked again after the resume");

    drop(watch);
    assert!(closed(&second.ours), "dropping the watch releases the lock");
}
