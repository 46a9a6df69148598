//! The offline grace, as pure rules: how long products may run without a sign-in, and
//! what the agent does as the end comes and passes. Time is injected ([`Now`]); nothing
//! here reads a clock or touches a process ([`crate::enforce`] does that).
//!
//! - **Sign-in** is the last successful, authenticated sync ([`GraceKeeper::signed_in`]).
//! - A **Flex** product may run until sign-in + `grace_flex`, a **subscription** product
//!   until sign-in + `grace_subscription`; a **free** product has no limit. A product
//!   whose plan is unknown (not in the cached entitlements or catalog) counts as Flex:
//!   the paid plan with the shortest grace is the safe guess for a product nobody told
//!   the agent about.
//! - **Before the first sign-in ever nothing is enforced**: no policy is known yet, and a
//!   collector that cannot be reached on install day must not close designers' products.
//! - **Offline for** is the stricter of three measures ([`OfflineClock`]), so that a wall
//!   clock set backwards does not extend the grace and one set forwards only shortens it:
//!   wall now − sign-in, the highest wall time seen − sign-in, and the time since boot
//!   (sleep included) that elapsed since sign-in while the agent ran. The last one
//!   restarts with the agent: the agent's own downtime is covered by the wall clock (and
//!   its high-water mark) only.
//! - **Warnings** ([`GraceAction::Warn`]): Flex 2 h and 15 min before the end; a
//!   subscription 3, 2 and 1 days before, and at every launch while offline. Each
//!   threshold at most once per (user, product, sign-in); a threshold no shorter than the
//!   grace itself is skipped (a 1 h grace does not warn "2 h left" at every sign-in).
//! - **Expiry**: a session running when the grace ends is told so
//!   ([`GraceAction::Expired`], once) and, under `enforce = close | kill`, asked to close
//!   at once ([`GraceAction::AskToClose`]); a product **launched past the grace** is told
//!   at once and asked to close `close_delay` later, time to save what it opened. Under
//!   `enforce = kill`, a session still running `close_delay` after it was asked is killed
//!   ([`GraceAction::Kill`]). Under `enforce = warn`, only the warnings.
//! - Deadlines of asks and kills are kept on the offline-for time line, not the wall
//!   clock's, so moving the clock back does not put them off either.
//! - A sign-in resets everything.
//!
//! The keeper is serializable: the service journals it after every step that returned
//! actions and every minute or so, so that a restarted agent neither repeats a warning
//! nor forgets an ask, nor loses the high-water mark.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use daymeter_shared::entitlement::Plan;
use daymeter_shared::policy::{Enforce, Policy};
use serde::{Deserialize, Serialize};

use crate::watch::ProcessKey;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// How long before the end a Flex product warns.
const FLEX_WARNINGS: [Duration; 2] = [
    Duration::from_secs(2 * HOUR),
    Duration::from_secs(15 * MINUTE),
];
/// How long before the end a subscription product warns (daily, the last three days).
const SUBSCRIPTION_WARNINGS: [Duration; 3] = [
    Duration::from_secs(3 * DAY),
    Duration::from_secs(2 * DAY),
    Duration::from_secs(DAY),
];

/// One poll's instant, in both clocks the grace reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The service's wall clock.
    pub wall: DateTime<Utc>,
    /// [`crate::power::SleepClock::since_boot`]: monotonic, sleep included.
    pub since_boot: Duration,
}

/// How long the agent has been without a sign-in, measured so that moving the wall clock
/// cannot make it shorter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineClock {
    /// The last sign-in, by the wall clock.
    sign_in: Option<DateTime<Utc>>,
    /// The latest wall time seen since the sign-in.
    high_water: Option<DateTime<Utc>>,
    /// Time since boot elapsed since the sign-in, while the agent ran.
    elapsed: Duration,
    /// The previous `since_boot`; not journaled: after a restart (a reboot, maybe) the
    /// count starts again from the first reading.
    #[serde(skip)]
    last_since_boot: Option<Duration>,
}

