//! Showing a rendered reminder on the desktop, behind [`Notifier`]: the Linux
//! desktop's notification server is in [`freedesktop`], Windows' toasts (or message
//! boxes where there are none) in [`windows`], the toasts' XML in [`toast`].

#[cfg(target_os = "linux")]
pub mod freedesktop;
pub mod toast;
#[cfg(windows)]
pub mod windows;

use super::idle::BoxFuture;

/// One notification, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
    /// What it is about, for the desktop's filters and for tests: a reminder's
    /// `Kind::as_str()`, or `status` for the status shown on request.
    pub kind: String,
    /// Shown more insistently (the product is about to be asked to close).
    pub urgent: bool,
    /// Offer the "Open daymeter status" action, where the desktop supports actions.
    pub offer_status: bool,
}

/// What the user asked for from a notification of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// "Open daymeter status".
    Status,
}

/// A desktop's notifications.
pub trait Notifier: Send {
    /// Shows `note`.
    fn show<'a>(&'a self, note: &'a Notification) -> BoxFuture<'a, Result<(), NotifyError>>;

    /// The next action the user invoked on one of this helper's notifications; pends
    /// for ever where there are none. Cancel-safe: the helper waits on it beside its
    /// socket and its report timer.
    fn next_action(&mut self) -> BoxFuture<'_, Option<Action>>;
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The server refused or is absent (the desktop's own error kept as the source).
    #[error("the desktop's notification server did not take the notification: {0}")]
    Server(#[source] Box<dyn std::error::Error + Send + Sync>),
}
