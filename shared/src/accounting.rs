//! The day-window walk over one (user, product) key (spec/accounting.md, "Algorithm").
//!
//! Input is the key's sessions, one copy per id, as [`Span`]s in walk order (by start,
//! then by id — the spec's tie rule; callers sort, since they hold the ids); output is
//! the key's windows in start order. Pricing and calendar days are applied by
//! [`crate::usage`]; this module only decides *when* windows open.

use crate::policy::{Rollover, Rules, ShortSessions};
use crate::session::{Interval, Session};
use crate::time::{Nanos, Zone, nanos};

/// A session as the walk sees it: `[start, end)` on the integer time line, with what
/// the day and idle rules need.
#[derive(Debug, Clone, Copy)]
pub struct Span<'s> {
    pub start: Nanos,
    /// Effective end: `end`, else `last_seen`.
    pub end: Nanos,
    /// Where this session's calendar day is read.
    pub zone: Zone,
    pub idle: &'s [Interval],
}

impl<'s> Span<'s> {
    pub fn of(session: &'s Session<'_>, zone: Zone) -> Self {
        Span {
            start: session.start_nanos(),
            end: session.end_nanos(),
            zone,
            idle: &session.idle,
        }
    }

    fn is_short(&self, rules: &Rules) -> bool {
        self.end.saturating_sub(self.start) < rules.min_session
    }
}

/// Whether a window is charged or a free row for a short session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// A charge window: a usage day at the plan's rate.
    Charged,
    /// `short_sessions = count_free`: a short session's own 0-token row.
    ShortFree,
}

/// One window of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Nanos,
    pub end: Nanos,
    /// Zone of the session open at `start` (the earliest-started one); the day is read there.
    pub zone: Zone,
    pub kind: WindowKind,
}

/// Walks one key's spans (in walk order) and appends its windows to `out`,
/// in start order.
///
/// Which sessions count where the spec leaves it open (written down here so the agent
/// and collector agree):
/// - "the session open at the window start" and "a session of the key is open and not
///   idle" consider the key's sessions that passed the minimum-session split: a short
///   session never opens, extends or dates a window.
/// - a `count_free` row's day is read in its own session's zone.
pub fn walk(spans: &[Span<'_>], rules: &Rules, out: &mut Vec<Window>) {
    walk_from(spans, rules, &Resume::default(), out);
}

/// Where a walk picks up: the state the windows before some instant `S` left behind.
///
/// The walk's state between busy intervals is only the end of the current window (and,
/// under `count_free`, the last charged window and how far short rows reach). So when no
/// session that starts before `S` is open at or after `S`, walking the sessions that
/// start at or after `S` from this state gives exactly the windows a walk over all
/// sessions gives from `S` on. The collector uses it to recompute only a key's recent
/// past after a sync, however long the key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// End of the last charged window that starts before `S` (`Nanos::MIN`: none).
    pub window_end: Nanos,
    /// Start of that window, for the `count_free` containment check.
    pub window_start: Nanos,
    /// The latest end of the `count_free` rows that start before `S`.
    pub short_reach: Nanos,
}

impl Default for Resume {
    fn default() -> Self {
        Resume {
            window_end: Nanos::MIN,
            window_start: Nanos::MIN,
            short_reach: Nanos::MIN,
        }
    }
}

