//! Stand-ins for a desktop session's D-Bus services, written on zbus's message layer and
//! served on a private bus (`support/bus.rs`): a notification server that records what
//! it is asked to show, and the two idle monitors (GNOME's Mutter, the freedesktop
//! ScreenSaver) with an idle time the test sets.
//!
//! Uses only zbus (no `service` feature: replies are sent by hand) and tokio, so the
//! end-to-end crate can include this file with
//! `#[path = "../../agent/tests/support/desktop.rs"] mod desktop;`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use zbus::message::Type as MessageType;
use zbus::{Connection, Message, MessageStream, OwnedVariant, Variant};

/// How long a test waits for something the stand-ins should see.
pub const WAIT: Duration = Duration::from_secs(10);

/// One `Notify` call, as the notification server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notified {
    /// The id the server answered.
    pub id: u32,
    pub app_name: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<String>,
    /// The `x-daymeter-kind` hint.
    pub kind: Option<String>,
    /// The `desktop-entry` hint.
    pub desktop_entry: Option<String>,
    /// The `urgency` hint (0 low, 1 normal, 2 critical).
    pub urgency: Option<u8>,
}

/// `org.freedesktop.Notifications`, recording every `Notify`.
pub struct Notifications {
    conn: Connection,
    seen: watch::Receiver<Vec<Notified>>,
}

impl Notifications {
    /// Serves on `address`; `actions` decides whether `GetCapabilities` lists `actions`.
    pub async fn start(address: &str, actions: bool) -> Notifications {
        let conn = connect(address).await;
        let mut calls = MessageStream::from(&conn);
        own(&conn, "org.freedesktop.Notifications").await;
        let (tx, seen) = watch::channel(Vec::new());
        let replier = conn.clone();
        tokio::spawn(async move {
            let mut capabilities = vec!["body".to_owned()];
            if actions {
                capabilities.push("actions".to_owned());
            }
            let mut next_id = 0u32;
            while let Some(msg) = next_call(&mut calls).await {
                let header = msg.header();
                let result = match member(&msg).as_deref() {
                    Some("Notify") => match notified(&msg, next_id + 1) {
                        Some(n) => {
                            next_id += 1;
                            tx.send_modify(|seen| seen.push(n));
                            replier.reply(&header, &next_id).await
                        }
                        None => invalid_args(&replier, &msg).await,
                    },
                    Some("GetCapabilities") => replier.reply(&header, &capabilities).await,
                    Some("GetServerInformation") => {
                        replier
                            .reply(&header, &("stand-in", "daymeter tests", "1.0", "1.2"))
                            .await
                    }
                    Some("CloseNotification") => replier.reply(&header, &()).await,
                    _ => unknown_method(&replier, &msg).await,
                };
                if result.is_err() {
                    break;
                }
            }
        });
        Notifications { conn, seen }
    }

    /// Every notification so far.
    pub fn all(&self) -> Vec<Notified> {
        self.seen.borrow().clone()
    }

    /// Waits until `n` notifications were shown and returns them all; panics after
    /// [`WAIT`].
    pub async fn wait_for(&self, n: usize) -> Vec<Notified> {
        let mut seen = self.seen.clone();
        match tokio::time::timeout(WAIT, seen.wait_for(|s| s.len() >= n)).await {
            Ok(Ok(all)) => all.clone(),
            _ => panic!(
                "{n} notifications expected within {WAIT:?}, saw {:#?}",
                self.all()
            ),
        }
    }

    /// The user clicked the action `key` of notification `id`.
    pub async fn invoke_action(&self, id: u32, key: &str) {
        self.conn
            .emit_signal(
                None::<&str>,
                "/org/freedesktop/Notifications",
                "org.freedesktop.Notifications",
                "ActionInvoked",
                &(id, key),
            )
            .await
            .expect("emit ActionInvoked");
    }
}

