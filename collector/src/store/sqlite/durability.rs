//! The threads beside the writer: one makes commits durable before their replies go
//! out (one `fdatasync` for every commit waiting), one copies the log into the
//! database file.

use super::*;

/// Makes commits durable and then answers them, while the writer goes on with the next
/// group: the writer commits without syncing (`synchronous = NORMAL`), and this thread
/// syncs the log file (one `fdatasync` for every commit waiting) before any answer of
/// those commits is sent. A sync covers every write made to the file before it, by any
/// descriptor; frames the log later starts over on were checkpointed into the database
/// file and synced there first (SQLite restarts the log only then).
///
/// A failed sync leaves the log's contents unknown: the answers waiting get the error
/// and the syncer stops, so that nothing more is acknowledged until a restart.
pub(super) fn sync_loop(wal: PathBuf, rx: mpsc::Receiver<Vec<Reply>>) {
    let mut file: Option<std::fs::File> = None;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let started = std::time::Instant::now();
        let synced = match &file {
            Some(f) => f.sync_data(),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&wal)
                .and_then(|f| f.sync_data().map(|()| f))
                .map(|f| {
                    file = Some(f);
                }),
        };
        let took = started.elapsed();
        if took >= SLOW_GROUP {
            tracing::warn!(
                ms = took.as_secs_f64() * 1e3,
                commits = groups.len(),
                "syncing the write-ahead log to disk was slow; the syncs it covers waited"
            );
        }
        let result = synced.map_err(|e| format!("syncing {}: {e}", wal.display()));
        if let Err(e) = &result {
            tracing::error!(error = %e, "the write-ahead log could not be synced; no more writes are acknowledged until the collector restarts");
        }
        for reply in groups.into_iter().flatten() {
            reply.send(&result);
        }
        if result.is_err() {
            return;
        }
    }
}

/// Copies committed pages from the log into the database file, off the writer's path.
///
/// Woken after commits, it waits [`CHECKPOINT_PAUSE`] first so that a page written by
/// several groups in a row is copied once. `PASSIVE`: it never blocks the writer.
///
/// After each pass it syncs the database file itself. SQLite syncs it only in a pass
/// that reaches the end of the log, which under steady load is only the writer's own
/// pass before a restart: that pass then waited for every page copied since the last
/// restart to reach the disk (up to 370 ms on the development VM, stalling every sync
/// behind it). Measured with sync_load 50x50: the slowest sync went from 340-375 ms to
/// 88 ms, p99 from 75-210 ms to 65-71 ms. Syncing only once the log is over the limit
/// did not help (one large flush instead); asking the kernel to start writing after
/// each pass (`sync_file_range`) did as well as syncing.
///
/// Once the log is longer than [`WAL_LIMIT`], passes follow each other without a pause
/// until one finds little to copy, and then it asks the writer to copy the rest, so
/// that the log can start over (see `Writer::after_commit`): the writer's share is then
/// a few groups' pages.
pub(super) fn checkpoint_loop(
    conn: Connection,
    db_file: std::fs::File,
    rx: mpsc::Receiver<()>,
    restart_due: &AtomicBool,
) {
    crate::priority::lower_this_thread(crate::priority::BACKGROUND);
    let frame = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map_or(4096 + 24, |page| page + 24);
    // Frames of the log already copied by the previous pass.
    let mut copied = 0;
    while rx.recv().is_ok() {
        thread::sleep(CHECKPOINT_PAUSE);
        while rx.try_recv().is_ok() {}
        loop {
            let pass = match checkpoint(&conn) {
                Ok(Some(pass)) => pass,
                Ok(None) => break, // the writer's pass is running
                Err(e) => {
                    tracing::warn!(error = %e, "background checkpoint failed; retried after the next commit");
                    break;
                }
            };
            if let Err(e) = db_file.sync_data() {
                tracing::warn!(error = %e, "syncing the database file after a checkpoint failed; retried after the next commit");
                break;
            }
            // Frames this pass copied (the log may have started over since the last).
            let fresh = if pass.log >= copied {
                pass.log - copied
            } else {
                pass.log
            };
            copied = pass.done;
            if pass.log * frame <= WAL_LIMIT as i64 {
                break;
            }
            if fresh * frame <= RESTART_REST as i64 {
                restart_due.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// What a checkpoint pass found: frames in the log, and frames copied into the
/// database file so far.
pub(super) struct Pass {
    pub(super) log: i64,
    pub(super) done: i64,
}

/// A passive checkpoint; `None` if another one was running.
pub(super) fn checkpoint(conn: &Connection) -> Result<Option<Pass>, StoreError> {
    let found = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match found {
        Ok((0, log, done)) => Ok(Some(Pass { log, done })),
        Ok(_) => Ok(None),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(None)
        }
        Err(e) => Err(db(e)),
    }
}
