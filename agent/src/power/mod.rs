//! Sleep: when the machine was suspended, and (on Linux) a word from logind before it is.
//!
//! Two sources, because neither alone is enough:
//! - the clocks ([`SleepClock`]): the time the machine spent asleep since boot only grows
//!   while it sleeps, so a poll that finds it grown knows a suspend happened and how long
//!   it lasted, whatever suspended the machine and whether anyone announced it;
//! - logind ([`logind`], Linux): `PrepareForSleep(true)` comes *before* the suspend,
//!   while a delay inhibitor holds it back, which is the only moment a "close the app
//!   before the next day starts" reminder can still be shown, and it dates the start of
//!   the sleep exactly.
//!
//! How the service uses them:
//! - at start, `system()` for the clock and `logind::SleepWatch::connect` (an error is
//!   said once at info: sleeps are then found by the clocks alone);
//! - every poll, `SleepDetector::observe(SleepReading::of(clock))`; a [`Slept`] is a
//!   suspended interval to record ([`Slept::interval`], given the latest announcement),
//!   and the same reading's `since_boot` feeds the offline grace ([`crate::grace::Now`]);
//! - on `SleepEvent::Suspending { at }`: remember `at`, send the pre-sleep reminders,
//!   flush the journal, then `SleepWatch::release`; on `Resumed` nothing (the lock is
//!   taken again by the watch).

pub mod announce;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub mod logind;
#[cfg(any(target_os = "linux", windows))]
mod two_clocks;
#[cfg(windows)]
pub mod windows;

pub use announce::{Announcements, Announcer};

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The machine's clocks as far as sleep is concerned.
pub trait SleepClock: Send + Sync {
    /// Total time spent asleep (suspended) since boot. Only grows, and only while the
    /// machine sleeps.
    fn asleep(&self) -> Duration;
    /// Time since boot, sleep included: a monotonic clock that a wall-clock change does
    /// not move and a suspend does not stop (the offline grace counts on it).
    fn since_boot(&self) -> Duration;
}

/// This platform's [`SleepClock`] (Linux: `CLOCK_BOOTTIME` − `CLOCK_MONOTONIC`, moved by
/// the test-only `DAYMETER_TEST_SLEEP_FILE` when set, see [`linux::BootClock::from_env`]).
#[cfg(target_os = "linux")]
pub fn system() -> Box<dyn SleepClock> {
    Box::new(linux::BootClock::from_env())
}

/// The Windows [`SleepClock`]: the tick count counts sleep, the unbiased interrupt time
/// does not (see [`windows::TickClock`]).
#[cfg(windows)]
pub fn system() -> Box<dyn SleepClock> {
    Box::new(windows::TickClock::from_env())
}

/// Elsewhere (macOS, not built or tested yet): a clock that never saw a sleep, and time
/// since boot from the monotonic clock of this process (the grace then also leans on
/// the wall clock's high-water mark, as it does across agent restarts).
#[cfg(not(any(target_os = "linux", windows)))]
pub fn system() -> Box<dyn SleepClock> {
    Box::new(AwakeClock(std::time::Instant::now()))
}

#[cfg(not(any(target_os = "linux", windows)))]
struct AwakeClock(std::time::Instant);

#[cfg(not(any(target_os = "linux", windows)))]
impl SleepClock for AwakeClock {
    fn asleep(&self) -> Duration {
        Duration::ZERO
    }

