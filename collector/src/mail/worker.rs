//! The scheduler: a task inside `serve` that wakes every `[mail] tick` (a minute by
//! default), reads the time from the collector's clock, and sends what is due.
//!
//! - A scheduled mail is due when its stored `next_run` has come ([`schedule::due`]).
//!   The mail is built from the reports as the API answers them, sent, and only once
//!   the SMTP server accepted it is the next send stored: a failed send is logged and
//!   tried again at the next tick; a crash between the send and the store sends it
//!   again (at least once, never lost). A collector that was down across several sends
//!   sends one mail when it is back — its first tick is at start.
//! - Low-balance alerts: at each tick every subscribed team's remaining tokens are read
//!   and compared with the subscription's last stored reading; a crossing below the
//!   team's `low_balance` threshold ([`schedule::crossed_below`]) sends one alert, and
//!   the reading is stored after the send. A team never read before counts as above:
//!   subscribing to a team already low brings one alert.
//!
//! One collector sends: with several collectors over one database each would send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::compose::{self, Letter};
use super::kinds::{Kind, Schedule};
use super::schedule::{self, Every};
use super::smtp::Mailer;
use crate::api::{AppState, MailReport, csv_file, doc_for_mail};
use crate::reports::Filter;
use crate::reports::range::{self, Basis, ReportRange};
use crate::store::{Settings, Store};

/// Starts the scheduler on the runtime; it runs until aborted.
pub fn spawn<S: Store>(
    state: Arc<AppState<S>>,
    mailer: Mailer,
    tick_every: Duration,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(tick = ?tick_every, "mail scheduler started");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            tick(&state, &mailer).await;
        }
    })
}

/// One pass: every due schedule, then the low-balance alerts.
pub async fn tick<S: Store>(state: &Arc<AppState<S>>, mailer: &Mailer) {
    let now = state.clock.now();
    let schedules = match state.store.mail_schedules().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "mail: reading the schedules failed; next tick");
            return;
        }
    };
    let mut alerts = Vec::new();
    for s in schedules {
        match (&s.kind, s.every, s.next_run) {
            (Kind::LowBalance { .. }, _, _) => alerts.push(s),
            (_, Some(every), Some(next)) => scheduled(state, mailer, &s, every, next, now).await,
            _ => tracing::warn!(schedule = %s.id, "mail: a schedule without a next send; skipped"),
        }
    }
    if !alerts.is_empty() {
        low_balance(state, mailer, &alerts, now).await;
    }
}

async fn scheduled<S: Store>(
    state: &Arc<AppState<S>>,
    mailer: &Mailer,
    s: &Schedule,
    every: Every,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    let Some(due) = schedule::due(s.start, every, next, now) else {
        tracing::warn!(schedule = %s.id, "mail: no next send can be computed; skipped");
        return;
    };
    if !due.send {
        return;
    }
    let letter = match letter(state, s, every, next, now).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(schedule = %s.id, error = %e, "mail: building the mail failed; next tick");
            return;
        }
    };
    if let Err(e) = mailer.send(&letter).await {
        tracing::warn!(schedule = %s.id, error = %e, "mail: sending failed; next tick");
        return;
    }
    tracing::info!(schedule = %s.id, next = %due.next, "mail sent");
    if let Err(e) = state.store.set_mail_next_run(s.id.clone(), due.next).await {
        tracing::warn!(schedule = %s.id, error = %e, "mail: storing the next send failed; it may be sent again");
    }
}

/// The mail a due schedule sends.
async fn letter<S: Store>(
    state: &Arc<AppState<S>>,
    s: &Schedule,
    every: Every,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Letter, String> {
    let today = now.date_naive();
    let covered = |every| -> Result<ReportRange, String> {
        let (from, to) = schedule::covered(every, due, now);
        range::parse(
            None,
            Some(&from.to_string()),
            Some(&to.to_string()),
            Basis::Rolling,
            today,
        )
        .map_err(|e| e.to_string())
    };
    match &s.kind {
        Kind::Report {
            report,
            team,
            product,
        } => {
            let range = covered(every)?;
            let filter = Filter {
                team: team.clone(),
                user: None,
                product: product.clone(),
            };
            let csv = csv_file(state, *report, &range, &filter)
                .await
                .map_err(|e| e.to_string())?;
            compose::report(&s.id, &s.recipient, *report, &range, &filter, csv)
                .map_err(|e| e.to_string())
        }
        Kind::InactiveUsers { inactive_for } => {
            let range = range::parse(
                Some(inactive_for.range()),
                None,
                None,
                Basis::Rolling,
                today,
            )
            .map_err(|e| e.to_string())?;
            let usage = doc_for_mail(state, MailReport::Usage, range, Filter::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(compose::inactive_users(
                &s.id,
                &s.recipient,
                *inactive_for,
                &range,
                &usage,
            ))
        }
        Kind::WasteDigest => {
            let range = covered(Every::Week)?;
            let waste = doc_for_mail(state, MailReport::Waste, range, Filter::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(compose::waste_digest(&s.id, &s.recipient, &range, &waste))
        }
        Kind::LowBalance { .. } => Err("a low-balance alert is not scheduled".to_owned()),
    }
}

/// Reads every subscribed team's balance; sends an alert per crossing below.
async fn low_balance<S: Store>(
    state: &AppState<S>,
    mailer: &Mailer,
    alerts: &[Schedule],
    now: DateTime<Utc>,
) {
    let settings = Settings::clone(&state.settings());
    let (balances, readings) = match tokio::try_join!(
        state.store.balances(now, settings),
        state.store.low_balance_readings()
    ) {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(error = %e, "mail: reading balances for low-balance alerts failed; next tick");
            return;
        }
    };
    let readings: HashMap<(String, String), u64> = readings
        .into_iter()
        .map(|(schedule, team, remaining)| ((schedule, team), remaining))
        .collect();
    for s in alerts {
        let Kind::LowBalance { team } = &s.kind else {
            continue;
        };
        for b in &balances {
            let Some(threshold) = b.low_balance else {
                continue;
            };
            if team.as_ref().is_some_and(|t| t != &b.team) {
                continue;
            }
            let before = readings.get(&(s.id.clone(), b.team.clone())).copied();
            if schedule::crossed_below(before.unwrap_or(u64::MAX), b.remaining, threshold) {
                let letter =
                    compose::low_balance(&s.id, &s.recipient, &b.team, b.remaining, threshold, now);
                if let Err(e) = mailer.send(&letter).await {
                    tracing::warn!(schedule = %s.id, team = ?b.team, error = %e, "mail: sending a low-balance alert failed; next tick");
                    continue;
                }
                tracing::info!(schedule = %s.id, team = ?b.team, remaining = b.remaining, "low-balance alert sent");
            } else if before == Some(b.remaining) {
                continue;
            }
            if let Err(e) = state
                .store
                .set_low_balance_reading(s.id.clone(), b.team.clone(), b.remaining)
                .await
            {
                tracing::warn!(schedule = %s.id, error = %e, "mail: storing a low-balance reading failed");
            }
        }
    }
}