impl OfflineClock {
    /// A successful sync: the grace starts again from `now`.
    pub fn signed_in(&mut self, now: Now) {
        *self = OfflineClock {
            sign_in: Some(now.wall),
            high_water: Some(now.wall),
            elapsed: Duration::ZERO,
            last_since_boot: Some(now.since_boot),
        };
    }

    /// Takes a poll's readings.
    pub fn observe(&mut self, now: Now) {
        if self.sign_in.is_none() {
            return;
        }
        self.high_water = Some(self.high_water.map_or(now.wall, |h| h.max(now.wall)));
        if let Some(last) = self.last_since_boot
            && let Some(d) = now.since_boot.checked_sub(last)
        {
            self.elapsed = self.elapsed.saturating_add(d);
        }
        self.last_since_boot = Some(now.since_boot);
    }

    /// The last sign-in, if there ever was one.
    pub fn sign_in(&self) -> Option<DateTime<Utc>> {
        self.sign_in
    }

    /// How long since the sign-in: the largest of the three measures; `None` before the
    /// first sign-in.
    pub fn offline_for(&self, wall: DateTime<Utc>) -> Option<Duration> {
        let sign_in = self.sign_in?;
        let since = |t: DateTime<Utc>| (t - sign_in).to_std().unwrap_or(Duration::ZERO);
        let by_wall = since(wall);
        let by_high_water = self.high_water.map(since).unwrap_or_default();
        Some(by_wall.max(by_high_water).max(self.elapsed))
    }
}

/// A running product session, as the grace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraceSession {
    pub key: ProcessKey,
    /// Who runs it (the process owner), where known.
    pub uid: Option<u32>,
    /// Catalog product id.
    pub product: String,
    /// The user's plan for the product; `None` when unknown (counts as Flex).
    pub plan: Option<Plan>,
    pub opened_at: DateTime<Utc>,
}

/// What the service should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraceAction {
    /// Tell the user the grace ends at `deadline` (a `grace_warning` reminder).
    Warn {
        key: ProcessKey,
        uid: Option<u32>,
        product: String,
        plan: Plan,
        deadline: DateTime<Utc>,
    },
    /// Tell the user the grace is over (a `grace_expired` reminder); `close_at` is when
    /// the product will be asked to close, `None` under `enforce = warn`.
    Expired {
        key: ProcessKey,
        uid: Option<u32>,
        product: String,
        plan: Plan,
        close_at: Option<DateTime<Utc>>,
    },
    /// Ask the process to close ([`crate::enforce::Closer::ask_to_close`]).
    AskToClose { key: ProcessKey },
    /// End the process ([`crate::enforce::Closer::kill`]); only under `enforce = kill`.
    Kill { key: ProcessKey },
}

/// A warning given: (user, product, how long before the end).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Warned {
    uid: Option<u32>,
    product: String,
    before: Duration,
}

/// A session past its grace, on the offline-for time line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Expiry {
    key: ProcessKey,
    /// Offline-for at which it is (was) asked to close.
    close_at: Duration,
    /// Offline-for at which it was asked.
    asked_at: Option<Duration>,
    killed: bool,
}

/// The grace's clock and its memory of what it did since the last sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceKeeper {
    clock: OfflineClock,
    warned: BTreeSet<Warned>,
    expired: Vec<Expiry>,
    /// The sessions running at the previous step: any other is a launch.
    seen: BTreeSet<ProcessKey>,
}

impl GraceKeeper {
    pub fn new() -> GraceKeeper {
        GraceKeeper::default()
    }

    /// A successful, authenticated sync: the grace starts again, every warning and ask
    /// is forgotten.
    pub fn signed_in(&mut self, now: Now) {
        self.clock.signed_in(now);
        self.warned.clear();
        self.expired.clear();
    }

    pub fn clock(&self) -> &OfflineClock {
        &self.clock
    }

    /// When `plan`'s grace ends, by the wall clock of `now`; `None` before the first
    /// sign-in and for free products.
    pub fn grace_until(&self, plan: Plan, policy: &Policy, now: Now) -> Option<DateTime<Utc>> {
        let remaining = grace_of(plan, policy)?.saturating_sub(self.clock.offline_for(now.wall)?);
        Some(later(now.wall, remaining))
    }

