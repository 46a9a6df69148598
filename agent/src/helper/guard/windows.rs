//! Windows: a named mutex in the `Local\` namespace, which is per logon session. The
//! first helper creates it and keeps its handle until it exits; the system closes the
//! handle then, however the helper ends, and the mutex goes with its last handle. A
//! second helper opens the same name, learns from `ERROR_ALREADY_EXISTS` that it is
//! not the first, and leaves. The mutex is never waited on: only its existence counts.

use std::io;
use std::os::windows::io::{FromRawHandle, IntoRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GetLastError};
use windows_sys::Win32::System::Threading::CreateMutexW;

use super::Guard;

/// The mutex the running helper holds, in its session's namespace.
pub const MUTEX_NAME: &str = r"Local\daymeter-session";

/// Creates or opens the mutex `name` ([`MUTEX_NAME`]; tests pass their own). When this
/// call created it, its handle is held until the process exits.
pub fn take(name: &str) -> io::Result<Guard> {
    let wide: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
    // SAFETY: default security, not initially owned, a NUL-terminated name.
    let handle = unsafe { CreateMutexW(std::ptr::null(), 0, wide.as_ptr()) };
    // Read before anything else can overwrite it.
    // SAFETY: no arguments.
    let last = unsafe { GetLastError() };
    if handle.is_null() {
        return Err(io::Error::from_raw_os_error(last as i32));
    }
    // SAFETY: a handle the system just gave us; nobody else owns it.
    let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
    if last == ERROR_ALREADY_EXISTS {
        // Dropping our handle leaves the first helper's claim as it was.
        return Ok(Guard::AlreadyRunning);
    }
    // Held for the life of the process, on purpose (see the module notes).
    let _ = handle.into_raw_handle();
    Ok(Guard::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_take_owns_the_session_and_a_second_one_is_told_it_already_runs() {
        let name = format!(r"Local\daymeter-session-test-{}", std::process::id());
        assert_eq!(take(&name).expect("first"), Guard::Owned);
        assert_eq!(take(&name).expect("second"), Guard::AlreadyRunning);
    }
}
