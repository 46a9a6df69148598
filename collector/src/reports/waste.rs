//! Waste: tokens charged for days nobody worked, which only the agent's idle and suspend
//! intervals can show.
//!
//! For one key (user, product), over its sessions and its charged days, each window is
//! marked as the collector marks it when it settles the key (`daymeter_shared::waste`):
//! - an **idle window** is a charged window in which no session of the key was open and
//!   in use at any instant: the product was idle (or the machine asleep, which the agent
//!   folds into idle) the whole window. Its tokens are `wasted_tokens`.
//! - a **rollover** is a window that opened at the end of the previous one because a
//!   session ran across that instant — a product left open overnight or over a weekend —
//!   rather than at a launch. Listed with the sessions that caused it, whether or not
//!   the window was idle.
//! - `active_rollover_would_save` is the tokens of the windows both idle and rolled:
//!   `rollover = active` would not have opened them (its next window waits for the next
//!   use). What later launches would then have cost is not counted.
//!
//! The report's totals are read from the marks stored on the days, over every user the
//! filters keep; the table recomputes the marks of a page of users from their sessions,
//! to name the sessions, with the same rule.

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::accounting::Span;
use daymeter_shared::session::Session;
use daymeter_shared::time::{Nanos, Zone, nanos};
use daymeter_shared::usage::UsageDay;
use daymeter_shared::waste::ByStart;
use serde::Serialize;

use super::{Filter, Teams};
use crate::store::WasteTotal;

/// A charged window that was wasted, or opened by a rollover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasteWindow {
    pub day: NaiveDate,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub tokens: u64,
    /// The sessions open during the window.
    pub sessions: Vec<String>,
}

/// One key's waste.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyWaste {
    pub user: String,
    pub product: String,
    pub idle_windows: Vec<WasteWindow>,
    pub rollovers: Vec<WasteWindow>,
    pub wasted_tokens: u64,
    pub rollover_tokens: u64,
    pub active_rollover_would_save: u64,
}

