//! Each account's input activity, as its session helper reports it, turned into the
//! `idle` intervals spec/accounting.md defines: an interval starts at the last input +
//! `idle_after` and ends at the next input; one still running is `[from, now]`.
//!
//! The helper reports "milliseconds since the last input" every poll interval (at least
//! every 250 ms); the service turns that into an instant on its own clock
//! (`now − idle_ms`), so the helper needs no clock of its own and the intervals use
//! exactly the time sessions are metered with. The last input is the latest such
//! instant: it wobbles by the report's transit time (well under a millisecond on a
//! local socket), which moves an idle interval's start by as much and never ends one —
//! an input ends an interval only when it comes `idle_after` or more after the one
//! before, and moves the instant by more than [`INPUT_TOLERANCE`]. (Holding the instant
//! back until it moved by a whole second, as an earlier version did, made an active
//! user look idle for a moment whenever `idle_after` was that short.)
//!
//! An account without a helper has unknown activity: nothing is recorded for it, which
//! accounts as `rollover = open` would — never cheaper than the truth.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// How far the last-input instant must move to count as an input that ends an idle
/// interval: more than a report's transit time, less than any sensible `idle_after`.
pub const INPUT_TOLERANCE: TimeDelta = TimeDelta::milliseconds(100);

/// What is known of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserActivity {
    /// The last input, on the service's clock.
    pub last_input: DateTime<Utc>,
    /// Which source the helper reads (`mutter`, `screensaver`, `x11`, `logind`).
    pub source: Option<String>,
    /// Helpers of this account connected now (a user may have two graphical sessions).
    pub helpers: usize,
}

/// Every account's activity.
#[derive(Debug, Default)]
pub struct Activity {
    users: BTreeMap<u32, UserActivity>,
    /// Accounts with a helper connected but no idle source answering.
    unknown: BTreeMap<u32, usize>,
}

