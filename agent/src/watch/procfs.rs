//! Linux: processes read straight from `/proc`, incrementally.
//!
//! The agent polls every second on machines with a few hundred processes and must stay
//! near 0.05 % of one core, so a steady poll costs one directory listing and nothing per
//! process except for the few that run products:
//!
//! - `/proc` stays open; each poll rewinds it and reads its entries with `getdents64`
//!   into one reused buffer (no allocation per entry, unlike `std::fs::read_dir`), keeping
//!   the numeric names (processes; threads are not listed).
//! - What is known is a vector sorted by pid, merged with the (ascending) listing: pids
//!   gone from the listing are dropped, pids new to it are examined once, no hashing.
//! - Examining a new pid reads `/proc/PID/stat` (start time, kernel-thread flag, `comm`),
//!   then the executable's file name from the `/proc/PID/exe` link (which survives
//!   `comm`'s 15-byte cut; without the privilege to read another user's link, argv\[0\]'s
//!   file name stands in) and the arguments from `/proc/PID/cmdline`, and hands them to
//!   the caller's `classify` once. Kernel threads and zombies are never classified.
//!
//! Re-checks, each one `/proc/PID/stat` read again:
//! - every product process, every poll: a different start time means the pid was reused
//!   (the product ended, a new process is examined); a zombie is no longer running;
//! - every process once, at the poll after it was first examined: a process caught
//!   between `fork` and `exec` still shows its parent's executable, and `exec` keeps
//!   the pid and the start time but changes `comm`, so a changed `comm` means
//!   "examine again". Inside `exec` the kernel shows the new `comm` and executable a
//!   moment before the new arguments, so an empty command line at the first look means
//!   "examine again" too (once: some processes that are exiting have none);
//! - a few other processes per poll, in turn ([`Procfs::recheck_per_poll`]), for the same
//!   two reasons later in a process's life: a launcher that `exec`s the product, and pid
//!   reuse. Until its turn comes (every 200 polls for 400 processes at the default 2 per
//!   poll), a non-product pid that was reused between two polls, or a launcher that has
//!   `exec`ed a product, keeps its old classification. Reuse needs the pid counter to
//!   wrap around between two polls, so that window is tiny in practice.
//!
//! Not seen at all by listing: an `exec` of a program whose name shares the launcher's
//! first 15 bytes (`comm` does not change), e.g. `acad.exe` re-executing itself with
//! other arguments; the first classification stands (process events, below, do report
//! it).
//!
//! Quiet polls skip the listing. Listing `/proc` is most of a poll's cost (the kernel
//! walks its pid table and fills its dentry cache for every process), so each poll first
//! reads the newest pid the kernel handed out (`/proc/loadavg`'s last field, from a
//! descriptor kept open). If it has not moved since the previous listing, no process or
//! thread was created, so no new pid can be there and no old one reused: the poll walks
//! the known entries with the same re-checks instead (a product that ended fails its
//! stat read and is dropped; other ended processes are dropped at their turn or at the
//! next listing). A full listing still happens at least every [`LIST_AT_LEAST_EVERY`]
//! polls. On a busy desktop that creates threads every second this saves little; on a
//! quiet workstation it halves the poll.
//!
//! Told by process events, a poll needs no listing at all: where the kernel's process
//! connector is available, [`super::connector`] hands each poll the pids that forked,
//! `exec`ed or exited since the previous one (`Procfs::poll_changes`); a new pid is
//! examined as if the listing had found it, an `exec` has the pid examined again at once
//! (also when `comm` stays the same), a fork or an exit has its stat re-read, and every
//! other known process is left alone except for the re-checks above. The listing then
//! only runs when the connector asks for it, as a backstop.
//!
//! A pid that cannot be read (it exited mid-read, or the kernel refuses) is skipped for
//! this poll or remembered as "not a product"; it never fails the poll. Only an
//! unreadable `/proc` does.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{ProcessKey, ProcessSource, Running, Seen};

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (field 9): a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Bytes of `comm` kept to notice an `exec` (the kernel keeps 15 for user processes).
const COMM_LEN: usize = 16;

