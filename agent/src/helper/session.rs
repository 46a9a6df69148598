//! The helper's loop (`super::run`): the platform's parts first (on Linux the session
//! bus: the guard, the idle sources, the notifier; on Windows the session's mutex,
//! `GetLastInputInfo`, toasts), then the service link, kept up across service restarts.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::link::{Heard, Link, LinkError};
use super::notify::{Action, Notification, Notifier};
use super::render::{self, Style};
use super::{Options, guard, idle, notify, status};
use crate::reminder::wire::FromHelper;
use crate::reminder::{Kind, Reminder};

/// First wait before reconnecting to a service that went away: a restart is
/// reconnected within a second.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between attempts: a service stopped for good costs one connection
/// attempt every 30 s, and a service started later is found within 30 s.
const LAST_RETRY: Duration = Duration::from_secs(30);
/// How long the session bus may take to let the helper in and answer for its name.
#[cfg(target_os = "linux")]
const BUS_WITHIN: Duration = Duration::from_secs(10);

/// See [`super::run`].
#[cfg(target_os = "linux")]
pub async fn run(options: Options, shutdown: impl Future) -> anyhow::Result<()> {
    use anyhow::Context;

    // A session bus that accepts the connection but never answers (a broken policy)
    // must end the helper with a reason, not hold it silent for good.
    let session = tokio::time::timeout(BUS_WITHIN, zbus::Connection::session())
        .await
        .map_err(|_| anyhow::anyhow!("the session bus did not answer within {BUS_WITHIN:?}"))?
        .context("cannot connect to the session bus (DBUS_SESSION_BUS_ADDRESS)")?;
    let guard = tokio::time::timeout(BUS_WITHIN, guard::take(&session))
        .await
        .map_err(|_| anyhow::anyhow!("the session bus did not answer within {BUS_WITHIN:?}"))?;
    match guard.context("cannot ask the session bus for the helper's name")? {
        guard::Guard::Owned => {}
        guard::Guard::AlreadyRunning => {
            tracing::info!(
                name = guard::BUS_NAME,
                "a daymeter session helper already runs in this session; leaving it alone"
            );
            return Ok(());
        }
    }
    let idle = idle::Chain::new(idle::linux::sources(&session));
    let notifier = notify::freedesktop::Freedesktop::new(session.clone()).await;
    let helper = Helper {
        socket: options.socket,
        style: Style::from_env(),
        idle,
        notifier,
    };
    helper.run(shutdown).await
}

/// See [`super::run`].
#[cfg(windows)]
pub async fn run(options: Options, shutdown: impl Future) -> anyhow::Result<()> {
    use anyhow::Context;

    match guard::take(guard::MUTEX_NAME).context("cannot create the session's helper mutex")? {
        guard::Guard::Owned => {}
        guard::Guard::AlreadyRunning => {
            tracing::info!(
                name = guard::MUTEX_NAME,
                "a daymeter session helper already runs in this session; leaving it alone"
            );
            return Ok(());
        }
    }
    let helper = Helper {
        socket: options.socket,
        style: Style::from_env(),
        idle: idle::Chain::new(idle::windows::sources()),
        notifier: notify::windows::Windows::new(notify::windows::choose()),
    };
    helper.run(shutdown).await
}

/// The helper's parts, apart from the platform that built them.
struct Helper<N> {
    socket: PathBuf,
    style: Style,
    idle: idle::Chain,
    notifier: N,
}

/// Why a link ended.
enum Ended {
    Shutdown,
    Gone,
    Refused(String),
}

impl<N: Notifier> Helper<N> {
    async fn run(mut self, shutdown: impl Future) -> anyhow::Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut retry = FIRST_RETRY;
        // Said once per outage, not at every attempt.
        let mut said_unreachable = false;
        loop {
            let opened = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                opened = Link::open(&self.socket) => opened,
            };
            match opened {
                Ok(link) => {
                    tracing::info!(socket = %self.socket.display(), "connected to the daymeter service");
                    retry = FIRST_RETRY;
                    said_unreachable = false;
                    match self.serve(link, &mut shutdown).await {
                        Ended::Shutdown => return Ok(()),
                        Ended::Refused(error) => {
                            anyhow::bail!("the daymeter service refused this helper: {error}")
                        }
                        Ended::Gone => {
                            tracing::info!("the daymeter service went away; reconnecting");
                        }
                    }
                }
                Err(LinkError::Refused(error)) => {
                    anyhow::bail!("the daymeter service refused this helper: {error}")
                }
                Err(e) => {
                    if !said_unreachable {
                        tracing::info!(error = %e, "the daymeter service is not reachable; retrying");
                        said_unreachable = true;
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(LAST_RETRY);
        }
    }

    /// One link, until it ends.
    async fn serve(
        &mut self,
        mut link: Link,
        shutdown: &mut std::pin::Pin<&mut impl Future>,
    ) -> Ended {
        let mut reports = tokio::time::interval(link.report_every);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Ended::Shutdown,
                heard = link.next() => match heard {
                    Heard::Remind(reminder) => self.show(&reminder).await,
                    Heard::Refused(error) => return Ended::Refused(error),
                    Heard::Close(key) => close(key),
                    Heard::Gone => return Ended::Gone,
                },
                _ = reports.tick() => {
                    let idle = self.idle.idle().await;
                    let report = FromHelper {
                        idle_ms: idle.map(|(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        source: idle.map(|(_, source)| source.to_owned()),
                    };
                    if link.report(&report).await.is_err() {
                        return Ended::Gone;
                    }
                }
                action = self.notifier.next_action() => {
                    if action == Some(Action::Status) {
                        self.show_status().await;
                    }
                }
            }
        }
    }

    async fn show(&self, reminder: &Reminder) {
        let rendered = render::render(reminder, &self.style, chrono::Utc::now());
        let note = Notification {
            summary: rendered.summary,
            body: rendered.body,
            kind: reminder.kind.as_str().to_owned(),
            urgent: reminder.kind == Kind::GraceExpired,
            offer_status: true,
        };
        match self.notifier.show(&note).await {
            Ok(()) => tracing::debug!(kind = note.kind, "reminder shown"),
            Err(e) => {
                tracing::warn!(kind = note.kind, error = %e, "a reminder could not be shown")
            }
        }
    }

    async fn show_status(&self) {
        let note = Notification {
            summary: "daymeter status".to_owned(),
            body: status::text(&self.socket).await,
            kind: "status".to_owned(),
            urgent: false,
            offer_status: false,
        };
        if let Err(e) = self.notifier.show(&note).await {
            tracing::warn!(error = %e, "the status could not be shown");
        }
    }
}

/// The service asks to close a product of this user (its grace ran out): `WM_CLOSE` to
/// the product's windows, which only a process in the user's session can send.
#[cfg(windows)]
fn close(key: crate::watch::ProcessKey) {
    match crate::enforce::windows::post_close(key) {
        Ok(windows) => tracing::info!(
            pid = key.pid,
            windows,
            "the service asked to close a product: WM_CLOSE posted to its windows"
        ),
        Err(e) => tracing::warn!(
            pid = key.pid,
            error = %e,
            "the service asked to close a product, which cannot be asked"
        ),
    }
}

/// Elsewhere the service signals the product itself and never asks a helper.
#[cfg(not(windows))]
fn close(key: crate::watch::ProcessKey) {
    tracing::debug!(
        pid = key.pid,
        "the service asked this helper to close a product; not done here on this system"
    );
}
