//! Each poll's look at sleep and the offline grace, and the logind watch.
//!
//! - A sleep is found by the growth of the time asleep ([`crate::power`]) at the first
//!   poll after the resume, dated from logind's announcement when there was one; it is
//!   recorded on every open session (`suspended`, folded into `idle`) and journaled at
//!   once, and a sync is started so the collector learns it.
//! - The grace ([`crate::grace`]) is stepped every poll; its warnings become reminders
//!   for the session's owner, its asks and kills go to the platform's
//!   [`crate::enforce::Closer`].
//! - With logind, a delay inhibitor holds the suspend back while the pre-sleep
//!   reminders go out and the journal is flushed, then is released.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use daymeter_shared::clock::Clock;
use daymeter_shared::entitlement::Plan;

use super::{Agent, GRACE_KEY, State};
use crate::grace::{GraceAction, GraceSession, Now};
use crate::journal::Durability;
use crate::power::SleepReading;
use crate::reminder::due::Moment;
use crate::reminder::{Kind, Reminder};

impl Agent {
    /// The instant both grace clocks read now.
    pub(super) fn grace_now(&self) -> Now {
        Now {
            wall: self.device_clock.now(),
            since_boot: self.sleep_clock.since_boot(),
        }
    }

    /// Records a sleep that ended since the previous poll, if any. Returns whether one
    /// was found.
    pub(super) fn check_sleep(&self, state: &mut State, now: DateTime<Utc>) -> bool {
        let Some(slept) = state.detector.observe(SleepReading::of(&*self.sleep_clock)) else {
            return false;
        };
        let (from, to) = slept.interval(now, state.announced.take());
        state.meter.record_sleep(from, to);
        state.last_sleep = Some((from, to));
        tracing::info!(from = %from, to = %to, seconds = slept.duration.as_secs(), "the machine slept; recorded on the open sessions");
        for t in state.meter.open() {
            if let Err(e) = self.journal.put(t, Durability::Flush) {
                tracing::warn!(error = %e, id = %t.session.id, "cannot record the sleep in the journal");
            }
        }
        true
    }

