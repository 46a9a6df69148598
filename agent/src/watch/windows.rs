//! Windows: processes listed with a Toolhelp snapshot (`CreateToolhelp32Snapshot`), each
//! new process opened once for what the snapshot lacks: its start time, its command
//! line (`NtQueryInformationProcess(ProcessCommandLineInformation)`, else the process's
//! own parameters block: AutoCAD's toolsets are `acad.exe /product C3D`) and, for products only, its owner (the token user's SID,
//! an id from [`crate::accounts`]).
//!
//! Chosen over sysinfo (`benches/windows_poll.rs`; `docs/performance.md`, "Windows:
//! process polling"): with 300 processes under Wine a steady poll costs the same (≈ 41
//! ms of the agent's CPU and 9 ms of the wineserver's for either) and Toolhelp's first
//! poll less (70 against 80 ms); a steady poll is one snapshot and a walk over it and
//! opens nothing, where sysinfo keeps a handle on every process; and under Wine 8
//! sysinfo reads no command lines (it asks only `ProcessCommandLineInformation`, which
//! Wine does not answer).
//!
//! A process instance is its pid and start time ([`ProcessKey`]). A known pid is taken
//! for the same instance while the snapshot shows it with the same executable name and
//! parent; products keep a handle open, so their pid cannot be reused while they are
//! watched. A pid another process ended and a new one reused between two polls under
//! the same executable name and parent would keep the first one's classification: for
//! a non-product that is harmless, and the product it could hide would need the same
//! name as the process it replaced.

use std::collections::HashMap;
use std::io;

