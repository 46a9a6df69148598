//! The service loop: poll, journal, sync, answer `status`.
//!
//! Three tasks share one [`Agent`]:
//! - the **poller** lists product processes every `poll_interval`, opens and closes
//!   sessions and flushes those changes to the journal before anything else, and
//!   persists every open session's `last_seen` every [`LAST_SEEN_EVERY`];
//! - the **syncer** sends what the collector still needs on every open and close and
//!   every `sync_interval`, backing off (with jitter, up to `retry_max`) while the
//!   collector is away, and drops a session from the journal only once a copy carrying
//!   its final `end` came back accepted;
//! - the **status server** answers `daymeter-agent status` and `enroll`.
//!
//! Time comes from an injected [`Clock`] (the device's, which sessions are metered
//! with once corrected by the offset each sync measures to the collector's clock; see
//! [`crate::offset`]) and processes from an injected
//! [`ProcessSource`], so tests drive the real loop with real processes, a real journal
//! and a real collector, at the speed they choose.
//!
//! A file per role: the poller and the shared state here; [`sync`] the syncer and
//! enrolment; [`status`] what `status` reports; [`power`] sleeps and the offline grace;
//! [`remind`] each poll's reminders; [`helpers`] the session helpers' links.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use daymeter_shared::catalog::{Catalog, builtin};
use daymeter_shared::clock::{Clock, ShiftedClock};
use daymeter_shared::policy::Policy;
use daymeter_shared::recognition::Recogniser;

mod helpers;
mod power;
mod remind;
mod status;
mod sync;

pub use helpers::{HelperId, serve as serve_helper};
pub use status::offline_status;
use status::{Remembered, read_offset};
pub use sync::{enroll_offline, hostname};

use std::collections::{BTreeMap, HashMap};

use crate::activity::Activity;
use crate::config::Config;
use crate::enforce::Closer;
use crate::grace::GraceKeeper;
use crate::journal::{Durability, Enrolment, Journal, JournalError, Tracked};
use crate::meter::{Change, LocalZone, Meter};
use crate::power::{SleepClock, SleepDetector};
use crate::reminder::due::{Due, Moment};
use crate::status::{ActivityItem, Inputs, SentItem, Status};
use crate::sync::{Backoff, Client, SyncAnswer, SyncError, SyncRequest};
use crate::watch::ProcessSource;

/// Open sessions' `last_seen` reaches the disk at least this often: a crash costs at
/// most this much of a session's tail, and the disk sees one write per period instead
/// of one per poll.
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(30);

/// Sessions per sync request: well under the collector's 500-session and 1 MiB limits
/// even with long idle lists.
const BATCH: usize = 200;

const ANSWER_KEY: &str = "sync_answer";
/// The offline grace's clocks and what it did since the last sign-in.
const GRACE_KEY: &str = "grace";
/// Each licence user's part of the last answers (open windows, plans, balance).
const ANSWERS_KEY: &str = "sync_answers_by_user";
const LAST_SYNC_KEY: &str = "last_sync";
const REVOKED_KEY: &str = "revoked";
/// The measured clock offset (collector − device), in milliseconds.
const OFFSET_KEY: &str = "clock_offset_ms";

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("status socket {path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no enrolment secret: set DAYMETER_ENROLLMENT_SECRET or enrollment_secret in the configuration"
    )]
    NoSecret,
    /// The collector refused the enrolment secret (not a revocation: nothing was
    /// enrolled yet, so fixing the secret and retrying is right).
    #[error("the collector refused the enrolment secret: {0}")]
    EnrollRefused(String),
}

