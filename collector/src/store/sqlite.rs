//! The SQLite store: WAL mode, versioned migrations, one writer thread with group commit.
//!
//! Every write goes to one thread that owns the write connection. It takes the jobs
//! waiting in its queue (up to 64), applies them in one transaction and
//! commits once. The commit itself does not wait for the disk: a sync thread makes the
//! log durable (one `fdatasync` for every commit waiting) and only then answers the
//! group's jobs, while the writer already applies the next group — many syncs, one
//! fsync, and no reply before its data is on disk. A checkpoint thread copies the log
//! into the database file beside them. Reads use a small pool of separate connections,
//! which WAL lets run beside the writer.
//!
//! The writer also owns the settings (so syncs and imports are priced in queue order),
//! the teams' purchase balances (so a sync's reminders need no read of their own), every
//! stored session id (`ids`) and each recently synced key's tail (`tails`), so that a
//! sync reads nothing back from the database.
//!
//! Files by role: `writer` (the thread, its groups and memory), `durability` (log sync
//! and checkpoints), `statements` (the statements every sync runs), `migrations`
//! (numbered `.sql` files) and `repair`, `ingest` (a sync's sessions into batches, ids
//! and runs), `settling` (a key's tail loaded or kept, then `store::settle`), `persist`
//! (devices, purchases, settings, and `SqliteSink`), `mail` (mail schedules and
//! low-balance readings), `store` (the [`Store`] trait on
//! the writer and the readers), `batches`, `ids`, `runs`, `tests`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::accounting::Resume;

mod backfill;
mod batches;
mod ids;
mod repair;
mod reports;
mod runs;

mod durability;
mod ingest;
mod kept_totals;
mod mail;
mod migrations;
mod persist;
mod settling;
mod statements;
mod store;
#[cfg(test)]
mod tests;
mod totals;
mod writer;

use durability::*;
use ingest::*;
use migrations::*;
use persist::*;
use settling::*;
use statements::*;
use totals::Pending;
use writer::*;

use super::balances::balances;
use super::settle::{Entry, Key, Sink, settle};
use super::tails::{Drawn, Held, StoredDay, StoredDays, Tail, Tails, days_from};
use super::tally::{KeyMonth, Month, Tally, month_of};
use batches::{BATCH_MAX, Batch};
use daymeter_shared::record::Problem;
use daymeter_shared::session::{RawSession, Session};
use daymeter_shared::time::{Zone, ZoneCache};
use daymeter_shared::usage::UsageDay;
use daymeter_shared::waste::Marks;
use ids::{Ids, Lookup};
use runs::{KeyedRun, Run, Runs};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use daymeter_shared::ledger::{Ledger, Purchase};

use super::{
    Balance, Cause, Device, Ingest, IngestOutcome, LedgerEntry, MailSchedule, PurchaseCorrection,
    PurchaseState, SessionFilter, Settings, Store, StoreError, StoredSession,
};

/// Most jobs committed together; bounds the time the first of them waits.
const MAX_GROUP: usize = 64;
/// A group of writes taking this long is logged (with where its time went): every sync
/// queued behind it waited as long.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(100);
const READERS: usize = 4;
/// The writer connection's page cache, in KiB (SQLite's `cache_size` when negative).
const WRITER_CACHE_KIB: i64 = -(16 << 10);
/// How stale a user's recorded last sync may get before a sync rewrites it.
const LAST_SYNC_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::minutes(1);
/// Write-ahead log size past which the writer makes sure the log starts over. Each
/// restart stalls the writer for a few syncs (~60-100 ms on the development VM), so the
/// log is allowed to grow well past SQLite's default before it is made to start over
/// (measured with sync_load: at 64 MiB it restarted twice a second under full load).
const WAL_LIMIT: u64 = 256 << 20;
/// Log (in bytes of frames) a checkpoint pass may leave behind for the writer's own pass
/// before a restart: copied and synced between two groups.
const RESTART_REST: u64 = 2 << 20;
/// How long the checkpoint thread lets commits accumulate before copying them.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(Box::new(e))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A stored session's body read back through the parser and checks it passed when it
/// arrived (so that whatever was accepted reads back alike), with its zone. User and
/// device are the row's, not the body's: the wire record carries neither.
fn read_back<'b>(
    body: &'b str,
    row: i64,
    zones: &mut ZoneCache,
) -> Result<(Session<'b>, Zone), StoreError> {
    let raw: RawSession<'b> = serde_json::from_str(body)
        .map_err(|e| corrupt(format!("stored session at row {row}: {e}")))?;
    raw.check(zones)
        .map_err(|p| corrupt(format!("stored session at row {row}: {p}")))
}

