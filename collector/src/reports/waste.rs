//! Waste: tokens charged for days nobody worked, which only the agent's idle and suspend
//! intervals can show.
//!
//! For one key (user, product), over its sessions and its charged days:
//! - an **idle window** is a charged window in which no session of the key was open and
//!   in use at any instant: the product was idle (or the machine asleep, which the agent
//!   folds into idle) the whole window. Its tokens are `wasted_tokens`.
//! - a **rollover** is a window that opened at the end of the previous one because a
//!   session ran across that instant — a product left open overnight or over a weekend —
//!   rather than at a launch. Listed with the sessions that caused it, whether or not
//!   the window was idle.
//! - `active_rollover_would_save` is the key's tokens now minus its tokens had the walk
//!   run with `rollover = active` (the next window opens only when the product is used
//!   again), under the same policy and prices otherwise.

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::accounting::{self, Span};
use daymeter_shared::entitlement::Pricing;
use daymeter_shared::policy::{Rollover, Rules};
use daymeter_shared::session::Session;
use daymeter_shared::time::{Nanos, Zone, nanos};
use daymeter_shared::usage::{UsageDay, priced};
use serde::Serialize;

use super::range::ReportRange;

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

/// `sessions` are the key's stored sessions (one copy per id) that reach into `range`,
/// `days` its charged days in `range` in window order; `rules` and `pricing` are the
/// key's policy and prices now. The `rollover = active` walk counts only the windows it
/// dates in `range`, as `days` are, so the saving compares like with like.
pub fn key_waste(
    user: &str,
    product: &str,
    sessions: &[Session<'_>],
    days: &[UsageDay<'_>],
    range: &ReportRange,
    rules: &Rules,
    pricing: &Pricing<'_>,
) -> KeyWaste {
    let mut idle_windows = Vec::new();
    let mut rollovers = Vec::new();
    let mut previous_end: Option<DateTime<Utc>> = None;
    let by_start = ByStart::new(sessions);
    for d in days
        .iter()
        .filter(|d| d.tokens > 0 || d.window_end > d.window_start)
    {
        let (ws, we) = (seconds(d.window_start), seconds(d.window_end));
        let open = by_start.open_within(ws, we);
        let window = || WasteWindow {
            day: d.day,
            window_start: d.window_start,
            window_end: d.window_end,
            tokens: d.tokens,
            sessions: open.iter().map(|s| s.id.to_string()).collect(),
        };
        if d.tokens > 0 && !open.iter().any(|s| in_use_within(s, ws, we)) {
            idle_windows.push(window());
        }
        let carried = previous_end == Some(d.window_start) && by_start.any_across(ws);
        if carried {
            rollovers.push(window());
        }
        previous_end = Some(d.window_end);
    }
    let now: u64 = days.iter().map(|d| d.tokens).sum();
    let active = tokens_under_active(sessions, range, rules, pricing);
    KeyWaste {
        user: user.to_owned(),
        product: product.to_owned(),
        wasted_tokens: idle_windows.iter().map(|w| w.tokens).sum(),
        rollover_tokens: rollovers.iter().map(|w| w.tokens).sum(),
        active_rollover_would_save: now.saturating_sub(active),
        idle_windows,
        rollovers,
    }
}

/// A key's sessions by start, with their instants read once: a year of a key is a few
/// hundred sessions and as many windows, and reading every session's instants again for
/// every window took most of a year's waste report.
struct ByStart<'a, 's> {
    sessions: &'a [Session<'s>],
    /// (start, effective end, index in `sessions`), by start.
    spans: Vec<(Nanos, Nanos, usize)>,
    /// The latest end among `spans[..=i]`: every session before the first whose value
    /// passes an instant had ended by it.
    ended_by: Vec<Nanos>,
}

impl<'a, 's> ByStart<'a, 's> {
    fn new(sessions: &'a [Session<'s>]) -> Self {
        let mut spans: Vec<_> = sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (s.start_nanos(), s.end_nanos(), i))
            .collect();
        spans.sort_unstable();
        let mut latest = Nanos::MIN;
        let ended_by = spans
            .iter()
            .map(|&(_, end, _)| {
                latest = latest.max(end);
                latest
            })
            .collect();
        ByStart {
            sessions,
            spans,
            ended_by,
        }
    }

    /// The sessions that start before `to` and end after `from`.
    fn overlapping(&self, from: Nanos, to: Nanos) -> impl Iterator<Item = usize> + '_ {
        let lo = self.ended_by.partition_point(|&e| e <= from);
        let hi = self.spans.partition_point(|&(start, _, _)| start < to);
        self.spans
            .get(lo..hi)
            .unwrap_or_default()
            .iter()
            .filter(move |&&(_, end, _)| end > from)
            .map(|&(_, _, i)| i)
    }

    /// The sessions open at some instant of `[from, to)`, in their given order.
    fn open_within(&self, from: Nanos, to: Nanos) -> Vec<&'a Session<'s>> {
        let mut open: Vec<usize> = self.overlapping(from, to).collect();
        open.sort_unstable();
        open.into_iter().map(|i| &self.sessions[i]).collect()
    }

    /// Whether a session runs across `at`: started before it, still open after it.
    fn any_across(&self, at: Nanos) -> bool {
        self.overlapping(at, at).next().is_some()
    }
}

