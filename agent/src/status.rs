//! `daymeter-agent status`: what is open, how long each window has left, when the agent
//! last reached the collector, how much offline grace is left, what waits to upload.
//!
//! The running agent answers over a local socket (`status.sock` in the data directory:
//! sled lets only one process open the journal). When no agent runs, the command reads
//! the journal itself and says so.
//!
//! The socket speaks one line per connection: the client writes a command (`status` or
//! `enroll`), the agent answers one JSON document and closes. Every local account may
//! connect, so that a designer runs `status` as themselves against the agent the system
//! runs; each request is authorised by the caller's credentials
//! ([`crate::status_socket`]): a designer sees the sessions of their own processes.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use daymeter_shared::accounting::{Span, Window, WindowKind, walk};
use daymeter_shared::policy::Policy;
use daymeter_shared::time::{Zone, nanos, utc_seconds};

use crate::journal::{Stage, Tracked};
use crate::sync::{GraceUntil, SyncAnswer};

/// An open session as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenItem {
    pub id: String,
    pub product: String,
    pub start: String,
    pub last_seen: Option<String>,
    /// End of the charge window the product runs in, when known.
    pub window_end: Option<DateTime<Utc>>,
    /// `collector` when the collector said so at the last sync, `agent` when the agent
    /// worked it out from its own sessions (offline; a lower bound on what is charged).
    pub window_source: Option<String>,
    /// Tokens the next window will cost, when the collector said.
    pub next_tokens: Option<u64>,
}

/// A session the collector refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedInfo {
    pub id: String,
    pub product: String,
    pub reason: String,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Answered by a running agent (`true`) or read from the journal (`false`).
    pub running: bool,
    pub now: DateTime<Utc>,
    pub user: String,
    pub collector_url: String,
    pub device_id: Option<String>,
    /// The collector revoked this device; `daymeter-agent enroll` is needed.
    pub revoked: bool,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub grace_until: GraceUntil,
    pub open: Vec<OpenItem>,
    /// Sessions the collector has not yet acknowledged in their final form.
    pub waiting_upload: usize,
    pub rejected: Vec<RejectedInfo>,
    /// Set when the lists above hold only the sessions of this account's processes
    /// (the caller was neither root nor the agent's own account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_of_uid: Option<u32>,
}

/// What a status is computed from.
pub struct Inputs<'a> {
    pub running: bool,
    pub now: DateTime<Utc>,
    pub user: &'a str,
    pub collector_url: &'a str,
    pub device_id: Option<&'a str>,
    pub revoked: bool,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_error: Option<&'a str>,
    pub answer: Option<&'a SyncAnswer>,
    pub policy: &'a Policy,
    /// Every session the agent holds, open and closed.
    pub sessions: &'a [&'a Tracked],
    /// Lists only the sessions of this account's processes (windows are still worked
    /// out from every session: they are the licence user's, whoever ran the process).
    pub only_owner: Option<u32>,
}

impl Status {
    pub fn build(i: &Inputs<'_>) -> Status {
        let mut open = Vec::new();
        let mut rejected = Vec::new();
        let mut waiting = 0;
        let shown = i
            .sessions
            .iter()
            .filter(|t| i.only_owner.is_none_or(|uid| t.owner == Some(uid)));
        for t in shown {
            match &t.stage {
                Stage::Rejected { reason } => rejected.push(RejectedInfo {
                    id: t.session.id.to_string(),
                    product: t.session.product.to_string(),
                    reason: reason.clone(),
                }),
                _ => waiting += 1,
            }
            if t.session.end.is_none() {
                let (window_end, window_source, next_tokens) = window_of(i, &t.session.product);
                open.push(OpenItem {
                    id: t.session.id.to_string(),
                    product: t.session.product.to_string(),
                    start: t.session.start.to_rfc3339(),
                    last_seen: t.session.last_seen.map(|l| l.to_rfc3339()),
                    window_end,
                    window_source,
                    next_tokens,
                });
            }
        }
        Status {
            running: i.running,
            now: i.now,
            user: i.user.to_owned(),
            collector_url: i.collector_url.to_owned(),
            device_id: i.device_id.map(str::to_owned),
            revoked: i.revoked,
            last_sync: i.last_sync,
            last_error: i.last_error.map(str::to_owned),
            grace_until: i.answer.map(|a| a.grace_until.clone()).unwrap_or_default(),
            open,
            waiting_upload: waiting,
            rejected,
            sessions_of_uid: i.only_owner,
        }
    }