use windows_sys::Win32::Foundation::{FILETIME, HANDLE, INVALID_HANDLE_VALUE, STILL_ACTIVE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Threading::{GetExitCodeProcess, GetProcessTimes};

use super::{ProcessKey, ProcessSource, Running, Seen};
use crate::accounts::sid::{self, Owned};

/// The Windows [`ProcessSource`].
#[derive(Default)]
pub struct Toolhelp {
    known: HashMap<u32, Known>,
    generation: u64,
}

struct Known {
    generation: u64,
    exe: String,
    parent: u32,
    started: u64,
    product: Option<String>,
    owner: Option<u32>,
    /// Held for products: their pid is not reused while it is open.
    _handle: Option<Owned>,
}

impl Toolhelp {
    pub fn new() -> Toolhelp {
        Toolhelp::default()
    }
}

/// One process of a snapshot.
pub struct Entry {
    pub pid: u32,
    pub parent: u32,
    /// The executable's file name.
    pub exe: String,
}

/// Every process now, from one Toolhelp snapshot.
pub fn snapshot() -> io::Result<Vec<Entry>> {
    // SAFETY: plain call; INVALID_HANDLE_VALUE is the failure.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    let snap = Owned(snap);
    let mut entry = PROCESSENTRY32W {
        dwSize: std::mem::size_of::<PROCESSENTRY32W>() as u32,
        ..Default::default()
    };
    let mut entries = Vec::with_capacity(512);
    // SAFETY: `entry` is a PROCESSENTRY32W with its size set, as both calls require.
    let mut more = unsafe { Process32FirstW(snap.0, &mut entry) } != 0;
    while more {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        entries.push(Entry {
            pid: entry.th32ProcessID,
            parent: entry.th32ParentProcessID,
            exe: String::from_utf16_lossy(&entry.szExeFile[..len]),
        });
        // SAFETY: as above.
        more = unsafe { Process32NextW(snap.0, &mut entry) } != 0;
    }
    Ok(entries)
}

/// Seconds since the Unix epoch of a process's creation (sysinfo's unit, so sessions
/// journaled by either source are adopted by the other), and whether it still runs.
fn times(process: HANDLE) -> Option<(u64, bool)> {
    let mut created = FILETIME::default();
    let mut exited = FILETIME::default();
    let mut kernel = FILETIME::default();
    let mut user = FILETIME::default();
    // SAFETY: out-parameters only; the handle is open with query rights.
    if unsafe { GetProcessTimes(process, &mut created, &mut exited, &mut kernel, &mut user) } == 0 {
        return None;
    }
    let ticks = (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime);
    /// 1601-01-01 to 1970-01-01, in seconds.
    const EPOCH_GAP: u64 = 11_644_473_600;
    let started = (ticks / 10_000_000).saturating_sub(EPOCH_GAP);
    let mut code = 0u32;
    // SAFETY: out-parameter only.
    let running =
        unsafe { GetExitCodeProcess(process, &mut code) } != 0 && code == STILL_ACTIVE as u32;
    Some((started, running))
}

#[link(name = "ntdll")]
unsafe extern "system" {
    fn NtQueryInformationProcess(
        process: HANDLE,
        class: u32,
        information: *mut std::ffi::c_void,
        length: u32,
        returned: *mut u32,
    ) -> i32;
}

/// `ProcessCommandLineInformation` (Windows 8.1 and later; PROCESS_QUERY_LIMITED_INFORMATION
/// suffices).
const PROCESS_COMMAND_LINE_INFORMATION: u32 = 60;
/// `ProcessBasicInformation`: where the process's PEB is.
const PROCESS_BASIC_INFORMATION: u32 = 0;

/// UNICODE_STRING.
#[repr(C)]
#[derive(Clone, Copy)]
struct Text {
    length: u16,
    _maximum: u16,
    buffer: *const u16,
}

/// The process's whole command line, as it was started: asked of the system
/// (`ProcessCommandLineInformation`), else read from the process's own parameters block
/// (Wine 8 does not answer the former; 64-bit processes only, as CAD products are).
pub fn command_line(pid: u32, process: &Owned) -> Option<String> {
    asked(process).or_else(|| from_peb(pid))
}

fn asked(process: &Owned) -> Option<String> {
    let mut buffer = vec![0u64; 128];
    loop {
        let mut returned = 0u32;
        let size = (buffer.len() * 8) as u32;
        // SAFETY: the buffer holds `size` bytes, 8-byte aligned for the UNICODE_STRING
        // the call writes at its start.
        let status = unsafe {
            NtQueryInformationProcess(
                process.0,
                PROCESS_COMMAND_LINE_INFORMATION,
                buffer.as_mut_ptr().cast(),
                size,
                &mut returned,
            )
        };
        if status >= 0 {
            break;
        }
        // Too small (STATUS_INFO_LENGTH_MISMATCH and kin): grow once to the size asked.
        if returned as usize > buffer.len() * 8 && buffer.len() < 1 << 16 {
            buffer.resize((returned as usize).div_ceil(8), 0);
            continue;
        }
        return None;
    }
    // SAFETY: on success the buffer starts with a UNICODE_STRING whose text lies in the
    // same buffer, `length` bytes long.
    unsafe {
        let text = &*(buffer.as_ptr() as *const Text);
        if text.buffer.is_null() {
            return None;
        }
        let chars = std::slice::from_raw_parts(text.buffer, usize::from(text.length) / 2);
        Some(String::from_utf16_lossy(chars))
    }
}

#[link(name = "kernel32")]
unsafe extern "system" {
    fn ReadProcessMemory(
        process: HANDLE,
        address: *const std::ffi::c_void,
        buffer: *mut std::ffi::c_void,
        size: usize,
        read: *mut usize,
    ) -> i32;
}

/// Reads a `T` at `address` of another process.
///
/// # Safety
/// `T` must be plain data (any bit pattern valid).
unsafe fn read<T: Copy>(process: HANDLE, address: usize) -> Option<T> {
    let mut value = std::mem::MaybeUninit::<T>::uninit();
    let mut read = 0usize;
    // SAFETY: `value` has room for a T; ReadProcessMemory checks the remote range.
    let ok = unsafe {
        ReadProcessMemory(
            process,
            address as *const std::ffi::c_void,
            value.as_mut_ptr().cast(),
            std::mem::size_of::<T>(),
            &mut read,
        )
    };
    // SAFETY: all of it was written, and the caller promises any bytes are a T.
    (ok != 0 && read == std::mem::size_of::<T>()).then(|| unsafe { value.assume_init() })
}

/// The command line from the PEB: `PEB.ProcessParameters` (offset 0x20 on x64) →
/// `RTL_USER_PROCESS_PARAMETERS.CommandLine` (offset 0x70).
fn from_peb(pid: u32) -> Option<String> {
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_QUERY_INFORMATION, PROCESS_VM_READ,
    };
    #[repr(C)]
    struct Basic {
        exit_status: i32,
        peb: usize,
        affinity: usize,
        base_priority: i32,
        pid: usize,
        parent: usize,
    }
    // SAFETY: plain call; null is the failure.
    let handle = unsafe { OpenProcess(PROCESS_QUERY_INFORMATION | PROCESS_VM_READ, 0, pid) };
    if handle.is_null() {
        return None;
    }
    let process = Owned(handle);
    let mut basic = std::mem::MaybeUninit::<Basic>::zeroed();
    let mut returned = 0u32;
    // SAFETY: the buffer is a PROCESS_BASIC_INFORMATION.
    let status = unsafe {
        NtQueryInformationProcess(
            process.0,
            PROCESS_BASIC_INFORMATION,
            basic.as_mut_ptr().cast(),
            std::mem::size_of::<Basic>() as u32,
            &mut returned,
        )
    };
    if status < 0 {
        return None;
    }
    // SAFETY: written by the call (and zeroed before).
    let peb = unsafe { basic.assume_init() }.peb;
    // SAFETY: pointers and a UNICODE_STRING are plain data.
    let params: usize = unsafe { read(process.0, peb.checked_add(0x20)?)? };
    let text: Text = unsafe { read(process.0, params.checked_add(0x70)?)? };
    let len = usize::from(text.length) / 2;
    let mut chars = vec![0u16; len];
    let mut got = 0usize;
    // SAFETY: `chars` has room for `len` UTF-16 units.
    let ok = unsafe {
        ReadProcessMemory(
            process.0,
            text.buffer.cast(),
            chars.as_mut_ptr().cast(),
            len * 2,
            &mut got,
        )
    };
    (ok != 0 && got == len * 2).then(|| String::from_utf16_lossy(&chars))
}