/// What the tasks share. Locks are held briefly and never across an `.await`.
pub struct Agent {
    pub config: Config,
    journal: Arc<dyn Journal>,
    /// The device clock: what `agent_time` says and offsets are measured against.
    device_clock: Arc<dyn Clock>,
    /// The device clock corrected by the measured offset: what sessions are metered
    /// with (see [`crate::offset`]).
    clock: Arc<ShiftedClock>,
    client: Client,
    state: Mutex<State>,
    /// Wakes the syncer: a session opened or closed, or `enroll` was asked for.
    sync_now: Notify,
    /// Held by an enrolment from reading the previous enrolment to storing the new one:
    /// two at once would send the same proof, and the loser would enrol as a new device.
    enrolling: tokio::sync::Mutex<()>,
    stopping: AtomicBool,
    /// Time asleep and since boot (sleep detection, the grace's monotonic clock).
    sleep_clock: Box<dyn SleepClock>,
    /// Asks products to close when the offline grace runs out.
    closer: Box<dyn Closer>,
    /// Sleep announcements from outside (the Windows service's power events, tests),
    /// taken by [`Agent::run`].
    announcements: Mutex<Option<crate::power::Announcements>>,
}

struct State {
    meter: Meter,
    recogniser: Recogniser,
    /// Bumped when the catalog changes, so the poller re-classifies processes.
    catalog_version: u64,
    policy: Policy,
    answer: Option<SyncAnswer>,
    last_sync: Option<DateTime<Utc>>,
    last_error: Option<String>,
    enrolment: Option<Enrolment>,
    revoked: bool,
    /// Sessions whose last journal write failed; retried every poll.
    unsaved: Vec<Tracked>,
    /// The products recognised now (names and rates for reminders).
    catalog: Catalog,
    /// The last answer for each licence user: their windows, plans and balance.
    answers: BTreeMap<String, SyncAnswer>,
    /// Licence users by owner uid, resolved once per uid.
    users_by_uid: HashMap<u32, String>,
    /// Each account's input activity, from its session helpers.
    activity: Activity,
    /// The reminders decided so far (each at most once per window and kind).
    due: Due,
    /// The session helpers connected now.
    helpers: helpers::Links,
    /// The last sleep seen, for `status`.
    last_sleep: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The latest reminders decided, for `status` (at most [`SENT_LOG`]).
    sent_log: Vec<SentReminder>,
    detector: SleepDetector,
    /// logind's latest announcement of a sleep not yet found by the clocks.
    announced: Option<DateTime<Utc>>,
    keeper: GraceKeeper,
}

/// How many decided reminders `status` can show.
const SENT_LOG: usize = 64;

/// A reminder as decided, for `status`.
#[derive(Debug, Clone)]
struct SentReminder {
    uid: Option<u32>,
    at: DateTime<Utc>,
    /// Whether a helper of the account was there to show it.
    shown: bool,
    reminder: crate::reminder::Reminder,
}

