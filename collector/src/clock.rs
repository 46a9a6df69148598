//! The clock `serve` runs on: the system's, or — for tests only, announced in the log —
//! an instant read from a file, so that a test can move a running collector through
//! weeks of scheduled mail and across a restart in seconds.
//!
//! `DAYMETER_TEST_CLOCK_FILE=/path`: the file holds one RFC 3339 instant, read at every
//! reading of the clock (a test writes a new one to move time; the clock stands still
//! between writes). A file that cannot be read or parsed leaves the last good instant.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use daymeter_shared::clock::{Clock, SystemClock};

/// The environment variable of a test clock's file. Never set in production.
pub const TEST_CLOCK_FILE_ENV: &str = "DAYMETER_TEST_CLOCK_FILE";

/// The system clock, or the test clock when [`TEST_CLOCK_FILE_ENV`] is set.
pub fn serve_clock() -> Arc<dyn Clock> {
    let Some(path) = std::env::var_os(TEST_CLOCK_FILE_ENV).filter(|p| !p.is_empty()) else {
        return Arc::new(SystemClock);
    };
    let clock = FileClock {
        path: PathBuf::from(path),
        last: Mutex::new(Utc::now()),
    };
    tracing::warn!(
        path = %clock.path.display(),
        now = %clock.now(),
        "{TEST_CLOCK_FILE_ENV} is set: this collector's clock is read from a file, for testing"
    );
    Arc::new(clock)
}

struct FileClock {
    path: PathBuf,
    last: Mutex<DateTime<Utc>>,
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
        {
            *last = at.to_utc();
        }
        *last
    }
}
