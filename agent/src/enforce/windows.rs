//! Windows: a process instance opened by pid and checked against its creation time,
//! asked to close by `WM_CLOSE` to its windows (from the owner's session helper, see
//! [`post_close`]) or ended by `TerminateProcess` (from the service, [`Win32`]).
//!
//! An open process handle keeps its pid from being given to another process, so each
//! function opens the process first, compares the creation time with the key's, and
//! acts through the same handle (or, for windows, while holding it): a pid reused
//! between the check and the act cannot be hit.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, FILETIME, HWND, LPARAM, STILL_ACTIVE,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, TerminateProcess,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    EnumWindows, GetWindowThreadProcessId, IsWindowVisible, PostMessageW, WM_CLOSE,
};
use windows_sys::core::BOOL;

use super::{Closer, Owner};
use crate::watch::ProcessKey;

/// Seconds from the Windows epoch (1601) to the Unix epoch (1970).
const EPOCH_GAP_SECONDS: u64 = 11_644_473_600;
/// FILETIME ticks (100 ns) per second.
const TICKS_PER_SECOND: u64 = 10_000_000;

/// The Windows [`Closer`]: asks through the owner's session helpers, kills itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct Win32;

impl Closer for Win32 {
    /// The service checks that the instance still runs (a `NotFound` otherwise, as on
    /// Linux), then hands the ask to every connected helper of the owner; each checks
    /// the instance again in its session before it posts anything.
    fn ask_to_close(&self, key: ProcessKey, owner: Owner<'_>) -> io::Result<()> {
        Process::open(key, PROCESS_QUERY_LIMITED_INFORMATION)?;
        let Some(uid) = owner.uid else {
            return Err(io::Error::other(
                "the product's owner is unknown, so no session helper can be asked to close its windows",
            ));
        };
        match owner.helpers.ask_to_close(uid, key) {
            0 => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "no session helper of the product's owner (account {uid}) is connected; \
                     only a helper in the owner's desktop session can close its windows"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn kill(&self, key: ProcessKey) -> io::Result<()> {
        let process = Process::open(key, PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION)?;
        // The exit code the product shows; 1 as `taskkill /f` leaves.
        // SAFETY: a handle opened with PROCESS_TERMINATE.
        if unsafe { TerminateProcess(process.raw(), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Posts `WM_CLOSE` to every visible top-level window of the process instance `key`;
/// returns how many windows were asked. Run in the owner's desktop session (the
/// session helper): from another session no window of the process can be seen.
///
/// `NotFound` when the instance no longer runs (or its pid now names another
/// process); an error too when it has no visible window, since then nothing was asked.
pub fn post_close(key: ProcessKey) -> io::Result<usize> {
    // Held until the windows are posted: the pid cannot be reused meanwhile.
    let _process = Process::open(key, PROCESS_QUERY_LIMITED_INFORMATION)?;
    let windows = windows_of(key.pid);
    if windows.is_empty() {
        return Err(io::Error::other(
            "the process has no visible window in this session to ask",
        ));
    }
    let mut posted = 0;
    for hwnd in windows {
        // SAFETY: posting a message with no pointers in it; a window closed meanwhile
        // only makes the call fail.
        if unsafe { PostMessageW(hwnd, WM_CLOSE, 0, 0) } != 0 {
            posted += 1;
        }
    }
    if posted == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(posted)
}

/// The creation time of the running process `pid`, in [`ProcessKey::started`]'s unit
/// on Windows: whole seconds since the Unix epoch, as `watch::sysinfo` reads it.
pub fn creation_time(pid: u32) -> io::Result<u64> {
    let process = Process::open_pid(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
    process.running()?;
    process.created()
}

/// An open process handle.
struct Process(OwnedHandle);

impl Process {
    /// Opens `key.pid` with `access` and checks that it is the running instance `key`.
    fn open(key: ProcessKey, access: u32) -> io::Result<Process> {
        let process = Process::open_pid(key.pid, access)?;
        process.running()?;
        if process.created()? != key.started {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the pid now belongs to another process",
            ));
        }
        Ok(process)
    }

    fn open_pid(pid: u32, access: u32) -> io::Result<Process> {
        // SAFETY: plain call on integers; a null handle is an error.
        let handle = unsafe { OpenProcess(access, 0, pid) };
        if handle.is_null() {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error().map(|c| c as u32) {
                // What OpenProcess says of a pid no process has.
                Some(ERROR_INVALID_PARAMETER) => {
                    io::Error::new(io::ErrorKind::NotFound, "the process no longer runs")
                }
                Some(ERROR_ACCESS_DENIED) => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("cannot open process {pid}: access denied"),
                ),
                _ => e,
            });
        }
        // SAFETY: a handle the system just gave us; nobody else owns it.
        Ok(Process(unsafe { OwnedHandle::from_raw_handle(handle) }))
    }

    fn raw(&self) -> windows_sys::Win32::Foundation::HANDLE {
        self.0.as_raw_handle()
    }

    /// `NotFound` when the process has ended (a handle held elsewhere keeps its pid
    /// and times readable after the end).
    fn running(&self) -> io::Result<()> {
        let mut code = 0u32;
        // SAFETY: a valid handle and a place for the code.
        if unsafe { GetExitCodeProcess(self.raw(), &mut code) } == 0 {
            return Err(io::Error::last_os_error());
        }
        if code != STILL_ACTIVE as u32 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the process no longer runs",
            ));
        }
        Ok(())
    }

    fn created(&self) -> io::Result<u64> {
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: a valid handle and four places for the times.
        let ok = unsafe {
            GetProcessTimes(
                self.raw(),
                &mut created,
                &mut exited,
                &mut kernel,
                &mut user,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unix_seconds(created))
    }
}

/// A FILETIME as whole seconds since the Unix epoch, the way sysinfo computes a start
/// time (so that keys from the process list and from here compare equal).
fn unix_seconds(t: FILETIME) -> u64 {
    let ticks = (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    (ticks / TICKS_PER_SECOND).saturating_sub(EPOCH_GAP_SECONDS)
}

/// The visible top-level windows of `pid` on this desktop.
fn windows_of(pid: u32) -> Vec<HWND> {
    struct Search {
        pid: u32,
        found: Vec<HWND>,
    }

    unsafe extern "system" fn visit(hwnd: HWND, param: LPARAM) -> BOOL {
        // SAFETY: `param` is the `Search` below, alive for the whole enumeration.
        let search = unsafe { &mut *(param as *mut Search) };
        let mut owner = 0u32;
        // SAFETY: a window handle the system enumerates and a place for the pid.
        unsafe { GetWindowThreadProcessId(hwnd, &mut owner) };
        // SAFETY: as above.
        if owner == search.pid && unsafe { IsWindowVisible(hwnd) } != 0 {
            search.found.push(hwnd);
        }
        1
    }

    let mut search = Search {
        pid,
        found: Vec::new(),
    };
    // SAFETY: the callback only touches `search`, which outlives the call. A failed
    // enumeration leaves what was found so far.
    unsafe { EnumWindows(Some(visit), &mut search as *mut Search as LPARAM) };
    search.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filetime_is_read_as_unix_seconds_like_the_process_list() {
        // 2026-12-05T00:00:00Z = 1_796_428_800 s after 1970.
        let ticks = (1_796_428_800 + EPOCH_GAP_SECONDS) * TICKS_PER_SECOND + 9_999_999;
        let t = FILETIME {
            dwLowDateTime: ticks as u32,
            dwHighDateTime: (ticks >> 32) as u32,
        };
        assert_eq!(unix_seconds(t), 1_796_428_800);
    }
}
