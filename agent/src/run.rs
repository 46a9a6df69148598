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

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;

use daymeter_shared::catalog::{Catalog, builtin};
use daymeter_shared::clock::{Clock, ShiftedClock};
use daymeter_shared::policy::Policy;
use daymeter_shared::recognition::Recogniser;

mod helpers;
mod power;
mod remind;

pub use helpers::{HelperId, serve as serve_helper};

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
        let policy = answer
            .as_ref()
            .and_then(|a| a.policy.clone())
            .unwrap_or_default();
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

    async fn sync_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.sync_now.notified() => {}
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (interval, retry_max, revoked) = {
                let s = self.state();
                (s.policy.sync_interval, s.policy.retry_max, s.revoked)
            };
            if revoked {
                // Wait for `daymeter-agent enroll`; it wakes us.
                wait = Duration::from_secs(3600);
                continue;
            }
            match self.sync_once().await {
                Ok(()) => {
                    backoff.reset();
                    wait = interval;
                }
                Err(e) => {
                    self.state().last_error = Some(e.to_string());
                    match &e {
                        RunError::Sync(SyncError::Unauthorized(m)) => {
                            tracing::error!(reason = %m, "the collector refused this device (revoked?); journaling goes on; run `daymeter-agent enroll` to enrol again");
                            self.set_revoked(true);
                        }
                        RunError::Sync(s) if s.is_transient() => {
                            wait = backoff.next_delay(retry_max);
                            tracing::warn!(error = %e, retry_in = ?wait, failures = backoff.failures(), "collector unreachable; sessions stay in the journal");
                        }
                        _ => {
                            wait = backoff.next_delay(retry_max.max(interval));
                            tracing::error!(error = %e, retry_in = ?wait, "sync failed");
                        }
                    }
                }
            }
        }
    }

    /// Records a revocation (or its end). The revoked enrolment is kept, owner-only in
    /// the journal like any enrolment: its token is the proof with which the next
    /// `daymeter-agent enroll` keeps the device id. The revoked flag alone stops syncs.
    fn set_revoked(&self, revoked: bool) {
        self.state().revoked = revoked;
        let value: &[u8] = if revoked { b"1" } else { b"0" };
        if let Err(e) = self.journal.set_cached(REVOKED_KEY, value) {
            tracing::warn!(error = %e, "cannot record the revocation in the journal");
        }
    }

    /// Enrols now with the configured secret (`daymeter-agent enroll`), replacing any
    /// earlier (revoked) enrolment and keeping its device id where the collector takes
    /// it as proof.
    pub async fn enroll(&self) -> Result<Enrolment, RunError> {
        let secret = self
            .config
            .enrollment_secret
            .clone()
            .ok_or(RunError::NoSecret)?;
        let _one_at_a_time = self.enrolling.lock().await;
        let previous = self.state().enrolment.clone();
        let enrolment = enroll_keeping(&self.client, secret.expose(), previous.as_ref()).await?;
        self.journal.set_enrolment(Some(&enrolment))?;
        self.state().enrolment = Some(enrolment.clone());
        self.set_revoked(false);
        tracing::info!(%enrolment, "enrolled");
        self.sync_now.notify_one();
        Ok(enrolment)
    }

    /// Sends everything the collector still needs (an empty sync when nothing is
    /// pending: it still refreshes catalog, policy and grace).
    pub async fn sync_once(&self) -> Result<(), RunError> {
        let enrolled = self.state().enrolment.clone();
        let enrolment = match enrolled {
            Some(e) => e,
            None => self.enroll().await?,
        };
        // Never tell the collector a `last_seen` the journal could lose: after a crash the
        // session is closed at the journal's `last_seen`, and a final copy shorter than an
        // open copy already sent would leave the collector's copy open for good. The
        // open sessions are written under the lock, so a close cannot be overwritten.
        let pending: Vec<Tracked> = {
            let state = self.state();
            for t in state.meter.open() {
                self.journal.put(t, Durability::Lazy)?;
            }
            state.meter.to_send().into_iter().cloned().collect()
        };
        self.journal.flush()?;
        // The protocol carries one user per request: one request (or more, by BATCH)
        // per licence user with sessions to send; an empty sync still refreshes
        // catalog, policy and grace.
        let fallback = self.config.licence_user(None);
        let mut by_user: BTreeMap<String, Vec<Tracked>> = BTreeMap::new();
        for t in pending {
            let user = t.user.clone().unwrap_or_else(|| fallback.clone());
            by_user.entry(user).or_default().push(t);
        }
        if by_user.is_empty() {
            by_user.insert(fallback, Vec::new());
        }
        for (user, sessions) in &by_user {
            let mut chunks: Vec<&[Tracked]> = sessions.chunks(BATCH).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                let sent = self.device_clock.now();
                let request = SyncRequest {
                    user,
                    agent_time: sent.to_rfc3339(),
                    sessions: chunk.iter().map(|t| &t.session).collect(),
                };
                let answer = self.client.sync(&enrolment.device_token, &request).await?;
                let received = self.device_clock.now();
                if let Some(server_time) = answer.server_time {
                    self.learn_offset(sent, received, server_time);
                }
                self.apply(user, chunk, answer);
            }
        }
        Ok(())
    }

    /// Measures the offset in one exchange and, when it changed beyond the noise,
    /// meters with it from now on and keeps it in the journal.
    fn learn_offset(&self, sent: DateTime<Utc>, received: DateTime<Utc>, server: DateTime<Utc>) {
        let Some(measured) = crate::offset::measure(sent, received, server) else {
            tracing::debug!("sync round trip too long to measure the clock offset");
            return;
        };
        let mut state = self.state();
        let current = self.clock.shift();
        let next = crate::offset::next(current, measured);
        if next == current {
            return;
        }
        self.clock.set_shift(next);
        state.meter.set_offset(next);
        drop(state);
        tracing::warn!(
            offset_seconds = next.num_seconds(),
            previous_seconds = current.num_seconds(),
            "the device clock is off the collector's; metering with the collector's time"
        );
        if let Err(e) = self
            .journal
            .set_cached(OFFSET_KEY, next.num_milliseconds().to_string().as_bytes())
        {
            tracing::warn!(error = %e, "cannot record the clock offset");
        }
    }

    /// Takes a sync answer: drops acknowledged final copies, keeps rejections with
    /// their reason (a `clock_ahead` one is corrected and sent again), caches catalog,
    /// policy, grace and windows.
    fn apply(&self, user: &str, sent: &[Tracked], answer: SyncAnswer) {
        let now = self.clock.now();
        let mut state = self.state();
        for id in &answer.accepted {
            let final_copy = sent
                .iter()
                .any(|t| t.session.id == id.as_str() && t.session.end.is_some());
            if state.meter.accepted(id, final_copy)
                && let Err(e) = self.journal.remove(id)
            {
                tracing::warn!(error = %e, %id, "cannot drop an acknowledged session from the journal; it will be sent again (harmless)");
            }
        }
        let mut resend = false;
        for r in &answer.rejected {
            let reason = r.reason();
            let Some(id) = r.id.as_deref() else {
                tracing::warn!(%reason, "the collector rejected a session without naming it");
                continue;
            };
            if r.error.get("code").and_then(serde_json::Value::as_str) == Some("clock_ahead") {
                let field = r.error.get("field").and_then(serde_json::Value::as_str);
                let corrected = state.meter.clock_ahead(id, field.unwrap_or("start"), now);
                tracing::warn!(%id, %reason, corrected = corrected.is_some(), "the collector found the session dated ahead of its clock; it is sent again");
                if let Some(t) = corrected {
                    resend = true;
                    if let Err(e) = self.journal.put(&t, Durability::Flush) {
                        tracing::warn!(error = %e, %id, "cannot record the corrected session");
                    }
                }
                continue;
            }
            tracing::warn!(%id, %reason, "the collector rejected a session; it is kept and not sent again");
            if let Some(t) = state.meter.rejected(id, &reason)
                && let Err(e) = self.journal.put(&t, Durability::Flush)
            {
                tracing::warn!(error = %e, %id, "cannot record the rejection");
            }
        }
        if let Some(catalog) = &answer.catalog {
            let current: Option<&Catalog> = state.answer.as_ref().and_then(|a| a.catalog.as_ref());
            if current != Some(catalog) {
                state.catalog = effective_catalog(self.config.catalog.as_ref(), Some(catalog));
                state.recogniser = Recogniser::new(&state.catalog);
                state.catalog_version += 1;
                tracing::info!(products = catalog.len(), "catalog from the collector");
            }
        }
        if let Some(policy) = &answer.policy {
            state.policy = policy.clone();
        }
        state.last_sync = Some(now);
        state.last_error = None;
        let signed_in = self.grace_now();
        state.keeper.signed_in(signed_in);
        self.save_grace(&state);
        match serde_json::to_vec(&answer) {
            Ok(bytes) => {
                if let Err(e) = self.journal.set_cached(ANSWER_KEY, &bytes) {
                    tracing::warn!(error = %e, "cannot cache the collector's answer");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the collector's answer"),
        }
        if let Err(e) = self
            .journal
            .set_cached(LAST_SYNC_KEY, now.to_rfc3339().as_bytes())
        {
            tracing::warn!(error = %e, "cannot record the sync time");
        }
        state.answers.insert(user.to_owned(), answer.clone());
        match serde_json::to_vec(&state.answers) {
            Ok(bytes) => {
                if let Err(e) = self.journal.set_cached(ANSWERS_KEY, &bytes) {
                    tracing::warn!(error = %e, "cannot cache the collector's answers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the collector's answers"),
        }
        state.answer = Some(answer);
        drop(state);
        if resend {
            self.sync_now.notify_one();
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

    /// The status the running agent reports: every session, or with `only_owner` the
    /// sessions of that account's processes.
    pub fn status(&self, only_owner: Option<u32>) -> Status {
        let now = self.clock.now();
        let state = self.state();
        let sessions: Vec<&Tracked> = state.meter.open().chain(state.meter.closed()).collect();
        let idle_after = state.policy.idle_after;
        let mut uids: Vec<u32> = state.meter.open().filter_map(|t| t.owner).collect();
        uids.extend(state.activity.uids());
        uids.sort_unstable();
        uids.dedup();
        let activity = uids
            .into_iter()
            .map(|uid| ActivityItem {
                uid,
                helper: state.activity.has_helper(uid),
                idle_since: state.activity.idle_since(uid, now, idle_after),
                source: state.activity.of(uid).and_then(|a| a.source.clone()),
            })
            .collect();
        let window =
            chrono::TimeDelta::from_std(state.policy.window).unwrap_or(chrono::TimeDelta::MAX);
        let since = now
            .checked_sub_signed(window)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let reminders = state
            .sent_log
            .iter()
            .filter(|r| r.at >= since)
            .map(|r| SentItem {
                at: r.at,
                kind: r.reminder.kind,
                product: r.reminder.product.clone(),
                uid: r.uid,
                shown: r.shown,
            })
            .collect();
        Status::build(Inputs {
            running: true,
            now,
            user: self.config.user.as_deref(),
            collector_url: &self.config.collector_url,
            device_id: state.enrolment.as_ref().map(|e| e.device_id.as_str()),
            revoked: state.revoked,
            last_sync: state.last_sync,
            last_error: state.last_error.as_deref(),
            answer: state.answer.as_ref(),
            answers: &state.answers,
            policy: &state.policy,
            sessions: &sessions,
            only_owner,
            activity,
            last_sleep: state.last_sleep.map(|(a, b)| [a, b]),
            reminders,
            grace: self.grace_items(&state),
        })
    }
}

/// What the journal remembers of the collector between runs.
struct Remembered {
    answer: Option<SyncAnswer>,
    answers: BTreeMap<String, SyncAnswer>,
    last_sync: Option<DateTime<Utc>>,
    revoked: bool,
}

impl Remembered {
    /// An unreadable cached value counts as absent: it is refreshed at the next sync.
    fn read(journal: &dyn Journal) -> Result<Remembered, RunError> {
        Ok(Remembered {
            answer: journal
                .cached(ANSWER_KEY)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            answers: journal
                .cached(ANSWERS_KEY)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default(),
            last_sync: journal
                .cached(LAST_SYNC_KEY)?
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .map(|t| t.with_timezone(&Utc)),
            revoked: journal.cached(REVOKED_KEY)?.is_some_and(|b| b == b"1"),
        })
    }
}

/// The status read straight from the journal, when no agent runs.
pub fn offline_status(
    config: &Config,
    journal: &dyn Journal,
    now: DateTime<Utc>,
) -> Result<Status, RunError> {
    let Remembered {
        answer,
        answers,
        last_sync,
        revoked,
    } = Remembered::read(journal)?;
    let enrolment = journal.enrolment()?;
    let now = now + read_offset(journal)?;
    let policy = answer
        .as_ref()
        .and_then(|a| a.policy.clone())
        .unwrap_or_default();
    let tracked = journal.sessions()?;
    let sessions: Vec<&Tracked> = tracked.iter().collect();
    Ok(Status::build(Inputs {
        running: false,
        now,
        user: config.user.as_deref(),
        collector_url: &config.collector_url,
        device_id: enrolment.as_ref().map(|e| e.device_id.as_str()),
        revoked,
        last_sync,
        last_error: None,
        answer: answer.as_ref(),
        answers: &answers,
        policy: &policy,
        sessions: &sessions,
        only_owner: None,
        activity: Vec::new(),
        last_sleep: None,
        reminders: Vec::new(),
        grace: Vec::new(),
    }))
}

/// The clock offset measured earlier; an unreadable value counts as none (it is
/// measured again at the next sync).
fn read_offset(journal: &dyn Journal) -> Result<TimeDelta, RunError> {
    Ok(journal
        .cached(OFFSET_KEY)?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(crate::offset::from_millis)
        .unwrap_or_default())
}

/// Enrols with the collector without a running agent (`daymeter-agent enroll`).
pub async fn enroll_offline(config: &Config, journal: &dyn Journal) -> Result<Enrolment, RunError> {
    let secret = config.enrollment_secret.clone().ok_or(RunError::NoSecret)?;
    let client = Client::new(&config.collector_url, config.ca_file.as_deref())?;
    let previous = journal
        .enrolment()?
        .filter(|e| e.collector_url == config.collector_url.trim_end_matches('/'));
    let enrolment = enroll_keeping(&client, secret.expose(), previous.as_ref()).await?;
    journal.set_enrolment(Some(&enrolment))?;
    journal.set_cached(REVOKED_KEY, b"0")?;
    Ok(enrolment)
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

/// Enrols, sending `previous` (an enrolment with this collector) as proof so that the
/// device keeps its id. A collector that refuses the proof (it lost the device, or the
/// token was replaced since) is asked again without it: a new device id is better than
/// none, though the copies of sessions still open then disagree with the earlier ones.
async fn enroll_keeping(
    client: &Client,
    secret: &str,
    previous: Option<&Enrolment>,
) -> Result<Enrolment, RunError> {
    match client.enroll(secret, &hostname(), previous).await {
        Err(SyncError::ProofRefused(reason)) => {
            tracing::warn!(
                ?reason,
                "the collector does not take this device's previous enrolment as proof; enrolling as a new device"
            );
            client
                .enroll(secret, &hostname(), None)
                .await
                .map_err(refused_secret)
        }
        other => other.map_err(refused_secret),
    }
}

fn refused_secret(e: SyncError) -> RunError {
    match e {
        SyncError::Unauthorized(m) => RunError::EnrollRefused(m),
        other => RunError::Sync(other),
    }
}

/// This machine's name, for the collector's device list.
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // or truncates, and we stop at the first NUL either way.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..end])
                && !name.is_empty()
            {
                return name.to_owned();
            }
        }
    }
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".to_owned())
}
