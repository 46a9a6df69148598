//! The status socket as a Windows named pipe (`\\.\pipe\daymeter-agent` unless the
//! configuration's `socket` names another), each connection's caller identified by
//! Windows, never by what it writes: `GetNamedPipeClientProcessId`, that process's
//! access token, the token user's SID, mapped to an account id by the journal's table
//! ([`crate::accounts`]).
//!
//! The pipe's DACL lets LocalSystem, Administrators and the service's own account do
//! anything, and any authenticated user (every interactive one) read and write — but
//! not `FILE_CREATE_PIPE_INSTANCE`, so no user can put a server instance of their own
//! behind the name. The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`
//! (the agent refuses to start if someone else already holds the name), and remote
//! clients are refused. One instance per connection: the next is created before the
//! connected one is served, so a second client never finds the name busy for long.

use std::ffi::c_void;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::{ERROR_PIPE_BUSY, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;

use super::Access;
use crate::accounts::{Accounts, sid};
use crate::run::{Agent, RunError};

/// How long a client waits while every instance of the pipe is busy.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Read and write, without `FILE_APPEND_DATA` (`FILE_CREATE_PIPE_INSTANCE` on a pipe):
/// `FILE_GENERIC_READ | FILE_GENERIC_WRITE` is 0x12019f.
const CLIENT_RIGHTS: u32 = 0x0012_019b;

/// The pipe's security descriptor (from SDDL), freed when dropped.
struct Security(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is a self-contained block of memory, only read after it is
// made (by each CreateNamedPipeW), and freed once, on drop.
unsafe impl Send for Security {}
// SAFETY: as above: shared reads only.
unsafe impl Sync for Security {}

impl Security {
    /// LocalSystem, Administrators and `service_sid`: all; authenticated users: read
    /// and write. `P`: nothing inherited.
    fn new(service_sid: &str) -> io::Result<Security> {
        let sddl = format!(
            "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{service_sid})(A;;0x{CLIENT_RIGHTS:x};;;AU)"
        );
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; the descriptor is allocated by the call and
        // freed by our Drop.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Security(descriptor))
    }
}

impl Drop for Security {
    fn drop(&mut self) {
        // SAFETY: allocated with LocalAlloc by the SDDL conversion; freed once.
        unsafe { LocalFree(self.0) };
    }
}

fn instance(name: &Path, security: &Security, first: bool) -> io::Result<NamedPipeServer> {
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: security.0,
        bInheritHandle: 0,
    };
    // SAFETY: `attributes` and the descriptor it points to outlive the call.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(
                name,
                (&mut attributes as *mut SECURITY_ATTRIBUTES).cast::<c_void>(),
            )
    }
}

pub(super) fn serve(agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let name = agent.config.socket.clone();
    let socket_error = |source: io::Error| RunError::Socket {
        path: name.clone(),
        source,
    };
    let accounts = crate::accounts::installed_or_memory();
    let me = sid::of_current_process().map_err(socket_error)?;
    let service_id = accounts.id_of(&me.sid, || me.name());
    let security = Security::new(&me.sid).map_err(socket_error)?;
    let first = instance(&name, &security, true).map_err(socket_error)?;
    Ok(tokio::spawn(async move {
        let mut server = first;
        loop {
            if let Err(e) = server.connect().await {
                tracing::warn!(error = %e, "status pipe: a connection failed");
            }
            // The next instance first, so that the name is never without a listener.
            let next = loop {
                match instance(&name, &security, false) {
                    Ok(next) => break next,
                    Err(e) => {
                        tracing::warn!(error = %e, "status pipe: cannot create an instance");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            let connected = std::mem::replace(&mut server, next);
            tokio::spawn(one_connection(
                agent.clone(),
                accounts.clone(),
                service_id,
                connected,
            ));
        }
    }))
}

/// The account id and access of the process at the other end, as Windows says.
fn caller_of(
    pipe: &NamedPipeServer,
    accounts: &Accounts,
    service_id: u32,
) -> io::Result<(u32, Access)> {
    use std::os::windows::io::AsRawHandle;
    let mut pid = 0u32;
    // SAFETY: the handle is the connected server end, valid while `pipe` lives.
    if unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let owner = sid::of_pid(pid)?;
    let id = accounts.id_of(&owner.sid, || owner.name());
    Ok((id, Access::of_member(id, service_id, owner.admin)))
}

async fn one_connection(
    agent: Arc<Agent>,
    accounts: Arc<Accounts>,
    service_id: u32,
    pipe: NamedPipeServer,
) {
    let caller = match caller_of(&pipe, &accounts, service_id) {
        Ok(caller) => Some(caller),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell which account is on the status pipe");
            None
        }
    };
    let (read, write) = tokio::io::split(pipe);
    super::one_connection(agent, caller, read, write).await;
}

/// Opens the pipe as a client (the standard library's file open), waiting while every
/// instance is busy.
fn open_blocking(name: &Path) -> io::Result<std::fs::File> {
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name)
        {
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub(super) fn ask(name: &Path, command: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut pipe = open_blocking(name)?;
    pipe.write_all(command.as_bytes())?;
    pipe.write_all(b"\n")?;
    // A synchronous pipe has no read timeout: the read waits on a thread of its own,
    // abandoned (the command ends soon after) if the agent never answers.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        // The standard library reads a pipe the server closed as the end of the file.
        let read = pipe.read_to_string(&mut answer).map(|_| answer);
        let _ = tx.send(read);
    });
    rx.recv_timeout(super::ANSWER_WAIT).map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the agent did not answer within {:?}", super::ANSWER_WAIT),
        )
    })?
}

pub(super) async fn connect(name: &Path) -> io::Result<super::Connection> {
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    let client = loop {
        match ClientOptions::new().open(name) {
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other?,
        }
    };
    let (read, write) = tokio::io::split(client);
    Ok((Box::new(read), Box::new(write)))
}
