//! logind on the system bus: a delay inhibitor on sleep and the `PrepareForSleep` signal.
//!
//! Holding a *delay* inhibitor makes logind announce a suspend (`PrepareForSleep(true)`)
//! and wait (up to its `InhibitDelayMaxSec`, 5 s by default) until the holder closes the
//! descriptor it was given: long enough for the service to tell the user that a Flex
//! product left open will open a new day overnight, and to flush its journal. After the
//! resume (`PrepareForSleep(false)`) the lock is taken again for the next suspend.
//!
//! Written on zbus's message layer (a method call, a match rule) rather than a
//! `#[zbus::proxy]`: the workspace builds zbus without its `proxy` feature, and three
//! messages do not need generated code.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use daymeter_shared::clock::Clock;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream};

const LOGIND: &str = "org.freedesktop.login1";
const PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";

/// What the inhibitor says to `loginctl list-inhibitors` and to logind's own log.
const WHAT: &str = "sleep";
const WHO: &str = "daymeter";
const WHY: &str = "show close-the-app reminders before sleep";
const MODE: &str = "delay";

#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    #[error("no system bus: {0}")]
    Bus(#[source] zbus::Error),
    #[error("logind is not on the system bus: {0}")]
    NoLogind(#[source] zbus::Error),
    #[error("cannot subscribe to logind's PrepareForSleep: {0}")]
    Subscribe(#[source] zbus::Error),
    #[error("logind refused a sleep inhibitor: {0}")]
    Inhibit(#[source] zbus::Error),
}

pub use super::SleepEvent;

/// logind's sleep announcements, with a delay inhibitor held between them.
pub struct SleepWatch {
    conn: Connection,
    signals: MessageStream,
    /// The inhibitor: logind delays a suspend while this descriptor is open.
    lock: Option<OwnedFd>,
    /// `PrepareForSleep(false)` was received; the lock is to be taken again.
    resuming: bool,
    clock: Arc<dyn Clock>,
}

impl SleepWatch {
    /// Connects to logind on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set, the
    /// standard socket otherwise), subscribes to `PrepareForSleep` and takes the delay
    /// inhibitor. An error means there is no system bus or no logind (a container, a
    /// minimal system): the service then finds sleeps by the clocks alone.
    pub async fn connect(clock: Arc<dyn Clock>) -> Result<SleepWatch, LogindError> {
        let conn = Connection::system().await.map_err(LogindError::Bus)?;
        SleepWatch::on(conn, clock).await
    }

    /// As [`SleepWatch::connect`], on a connection the caller opened.
    pub async fn on(conn: Connection, clock: Arc<dyn Clock>) -> Result<SleepWatch, LogindError> {
        // The signal is matched on logind's unique name: anyone on the bus may emit a
        // signal that claims logind's path and interface, only logind sends from its
        // own connection. (A logind restarted while the agent runs has a new name; its
        // announcements are then missed and sleeps are found by the clocks alone.)
        let owner = name_owner(&conn).await.map_err(LogindError::NoLogind)?;
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(owner.as_str())
            .path(PATH)
            .interface(MANAGER)
            .member("PrepareForSleep")
            .build()
            .map_err(LogindError::Subscribe)?;
        let signals = MessageStream::for_match_rule(rule, &conn, None)
            .await
            .map_err(LogindError::Subscribe)?;
        let lock = inhibit(&conn).await.map_err(LogindError::Inhibit)?;
        tracing::debug!("holding a logind delay inhibitor on sleep");
        Ok(SleepWatch {
            conn,
            signals,
            lock: Some(lock),
            resuming: false,
            clock,
        })
    }

    /// The next announcement; `None` once the bus connection is gone (the service then
    /// goes on with the clocks alone). Cancel-safe, so the service may `select!` on it
    /// with its poll timer: a message is taken from the stream only when it is handled,
    /// and a resume whose lock was not taken again yet is finished at the next call.
    pub async fn next(&mut self) -> Option<SleepEvent> {
        loop {
            if self.resuming {
                self.retake().await;
                self.resuming = false;
                return Some(SleepEvent::Resumed);
            }
            let msg = match next_message(&mut self.signals).await? {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::debug!(error = %e, "unreadable message from logind");
                    continue;
                }
            };
            let Ok(going_to_sleep) = msg.body().deserialize::<bool>() else {
                continue;
            };
            if going_to_sleep {
                return Some(SleepEvent::Suspending {
                    at: self.clock.now(),
                });
            }
            self.resuming = true;
        }
    }

    /// Lets the suspend go ahead: closes the inhibitor. The service calls it once the
    /// pre-sleep reminders are sent and the journal is flushed.
    pub fn release(&mut self) {
        if self.lock.take().is_some() {
            tracing::debug!("released the logind sleep inhibitor");
        }
    }

    /// Whether the inhibitor is held now.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// Takes the inhibitor again after a resume, unless it is still held (a suspend that
    /// was cancelled, or announced before the service had released the lock).
    async fn retake(&mut self) {
        if self.lock.is_some() {
            return;
        }
        match inhibit(&self.conn).await {
            Ok(fd) => self.lock = Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the logind sleep inhibitor again; the next suspend will not wait for reminders");
            }
        }
    }
}

async fn name_owner(conn: &Connection) -> zbus::Result<String> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetNameOwner",
            &(LOGIND,),
        )
        .await?;
    reply.body().deserialize::<String>()
}

async fn inhibit(conn: &Connection) -> zbus::Result<OwnedFd> {
    let reply: Message = conn
        .call_method(
            Some(LOGIND),
            PATH,
            Some(MANAGER),
            "Inhibit",
            &(WHAT, WHO, WHY, MODE),
        )
        .await?;
    let body = reply.body();
    let fd: zbus::Fd<'_> = body.deserialize()?;
    // A duplicate of our own: the reply's copy closes when the reply is dropped.
    OwnedFd::try_from(fd)
}

/// The next message of `stream`.
///
/// zbus's streams implement `futures_core::Stream`, which the agent does not depend on
/// directly; zbus re-exports the trait for its generated code, and one poll is all this
/// needs.
async fn next_message(stream: &mut MessageStream) -> Option<zbus::Result<Message>> {
    use zbus::export::futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