    /// The text `daymeter-agent status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let who = if self.running {
            "agent running"
        } else {
            "agent not running (read from the journal)"
        };
        let _ = writeln!(
            out,
            "{who}; user {}; collector {}",
            self.user, self.collector_url
        );
        match (&self.device_id, self.revoked) {
            (_, true) => {
                let _ = writeln!(
                    out,
                    "device REVOKED by the collector: run `daymeter-agent enroll` (sessions are still journaled)"
                );
            }
            (Some(id), false) => {
                let _ = writeln!(out, "device {id}");
            }
            (None, false) => {
                let _ = writeln!(out, "device not enrolled yet");
            }
        }
        match self.last_sync {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "last sync {} ({} ago)",
                    t.to_rfc3339(),
                    ago(self.now, t)
                );
            }
            None => {
                let _ = writeln!(out, "last sync: never");
            }
        }
        if let Some(e) = &self.last_error {
            let _ = writeln!(out, "last error: {e}");
        }
        if let Some(uid) = self.sessions_of_uid {
            let _ = writeln!(
                out,
                "sessions of uid {uid}'s processes only (root and the agent's account see all)"
            );
        }
        for (plan, until) in [
            ("flex", self.grace_until.flex),
            ("subscription", self.grace_until.subscription),
        ] {
            if let Some(until) = until {
                let _ = writeln!(
                    out,
                    "offline grace ({plan}): until {} ({})",
                    until.to_rfc3339(),
                    left(self.now, until)
                );
            }
        }
        if self.open.is_empty() {
            let _ = writeln!(out, "no product open");
        }
        for o in &self.open {
            let window = match o.window_end {
                Some(end) => format!(
                    "window ends {} ({}){}",
                    end.to_rfc3339(),
                    left(self.now, end),
                    match o.next_tokens {
                        Some(t) => format!(", next window costs {t} tokens"),
                        None => String::new(),
                    }
                ),
                None => "window unknown".to_owned(),
            };
            let _ = writeln!(out, "open: {} since {}; {window}", o.product, o.start);
        }
        let _ = writeln!(out, "waiting to upload: {}", self.waiting_upload);
        for r in &self.rejected {
            let _ = writeln!(
                out,
                "rejected by the collector: {} {} — {}",
                r.product, r.id, r.reason
            );
        }
        out
    }
}

fn ago(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let d = (now - then).to_std().unwrap_or_default();
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

fn left(now: DateTime<Utc>, until: DateTime<Utc>) -> String {
    match (until - now).to_std() {
        Ok(d) => format!(
            "{} left",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "passed".to_owned(),
    }
}

/// The product's current window: the collector's word from the last sync if that
/// window has not ended, else the agent's own walk over the sessions it holds.
fn window_of(
    i: &Inputs<'_>,
    product: &str,
) -> (Option<DateTime<Utc>>, Option<String>, Option<u64>) {
    if let Some(w) = i
        .answer
        .into_iter()
        .flat_map(|a| a.open_windows.iter())
        .find(|w| w.product == product && w.window_end > i.now)
    {
        return (Some(w.window_end), Some("collector".into()), w.next_tokens);
    }
    let mut of_product: Vec<&Tracked> = i
        .sessions
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
    walk(&spans, &i.policy.rules(), &mut windows);
    let now = nanos(&i.now.fixed_offset());
    let current = windows
        .iter()
        .rev()
        .find(|w| w.kind == WindowKind::Charged && w.start <= now)
        .map(|w| utc_seconds(w.end));
    match current {
        Some(end) => (Some(end), Some("agent".into()), None),
        None => (None, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Meter;
    use crate::watch::{ProcessKey, Running};
    use chrono::{TimeDelta, TimeZone};

    #[test]
    fn offline_the_window_end_is_the_agents_own_walk() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        let mut m = Meter::new(None);
        let r = [Running {
            key: ProcessKey { pid: 1, started: 1 },
            product: "acad".into(),
            owner: None,
        }];
        m.observe(&r, t0);
        let now = t0 + TimeDelta::hours(2);
        m.observe(&r, now);
        let sessions: Vec<&Tracked> = m.open().collect();
        let policy = Policy::default();
        let s = Status::build(&Inputs {
            running: true,
            now,
            user: "sophie",
            collector_url: "http://c",
            device_id: None,
            revoked: false,
            last_sync: None,
            last_error: None,
            answer: None,
            policy: &policy,
            sessions: &sessions,
            only_owner: None,
        });
        assert_eq!(s.open.len(), 1);
        assert_eq!(s.open[0].window_end, Some(t0 + TimeDelta::hours(24)));
        assert_eq!(s.open[0].window_source.as_deref(), Some("agent"));
        assert_eq!(s.waiting_upload, 1);
        assert!(s.render().contains("open: acad"));
    }
}