impl Agent {
    /// Opens the agent's state from the journal: the cached answer (catalog, policy),
    /// the enrolment and every session; open sessions whose process still runs are
    /// adopted, the others closed at their `last_seen` (flushed before returning).
    pub fn start(
        config: Config,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        source: &dyn ProcessSource,
        zone: Option<LocalZone>,
    ) -> Result<Agent, RunError> {
        let client = Client::new(&config.collector_url, config.ca_file.as_deref())?;
        let Remembered {
            answer,
            answers,
            last_sync,
            revoked,
        } = Remembered::read(journal.as_ref())?;
        let enrolment = journal
            .enrolment()?
            .filter(|e| e.collector_url == config.collector_url);
        let catalog = effective_catalog(
            config.catalog.as_ref(),
            answer.as_ref().and_then(|a| a.catalog.as_ref()),
        );
        let policy = config.overrides.over(
            answer
                .as_ref()
                .and_then(|a| a.policy.clone())
                .unwrap_or_default(),
        );
        // Windows names accounts by SID: the journal's table gives them the ids the
        // process source, the named pipe and `users::login_of` use.
        #[cfg(windows)]
        crate::accounts::install(Arc::new(crate::accounts::Accounts::load(journal.clone())?));
        let offset = read_offset(journal.as_ref())?;
        if !offset.is_zero() {
            tracing::warn!(
                offset_seconds = offset.num_seconds(),
                "the device clock is off the collector's; metering with the offset measured earlier"
            );
        }
        let mut keeper: GraceKeeper = journal
            .cached(GRACE_KEY)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if keeper.clock().sign_in().is_none()
            && let Some(at) = last_sync
        {
            // A journal from before the grace was kept: the last sync is the sign-in.
            keeper.signed_in(crate::grace::Now {
                wall: at,
                since_boot: crate::power::system().since_boot(),
            });
        }
        let mut meter = Meter::new(zone);
        meter.set_offset(offset);
        let closed = meter.restore(journal.sessions()?, |k| source.alive(k));
        for t in &closed {
            journal.put(t, Durability::Flush)?;
        }
        tracing::info!(
            adopted = meter.open().count(),
            closed_at_last_seen = closed.len(),
            waiting = meter.closed().count(),
            "journal opened"
        );
        Ok(Agent {
            client,
            journal,
            clock: Arc::new(ShiftedClock::new(clock.clone(), offset)),
            device_clock: clock,
            state: Mutex::new(State {
                meter,
                recogniser: Recogniser::new(&catalog),
                catalog,
                catalog_version: 0,
                policy,
                answer,
                last_sync,
                last_error: None,
                enrolment,
                revoked,
                unsaved: Vec::new(),
                answers,
                users_by_uid: HashMap::new(),
                activity: Activity::default(),
                due: Due::default(),
                helpers: helpers::Links::default(),
                last_sleep: None,
                sent_log: Vec::new(),
                detector: SleepDetector::new(),
                announced: None,
                keeper,
            }),
            config,
            sync_now: Notify::new(),
            enrolling: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            sleep_clock: crate::power::system(),
            closer: crate::enforce::system(),
            announcements: Mutex::new(None),
        })
    }

    /// Replaces the platform's sleep clock and closer (tests drive a suspend or watch
    /// what would be closed); call before [`Agent::run`].
    pub fn with_platform(
        mut self,
        sleep_clock: Box<dyn SleepClock>,
        closer: Box<dyn Closer>,
    ) -> Agent {
        self.sleep_clock = sleep_clock;
        self.closer = closer;
        self
    }