/// Default number of non-product processes re-checked per poll: a stat read costs
/// 10–15 µs on a small VM, so 2 keep the re-checks near a tenth of the footprint goal
/// (a turn through 400 processes then takes 200 polls).
const RECHECK_PER_POLL: usize = 2;

/// Polls without a listing in a row, at most (a backstop; see the module notes).
const LIST_AT_LEAST_EVERY: u32 = 30;

/// Size of the `getdents64` buffer: a /proc entry takes 24–32 bytes, so a few hundred
/// processes come back in one call.
const DENTS_LEN: usize = 32 * 1024;

/// Files read per examined process are read into a buffer of this size; one that grew
/// beyond [`BUF_KEEP`] for a huge command line is given back after use.
const BUF_START: usize = 4096;
const BUF_KEEP: usize = 64 * 1024;

/// What the kernel's process events said about a pid since the last poll (see
/// `Procfs::poll_changes`). Ordered: when a pid has several, the larger one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    /// A process with this pid was created or ended: its stat is read again (a new start
    /// time means a new instance, a failed read or a zombie that it no longer runs).
    Recheck,
    /// The process `exec`ed: it is examined and classified again.
    Exec,
}

/// The Linux [`ProcessSource`]: `/proc`, read incrementally (see the module notes).
pub struct Procfs {
    /// `/proc`, opened at the first poll and rewound at every poll after.
    dir: Option<File>,
    dents: Vec<u8>,
    /// This poll's pids, ascending.
    pids: Vec<u32>,
    /// What is known, ascending by pid.
    known: Vec<Entry>,
    /// The previous poll's vector, kept for its allocation.
    spare: Vec<Entry>,
    /// File contents (zero-filled once; `len` is the capacity in use, not the data).
    buf: Vec<u8>,
    /// Round-robin re-checks resume after this pid.
    cursor: u32,
    recheck_per_poll: usize,
    /// `/proc/loadavg`, kept open: its last field is the newest pid.
    loadavg: Option<File>,
    /// The newest pid when `/proc` was last listed.
    listed_at_pid: Option<u64>,
    /// Polls since the last listing.
    unlisted: u32,
}

/// One process instance as last examined.
#[derive(Debug)]
struct Entry {
    pid: u32,
    started: u64,
    comm: Comm,
    kernel: bool,
    /// Seen as a zombie: its product, if any, no longer runs.
    dead: bool,
    /// Examined at the latest poll; re-checked once at the next.
    fresh: bool,
    /// Its command line was empty at the first look: examined again at the next poll.
    retry: bool,
    product: Option<String>,
    /// Who runs it, read only once it is recognised as a product.
    owner: Option<u32>,
    /// Its executable's file name, kept only for a product (for `status`).
    exe: Option<Box<str>>,
}

/// The first [`COMM_LEN`] bytes of `comm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

/// What a poll needs of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    comm: Comm,
    state: u8,
    flags: u64,
    /// Field 22, clock ticks after boot.
    started: u64,
}

impl Entry {
    /// A process whose stat cannot be read: no start time known, never a product.
    fn opaque(pid: u32) -> Entry {
        Entry {
            pid,
            started: 0,
            comm: Comm {
                bytes: [0; COMM_LEN],
                len: 0,
            },
            kernel: false,
            dead: false,
            fresh: false,
            retry: false,
            product: None,
            owner: None,
            exe: None,
        }
    }
}

impl Stat {
    /// Zombie (`Z`) or dead (`X`, `x`): exited, waiting to be reaped.
    fn exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

impl Default for Procfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Procfs {
    /// A source that opens `/proc` at its first poll (so building it cannot fail).
    pub fn new() -> Procfs {
        Procfs {
            dir: None,
            dents: vec![0; DENTS_LEN],
            pids: Vec::new(),
            known: Vec::new(),
            spare: Vec::new(),
            buf: vec![0; BUF_START],
            cursor: 0,
            recheck_per_poll: RECHECK_PER_POLL,
            loadavg: None,
            listed_at_pid: None,
            unlisted: 0,
        }
    }

