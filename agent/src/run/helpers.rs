//! The session helpers connected to the service: one link per helper, known by the
//! account the kernel says it runs as (never by what it says), so a reminder reaches
//! only the sessions of the account whose product it is about.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use daymeter_shared::clock::Clock;

use super::Agent;
use crate::reminder::Reminder;
use crate::reminder::wire::{FromHelper, ToHelper};

/// Identifies one connected helper.
pub type HelperId = u64;

struct Link {
    id: HelperId,
    uid: u32,
    tx: UnboundedSender<ToHelper>,
}

/// Every helper connected now.
#[derive(Default)]
pub(super) struct Links {
    next: HelperId,
    links: Vec<Link>,
}

impl Links {
    /// Sends `message` to every helper of `uid`; returns how many got it.
    fn send(&mut self, uid: u32, message: &ToHelper) -> usize {
        // A helper whose connection ended is dropped here at the latest.
        self.links.retain(|l| !l.tx.is_closed());
        let mut n = 0;
        for l in self.links.iter().filter(|l| l.uid == uid) {
            if l.tx.send(message.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }

    pub(super) fn count(&self) -> usize {
        self.links.len()
    }
}

impl crate::enforce::SessionHelpers for Links {
    fn ask_to_close(&mut self, uid: u32, key: crate::watch::ProcessKey) -> usize {
        let asked = self.send(
            uid,
            &ToHelper::Close {
                pid: key.pid,
                started: key.started,
            },
        );
        tracing::debug!(
            uid,
            pid = key.pid,
            helpers = asked,
            "session helpers asked to close a product"
        );
        asked
    }
}

impl Agent {
    /// A helper of `uid` connected: it will hear that account's reminders. Returns its
    /// id (for [`Agent::helper_gone`]) and the channel its connection writes from.
    pub fn helper_connected(&self, uid: u32) -> (HelperId, UnboundedReceiver<ToHelper>) {
        let (tx, rx) = unbounded_channel();
        let mut state = self.state();
        let id = state.helpers.next;
        state.helpers.next += 1;
        state.helpers.links.push(Link { id, uid, tx });
        state.activity.connected(uid);
        tracing::info!(
            uid,
            helpers = state.helpers.count(),
            "session helper connected"
        );
        (id, rx)
    }

    /// The helper `id` of `uid` disconnected.
    pub fn helper_gone(&self, id: HelperId, uid: u32) {
        let mut state = self.state();
        state.helpers.links.retain(|l| l.id != id);
        state.activity.disconnected(uid);
        tracing::info!(
            uid,
            helpers = state.helpers.count(),
            "session helper disconnected"
        );
    }

    /// A helper's report of its user's input: an idle interval the report shows ended
    /// is recorded on that account's open sessions at once.
    pub fn helper_report(&self, uid: u32, report: FromHelper) {
        let now = self.clock.now();
        let mut state = self.state();
        let idle_after = state.policy.idle_after;
        if let Some(idle) =
            state
                .activity
                .report(uid, report.idle_ms, report.source, now, idle_after)
        {
            state.meter.record_idle(idle.uid, idle.from, idle.to);
        }
    }

    /// How often helpers report, as the hello tells them.
    pub fn report_every(&self) -> std::time::Duration {
        self.config
            .poll_interval
            .max(std::time::Duration::from_millis(250))
    }

    /// Tells `uid`'s helpers. Without a helper for that account the reminder cannot
    /// be shown (said in the log and in `status`); it is not kept for later: a reminder
    /// is only worth showing on time.
    pub(super) fn tell(
        state: &mut super::State,
        uid: Option<u32>,
        reminder: Reminder,
        now: DateTime<Utc>,
    ) {
        let kind = reminder.kind.as_str();
        let product = reminder.product.clone();
        let shown = match uid {
            Some(uid) => state.helpers.send(uid, &ToHelper::Remind(reminder.clone())),
            None => 0,
        };
        if shown > 0 {
            tracing::info!(kind, %product, uid, helpers = shown, "reminder sent");
        } else {
            tracing::info!(kind, %product, uid, "reminder due but no session helper of that account is connected");
        }
        state.sent_log.push(super::SentReminder {
            uid,
            at: now,
            shown: shown > 0,
            reminder,
        });
        let excess = state.sent_log.len().saturating_sub(super::SENT_LOG);
        state.sent_log.drain(..excess);
    }
}

/// Serves one helper's connection until it ends: the hello, then its reports in and
/// the reminders out, one JSON document per line. Platform-neutral: the Unix socket
/// (and later the Windows pipe) hands over the two halves and the caller's uid.
pub async fn serve<R, W>(agent: Arc<Agent>, uid: u32, reader: R, mut writer: W)
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    /// A report is a few dozen bytes; a longer line is not a helper of ours.
    const MAX_LINE: u64 = 4096;
    let (id, mut rx) = agent.helper_connected(uid);
    let hello = ToHelper::Hello {
        uid,
        report_every_ms: u64::try_from(agent.report_every().as_millis()).unwrap_or(u64::MAX),
    };
    let mut reader = reader.take(MAX_LINE);
    let mut out = line_of(&hello);
    if writer.write_all(out.as_bytes()).await.is_ok() {
        let mut line = String::new();
        loop {
            tokio::select! {
                read = reader.read_line(&mut line) => {
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) if !line.ends_with('\n') => {
                            tracing::warn!(uid, "a session helper sent a line too long; disconnecting it");
                            break;
                        }
                        Ok(_) => {
                            reader.set_limit(MAX_LINE);
                            match serde_json::from_str::<FromHelper>(line.trim()) {
                                Ok(report) => agent.helper_report(uid, report),
                                Err(e) => tracing::warn!(uid, error = %e, "a session helper sent a report the service does not understand"),
                            }
                            line.clear();
                        }
                    }
                }
                message = rx.recv() => {
                    let Some(message) = message else { break };
                    out = line_of(&message);
                    if writer.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    agent.helper_gone(id, uid);
}

fn line_of(message: &ToHelper) -> String {
    let mut line = serde_json::to_string(message).unwrap_or_else(|_| "{}".to_owned());
    line.push('\n');
    line
}
