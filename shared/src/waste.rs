//! Which charged windows were wasted: the marks the collector stores on each usage day
//! when it settles a key, and its waste report lists.
//!
//! For one key's windows (rollover = open, as charged) over its spans:
//! - **idle**: a charged window in which no span of the key was open and in use at any
//!   instant — the product was idle, or the machine asleep (the agent folds suspend into
//!   idle), the whole window. Its tokens were wasted.
//! - **rolled**: a window that opened while a span ran across its start — at the end of
//!   the previous window, a product left open overnight or over a weekend — rather than
//!   at a launch. (The walk opens a window at a launch only where no span that counts —
//!   none shorter than `min_session` — is open, so a long span across the start is the
//!   mark of a rollover, and no previous window need be known.)
//! - a window both idle and rolled is one `rollover = active` would not have opened: it
//!   waits for the next instant of use, and there was none in the window. Its tokens
//!   are what that policy would have saved. Only those: what the later launches would
//!   then have cost, once the next window opened later, is not counted (it can go either
//!   way, and knowing it means walking every key's whole history again at each report).
//!
//! Why marks stored at settling and not a walk at each report: a total over every user
//! and a year is then a sum of a few hundred rows, not a read of millions of sessions.

use crate::accounting::Span;
use crate::time::{Nanos, nanos};

/// A window's marks, as stored: bit 0 idle, bit 1 rolled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Marks(u8);

impl Marks {
    pub const IDLE: Marks = Marks(1);
    pub const ROLLED: Marks = Marks(2);

    pub fn new(idle: bool, rolled: bool) -> Marks {
        Marks(u8::from(idle) | (u8::from(rolled) << 1))
    }

    pub fn from_bits(bits: i64) -> Marks {
        Marks((bits & 3) as u8)
    }

    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }

    pub fn idle(self) -> bool {
        self.0 & 1 != 0
    }

    pub fn rolled(self) -> bool {
        self.0 & 2 != 0
    }

    /// Tokens wasted and tokens `rollover = active` would have saved, of a window of
    /// `tokens` with these marks.
    pub fn cost(self, tokens: i64) -> (i64, i64) {
        let wasted = if self.idle() { tokens } else { 0 };
        let saved = if self.idle() && self.rolled() {
            tokens
        } else {
            0
        };
        (wasted, saved)
    }

    /// The same marks without `idle`.
    pub fn used(self) -> Marks {
        Marks(self.0 & !1)
    }
}

/// A key's spans by start, with the latest end so far: which spans touch an interval,
/// found by binary search (a year of a key is a few hundred spans and as many windows).
pub struct ByStart<'a, 's> {
    spans: &'a [Span<'s>],
    /// Spans shorter than this take no part in the walk (`min_session`).
    min_session: Nanos,
    /// (start, end, index in `spans`), by start.
    order: Vec<(Nanos, Nanos, usize)>,
    /// The latest end among `order[..=i]`: every span before the first whose value
    /// passes an instant had ended by it.
    ended_by: Vec<Nanos>,
}

impl<'a, 's> ByStart<'a, 's> {
    pub fn new(spans: &'a [Span<'s>], min_session: Nanos) -> Self {
        let mut order: Vec<_> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.start, s.end, i))
            .collect();
        order.sort_unstable();
        let mut latest = Nanos::MIN;
        let ended_by = order
            .iter()
            .map(|&(_, end, _)| {
                latest = latest.max(end);
                latest
            })
            .collect();
        ByStart {
            spans,
            min_session,
            order,
            ended_by,
        }
    }

    /// Indexes (into the given spans) of those that start before `to` and end after
    /// `from`, in no particular order.
    pub fn overlapping(&self, from: Nanos, to: Nanos) -> impl Iterator<Item = usize> + '_ {
        let lo = self.ended_by.partition_point(|&e| e <= from);
        let hi = self.order.partition_point(|&(start, _, _)| start < to);
        self.order
            .get(lo..hi)
            .unwrap_or_default()
            .iter()
            .filter(move |&&(_, end, _)| end > from)
            .map(|&(_, _, i)| i)
    }

    /// Whether a span the walk counts runs across `at`: started before it, still open
    /// after it, and not shorter than `min_session`.
    pub fn any_across(&self, at: Nanos) -> bool {
        self.overlapping(at, at).any(|i| {
            let s = &self.spans[i];
            s.end.saturating_sub(s.start) >= self.min_session
        })
    }

    /// Whether some span was open and not idle at an instant of `[from, to)`.
    pub fn in_use_within(&self, from: Nanos, to: Nanos) -> bool {
        self.overlapping(from, to)
            .any(|i| in_use_within(&self.spans[i], from, to))
    }

    /// The marks of the charged window `[start, end)`.
    pub fn marks(&self, start: Nanos, end: Nanos) -> Marks {
        Marks::new(!self.in_use_within(start, end), self.any_across(start))
    }
}

