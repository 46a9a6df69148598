//! `daymeter-agent status`: what is open (pid, executable, licence user, time left in
//! its window), whether each account is idle, the last sleep, how much offline grace is
//! left, the reminders sent lately, what waits to upload and what the collector refused.
//!
//! The running service answers over its local socket ([`crate::status_socket`]), each
//! caller seeing only the sessions of their own processes unless root or the service's
//! account. When no agent runs, the command reads the journal itself and says so.
//!
//! The JSON carries exact instants (RFC 3339, UTC); the text a person reads gives local
//! times to the minute and durations as "29 d 23 h", in the reader's own zone (the
//! command renders it, not the service).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use serde::{Deserialize, Serialize};

use daymeter_shared::policy::Policy;

use crate::group_policy::Origins;
use crate::journal::{Stage, Tracked};
use crate::reminder::Kind;
use crate::sync::{GraceUntil, SyncAnswer};

/// An open session as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenItem {
    pub id: String,
    pub product: String,
    /// The licence user charged.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub exe: Option<String>,
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

/// A session the collector refused; `daymeter-agent ack ID` drops it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedInfo {
    pub id: String,
    pub product: String,
    pub reason: String,
}

/// One account's input activity, as its session helper reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActivityItem {
    pub uid: u32,
    /// A session helper of the account is connected.
    pub helper: bool,
    /// Idle since this last input (idle for `idle_after` or more); `None`: active, or
    /// unknown when no helper or idle source answers.
    pub idle_since: Option<DateTime<Utc>>,
    /// Which idle source the helper reads.
    pub source: Option<String>,
}

/// A reminder decided lately.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentItem {
    pub at: DateTime<Utc>,
    pub kind: Kind,
    pub product: String,
    pub uid: Option<u32>,
    /// A helper of the account was connected to show it.
    pub shown: bool,
}

/// Offline grace left for one plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GraceItem {
    pub plan: String,
    pub until: DateTime<Utc>,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Answered by a running agent (`true`) or read from the journal (`false`).
    pub running: bool,
    pub now: DateTime<Utc>,
    /// The configured licence user of every session, on a single-user machine.
    #[serde(default)]
    pub user: Option<String>,
    pub collector_url: String,
    pub device_id: Option<String>,
    /// The collector revoked this device; `daymeter-agent enroll` is needed.
    pub revoked: bool,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The collector's deadlines at the last sync.
    pub grace_until: GraceUntil,
    /// The agent's own deadlines, clock changes accounted (see [`crate::grace`]).
    #[serde(default)]
    pub grace: Vec<GraceItem>,
    pub open: Vec<OpenItem>,
    /// Sessions the collector has not yet acknowledged in their final form (open ones
    /// included: their final copy is still to come).
    pub waiting_upload: usize,
    pub rejected: Vec<RejectedInfo>,
    #[serde(default)]
    pub activity: Vec<ActivityItem>,
    /// The last sleep the agent saw, `[from, to]`.
    #[serde(default)]
    pub last_sleep: Option<[DateTime<Utc>; 2]>,
    #[serde(default)]
    pub reminders: Vec<SentItem>,
    /// Set when the lists above hold only the sessions of this account's processes
    /// (the caller was neither root nor the agent's own account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_of_uid: Option<u32>,
    /// Where each setting came from: `policy` (Group Policy), `installer` (the MSI's
    /// values), `environment`, `file`, `collector` (the collector's policy) or
    /// `default`; keys as in the configuration file (`collector_url`…).
    #[serde(default)]
    pub settings: Origins,
}

/// What a status is computed from.
pub struct Inputs<'a> {
    pub running: bool,
    pub now: DateTime<Utc>,
    pub user: Option<&'a str>,
    pub collector_url: &'a str,
    pub device_id: Option<&'a str>,
    pub revoked: bool,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_error: Option<&'a str>,
    /// The last answer (grace deadlines).
    pub answer: Option<&'a SyncAnswer>,
    /// Each licence user's last answer (their windows).
    pub answers: &'a BTreeMap<String, SyncAnswer>,
    pub policy: &'a Policy,
    /// Every session the agent holds, open and closed.
    pub sessions: &'a [&'a Tracked],
    /// Lists only the sessions of this account's processes (windows are still worked
    /// out from every session of the licence user, whoever ran the process).
    pub only_owner: Option<u32>,
    pub activity: Vec<ActivityItem>,
    pub last_sleep: Option<[DateTime<Utc>; 2]>,
    pub reminders: Vec<SentItem>,
    pub grace: Vec<GraceItem>,
    /// Where each setting came from (the configuration's origins).
    pub settings: &'a Origins,
}

