//! Sleep announcements handed to the service from outside its own tasks: the Windows
//! service control handler's power events run on the control manager's thread, and
//! tests stand in for them the same way.
//!
//! The announcer blocks until the service has done what it does before a sleep (the
//! pre-sleep reminders, the journal on disk) or a time limit passes: Windows gives a
//! `PBT_APMSUSPEND` handler about two seconds before it suspends anyway, so waiting
//! longer than that gains nothing, and returning early would let the machine sleep
//! before the reminder is out. logind has its own inhibitor and does not need this.

use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What is announced. The service dates a suspend by its own clock when it hears it
/// (as it dates logind's), so the announcer sends no time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    Suspending,
    Resumed,
}

/// One announcement, with the way to say it was handled.
pub struct Announcement {
    pub what: Announced,
    /// Told once the service has handled a `Suspending`.
    pub done: Option<mpsc::Sender<()>>,
}

/// The announcing end: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Announcer(UnboundedSender<Announcement>);

/// The service's end: [`crate::run::Agent::with_announcements`] takes it.
pub struct Announcements(pub(crate) UnboundedReceiver<Announcement>);

/// A connected pair.
pub fn channel() -> (Announcer, Announcements) {
    let (tx, rx) = unbounded_channel();
    (Announcer(tx), Announcements(rx))
}

impl Announcer {
    /// The machine is about to sleep: waits until the service has sent its pre-sleep
    /// reminders and flushed its journal, at most `within`. Returns whether it did in
    /// time (`false` also when the service is not running). Blocks the calling thread:
    /// call it from a control handler or a test thread, never from the service's
    /// runtime.
    pub fn suspending(&self, within: Duration) -> bool {
        let (done, handled) = mpsc::channel();
        let sent = self.0.send(Announcement {
            what: Announced::Suspending,
            done: Some(done),
        });
        sent.is_ok() && handled.recv_timeout(within).is_ok()
    }

    /// The machine woke up (nothing to wait for: the clocks find the sleep's length).
    pub fn resumed(&self) {
        let _ = self.0.send(Announcement {
            what: Announced::Resumed,
            done: None,
        });
    }
}
