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
//! - [`status`] — the service's status as text, for that action;
//! - `session` — the loop that ties them together ([`run`]).
//!
//! The idle sources and the notifier are traits, so Windows can bring its own later;
//! the Linux ones are in `idle::linux` and `notify::freedesktop`.

#[cfg(target_os = "linux")]
pub mod guard;
pub mod idle;
#[cfg(any(unix, windows))]
pub mod link;
pub mod notify;
pub mod render;
#[cfg(target_os = "linux")]
mod session;
#[cfg(any(unix, windows))]
pub mod status;

use std::path::PathBuf;

/// What the helper is given.
#[derive(Debug, Clone)]
pub struct Options {
    /// The service's local socket.
    pub socket: PathBuf,
}

/// Runs the helper until `shutdown` completes (or the service refuses it).
///
/// Takes the session's helper name first: when another helper already runs in this
/// session this one returns `Ok` at once, saying so in the log. Then it connects to the
/// service and, until shut down: every `report_every_ms` of the hello reads the idle
/// time and reports it; shows each reminder; answers the status action. When the
/// service goes away (a restart, an upgrade) it reconnects with a capped back-off:
/// 0.2 s doubling up to 30 s, back to the first after each hello.
/// A refusal from the service ends it with an error: retrying would be refused again.
#[cfg(target_os = "linux")]
pub async fn run(options: Options, shutdown: impl std::future::Future) -> anyhow::Result<()> {
    session::run(options, shutdown).await
}
