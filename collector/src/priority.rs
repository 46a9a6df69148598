//! Thread priorities inside the collector.
//!
//! Every sync waits for the one database writer thread, and nothing else can do its
//! work; the request threads' work (HTTP, parsing, checking, answering) and the
//! checkpoint thread's copying can wait a little without slowing anything down. So those
//! threads run a few steps nicer than the writer and the log-syncing thread, and the
//! scheduler gives the writer the CPU whenever it can run. Measured with sync_load on
//! 2 cores before this: the writer spent a fifth of its time runnable but waiting for a
//! core (`/proc/<pid>/task/<tid>/schedstat`).
//!
//! Lowering one's own priority needs no privilege; nothing here raises one. Outside
//! Linux (where a nice value is a process's, not a thread's) this does nothing.

/// Nice steps the request threads and the checkpoint thread run below the writer.
///
/// Why 5: with 50-session syncs the writer is the bottleneck, and four alternating
/// rounds gave 94,000 sessions/s with these threads at nice 5 against 83,000 with all
/// threads equal. With 5-session syncs the request thread is the busier one; there,
/// and in a later 50-session set, nice 0, 2 and 5 overlapped within this machine's
/// noise (±15 % between runs of one setting), each above the 5-session goal. Nothing
/// measured favoured a smaller step, so the measured one stays.
pub const BACKGROUND: i32 = 5;

/// Lowers the calling thread's priority by `steps` nice steps (from whatever the process
/// was started with). A failure is logged and otherwise ignored: priorities only shape
/// how the work is shared, never whether it is done.
pub fn lower_this_thread(steps: i32) {
    if let Err(e) = imp::lower_this_thread(steps) {
        tracing::debug!(error = %e, "could not lower a thread's priority");
    }
}

#[cfg(target_os = "linux")]
mod imp {
    pub fn lower_this_thread(steps: i32) -> std::io::Result<()> {
        // SAFETY: gettid, getpriority and setpriority take plain integers and touch no
        // memory of ours; errno is the calling thread's.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if now == -1 && *libc::__errno_location() != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpriority(libc::PRIO_PROCESS, tid, (now + steps).min(19)) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn lower_this_thread(_steps: i32) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_nicer_and_the_others_are_not() {
        let nice = |tid: libc::id_t| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let main = unsafe { libc::gettid() } as libc::id_t;
        let before = nice(main);
        let lowered = std::thread::spawn(move || {
            lower_this_thread(BACKGROUND);
            nice(unsafe { libc::gettid() } as libc::id_t)
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + BACKGROUND).min(19));
        assert_eq!(nice(main), before, "only the calling thread");
    }
}
