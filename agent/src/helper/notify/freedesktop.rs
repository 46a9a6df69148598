//! The Desktop Notifications Specification (`org.freedesktop.Notifications` on the
//! session bus): GNOME, KDE, Xfce, dunst, mako… all serve it.
//!
//! The "Open daymeter status" action is offered only where the server lists the
//! `actions` capability: a server without it would show the key as text or drop the
//! notification. Its answer is a follow-up notification carrying the service's status
//! (see the helper's `status` module) rather than a terminal: which terminal emulator
//! a desktop has, and how it takes a command, differs everywhere, while every server
//! that offers actions shows a notification.

use std::collections::HashMap;
use std::sync::Mutex;

use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream, Variant};

use super::{Action, Notification, Notifier, NotifyError};
use crate::helper::idle::BoxFuture;

const SERVER: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const INTERFACE: &str = "org.freedesktop.Notifications";

/// The action's key, as `ActionInvoked` returns it.
const STATUS_KEY: &str = "status";
const STATUS_LABEL: &str = "Open daymeter status";
/// The desktop file whose icon and name the server shows (`packaging/xdg`).
const DESKTOP_ENTRY: &str = "daymeter-session";
/// How many of our notification ids are remembered for their actions: more than a day
/// of reminders, and a bound.
const REMEMBERED: usize = 64;

/// Urgency levels of the specification.
const NORMAL: u8 = 1;
const CRITICAL: u8 = 2;

pub struct Freedesktop {
    conn: Connection,
    /// `ActionInvoked` signals; `None` when the subscription failed (then no action is
    /// offered: one that cannot be answered is worse than none).
    actions: Option<MessageStream>,
    /// Ids the server gave our notifications: another application's actions are not ours.
    ours: Mutex<Vec<u32>>,
}

impl Freedesktop {
    /// Notifications on `conn`, subscribed to their actions.
    pub async fn new(conn: Connection) -> Freedesktop {
        let actions = match subscribe(&conn).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to notification actions; none will be offered");
                None
            }
        };
        Freedesktop {
            conn,
            actions,
            ours: Mutex::new(Vec::new()),
        }
    }

    /// Whether the server lists `actions`; asked at each notification, as the server
    /// may have been replaced since the last (a desktop restarted, dunst swapped in).
    async fn has_actions(&self) -> bool {
        let reply = self
            .conn
            .call_method(Some(SERVER), PATH, Some(INTERFACE), "GetCapabilities", &())
            .await;
        match reply.and_then(|r| r.body().deserialize::<Vec<String>>()) {
            Ok(caps) => caps.iter().any(|c| c == "actions"),
            Err(e) => {
                tracing::debug!(error = %e, "the notification server's capabilities are unknown");
                false
            }
        }
    }

    async fn notify(&self, note: &Notification) -> Result<(), NotifyError> {
        let offer = note.offer_status && self.actions.is_some() && self.has_actions().await;
        let actions: Vec<&str> = if offer {
            vec![STATUS_KEY, STATUS_LABEL]
        } else {
            Vec::new()
        };
        let mut hints: HashMap<&str, Variant<'_>> = HashMap::new();
        hints.insert("x-daymeter-kind", Variant::new(note.kind.as_str()));
        hints.insert("desktop-entry", Variant::new(DESKTOP_ENTRY));
        hints.insert(
            "urgency",
            Variant::U8(if note.urgent { CRITICAL } else { NORMAL }),
        );
        // -1: the server's own timeout (critical ones stay until dismissed).
        let expire: i32 = -1;
        let reply = self
            .conn
            .call_method(
                Some(SERVER),
                PATH,
                Some(INTERFACE),
                "Notify",
                &(
                    "daymeter",
                    0u32,
                    "",
                    note.summary.as_str(),
                    note.body.as_str(),
                    actions,
                    hints,
                    expire,
                ),
            )
            .await
            .map_err(|e| NotifyError::Server(e.into()))?;
        let id: u32 = reply
            .body()
            .deserialize()
            .map_err(|e| NotifyError::Server(e.into()))?;
        if offer && let Ok(mut ours) = self.ours.lock() {
            ours.push(id);
            let excess = ours.len().saturating_sub(REMEMBERED);
            ours.drain(..excess);
        }
        Ok(())
    }

    fn is_ours(&self, id: u32) -> bool {
        self.ours.lock().is_ok_and(|ours| ours.contains(&id))
    }
}

impl Notifier for Freedesktop {
    fn show<'a>(&'a self, note: &'a Notification) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(self.notify(note))
    }

    fn next_action(&mut self) -> BoxFuture<'_, Option<Action>> {
        Box::pin(async move {
            loop {
                let Some(stream) = self.actions.as_mut() else {
                    return std::future::pending().await;
                };
                let msg = match next_message(stream).await {
                    Some(Ok(msg)) => msg,
                    Some(Err(_)) => continue,
                    None => {
                        self.actions = None;
                        continue;
                    }
                };
                let Ok((id, key)) = msg.body().deserialize::<(u32, String)>() else {
                    continue;
                };
                if key == STATUS_KEY && self.is_ours(id) {
                    return Some(Action::Status);
                }
            }
        })
    }
}

async fn subscribe(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .path(PATH)
        .interface(INTERFACE)
        .member("ActionInvoked")
        .build()?;
    MessageStream::for_match_rule(rule, conn, None).await
}

/// The next message of `stream` (see `power::logind` for why by hand).
async fn next_message(stream: &mut MessageStream) -> Option<zbus::Result<Message>> {
    use zbus::export::futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