    /// The newest pid the kernel handed out, or `None` if it cannot be read (then every
    /// poll lists `/proc`).
    fn newest_pid(&mut self) -> Option<u64> {
        let file = match &mut self.loadavg {
            Some(f) => f,
            None => self.loadavg.insert(File::open("/proc/loadavg").ok()?),
        };
        let mut text = [0u8; 128];
        let n = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read(&mut text));
        let Ok(n) = n else {
            self.loadavg = None;
            return None;
        };
        let last = text[..n]
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .nth(4)?;
        parse_u64(last)
    }

    /// Fills `self.pids`: a fresh listing of `/proc`, or, when no pid was handed out
    /// since the last listing, the known pids (see the module notes).
    fn pids_now(&mut self) -> io::Result<()> {
        let newest = self.newest_pid();
        if newest.is_some() && newest == self.listed_at_pid && self.unlisted < LIST_AT_LEAST_EVERY {
            self.unlisted += 1;
            self.pids.clear();
            self.pids.extend(self.known.iter().map(|e| e.pid));
            return Ok(());
        }
        // Read before listing: a process created during the listing moves it, and the
        // next poll lists again.
        self.list()?;
        self.listed_at_pid = newest;
        self.unlisted = 0;
        Ok(())
    }

    /// How many non-product processes are re-checked per poll (for `exec` and pid
    /// reuse; 2 by default). More shortens the time a launcher's `exec` of a product
    /// goes unseen, at one `/proc/PID/stat` read (10–15 µs) each per poll.
    pub fn recheck_per_poll(mut self, n: usize) -> Procfs {
        self.recheck_per_poll = n;
        self
    }

    /// Fills `self.pids` with the numeric entries of `/proc`, ascending.
    fn list(&mut self) -> io::Result<()> {
        let dir = match &mut self.dir {
            Some(dir) => dir,
            None => self.dir.insert(File::open("/proc")?),
        };
        self.pids.clear();
        let listed = read_pids(dir, &mut self.dents, &mut self.pids);
        if listed.is_err() {
            // Start again from a fresh descriptor next time.
            self.dir = None;
        }
        listed?;
        // /proc lists pids in ascending order; the merge relies on it, so make sure.
        if !self.pids.is_sorted() {
            self.pids.sort_unstable();
            self.pids.dedup();
        }
        Ok(())
    }

    /// Fills `self.pids` with the known pids and the new ones among `changed` (both
    /// ascending), without listing `/proc`.
    fn pids_known_and(&mut self, changed: &[(u32, Change)]) {
        self.pids.clear();
        let mut known = self.known.iter().map(|e| e.pid).peekable();
        let mut changed = changed.iter().map(|&(pid, _)| pid).peekable();
        loop {
            let next = match (known.peek(), changed.peek()) {
                (Some(&k), Some(&c)) if k < c => known.next(),
                (Some(&k), Some(&c)) if c < k => changed.next(),
                (Some(_), Some(_)) => {
                    changed.next();
                    known.next()
                }
                (Some(_), None) => known.next(),
                (None, Some(_)) => changed.next(),
                (None, None) => return,
            };
            self.pids.extend(next);
        }
    }

    /// A poll told by process events what changed since the previous one, instead of
    /// finding out by listing `/proc`: `changed` holds, ascending and each pid once, the
    /// pids the kernel reported as forked, `exec`ed or exited, and every other known pid
    /// is taken to be as it was. `list`: list `/proc` as well (the caller's backstop
    /// against lost events); the shortcut and the round-robin re-checks of [`poll`]
    /// are not used, since events report what they are there to catch.
    ///
    /// [`poll`]: ProcessSource::poll
    pub(crate) fn poll_changes(
        &mut self,
        changed: &[(u32, Change)],
        list: bool,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
    ) -> io::Result<Vec<Running>> {
        if list {
            self.list()?;
        } else {
            self.pids_known_and(changed);
        }
        Ok(self.sweep(changed, 0, classify))
    }

