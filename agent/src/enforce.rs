//! Closing a product whose offline grace ran out ([`crate::grace`] decides when).
//!
//! Asking is the normal way: on Linux SIGTERM, on Windows `WM_CLOSE` to the product's
//! windows, both behind the same [`Closer`]. A product that has unsaved work asks its
//! user to save, and keeps running until they answer: nothing is lost. Killing (SIGKILL,
//! `TerminateProcess`) is only for `enforce = kill`.
//!
//! On Windows the service runs in session 0, which cannot reach the windows on a user's
//! desktop: the ask goes to the session helpers of the process's owner
//! ([`SessionHelpers`]), which post `WM_CLOSE` from inside the user's session
//! ([`windows`]). Linux signals from the service itself and ignores the helpers.
//!
//! A pid alone is not a process: the product may have ended and its pid been given to
//! another process since the poll that saw it. Every signal therefore goes to the
//! process *instance* of the [`ProcessKey`] only. On Linux the process is first pinned
//! with `pidfd_open`, its start time is then compared with the key's, and the signal is
//! sent through the pidfd, so a pid reused between the check and the signal cannot be
//! hit; kernels older than 5.3 (no pidfd) fall back to check-then-`kill`, which leaves
//! the few microseconds between the two.

use std::io;

use crate::watch::ProcessKey;

#[cfg(windows)]
pub mod windows;

/// Asks product processes to close, or ends them.
pub trait Closer: Send + Sync {
    /// Asks the process to close, as a user closing its window would. An error of kind
    /// `NotFound` means this process instance no longer runs (nothing was signalled).
    fn ask_to_close(&self, key: ProcessKey, owner: Owner<'_>) -> io::Result<()>;
    /// Ends the process at once; unsaved work is lost.
    fn kill(&self, key: ProcessKey) -> io::Result<()>;
}

/// Whose process it is, and the way to that account's session helpers.
pub struct Owner<'a> {
    /// The account running the process, where the process source tells.
    pub uid: Option<u32>,
    pub helpers: &'a mut dyn SessionHelpers,
}

impl Owner<'static> {
    /// Nobody known and no helpers: for a [`Closer`] that does not need them.
    pub fn unknown() -> Owner<'static> {
        Owner {
            uid: None,
            // A zero-sized value: leaking it allocates nothing.
            helpers: Box::leak(Box::new(NoHelpers)),
        }
    }
}

/// The session helpers connected to the service (`crate::run`'s links).
pub trait SessionHelpers {
    /// Asks every helper of `uid` to close the windows of `key`; returns how many were
    /// asked (0: none of that account is connected).
    fn ask_to_close(&mut self, uid: u32, key: ProcessKey) -> usize;
}

/// No helpers at all: for a [`Closer`] that does not use them, or tests.
pub struct NoHelpers;

impl SessionHelpers for NoHelpers {
    fn ask_to_close(&mut self, _uid: u32, _key: ProcessKey) -> usize {
        0
    }
}

/// This platform's [`Closer`].
#[cfg(target_os = "linux")]
pub fn system() -> Box<dyn Closer> {
    Box::new(Signals)
}

/// This platform's [`Closer`].
#[cfg(windows)]
pub fn system() -> Box<dyn Closer> {
    Box::new(windows::Win32)
}

/// Elsewhere (macOS): nothing can be asked, which the service logs; the grace still
/// warns.
#[cfg(not(any(target_os = "linux", windows)))]
pub fn system() -> Box<dyn Closer> {
    Box::new(Unsupported)
}

#[cfg(not(any(target_os = "linux", windows)))]
struct Unsupported;

#[cfg(not(any(target_os = "linux", windows)))]
impl Closer for Unsupported {
    fn ask_to_close(&self, _key: ProcessKey, _owner: Owner<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "asking a product to close is not available on this platform yet",
        ))
    }

    fn kill(&self, key: ProcessKey) -> io::Result<()> {
        self.ask_to_close(key, Owner::unknown())
    }
}

/// The Linux [`Closer`]: SIGTERM to ask, SIGKILL to kill, each to the exact process
/// instance (see the module notes).
#[cfg(target_os = "linux")]
#[derive(Debug, Default, Clone, Copy)]
pub struct Signals;

#[cfg(target_os = "linux")]
impl Closer for Signals {
    /// The service signals the process itself: the helpers are not needed.
    fn ask_to_close(&self, key: ProcessKey, _owner: Owner<'_>) -> io::Result<()> {
        linux::signal(key, libc::SIGTERM)
    }

    fn kill(&self, key: ProcessKey) -> io::Result<()> {
        linux::signal(key, libc::SIGKILL)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    use crate::watch::ProcessKey;

    /// Sends `sig` to the process instance `key`, or `NotFound` if it no longer runs.
    pub(super) fn signal(key: ProcessKey, sig: libc::c_int) -> io::Result<()> {
        let pid = libc::pid_t::try_from(key.pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        match pidfd_open(pid) {
            Ok(pidfd) => {
                // The pidfd now refers to one instance whatever happens to the pid; if
                // that instance is the key's, the signal reaches it and nothing else.
                same_instance(key)?;
                pidfd_send_signal(&pidfd, sig)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                same_instance(key)?;
                // SAFETY: plain system call on integers.
                if unsafe { libc::kill(pid, sig) } == 0 {
                    Ok(())
                } else {
                    Err(not_found_if_gone(io::Error::last_os_error()))
                }
            }
            Err(e) => Err(not_found_if_gone(e)),
        }
    }

    fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_open(pid, flags) takes two integers and returns a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd)
            .map_err(|_| io::Error::other("pidfd_open returned an impossible descriptor"))?;
        // SAFETY: the kernel just handed us this descriptor; nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn pidfd_send_signal(pidfd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo (NULL), no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(not_found_if_gone(io::Error::last_os_error()))
        }
    }

    /// `Ok` if the process now at `key.pid` started when the key says.
    fn same_instance(key: ProcessKey) -> io::Result<()> {
        let stat = std::fs::read(format!("/proc/{}/stat", key.pid)).map_err(not_found_if_gone)?;
        match start_time(&stat) {
            Some(started) if started == key.started => Ok(()),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the pid now belongs to another process",
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unreadable /proc/PID/stat",
            )),
        }
    }

    /// A process that ended is `NotFound`, whichever call noticed.
    fn not_found_if_gone(e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(libc::ESRCH) {
            io::Error::new(io::ErrorKind::NotFound, "the process no longer runs")
        } else {
            e
        }
    }

    /// Field 22 of `/proc/PID/stat` (clock ticks since boot), read after the last `)` so
    /// that a command name holding spaces or parentheses cannot shift the fields.
    pub(super) fn start_time(stat: &[u8]) -> Option<u64> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
        // After ')' come fields 3 (state) onwards: the start time is the 20th of them.
        rest.split_ascii_whitespace().nth(19)?.parse().ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
            let stat = b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
            assert_eq!(start_time(stat), Some(987654));
        }

        #[test]
        fn a_truncated_stat_has_no_start_time() {
            assert_eq!(start_time(b"4242 (acad) S 1 4242"), None);
        }
    }
}