    /// One poll: `sessions` are the product sessions running now, `offline` whether the
    /// latest sync failed (launch warnings of subscriptions are given only then).
    pub fn step(
        &mut self,
        now: Now,
        offline: bool,
        sessions: &[GraceSession],
        policy: &Policy,
    ) -> Vec<GraceAction> {
        self.clock.observe(now);
        let launched: BTreeSet<ProcessKey> = sessions
            .iter()
            .map(|s| s.key)
            .filter(|k| !self.seen.contains(k))
            .collect();
        self.seen = sessions.iter().map(|s| s.key).collect();
        let mut actions = Vec::new();
        let Some(offline_for) = self.clock.offline_for(now.wall) else {
            return actions;
        };
        self.expired
            .retain(|e| sessions.iter().any(|s| s.key == e.key));
        // (user, product) pairs warned at this step: one notice each, however many
        // processes or thresholds.
        let mut told: BTreeSet<(Option<u32>, &str)> = BTreeSet::new();
        for s in sessions {
            let plan = s.plan.unwrap_or(Plan::Flex);
            let Some(grace) = grace_of(plan, policy) else {
                continue;
            };
            if let Some(e) = self.expired.iter_mut().find(|e| e.key == s.key) {
                enforce(e, offline_for, policy, &mut actions);
                continue;
            }
            if offline_for >= grace {
                let close_at = if launched.contains(&s.key) {
                    let age = (now.wall - s.opened_at).to_std().unwrap_or(Duration::ZERO);
                    offline_for.saturating_sub(age).max(grace) + policy.close_delay
                } else {
                    grace
                };
                actions.push(GraceAction::Expired {
                    key: s.key,
                    uid: s.uid,
                    product: s.product.clone(),
                    plan,
                    close_at: (policy.enforce != Enforce::Warn)
                        .then(|| later(now.wall, close_at.saturating_sub(offline_for))),
                });
                let mut e = Expiry {
                    key: s.key,
                    close_at,
                    asked_at: None,
                    killed: false,
                };
                enforce(&mut e, offline_for, policy, &mut actions);
                self.expired.push(e);
                continue;
            }
            let remaining = grace - offline_for;
            let mut warn = plan == Plan::Subscription && offline && launched.contains(&s.key);
            for &before in thresholds(plan) {
                if before >= grace || remaining > before {
                    continue;
                }
                let w = Warned {
                    uid: s.uid,
                    product: s.product.clone(),
                    before,
                };
                warn |= self.warned.insert(w);
            }
            if warn && told.insert((s.uid, s.product.as_str())) {
                actions.push(GraceAction::Warn {
                    key: s.key,
                    uid: s.uid,
                    product: s.product.clone(),
                    plan,
                    deadline: later(now.wall, remaining),
                });
            }
        }
        actions
    }
}

/// Asks and kills due for one expired session.
fn enforce(e: &mut Expiry, offline_for: Duration, policy: &Policy, actions: &mut Vec<GraceAction>) {
    if policy.enforce == Enforce::Warn {
        return;
    }
    if e.asked_at.is_none() && offline_for >= e.close_at {
        e.asked_at = Some(offline_for);
        actions.push(GraceAction::AskToClose { key: e.key });
    }
    if policy.enforce == Enforce::Kill
        && !e.killed
        && let Some(asked) = e.asked_at
        && offline_for >= asked + policy.close_delay
    {
        e.killed = true;
        actions.push(GraceAction::Kill { key: e.key });
    }
}

/// The offline allowance of `plan`; `None`: no limit.
fn grace_of(plan: Plan, policy: &Policy) -> Option<Duration> {
    match plan {
        Plan::Flex => Some(policy.grace_flex),
        Plan::Subscription => Some(policy.grace_subscription),
        Plan::Free => None,
    }
}

fn thresholds(plan: Plan) -> &'static [Duration] {
    match plan {
        Plan::Flex => &FLEX_WARNINGS,
        Plan::Subscription => &SUBSCRIPTION_WARNINGS,
        Plan::Free => &[],
    }
}

/// `t + d`, saturating (a policy's grace is bounded to ten years, so it never does).
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests;
