//! Starting and stopping the agent, whoever runs it: `daymeter-agent run` in the
//! foreground (systemd, a console, the tests) and, on Windows, the service control
//! manager (`daymeter-agent service`, [`windows`]), both through [`run`], so the two
//! can only differ in how they are told to stop and where sleep is announced from.

#[cfg(windows)]
pub mod windows;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use daymeter_shared::clock::{Clock, ShiftedClock, SystemClock};

use crate::config::Config;
use crate::journal::{ChosenJournal, JournalError, Purpose};
use crate::meter::LocalZone;
use crate::power::Announcements;
use crate::run::Agent;
use crate::watch;

/// The service's name for the service control manager (and the MSI, and
/// `install-service`).
pub const SERVICE_NAME: &str = "daymeter-agent";

/// For tests only: moves this agent's device clock by a signed duration (`2days`,
/// `-90s`), so that the end-to-end tests can run the real binary on a wrong clock and
/// check that it still meters right. Never set in production; announced at warn.
pub const CLOCK_SKEW_ENV: &str = "DAYMETER_TEST_CLOCK_SKEW";

/// Runs the agent of the configuration at `config` until `shutdown` completes; sleep
/// announcements from `announcements` when the caller has a source of them (the
/// Windows service's power events).
pub fn run(
    config: &Path,
    shutdown: impl Future<Output = ()>,
    announcements: Option<Announcements>,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let journal = Arc::new(open_journal(&config)?);
    let source = watch::system();
    let zone = LocalZone::system();
    if zone.is_none() {
        tracing::warn!(
            "no IANA time zone found for this machine; sessions carry their UTC offset only"
        );
    }
    let clock = device_clock()?;
    let mut agent = Agent::start(config, journal, clock, source.as_ref(), zone)?;
    if let Some(announcements) = announcements {
        agent = agent.with_announcements(announcements);
    }
    let agent = Arc::new(agent);
    tracing::info!(user = ?agent.config.user, socket = %agent.config.socket.display(), collector = %agent.config.collector_url, "agent started");
    runtime()?.block_on(agent.run(source, shutdown))?;
    Ok(())
}

/// The agent's runtime: one thread. The agent polls once a second and syncs every few
/// minutes, and the session helper waits on a socket and a timer; a worker pool would
/// only cost memory.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The agent's journal on the configured backend: migrated if the other backend wrote
/// it, healed if damaged (moved aside, salvaged, started afresh) so that metering never
/// waits for a repair.
pub fn open_journal(config: &Config) -> anyhow::Result<ChosenJournal> {
    let dir = config.journal_dir();
    // `status` and `enroll` without a running agent hold the journal for a moment; an
    // agent starting at that moment waits for them rather than failing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ChosenJournal::open(&dir, config.journal, Purpose::Run) {
            Err(JournalError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => {
                return other
                    .with_context(|| format!("cannot open the journal in {}", dir.display()));
            }
        }
    }
}

/// The system clock, moved by [`CLOCK_SKEW_ENV`] when that is set.
pub fn device_clock() -> anyhow::Result<Arc<dyn Clock>> {
    let Some(text) = std::env::var(CLOCK_SKEW_ENV).ok().filter(|t| !t.is_empty()) else {
        return Ok(Arc::new(SystemClock));
    };
    let (sign, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim_start_matches('+')),
    };
    let skew = humantime::parse_duration(magnitude)
        .ok()
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .with_context(|| {
            format!("{CLOCK_SKEW_ENV}={text:?} is not a duration like 2days or -90s")
        })?
        * sign;
    tracing::warn!(
        skew_seconds = skew.num_seconds(),
        "{CLOCK_SKEW_ENV} is set: this agent's clock is moved on purpose, for testing"
    );
    Ok(Arc::new(ShiftedClock::new(Arc::new(SystemClock), skew)))
}