    /// Re-reads a known entry's stat if it is due (`due`: its turn came, or the kernel
    /// reported a change). Returns the entry to keep (possibly re-examined), or `None`
    /// when the process is gone.
    fn revisit(
        &mut self,
        mut entry: Entry,
        due: Option<Change>,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
    ) -> Option<Entry> {
        if entry.product.is_none() && !entry.fresh && due.is_none() {
            return Some(entry);
        }
        let stat = match read_stat(entry.pid, &mut self.buf) {
            Ok(stat) => stat,
            Err(e) if gone(&e) => return None,
            Err(_) => return Some(entry),
        };
        let execed = due == Some(Change::Exec) || (!entry.kernel && stat.comm != entry.comm);
        if stat.started != entry.started || execed {
            return self.examine(entry.pid, stat, classify, true);
        }
        if entry.retry {
            return self.examine(entry.pid, stat, classify, false);
        }
        entry.dead = stat.exited();
        entry.fresh = false;
        Some(entry)
    }

    /// Examines a process instance whose stat was just read and classifies it. `None`
    /// when it vanished meanwhile. `first`: the first look at this instance (or at its
    /// new program after an `exec`), which may be taken in the middle of an `exec`.
    fn examine(
        &mut self,
        pid: u32,
        stat: Stat,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
        first: bool,
    ) -> Option<Entry> {
        let mut entry = Entry {
            pid,
            started: stat.started,
            comm: stat.comm,
            kernel: stat.flags & PF_KTHREAD != 0,
            dead: stat.exited(),
            fresh: false,
            retry: false,
            product: None,
            owner: None,
            exe: None,
        };
        if entry.kernel || entry.dead {
            return Some(entry);
        }
        entry.fresh = true;
        let mut path = [0; PATH_LEN];
        // Not readable without privilege for another user's process: argv[0] stands in.
        let exe = proc_path(&mut path, pid, "exe").and_then(std::fs::read_link);
        let cmdline = proc_path(&mut path, pid, "cmdline")
            .and_then(|p| read_file(p, &mut self.buf, false))
            .map(|n| &self.buf[..n]);
        let cmdline = match cmdline {
            Ok(c) => c,
            Err(e) if gone(&e) => return None,
            // Unreadable: never metered.
            Err(_) => return Some(entry),
        };
        let Some((argv0, args)) = split_cmdline(cmdline) else {
            // Empty: the process is exiting, or it is in the middle of an `exec` (the
            // kernel shows the new program's `comm` and executable a moment before its
            // arguments). Not a product now; the first time, look again next poll.
            entry.retry = first;
            return Some(entry);
        };
        let name = match &exe {
            Ok(path) => exe_file_name(path.as_os_str().as_bytes()),
            Err(_) => file_name(argv0),
        };
        let args = join_args(args);
        let name = String::from_utf8_lossy(name);
        entry.product = classify(Seen {
            exe: &name,
            args: &String::from_utf8_lossy(&args),
        });
        if entry.product.is_some() {
            entry.exe = Some(name.into());
            // One stat of /proc/PID per product process: what the status socket needs
            // to show a local user their own sessions.
            entry.owner = proc_path(&mut path, pid, "")
                .and_then(std::fs::metadata)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        }
        if self.buf.len() > BUF_KEEP {
            self.buf = vec![0; BUF_START];
        }
        Some(entry)
    }
}

