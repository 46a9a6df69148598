//! The Windows [`SleepClock`]: `GetTickCount64` counts the time since boot with sleep
//! and hibernation included, `QueryUnbiasedInterruptTime` the same without them, so
//! their difference is the time spent asleep since boot, as `CLOCK_BOOTTIME −
//! CLOCK_MONOTONIC` is on Linux. Both live in kernel32 on every Windows since 7 and in
//! Wine; `QueryInterruptTime`, the finer one, is Windows 10 only and would stop the
//! agent from loading anywhere older, so it is not used. The tick count moves in steps
//! of the timer interrupt (about 16 ms): far finer than the second below which a
//! growth is not taken as a sleep ([`super::SleepDetector::TOLERANCE`]).
//!
//! The service's power events (`PBT_APMSUSPEND`) announce a sleep before it happens
//! ([`super::announce`]); this clock finds every sleep afterwards whether announced or
//! not, and measures it.

use std::time::Duration;

use windows_sys::Win32::System::SystemInformation::GetTickCount64;
use windows_sys::Win32::System::WindowsProgramming::QueryUnbiasedInterruptTime;

use super::SleepClock;
use super::two_clocks::TwoClocks;

/// The tick count and the unbiased interrupt time, optionally moved by a test file
/// ([`super::SLEEP_FILE_ENV`]).
#[derive(Debug, Default, Clone)]
pub struct TickClock {
    clocks: TwoClocks,
}

impl TickClock {
    pub fn new() -> TickClock {
        TickClock::default()
    }

    /// The machine's clocks, moved by the test file when one is named.
    pub fn from_env() -> TickClock {
        TickClock {
            clocks: TwoClocks::from_env(),
        }
    }
}

/// Milliseconds since boot, sleep included.
fn ticks() -> Duration {
    // SAFETY: takes nothing, cannot fail.
    Duration::from_millis(unsafe { GetTickCount64() })
}

/// Time since boot without sleep, in 100 ns units.
fn unbiased() -> Duration {
    let mut t: u64 = 0;
    // SAFETY: `t` is a valid, writable u64 for the call.
    let ok = unsafe { QueryUnbiasedInterruptTime(&mut t) };
    if ok == 0 {
        // Cannot fail on a valid pointer; were it to, report no sleep rather than a
        // sleep as long as the uptime.
        return ticks();
    }
    Duration::from_nanos(t.saturating_mul(100))
}

impl SleepClock for TickClock {
    fn asleep(&self) -> Duration {
        let awake = unbiased();
        self.clocks.asleep(ticks(), awake)
    }

    fn since_boot(&self) -> Duration {
        self.clocks.since_boot(ticks())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_asleep_is_small_on_a_machine_that_did_not_sleep_and_never_goes_back() {
        let clock = TickClock::new();
        let first = clock.asleep();
        std::thread::sleep(Duration::from_millis(50));
        let second = clock.asleep();
        assert!(second >= first);
        // A test machine (or Wine) has not slept during the test; the clocks' steps
        // differ by well under a second.
        assert!(second - first < super::super::SleepDetector::TOLERANCE);
    }

    #[test]
    fn time_since_boot_grows_with_the_wall() {
        let clock = TickClock::new();
        let a = clock.since_boot();
        std::thread::sleep(Duration::from_millis(100));
        let b = clock.since_boot();
        assert!(b >= a + Duration::from_millis(50), "{a:?} then {b:?}");
    }
}
