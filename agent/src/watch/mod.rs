//! Which product processes run now.
//!
//! A [`ProcessSource`] lists the machine's processes and classifies each one the first
//! time it sees it (executable file name and arguments against the catalog, through the
//! caller's `classify`), remembering the answer by pid and process start time, so that
//! once the machine is steady a poll costs one process listing plus a liveness check of
//! the few processes that run products. On Linux that is `/proc` read directly
//! ([`procfs`]; a full sysinfo refresh there costs several times a plain `/proc` walk),
//! told by the kernel's process events which pids changed where it may subscribe to
//! them ([`connector`]), so that a steady poll lists nothing; on Windows a Toolhelp
//! snapshot (`windows`; cheaper than sysinfo there), on macOS sysinfo (`sysinfo`).

#[cfg(any(windows, test))]
pub mod cmdline;
#[cfg(target_os = "linux")]
pub mod connector;
#[cfg(target_os = "linux")]
pub mod procfs;
#[cfg(not(target_os = "linux"))]
pub mod sysinfo;
#[cfg(windows)]
pub mod windows;

use serde::{Deserialize, Serialize};

/// Identifies one process instance across polls and agent restarts: a pid alone is
/// reused by the system, a pid with the process's start time is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    /// Start time in the platform's own unit (clock ticks since boot on Linux, seconds
    /// since the epoch elsewhere); only compared for equality.
    pub started: u64,
}

/// A running process that the catalog recognised as a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub key: ProcessKey,
    /// Catalog product id (`acad`, `civil3d`, …).
    pub product: String,
    /// The account running it (on Linux the owner of `/proc/PID`: the process's
    /// effective uid; on Windows the id of its token user's SID, see
    /// [`crate::accounts`]), read once when the process is recognised; `None` where the
    /// source does not tell (sysinfo on macOS, for now). The status socket shows a local user
    /// the sessions of their own processes.
    pub owner: Option<u32>,
    /// The executable's file name (`acad.exe`), for `status`.
    pub exe: String,
}

/// What a classifier is shown of a new process.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Executable file name (not the path), as the system reports it.
    pub exe: &'a str,
    /// The arguments after argv\[0\], joined by single spaces.
    pub args: &'a str,
}

/// This platform's process source: on Linux process events with `/proc` as backstop
/// where the kernel lets this process subscribe, `/proc` listed every poll where it does
/// not (said once in the log); sysinfo elsewhere. Building it cannot fail; a source that
/// cannot list processes says so at each poll.
pub fn system() -> Box<dyn ProcessSource> {
    #[cfg(target_os = "linux")]
    {
        match connector::Connector::new() {
            Ok(source) => {
                tracing::debug!(
                    "watching processes through the kernel's process events, listing /proc every {} polls as a backstop",
                    connector::LIST_EVERY
                );
                Box::new(source)
            }
            Err(e) => {
                tracing::info!("{e}; watching processes by listing /proc every poll");
                Box::new(procfs::Procfs::new())
            }
        }
    }
    #[cfg(windows)]
    {
        Box::new(self::windows::Toolhelp::new())
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        Box::new(self::sysinfo::Sysinfo::new())
    }
}

/// Lists the processes that run products.
pub trait ProcessSource: Send {
    /// Returns every running process that `classify` maps to a product. `classify` is
    /// called once per process instance, the first time it is seen; the answer is kept
    /// until the process ends or [`ProcessSource::forget`] is called.
    fn poll(
        &mut self,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
    ) -> std::io::Result<Vec<Running>>;

    /// Drops every remembered classification (the catalog changed).
    fn forget(&mut self);

    /// Whether this exact process instance still runs (used to adopt sessions that were
    /// open when the agent stopped).
    fn alive(&self, key: ProcessKey) -> bool;
}