impl Procfs {
    /// Merges this poll's pids (`self.pids`) with what is known: drops the pids no longer
    /// there, examines the new ones, re-checks the known ones that are due — products,
    /// fresh entries, the next `budget` in turn, and those `changed` names (ascending) —
    /// and returns the products running.
    fn sweep(
        &mut self,
        changed: &[(u32, Change)],
        budget: usize,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
    ) -> Vec<Running> {
        let pids = std::mem::take(&mut self.pids);
        let mut old = std::mem::take(&mut self.known);
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        next.reserve(pids.len());
        let mut running = Vec::new();
        let mut budget = budget;
        let mut last_in_turn = self.cursor;
        {
            let mut old = old.drain(..).peekable();
            let mut changes = changed.iter().peekable();
            for &pid in &pids {
                // Entries below this pid were not listed: those processes ended.
                while old.next_if(|e| e.pid < pid).is_some() {}
                while changes.next_if(|c| c.0 < pid).is_some() {}
                let change = changes.next_if(|c| c.0 == pid).map(|c| c.1);
                let entry = match old.next_if(|e| e.pid == pid) {
                    Some(entry) => {
                        let in_turn = budget > 0
                            && pid > self.cursor
                            && entry.product.is_none()
                            && !entry.fresh;
                        if in_turn {
                            budget -= 1;
                            last_in_turn = pid;
                        }
                        let due = change.max(in_turn.then_some(Change::Recheck));
                        self.revisit(entry, due, classify)
                    }
                    None => match read_stat(pid, &mut self.buf) {
                        Ok(stat) => self.examine(pid, stat, classify, true),
                        Err(e) if gone(&e) => None,
                        // Unreadable (`hidepid`): remembered as not a product, so that
                        // it costs nothing until its turn to be re-checked.
                        Err(_) => Some(Entry::opaque(pid)),
                    },
                };
                if let Some(entry) = entry {
                    if let Some(product) = &entry.product
                        && !entry.dead
                    {
                        running.push(Running {
                            key: ProcessKey {
                                pid,
                                started: entry.started,
                            },
                            product: product.clone(),
                            owner: entry.owner,
                            exe: entry.exe.as_deref().unwrap_or_default().to_owned(),
                        });
                    }
                    next.push(entry);
                }
            }
        }
        // The turn wraps once it reaches the highest pid.
        self.cursor = if budget > 0 { 0 } else { last_in_turn };
        self.pids = pids;
        self.known = next;
        self.spare = old;
        running
    }
}

impl ProcessSource for Procfs {
    fn poll(&mut self, classify: &dyn Fn(Seen<'_>) -> Option<String>) -> io::Result<Vec<Running>> {
        self.pids_now()?;
        Ok(self.sweep(&[], self.recheck_per_poll, classify))
    }

    fn forget(&mut self) {
        self.known.clear();
        self.cursor = 0;
        // Nothing is known any more: the next poll must list.
        self.listed_at_pid = None;
    }

    fn alive(&self, key: ProcessKey) -> bool {
        let mut buf = vec![0; 1024];
        // Called rarely (adopting sessions at start): a fresh buffer keeps `&self`.
        read_stat(key.pid, &mut buf).is_ok_and(|s| s.started == key.started && !s.exited())
    }
}

/// Whether an error reading a pid's files means the process no longer exists.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Longest `/proc/PID/leaf` built here: "/proc/4294967295/cmdline".
const PATH_LEN: usize = 32;

/// `/proc/PID/leaf` in a stack buffer (opening it then allocates nothing either).
fn proc_path<'a>(buf: &'a mut [u8; PATH_LEN], pid: u32, leaf: &str) -> io::Result<&'a Path> {
    let mut cursor = io::Cursor::new(&mut buf[..]);
    write!(cursor, "/proc/{pid}/{leaf}")?;
    let len = usize::try_from(cursor.position()).map_err(io::Error::other)?;
    Ok(Path::new(OsStr::from_bytes(&buf[..len])))
}

