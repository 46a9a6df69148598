//! Linux: process events from the kernel's process connector, `/proc` as backstop.
//!
//! Listing `/proc` is most of what the [`Procfs`] source costs on a busy machine: the
//! kernel walks its pid table and fills its dentry cache for every process, every poll
//! (perf on the agent put over half of its CPU there). The kernel can say what changed
//! instead: a netlink socket subscribed to the process connector (`NETLINK_CONNECTOR`,
//! group `CN_IDX_PROC`, `PROC_CN_MCAST_LISTEN`) receives a message for every fork, `exec`
//! and exit on the machine. [`Connector`] keeps that socket non-blocking and, at each
//! poll, reads what queued up since the previous poll and hands the pids to
//! `Procfs::poll_changes`, which examines them with the same code a listing uses and
//! so answers what a listing would. A poll between events costs one `recv` that finds
//! nothing, plus the stat read every poll makes of each product process. Only processes
//! count: fork and exit events of threads (pid ≠ thread-group id) are skipped, and the
//! other event kinds (uid, sid, comm, …) change nothing the agent looks at.
//!
//! Events can be lost, so a full listing still runs as a backstop:
//! - at the first poll (and after [`ProcessSource::forget`]): nothing is known yet, and
//!   the kernel replays nothing from before the subscription;
//! - after the socket reported `ENOBUFS`: its queue overflowed (more process churn
//!   between two polls than [`RECEIVE_BUFFER`] holds) and events were dropped;
//! - after a message that could not be read, or more than [`DRAIN_AT_MOST`] messages in
//!   one poll (rather than falling behind a fork storm);
//! - every [`LIST_EVERY`] polls whatever happened, for losses nobody reports.
//!
//! Subscribing can fail: the kernel may lack the connector (`CONFIG_PROC_EVENTS`), older
//! kernels require `CAP_NET_ADMIN` (`EPERM` without it; 6.18, tried here, accepts an
//! unprivileged user), and the kernel answers only subscribers in its initial pid and
//! user namespaces — others, in containers, are ignored without a word. proc-connector's
//! constructor waits for that answer with a blocking read, so [`Connector::new`] checks
//! the namespaces and the connector's registration first, and gives the subscription at
//! most [`SUBSCRIBE_TIMEOUT`] on a helper thread. [`super::system`] then falls back to
//! the plain [`Procfs`] source; a socket that fails later (anything but overflow) makes
//! this source fall back the same way, with a warning.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::Duration;

use proc_connector::{NetlinkMessageIter, ProcConnector, ProcEvent};

use super::procfs::{Change, Procfs};
use super::{ProcessKey, ProcessSource, Running, Seen};

/// Polls between two backstop listings, at most. The kernel drops an event without
/// telling anyone when it cannot allocate its message (it allocates without waiting,
/// in the middle of a fork or an exit), so a process could go unseen until the next
/// listing. At the default 1 s poll, 60 bounds that to a minute — a product is metered
/// by the day, and a minute's delay is well under the five free minutes of a short
/// launch — while costing a sixtieth of the listing the `/proc` source makes every poll.
pub const LIST_EVERY: u32 = 60;

/// Receive buffer asked for the events socket (`SO_RCVBUF`; the kernel doubles it and
/// caps the request at `net.core.rmem_max`). A process's fork, `exec` and exit take
/// three messages of about 1 KiB of queue each; 1 MiB keeps several hundred process
/// starts between two polls, beyond which the queue overflows and the next poll lists.
/// The memory is the kernel's, used only while events wait.
pub const RECEIVE_BUFFER: usize = 1 << 20;

/// Messages read in one poll, at most; past that the poll lists `/proc` instead of
/// chasing a fork storm (at about a microsecond per `recv`, this bounds a poll's reading
/// to tens of milliseconds).
pub const DRAIN_AT_MOST: usize = 65_536;

/// How long the kernel may take to answer the subscription before the source gives up
/// on events (it answers in well under a millisecond when it answers at all).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer for one message: process events are a few dozen bytes.
const MESSAGE_LEN: usize = 4096;