    fn since_boot(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A word about sleep from whoever can give one before it happens (logind on Linux,
/// the service control manager's power events on Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepEvent {
    /// The machine is about to sleep, dated by the service's clock. The announcer holds
    /// the suspend back (logind's delay inhibitor, the power event's handler) until the
    /// service has sent its pre-sleep reminders and flushed its journal.
    Suspending { at: DateTime<Utc> },
    /// The machine woke up.
    Resumed,
}

/// For tests only: names a file holding a number of seconds (decimal, `12.5`) added to
/// both readings of the sleep clock. A test stops the agent for N seconds, writes N
/// into the file and lets it run again: from inside, exactly what a real suspend of N
/// seconds looks like. Never set in production; announced at warn.
pub const SLEEP_FILE_ENV: &str = "DAYMETER_TEST_SLEEP_FILE";

/// The seconds written in the test file `path` ([`SLEEP_FILE_ENV`]); a missing or
/// unreadable file adds nothing.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
fn injected_seconds(path: &std::path::Path) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or_default()
}

/// The test file named by [`SLEEP_FILE_ENV`], when set (announced at warn).
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
fn injected_file_from_env() -> Option<std::path::PathBuf> {
    let path =
        std::path::PathBuf::from(std::env::var_os(SLEEP_FILE_ENV).filter(|v| !v.is_empty())?);
    tracing::warn!(
        file = %path.display(),
        "{SLEEP_FILE_ENV} is set: this agent's sleep clock is moved on purpose, for testing"
    );
    Some(path)
}

/// Both readings of a [`SleepClock`], taken together once per poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepReading {
    pub asleep: Duration,
    pub since_boot: Duration,
}

impl SleepReading {
    pub fn of(clock: &dyn SleepClock) -> SleepReading {
        SleepReading {
            asleep: clock.asleep(),
            since_boot: clock.since_boot(),
        }
    }
}

/// A suspend found between two polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slept {
    /// How long the machine was asleep.
    pub duration: Duration,
}

impl Slept {
    /// How far an announcement may lie before the sleep it announced: logind waits for
    /// the inhibitor at most `InhibitDelayMaxSec` (5 s by default) and the service finds
    /// the sleep at its first poll after the resume. An announcement further back
    /// belongs to a suspend that was cancelled, and is not used.
    pub const ANNOUNCEMENT_SLACK: Duration = Duration::from_secs(120);

    /// The suspended interval to record, in the service's clock.
    ///
    /// With logind's `PrepareForSleep(true)` instant (`announced`, the latest one since
    /// the previous sleep was recorded) the interval starts there and lasts `duration`:
    /// it starts a few seconds early (the reminders and the journal flush held the
    /// suspend back), which matches what the user saw. Without one, or with one that
    /// cannot be this sleep's (less than `duration` or more than `duration` +
    /// [`Slept::ANNOUNCEMENT_SLACK`] before `now`), the interval is the `duration` that
    /// ends `now`: up to one poll interval after the actual resume, the length exact,
    /// the placement as good as the poll.
    pub fn interval(
        &self,
        now: DateTime<Utc>,
        announced: Option<DateTime<Utc>>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let d = TimeDelta::from_std(self.duration).unwrap_or(TimeDelta::MAX);
        let slack = TimeDelta::from_std(Self::ANNOUNCEMENT_SLACK).unwrap_or(TimeDelta::MAX);
        let fits = |at: &DateTime<Utc>| {
            let before = now - *at;
            before >= d && before <= d.checked_add(&slack).unwrap_or(TimeDelta::MAX)
        };
        match announced.filter(fits) {
            Some(at) => (at, at.checked_add_signed(d).unwrap_or(now)),
            None => (now.checked_sub_signed(d).unwrap_or(now), now),
        }
    }
}

/// Finds suspends in a stream of [`SleepReading`]s. Pure: the caller reads the clock.
#[derive(Debug, Clone, Default)]
pub struct SleepDetector {
    last: Option<Duration>,
}

impl SleepDetector {
    /// Growth of the time asleep below which no sleep is reported. The two clocks are
    /// read by two system calls, so their difference wobbles by the microseconds between
    /// them, in both directions; a real suspend lasts seconds at the very least (the
    /// kernel alone takes longer than that to freeze and thaw the machine), and the
    /// protocol dates instants in whole seconds. One second separates the two with room
    /// on both sides.
    pub const TOLERANCE: Duration = Duration::from_secs(1);

    pub fn new() -> SleepDetector {
        SleepDetector::default()
    }

    /// Takes this poll's reading; `Some` when the machine slept since the previous one.
    /// The first reading only sets the baseline (the agent cannot know what happened
    /// before it started). The baseline moves at every reading, so the clocks' wobble
    /// never adds up into a sleep that did not happen; a reading that went back (only a
    /// rewritten test file can do that) is taken as the new baseline.
    pub fn observe(&mut self, reading: SleepReading) -> Option<Slept> {
        let previous = self.last.replace(reading.asleep)?;
        let grown = reading.asleep.checked_sub(previous)?;
        (grown > Self::TOLERANCE).then_some(Slept { duration: grown })
    }
}

