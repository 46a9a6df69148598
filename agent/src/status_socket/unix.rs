//! The status socket as a Unix domain socket, each connection's caller identified by
//! the kernel (`SO_PEERCRED` on Linux, `getpeereid` on macOS, through tokio).

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::Access;
use crate::run::{Agent, RunError};

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
                    Ok(cred) => Some((cred.uid(), Access::of(cred.uid(), service_uid))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a status socket caller's credentials");
                        None
                    }
                };
                let (read, write) = stream.into_split();
                super::one_connection(agent, caller, read, write).await;
            });
        }
    }))
}

pub(super) fn ask(path: &Path, command: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(super::ANSWER_WAIT))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
