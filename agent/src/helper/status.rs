//! The service's status as text, for the notification that answers "Open daymeter
//! status": the same request `daymeter-agent status` makes (`status` and a newline on
//! the local socket or pipe, one JSON document back), rendered the same way. The service shows
//! this account its own sessions only.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::status::Status;

/// The user clicked and waits: an answer later than this is not worth showing.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// A status is a few kilobytes; more is not the service.
const MAX_ANSWER: u64 = 1 << 20;

/// The status text, or a sentence saying why there is none.
pub async fn text(socket: &Path) -> String {
    match tokio::time::timeout(ANSWER_WITHIN, ask(socket)).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => format!("daymeter's status cannot be shown: {why}"),
        Err(_) => "daymeter's status cannot be shown: the service did not answer in time".into(),
    }
}

async fn ask(socket: &Path) -> Result<String, String> {
    let (read, mut write) = crate::status_socket::connect(socket)
        .await
        .map_err(|e| format!("no service answers on {}: {e}", socket.display()))?;
    write
        .write_all(b"status\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    read.take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| format!("an unreadable answer ({e})"))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(format!("the service answered: {error}"));
    }
    let status: Status =
        serde_json::from_value(value).map_err(|e| format!("an unreadable answer ({e})"))?;
    Ok(status.render())
}