/// [`walk`] from a saved state; see [`Resume`] for when that is exact.
pub fn walk_from(spans: &[Span<'_>], rules: &Rules, resume: &Resume, out: &mut Vec<Window>) {
    let first = out.len();
    let count_free = rules.short_sessions == ShortSessions::CountFree;
    let mut shorts: Vec<usize> = Vec::new();
    let mut members: Vec<Span<'_>> = Vec::new();
    let mut window_end = resume.window_end;
    let mut i = 0;
    while i < spans.len() {
        if spans[i].is_short(rules) {
            if count_free {
                shorts.push(i);
            }
            i += 1;
            continue;
        }
        // One busy interval: the union of overlapping or touching long sessions.
        members.clear();
        let a = spans[i].start;
        let mut b = spans[i].end;
        members.push(spans[i]);
        i += 1;
        while i < spans.len() && spans[i].start <= b {
            if spans[i].is_short(rules) {
                if count_free {
                    shorts.push(i);
                }
            } else {
                b = b.max(spans[i].end);
                members.push(spans[i]);
            }
            i += 1;
        }
        let mut opener = Opener {
            members: &members,
            lowest: 0,
        };
        if a >= window_end {
            window_end = opener.open(a, rules, out);
        }
        while b > window_end {
            let t = match rules.rollover {
                Rollover::Open => window_end,
                Rollover::Active => match first_active(&members, window_end) {
                    Some(t) => t,
                    None => break,
                },
            };
            if b.saturating_sub(t) >= rules.min_session {
                window_end = opener.open(t, rules, out);
            } else {
                break; // a short tail past the window end is free
            }
        }
    }
    if count_free && !shorts.is_empty() {
        add_short_rows(spans, &shorts, first, resume, out);
    }
}

/// Opens charged windows inside one busy interval and finds the zone each is dated in.
struct Opener<'m, 's> {
    members: &'m [Span<'s>],
    /// Members before this index ended before the last window start; window starts only
    /// move forward inside a busy interval, so they can never be open again.
    lowest: usize,
}

impl Opener<'_, '_> {
    fn open(&mut self, t: Nanos, rules: &Rules, out: &mut Vec<Window>) -> Nanos {
        let end = t.saturating_add(rules.window);
        out.push(Window {
            start: t,
            end,
            zone: self.zone_at(t),
            kind: WindowKind::Charged,
        });
        end
    }

    /// The zone of the earliest-started member open at `t` (members are in walk order;
    /// a busy interval has at least one member, so the fallback always exists).
    fn zone_at(&mut self, t: Nanos) -> Zone {
        while self.lowest + 1 < self.members.len() && self.members[self.lowest].end <= t {
            self.lowest += 1;
        }
        self.members[self.lowest..]
            .iter()
            .take_while(|m| m.start <= t)
            .find(|m| m.end > t)
            .unwrap_or(&self.members[self.lowest])
            .zone
    }
}