    /// One step of the offline grace: warnings and expiries told to the owners, asks
    /// and kills done.
    pub(super) fn step_grace(&self, state: &mut State, now: DateTime<Utc>) {
        let fallback = self.config.licence_user(None);
        let sessions: Vec<GraceSession> = state
            .meter
            .open()
            .map(|t| {
                let user = t.user.as_deref().unwrap_or(&fallback);
                let (plan, _) = super::remind::plan_of(
                    state.answers.get(user),
                    &state.catalog,
                    &t.session.product,
                );
                GraceSession {
                    key: t.process,
                    uid: t.owner,
                    product: t.session.product.to_string(),
                    plan: Some(plan),
                    opened_at: t.session.start.to_utc(),
                }
            })
            .collect();
        let offline = state.last_error.is_some();
        let actions = state
            .keeper
            .step(self.grace_now(), offline, &sessions, &state.policy);
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                GraceAction::Warn {
                    uid,
                    product,
                    plan,
                    deadline,
                    ..
                } => {
                    let mut r = self.reminder(state, Kind::GraceWarning, &product);
                    r.at = Some(deadline);
                    r.plan = Some(plan.as_str().to_owned());
                    Agent::tell(state, uid, r, now);
                }
                GraceAction::Expired {
                    key,
                    uid,
                    product,
                    plan,
                    close_at,
                } => {
                    tracing::warn!(%product, pid = key.pid, plan = plan.as_str(), close_at = ?close_at, "offline grace run out");
                    let mut r = self.reminder(state, Kind::GraceExpired, &product);
                    r.at = close_at;
                    r.plan = Some(plan.as_str().to_owned());
                    Agent::tell(state, uid, r, now);
                }
                GraceAction::AskToClose { key } => match self.closer.ask_to_close(
                    key,
                    crate::enforce::Owner {
                        // Windows asks through the owner's session helpers.
                        uid: sessions.iter().find(|s| s.key == key).and_then(|s| s.uid),
                        helpers: &mut state.helpers,
                    },
                ) {
                    Ok(()) => tracing::warn!(
                        pid = key.pid,
                        "offline grace run out: the product was asked to close"
                    ),
                    Err(e) => {
                        tracing::warn!(pid = key.pid, error = %e, "offline grace run out: cannot ask the product to close")
                    }
                },
                GraceAction::Kill { key } => match self.closer.kill(key) {
                    Ok(()) => tracing::warn!(
                        pid = key.pid,
                        "offline grace run out and enforce = kill: the product was ended"
                    ),
                    Err(e) => {
                        tracing::warn!(pid = key.pid, error = %e, "offline grace run out: cannot end the product")
                    }
                },
            }
        }
        self.save_grace(state);
    }

    /// Journals the grace keeper, so a restart neither repeats nor forgets.
    pub(super) fn save_grace(&self, state: &State) {
        match serde_json::to_vec(&state.keeper) {
            Ok(bytes) => {
                if let Err(e) = self.journal.set_cached(GRACE_KEY, &bytes) {
                    tracing::warn!(error = %e, "cannot record the offline grace");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the offline grace"),
        }
    }

    /// A reminder of `kind` about `product`, named as the catalog names it.
    fn reminder(&self, state: &State, kind: Kind, product: &str) -> Reminder {
        let name = state
            .catalog
            .get(product)
            .and_then(|p| p.name.as_deref())
            .unwrap_or(product);
        Reminder::new(kind, product, name)
    }

    /// The grace deadlines for `status`.
    pub(super) fn grace_items(&self, state: &State) -> Vec<crate::status::GraceItem> {
        let now = self.grace_now();
        [Plan::Flex, Plan::Subscription]
            .into_iter()
            .filter_map(|plan| {
                Some(crate::status::GraceItem {
                    plan: plan.as_str().to_owned(),
                    until: state.keeper.grace_until(plan, &state.policy, now)?,
                })
            })
            .collect()
    }

    /// The machine is about to sleep: tell the pre-sleep reminders and put everything
    /// on disk, while logind waits for our inhibitor (or the power event's handler for
    /// our acknowledgement).
    pub(super) fn before_sleep(&self, at: DateTime<Utc>) {
        let now = self.clock.now();
        {
            let mut state = self.state();
            state.announced = Some(at);
            self.remind(&mut state, now, &[], Moment::Sleeping);
        }
        self.persist_open();
        tracing::info!("the machine is going to sleep; reminders sent and the journal flushed");
    }

    /// Follows logind's sleep announcements for as long as the agent runs; without a
    /// system bus or logind, sleeps are still found by the clocks at the next poll.
    #[cfg(target_os = "linux")]
    pub(super) async fn watch_sleep(self: Arc<Self>) {
        use crate::power::logind::{SleepEvent, SleepWatch};
        let mut watch = match SleepWatch::connect(self.clock.clone() as Arc<dyn Clock>).await {
            Ok(w) => w,
            Err(e) => {
                tracing::info!(reason = %e, "no logind sleep announcements; sleeps are found by the clock at the next poll");
                return;
            }
        };
        while let Some(event) = watch.next().await {
            match event {
                SleepEvent::Suspending { at } => {
                    self.before_sleep(at);
                    watch.release();
                }
                SleepEvent::Resumed => {}
            }
        }
        tracing::info!("the system bus went away; sleeps are found by the clock at the next poll");
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) async fn watch_sleep(self: Arc<Self>) {}

    /// Follows announcements handed in from outside ([`crate::power::announce`]): a
    /// `Suspending` is handled as logind's is, then acknowledged so the announcer lets
    /// the sleep go on.
    pub(super) async fn follow_announcements(
        self: Arc<Self>,
        mut announcements: crate::power::Announcements,
    ) {
        use crate::power::announce::Announced;
        while let Some(a) = announcements.0.recv().await {
            match a.what {
                Announced::Suspending => {
                    self.before_sleep(self.clock.now());
                    if let Some(done) = a.done {
                        let _ = done.send(());
                    }
                }
                Announced::Resumed => {
                    tracing::debug!("resume announced; the sleep is measured at the next poll")
                }
            }
        }
    }
}
