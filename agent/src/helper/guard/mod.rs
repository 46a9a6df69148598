//! One helper per session. Two would report the same user's idle time twice and show
//! every reminder twice; they happen when two autostart mechanisms both start one
//! (systemd's user unit and an XDG autostart entry; the Run key and a Startup-folder
//! shortcut), or a user runs `daymeter-agent session` by hand.
//!
//! Each platform asks the session's own registry, which forgets the claim when the
//! process dies, however it dies, so there is no stale lock file to clean up:
//! - [`linux`]: a well-known name on the session bus;
//! - [`windows`]: a named mutex in the session's `Local\` namespace.
//!
//! Both answer with a [`Guard`] through a `take`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(windows)]
mod windows;

#[cfg(target_os = "linux")]
pub use linux::{BUS_NAME, take};
#[cfg(windows)]
pub use windows::{MUTEX_NAME, take};

/// Whether this helper may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// This helper holds the session's claim, for as long as it runs.
    Owned,
    /// Another helper of this session holds it.
    AlreadyRunning,
}
