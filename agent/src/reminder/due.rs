//! Which reminders are due: one rule per kind, decided here and nowhere else.
//!
//! The facts come from wherever they are known best — the collector's open windows,
//! plans and balance from the last sync while they hold, the agent's own walk over its
//! journal while offline (see [`crate::windows`]) — but the decision is this code's
//! alone, run every poll, so a reminder is shown within one poll of its instant online
//! or not. Each reminder is sent at most once per window and kind ([`Due`] remembers).
//!
//! Decisions the spec leaves open, written down here:
//! - `window_rollover` and `pre_sleep` only under `rollover = open`: under `active` an
//!   idle or sleeping product is not charged at the window's end, so closing it saves
//!   nothing and the reminder would be false.
//! - `launch`: only when no window covers the product now (a relaunch inside a window
//!   is free) and no other session of the same user and product is open (that one
//!   opened the day and had the reminder); only for a day that costs tokens.
//! - `insufficient_balance`: at a launch, when the collector's last answer said the
//!   team's balance cannot pay a day of it; a warning only.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};

use daymeter_shared::entitlement::Plan;
use daymeter_shared::policy::{Policy, Rollover};

use super::{Kind, Reminder};
use crate::windows::CurrentWindow;

/// What is known of one open session at this poll.
#[derive(Debug, Clone)]
pub struct OpenFacts<'a> {
    /// The account running the product (who is told).
    pub uid: Option<u32>,
    /// The licence user charged.
    pub user: &'a str,
    pub product: &'a str,
    pub product_name: &'a str,
    pub started: DateTime<Utc>,
    /// The session opened at this poll.
    pub launched: bool,
    pub plan: Plan,
    /// What a day of the product costs the user now (0 for a subscription).
    pub day_tokens: u64,
    pub window: Option<CurrentWindow>,
    /// The owner's last input, when idle for `idle_after` or more.
    pub idle_since: Option<DateTime<Utc>>,
    /// The team's balance, when the collector said it cannot pay a day.
    pub short_balance: Option<u64>,
}

/// The moment the reminders are worked out at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// An ordinary poll.
    Poll,
    /// The machine announced it is about to sleep.
    Sleeping,
}

/// A reminder already sent: to whom, about what, for which window (or launch).
type Sent = (Option<u32>, String, String, Kind, DateTime<Utc>);

/// The reminders sent so far, so that none is sent twice for one window.
#[derive(Debug, Default)]
pub struct Due {
    sent: BTreeSet<Sent>,
}