enum Job {
    Ingest(
        Box<Ingest>,
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
    ),
    AddDevice(Box<Device>, oneshot::Sender<Result<(), StoreError>>),
    Revoke(String, oneshot::Sender<Result<bool, StoreError>>),
    /// The device with its new token, and the token hash it must still have.
    Reenrol(
        Box<(Device, [u8; 32])>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    PutSettings(Box<Settings>, oneshot::Sender<Result<(), StoreError>>),
    AddPurchase(Box<Purchase>, oneshot::Sender<Result<(), StoreError>>),
    CorrectPurchase(
        Box<PurchaseCorrection>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    /// A mail schedule, and the most its recipient may have.
    AddMailSchedule(
        Box<(MailSchedule, usize)>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    DeleteMailSchedule(String, oneshot::Sender<Result<bool, StoreError>>),
    SetMailNextRun(
        Box<(String, DateTime<Utc>)>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    /// Schedule, team, remaining tokens.
    SetLowBalanceReading(
        Box<(String, String, u64)>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
}

/// A job's answer, held back until the group's commit.
enum Reply {
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        Result<IngestOutcome, StoreError>,
        /// The applied ingest, freed where the answer is sent rather than on the
        /// writer's thread (its memory came from a request's thread).
        Box<Ingest>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Bool(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
}

impl Reply {
    fn send(self, commit: &Result<(), String>) {
        let fail = |r: &Result<(), String>| r.clone().map_err(|e| StoreError::Database(e.into()));
        // A receiver that went away (client gone) needs no answer.
        match self {
            Reply::Ingest(tx, r, ingest) => {
                drop(tx.send(fail(commit).and(r)));
                drop(ingest);
            }
            Reply::Unit(tx, r) => drop(tx.send(fail(commit).and(r))),
            Reply::Bool(tx, r) => drop(tx.send(fail(commit).and(r))),
        }
    }
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// Whole months' totals kept between reads, shared with the writer, which says
    /// when a month changes.
    kept: Arc<kept_totals::KeptTotals>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
    )
    .map_err(db)?;
    // Plans that do not depend on bound values: otherwise a statement on `usage_days`
    // (whose partial index is checked against every `column = ?` term) is prepared
    // again each time it is run with new values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(db)?;
    Ok(conn)
}

/// The first version whose builds refuse list-shaped sessions: older databases may
/// hold some (see [`repair`]).
const OBJECT_SESSIONS_VERSION: i64 = 9;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("creating {}: {e}", dir.display()).into())
            })?;
        }
        let mut conn = open(path)?;
        // Durability below rests on the write-ahead log (commits are synced by syncing
        // the log file): refuse to run on a database that is not in WAL mode.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(
                format!(
                    "{} is in journal mode {mode}, not WAL (is its file system a network or read-only one?)",
                    path.display()
                )
                .into(),
            ));
        }
        let was = migrate(&mut conn)?;
        if (1..OBJECT_SESSIONS_VERSION).contains(&was) {
            repair::list_sessions(&mut conn)?;
        }
        // The writer revisits the recent pages of every active key: keep them in memory
        // rather than re-reading them from the OS on every group.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(db)?;
        // Checkpoints run beside the writer (see `checkpoint_loop`), not inside its commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db)?;
        // Commits are made durable by the sync thread (see `sync_loop`), not inside them.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        // Statement journals and temporary b-trees in memory, not in temporary files
        // written page by page.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(db)?;
        // The log file is not cut back when it starts over (its blocks are reused in
        // place, without allocating them again), unless a stalled restart let it grow
        // past twice the limit.
        conn.pragma_update(None, "journal_size_limit", 2 * WAL_LIMIT as i64)
            .map_err(db)?;
        let settings = Arc::new(read_settings(&conn)?);
        let ids = load_ids(&conn)?;
        let runs = gather_runs(&conn)?;
        if (1..backfill::TOTALS_VERSION).contains(&was) {
            backfill::report_totals(&mut conn, &runs, &settings)?;
        }
        if backfill::marks_pending(&conn)? {
            backfill::waste_marks(&mut conn, &runs, &settings)?;
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let checkpointer = open(path)?;
        let db_file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Database(format!("opening {}: {e}", path.display()).into()))?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let (ckpt_tx, ckpt_rx) = mpsc::channel();
        let checkpoints = {
            let restart_due = restart_due.clone();
            thread::Builder::new()
                .name("daymeter-db-checkpoint".into())
                .spawn(move || checkpoint_loop(checkpointer, db_file, ckpt_rx, &restart_due))
                .map_err(|e| {
                    StoreError::Database(format!("starting the checkpoint thread: {e}").into())
                })?
        };
        let (sync_tx, sync_rx) = mpsc::channel();
        let syncer = {
            let wal = wal.clone();
            thread::Builder::new()
                .name("daymeter-db-sync".into())
                .spawn(move || sync_loop(wal, sync_rx))
                .map_err(|e| {
                    StoreError::Database(format!("starting the sync thread: {e}").into())
                })?
        };
        let kept = Arc::new(kept_totals::KeptTotals::default());
        let writer = Writer {
            conn,
            memory: Memory {
                settings,
                ledgers: Ledgers::default(),
                ids,
                runs,
                tails: Tails::default(),
                next_row: None,
                batch: Batch::new(),
                last_syncs: HashMap::new(),
                device_syncs: HashMap::new(),
                totals: Pending::default(),
                kept: kept.clone(),
            },
            wal,
            restart_due,
            syncer: Some((sync_tx, syncer)),
            checkpoints: Some((ckpt_tx, checkpoints)),
        };
        let (tx, rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("daymeter-db-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}").into()))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
            kept,
        })
    }

    /// Stops taking writes, lets the writer finish what it holds, and waits for it.
    pub fn close(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let writer = self.writer.lock().map_err(|_| StoreError::Closed)?;
            writer
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(make(tx))
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open(&path)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < READERS
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task: {e}").into()))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}