impl Status {
    pub fn build(i: Inputs<'_>) -> Status {
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
                let of_user: Vec<&Tracked> = i
                    .sessions
                    .iter()
                    .copied()
                    .filter(|s| s.user == t.user)
                    .collect();
                let collector = t
                    .user
                    .as_deref()
                    .and_then(|u| i.answers.get(u))
                    .or(i.answer)
                    .map(|a| a.open_windows.as_slice())
                    .unwrap_or(&[]);
                let window = crate::windows::current(
                    collector,
                    &of_user,
                    &t.session.product,
                    i.policy,
                    i.now,
                );
                open.push(OpenItem {
                    id: t.session.id.to_string(),
                    product: t.session.product.to_string(),
                    user: t.user.clone(),
                    pid: Some(t.process.pid),
                    exe: t.exe.clone(),
                    start: t.session.start.to_rfc3339(),
                    last_seen: t.session.last_seen.map(|l| l.to_rfc3339()),
                    window_end: window.map(|w| w.end),
                    window_source: window.map(|w| w.source.as_str().to_owned()),
                    next_tokens: window.and_then(|w| w.next_tokens),
                });
            }
        }
        let mine = |uid: Option<u32>| i.only_owner.is_none_or(|o| uid == Some(o));
        Status {
            running: i.running,
            now: i.now,
            user: i.user.map(str::to_owned),
            collector_url: i.collector_url.to_owned(),
            device_id: i.device_id.map(str::to_owned),
            revoked: i.revoked,
            last_sync: i.last_sync,
            last_error: i.last_error.map(str::to_owned),
            grace_until: i.answer.map(|a| a.grace_until.clone()).unwrap_or_default(),
            grace: i.grace,
            open,
            waiting_upload: waiting,
            rejected,
            activity: i
                .activity
                .into_iter()
                .filter(|a| mine(Some(a.uid)))
                .collect(),
            last_sleep: i.last_sleep,
            reminders: i.reminders.into_iter().filter(|r| mine(r.uid)).collect(),
            sessions_of_uid: i.only_owner,
            settings: i.settings.clone(),
        }
    }

    /// The text `daymeter-agent status` prints, in the reader's local zone.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let at = |t: DateTime<Utc>| local_minute(self.now, t);
        let who = if self.running {
            "agent running"
        } else {
            "agent not running (read from the journal)"
        };
        let _ = writeln!(out, "{who}; collector {}", self.collector_url);
        if !self.settings.is_empty() {
            let from: Vec<String> = self
                .settings
                .iter()
                .map(|(setting, origin)| {
                    let name = serde_json::to_value(setting)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    format!("{name} {}", origin.as_str())
                })
                .collect();
            let _ = writeln!(out, "settings from: {}", from.join(", "));
        }
        if let Some(user) = &self.user {
            let _ = writeln!(out, "every session is charged to {user} (configured)");
        }
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
                let _ = writeln!(out, "last sync {} ({} ago)", at(t), human(self.now, t));
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
        let grace: Vec<(String, DateTime<Utc>)> = if self.grace.is_empty() {
            [
                ("flex", self.grace_until.flex),
                ("subscription", self.grace_until.subscription),
            ]
            .into_iter()
            .filter_map(|(p, u)| Some((p.to_owned(), u?)))
            .collect()
        } else {
            self.grace
                .iter()
                .map(|g| (g.plan.clone(), g.until))
                .collect()
        };
        for (plan, until) in grace {
            let left = if until > self.now {
                format!("{} left", human(until, self.now))
            } else {
                "RUN OUT".to_owned()
            };
            let _ = writeln!(out, "offline grace ({plan}): {left}, until {}", at(until));
        }
        if let Some([from, to]) = self.last_sleep {
            let _ = writeln!(
                out,
                "last sleep: {} to {} ({})",
                at(from),
                at(to),
                human(to, from)
            );
        }
        for a in &self.activity {
            let state = match (a.helper, a.idle_since, &a.source) {
                (false, _, _) => "no session helper: idle unknown".to_owned(),
                (true, _, None) => "no idle source answers: idle unknown".to_owned(),
                (true, Some(since), Some(src)) => format!("idle since {} ({src})", at(since)),
                (true, None, Some(src)) => format!("active ({src})"),
            };
            let _ = writeln!(out, "uid {}: {state}", a.uid);
        }
        if self.open.is_empty() {
            let _ = writeln!(out, "no product open");
        }
        for o in &self.open {
            let window = match o.window_end {
                Some(end) => format!(
                    "day ends {} ({} left{}){}",
                    at(end),
                    human(end, self.now),
                    match o.window_source.as_deref() {
                        Some("agent") => ", as the agent reckons offline",
                        _ => "",
                    },
                    match o.next_tokens {
                        Some(t) => format!(", next day {t} tokens"),
                        None => String::new(),
                    }
                ),
                None => "no charged day yet".to_owned(),
            };
            let start = DateTime::parse_from_rfc3339(&o.start)
                .map(|s| at(s.to_utc()))
                .unwrap_or_else(|_| o.start.clone());
            let _ = writeln!(
                out,
                "open: {} (pid {}, {}) for {} since {start}; {window}",
                o.product,
                o.pid.map_or("?".to_owned(), |p| p.to_string()),
                o.exe.as_deref().unwrap_or("?"),
                o.user.as_deref().or(self.user.as_deref()).unwrap_or("?"),
            );
        }
        for r in &self.reminders {
            let _ = writeln!(
                out,
                "reminder {} {} {}{}",
                at(r.at),
                r.kind.as_str(),
                r.product,
                if r.shown {
                    ""
                } else {
                    " (no session helper to show it)"
                }
            );
        }
        let _ = writeln!(out, "waiting to upload: {}", self.waiting_upload);
        for r in &self.rejected {
            let _ = writeln!(
                out,
                "rejected by the collector: {} {} — {} (drop it with `daymeter-agent ack {}`)",
                r.product, r.id, r.reason, r.id
            );
        }
        out
    }
}

