//! Linux: the session bus is the session's own registry. The first helper owns a
//! well-known name for as long as its bus connection lives (the bus drops it when the
//! process dies), and a second one asks for the same name without queueing and learns
//! at once that it exists.

use zbus::Connection;
use zbus::fdo::{RequestNameFlags, RequestNameReply};

use super::Guard;

/// The name the running helper owns on its session bus.
pub const BUS_NAME: &str = "org.daymeter.Session";

/// Asks the session bus for [`BUS_NAME`] (`DO_NOT_QUEUE`: a second helper must not
/// wait in line to take over, it must leave). [`Guard::Owned`] lasts while `conn`
/// stays open.
pub async fn take(conn: &Connection) -> zbus::Result<Guard> {
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await;
    match reply {
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => Ok(Guard::Owned),
        Ok(RequestNameReply::Exists | RequestNameReply::InQueue) => Ok(Guard::AlreadyRunning),
        // zbus reports a refused name as an error on some paths rather than `Exists`.
        Err(zbus::Error::NameTaken) => Ok(Guard::AlreadyRunning),
        Err(e) => Err(e),
    }
}
