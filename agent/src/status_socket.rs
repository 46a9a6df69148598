//! The local socket through which the running agent answers `daymeter-agent status`
//! and `daymeter-agent enroll` (sled lets only one process open the journal, so these
//! commands ask the agent that holds it).
//!
//! One command per connection: the client writes `status` or `enroll` and a newline,
//! the agent writes one JSON document and closes. Unix domain socket on Linux and macOS;
//! Windows will use a named pipe with the service issue (until then `status` there reads
//! the journal of a stopped agent).

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::run::{Agent, RunError};

/// Longest command line accepted; anything longer is not a client of ours.
const MAX_COMMAND: usize = 64;

/// Starts answering on the configured socket path; a stale socket from a killed agent is
/// replaced.
#[cfg(unix)]
pub fn serve(agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let path = agent.config.status_socket();
    let socket_error = |source: io::Error| RunError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket_error)?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(socket_error)?;
    // No secrets cross this socket: any local account may ask for the status.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(socket_error)?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "status socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read).take(MAX_COMMAND as u64);
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = answer(&agent, line.trim()).await;
                let _ = write.write_all(answer.as_bytes()).await;
                let _ = write.shutdown().await;
            });
        }
    }))
}

#[cfg(not(unix))]
pub fn serve(_agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, RunError> {
    Ok(tokio::spawn(async {}))
}

async fn answer(agent: &Agent, command: &str) -> String {
    let value = match command {
        "status" => {
            serde_json::to_value(agent.status()).unwrap_or_else(|e| json!({"error": e.to_string()}))
        }
        "enroll" => match agent.enroll().await {
            Ok(e) => json!({ "enrolled": true, "device_id": e.device_id }),
            Err(e) => json!({ "enrolled": false, "error": e.to_string() }),
        },
        other => json!({ "error": format!("unknown command `{other}`; try status or enroll") }),
    };
    value.to_string()
}

/// Asks the running agent; `Err` with `NotFound`/`ConnectionRefused` means none runs.
#[cfg(unix)]
pub fn ask(path: &Path, command: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(90)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(not(unix))]
pub fn ask(_path: &Path, _command: &str) -> io::Result<String> {
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no status socket on this platform yet",
    ))
}