impl Due {
    /// The reminders due now, each with the account to tell; remembered as sent.
    pub fn step(
        &mut self,
        now: DateTime<Utc>,
        policy: &Policy,
        open: &[OpenFacts<'_>],
        moment: Moment,
    ) -> Vec<(Option<u32>, Reminder)> {
        let mut out = Vec::new();
        let lead = TimeDelta::from_std(policy.remind_before).unwrap_or(TimeDelta::MAX);
        for s in open {
            let mut due = |kind: Kind, key: DateTime<Utc>, r: Reminder| {
                let k = (s.uid, s.user.to_owned(), s.product.to_owned(), kind, key);
                if self.sent.insert(k) {
                    out.push((s.uid, r));
                }
            };
            if s.launched {
                let first = !open.iter().any(|o| {
                    o.user == s.user
                        && o.product == s.product
                        && (o.started, !o.launched) < (s.started, !s.launched)
                });
                if first && s.window.is_none() && s.day_tokens > 0 {
                    let mut r = Reminder::new(Kind::Launch, s.product, s.product_name);
                    r.at = Some(s.started);
                    r.tokens = Some(s.day_tokens);
                    r.free_within = Some(policy.min_session);
                    due(Kind::Launch, s.started, r);
                }
                if let Some(balance) = s.short_balance {
                    let mut r = Reminder::new(Kind::InsufficientBalance, s.product, s.product_name);
                    r.balance = Some(balance);
                    r.tokens = Some(s.day_tokens);
                    due(Kind::InsufficientBalance, s.started, r);
                }
            }
            if policy.rollover != Rollover::Open {
                continue;
            }
            let Some(w) = s.window else { continue };
            let next_tokens = w.next_tokens.unwrap_or(s.day_tokens);
            let remind_from = w
                .end
                .checked_sub_signed(lead)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            if let Some(idle) = s.idle_since
                && now >= remind_from
                && now < w.end
                && next_tokens > 0
            {
                let mut r = Reminder::new(Kind::WindowRollover, s.product, s.product_name);
                r.at = Some(w.end);
                r.idle_since = Some(idle);
                r.tokens = Some(next_tokens);
                due(Kind::WindowRollover, w.end, r);
            }
            if moment == Moment::Sleeping && s.plan == Plan::Flex && next_tokens > 0 {
                let mut r = Reminder::new(Kind::PreSleep, s.product, s.product_name);
                r.at = Some(w.end);
                r.tokens = Some(next_tokens);
                due(Kind::PreSleep, w.end, r);
            }
        }
        // Forget what can no longer repeat: keys are window ends or launch instants,
        // and nothing is due about a window that ended a whole window ago.
        let window = TimeDelta::from_std(policy.window).unwrap_or(TimeDelta::MAX);
        if let Some(horizon) = now
            .checked_sub_signed(window)
            .and_then(|t| t.checked_sub_signed(lead))
        {
            self.sent.retain(|k| k.4 >= horizon);
        }
        out
    }

    /// Reminders sent for windows that have not ended, for `status`.
    pub fn sent_since(
        &self,
        since: DateTime<Utc>,
    ) -> impl Iterator<Item = (Option<u32>, &str, Kind, DateTime<Utc>)> {
        self.sent
            .iter()
            .filter(move |k| k.4 >= since)
            .map(|k| (k.0, k.2.as_str(), k.3, k.4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::Source;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
    }

    fn acad() -> OpenFacts<'static> {
        OpenFacts {
            uid: Some(1000),
            user: "sophie",
            product: "acad",
            product_name: "AutoCAD",
            started: at(9, 0),
            launched: false,
            plan: Plan::Flex,
            day_tokens: 7,
            window: Some(CurrentWindow {
                start: Some(at(9, 0)),
                end: at(19, 0),
                next_tokens: Some(7),
                source: Source::Collector,
            }),
            idle_since: None,
            short_balance: None,
        }
    }

    #[test]
    fn a_launch_that_opens_a_day_is_told_its_tokens_and_the_free_minutes() {
        let mut due = Due::default();
        let s = OpenFacts {
            launched: true,
            window: None,
            started: at(9, 0),
            ..acad()
        };
        let out = due.step(at(9, 0), &Policy::default(), &[s], Moment::Poll);
        assert_eq!(out.len(), 1);
        let (uid, r) = &out[0];
        assert_eq!(*uid, Some(1000));
        assert_eq!(r.kind, Kind::Launch);
        assert_eq!(r.tokens, Some(7));
        assert_eq!(r.free_within, Some(std::time::Duration::from_secs(300)));
    }

    #[test]
    fn a_relaunch_inside_a_window_is_free_and_not_told() {
        let mut due = Due::default();
        let s = OpenFacts {
            launched: true,
            ..acad()
        };
        assert!(
            due.step(at(10, 0), &Policy::default(), &[s], Moment::Poll)
                .is_empty()
        );
    }

    #[test]
    fn a_second_instance_of_a_product_already_open_is_not_a_new_day() {
        let mut due = Due::default();
        let first = OpenFacts {
            window: None,
            ..acad()
        };
        let second = OpenFacts {
            launched: true,
            window: None,
            started: at(9, 2),
            ..acad()
        };
        assert!(
            due.step(at(9, 2), &Policy::default(), &[first, second], Moment::Poll)
                .is_empty()
        );
    }

    #[test]
    fn an_idle_product_is_reminded_once_within_remind_before_of_its_window_end() {
        let mut due = Due::default();
        let idle = OpenFacts {
            idle_since: Some(at(14, 10)),
            ..acad()
        };
        let p = Policy::default();
        assert!(
            due.step(at(17, 59), &p, std::slice::from_ref(&idle), Moment::Poll)
                .is_empty(),
            "too early"
        );
        let out = due.step(at(18, 0), &p, std::slice::from_ref(&idle), Moment::Poll);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.kind, Kind::WindowRollover);
        assert_eq!(out[0].1.at, Some(at(19, 0)));
        assert_eq!(out[0].1.idle_since, Some(at(14, 10)));
        assert!(
            due.step(at(18, 30), &p, &[idle], Moment::Poll).is_empty(),
            "once per window"
        );
    }

    #[test]
    fn an_active_product_is_not_reminded() {
        let mut due = Due::default();
        assert!(
            due.step(at(18, 30), &Policy::default(), &[acad()], Moment::Poll)
                .is_empty()
        );
    }

    #[test]
    fn under_rollover_active_idle_and_sleep_cost_nothing_so_nothing_is_reminded() {
        let mut due = Due::default();
        let p = Policy {
            rollover: Rollover::Active,
            ..Policy::default()
        };
        let idle = OpenFacts {
            idle_since: Some(at(14, 10)),
            ..acad()
        };
        assert!(
            due.step(at(18, 30), &p, &[idle], Moment::Sleeping)
                .is_empty()
        );
    }

    #[test]
    fn going_to_sleep_with_a_flex_product_open_tells_the_next_charge() {
        let mut due = Due::default();
        let p = Policy::default();
        let out = due.step(at(12, 0), &p, &[acad()], Moment::Sleeping);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.kind, Kind::PreSleep);
        assert_eq!((out[0].1.at, out[0].1.tokens), (Some(at(19, 0)), Some(7)));
        assert!(
            due.step(at(13, 0), &p, &[acad()], Moment::Sleeping)
                .is_empty(),
            "once per window"
        );
        let sub = OpenFacts {
            plan: Plan::Subscription,
            day_tokens: 0,
            product: "revit",
            ..acad()
        };
        assert!(due.step(at(13, 0), &p, &[sub], Moment::Sleeping).is_empty());
    }

    #[test]
    fn a_launch_the_balance_cannot_pay_is_warned() {
        let mut due = Due::default();
        let s = OpenFacts {
            launched: true,
            window: None,
            short_balance: Some(4),
            ..acad()
        };
        let out = due.step(at(9, 0), &Policy::default(), &[s], Moment::Poll);
        let kinds: Vec<Kind> = out.iter().map(|(_, r)| r.kind).collect();
        assert_eq!(kinds, vec![Kind::Launch, Kind::InsufficientBalance]);
        assert_eq!(out[1].1.balance, Some(4));
    }
}