fn seconds(t: DateTime<Utc>) -> Nanos {
    t.timestamp().saturating_mul(1_000_000_000)
}

/// Whether `s` was open and not idle at some instant of `[from, to)`.
fn in_use_within(s: &Session<'_>, from: Nanos, to: Nanos) -> bool {
    let (start, end) = (s.start_nanos().max(from), s.end_nanos().min(to));
    if start >= end {
        return false;
    }
    let mut idle: Vec<(Nanos, Nanos)> = s
        .idle
        .iter()
        .map(|[a, b]| (nanos(a).max(start), nanos(b).min(end)))
        .filter(|(a, b)| a < b)
        .collect();
    idle.sort_unstable();
    // Walk the idle pieces in order: any gap before, between or after them is use.
    let mut covered_to = start;
    for (a, b) in idle {
        if a > covered_to {
            return true;
        }
        covered_to = covered_to.max(b);
    }
    covered_to < end
}

/// The key's tokens had its windows been walked with `rollover = active`.
fn tokens_under_active(
    sessions: &[Session<'_>],
    range: &ReportRange,
    rules: &Rules,
    pricing: &Pricing<'_>,
) -> u64 {
    let active = Rules {
        rollover: Rollover::Active,
        ..*rules
    };
    let mut ordered: Vec<&Session<'_>> = sessions.iter().collect();
    ordered.sort_by(|a, b| a.start_nanos().cmp(&b.start_nanos()).then(a.id.cmp(&b.id)));
    let spans: Vec<Span<'_>> = ordered
        .iter()
        .map(|s| {
            let zone =
                Zone::of(s.tz.as_deref(), &s.start).unwrap_or(Zone::Fixed(*s.start.offset()));
            Span::of(s, zone)
        })
        .collect();
    let mut windows = Vec::new();
    accounting::walk(&spans, &active, &mut windows);
    windows
        .iter()
        .map(|w| priced(w, &active, pricing))
        .filter(|p| range.contains(p.day))
        .map(|p| p.tokens)
        .sum()
}

#[cfg(test)]
mod tests {
    use daymeter_shared::policy::Policy;
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

    fn november() -> ReportRange {
        ReportRange {
            from: "2026-11-01".parse().expect("a day"),
            to: "2026-11-30".parse().expect("a day"),
            months: 1.0,
        }
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
        let w = key_waste("ana", "acad", &s, &days, &november(), &rules, &pricing);
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
        let w = key_waste("ana", "acad", &s, &days, &november(), &rules, &pricing);
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