/// An idle interval of one account, to be recorded on that account's open sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    pub uid: u32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Activity {
    /// A helper of `uid` connected.
    pub fn connected(&mut self, uid: u32) {
        *self.unknown.entry(uid).or_default() += 1;
    }

    /// A helper of `uid` went away. With no helper left the account's activity is
    /// unknown again: a running idle interval stops where the last report left it.
    pub fn disconnected(&mut self, uid: u32) {
        if let Some(n) = self.unknown.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unknown.remove(&uid);
                self.users.remove(&uid);
            }
        }
    }

    /// A report: `idle_ms` since the last input (`None`: no idle source answers).
    /// Returns the idle interval an input just ended, if the report shows one: the user
    /// was idle from the previous last input + `idle_after` until this input.
    pub fn report(
        &mut self,
        uid: u32,
        idle_ms: Option<u64>,
        source: Option<String>,
        now: DateTime<Utc>,
        idle_after: Duration,
    ) -> Option<Idle> {
        let helpers = self.unknown.get(&uid).copied().unwrap_or(1);
        let Some(ms) = idle_ms else {
            self.users.remove(&uid);
            return None;
        };
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let input = TimeDelta::try_milliseconds(ms)
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let after = TimeDelta::from_std(idle_after).unwrap_or(TimeDelta::MAX);
        match self.users.get_mut(&uid) {
            Some(u) => {
                u.source = source;
                u.helpers = helpers;
                if input <= u.last_input {
                    return None;
                }
                let previous = std::mem::replace(&mut u.last_input, input);
                if input <= previous + INPUT_TOLERANCE {
                    return None;
                }
                let from = previous.checked_add_signed(after)?;
                (from < input).then_some(Idle {
                    uid,
                    from,
                    to: input,
                })
            }
            None => {
                self.users.insert(
                    uid,
                    UserActivity {
                        last_input: input,
                        source,
                        helpers,
                    },
                );
                None
            }
        }
    }

    /// The intervals running now: every account idle for `idle_after` or more is idle
    /// from its last input + `idle_after` until `now`.
    pub fn running(&self, now: DateTime<Utc>, idle_after: Duration) -> Vec<Idle> {
        let after = TimeDelta::from_std(idle_after).unwrap_or(TimeDelta::MAX);
        self.users
            .iter()
            .filter_map(|(uid, u)| {
                let from = u.last_input.checked_add_signed(after)?;
                (from < now).then_some(Idle {
                    uid: *uid,
                    from,
                    to: now,
                })
            })
            .collect()
    }

    /// Since when `uid` has been idle (its last input), if idle for `idle_after` now;
    /// `None` when active or unknown.
    pub fn idle_since(
        &self,
        uid: u32,
        now: DateTime<Utc>,
        idle_after: Duration,
    ) -> Option<DateTime<Utc>> {
        let u = self.users.get(&uid)?;
        let after = TimeDelta::from_std(idle_after).unwrap_or(TimeDelta::MAX);
        let from = u.last_input.checked_add_signed(after)?;
        (from <= now).then_some(u.last_input)
    }

    /// What is known of `uid`, for `status`.
    pub fn of(&self, uid: u32) -> Option<&UserActivity> {
        self.users.get(&uid)
    }

    /// Every account with a helper connected.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.unknown.keys().copied()
    }

    /// Whether `uid` has a helper connected (activity known or not).
    pub fn has_helper(&self, uid: u32) -> bool {
        self.unknown.contains_key(&uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const AFTER: Duration = Duration::from_secs(15 * 60);

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, s).unwrap()
    }

    fn ms(minutes: u64) -> Option<u64> {
        Some(minutes * 60_000)
    }

    #[test]
    fn an_idle_interval_starts_at_the_last_input_plus_idle_after_and_runs_to_now() {
        let mut a = Activity::default();
        a.connected(1000);
        a.report(1000, ms(0), None, at(14, 10, 0), AFTER);
        assert!(a.running(at(14, 20, 0), AFTER).is_empty(), "not idle yet");
        a.report(1000, ms(20), None, at(14, 30, 0), AFTER);
        assert_eq!(
            a.running(at(14, 30, 0), AFTER),
            vec![Idle {
                uid: 1000,
                from: at(14, 25, 0),
                to: at(14, 30, 0)
            }]
        );
        assert_eq!(
            a.idle_since(1000, at(14, 30, 0), AFTER),
            Some(at(14, 10, 0))
        );
    }

    #[test]
    fn the_next_input_ends_the_interval_at_that_input() {
        let mut a = Activity::default();
        a.connected(1000);
        a.report(1000, ms(0), None, at(14, 10, 0), AFTER);
        let ended = a.report(1000, Some(2_000), None, at(15, 0, 2), AFTER);
        assert_eq!(
            ended,
            Some(Idle {
                uid: 1000,
                from: at(14, 25, 0),
                to: at(15, 0, 0)
            })
        );
        assert!(a.running(at(15, 0, 5), AFTER).is_empty());
        assert_eq!(a.idle_since(1000, at(15, 0, 5), AFTER), None);
    }

    #[test]
    fn a_report_delayed_in_transit_is_not_an_input() {
        let mut a = Activity::default();
        a.connected(1000);
        a.report(1000, ms(30), None, at(15, 0, 0), AFTER);
        // The same last input, the report 300 ms late: the interval goes on, its start
        // moved by no more than the delay.
        let ended = a.report(1000, Some(31 * 60_000 - 300), None, at(15, 1, 0), AFTER);
        assert_eq!(ended, None);
        let from = a.running(at(15, 1, 0), AFTER)[0].from;
        assert!(from >= at(14, 45, 0) && from <= at(14, 45, 0) + TimeDelta::milliseconds(300));
    }

    #[test]
    fn an_active_user_reported_often_is_never_idle_however_short_idle_after() {
        let mut a = Activity::default();
        a.connected(1000);
        let after = Duration::from_secs(1);
        let start = at(15, 0, 0);
        for i in 0..40 {
            let now = start + TimeDelta::milliseconds(250 * i);
            assert_eq!(
                a.report(1000, Some(0), None, now, after),
                None,
                "report {i}"
            );
            assert!(
                a.running(now + TimeDelta::milliseconds(249), after)
                    .is_empty()
            );
        }
    }

    #[test]
    fn without_a_helper_or_an_idle_source_activity_is_unknown() {
        let mut a = Activity::default();
        a.connected(1000);
        a.report(1000, None, None, at(15, 0, 0), AFTER);
        assert!(a.running(at(16, 0, 0), AFTER).is_empty());
        a.report(1000, ms(30), None, at(15, 0, 0), AFTER);
        a.disconnected(1000);
        assert!(a.running(at(16, 0, 0), AFTER).is_empty());
        assert!(!a.has_helper(1000));
    }
}