/// Inode numbers of the kernel's initial pid and user namespaces (`PROC_PID_INIT_INO`
/// and `PROC_USER_INIT_INO`, fixed by the kernel), as `/proc/self/ns/*` shows them.
const INIT_PID_NS: u64 = 0xEFFF_FFFC;
const INIT_USER_NS: u64 = 0xEFFF_FFFD;

/// Why process events are not available.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The kernel reports process events only to its initial pid and user namespaces and
    /// ignores subscriptions from others.
    #[error(
        "process events are reported only to the initial pid and user namespaces (a container?)"
    )]
    Namespace,
    /// No process connector registered (`cn_proc` missing from `/proc/net/connector`).
    #[error("this kernel reports no process events (no cn_proc in /proc/net/connector)")]
    NotInKernel,
    /// The socket could not be made, bound or subscribed, or the kernel refused the
    /// subscription (`PermissionDenied`: the agent lacks `CAP_NET_ADMIN`).
    #[error("cannot subscribe to process events: {0}")]
    Os(#[source] io::Error),
    /// Anything else proc-connector reported.
    #[error("cannot subscribe to process events: {0}")]
    Connector(#[source] proc_connector::Error),
    /// The kernel did not answer the subscription in time.
    #[error("the kernel did not answer the subscription to process events within {0:?}")]
    NoAnswer(Duration),
}

impl From<proc_connector::Error> for SubscribeError {
    fn from(e: proc_connector::Error) -> Self {
        match e {
            proc_connector::Error::Os(e) => SubscribeError::Os(e),
            other => SubscribeError::Connector(other),
        }
    }
}

/// The Linux [`ProcessSource`] driven by process events, with the [`Procfs`] listing as
/// backstop (see the module notes).
pub struct Connector {
    procfs: Procfs,
    /// `None` once the socket failed: every poll is then a plain [`Procfs`] poll.
    events: Option<Events>,
    /// This poll's changes, ascending by pid (kept for its allocation).
    changed: Vec<(u32, Change)>,
    list_every: u32,
    /// Polls since the last listing.
    unlisted: u32,
    /// The next poll lists.
    must_list: bool,
    listings: u64,
}

impl Connector {
    /// Subscribes to the kernel's process events; fails when they are not available
    /// here (see [`SubscribeError`]).
    pub fn new() -> Result<Connector, SubscribeError> {
        Ok(Connector {
            procfs: Procfs::new(),
            events: Some(Events::subscribe()?),
            changed: Vec::new(),
            list_every: LIST_EVERY,
            unlisted: 0,
            must_list: true,
            listings: 0,
        })
    }

    /// Lists `/proc` at least every `polls` polls ([`LIST_EVERY`] by default; at least 1).
    pub fn list_every(mut self, polls: u32) -> Connector {
        self.list_every = polls.max(1);
        self
    }

    /// Asks the kernel for a receive buffer of `bytes` instead of [`RECEIVE_BUFFER`]
    /// (a small one makes the queue overflow sooner: tests use that).
    pub fn receive_buffer(self, bytes: usize) -> io::Result<Connector> {
        if let Some(events) = &self.events {
            events.receive_buffer(bytes)?;
        }
        Ok(self)
    }

    /// Has the next poll list `/proc`, whatever events say.
    pub fn resync(&mut self) {
        self.must_list = true;
    }

    /// Full `/proc` listings made so far (first poll, backstop, after lost events).
    pub fn listings(&self) -> u64 {
        self.listings
    }

    /// Whether polls are still driven by events (false once the socket failed).
    pub fn subscribed(&self) -> bool {
        self.events.is_some()
    }

    /// Throws away the events queued so far, as a kernel that dropped them without a
    /// word would: for tests of the backstop. Returns the number of messages dropped.
    #[doc(hidden)]
    pub fn discard_pending_events(&mut self) -> usize {
        let mut scratch = Vec::new();
        self.events.as_mut().map_or(0, |events| {
            events.drain(&mut scratch).map_or(0, |d| d.messages)
        })
    }
}

impl ProcessSource for Connector {
    fn poll(&mut self, classify: &dyn Fn(Seen<'_>) -> Option<String>) -> io::Result<Vec<Running>> {
        let Some(events) = &mut self.events else {
            return self.procfs.poll(classify);
        };
        self.changed.clear();
        match events.drain(&mut self.changed) {
            Ok(drained) if drained.lost => {
                tracing::debug!(
                    messages = drained.messages,
                    "process events were lost; listing /proc"
                );
                self.must_list = true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "process events stopped ({e}); watching processes by listing /proc every poll"
                );
                self.events = None;
                return self.procfs.poll(classify);
            }
        }
        settle(&mut self.changed);
        self.unlisted += 1;
        let list = self.must_list || self.unlisted >= self.list_every;
        let running = self.procfs.poll_changes(&self.changed, list, classify)?;
        if list {
            self.must_list = false;
            self.unlisted = 0;
            self.listings += 1;
        }
        Ok(running)
    }

    fn forget(&mut self) {
        self.procfs.forget();
        self.must_list = true;
    }

    fn alive(&self, key: ProcessKey) -> bool {
        self.procfs.alive(key)
    }
}

/// The subscribed socket, non-blocking.
struct Events {
    socket: ProcConnector,
    buf: Vec<u8>,
}

/// What one drain read.
#[derive(Debug, Clone, Copy)]
struct Drained {
    /// Messages read.
    messages: usize,
    /// Events were (or may have been) lost: the socket overflowed, a message could not
    /// be read, or there were more than [`DRAIN_AT_MOST`].
    lost: bool,
}

impl Events {
    /// Subscribes (see the module notes for the checks made first).
    fn subscribe() -> Result<Events, SubscribeError> {
        if !in_initial_namespaces() {
            return Err(SubscribeError::Namespace);
        }
        if !proc_events_registered() {
            return Err(SubscribeError::NotInKernel);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("proc-events".to_owned())
            .spawn(move || {
                // The receiver is gone if the answer came too late: the connector is then
                // dropped here, which unsubscribes.
                let _ = tx.send(ProcConnector::new());
            })
            .map_err(SubscribeError::Os)?;
        let socket = match rx.recv_timeout(SUBSCRIBE_TIMEOUT) {
            Ok(subscribed) => subscribed?,
            // A kernel that never answers leaves the helper thread blocked in its read;
            // the checks above make that a case nobody has seen.
            Err(_) => return Err(SubscribeError::NoAnswer(SUBSCRIBE_TIMEOUT)),
        };
        socket.set_nonblocking()?;
        let events = Events {
            socket,
            buf: vec![0; MESSAGE_LEN],
        };
        if let Err(e) = events.receive_buffer(RECEIVE_BUFFER) {
            // The kernel's default buffer works too; it overflows sooner.
            tracing::debug!("cannot enlarge the process events buffer: {e}");
        }
        Ok(events)
    }

    fn receive_buffer(&self, bytes: usize) -> io::Result<()> {
        self.socket
            .set_recv_buf_size(bytes)
            .map_err(io::Error::other)
    }

    /// Reads every queued message without blocking and appends the changes they report
    /// to `changed` (unsorted). Errors only when the socket itself failed.
    fn drain(
        &mut self,
        changed: &mut Vec<(u32, Change)>,
    ) -> Result<Drained, proc_connector::Error> {
        let mut drained = Drained {
            messages: 0,
            lost: false,
        };
        while drained.messages < DRAIN_AT_MOST {
            let n = match self.socket.recv_raw(&mut self.buf) {
                Ok(n) => n,
                Err(proc_connector::Error::WouldBlock) => return Ok(drained),
                Err(proc_connector::Error::Interrupted) => continue,
                // ENOBUFS: the queue overflowed; what is still queued can be read.
                Err(proc_connector::Error::Overrun) => {
                    drained.lost = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            drained.messages += 1;
            for message in NetlinkMessageIter::new(&self.buf, n.min(self.buf.len())) {
                match message {
                    Ok(Some(event)) => note(event, changed),
                    Ok(None) => {}
                    // Another connector's message: not about processes.
                    Err(proc_connector::Error::UnexpectedConnector) => {}
                    // Overrun, or a message that cannot be read: what it said is unknown.
                    Err(_) => drained.lost = true,
                }
            }
        }
        drained.lost = true;
        Ok(drained)
    }
}

/// Appends what `event` says about a process to `changed`. Threads are skipped: a
/// thread's fork or exit changes nothing `/proc/PID` shows of its process. An `exec`
/// is reported with the thread-group id, which is the pid after it.
fn note(event: ProcEvent, changed: &mut Vec<(u32, Change)>) {
    match event {
        ProcEvent::Fork {
            child_pid,
            child_tgid,
            ..
        } if child_pid == child_tgid => changed.push((child_pid, Change::Recheck)),
        ProcEvent::Exec { tgid, .. } => changed.push((tgid, Change::Exec)),
        ProcEvent::Exit { pid, tgid, .. } if pid == tgid => changed.push((pid, Change::Recheck)),
        // Threads, uid/gid/sid/ptrace/comm/coredump events, and the kernel's answers to
        // subscriptions (sent to every listener; proc-connector checked ours).
        _ => {}
    }
}

/// Sorts `changed` by pid and keeps one change per pid, the largest (an `exec` outranks
/// a fork or an exit: the process is examined again either way).
fn settle(changed: &mut Vec<(u32, Change)>) {
    changed.sort_unstable();
    changed.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.max(later.1);
        }
        same
    });
}

/// Whether this process runs in the kernel's initial pid and user namespaces, the only
/// ones whose subscriptions the kernel answers.
fn in_initial_namespaces() -> bool {
    let inode = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    inode("/proc/self/ns/pid") == Some(INIT_PID_NS)
        && inode("/proc/self/ns/user") == Some(INIT_USER_NS)
}

/// Whether the kernel registered its process connector (`cn_proc`); without it a
/// subscription goes unanswered.
fn proc_events_registered() -> bool {
    std::fs::read_to_string("/proc/net/connector").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("cn_proc"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork(child_pid: u32, child_tgid: u32) -> ProcEvent {
        ProcEvent::Fork {
            cpu: 0,
            seq: 0,
            parent_pid: 1,
            parent_tgid: 1,
            child_pid,
            child_tgid,
            timestamp_ns: 0,
        }
    }

    fn exit(pid: u32, tgid: u32) -> ProcEvent {
        ProcEvent::Exit {
            cpu: 0,
            seq: 0,
            pid,
            tgid,
            exit_code: 0,
            exit_signal: 17,
            parent_pid: 1,
            parent_tgid: 1,
            timestamp_ns: 0,
        }
    }

    #[test]
    fn processes_are_noted_and_threads_skipped() {
        let mut changed = Vec::new();
        note(fork(10, 10), &mut changed);
        note(fork(11, 10), &mut changed);
        note(
            ProcEvent::Exec {
                cpu: 0,
                seq: 0,
                pid: 12,
                tgid: 12,
                timestamp_ns: 0,
            },
            &mut changed,
        );
        note(exit(13, 10), &mut changed);
        note(exit(14, 14), &mut changed);
        note(
            ProcEvent::Unknown {
                what: 0,
                raw_data: vec![0; 4],
            },
            &mut changed,
        );
        assert_eq!(
            changed,
            [
                (10, Change::Recheck),
                (12, Change::Exec),
                (14, Change::Recheck)
            ]
        );
    }

    #[test]
    fn changes_are_settled_to_one_per_pid_an_exec_first() {
        let mut changed = vec![
            (7, Change::Recheck),
            (3, Change::Recheck),
            (7, Change::Exec),
            (3, Change::Recheck),
            (5, Change::Exec),
            (7, Change::Recheck),
        ];
        settle(&mut changed);
        assert_eq!(
            changed,
            [(3, Change::Recheck), (5, Change::Exec), (7, Change::Exec)]
        );
    }
}