/// `rollover = active`: the first instant ≥ `from` at which a member is open and not idle.
fn first_active(members: &[Span<'_>], from: Nanos) -> Option<Nanos> {
    let mut best: Option<Nanos> = None;
    for m in members {
        if best.is_some_and(|b| m.start >= b) {
            break; // later members start no earlier than the best found
        }
        if m.end <= from {
            continue;
        }
        let t = past_idle(m.idle, m.start.max(from));
        if t < m.end && best.is_none_or(|b| t < b) {
            best = Some(t);
        }
    }
    best
}

/// The first instant ≥ `t` outside every `[from, to)` idle interval (in any order).
fn past_idle(idle: &[Interval], mut t: Nanos) -> Nanos {
    loop {
        let moved = idle
            .iter()
            .map(|[f, e]| (nanos(f), nanos(e)))
            .find(|&(f, e)| f <= t && t < e);
        match moved {
            Some((_, e)) => t = e,
            None => return t,
        }
    }
}

/// `short_sessions = count_free`: each short session whose start lies in no charged
/// window and in no earlier short row becomes its own row `[start, effective end)`.
fn add_short_rows(
    spans: &[Span<'_>],
    shorts: &[usize],
    first: usize,
    resume: &Resume,
    out: &mut Vec<Window>,
) {
    let charged_len = out.len() - first;
    let mut reach = resume.short_reach; // the latest end of the short rows so far
    for &k in shorts {
        let s = &spans[k];
        let charged = &out[first..first + charged_len];
        let before = charged.partition_point(|w| w.start <= s.start);
        let in_charged = (before > 0 && s.start < charged[before - 1].end)
            || (resume.window_start <= s.start && s.start < resume.window_end);
        if in_charged || s.start < reach {
            continue;
        }
        reach = reach.max(s.end);
        out.push(Window {
            start: s.start,
            end: s.end,
            zone: s.zone,
            kind: WindowKind::ShortFree,
        });
    }
    out[first..].sort_by_key(|w| w.start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::time::parse_instant;

    const H: i64 = 3_600_000_000_000;
    const M: i64 = 60_000_000_000;

    fn utc() -> Zone {
        Zone::Named(chrono_tz::UTC)
    }

    /// A span with its id, for the tie rule.
    type Named = (&'static str, Span<'static>);

    fn span(id: &'static str, start: i64, end: i64) -> Named {
        (
            id,
            Span {
                start,
                end,
                zone: utc(),
                idle: &[],
            },
        )
    }

    fn idle_span(id: &'static str, start: i64, end: i64, from: &str, to: &str) -> Named {
        let idle: &'static [Interval] = Box::leak(Box::new([[
            parse_instant("idle", from).unwrap(),
            parse_instant("idle", to).unwrap(),
        ]]));
        (
            id,
            Span {
                start,
                end,
                zone: utc(),
                idle,
            },
        )
    }

    fn windows(spans: &mut [Named], policy: &Policy) -> Vec<Window> {
        spans.sort_by(|(a, x), (b, y)| x.start.cmp(&y.start).then(a.cmp(b)));
        let spans: Vec<Span<'_>> = spans.iter().map(|(_, s)| *s).collect();
        let mut out = Vec::new();
        walk(&spans, &policy.rules(), &mut out);
        out
    }

    fn run(spans: &mut [Named], policy: &Policy) -> Vec<(i64, i64)> {
        windows(spans, policy)
            .iter()
            .map(|w| (w.start, w.end))
            .collect()
    }

    fn active() -> Policy {
        Policy {
            rollover: Rollover::Active,
            ..Policy::default()
        }
    }

    #[test]
    fn launch_opens_a_window_and_relaunch_inside_it_is_free() {
        let got = run(
            &mut [
                span("a", 0, H),
                span("b", 4 * H, 6 * H),
                span("c", 15 * H, 18 * H),
            ],
            &Policy::default(),
        );
        assert_eq!(got, vec![(0, 24 * H)]);
    }

    #[test]
    fn relaunch_exactly_at_window_end_opens_a_new_window() {
        let got = run(
            &mut [span("a", 0, H), span("b", 24 * H, 25 * H)],
            &Policy::default(),
        );
        assert_eq!(got, vec![(0, 24 * H), (24 * H, 48 * H)]);
    }

    #[test]
    fn session_under_minimum_is_ignored() {
        assert!(run(&mut [span("a", 0, 5 * M - 1)], &Policy::default()).is_empty());
        assert_eq!(run(&mut [span("a", 0, 5 * M)], &Policy::default()).len(), 1);
    }

    #[test]
    fn open_past_window_end_is_charged_again() {
        let got = run(&mut [span("a", 0, 63 * H)], &Policy::default());
        assert_eq!(got, vec![(0, 24 * H), (24 * H, 48 * H), (48 * H, 72 * H)]);
    }

    #[test]
    fn short_tail_past_window_end_is_free() {
        assert_eq!(
            run(&mut [span("a", 0, 24 * H + 3 * M)], &Policy::default()).len(),
            1
        );
        assert_eq!(
            run(&mut [span("a", 0, 24 * H + 6 * M)], &Policy::default()).len(),
            2
        );
    }

    #[test]
    fn tail_is_measured_on_the_busy_interval_not_one_session() {
        // Session a alone has a 3-minute tail; overlapping b carries the busy time to 6.
        let got = run(
            &mut [
                span("a", 0, 24 * H + 3 * M),
                span("b", 10 * H, 24 * H + 6 * M),
            ],
            &Policy::default(),
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn short_session_does_not_bridge_busy_intervals() {
        let got = run(
            &mut [
                span("a", 0, 24 * H - M),
                span("s", 24 * H - M, 24 * H + 2 * M),
            ],
            &Policy::default(),
        );
        assert_eq!(got, vec![(0, 24 * H)]);
    }

    #[test]
    fn idle_aware_rollover_waits_for_use() {
        let mut spans = [idle_span(
            "a",
            0,
            64 * H + 30 * M,
            "1970-01-01T01:00:00Z",
            "1970-01-03T16:00:00Z",
        )];
        assert_eq!(
            run(&mut spans, &active()),
            vec![(0, 24 * H), (64 * H, 88 * H)]
        );
    }

    #[test]
    fn idle_aware_rollover_with_short_active_tail_is_free() {
        let mut spans = [idle_span(
            "a",
            0,
            34 * H + 3 * M,
            "1970-01-01T01:00:00Z",
            "1970-01-02T10:00:00Z",
        )];
        assert_eq!(run(&mut spans, &active()), vec![(0, 24 * H)]);
    }

    #[test]
    fn idle_aware_rollover_uses_any_device_in_use() {
        // device A idle after its first hour; device B in use at 30h.
        let mut spans = [
            idle_span(
                "a",
                0,
                48 * H,
                "1970-01-01T01:00:00Z",
                "1970-01-05T00:00:00Z",
            ),
            span("b", 30 * H, 31 * H),
        ];
        assert_eq!(
            run(&mut spans, &active()),
            vec![(0, 24 * H), (30 * H, 54 * H)]
        );
    }

    #[test]
    fn idle_is_ignored_under_open_rollover() {
        let mut spans = [idle_span(
            "a",
            0,
            30 * H,
            "1970-01-01T01:00:00Z",
            "1970-01-02T05:00:00Z",
        )];
        assert_eq!(run(&mut spans, &Policy::default()).len(), 2);
    }

    #[test]
    fn count_free_rows_skip_starts_inside_charged_windows_and_earlier_rows() {
        let policy = Policy {
            short_sessions: ShortSessions::CountFree,
            ..Policy::default()
        };
        let got = run(
            &mut [
                span("long", 0, H),
                span("in", 2 * H, 2 * H + M),
                span("out", 30 * H, 30 * H + 3 * M),
                span("in-row", 30 * H + M, 30 * H + 2 * M),
            ],
            &policy,
        );
        assert_eq!(got, vec![(0, 24 * H), (30 * H, 30 * H + 3 * M)]);
    }

    #[test]
    fn window_is_dated_by_earliest_started_open_session() {
        let tokyo = Zone::Named(chrono_tz::Asia::Tokyo);
        let (_, b) = span("b", 0, 2 * H);
        let mut spans = [
            ("b", Span { zone: tokyo, ..b }),
            span("a", 0, 3 * H),
            span("c", -H, -H + M),
        ];
        let out = windows(&mut spans, &Policy::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].zone, utc(), "same start: id 'a' comes first");
    }

    #[test]
    fn rollover_is_dated_by_the_session_open_then() {
        let tokyo = Zone::Named(chrono_tz::Asia::Tokyo);
        let (_, b) = span("b", 20 * H, 50 * H);
        let mut spans = [span("a", 0, 25 * H), ("b", Span { zone: tokyo, ..b })];
        let out = windows(&mut spans, &Policy::default());
        assert_eq!(
            out.iter().map(|w| w.zone).collect::<Vec<_>>(),
            vec![utc(), utc(), tokyo]
        );
    }

    #[test]
    fn resumed_walk_equals_the_full_walk_after_a_gap() {
        for policy in [
            Policy::default(),
            Policy {
                short_sessions: ShortSessions::CountFree,
                ..Policy::default()
            },
            active(),
        ] {
            let mut all = [
                span("a", 0, 30 * H),
                span("s1", 40 * H, 40 * H + M),
                span("b", 50 * H, 51 * H),
                span("s2", 60 * H, 60 * H + 2 * M),
                span("c", 80 * H, 130 * H),
                span("s3", 131 * H, 131 * H + M),
            ];
            let full = windows(&mut all, &policy);
            // Resume at the start of "c": nothing before it is open at or after it.
            let cut = 80 * H;
            let before: Vec<&Window> = full.iter().filter(|w| w.start < cut).collect();
            let last_charged = before.iter().rev().find(|w| w.kind == WindowKind::Charged);
            let resume = Resume {
                window_end: last_charged.map_or(Nanos::MIN, |w| w.end),
                window_start: last_charged.map_or(Nanos::MIN, |w| w.start),
                short_reach: before
                    .iter()
                    .filter(|w| w.kind == WindowKind::ShortFree)
                    .map(|w| w.end)
                    .max()
                    .unwrap_or(Nanos::MIN),
            };
            let rest: Vec<Span<'_>> = all
                .iter()
                .map(|(_, s)| *s)
                .filter(|s| s.start >= cut)
                .collect();
            let mut resumed = Vec::new();
            walk_from(&rest, &policy.rules(), &resume, &mut resumed);
            let tail: Vec<Window> = full.iter().filter(|w| w.start >= cut).copied().collect();
            assert_eq!(resumed, tail, "{policy:?}");
        }
    }
}
