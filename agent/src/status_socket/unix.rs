//! The status socket as a Unix domain socket, each connection's caller identified by
//! the kernel (`SO_PEERCRED` on Linux, `getpeereid` on macOS, through tokio).

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Access, MAX_COMMAND, answer};
use crate::run::{Agent, RunError};

/// How long a connection may take to send its command.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn serve(agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use std::os::unix::fs::PermissionsExt;

    let path = agent.config.socket.clone();
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
    // Every account may connect: requests are authorised by the caller's credentials,
    // not by this mode (see the module notes of `status_socket`).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(socket_error)?;
    // SAFETY: geteuid(2) takes nothing and always succeeds.
    let service_uid = unsafe { libc::geteuid() };
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
                let caller = match stream.peer_cred() {
                    Ok(cred) => Some(cred.uid()),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a status socket caller's credentials");
                        None
                    }
                };
                let access = caller.map(|uid| Access::of(uid, service_uid));
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read).take(MAX_COMMAND as u64);
                // A caller that connects and says nothing must not hold a task and a
                // descriptor for good: any account may connect.
                let read = tokio::time::timeout(COMMAND_WAIT, reader.read_line(&mut line));
                if !matches!(read.await, Ok(Ok(_))) {
                    return;
                }
                if line.trim() == "session" {
                    match caller {
                        // A session helper: the connection stays open, and the account
                        // the kernel named is the one whose reminders it hears.
                        Some(uid) => {
                            crate::run::serve_helper(agent, uid, reader.into_inner(), write).await;
                        }
                        None => {
                            let _ = write
                                .write_all(
                                    super::refused("the agent cannot tell which account is asking")
                                        .as_bytes(),
                                )
                                .await;
                        }
                    }
                    return;
                }
                let answer = answer(&agent, line.trim(), access).await;
                let _ = write.write_all(answer.as_bytes()).await;
                let _ = write.shutdown().await;
            });
        }
    }))
}

pub(super) fn ask(path: &Path, command: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(90)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