impl ProcessSource for Toolhelp {
    fn poll(&mut self, classify: &dyn Fn(Seen<'_>) -> Option<String>) -> io::Result<Vec<Running>> {
        let entries = snapshot()?;
        self.generation += 1;
        let generation = self.generation;
        let mut running = Vec::new();
        for entry in entries {
            let same = self
                .known
                .get(&entry.pid)
                .is_some_and(|k| k.exe == entry.exe && k.parent == entry.parent);
            if !same {
                self.known
                    .insert(entry.pid, recognise(&entry, classify, generation));
            }
            let Some(known) = self.known.get_mut(&entry.pid) else {
                continue;
            };
            known.generation = generation;
            if let Some(product) = &known.product {
                running.push(Running {
                    key: ProcessKey {
                        pid: entry.pid,
                        started: known.started,
                    },
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
        let Ok(process) = sid::open_process(key.pid) else {
            return false;
        };
        times(process.0).is_some_and(|(started, running)| running && started == key.started)
    }
}

/// A process seen for the first time: opened once for its start time and command line,
/// classified, and for a product its owner read and its handle kept.
fn recognise(
    entry: &Entry,
    classify: &dyn Fn(Seen<'_>) -> Option<String>,
    generation: u64,
) -> Known {
    // The System Idle Process, System and protected processes do not open: they are
    // classified by name alone.
    let process = sid::open_process(entry.pid).ok();
    let started = process
        .as_ref()
        .and_then(|p| times(p.0))
        .map_or(0, |(started, _)| started);
    let args = process
        .as_ref()
        .and_then(|p| command_line(entry.pid, p))
        .map(|line| super::cmdline::args_of(&line))
        .unwrap_or_default();
    let product = classify(Seen {
        exe: &entry.exe,
        args: &args,
    });
    let (owner, handle) = match (&product, process) {
        (Some(_), Some(process)) => {
            let owner = match sid::of_open(&process) {
                Ok(owner) => {
                    Some(crate::accounts::installed_or_memory().id_of(&owner.sid, || owner.name()))
                }
                Err(e) => {
                    tracing::warn!(pid = entry.pid, error = %e, "cannot read a product process's owner");
                    None
                }
            };
            (owner, Some(process))
        }
        _ => (None, None),
    };
    Known {
        generation,
        exe: entry.exe.clone(),
        parent: entry.parent,
        started,
        product,
        owner,
        _handle: handle,
    }
}
