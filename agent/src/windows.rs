//! The charge window a product runs in now, as far as the agent can know it: the
//! collector's word from the last sync while that window lasts, else the agent's own
//! walk over the sessions it holds (offline; a lower bound on what is charged, since
//! sessions the collector already acknowledged have left the journal). `status` and
//! the reminders read it from here, so they never disagree.

use chrono::{DateTime, Utc};

use daymeter_shared::accounting::{Span, Window, WindowKind, walk};
use daymeter_shared::policy::Policy;
use daymeter_shared::time::{Zone, nanos, utc_seconds};

use crate::journal::Tracked;
use crate::sync::OpenWindow;

/// Where a window's bounds come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Collector,
    Agent,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Collector => "collector",
            Source::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentWindow {
    pub start: Option<DateTime<Utc>>,
    pub end: DateTime<Utc>,
    /// Tokens the next window costs, when the collector said.
    pub next_tokens: Option<u64>,
    pub source: Source,
}

/// The window of `product` that covers `now`: the collector's (from `collector`, the
/// licence user's open windows at the last sync) if it has not ended, else the walk
/// over `sessions` (the licence user's sessions the agent holds).
pub fn current(
    collector: &[OpenWindow],
    sessions: &[&Tracked],
    product: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<CurrentWindow> {
    if let Some(w) = collector
        .iter()
        .find(|w| w.product == product && w.window_end > now)
        .filter(|w| w.window_start.is_none_or(|s| s <= now))
    {
        return Some(CurrentWindow {
            start: w.window_start,
            end: w.window_end,
            next_tokens: w.next_tokens,
            source: Source::Collector,
        });
    }
    let mut of_product: Vec<&Tracked> = sessions
        .iter()
        .copied()
        .filter(|t| t.session.product == product)
        .collect();
    of_product.sort_by(|a, b| {
        a.session
            .start
            .cmp(&b.session.start)
            .then_with(|| a.session.id.cmp(&b.session.id))
    });
    let spans: Vec<Span<'_>> = of_product
        .iter()
        .filter_map(|t| {
            let zone = Zone::of(t.session.tz.as_deref(), &t.session.start).ok()?;
            Some(Span::of(&t.session, zone))
        })
        .collect();
    let mut windows: Vec<Window> = Vec::new();
    walk(&spans, &policy.rules(), &mut windows);
    let at = nanos(&now.fixed_offset());
    windows
        .iter()
        .rev()
        .find(|w| w.kind == WindowKind::Charged && w.start <= at && at < w.end)
        .map(|w| CurrentWindow {
            start: Some(utc_seconds(w.start)),
            end: utc_seconds(w.end),
            next_tokens: None,
            source: Source::Agent,
        })
}
