//! `daymeter-agent session`: the per-user session helper. The service runs as root,
//! outside every desktop session, so it can neither see a user's keyboard and mouse nor
//! show them a notification; one helper per graphical session does both for it.
//!
//! It needs nothing but the service's socket path and the session bus
//! (`DBUS_SESSION_BUS_ADDRESS`): no configuration file, no secret. The service knows
//! which account a helper serves from the kernel (peer credentials), not from anything
//! the helper says. On Windows the helper runs in the user's logon session (the Run
//! key starts it) and needs no bus: the service's named pipe is its only input.
//!
//! Roles, a file each:
//! - [`guard`] — one helper per session (a name on the session bus, a named mutex);
//! - [`link`] — the connection to the service (`crate::reminder::wire`);
//! - [`idle`] — the time since the last input, from the desktop's idle monitors;
//! - [`render`] — a reminder's words in the reader's zone and clock style;
//! - [`notify`] — showing them, and the "Open daymeter status" action;
//! - closing a product's windows when the service asks (Windows only:
//!   [`crate::enforce::windows::post_close`]);
//! - [`status`] — the service's status as text, for that action;
//! - `session` — the loop that ties them together ([`run`]).
//!
//! The idle sources and the notifier are traits: the Linux ones are in `idle::linux`
//! and `notify::freedesktop`, the Windows ones in `idle::windows` and
//! `notify::windows`.

#[cfg(any(target_os = "linux", windows))]
pub mod guard;
pub mod idle;
#[cfg(any(unix, windows))]
pub mod link;
pub mod notify;
pub mod render;
#[cfg(any(target_os = "linux", windows))]
mod session;
#[cfg(any(unix, windows))]
pub mod status;

use std::path::PathBuf;

/// What the helper is given.
#[derive(Debug, Clone)]
pub struct Options {
    /// The service's local socket (Windows: its named pipe).
    pub socket: PathBuf,
}

/// Runs the helper until `shutdown` completes (or the service refuses it).
///
/// Takes the session's guard first: when another helper already runs in this
/// session this one returns `Ok` at once, saying so in the log. Then it connects to the
/// service and, until shut down: every `report_every_ms` of the hello reads the idle
/// time and reports it; shows each reminder; answers the status action. When the
/// service goes away (a restart, an upgrade) it reconnects with a capped back-off:
/// 0.2 s doubling up to 30 s, back to the first after each hello.
/// A refusal from the service ends it with an error: retrying would be refused again.
#[cfg(any(target_os = "linux", windows))]
pub async fn run(options: Options, shutdown: impl std::future::Future) -> anyhow::Result<()> {
    session::run(options, shutdown).await
}
