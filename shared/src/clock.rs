//! The injected clock. No rule reads the system clock itself: the collector and agent
//! pass a [`Clock`], so tests can run a "day" in seconds and replay an audit at any
//! instant.

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
}
