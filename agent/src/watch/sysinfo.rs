//! macOS (and Windows, where the agent lists processes with Toolhelp instead:
//! `watch::windows`; this one stays for comparison, `benches/windows_poll.rs`):
//! processes listed through sysinfo.
//!
//! sysinfo keeps its own table of processes between refreshes; each poll refreshes the
//! list and asks for nothing else (no CPU, memory or disk figures, no threads), and for
//! the executable path and command line only of processes it has not read them for
//! (`UpdateKind::OnlyIfNotSet`), so a steady machine costs one process snapshot per poll.
//! A process is classified the first time its (pid, start time) is seen; the answer is
//! kept until that instance is gone from the list.
//!
//! Pid reuse: on Windows a pid is not reused while a handle to the process is open, and
//! sysinfo holds one for every process it lists until the process has ended; on macOS
//! sysinfo compares start times itself. Either way a reused pid arrives with a new start
//! time, hence a new [`ProcessKey`].

use std::collections::HashMap;
use std::io;

use ::sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

use super::{ProcessKey, ProcessSource, Running, Seen};

/// The Windows and macOS [`ProcessSource`].
pub struct Sysinfo {
    /// Created at the first poll (creating it can fail; building the source cannot).
    system: Option<System>,
    /// Classification of each process instance, with the poll that last listed it.
    known: HashMap<ProcessKey, Known>,
    generation: u64,
}

struct Known {
    generation: u64,
    product: Option<String>,
    owner: Option<u32>,
    /// The executable's file name, kept for products only.
    exe: String,
}

impl Default for Sysinfo {
    fn default() -> Self {
        Self::new()
    }
}

impl Sysinfo {
    pub fn new() -> Sysinfo {
        Sysinfo {
            system: None,
            known: HashMap::new(),
            generation: 0,
        }
    }
}

/// Only what classification needs, each read once per process.
fn refresh_kind() -> ProcessRefreshKind {
    let kind = ProcessRefreshKind::nothing()
        .without_tasks()
        .with_exe(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet);
    // The owner's SID, mapped to an account id (`crate::accounts`).
    #[cfg(windows)]
    let kind = kind.with_user(UpdateKind::OnlyIfNotSet);
    kind
}

/// The account id of a product process's owner: its SID through the account table.
#[cfg(windows)]
fn owner_of(process: &::sysinfo::Process) -> Option<u32> {
    let sid = process.user_id()?.to_string();
    Some(
        crate::accounts::installed_or_memory()
            .id_of(&sid, || crate::accounts::sid::name_of_string(&sid)),
    )
}

#[cfg(not(windows))]
fn owner_of(_: &::sysinfo::Process) -> Option<u32> {
    None
}

fn exited(status: ProcessStatus) -> bool {
    matches!(status, ProcessStatus::Zombie | ProcessStatus::Dead)
}

fn system() -> io::Result<System> {
    System::new().map_err(|e| io::Error::other(format!("cannot list processes: {e}")))
}

impl ProcessSource for Sysinfo {
    fn poll(&mut self, classify: &dyn Fn(Seen<'_>) -> Option<String>) -> io::Result<Vec<Running>> {
        let system = match &mut self.system {
            Some(system) => system,
            None => self.system.insert(system()?),
        };
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        self.generation += 1;
        let generation = self.generation;
        let mut running = Vec::new();
        for (pid, process) in system.processes() {
            if exited(process.status()) {
                continue;
            }
            let key = ProcessKey {
                pid: pid.as_u32(),
                started: process.start_time(),
            };
            let known = self.known.entry(key).or_insert_with(|| {
                // The executable's file name; the process name (also the file name on
                // both systems) when the path cannot be read.
                let exe = process
                    .exe()
                    .and_then(|path| path.file_name())
                    .unwrap_or_else(|| process.name())
                    .to_string_lossy();
                let args = process
                    .cmd()
                    .iter()
                    .skip(1)
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ");
                let product = classify(Seen {
                    exe: &exe,
                    args: &args,
                });
                Known {
                    generation,
                    owner: product.as_ref().and_then(|_| owner_of(process)),
                    exe: if product.is_some() {
                        exe.into_owned()
                    } else {
                        String::new()
                    },
                    product,
                }
            });
            known.generation = generation;
            if let Some(product) = &known.product {
                running.push(Running {
                    key,
                    product: product.clone(),
                    owner: known.owner,
                    exe: known.exe.clone(),
                });
            }
        }
        self.known.retain(|_, k| k.generation == generation);
        running.sort_by_key(|r| r.key);
        Ok(running)
    }

    fn forget(&mut self) {
        self.known.clear();
    }

    fn alive(&self, key: ProcessKey) -> bool {
        let Ok(mut system) = system() else {
            return false;
        };
        let pid = Pid::from_u32(key.pid);
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().without_tasks(),
        );
        system
            .process(pid)
            .is_some_and(|p| p.start_time() == key.started && !exited(p.status()))
    }
}