/// Whether `s` was open and not idle at some instant of `[from, to)`.
fn in_use_within(s: &Span<'_>, from: Nanos, to: Nanos) -> bool {
    let (start, end) = (s.start.max(from), s.end.min(to));
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

#[cfg(test)]
mod tests {
    use chrono::{DateTime, FixedOffset};

    use super::*;
    use crate::session::Interval;
    use crate::time::Zone;

    const FIVE_MINUTES: Nanos = 300_000_000_000;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).expect("an instant")
    }

    fn ns(s: &str) -> Nanos {
        nanos(&at(s))
    }

    fn span<'s>(start: &str, end: &str, idle: &'s [Interval]) -> Span<'s> {
        Span {
            start: ns(start),
            end: ns(end),
            zone: Zone::Fixed(FixedOffset::east_opt(0).expect("UTC")),
            idle,
        }
    }

    #[test]
    fn a_window_with_no_instant_of_use_is_idle() {
        let idle = [[at("2026-11-06T18:00:00Z"), at("2026-11-09T09:00:00Z")]];
        let spans = [span("2026-11-06T17:00:00Z", "2026-11-09T09:30:00Z", &idle)];
        let by = ByStart::new(&spans, FIVE_MINUTES);
        let fri = ns("2026-11-06T17:00:00Z");
        let sat = ns("2026-11-07T17:00:00Z");
        let sun = ns("2026-11-08T17:00:00Z");
        let mon = ns("2026-11-09T17:00:00Z");
        assert_eq!(by.marks(fri, sat), Marks::new(false, false));
        assert_eq!(by.marks(sat, sun), Marks::new(true, true));
        assert_eq!(by.marks(sun, mon), Marks::new(false, true));
    }

    #[test]
    fn only_an_idle_rolled_window_is_what_active_rollover_saves() {
        assert_eq!(Marks::new(true, true).cost(7), (7, 7));
        assert_eq!(Marks::new(true, false).cost(7), (7, 0));
        assert_eq!(Marks::new(false, true).cost(7), (0, 0));
    }

    #[test]
    fn a_relaunch_at_the_window_end_is_no_rollover() {
        let spans = [
            span("2026-11-09T09:00:00Z", "2026-11-09T10:00:00Z", &[]),
            span("2026-11-10T09:00:00Z", "2026-11-10T10:00:00Z", &[]),
        ];
        let by = ByStart::new(&spans, FIVE_MINUTES);
        let tue = ns("2026-11-10T09:00:00Z");
        let marks = by.marks(tue, ns("2026-11-11T09:00:00Z"));
        assert!(!marks.rolled() && !marks.idle());
    }

    #[test]
    fn a_short_session_across_a_launch_makes_no_rollover() {
        let spans = [
            span("2026-11-10T08:58:00Z", "2026-11-10T09:01:00Z", &[]),
            span("2026-11-10T09:00:00Z", "2026-11-10T12:00:00Z", &[]),
        ];
        let by = ByStart::new(&spans, FIVE_MINUTES);
        let nine = ns("2026-11-10T09:00:00Z");
        assert!(!by.marks(nine, ns("2026-11-11T09:00:00Z")).rolled());
    }

    #[test]
    fn marks_keep_their_bits() {
        for m in [
            Marks::default(),
            Marks::IDLE,
            Marks::ROLLED,
            Marks::new(true, true),
        ] {
            assert_eq!(Marks::from_bits(m.bits()), m);
        }
        assert_eq!(Marks::new(true, true).used(), Marks::ROLLED);
    }
}
