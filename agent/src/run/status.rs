//! `status`: what the running agent reports over its socket, and what the journal
//! alone tells when no agent runs.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::*;

impl Agent {
    /// The status the running agent reports: every session, or with `only_owner` the
    /// sessions of that account's processes.
    pub fn status(&self, only_owner: Option<u32>) -> Status {
        let now = self.clock.now();
        let state = self.state();
        let sessions: Vec<&Tracked> = state.meter.open().chain(state.meter.closed()).collect();
        let idle_after = state.policy.idle_after;
        let mut uids: Vec<u32> = state.meter.open().filter_map(|t| t.owner).collect();
        uids.extend(state.activity.uids());
        uids.sort_unstable();
        uids.dedup();
        let activity = uids
            .into_iter()
            .map(|uid| ActivityItem {
                uid,
                helper: state.activity.has_helper(uid),
                idle_since: state.activity.idle_since(uid, now, idle_after),
                source: state.activity.of(uid).and_then(|a| a.source.clone()),
            })
            .collect();
        let window =
            chrono::TimeDelta::from_std(state.policy.window).unwrap_or(chrono::TimeDelta::MAX);
        let since = now
            .checked_sub_signed(window)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let reminders = state
            .sent_log
            .iter()
            .filter(|r| r.at >= since)
            .map(|r| SentItem {
                at: r.at,
                kind: r.reminder.kind,
                product: r.reminder.product.clone(),
                uid: r.uid,
                shown: r.shown,
            })
            .collect();
        Status::build(Inputs {
            running: true,
            now,
            user: self.config.user.as_deref(),
            collector_url: &self.config.collector_url,
            device_id: state.enrolment.as_ref().map(|e| e.device_id.as_str()),
            revoked: state.revoked,
            last_sync: state.last_sync,
            last_error: state.last_error.as_deref(),
            answer: state.answer.as_ref(),
            answers: &state.answers,
            policy: &state.policy,
            sessions: &sessions,
            only_owner,
            activity,
            last_sleep: state.last_sleep.map(|(a, b)| [a, b]),
            reminders,
            grace: self.grace_items(&state),
            settings: &self.config.origins,
        })
    }
}

/// What the journal remembers of the collector between runs.
pub(super) struct Remembered {
    pub(super) answer: Option<SyncAnswer>,
    pub(super) answers: BTreeMap<String, SyncAnswer>,
    pub(super) last_sync: Option<DateTime<Utc>>,
    pub(super) revoked: bool,
}

impl Remembered {
    /// An unreadable cached value counts as absent: it is refreshed at the next sync.
    pub(super) fn read(journal: &dyn Journal) -> Result<Remembered, RunError> {
        Ok(Remembered {
            answer: journal
                .cached(ANSWER_KEY)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            answers: journal
                .cached(ANSWERS_KEY)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default(),
            last_sync: journal
                .cached(LAST_SYNC_KEY)?
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .map(|t| t.with_timezone(&Utc)),
            revoked: journal.cached(REVOKED_KEY)?.is_some_and(|b| b == b"1"),
        })
    }
}

/// The status read straight from the journal, when no agent runs.
pub fn offline_status(
    config: &Config,
    journal: &dyn Journal,
    now: DateTime<Utc>,
) -> Result<Status, RunError> {
    let Remembered {
        answer,
        answers,
        last_sync,
        revoked,
    } = Remembered::read(journal)?;
    let enrolment = journal.enrolment()?;
    let now = now + read_offset(journal)?;
    let policy = config.overrides.over(
        answer
            .as_ref()
            .and_then(|a| a.policy.clone())
            .unwrap_or_default(),
    );
    let tracked = journal.sessions()?;
    let sessions: Vec<&Tracked> = tracked.iter().collect();
    Ok(Status::build(Inputs {
        running: false,
        now,
        user: config.user.as_deref(),
        collector_url: &config.collector_url,
        device_id: enrolment.as_ref().map(|e| e.device_id.as_str()),
        revoked,
        last_sync,
        last_error: None,
        answer: answer.as_ref(),
        answers: &answers,
        policy: &policy,
        sessions: &sessions,
        only_owner: None,
        activity: Vec::new(),
        last_sleep: None,
        reminders: Vec::new(),
        grace: Vec::new(),
        settings: &config.origins,
    }))
}

/// The clock offset measured earlier; an unreadable value counts as none (it is
/// measured again at the next sync).
pub(super) fn read_offset(journal: &dyn Journal) -> Result<TimeDelta, RunError> {
    Ok(journal
        .cached(OFFSET_KEY)?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(crate::offset::from_millis)
        .unwrap_or_default())
}