/// A [`SleepClock`] that moves only when told to, for tests of the service.
#[derive(Debug, Default)]
pub struct ManualSleepClock {
    /// (asleep, since_boot)
    readings: Mutex<(Duration, Duration)>,
}

impl ManualSleepClock {
    pub fn new() -> ManualSleepClock {
        ManualSleepClock::default()
    }

    /// The machine ran, awake, for `d`.
    pub fn run(&self, d: Duration) {
        let mut r = self.lock();
        r.1 += d;
    }

    /// The machine slept for `d`.
    pub fn sleep(&self, d: Duration) {
        let mut r = self.lock();
        r.0 += d;
        r.1 += d;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Duration, Duration)> {
        self.readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SleepClock for ManualSleepClock {
    fn asleep(&self) -> Duration {
        self.lock().0
    }

    fn since_boot(&self) -> Duration {
        self.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn reading(asleep_ms: u64) -> SleepReading {
        SleepReading {
            asleep: Duration::from_millis(asleep_ms),
            since_boot: Duration::from_secs(1000),
        }
    }

    #[test]
    fn the_first_reading_only_sets_the_baseline() {
        let mut d = SleepDetector::new();
        assert_eq!(d.observe(reading(3_600_000)), None);
    }

    #[test]
    fn a_sleep_longer_than_the_tolerance_is_reported_with_its_length() {
        let mut d = SleepDetector::new();
        d.observe(reading(500));
        assert_eq!(
            d.observe(reading(90_500)),
            Some(Slept {
                duration: Duration::from_secs(90)
            })
        );
        assert_eq!(d.observe(reading(90_500)), None, "reported once");
    }

    #[test]
    fn wobble_within_the_tolerance_is_not_a_sleep_and_does_not_add_up() {
        let mut d = SleepDetector::new();
        d.observe(reading(0));
        for i in 1..=10 {
            assert_eq!(d.observe(reading(i * 400)), None);
        }
    }

    #[test]
    fn time_asleep_going_back_is_a_new_baseline_not_a_sleep() {
        let mut d = SleepDetector::new();
        d.observe(reading(10_000));
        assert_eq!(d.observe(reading(0)), None);
        assert!(d.observe(reading(5_000)).is_some());
    }

    #[test]
    fn an_unannounced_sleep_ends_at_the_poll_that_found_it() {
        let slept = Slept {
            duration: Duration::from_secs(600),
        };
        let now = at("2026-03-02T09:10:00Z");
        assert_eq!(slept.interval(now, None), (at("2026-03-02T09:00:00Z"), now));
    }

    #[test]
    fn an_announced_sleep_starts_at_the_announcement() {
        let slept = Slept {
            duration: Duration::from_secs(600),
        };
        let announced = at("2026-03-02T08:00:00Z");
        assert_eq!(
            slept.interval(at("2026-03-02T08:10:07Z"), Some(announced)),
            (announced, at("2026-03-02T08:10:00Z"))
        );
    }

    #[test]
    fn an_announcement_that_cannot_be_this_sleeps_is_not_used() {
        let slept = Slept {
            duration: Duration::from_secs(600),
        };
        let now = at("2026-03-02T09:05:00Z");
        let unannounced = (at("2026-03-02T08:55:00Z"), now);
        for announced in [
            "2026-03-02T09:00:00Z", // too recent: the sleep would end after now
            "2026-03-02T08:00:00Z", // an hour back: a suspend that was cancelled
            "2026-03-02T10:00:00Z", // from the future
        ] {
            assert_eq!(
                slept.interval(now, Some(at(announced))),
                unannounced,
                "{announced}"
            );
        }
    }

    #[test]
    fn the_manual_clock_counts_sleep_in_both_readings() {
        let c = ManualSleepClock::new();
        c.run(Duration::from_secs(5));
        c.sleep(Duration::from_secs(7));
        assert_eq!(c.asleep(), Duration::from_secs(7));
        assert_eq!(c.since_boot(), Duration::from_secs(12));
    }
}
