//! What every platform's [`super::SleepClock`] does with its two clocks, one that
//! counts sleep and one that does not: time asleep is their difference, kept from ever
//! going back, plus the test file's seconds ([`super::SLEEP_FILE_ENV`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub(super) struct TwoClocks {
    injected: Option<PathBuf>,
    /// The largest time asleep read so far, in nanoseconds. The two clocks are read by
    /// two calls (and on Windows tick at different steps), so their difference comes out
    /// a little more or less each time; keeping the largest makes it never go back.
    asleep_max: Arc<AtomicU64>,
}

impl TwoClocks {
    /// Moved by the file [`super::SLEEP_FILE_ENV`] names when it is set (tests only,
    /// announced at warn).
    pub(super) fn from_env() -> TwoClocks {
        TwoClocks {
            injected: super::injected_file_from_env(),
            ..TwoClocks::default()
        }
    }

    /// Moved by the seconds written in `file` (tests only). A missing or unreadable
    /// file adds nothing. (Linux's tests name the file directly; Windows's go through
    /// the environment.)
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn injected(file: PathBuf) -> TwoClocks {
        TwoClocks {
            injected: Some(file),
            ..TwoClocks::default()
        }
    }

    /// Time asleep since boot from one reading of each clock.
    pub(super) fn asleep(&self, with_sleep: Duration, without_sleep: Duration) -> Duration {
        let nanos =
            u64::try_from(with_sleep.saturating_sub(without_sleep).as_nanos()).unwrap_or(u64::MAX);
        let max = self
            .asleep_max
            .fetch_max(nanos, Ordering::Relaxed)
            .max(nanos);
        Duration::from_nanos(max) + self.extra()
    }

    /// Time since boot, sleep included, from the clock that counts it.
    pub(super) fn since_boot(&self, with_sleep: Duration) -> Duration {
        with_sleep + self.extra()
    }

    fn extra(&self) -> Duration {
        self.injected
            .as_deref()
            .map(super::injected_seconds)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_asleep_never_goes_back_when_the_two_readings_wobble() {
        let clocks = TwoClocks::default();
        let s = Duration::from_secs;
        assert_eq!(clocks.asleep(s(100), s(40)), s(60));
        // The second call read the clocks a moment apart the other way.
        assert_eq!(clocks.asleep(s(101), s(42)), s(60));
        assert_eq!(clocks.asleep(s(200), s(50)), s(150));
    }
}