    /// Hands the agent the receiving end of sleep announcements (the Windows service's
    /// power events; a test's stand-in for them); call before [`Agent::run`].
    pub fn with_announcements(self, announcements: crate::power::Announcements) -> Agent {
        *self.announcements.lock().unwrap_or_else(|p| p.into_inner()) = Some(announcements);
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the poller, the syncer and the status server until `shutdown` completes,
    /// then persists every open session's `last_seen` and returns.
    pub async fn run(
        self: Arc<Self>,
        mut source: Box<dyn ProcessSource>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let status = crate::status_socket::serve(self.clone())?;
        let sleep = tokio::spawn(self.clone().watch_sleep());
        let announced = self
            .announcements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|a| tokio::spawn(self.clone().follow_announcements(a)));
        let syncer = tokio::spawn(self.clone().sync_loop());
        let poll_interval = self.config.poll_interval;
        let mut ticker = tokio::time::interval(poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_version = 0;
        let mut last_persist = std::time::Instant::now();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {}
            }
            self.poll_once(source.as_mut(), &mut seen_version);
            if last_persist.elapsed() >= LAST_SEEN_EVERY {
                self.persist_open();
                last_persist = std::time::Instant::now();
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.sync_now.notify_one();
        syncer.abort();
        status.abort();
        sleep.abort();
        if let Some(task) = announced {
            task.abort();
        }
        self.persist_open();
        tracing::info!("agent stopped; open sessions kept in the journal");
        Ok(())
    }

    /// One poll: list product processes, record opens and closes (flushed), advance
    /// `last_seen` in memory. Returns whether anything opened or closed.
    pub fn poll_once(&self, source: &mut dyn ProcessSource, seen_version: &mut u64) -> bool {
        let mut state = self.state();
        // Read under the lock, so that an offset learnt by the syncer meanwhile is in it.
        let now = self.clock.now();
        if state.catalog_version != *seen_version {
            source.forget();
            *seen_version = state.catalog_version;
        }
        let running = {
            let recogniser = &state.recogniser;
            let classify = |seen: crate::watch::Seen<'_>| {
                recogniser.recognise(seen.exe, seen.args).map(str::to_owned)
            };
            match source.poll(&classify) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list processes; will try again");
                    return false;
                }
            }
        };
        let state = &mut *state;
        let config = &self.config;
        let users = &mut state.users_by_uid;
        let mut user_of = |uid: Option<u32>| match uid {
            Some(uid) => users
                .entry(uid)
                .or_insert_with(|| config.licence_user(crate::users::login_of(uid).as_deref()))
                .clone(),
            None => config.licence_user(None),
        };
        let changes = state.meter.observe(&running, now, &mut user_of);
        let slept = self.check_sleep(state, now);
        let mut retry = std::mem::take(&mut state.unsaved);
        for change in &changes {
            let (Change::Opened(t) | Change::Closed(t)) = change;
            match change {
                Change::Opened(_) => {
                    tracing::info!(product = %t.session.product, id = %t.session.id, pid = t.process.pid, "product started: session opened")
                }
                Change::Closed(_) => {
                    tracing::info!(product = %t.session.product, id = %t.session.id, pid = t.process.pid, "product ended: session closed")
                }
            }
            retry.push(t.clone());
        }
        for t in retry {
            if let Err(e) = self.journal.put(&t, Durability::Flush) {
                tracing::error!(error = %e, id = %t.session.id, "cannot write the session to the journal; keeping it in memory and retrying");
                state.unsaved.push(t);
            }
        }
        let launched: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Opened(t) => Some(t.session.id.to_string()),
                Change::Closed(_) => None,
            })
            .collect();
        self.remind(state, now, &launched, Moment::Poll);
        self.step_grace(state, now);
        if !changes.is_empty() || slept {
            self.sync_now.notify_one();
        }
        !changes.is_empty()
    }

    /// Writes every open session's current `last_seen` and flushes.
    pub fn persist_open(&self) {
        let state = self.state();
        self.save_grace(&state);
        for t in state.meter.open() {
            if let Err(e) = self.journal.put(t, Durability::Lazy) {
                tracing::warn!(error = %e, id = %t.session.id, "cannot record last_seen");
            }
        }
        drop(state);
        if let Err(e) = self.journal.flush() {
            tracing::warn!(error = %e, "cannot flush the journal");
        }
    }

    /// Drops a session the collector rejected (`daymeter-agent ack ID`): the admin has
    /// seen it; it is never sent again anyway.
    pub fn acknowledge(&self, id: &str) -> Result<(), String> {
        let mut state = self.state();
        if !state.meter.drop_rejected(id) {
            return Err(format!("no rejected session {id:?} (status lists them)"));
        }
        self.journal
            .remove(id)
            .map_err(|e| format!("cannot drop {id} from the journal: {e}"))?;
        tracing::info!(%id, "rejected session acknowledged and dropped");
        Ok(())
    }
}

/// What the agent recognises: the configured catalog (else the built-in one) overlaid
/// with the collector's, whose entries win by product id. A product the collector does not list yet is still
/// metered: the collector stores its sessions and accounts them once it is imported, so
/// an admin who has not imported a catalog yet loses nothing.
pub fn effective_catalog(configured: Option<&Catalog>, collector: Option<&Catalog>) -> Catalog {
    let mut catalog = configured.cloned().unwrap_or_else(builtin);
    if let Some(c) = collector {
        catalog.extend(c.iter().map(|(id, p)| (id.clone(), p.clone())));
    }
    catalog
}
