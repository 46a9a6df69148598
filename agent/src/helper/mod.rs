//! `daymeter-agent session`: the per-user session helper. The service runs as root,
//! outside every desktop session, so it can neither see a user's keyboard and mouse nor
//! show them a notification; one helper per graphical session does both for it.
//!
//! It needs nothing but the service's socket path and the session bus
//! (`DBUS_SESSION_BUS_ADDRESS`): no configuration file, no secret. The service knows
//! which account a helper serves from the kernel (peer credentials), not from anything
//! the helper says.
//!
//! Roles, a file each:
//! - [`guard`] — one helper per session (a well-known name on the session bus);
//! - [`link`] — the connection to the service (`crate::reminder::wire`);
//! - [`idle`] — the time since the last input, from the desktop's idle monitors;
//! - [`render`] — a reminder's words in the reader's zone and clock style;
//! - [`notify`] — showing them, and the "Open daymeter status" action;
//! - [`status`] — the service's status as text, for that action.
//!
//! The idle sources and the notifier are traits, so Windows can bring its own later;
//! the Linux ones are in `idle::linux` and `notify::freedesktop`.

#[cfg(target_os = "linux")]
pub mod guard;
pub mod idle;
pub mod link;
pub mod notify;
pub mod render;
pub mod status;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::reminder::wire::FromHelper;
use crate::reminder::{Kind, Reminder};
use link::{Heard, Link, LinkError};
use notify::{Action, Notification, Notifier};
use render::Style;

/// What the helper is given.
#[derive(Debug, Clone)]
pub struct Options {
    /// The service's local socket.
    pub socket: PathBuf,
}

/// First wait before reconnecting to a service that went away: a restart is
/// reconnected within a second.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between attempts: a service stopped for good costs one connection
/// attempt every 30 s, and a service started later is found within 30 s.
const LAST_RETRY: Duration = Duration::from_secs(30);
/// How long the session bus may take to let the helper in and answer for its name.
#[cfg(target_os = "linux")]
const BUS_WITHIN: Duration = Duration::from_secs(10);

/// Runs the helper until `shutdown` completes (or the service refuses it).
///
/// Takes the session's helper name first: when another helper already runs in this
/// session this one returns `Ok` at once, saying so in the log. Then it connects to the
/// service and, until shut down: every `report_every_ms` of the hello reads the idle
/// time and reports it; shows each reminder; answers the status action. When the
/// service goes away (a restart, an upgrade) it reconnects with a capped back-off:
/// [`FIRST_RETRY`] doubling up to [`LAST_RETRY`], back to the first after each hello.
/// A refusal from the service ends it with an error: retrying would be refused again.
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
