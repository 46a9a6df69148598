//! The Linux desktop's idle monitors, in the order [`sources`] tries them:
//!
//! 1. GNOME's Mutter (`org.gnome.Mutter.IdleMonitor`), exact on X11 and Wayland;
//! 2. `org.freedesktop.ScreenSaver` (KDE Plasma, Xfce, LXQt…);
//! 3. the X server's screensaver extension, when `DISPLAY` is set (any X11 desktop);
//! 4. logind's idle hint on the system bus, coarse and only as good as whoever sets it.
//!
//! Written on zbus's message layer, as `power::logind` is: one method call each does
//! not need the proxy macro (the workspace builds zbus without it).

use std::sync::Mutex;
use std::time::Duration;

use x11rb::connection::Connection as _;
use x11rb::protocol::screensaver::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;
use zbus::{Connection, OwnedVariant, Variant};

use super::{BoxFuture, IdleSource};

/// A monitor that takes longer than this to answer is passed over for this report: the
/// report is due and a late idle time is worth less than an unknown one.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Every source for this session, in order; X11 only where `DISPLAY` is set.
pub fn sources(session: &Connection) -> Vec<Box<dyn IdleSource>> {
    let mut sources: Vec<Box<dyn IdleSource>> = vec![
        Box::new(Mutter(session.clone())),
        Box::new(ScreenSaver(session.clone())),
    ];
    if std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty()) {
        sources.push(Box::new(X11::default()));
    }
    sources.push(Box::new(Logind::default()));
    sources
}

async fn call<B>(
    conn: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    method: &str,
    args: &B,
) -> Option<zbus::Message>
where
    B: serde::Serialize + zbus::DynamicType + Sync,
{
    let reply = conn.call_method(Some(destination), path, Some(interface), method, args);
    match tokio::time::timeout(ANSWER_WITHIN, reply).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(e)) => {
            tracing::debug!(destination, method, error = %e, "idle monitor did not answer");
            None
        }
        Err(_) => {
            tracing::debug!(destination, method, "idle monitor answered too late");
            None
        }
    }
}

/// GNOME's `GetIdletime`: milliseconds since the last input (u64).
struct Mutter(Connection);

impl IdleSource for Mutter {
    fn name(&self) -> &'static str {
        "mutter"
    }

    fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(async move {
            let reply = call(
                &self.0,
                "org.gnome.Mutter.IdleMonitor",
                "/org/gnome/Mutter/IdleMonitor/Core",
                "org.gnome.Mutter.IdleMonitor",
                "GetIdletime",
                &(),
            )
            .await?;
            let ms: u64 = reply.body().deserialize().ok()?;
            Some(Duration::from_millis(ms))
        })
    }
}

/// `org.freedesktop.ScreenSaver.GetSessionIdleTime` (u32). The specification leaves the
/// unit open: KDE's ksmserver answers milliseconds (the kidletime value), which is what
/// the others that implement it follow, so it is taken as milliseconds. Older KDE 4
/// answered seconds; those desktops are long gone. GNOME Shell owns the name but
/// answers this method with an error, so GNOME falls through to Mutter's answer above.
struct ScreenSaver(Connection);

impl IdleSource for ScreenSaver {
    fn name(&self) -> &'static str {
        "screensaver"
    }

    fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(async move {
            let reply = call(
                &self.0,
                "org.freedesktop.ScreenSaver",
                "/org/freedesktop/ScreenSaver",
                "org.freedesktop.ScreenSaver",
                "GetSessionIdleTime",
                &(),
            )
            .await?;
            let ms: u32 = reply.body().deserialize().ok()?;
            Some(Duration::from_millis(u64::from(ms)))
        })
    }
}

/// The X server's screensaver extension (`ms_since_user_input`). x11rb is blocking; a
/// query to a local X server is one round trip of well under a millisecond, so it is
/// made in place rather than on a thread of its own (which would cost the helper a
/// thread for a microsecond's work). The connection is opened on first use and again
/// after an error.
#[derive(Default)]
struct X11 {
    conn: Mutex<Option<(RustConnection, usize)>>,
}

impl X11 {
    fn query(&self) -> Option<Duration> {
        let mut guard = self.conn.lock().ok()?;
        if guard.is_none() {
            match RustConnection::connect(None) {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot connect to the X display");
                    return None;
                }
            }
        }
        let (conn, screen) = guard.as_ref()?;
        let root = conn.setup().roots.get(*screen)?.root;
        let reply = conn
            .screensaver_query_info(root)
            .ok()
            .and_then(|cookie| cookie.reply().ok());
        match reply {
            Some(info) => Some(Duration::from_millis(u64::from(info.ms_since_user_input))),
            None => {
                // The display went away or lacks the extension: reconnect next time.
                *guard = None;
                None
            }
        }
    }
}

impl IdleSource for X11 {
    fn name(&self) -> &'static str {
        "x11"
    }

    fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
        let idle = self.query();
        Box::pin(async move { idle })
    }
}

/// logind's `IdleHint`/`IdleSinceHint` of the caller's session (`session/auto`) on the
/// system bus. Graphical sessions have the hint only when the desktop sets it, so a
/// hint that never changed (`IdleSinceHint` 0) is no answer rather than "active".
#[derive(Default)]
struct Logind {
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl IdleSource for Logind {
    fn name(&self) -> &'static str {
        "logind"
    }

    fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                match tokio::time::timeout(ANSWER_WITHIN, Connection::system()).await {
                    Ok(Ok(c)) => *conn = Some(c),
                    _ => return None,
                }
            }
            let reply = call(
                conn.as_ref()?,
                "org.freedesktop.login1",
                "/org/freedesktop/login1/session/auto",
                "org.freedesktop.DBus.Properties",
                "GetAll",
                &("org.freedesktop.login1.Session",),
            )
            .await?;
            let props: std::collections::HashMap<String, OwnedVariant> =
                reply.body().deserialize().ok()?;
            let idle = matches!(
                props.get("IdleHint").map(|v| &**v),
                Some(Variant::Bool(true))
            );
            let since = match props.get("IdleSinceHint").map(|v| &**v) {
                Some(Variant::U64(usec)) => *usec,
                _ => return None,
            };
            logind_idle(idle, since, std::time::SystemTime::now())
        })
    }
}

/// The rule for logind's two hints, apart for its test.
fn logind_idle(idle: bool, since_usec: u64, now: std::time::SystemTime) -> Option<Duration> {
    if since_usec == 0 {
        return None;
    }
    if !idle {
        return Some(Duration::ZERO);
    }
    let since = std::time::UNIX_EPOCH + Duration::from_micros(since_usec);
    Some(now.duration_since(since).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logind_hints_that_were_never_set_are_no_answer() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(logind_idle(false, 0, now), None);
        assert_eq!(logind_idle(true, 0, now), None);
        assert_eq!(logind_idle(false, 900_000_000, now), Some(Duration::ZERO));
        assert_eq!(
            logind_idle(true, 900_000_000, now),
            Some(Duration::from_secs(100))
        );
        // A hint dated after now (a clock set back) is no idle time, not a panic.
        assert_eq!(logind_idle(true, 2_000_000_000, now), Some(Duration::ZERO));
    }
}
