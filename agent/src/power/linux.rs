//! The Linux [`SleepClock`]: `CLOCK_BOOTTIME` counts sleep, `CLOCK_MONOTONIC` does not,
//! so their difference is exactly the time spent asleep since boot (the kernel adds the
//! suspended time to the boot-time offset at every resume).

use std::path::PathBuf;
use std::time::Duration;

use super::SleepClock;
use super::two_clocks::TwoClocks;

pub use super::SLEEP_FILE_ENV;

/// `CLOCK_BOOTTIME` and `CLOCK_MONOTONIC`, optionally moved by a test file.
#[derive(Debug, Default, Clone)]
pub struct BootClock {
    clocks: TwoClocks,
}

impl BootClock {
    /// The machine's clocks, untouched.
    pub fn new() -> BootClock {
        BootClock::default()
    }

    /// The machine's clocks, moved by the file that [`SLEEP_FILE_ENV`] names when it is
    /// set (tests only, announced at warn).
    pub fn from_env() -> BootClock {
        BootClock {
            clocks: TwoClocks::from_env(),
        }
    }

    /// The machine's clocks plus the seconds written in `file` (tests only). A missing or
    /// unreadable file adds nothing.
    pub fn injected(file: PathBuf) -> BootClock {
        BootClock {
            clocks: TwoClocks::injected(file),
        }
    }
}

impl SleepClock for BootClock {
    fn asleep(&self) -> Duration {
        let boot = read(libc::CLOCK_BOOTTIME);
        let mono = read(libc::CLOCK_MONOTONIC);
        self.clocks.asleep(boot, mono)
    }

    fn since_boot(&self) -> Duration {
        self.clocks.since_boot(read(libc::CLOCK_BOOTTIME))
    }
}

/// One clock; zero if the kernel refuses (it cannot for these two clocks, which every
/// kernel since 2.6.39 has).
fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}
