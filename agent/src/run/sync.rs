//! The syncer: what the collector still needs goes up on every open and close and every
//! `sync_interval`, one request per licence user, backing off while the collector is
//! away; the answers (policy, catalog, windows, entitlements) come back into the state.
//! Enrolment lives here too, for the running agent and for `daymeter-agent enroll`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;

impl Agent {
    pub(super) async fn sync_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.sync_now.notified() => {}
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (interval, retry_max, revoked) = {
                let s = self.state();
                (s.policy.sync_interval, s.policy.retry_max, s.revoked)
            };
            if revoked {
                // Wait for `daymeter-agent enroll`; it wakes us.
                wait = Duration::from_secs(3600);
                continue;
            }
            match self.sync_once().await {
                Ok(()) => {
                    backoff.reset();
                    wait = interval;
                }
                Err(e) => {
                    self.state().last_error = Some(e.to_string());
                    match &e {
                        RunError::Sync(SyncError::Unauthorized(m)) => {
                            tracing::error!(reason = %m, "the collector refused this device (revoked?); journaling goes on; run `daymeter-agent enroll` to enrol again");
                            self.set_revoked(true);
                        }
                        RunError::Sync(s) if s.is_transient() => {
                            wait = backoff.next_delay(retry_max);
                            tracing::warn!(error = %e, retry_in = ?wait, failures = backoff.failures(), "collector unreachable; sessions stay in the journal");
                        }
                        _ => {
                            wait = backoff.next_delay(retry_max.max(interval));
                            tracing::error!(error = %e, retry_in = ?wait, "sync failed");
                        }
                    }
                }
            }
        }
    }

    /// Records a revocation (or its end). The revoked enrolment is kept, owner-only in
    /// the journal like any enrolment: its token is the proof with which the next
    /// `daymeter-agent enroll` keeps the device id. The revoked flag alone stops syncs.
    fn set_revoked(&self, revoked: bool) {
        self.state().revoked = revoked;
        let value: &[u8] = if revoked { b"1" } else { b"0" };
        if let Err(e) = self.journal.set_cached(REVOKED_KEY, value) {
            tracing::warn!(error = %e, "cannot record the revocation in the journal");
        }
    }

    /// Enrols now with the configured secret (`daymeter-agent enroll`), replacing any
    /// earlier (revoked) enrolment and keeping its device id where the collector takes
    /// it as proof.
    pub async fn enroll(&self) -> Result<Enrolment, RunError> {
        let secret = self
            .config
            .enrollment_secret
            .clone()
            .ok_or(RunError::NoSecret)?;
        let _one_at_a_time = self.enrolling.lock().await;
        let previous = self.state().enrolment.clone();
        let enrolment = enroll_keeping(&self.client, secret.expose(), previous.as_ref()).await?;
        self.journal.set_enrolment(Some(&enrolment))?;
        self.state().enrolment = Some(enrolment.clone());
        self.set_revoked(false);
        tracing::info!(%enrolment, "enrolled");
        self.sync_now.notify_one();
        Ok(enrolment)
    }

    /// Sends everything the collector still needs (an empty sync when nothing is
    /// pending: it still refreshes catalog, policy and grace).
    pub async fn sync_once(&self) -> Result<(), RunError> {
        let enrolled = self.state().enrolment.clone();
        let enrolment = match enrolled {
            Some(e) => e,
            None => self.enroll().await?,
        };
        // Never tell the collector a `last_seen` the journal could lose: after a crash the
        // session is closed at the journal's `last_seen`, and a final copy shorter than an
        // open copy already sent would leave the collector's copy open for good. The
        // open sessions are written under the lock, so a close cannot be overwritten.
        let pending: Vec<Tracked> = {
            let state = self.state();
            for t in state.meter.open() {
                self.journal.put(t, Durability::Lazy)?;
            }
            state.meter.to_send().into_iter().cloned().collect()
        };
        self.journal.flush()?;
        // The protocol carries one user per request: one request (or more, by BATCH)
        // per licence user with sessions to send; an empty sync still refreshes
        // catalog, policy and grace.
        let fallback = self.config.licence_user(None);
        let mut by_user: BTreeMap<String, Vec<Tracked>> = BTreeMap::new();
        for t in pending {
            let user = t.user.clone().unwrap_or_else(|| fallback.clone());
            by_user.entry(user).or_default().push(t);
        }
        if by_user.is_empty() {
            by_user.insert(fallback, Vec::new());
        }
        for (user, sessions) in &by_user {
            let mut chunks: Vec<&[Tracked]> = sessions.chunks(BATCH).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                let sent = self.device_clock.now();
                let request = SyncRequest {
                    user,
                    agent_time: sent.to_rfc3339(),
                    sessions: chunk.iter().map(|t| &t.session).collect(),
                };
                let answer = self.client.sync(&enrolment.device_token, &request).await?;
                let received = self.device_clock.now();
                if let Some(server_time) = answer.server_time {
                    self.learn_offset(sent, received, server_time);
                }
                self.apply(user, chunk, answer);
            }
        }
        Ok(())
    }

    /// Measures the offset in one exchange and, when it changed beyond the noise,
    /// meters with it from now on and keeps it in the journal.
    fn learn_offset(&self, sent: DateTime<Utc>, received: DateTime<Utc>, server: DateTime<Utc>) {
        let Some(measured) = crate::offset::measure(sent, received, server) else {
            tracing::debug!("sync round trip too long to measure the clock offset");
            return;
        };
        let mut state = self.state();
        let current = self.clock.shift();
        let next = crate::offset::next(current, measured);
        if next == current {
            return;
        }
        self.clock.set_shift(next);
        state.meter.set_offset(next);
        drop(state);
        tracing::warn!(
            offset_seconds = next.num_seconds(),
            previous_seconds = current.num_seconds(),
            "the device clock is off the collector's; metering with the collector's time"
        );
        if let Err(e) = self
            .journal
            .set_cached(OFFSET_KEY, next.num_milliseconds().to_string().as_bytes())
        {
            tracing::warn!(error = %e, "cannot record the clock offset");
        }
    }

    /// Takes a sync answer: drops acknowledged final copies, keeps rejections with
    /// their reason (a `clock_ahead` one is corrected and sent again), caches catalog,
    /// policy, grace and windows.
    fn apply(&self, user: &str, sent: &[Tracked], answer: SyncAnswer) {
        let now = self.clock.now();
        let mut state = self.state();
        for id in &answer.accepted {
            let final_copy = sent
                .iter()
                .any(|t| t.session.id == id.as_str() && t.session.end.is_some());
            if state.meter.accepted(id, final_copy)
                && let Err(e) = self.journal.remove(id)
            {
                tracing::warn!(error = %e, %id, "cannot drop an acknowledged session from the journal; it will be sent again (harmless)");
            }
        }
        let mut resend = false;
        for r in &answer.rejected {
            let reason = r.reason();
            let Some(id) = r.id.as_deref() else {
                tracing::warn!(%reason, "the collector rejected a session without naming it");
                continue;
            };
            if r.error.get("code").and_then(serde_json::Value::as_str) == Some("clock_ahead") {
                let field = r.error.get("field").and_then(serde_json::Value::as_str);
                let corrected = state.meter.clock_ahead(id, field.unwrap_or("start"), now);
                tracing::warn!(%id, %reason, corrected = corrected.is_some(), "the collector found the session dated ahead of its clock; it is sent again");
                if let Some(t) = corrected {
                    resend = true;
                    if let Err(e) = self.journal.put(&t, Durability::Flush) {
                        tracing::warn!(error = %e, %id, "cannot record the corrected session");
                    }
                }
                continue;
            }
            tracing::warn!(%id, %reason, "the collector rejected a session; it is kept and not sent again");
            if let Some(t) = state.meter.rejected(id, &reason)
                && let Err(e) = self.journal.put(&t, Durability::Flush)
            {
                tracing::warn!(error = %e, %id, "cannot record the rejection");
            }
        }
        if let Some(catalog) = &answer.catalog {
            let current: Option<&Catalog> = state.answer.as_ref().and_then(|a| a.catalog.as_ref());
            if current != Some(catalog) {
                state.catalog = effective_catalog(self.config.catalog.as_ref(), Some(catalog));
                state.recogniser = Recogniser::new(&state.catalog);
                state.catalog_version += 1;
                tracing::info!(products = catalog.len(), "catalog from the collector");
            }
        }
        if let Some(policy) = &answer.policy {
            // This machine's registry overrides (RemindBefore, GraceEnforcement) win.
            state.policy = self.config.overrides.over(policy.clone());
        }
        state.last_sync = Some(now);
        state.last_error = None;
        let signed_in = self.grace_now();
        state.keeper.signed_in(signed_in);
        self.save_grace(&state);
        match serde_json::to_vec(&answer) {
            Ok(bytes) => {
                if let Err(e) = self.journal.set_cached(ANSWER_KEY, &bytes) {
                    tracing::warn!(error = %e, "cannot cache the collector's answer");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the collector's answer"),
        }
        if let Err(e) = self
            .journal
            .set_cached(LAST_SYNC_KEY, now.to_rfc3339().as_bytes())
        {
            tracing::warn!(error = %e, "cannot record the sync time");
        }
        state.answers.insert(user.to_owned(), answer.clone());
        match serde_json::to_vec(&state.answers) {
            Ok(bytes) => {
                if let Err(e) = self.journal.set_cached(ANSWERS_KEY, &bytes) {
                    tracing::warn!(error = %e, "cannot cache the collector's answers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the collector's answers"),
        }
        state.answer = Some(answer);
        drop(state);
        if resend {
            self.sync_now.notify_one();
        }
    }
}

/// Enrols with the collector without a running agent (`daymeter-agent enroll`).
pub async fn enroll_offline(config: &Config, journal: &dyn Journal) -> Result<Enrolment, RunError> {
    let secret = config.enrollment_secret.clone().ok_or(RunError::NoSecret)?;
    let client = Client::new(&config.collector_url, config.ca_file.as_deref())?;
    let previous = journal
        .enrolment()?
        .filter(|e| e.collector_url == config.collector_url.trim_end_matches('/'));
    let enrolment = enroll_keeping(&client, secret.expose(), previous.as_ref()).await?;
    journal.set_enrolment(Some(&enrolment))?;
    journal.set_cached(REVOKED_KEY, b"0")?;
    Ok(enrolment)
}

/// Enrols, sending `previous` (an enrolment with this collector) as proof so that the
/// device keeps its id. A collector that refuses the proof (it lost the device, or the
/// token was replaced since) is asked again without it: a new device id is better than
/// none, though the copies of sessions still open then disagree with the earlier ones.
async fn enroll_keeping(
    client: &Client,
    secret: &str,
    previous: Option<&Enrolment>,
) -> Result<Enrolment, RunError> {
    match client.enroll(secret, &hostname(), previous).await {
        Err(SyncError::ProofRefused(reason)) => {
            tracing::warn!(
                ?reason,
                "the collector does not take this device's previous enrolment as proof; enrolling as a new device"
            );
            client
                .enroll(secret, &hostname(), None)
                .await
                .map_err(refused_secret)
        }
        other => other.map_err(refused_secret),
    }
}

fn refused_secret(e: SyncError) -> RunError {
    match e {
        SyncError::Unauthorized(m) => RunError::EnrollRefused(m),
        other => RunError::Sync(other),
    }
}

/// This machine's name, for the collector's device list.
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // or truncates, and we stop at the first NUL either way.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..end])
                && !name.is_empty()
            {
                return name.to_owned();
            }
        }
    }
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".to_owned())
}