/// `sessions` are the key's stored sessions (one copy per id) that reach into the
/// windows of `days`, its charged days in a range in window order; `min_session` the
/// policy's.
pub fn key_waste(
    user: &str,
    product: &str,
    sessions: &[Session<'_>],
    days: &[UsageDay<'_>],
    min_session: Nanos,
) -> KeyWaste {
    let spans: Vec<Span<'_>> = sessions
        .iter()
        .map(|s| Span::of(s, Zone::Fixed(*s.start.offset())))
        .collect();
    let by_start = ByStart::new(&spans, min_session);
    let mut idle_windows = Vec::new();
    let mut rollovers = Vec::new();
    let mut would_save = 0;
    for d in days
        .iter()
        .filter(|d| d.tokens > 0 || d.window_end > d.window_start)
    {
        let (ws, we) = (ns(d.window_start), ns(d.window_end));
        let marks = by_start.marks(ws, we);
        let window = || {
            let mut open: Vec<usize> = by_start.overlapping(ws, we).collect();
            open.sort_unstable();
            WasteWindow {
                day: d.day,
                window_start: d.window_start,
                window_end: d.window_end,
                tokens: d.tokens,
                sessions: open.iter().map(|&i| sessions[i].id.to_string()).collect(),
            }
        };
        if d.tokens > 0 && marks.idle() {
            idle_windows.push(window());
        }
        if marks.rolled() {
            rollovers.push(window());
        }
        would_save += marks.cost(d.tokens as i64).1 as u64;
    }
    KeyWaste {
        user: user.to_owned(),
        product: product.to_owned(),
        wasted_tokens: idle_windows.iter().map(|w| w.tokens).sum(),
        rollover_tokens: rollovers.iter().map(|w| w.tokens).sum(),
        active_rollover_would_save: would_save,
        idle_windows,
        rollovers,
    }
}

/// The report's totals over every user `filter` keeps: tokens wasted and what
/// `rollover = active` would have saved, from the store's sums (by team and product,
/// or one user's by product when the filter names a user).
pub fn totals(sums: &[WasteTotal], filter: &Filter, teams: &Teams) -> (u64, u64) {
    let team_of_user = filter.user.as_deref().map(|u| teams.of(u));
    sums.iter()
        .filter(|t| filter.product.as_deref().is_none_or(|p| p == t.product))
        .filter(|t| {
            let team = team_of_user.unwrap_or(&t.team);
            filter.team.as_deref().is_none_or(|want| want == team)
        })
        .fold((0, 0), |(w, s), t| (w + t.wasted, s + t.saved))
}

fn ns(t: DateTime<Utc>) -> Nanos {
    nanos(&t.fixed_offset())
}

#[cfg(test)]
mod tests {
    use daymeter_shared::accounting;
    use daymeter_shared::entitlement::Pricing;
    use daymeter_shared::policy::{Policy, Rules};
    use daymeter_shared::usage;

    use super::*;

    fn session(id: &str, start: &str, end: &str, idle: &[(&str, &str)]) -> Session<'static> {
        let idle: Vec<serde_json::Value> = idle
            .iter()
            .map(|(a, b)| serde_json::json!([a, b]))
            .collect();
        let value = serde_json::json!({
            "id": id, "product": "acad", "start": start, "end": end, "idle": idle,
        });
        let text = value.to_string();
        let s: Session<'_> = serde_json::from_str(&text).expect("a session");
        s.into_owned()
    }

    /// The key's charged days as the collector computes them (rollover = open).
    fn days_of(
        sessions: &[Session<'static>],
        rules: &Rules,
        pricing: &Pricing<'_>,
    ) -> Vec<UsageDay<'static>> {
        let spans: Vec<Span<'_>> = sessions
            .iter()
            .map(|s| Span::of(s, Zone::Fixed(*s.start.offset())))
            .collect();
        let mut windows = Vec::new();
        accounting::walk(&spans, rules, &mut windows);
        let mut out = Vec::new();
        usage::price("ana", "acad", &windows, rules, pricing, &mut out);
        out.into_iter()
            .map(|d| UsageDay {
                user: d.user.into_owned().into(),
                product: d.product.into_owned().into(),
                ..d
            })
            .collect()
    }

    #[test]
    fn a_product_left_open_and_idle_over_a_weekend_wastes_the_days_it_rolled_into() {
        // Friday 17:00 → Monday 09:30, idle from Friday 18:00 to Monday 09:00.
        let s = [session(
            "fri",
            "2026-11-06T17:00:00Z",
            "2026-11-09T09:30:00Z",
            &[("2026-11-06T18:00:00Z", "2026-11-09T09:00:00Z")],
        )];
        let rules = Policy::default().rules();
        let pricing = Pricing {
            tokens_per_day: 7,
            entitlements: &[],
        };
        let days = days_of(&s, &rules, &pricing);
        assert_eq!(days.len(), 3, "Fri, Sat, Sun windows under rollover = open");
        let w = key_waste("ana", "acad", &s, &days, rules.min_session);
        // Saturday's window saw no use at all; Friday's had an hour, Sunday's (to
        // Monday 17:00) the half hour on Monday morning.
        assert_eq!(w.idle_windows.len(), 1);
        assert_eq!(w.idle_windows[0].day.to_string(), "2026-11-07");
        assert_eq!(w.wasted_tokens, 7);
        assert_eq!(w.rollovers.len(), 2);
        assert_eq!(w.rollovers[0].sessions, ["fri"]);
        // Under rollover = active: Friday, then Monday from 09:00 (spec example 17).
        assert_eq!(w.active_rollover_would_save, 21 - 14);
    }

    #[test]
    fn the_totals_keep_the_teams_and_products_the_filter_asks_for() {
        let sum = |team: &str, product: &str, wasted, saved| WasteTotal {
            team: team.into(),
            product: product.into(),
            wasted,
            saved,
        };
        let sums = [
            sum("civil", "acad", 14, 7),
            sum("arch", "acad", 7, 0),
            sum("arch", "rvt", 10, 10),
        ];
        let teams = Teams::default();
        let all = Filter::default();
        assert_eq!(totals(&sums, &all, &teams), (31, 17));
        let arch = Filter {
            team: Some("arch".into()),
            ..Filter::default()
        };
        assert_eq!(totals(&sums, &arch, &teams), (17, 10));
        let acad = Filter {
            product: Some("acad".into()),
            ..Filter::default()
        };
        assert_eq!(totals(&sums, &acad, &teams), (21, 7));
    }

    #[test]
    fn a_day_of_work_wastes_nothing() {
        let s = [session(
            "mon",
            "2026-11-09T09:00:00Z",
            "2026-11-09T17:00:00Z",
            &[],
        )];
        let rules = Policy::default().rules();
        let pricing = Pricing {
            tokens_per_day: 7,
            entitlements: &[],
        };
        let days = days_of(&s, &rules, &pricing);
        let w = key_waste("ana", "acad", &s, &days, rules.min_session);
        assert_eq!(
            (
                w.wasted_tokens,
                w.rollover_tokens,
                w.active_rollover_would_save
            ),
            (0, 0, 0)
        );
    }
}
