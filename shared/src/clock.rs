//! The injected clock. No rule reads the system clock itself: the collector and agent
//! pass a [`Clock`], so tests can run a "day" in seconds and replay an audit at any
//! instant.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of "now".
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; shared between threads.
#[derive(Debug)]
pub struct ManualClock {
    nanos: AtomicI64,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            nanos: AtomicI64::new(at.timestamp_nanos_opt().unwrap_or_default()),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.nanos.store(
            at.timestamp_nanos_opt().unwrap_or_default(),
            Ordering::SeqCst,
        );
    }

    pub fn advance(&self, by: TimeDelta) {
        self.nanos
            .fetch_add(by.num_nanoseconds().unwrap_or(i64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Another clock moved by a shift that may change while it runs: the agent's device
/// clock corrected by its measured offset to the collector's, and (for tests only,
/// announced in the log) a device clock made wrong on purpose.
pub struct ShiftedClock {
    inner: Arc<dyn Clock>,
    shift_nanos: AtomicI64,
}

impl ShiftedClock {
    pub fn new(inner: Arc<dyn Clock>, shift: TimeDelta) -> Self {
        Self {
            inner,
            shift_nanos: AtomicI64::new(shift.num_nanoseconds().unwrap_or_default()),
        }
    }

    pub fn shift(&self) -> TimeDelta {
        TimeDelta::nanoseconds(self.shift_nanos.load(Ordering::SeqCst))
    }

    pub fn set_shift(&self, shift: TimeDelta) {
        self.shift_nanos.store(
            shift.num_nanoseconds().unwrap_or_default(),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now() + self.shift()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
            .unwrap()
            .to_utc();
        let clock = ManualClock::new(t0);
        assert_eq!(clock.now(), t0);
        clock.advance(TimeDelta::hours(24));
        assert_eq!(clock.now(), t0 + TimeDelta::hours(24));
        clock.set(t0);
        assert_eq!(clock.now(), t0);
    }

    #[test]
    fn a_shifted_clock_follows_its_clock_moved_by_the_current_shift() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
            .unwrap()
            .to_utc();
        let device = Arc::new(ManualClock::new(t0));
        let shifted = ShiftedClock::new(device.clone(), TimeDelta::days(2));
        assert_eq!(shifted.now(), t0 + TimeDelta::days(2));
        device.advance(TimeDelta::minutes(1));
        shifted.set_shift(TimeDelta::seconds(-30));
        assert_eq!(shifted.now(), t0 + TimeDelta::seconds(30));
    }
}