fn notified(msg: &Message, id: u32) -> Option<Notified> {
    type Args = (
        String,
        u32,
        String,
        String,
        String,
        Vec<String>,
        HashMap<String, OwnedVariant>,
        i32,
    );
    let (app_name, _replaces, _icon, summary, body, actions, hints, _expire): Args =
        msg.body().deserialize().ok()?;
    let text = |key: &str| match hints.get(key).map(|v| &**v) {
        Some(Variant::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    Some(Notified {
        id,
        app_name,
        summary,
        body,
        actions,
        kind: text("x-daymeter-kind"),
        desktop_entry: text("desktop-entry"),
        urgency: match hints.get("urgency").map(|v| &**v) {
            Some(Variant::U8(u)) => Some(*u),
            _ => None,
        },
    })
}

/// Which idle monitor a stand-in plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// `org.gnome.Mutter.IdleMonitor` at `/org/gnome/Mutter/IdleMonitor/Core`,
    /// `GetIdletime` → u64 ms.
    Mutter,
    /// `org.freedesktop.ScreenSaver` at `/org/freedesktop/ScreenSaver`,
    /// `GetSessionIdleTime` → u32 ms.
    ScreenSaver,
}

/// An idle monitor answering the idle time the test set: a fixed value
/// ([`IdleMonitor::set_idle`]), or one that grows with time as a real session's does
/// while nobody touches it ([`IdleMonitor::set_idle_growing`]).
pub struct IdleMonitor {
    _conn: Connection,
    idle: Arc<Idle>,
}

/// The idle time as set: `base_ms`, plus the time since `since_ms` (milliseconds
/// after `epoch`) when `growing`.
struct Idle {
    epoch: std::time::Instant,
    base_ms: AtomicU64,
    since_ms: AtomicU64,
    growing: std::sync::atomic::AtomicBool,
}

impl Idle {
    fn now_ms(&self) -> u64 {
        let base = self.base_ms.load(Ordering::SeqCst);
        if !self.growing.load(Ordering::SeqCst) {
            return base;
        }
        let since = self.since_ms.load(Ordering::SeqCst);
        base + millis(self.epoch.elapsed()).saturating_sub(since)
    }

    fn set(&self, idle: Duration, growing: bool) {
        // Growing off first, so that no reader sees the new base with the old start.
        self.growing.store(false, Ordering::SeqCst);
        self.base_ms.store(millis(idle), Ordering::SeqCst);
        self.since_ms
            .store(millis(self.epoch.elapsed()), Ordering::SeqCst);
        self.growing.store(growing, Ordering::SeqCst);
    }
}

impl IdleMonitor {
    pub async fn start(address: &str, monitor: Monitor, idle: Duration) -> IdleMonitor {
        let conn = connect(address).await;
        let mut calls = MessageStream::from(&conn);
        let (name, method) = match monitor {
            Monitor::Mutter => ("org.gnome.Mutter.IdleMonitor", "GetIdletime"),
            Monitor::ScreenSaver => ("org.freedesktop.ScreenSaver", "GetSessionIdleTime"),
        };
        own(&conn, name).await;
        let idle_now = Arc::new(Idle {
            epoch: std::time::Instant::now(),
            base_ms: AtomicU64::new(millis(idle)),
            since_ms: AtomicU64::new(0),
            growing: std::sync::atomic::AtomicBool::new(false),
        });
        let value = idle_now.clone();
        let replier = conn.clone();
        tokio::spawn(async move {
            while let Some(msg) = next_call(&mut calls).await {
                let header = msg.header();
                let ms = value.now_ms();
                let result = match (member(&msg).as_deref(), monitor) {
                    (Some(m), Monitor::Mutter) if m == method => replier.reply(&header, &ms).await,
                    (Some(m), Monitor::ScreenSaver) if m == method => {
                        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
                        replier.reply(&header, &ms).await
                    }
                    _ => unknown_method(&replier, &msg).await,
                };
                if result.is_err() {
                    break;
                }
            }
        });
        IdleMonitor {
            _conn: conn,
            idle: idle_now,
        }
    }

    /// Answers `idle` from now on, unchanging.
    pub fn set_idle(&self, idle: Duration) {
        self.idle.set(idle, false);
    }

    /// Answers `idle` now and more as time goes by: nobody touches the session from
    /// `idle` ago on. `set_idle(Duration::ZERO)` is the user's next input.
    pub fn set_idle_growing(&self, idle: Duration) {
        self.idle.set(idle, true);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn connect(address: &str) -> Connection {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .expect("connect to the private bus")
}

async fn own(conn: &Connection, name: &'static str) {
    conn.request_name(name)
        .await
        .expect("own the stand-in's name");
}

fn member(msg: &Message) -> Option<String> {
    msg.header().member().map(|m| m.to_string())
}

/// The next method call on `stream`; signals and replies are skipped.
async fn next_call(stream: &mut MessageStream) -> Option<Message> {
    use zbus::export::futures_core::Stream;
    loop {
        let msg = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await?;
        if let Ok(msg) = msg
            && msg.message_type() == MessageType::MethodCall
        {
            return Some(msg);
        }
    }
}

async fn unknown_method(conn: &Connection, msg: &Message) -> zbus::Result<()> {
    conn.reply_error(
        &msg.header(),
        "org.freedesktop.DBus.Error.UnknownMethod",
        &"not served by this stand-in",
    )
    .await
}

async fn invalid_args(conn: &Connection, msg: &Message) -> zbus::Result<()> {
    conn.reply_error(
        &msg.header(),
        "org.freedesktop.DBus.Error.InvalidArgs",
        &"arguments not as the specification says",
    )
    .await
}