/// `t` in the reader's zone to the minute: "14:05" today, "Sat 6 Dec 14:05" otherwise.
fn local_minute(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let t = t.with_timezone(&Local);
    if t.date_naive() == now.with_timezone(&Local).date_naive() {
        t.format("%H:%M").to_string()
    } else {
        t.format("%a %-d %b %H:%M").to_string()
    }
}

/// The span between two instants as a person reads it: "29 d 23 h", "5 h 2 min",
/// "3 min", "40 s".
pub fn human(a: DateTime<Utc>, b: DateTime<Utc>) -> String {
    let d = (a - b).abs().to_std().unwrap_or_default();
    span(d)
}

/// See [`human`].
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group_policy::{Origin, Setting};
    use crate::meter::Meter;
    use crate::watch::{ProcessKey, Running};
    use chrono::{TimeDelta, TimeZone};

    fn anyone(_: Option<u32>) -> String {
        "sophie".into()
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(span(Duration::from_secs(30 * 86_400 - 3600)), "29 d 23 h");
        assert_eq!(span(Duration::from_secs(5 * 3600 + 120)), "5 h 2 min");
        assert_eq!(span(Duration::from_secs(180)), "3 min");
        assert_eq!(span(Duration::from_secs(40)), "40 s");
        assert_eq!(span(Duration::from_secs(2 * 86_400)), "2 d");
    }

    #[test]
    fn offline_the_window_end_is_the_agents_own_walk() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        let mut m = Meter::new(None);
        let r = [Running {
            key: ProcessKey { pid: 1, started: 1 },
            product: "acad".into(),
            owner: None,
            exe: "acad.exe".into(),
        }];
        m.observe(&r, t0, &mut anyone);
        let now = t0 + TimeDelta::hours(2);
        m.observe(&r, now, &mut anyone);
        let sessions: Vec<&Tracked> = m.open().collect();
        let policy = Policy::default();
        let settings = Origins::from([
            (Setting::CollectorUrl, Origin::Policy),
            (Setting::GraceEnforcement, Origin::Collector),
        ]);
        let s = Status::build(Inputs {
            running: true,
            now,
            user: None,
            collector_url: "http://c",
            device_id: None,
            revoked: false,
            last_sync: None,
            last_error: None,
            answer: None,
            answers: &BTreeMap::new(),
            policy: &policy,
            sessions: &sessions,
            only_owner: None,
            activity: Vec::new(),
            last_sleep: None,
            reminders: Vec::new(),
            grace: Vec::new(),
            settings: &settings,
        });
        assert_eq!(s.open.len(), 1);
        assert_eq!(s.open[0].window_end, Some(t0 + TimeDelta::hours(24)));
        assert_eq!(s.open[0].window_source.as_deref(), Some("agent"));
        assert_eq!(s.open[0].pid, Some(1));
        assert_eq!(s.waiting_upload, 1);
        let text = s.render();
        assert!(
            text.contains("open: acad (pid 1, acad.exe) for sophie"),
            "{text}"
        );
        assert!(text.contains("22 h left"), "{text}");
        assert!(
            text.contains("settings from: collector_url policy, grace_enforcement collector"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["settings"]["collector_url"], "policy");
    }
}