/// Reads a whole (small, generated) /proc file into `buf`, growing it if needed, and
/// returns the number of bytes read. Plain `read` calls: `read_to_end` would also ask
/// for the file's size, which /proc does not know. `line`: the file is one line, so
/// reading stops at its `\n` (the read that would return 0 costs a third of the whole
/// open–read–close on /proc/PID/stat).
fn read_file(path: &Path, buf: &mut Vec<u8>, line: bool) -> io::Result<usize> {
    let mut file = File::open(path)?;
    let mut n = 0;
    loop {
        if n == buf.len() {
            buf.resize((buf.len() * 2).max(BUF_START), 0);
        }
        match file.read(&mut buf[n..]) {
            Ok(0) => return Ok(n),
            Ok(read) => {
                n += read;
                if line && buf[n - 1] == b'\n' {
                    return Ok(n);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads and parses `/proc/PID/stat`.
fn read_stat(pid: u32, buf: &mut Vec<u8>) -> io::Result<Stat> {
    let mut path = [0; PATH_LEN];
    let n = read_file(proc_path(&mut path, pid, "stat")?, buf, true)?;
    parse_stat(&buf[..n]).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
}

/// Parses the fields of `/proc/PID/stat` a poll needs. `comm` (field 2) may hold any
/// bytes, spaces and parentheses included, so the fields are counted after the *last*
/// `)`.
fn parse_stat(line: &[u8]) -> Option<Stat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    let comm = line.get(open + 1..close)?;
    let mut fields = line.get(close + 1..)?.split(|&b| b == b' ');
    // The text after ')' starts with a space: the first piece is empty.
    if !fields.next()?.is_empty() {
        return None;
    }
    // Field 3 is the state; flags is field 9 and the start time field 22.
    let state = *fields.next()?.first()?;
    let flags = parse_u64(fields.nth(5)?)?;
    let started = parse_u64(fields.nth(12)?)?;
    let mut bytes = [0; COMM_LEN];
    let len = comm.len().min(COMM_LEN);
    bytes[..len].copy_from_slice(&comm[..len]);
    Some(Stat {
        comm: Comm {
            bytes,
            len: u8::try_from(len).ok()?,
        },
        state,
        flags,
        started,
    })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Lists the numeric entries of the open directory `dir` into `pids`, reading the
/// directory with `getdents64` into `dents`.
fn read_pids(dir: &mut File, dents: &mut [u8], pids: &mut Vec<u32>) -> io::Result<()> {
    dir.seek(SeekFrom::Start(0))?;
    loop {
        // SAFETY: the kernel writes at most `dents.len()` bytes into `dents`, which is
        // valid for writes of that length for the whole call; the descriptor is open.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                dents.as_mut_ptr(),
                dents.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = usize::try_from(n).map_err(io::Error::other)?;
        if n == 0 {
            return Ok(());
        }
        parse_dirents(&dents[..n], pids);
    }
}

/// Walks `struct linux_dirent64` records (d_ino u64, d_off i64, d_reclen u16, d_type u8,
/// then the NUL-terminated name) and keeps the names that are pids.
fn parse_dirents(mut records: &[u8], pids: &mut Vec<u32>) {
    const NAME: usize = 19;
    while let Some(reclen) = records.get(16..18) {
        let reclen = usize::from(u16::from_ne_bytes([reclen[0], reclen[1]]));
        let Some(record) = records.get(..reclen).filter(|_| reclen > NAME) else {
            return;
        };
        let name = &record[NAME..];
        let name = name.split(|&b| b == 0).next().unwrap_or(name);
        if let Some(pid) = parse_pid(name) {
            pids.push(pid);
        }
        records = &records[reclen..];
    }
}

fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || name[0] == b'0' {
        return None;
    }
    u32::try_from(parse_u64(name)?).ok()
}

/// Splits `/proc/PID/cmdline` (NUL-terminated arguments) into argv\[0\] and the rest,
/// both without their final NULs. `None` for an empty command line.
fn split_cmdline(cmdline: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = cmdline.iter().rposition(|&b| b != 0)? + 1;
    let cmdline = &cmdline[..end];
    Some(match cmdline.iter().position(|&b| b == 0) {
        Some(i) => (&cmdline[..i], &cmdline[i + 1..]),
        None => (cmdline, &[][..]),
    })
}

/// The arguments after argv\[0\] joined by single spaces (each NUL becomes a space).
fn join_args(args: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if args.contains(&0) {
        std::borrow::Cow::Owned(
            args.iter()
                .map(|&b| if b == 0 { b' ' } else { b })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(args)
    }
}

/// The file name of `/proc/PID/exe`'s target, without the " (deleted)" the kernel
/// appends once the file is gone (an upgrade replaced it while it ran).
fn exe_file_name(target: &[u8]) -> &[u8] {
    let target = target.strip_suffix(b" (deleted)").unwrap_or(target);
    file_name(target)
}

/// The part after the last `/`.
fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> Comm {
        let mut bytes = [0; COMM_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Comm {
            bytes,
            len: s.len() as u8,
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.started, 987654);
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.flags, 4194560);
        assert_eq!(stat.comm, comm("a) b (c)"));
        let kthread = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 18446744073709551615";
        let stat = parse_stat(kthread).unwrap();
        assert_ne!(stat.flags & PF_KTHREAD, 0);
        assert_eq!(stat.started, 5);
        let zombie = b"77 (x) Z 1 77 77 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0 0";
        assert!(parse_stat(zombie).unwrap().exited());
        assert_eq!(parse_stat(b"1 (x) S 1 2"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b""), None);
    }

    #[test]
    fn long_comm_is_kept_to_its_first_bytes() {
        let line = b"9 (kworker/0:1-events_freezable) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, comm("kworker/0:1-even"));
        assert_eq!(stat.started, 12);
    }

    #[test]
    fn cmdline_splits_into_argv0_and_joined_arguments() {
        let (argv0, args) = split_cmdline(b"/opt/acad.exe\0/product\0C3D\0").unwrap();
        assert_eq!(argv0, b"/opt/acad.exe");
        assert_eq!(&*join_args(args), b"/product C3D");
        let (argv0, args) = split_cmdline(b"acad\0").unwrap();
        assert_eq!((argv0, args), (&b"acad"[..], &b""[..]));
        // A process that rewrote its command line without NULs.
        let (argv0, args) = split_cmdline(b"nginx: worker process").unwrap();
        assert_eq!((argv0, args), (&b"nginx: worker process"[..], &b""[..]));
        // Empty arguments keep their places: still single spaces between arguments.
        let (_, args) = split_cmdline(b"x\0a\0\0b\0").unwrap();
        assert_eq!(&*join_args(args), b"a  b");
        assert_eq!(split_cmdline(b""), None);
        assert_eq!(split_cmdline(b"\0\0"), None);
    }

    #[test]
    fn exe_file_name_drops_the_deleted_mark_and_the_folders() {
        assert_eq!(exe_file_name(b"/opt/x/Revit.exe (deleted)"), b"Revit.exe");
        assert_eq!(exe_file_name(b"/usr/bin/acad"), b"acad");
        assert_eq!(file_name(b"acad.exe"), b"acad.exe");
        assert_eq!(file_name(b"./bin/acad.exe"), b"acad.exe");
    }

    #[test]
    fn dirents_yield_numeric_names_only() {
        let mut records = Vec::new();
        for name in [
            "1",
            ".",
            "self",
            "42",
            "0",
            "4294967295",
            "4294967296",
            "7x",
        ] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let mut r = vec![0u8; reclen];
            r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            r[19..19 + name.len()].copy_from_slice(name.as_bytes());
            records.extend(r);
        }
        let mut pids = Vec::new();
        parse_dirents(&records, &mut pids);
        assert_eq!(pids, [1, 42, 4294967295]);
        // A truncated record ends the walk instead of reading past the data.
        pids.clear();
        parse_dirents(&records[..records.len() - 3], &mut pids);
        assert_eq!(pids, [1, 42, 4294967295]);
    }

    #[test]
    fn proc_paths_fit_the_stack_buffer() {
        let mut buf = [0; PATH_LEN];
        let path = proc_path(&mut buf, u32::MAX, "cmdline").unwrap();
        assert_eq!(path, Path::new("/proc/4294967295/cmdline"));
    }

    #[test]
    fn the_newest_pid_is_read_and_moves_when_a_process_starts() {
        let mut p = Procfs::new();
        let before = p.newest_pid().expect("/proc/loadavg has the newest pid");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let after = p.newest_pid().unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn own_process_is_alive_with_its_start_time_only() {
        let pid = std::process::id();
        let mut buf = Vec::new();
        let stat = read_stat(pid, &mut buf).unwrap();
        let source = Procfs::new();
        assert!(source.alive(ProcessKey {
            pid,
            started: stat.started
        }));
        assert!(!source.alive(ProcessKey {
            pid,
            started: stat.started + 1
        }));
    }
}
