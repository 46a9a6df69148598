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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::accounting::{Resume, Span, WindowKind, walk_from};

mod batches;
mod ids;
mod repair;
mod runs;
mod tails;

use batches::{BATCH_MAX, Batch};
use daymeter_shared::entitlement::Pricing;
use daymeter_shared::record::Problem;
use daymeter_shared::session::{RawSession, Session};
use daymeter_shared::time::{Zone, ZoneCache};
use daymeter_shared::usage::{UsageDay, priced};
use ids::{Ids, Lookup};
use runs::{KeyedRun, Run, Runs};
use rusqlite::{Connection, OptionalExtension, params};
use tails::{Drawn, Held, StoredDay, StoredDays, Tail, Tails};
use tokio::sync::oneshot;

use daymeter_shared::ledger::{Ledger, Purchase, team_of};

use super::{
    Balance, Cause, Device, Ingest, IngestOutcome, LedgerEntry, PurchaseCorrection, PurchaseState,
    SessionFilter, Settings, Store, StoreError, StoredSession,
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

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
-- body: the session as received, offsets kept (before version 7 of the collector:
-- serialized again, with user and device; both forms read back alike).
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX sessions_by_key ON sessions (user, product, start_ns);
CREATE TABLE usage_days (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (user, product, window_start_ns)
);
CREATE INDEX usage_days_by_day ON usage_days (day);
CREATE TABLE users (
    user TEXT PRIMARY KEY,
    last_sync TEXT NOT NULL
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE purchases (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    purchased_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
-- Append-only: a changed usage day is a reversal (negative) plus new entries.
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    team TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    day TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    purchase TEXT,
    tokens INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX ledger_by_window ON ledger (user, product, window_start_ns);
CREATE INDEX ledger_by_team ON ledger (team, seq);
"#,
    r#"
-- Bounded recomputation: find the sessions still open at an instant, and tell the
-- count_free rows from charged windows when resuming a walk.
CREATE INDEX sessions_by_key_end ON sessions (user, product, end_ns);
ALTER TABLE usage_days ADD COLUMN short_row INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Fewer b-trees to write per sync. usage_days is kept in key order (no rowid table
-- beside its primary key). The sessions of a key are found by end alone: the sessions
-- that start at or after a resume point are those that end at or after it.
CREATE TABLE usage_days_by_key (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    short_row INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, product, window_start_ns)
) WITHOUT ROWID;
INSERT INTO usage_days_by_key (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row)
    SELECT user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row FROM usage_days;
DROP TABLE usage_days;
ALTER TABLE usage_days_by_key RENAME TO usage_days;
CREATE INDEX usage_days_by_day ON usage_days (day);
-- Resuming a walk reads the last count_free row before an instant: one seek, however
-- long the key's history. Partial: the charged rows (all of them unless the policy
-- counts short sessions free) cost no index writes.
CREATE INDEX usage_days_short ON usage_days (user, product, window_start_ns) WHERE short_row = 1;
DROP INDEX sessions_by_key;
"#,
    r#"
-- Fewer b-trees again. A usage day records what its ledger entries hold now (`drawn`,
-- a JSON array of [purchase or null, tokens]), so a reversal reads the row the
-- recomputation already has instead of the ledger through an index by window; the
-- ledger is then written in `seq` order only (no listing or balance read used the
-- index by team: both scan the ledger). Measured (sync_load 50x50, A/B on one
-- machine): a few percent faster; keeping the sessions in a WITHOUT ROWID table by id
-- was tried too and cost a third of the throughput (their bodies are large rows).
ALTER TABLE usage_days ADD COLUMN drawn TEXT NOT NULL DEFAULT '[]';
UPDATE usage_days SET drawn = COALESCE((
    SELECT json_group_array(json_array(purchase, held)) FROM (
        SELECT purchase, SUM(tokens) AS held FROM ledger
        WHERE ledger.user = usage_days.user AND ledger.product = usage_days.product
          AND ledger.window_start_ns = usage_days.window_start_ns
        GROUP BY purchase HAVING SUM(tokens) != 0 ORDER BY purchase)), '[]');
DROP INDEX ledger_by_window;
DROP INDEX ledger_by_team;
"#,
    r#"
-- Fewer pages written per sync. Every page a commit changes goes to the write-ahead
-- log whole, and before this version a 50-session sync changed about 28 (2 KB of log
-- per session): a page of each b-tree ordered by key or by id, for each key and each
-- calendar day it touched.
--
-- Sessions in arrival order, with no index of their own: each sync appends its rows
-- (one b-tree, written at its end) instead of inserting into three. The writer finds
-- an id in memory (see `ids`), and a key's sessions through `session_runs`: one row per
-- sync and product, naming the consecutive rows that sync added and how far they
-- reach, ordered by user so that one sync's runs share a page. Measured (1M inserts,
-- 1,000 per transaction, development VM): 2.6 µs per session for the table alone
-- against 6.0 µs with the index by id and by key.
CREATE TABLE sessions_arrived (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
INSERT INTO sessions_arrived (id, user, device, product, start_ns, end_ns, body)
    SELECT id, user, device, product, start_ns, end_ns, body FROM sessions
    ORDER BY user, product, start_ns, id;
DROP TABLE sessions;
ALTER TABLE sessions_arrived RENAME TO sessions;
-- first_row..=last_row: consecutive rows of one key; start_ns, end_ns: the earliest
-- start and latest end among them.
CREATE TABLE session_runs (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    PRIMARY KEY (user, first_row)
) WITHOUT ROWID;
-- The sessions kept so far, in runs of 64 by start.
INSERT INTO session_runs (user, product, first_row, last_row, start_ns, end_ns)
    SELECT user, product, MIN(rowid), MAX(rowid), MIN(start_ns), MAX(end_ns) FROM (
        SELECT rowid, user, product, start_ns, end_ns,
               (row_number() OVER (PARTITION BY user, product ORDER BY rowid) - 1) / 64 AS chunk
        FROM sessions)
    GROUP BY user, product, chunk;
-- Usage days by user, then window start: one sync's new days, whatever their product,
-- are neighbours. The index by day is gone: listing days by date scans the table (the
-- index took a page per calendar day a sync touched).
CREATE TABLE usage_days_by_user (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    short_row INTEGER NOT NULL DEFAULT 0,
    drawn TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (user, window_start_ns, product)
) WITHOUT ROWID;
INSERT INTO usage_days_by_user (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn)
    SELECT user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn FROM usage_days;
DROP TABLE usage_days;
ALTER TABLE usage_days_by_user RENAME TO usage_days;
CREATE INDEX usage_days_short ON usage_days (user, product, window_start_ns) WHERE short_row = 1;
-- The ledger without AUTOINCREMENT, which wrote `sqlite_sequence` on every entry: no
-- entry is ever deleted, so the largest `seq` only grows and a plain rowid never
-- hands out one again.
CREATE TABLE ledger_appended (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    team TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    day TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    purchase TEXT,
    tokens INTEGER NOT NULL,
    reason TEXT NOT NULL
);
INSERT INTO ledger_appended (seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason)
    SELECT seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_appended RENAME TO ledger;
"#,
    r#"
-- The ledger in batches: the entries one recomputation books for one key (a sync's
-- new days, an import's reversals and re-bookings) go in one row, numbered from its
-- `seq` on; `entries` is a JSON array of [day, window_start_ns, purchase or null,
-- tokens, reason]. Measured (sync_load 50x50): inserting an entry per day, about 20
-- per 50-session sync, took a sixth of the writer's time; a row per key and sync is
-- a tenth of the rows. The view `ledger` shows the entries one by one as before.
CREATE TABLE ledger_batches (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    team TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    entries TEXT NOT NULL
);
INSERT INTO ledger_batches (seq, at, team, user, product, entries)
    SELECT seq, at, team, user, product, json_array(json_array(day, window_start_ns, purchase, tokens, reason))
    FROM ledger ORDER BY seq;
DROP TABLE ledger;
CREATE VIEW ledger (seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason) AS
    SELECT b.seq + e.key, b.at, b.team, b.user, b.product, e.value ->> 0, e.value ->> 1,
           e.value ->> 2, e.value ->> 3, e.value ->> 4
    FROM ledger_batches AS b, json_each(b.entries) AS e;
"#,
    r#"
-- Sessions in batches: the sessions one sync sent for one product go in one row (up to
-- 32; see `batches`). Measured (callgrind, sync_load 50x50): inserting a row per
-- session was a third of the writer's instructions per session. A session keeps its
-- number (`first_row` + its place in `bodies`); `ends` says where each body ends in
-- `bodies` (4 bytes each, big-endian). The sessions stored so far become batches of
-- one. The view `sessions` shows the sessions one by one, under their numbers.
CREATE TABLE session_batches (
    first_row INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    bodies TEXT NOT NULL,
    ends BLOB NOT NULL
);
INSERT INTO session_batches (first_row, user, device, product, bodies, ends)
    SELECT rowid, user, device, product, '[' || body || ']',
           unhex(printf('%08X', length(CAST(body AS BLOB)) + 1))
    FROM sessions ORDER BY rowid;
DROP TABLE sessions;
CREATE VIEW sessions (row, id, user, device, product, body) AS
    SELECT b.first_row + e.key, e.value ->> 'id', b.user, b.device, b.product, e.value
    FROM session_batches AS b, json_each(b.bodies) AS e;
"#,
    r#"
-- Purchase corrections: a purchase's tokens or expiry set anew, with the values before
-- and after and the admin's reason. Append-only, like the ledger: `purchases` holds a
-- purchase as it stands now, this table how it came to.
CREATE TABLE purchase_corrections (
    id TEXT PRIMARY KEY,
    purchase TEXT NOT NULL,
    at TEXT NOT NULL,
    tokens_before INTEGER NOT NULL,
    tokens_after INTEGER NOT NULL,
    expires_before TEXT NOT NULL,
    expires_after TEXT NOT NULL,
    reason TEXT NOT NULL
);
"#,
];

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
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
        let fail = |r: &Result<(), String>| r.clone().map_err(StoreError::Database);
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

/// Applies the migrations not yet applied; returns the version the database had.
fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let done: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(done)
}

/// The first version whose builds refuse list-shaped sessions: older databases may
/// hold some (see [`repair`]).
const OBJECT_SESSIONS_VERSION: i64 = 9;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = open(path)?;
        // Durability below rests on the write-ahead log (commits are synced by syncing
        // the log file): refuse to run on a database that is not in WAL mode.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "{} is in journal mode {mode}, not WAL (is its file system a network or read-only one?)",
                path.display()
            )));
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
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let checkpointer = open(path)?;
        let db_file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Database(format!("opening {}: {e}", path.display())))?;
        let restart_due = Arc::new(AtomicBool::new(false));
        let (ckpt_tx, ckpt_rx) = mpsc::channel();
        let checkpoints = {
            let restart_due = restart_due.clone();
            thread::Builder::new()
                .name("daymeter-db-checkpoint".into())
                .spawn(move || checkpoint_loop(checkpointer, db_file, ckpt_rx, &restart_due))
                .map_err(|e| StoreError::Database(format!("starting the checkpoint thread: {e}")))?
        };
        let (sync_tx, sync_rx) = mpsc::channel();
        let syncer = {
            let wal = wal.clone();
            thread::Builder::new()
                .name("daymeter-db-sync".into())
                .spawn(move || sync_loop(wal, sync_rx))
                .map_err(|e| StoreError::Database(format!("starting the sync thread: {e}")))?
        };
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
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
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
        .map_err(|e| StoreError::Database(format!("reader task: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer: owns the write connection and the settings every recomputation uses.
///
/// The settings live here, not with the callers, so that an ingest and an import are
/// ordered by the one queue: an ingest applied after an import is priced by the new
/// settings, and the import reprices every key stored before it.
struct Writer {
    conn: Connection,
    memory: Memory,
    /// The write-ahead log, whose size tells whether it has been restarted lately.
    wal: PathBuf,
    /// Set by the checkpoint thread when the log is long and has just been checkpointed.
    restart_due: Arc<AtomicBool>,
    /// Committed groups' answers, to be sent once the log is on disk.
    syncer: Option<(mpsc::Sender<Vec<Reply>>, thread::JoinHandle<()>)>,
    /// Wakes the checkpoint thread after each commit.
    checkpoints: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            self.group(first, &rx);
        }
        // Every committed group is synced and answered before the store reports closed.
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
        if let Some((tx, handle)) = self.checkpoints.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Applies `first` and every job waiting behind it in one transaction and commits
    /// once; the answers go to the syncer, which sends them when the commit is durable.
    ///
    /// No savepoint per job (each would copy every page the job touches first): if a
    /// job fails, the group is rolled back and its jobs are applied again one at a time,
    /// each in a transaction of its own, so that the failing one fails alone.
    fn group(&mut self, first: Job, rx: &mpsc::Receiver<Job>) {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let before = self.memory.settings.clone();
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = e.to_string();
                tracing::error!(error = %e, "could not begin a database transaction; the syncs in this group were not acknowledged and will be retried by their agents");
                for job in jobs {
                    refuse(job, &e).send(&Ok(()));
                }
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut hot = Hot::new(&tx);
        for job in &jobs {
            let outcome = apply(&tx, job, &mut self.memory, &mut hot);
            if outcome.failed() {
                break;
            }
            outcomes.push(outcome);
        }
        drop(hot);
        let applied = started.elapsed();
        let mut failed = outcomes.len() < jobs.len();
        if !failed && let Err(e) = flush_if_due(&tx, &mut self.memory.runs) {
            tracing::warn!(error = %e, "writing out the held session runs failed");
            failed = true;
        }
        if failed {
            drop(tx); // rolled back
            self.memory.rolled_back(before);
            tracing::warn!(
                jobs = jobs.len(),
                "a write failed; applying this group's writes one at a time"
            );
            for job in jobs {
                self.alone(job);
            }
            return;
        }
        let flushed = started.elapsed();
        match tx.commit() {
            Ok(()) => {
                let committed = started.elapsed();
                self.memory.committed();
                let count = jobs.len();
                let replies = jobs.into_iter().zip(outcomes).map(answer).collect();
                let checkpointed = self.deliver(replies);
                let took = started.elapsed();
                if took >= SLOW_GROUP {
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                    tracing::warn!(
                        jobs = count,
                        ms = ms(took),
                        applying_ms = ms(applied),
                        writing_runs_ms = ms(flushed - applied),
                        commit_ms = ms(committed - flushed),
                        checkpoint_ms = ms(took - committed),
                        checkpointed,
                        "a group of writes was slow; the syncs behind it waited"
                    );
                }
            }
            Err(e) => {
                // The group's imports were rolled back with it.
                self.memory.rolled_back(before);
                let e = e.to_string();
                tracing::error!(error = %e, "database commit failed; the syncs in this group were not acknowledged and will be retried by their agents");
                for job in jobs {
                    refuse(job, &e).send(&Ok(()));
                }
            }
        }
    }

    /// Applies one job in a transaction of its own.
    fn alone(&mut self, job: Job) {
        let before = self.memory.settings.clone();
        let committed = self.conn.transaction().map_err(db).and_then(|tx| {
            let outcome = apply(&tx, &job, &mut self.memory, &mut Hot::new(&tx));
            if outcome.failed() {
                return Ok(outcome); // dropping `tx` rolls it back
            }
            flush_if_due(&tx, &mut self.memory.runs)?;
            tx.commit().map(|()| outcome).map_err(db)
        });
        match committed {
            Ok(outcome) if !outcome.failed() => {
                self.memory.committed();
                let reply = answer((job, outcome));
                let _ = self.deliver(vec![reply]);
            }
            Ok(outcome) => {
                self.memory.rolled_back(before);
                answer((job, outcome)).send(&Ok(()));
            }
            Err(e) => {
                self.memory.rolled_back(before);
                refuse(job, &e.to_string()).send(&Ok(()));
            }
        }
    }

    /// Hands committed answers to the syncer; true if the writer then checkpointed.
    fn deliver(&mut self, replies: Vec<Reply>) -> bool {
        let queued = match &self.syncer {
            Some((tx, _)) => tx.send(replies).map_err(|e| e.0),
            None => Err(replies),
        };
        // No syncer (it stopped on a failed sync): nothing is acknowledged.
        if let Err(replies) = queued {
            let e = Err("the write-ahead log could not be synced".to_owned());
            for reply in replies {
                reply.send(&e);
            }
        }
        self.after_commit()
    }

    /// Wakes the checkpoint thread, and lets the log start over once it has grown past
    /// [`WAL_LIMIT`]. SQLite restarts the log at a write only if every frame is
    /// checkpointed, which never happens on its own while the writer is never idle: so
    /// the writer checkpoints the rest itself, between two groups, when the checkpoint
    /// thread has left little to copy (a checkpoint of the whole log here stalled every
    /// group behind it by ~100 ms). A log four times the limit (the checkpoint thread
    /// cannot keep up) is checkpointed here whatever it costs.
    fn after_commit(&mut self) -> bool {
        if let Some((tx, _)) = &self.checkpoints {
            let _ = tx.send(());
        }
        let due = self.restart_due.swap(false, Ordering::Relaxed)
            || std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > 4 * WAL_LIMIT);
        if due && let Err(e) = checkpoint(&self.conn) {
            tracing::warn!(error = %e, "checkpoint by the writer failed; retried after the next pass");
        }
        due
    }
}

/// Makes commits durable and then answers them, while the writer goes on with the next
/// group: the writer commits without syncing (`synchronous = NORMAL`), and this thread
/// syncs the log file (one `fdatasync` for every commit waiting) before any answer of
/// those commits is sent. A sync covers every write made to the file before it, by any
/// descriptor; frames the log later starts over on were checkpointed into the database
/// file and synced there first (SQLite restarts the log only then).
///
/// A failed sync leaves the log's contents unknown: the answers waiting get the error
/// and the syncer stops, so that nothing more is acknowledged until a restart.
fn sync_loop(wal: PathBuf, rx: mpsc::Receiver<Vec<Reply>>) {
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
fn checkpoint_loop(
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
struct Pass {
    log: i64,
    done: i64,
}

/// A passive checkpoint; `None` if another one was running.
fn checkpoint(conn: &Connection) -> Result<Option<Pass>, StoreError> {
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

fn refuse(job: Job, e: &str) -> Reply {
    fn err<T>(e: &str) -> Result<T, StoreError> {
        Err(StoreError::Database(e.to_owned()))
    }
    match job {
        Job::Ingest(ingest, tx) => Reply::Ingest(tx, err(e), ingest),
        Job::AddDevice(_, tx) | Job::PutSettings(_, tx) | Job::AddPurchase(_, tx) => {
            Reply::Unit(tx, err(e))
        }
        Job::Revoke(_, tx) | Job::Reenrol(_, tx) | Job::CorrectPurchase(_, tx) => {
            Reply::Bool(tx, err(e))
        }
    }
}

/// What a job did, before its answer is sent.
enum Outcome {
    Ingest(Result<IngestOutcome, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(Result<bool, StoreError>),
}

impl Outcome {
    fn failed(&self) -> bool {
        match self {
            Outcome::Ingest(r) => r.is_err(),
            Outcome::Unit(r) => r.is_err(),
            Outcome::Bool(r) => r.is_err(),
        }
    }
}

/// A job's answer from what it did.
fn answer((job, outcome): (Job, Outcome)) -> Reply {
    match (job, outcome) {
        (Job::Ingest(ingest, tx), Outcome::Ingest(r)) => Reply::Ingest(tx, r, ingest),
        (
            Job::Revoke(_, tx) | Job::Reenrol(_, tx) | Job::CorrectPurchase(_, tx),
            Outcome::Bool(r),
        ) => Reply::Bool(tx, r),
        (
            Job::AddDevice(_, tx) | Job::PutSettings(_, tx) | Job::AddPurchase(_, tx),
            Outcome::Unit(r),
        ) => Reply::Unit(tx, r),
        (job, _) => refuse(job, "internal error: a job's outcome is of another kind"),
    }
}

/// What the writer holds in memory beside its connection: the committed database plus
/// the open transaction's changes.
struct Memory {
    settings: Arc<Settings>,
    ledgers: Ledgers,
    ids: Ids,
    runs: Runs,
    tails: Tails,
    /// The number the next new session gets, once read (see `batches`).
    next_row: Option<i64>,
    /// The buffer each sync builds its batches in.
    batch: Batch,
    /// Each user's last sync as this writer last recorded it in `users`.
    last_syncs: HashMap<String, DateTime<Utc>>,
}

impl Memory {
    /// The open transaction committed.
    fn committed(&mut self) {
        self.ids.commit();
        self.runs.commit();
    }

    /// The open transaction was rolled back: forget what it changed (`settings`: those
    /// before it).
    fn rolled_back(&mut self, settings: Arc<Settings>) {
        self.settings = settings;
        self.ledgers.clear();
        self.next_row = None;
        self.last_syncs.clear();
        self.ids.rollback();
        self.runs.rollback();
        self.tails.clear();
    }
}

/// Every stored session id, for the writer's index.
fn load_ids(conn: &Connection) -> Result<Ids, StoreError> {
    let started = std::time::Instant::now();
    let count: i64 = conn
        .query_row(
            "SELECT IFNULL(SUM(length(ends)), 0) / 4 FROM session_batches",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let mut ids = Ids::with_capacity(count.max(0) as usize);
    let mut stmt = conn
        .prepare("SELECT first_row, bodies, ends FROM session_batches")
        .map_err(db)?;
    let mut find = conn.prepare(FIND_BATCH).map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let first: i64 = r.get(0).map_err(db)?;
        let batch = stored_batch(first, r.get(1).map_err(db)?, r.get(2).map_err(db)?)?;
        for (row, body) in (first..).zip(batch.iter()) {
            let id = stored_id(body, row)?;
            if let Err(other) = ids.load(&id, row, false) {
                let (at, _, _, theirs) = find_batch(&mut find, other)?;
                let other_id = theirs
                    .session(at, other)
                    .map(|b| stored_id(b, other))
                    .transpose()?;
                if other_id.as_deref() == Some(&*id) {
                    return Err(corrupt(format!(
                        "session {id} is stored twice (rows {other} and {row})"
                    )));
                }
                let _ = ids.load(&id, row, true);
            }
        }
    }
    tracing::info!(
        sessions = ids.len(),
        seconds = started.elapsed().as_secs_f64(),
        "indexed the stored session ids"
    );
    Ok(ids)
}

/// The statements every sync runs.
#[derive(Clone, Copy)]
enum Sql {
    InsertSession,
    FindSession,
    UpdateSession,
    TouchUser,
    PutDay,
    DropDay,
    AddLedger,
    PutUsed,
}

impl Sql {
    const COUNT: usize = 8;

    fn text(self) -> &'static str {
        match self {
            Sql::InsertSession => {
                "INSERT INTO session_batches (first_row, user, device, product, bodies, ends) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            Sql::FindSession => FIND_BATCH,
            Sql::UpdateSession => {
                "UPDATE session_batches SET bodies = ?2, ends = ?3 WHERE first_row = ?1"
            }
            // Recorded to the minute: a user syncing every few seconds does not rewrite
            // this table's page in every group (RFC 3339 in UTC sorts as text).
            Sql::TouchUser => {
                "INSERT INTO users (user, last_sync) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET last_sync = excluded.last_sync WHERE users.last_sync < ?3"
            }
            Sql::PutDay => {
                "INSERT INTO usage_days (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (user, window_start_ns, product) DO UPDATE SET window_end_ns = excluded.window_end_ns,
                   day = excluded.day, plan = excluded.plan, tokens = excluded.tokens, short_row = excluded.short_row,
                   drawn = excluded.drawn"
            }
            Sql::DropDay => {
                "DELETE FROM usage_days WHERE user = ?1 AND product = ?2 AND window_start_ns = ?3"
            }
            Sql::AddLedger => {
                "INSERT INTO ledger_batches (seq, at, team, user, product, entries) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            Sql::PutUsed => "UPDATE purchases SET used = ?2 WHERE id = ?1",
        }
    }
}

/// The statements of [`Sql`], each taken from the connection's statement cache once per
/// transaction rather than at every use: rusqlite's cache hashes a statement's text to
/// find it and clears its bindings when it gets it back, which was a sixth of the
/// writer's instructions with 5-session syncs (callgrind). A statement is taken out for
/// as long as it is used and handed back; the cache gets them all back at the end.
struct Hot<'c> {
    t: &'c Connection,
    held: [Option<rusqlite::CachedStatement<'c>>; Sql::COUNT],
}

impl<'c> Hot<'c> {
    fn new(t: &'c Connection) -> Hot<'c> {
        Hot {
            t,
            held: std::array::from_fn(|_| None),
        }
    }

    fn take(&mut self, sql: Sql) -> Result<rusqlite::CachedStatement<'c>, StoreError> {
        match self.held[sql as usize].take() {
            Some(statement) => Ok(statement),
            None => self.t.prepare_cached(sql.text()).map_err(db),
        }
    }

    fn give_back(&mut self, sql: Sql, statement: rusqlite::CachedStatement<'c>) {
        self.held[sql as usize] = Some(statement);
    }
}

/// Applies one job in the open transaction. A successful import replaces the settings
/// for the jobs after it.
fn apply(t: &Connection, job: &Job, memory: &mut Memory, hot: &mut Hot<'_>) -> Outcome {
    match job {
        Job::Ingest(ingest, _) => Outcome::Ingest(ingest_into(t, ingest, memory, hot)),
        Job::AddDevice(device, _) => Outcome::Unit(add_device(t, device)),
        Job::Revoke(id, _) => Outcome::Bool(
            t.execute("UPDATE devices SET revoked = 1 WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(db),
        ),
        Job::Reenrol(job, _) => Outcome::Bool(reenrol_device(t, &job.0, &job.1)),
        Job::AddPurchase(purchase, _) => {
            Outcome::Unit(add_purchase(t, purchase, &mut memory.ledgers))
        }
        Job::CorrectPurchase(correction, _) => {
            Outcome::Bool(correct_purchase(t, correction, &mut memory.ledgers))
        }
        Job::PutSettings(new, _) => {
            let result = put_settings(t, new, &mut memory.ledgers, &mut memory.runs, hot);
            // Every key was recomputed from the database: the tails are stale.
            memory.tails.clear();
            if result.is_ok() {
                memory.settings = Arc::new(Settings::clone(new));
            }
            Outcome::Unit(result)
        }
    }
}

fn add_device(t: &Connection, d: &Device) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO devices (id, hostname, os, agent_version, token_hash, enrolled_at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![d.id, d.hostname, d.os, d.agent_version, &d.token_hash[..], d.enrolled_at.to_rfc3339(), d.revoked],
    )
    .map_err(db)?;
    Ok(())
}

/// Gives device `d.id` the token hash, hostname, OS and agent version of `d` and lifts
/// its revocation, provided its token hash is still `proof`: of two re-enrolments with
/// the same old token only the first links. `false` when no row had both.
fn reenrol_device(t: &Connection, d: &Device, proof: &[u8; 32]) -> Result<bool, StoreError> {
    let changed = t
        .execute(
            "UPDATE devices SET token_hash = ?1, hostname = ?2, os = ?3, agent_version = ?4, revoked = 0 WHERE id = ?5 AND token_hash = ?6",
            params![&d.token_hash[..], d.hostname, d.os, d.agent_version, d.id, &proof[..]],
        )
        .map_err(db)?;
    Ok(changed > 0)
}

fn ingest_into(
    t: &Connection,
    ingest: &Ingest,
    memory: &mut Memory,
    hot: &mut Hot<'_>,
) -> Result<IngestOutcome, StoreError> {
    let settings = memory.settings.clone();
    let user = ingest.user.as_str();
    // Each session's refusal, by its place in the sync (sessions are applied in
    // product order, answered in the order sent).
    let mut refused: Vec<Option<Problem>> = ingest.sessions.iter().map(|_| None).collect();
    // Per product: the earliest start among the sessions this sync wrote, those
    // sessions, and the rows it added (one run: they are inserted product by product).
    let mut touched: BTreeMap<&str, Touched> = BTreeMap::new();
    // Product by product (a sync names few of them: their ranks, not their names, are
    // compared in the sort).
    let mut products: Vec<&str> = Vec::new();
    for incoming in &ingest.sessions {
        if !products.contains(&&*incoming.session.product) {
            products.push(&incoming.session.product);
        }
    }
    products.sort_unstable();
    let rank = |i: usize| {
        let p = &*ingest.sessions[i].session.product;
        products.iter().position(|q| *q == p).unwrap_or(usize::MAX)
    };
    let mut order: Vec<(usize, usize)> = (0..ingest.sessions.len()).map(|i| (rank(i), i)).collect();
    order.sort_unstable();
    let mut insert = hot.take(Sql::InsertSession)?;
    // Bindings last until rebound.
    insert.raw_bind_parameter(2, user).map_err(db)?;
    insert.raw_bind_parameter(3, &ingest.device).map_err(db)?;
    let mut find = hot.take(Sql::FindSession)?;
    let mut update = hot.take(Sql::UpdateSession)?;
    // The new sessions of the product being applied, written as one batch when the
    // product changes, the batch is full or the sync is done.
    let mut pending = Pending {
        first: 0,
        product: "",
        batch: std::mem::take(&mut memory.batch),
    };
    pending.batch.clear();
    for (_, i) in order {
        let incoming = &ingest.sessions[i];
        let s = &incoming.session;
        // The stored copy of this id, if any; `taken`: its hash is another id's.
        let (found, slot) = memory.ids.find(&s.id);
        let (stored, taken) = match found {
            Lookup::Absent => (None, false),
            Lookup::Found(row) | Lookup::Check(row) => {
                if !pending.batch.is_empty() && row >= pending.first {
                    // Sent twice in this sync: its batch is not written yet.
                    pending.write(&mut insert)?;
                }
                let (first, owner, on, batch) = find_batch(&mut find, row)?;
                let body = batch.session(first, row).ok_or_else(|| {
                    corrupt(format!("session {row} is not in its batch at {first}"))
                })?;
                if stored_id(body, row)? == *s.id {
                    (Some((row, first, owner, on, batch)), false)
                } else {
                    (None, true)
                }
            }
        };
        // Once per session: chrono's conversion to nanoseconds was a twentieth of the
        // writer's instructions when each use made it again.
        let (start, end) = (s.start_nanos(), s.end_nanos());
        let key = touched.entry(&s.product).or_insert_with(|| Touched {
            since: i64::MAX,
            fresh: Vec::new(),
            run: None,
        });
        let wrote = match stored {
            None => {
                if !pending.batch.is_empty()
                    && (pending.product != &*s.product || pending.batch.len() >= BATCH_MAX)
                {
                    pending.write(&mut insert)?;
                }
                let row = match memory.next_row {
                    Some(next) => next,
                    None => next_session_row(t)?,
                };
                if pending.batch.is_empty() {
                    pending.first = row;
                    pending.product = &s.product;
                }
                pending.batch.push(&incoming.body);
                memory.next_row = Some(row + 1);
                memory.ids.insert_at(&s.id, slot, row, taken);
                key.add_row(&mut memory.runs, user, &s.product, row, (start, end));
                true
            }
            Some((row, first, owner, on, mut batch)) => {
                let longer = {
                    let body = batch.session(first, row).unwrap_or_default();
                    let (mut old, _) = read_back(body, row, &mut ZoneCache::new())?;
                    old.user = Some(owner.into());
                    old.device = Some(on.into());
                    if let Some(field) = s.conflict_with(&old) {
                        refused[i] = Some(Problem::ConflictingCopies(field));
                        continue;
                    }
                    s.copy_order(&old).is_gt()
                };
                if longer {
                    batch.replace((row - first) as usize, &incoming.body);
                    update
                        .execute(params![first, batch.bodies(), batch.ends()])
                        .map_err(db)?;
                    key.extend_row(t, &mut memory.runs, user, row, end)?;
                }
                longer
            }
        };
        if wrote {
            key.since = key.since.min(start);
            key.fresh.push(Held::with(s, start, end, incoming.zone));
        }
    }
    if !pending.batch.is_empty() {
        pending.write(&mut insert)?;
    }
    memory.batch = pending.batch;
    hot.give_back(Sql::InsertSession, insert);
    hot.give_back(Sql::FindSession, find);
    hot.give_back(Sql::UpdateSession, update);
    for (product, key) in &mut touched {
        key.close_run(&mut memory.runs, user, product);
    }
    // When the ledger entries are booked, written once for every key.
    let at = ingest.at.to_rfc3339();
    for (product, key) in touched {
        if !key.fresh.is_empty() {
            sync_key(
                t, user, product, &settings, &at, key.since, key.fresh, memory, hot,
            )?;
        }
    }
    let mut outcome = IngestOutcome::default();
    for (incoming, problem) in ingest.sessions.iter().zip(refused) {
        let id = incoming.session.id.to_string();
        match problem {
            None => outcome.accepted.push(id),
            Some(p) => outcome.rejected.push((id, p)),
        }
    }
    outcome.team_remaining = memory
        .ledgers
        .of(t, team_of(&settings.teams, user))?
        .remaining(ingest.at);
    // The statement below changes nothing while the recorded last sync is this recent:
    // skipped then (it was a twentieth of a 5-session sync's writer instructions).
    let stale = ingest.at - LAST_SYNC_RESOLUTION;
    if memory.last_syncs.get(user).is_none_or(|at| *at < stale) {
        let mut touch = hot.take(Sql::TouchUser)?;
        let changed = touch
            .execute(params![user, ingest.at.to_rfc3339(), stale.to_rfc3339()])
            .map_err(db)?;
        hot.give_back(Sql::TouchUser, touch);
        // Unchanged: what is recorded is recent, but not known here.
        if changed > 0 {
            memory.last_syncs.insert(user.to_owned(), ingest.at);
        }
    }
    Ok(outcome)
}

/// New sessions of one sync and product, not written yet (see `batches`).
struct Pending<'s> {
    /// The number of its first session.
    first: i64,
    product: &'s str,
    batch: Batch,
}

impl Pending<'_> {
    /// Writes the batch (`insert` has user and device bound) and empties it.
    fn write(&mut self, insert: &mut rusqlite::CachedStatement<'_>) -> Result<(), StoreError> {
        insert.raw_bind_parameter(1, self.first).map_err(db)?;
        insert.raw_bind_parameter(4, self.product).map_err(db)?;
        insert
            .raw_bind_parameter(5, self.batch.bodies())
            .map_err(db)?;
        insert
            .raw_bind_parameter(6, self.batch.ends())
            .map_err(db)?;
        insert.raw_execute().map_err(db)?;
        self.batch.clear();
        Ok(())
    }
}

/// The batch holding session `row`: its first number, user, device and sessions.
const FIND_BATCH: &str = "SELECT first_row, user, device, bodies, ends FROM session_batches
     WHERE first_row <= ?1 ORDER BY first_row DESC LIMIT 1";

fn find_batch(
    find: &mut rusqlite::Statement<'_>,
    row: i64,
) -> Result<(i64, String, String, Batch), StoreError> {
    let (first, user, device, bodies, ends): (i64, String, String, String, Vec<u8>) = find
        .query_row([row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(db)?;
    Ok((first, user, device, stored_batch(first, bodies, ends)?))
}

/// A batch as read from its row, checked (see [`Batch::from_stored`]).
fn stored_batch(first: i64, bodies: String, ends: Vec<u8>) -> Result<Batch, StoreError> {
    Batch::from_stored(bodies, ends).map_err(|e| corrupt(format!("batch at {first}: {e}")))
}

/// The id of a stored session body.
fn stored_id(body: &str, row: i64) -> Result<String, StoreError> {
    serde_json::from_str::<daymeter_shared::session::IdOnly<'_>>(body)
        .ok()
        .and_then(|i| i.id)
        .map(|id| id.into_owned())
        .ok_or_else(|| corrupt(format!("stored session at row {row} has no id")))
}

/// The number the next stored session gets: after the last one stored.
fn next_session_row(t: &Connection) -> Result<i64, StoreError> {
    let last: Option<i64> = t
        .query_row(
            "SELECT first_row + length(ends) / 4 FROM session_batches ORDER BY first_row DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    Ok(last.unwrap_or(1))
}

/// What one sync did to one key.
struct Touched {
    /// The earliest start among the sessions it wrote.
    since: i64,
    /// The sessions it wrote (new, or longer copies), as a tail holds them.
    fresh: Vec<Held>,
    /// The rows it added, not yet handed to the writer's held runs.
    run: Option<Run>,
}

impl Touched {
    fn add_row(
        &mut self,
        runs: &mut Runs,
        user: &str,
        product: &str,
        row: i64,
        (start, end): (i64, i64),
    ) {
        match &mut self.run {
            Some(run) if run.last + 1 == row => {
                run.last = row;
                run.start = run.start.min(start);
                run.end = run.end.max(end);
            }
            _ => {
                self.close_run(runs, user, product);
                self.run = Some(Run {
                    first: row,
                    last: row,
                    start,
                    end,
                });
            }
        }
    }

    /// A stored session at `row` now ends at `end`: its run's latest end follows,
    /// wherever the run is (this sync's, held by the writer, or written out).
    fn extend_row(
        &mut self,
        t: &Connection,
        runs: &mut Runs,
        user: &str,
        row: i64,
        end: i64,
    ) -> Result<(), StoreError> {
        if let Some(run) = &mut self.run
            && (run.first..=run.last).contains(&row)
        {
            run.end = run.end.max(end);
            return Ok(());
        }
        if runs.extend(user, row, end) {
            return Ok(());
        }
        t.prepare_cached(
            // The user's runs partition their rows: the last one to start at or
            // before `row` holds it.
            "UPDATE session_runs SET end_ns = MAX(end_ns, ?3)
             WHERE user = ?1 AND first_row = (
               SELECT MAX(first_row) FROM session_runs WHERE user = ?1 AND first_row <= ?2)",
        )
        .and_then(|mut s| s.execute(params![user, row, end]))
        .map_err(db)?;
        Ok(())
    }

    fn close_run(&mut self, runs: &mut Runs, user: &str, product: &str) {
        if let Some(run) = self.run.take() {
            runs.push(KeyedRun {
                user: user.to_owned(),
                product: product.to_owned(),
                run,
            });
        }
    }
}

/// Writes the writer's held runs out once enough have gathered.
fn flush_if_due(t: &Connection, runs: &mut Runs) -> Result<(), StoreError> {
    if runs.due() {
        flush_runs(t, runs)?;
    }
    Ok(())
}

/// Writes the writer's held runs to `session_runs` (see `runs`).
fn flush_runs(t: &Connection, runs: &mut Runs) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut put = t
        .prepare_cached(
            "INSERT INTO session_runs (user, product, first_row, last_row, start_ns, end_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db)?;
    for k in runs.take() {
        let r = k.run;
        put.execute(params![k.user, k.product, r.first, r.last, r.start, r.end])
            .map_err(db)?;
    }
    Ok(())
}

/// The runs of the session rows that `session_runs` does not cover yet (those held by
/// the writer when the process last stopped): every row after its largest `last_row`.
fn gather_runs(conn: &Connection) -> Result<Runs, StoreError> {
    let covered: i64 = conn
        .query_row(
            "SELECT IFNULL(MAX(last_row), 0) FROM session_runs",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    // From the batch holding the first session not covered on.
    let mut stmt = conn
        .prepare(
            "SELECT first_row, user, product, bodies, ends FROM session_batches
             WHERE first_row >= IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?1 + 1), 0)
             ORDER BY first_row",
        )
        .map_err(db)?;
    let mut found = stmt.query([covered]).map_err(db)?;
    let mut zones = ZoneCache::new();
    let mut rows = Vec::new();
    while let Some(r) = found.next().map_err(db)? {
        let first: i64 = r.get(0).map_err(db)?;
        let user: String = r.get(1).map_err(db)?;
        let product: String = r.get(2).map_err(db)?;
        let batch = stored_batch(first, r.get(3).map_err(db)?, r.get(4).map_err(db)?)?;
        for (row, body) in (first..).zip(batch.iter()) {
            if row <= covered {
                continue;
            }
            let (s, _) = read_back(body, row, &mut zones)?;
            rows.push((
                row,
                user.clone(),
                product.clone(),
                s.start_nanos(),
                s.end_nanos(),
            ));
        }
    }
    Ok(Runs::gather(rows))
}

/// Recomputes a key after a sync wrote `fresh` (the earliest of which starts at
/// `since`): from its tail in memory, loaded first if it does not reach back to `since`.
#[allow(clippy::too_many_arguments)]
fn sync_key(
    t: &Connection,
    user: &str,
    product: &str,
    settings: &Settings,
    at: &str,
    since: i64,
    fresh: Vec<Held>,
    memory: &mut Memory,
    hot: &mut Hot<'_>,
) -> Result<(), StoreError> {
    let Memory {
        tails,
        ledgers,
        runs,
        ..
    } = memory;
    let tail = match tails.covering(user, product, since) {
        Some(tail) => {
            tail.merge(fresh);
            tail
        }
        None => {
            let tail = load_tail(t, runs, user, product, since, &fresh)?;
            tails.put(user, product, tail)
        }
    };
    let from = tail.resume_point(since);
    settle(
        t,
        user,
        product,
        settings,
        (Cause::Sync, at),
        tail,
        from,
        ledgers,
        hot,
    )?;
    tail.trim();
    Ok(())
}

/// The key's sessions that end at or after `bound`, each with its zone; those in
/// `fresh` (written by the sync being applied) are taken from there rather than parsed.
fn load_sessions(
    t: &Connection,
    held: &Runs,
    user: &str,
    product: &str,
    bound: i64,
    fresh: &HashMap<&str, &Held>,
) -> Result<Vec<Held>, StoreError> {
    let mut runs: Vec<(i64, i64)> = {
        let mut stmt = t
            .prepare_cached(
                "SELECT first_row, last_row FROM session_runs
                 WHERE user = ?1 AND product = ?2 AND end_ns >= ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![user, product, bound], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    // The newest runs, not written out yet: after every written one.
    runs.extend(held.of(user, product, bound).map(|r| (r.first, r.last)));
    // The batches holding rows first..=last: from the one holding `first` on.
    let mut stmt = t
        .prepare_cached(
            "SELECT first_row, bodies, ends FROM session_batches
             WHERE first_row BETWEEN IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?1), ?1) AND ?2
             ORDER BY first_row",
        )
        .map_err(db)?;
    let mut zones = ZoneCache::new();
    let mut out = Vec::new();
    for (first, last) in runs {
        let mut rows = stmt.query(params![first, last]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let at: i64 = r.get(0).map_err(db)?;
            let batch = stored_batch(at, r.get(1).map_err(db)?, r.get(2).map_err(db)?)?;
            for (row, body) in (at..).zip(batch.iter()) {
                if !(first..=last).contains(&row) {
                    continue;
                }
                let (session, zone) = read_back(body, row, &mut zones)?;
                let held = match fresh.get(&*session.id) {
                    Some(held) => Held::clone(held),
                    None => Held::of(&session, zone),
                };
                if held.end >= bound {
                    out.push(held);
                }
            }
        }
    }
    Ok(out)
}

/// Loads a key's tail from the database for a change at `since` (`i64::MIN`: the
/// whole key): from the resume point, pushed back past every session still open at
/// `since`, so that no session before it reaches it.
fn load_tail(
    t: &Connection,
    held: &Runs,
    user: &str,
    product: &str,
    since: i64,
    fresh: &[Held],
) -> Result<Tail, StoreError> {
    let fresh: HashMap<&str, &Held> = fresh.iter().map(|h| (&*h.id, h)).collect();
    let mut bound = since;
    let mut sessions = load_sessions(t, held, user, product, bound, &fresh)?;
    let mut at = since;
    loop {
        let earlier = sessions
            .iter()
            .filter(|s| s.start < at && s.end >= at)
            .map(|s| s.start)
            .min();
        let Some(earlier) = earlier else { break };
        at = earlier;
        if at < bound {
            bound = at;
            sessions = load_sessions(t, held, user, product, bound, &fresh)?;
        }
    }
    sessions.retain(|s| s.start >= at);
    let base = if at == i64::MIN {
        Resume::default()
    } else {
        resume_state(t, user, product, at)?
    };
    let days = stored_days(t, user, product, at)?;
    Ok(Tail::new(at, base, sessions, days))
}

/// The key's stored usage days that start at or after `from`.
fn stored_days(
    t: &Connection,
    user: &str,
    product: &str,
    from: i64,
) -> Result<StoredDays, StoreError> {
    let mut stmt = t
        .prepare_cached(
            "SELECT window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn FROM usage_days
             WHERE user = ?1 AND product = ?2 AND window_start_ns >= ?3",
        )
        .map_err(db)?;
    let found = stmt
        .query_map(params![user, product, from], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .map_err(db)?;
    let mut days = StoredDays::new();
    for row in found {
        let (start, end, day, plan, tokens, short, drawn) = row.map_err(db)?;
        days.insert(
            start,
            StoredDay {
                end,
                day,
                plan,
                tokens,
                short,
                drawn: drawn_of(&drawn)?,
            },
        );
    }
    Ok(days)
}

fn drawn_of(text: &str) -> Result<Drawn, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

/// The walk's state left by the stored usage days that start before `at`.
fn resume_state(t: &Connection, user: &str, product: &str, at: i64) -> Result<Resume, StoreError> {
    let mut resume = Resume::default();
    let mut last = t
        .prepare_cached(
            "SELECT window_start_ns, window_end_ns FROM usage_days
             WHERE user = ?1 AND product = ?2 AND short_row = 0 AND window_start_ns < ?3
             ORDER BY window_start_ns DESC LIMIT 1",
        )
        .map_err(db)?;
    if let Some((start, end)) = last
        .query_row(params![user, product, at], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db)?
    {
        resume.window_start = start;
        resume.window_end = end;
    }
    // The latest end of the count_free rows is the end of the latest of them: a short
    // row starts at or after the end of every row before it (`add_short_rows` in daymeter_shared::accounting).
    let mut reach = t
        .prepare_cached(
            "SELECT window_end_ns FROM usage_days INDEXED BY usage_days_short
             WHERE user = ?1 AND product = ?2 AND short_row = 1 AND window_start_ns < ?3
             ORDER BY window_start_ns DESC LIMIT 1",
        )
        .map_err(db)?;
    if let Some(r) = reach
        .query_row(params![user, product, at], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db)?
    {
        resume.short_reach = r;
    }
    Ok(resume)
}

/// Recomputes one key's usage days from `from` (a resume point of its tail) and writes
/// the difference, booking it in the ledger: a changed or vanished day's entries are
/// reversed, a new or changed day draws from its team's purchases. The tail's days
/// follow. `(cause, at)`: why and when, for the ledger.
#[allow(clippy::too_many_arguments)]
fn settle(
    t: &Connection,
    user: &str,
    product: &str,
    settings: &Settings,
    (cause, at): (Cause, &str),
    tail: &mut Tail,
    from: i64,
    ledgers: &mut Ledgers,
    hot: &mut Hot<'_>,
) -> Result<(), StoreError> {
    let mut rows: Vec<StoredDay> = Vec::new();
    let mut starts: Vec<i64> = Vec::new();
    if let Some(entry) = settings.catalog.get(product) {
        let resume = tail.resume_at(from);
        let spans: Vec<Span<'_>> = tail.sessions[tail.first_from(from)..]
            .iter()
            .map(Held::span)
            .collect();
        let rules = settings.policy.rules();
        let mut windows = Vec::new();
        walk_from(&spans, &rules, &resume, &mut windows);
        let held: Vec<_> = settings
            .entitlements
            .iter()
            .filter(|e| e.user == user && e.product == product)
            .collect();
        let pricing = Pricing {
            tokens_per_day: entry.tokens_per_day,
            entitlements: &held,
        };
        for w in &windows {
            let p = priced(w, &rules, &pricing);
            starts.push(w.start);
            rows.push(StoredDay {
                end: w.end,
                day: daymeter_shared::time::date_text(p.day),
                plan: p.plan.as_str().to_owned(),
                tokens: p.tokens as i64,
                short: w.kind == WindowKind::ShortFree,
                drawn: Drawn::new(),
            });
        }
    }
    let mut stored = tail.days.split_off(&from);
    let team = team_of(&settings.teams, user);
    let mut put = hot.take(Sql::PutDay)?;
    put.raw_bind_parameter(1, user).map_err(db)?;
    put.raw_bind_parameter(2, product).map_err(db)?;
    let mut books = Books {
        t,
        hot,
        entries: Vec::new(),
        booked: 0,
        team,
        user,
        product,
        at,
        ledgers,
        changed: Default::default(),
    };
    for (start, mut row) in starts.into_iter().zip(rows) {
        let before = stored.remove(&start);
        if let Some(old) = before.as_ref().filter(|old| old.same_day(&row)) {
            tail.days.insert(start, old.clone());
            continue;
        }
        let reason = match &before {
            Some(old) => {
                let why = format!("day changed ({})", cause.as_str());
                books.reverse(start, &old.day, &old.drawn, &why)?;
                format!("day recomputed ({})", cause.as_str())
            }
            None if cause == Cause::Sync => "usage".to_owned(),
            None => format!("day added ({})", cause.as_str()),
        };
        if row.tokens > 0 {
            row.drawn = books.charge(
                start,
                &row.day,
                DateTime::from_timestamp_nanos(start),
                row.tokens as u64,
                &reason,
            )?;
        }
        let drawn = serde_json::to_string(&row.drawn).map_err(corrupt)?;
        // User and product are bound once, before the loop.
        put.raw_bind_parameter(3, start).map_err(db)?;
        put.raw_bind_parameter(4, row.end).map_err(db)?;
        put.raw_bind_parameter(5, &row.day).map_err(db)?;
        put.raw_bind_parameter(6, &row.plan).map_err(db)?;
        put.raw_bind_parameter(7, row.tokens).map_err(db)?;
        put.raw_bind_parameter(8, row.short).map_err(db)?;
        put.raw_bind_parameter(9, &drawn).map_err(db)?;
        put.raw_execute().map_err(db)?;
        tail.days.insert(start, row);
    }
    books.hot.give_back(Sql::PutDay, put);
    if !stored.is_empty() {
        let mut drop_row = books.hot.take(Sql::DropDay)?;
        for (start, old) in &stored {
            drop_row
                .execute(params![user, product, start])
                .map_err(db)?;
            let why = format!("day removed ({})", cause.as_str());
            books.reverse(*start, &old.day, &old.drawn, &why)?;
        }
        books.hot.give_back(Sql::DropDay, drop_row);
    }
    books.save()
}

/// The teams' purchases and what each has paid for: what is committed plus the open
/// transaction's changes. Owned by the writer, the only one that changes them; a team is
/// loaded on first use, and everything is dropped when a transaction is rolled back.
#[derive(Default)]
struct Ledgers {
    teams: HashMap<String, Ledger>,
    /// The seq of the next ledger entry; read from the database at first use.
    next_seq: Option<i64>,
}

impl Ledgers {
    fn of(&mut self, t: &Connection, team: &str) -> Result<&mut Ledger, StoreError> {
        if !self.teams.contains_key(team) {
            let ledger = load_ledger(t, team)?;
            self.teams.insert(team.to_owned(), ledger);
        }
        self.teams
            .get_mut(team)
            .ok_or_else(|| corrupt("ledger not loaded"))
    }

    /// Takes `n` ledger seqs: the first of them.
    fn take_seqs(&mut self, t: &Connection, n: i64) -> Result<i64, StoreError> {
        let next = match self.next_seq {
            Some(next) => next,
            None => t
                .query_row(
                    "SELECT seq + json_array_length(entries) FROM ledger_batches ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(1),
        };
        self.next_seq = Some(next + n);
        Ok(next)
    }

    /// Forgets what may include changes rolled back.
    fn clear(&mut self) {
        self.teams.clear();
        self.next_seq = None;
    }
}

/// Ledger bookings of one key's recomputation.
struct Books<'b, 'c> {
    t: &'b Connection,
    hot: &'b mut Hot<'c>,
    /// The entries booked so far, as the JSON array `ledger_batches.entries` holds.
    entries: Vec<u8>,
    /// How many.
    booked: i64,
    team: &'b str,
    user: &'b str,
    product: &'b str,
    /// When the entries are booked (RFC 3339).
    at: &'b str,
    ledgers: &'b mut Ledgers,
    /// Purchases whose use changed, to write back.
    changed: std::collections::BTreeSet<String>,
}

impl Books<'_, '_> {
    fn ledger(&mut self) -> Result<&mut Ledger, StoreError> {
        self.ledgers.of(self.t, self.team)
    }

    /// Books an entry; [`Books::save`] writes them all in one batch.
    fn entry(
        &mut self,
        day: &str,
        start: i64,
        purchase: Option<&str>,
        tokens: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.entries
            .push(if self.booked == 0 { b'[' } else { b',' });
        serde_json::to_writer(&mut self.entries, &(day, start, purchase, tokens, reason))
            .map_err(corrupt)?;
        self.booked += 1;
        Ok(())
    }

    /// Books a day's tokens against the purchases active at its window start; returns
    /// what the day's entries now hold.
    fn charge(
        &mut self,
        start: i64,
        day: &str,
        window_start: DateTime<Utc>,
        tokens: u64,
        reason: &str,
    ) -> Result<Drawn, StoreError> {
        let draw = self.ledger()?.draw(window_start, tokens);
        let mut drawn = Drawn::with_capacity(draw.parts.len() + 1);
        for (purchase, n) in &draw.parts {
            self.entry(day, start, Some(purchase), *n as i64, reason)?;
            self.changed.insert(purchase.clone());
            drawn.push((Some(purchase.clone()), *n as i64));
        }
        if draw.unfunded > 0 {
            self.entry(day, start, None, draw.unfunded as i64, reason)?;
            drawn.push((None, draw.unfunded as i64));
        }
        Ok(drawn)
    }

    /// Reverses what a day's entries still hold (`drawn`, from its stored row),
    /// purchase by purchase, under the day they were booked on.
    fn reverse(
        &mut self,
        start: i64,
        day: &str,
        drawn: &Drawn,
        reason: &str,
    ) -> Result<(), StoreError> {
        for (purchase, tokens) in drawn {
            self.entry(day, start, purchase.as_deref(), -tokens, reason)?;
            if let Some(p) = purchase {
                self.ledger()?.give_back(p, (*tokens).max(0) as u64);
                self.changed.insert(p.clone());
            }
        }
        Ok(())
    }

    /// Writes the booked entries (one batch) and what the purchases have paid for.
    fn save(mut self) -> Result<(), StoreError> {
        if self.booked > 0 {
            self.entries.push(b']');
            // Bound as text: SQLite's JSON functions read a blob as its binary JSON.
            let entries = std::str::from_utf8(&self.entries).map_err(corrupt)?;
            let seq = self.ledgers.take_seqs(self.t, self.booked)?;
            let mut add = self.hot.take(Sql::AddLedger)?;
            add.execute(params![
                seq,
                self.at,
                self.team,
                self.user,
                self.product,
                entries
            ])
            .map_err(db)?;
            self.hot.give_back(Sql::AddLedger, add);
        }
        if self.changed.is_empty() {
            return Ok(());
        }
        let changed = std::mem::take(&mut self.changed);
        let mut put = self.hot.take(Sql::PutUsed)?;
        let ledger = self.ledgers.of(self.t, self.team)?;
        for id in &changed {
            let used = ledger.used.get(id).copied().unwrap_or(0);
            put.execute(params![id, used as i64]).map_err(db)?;
        }
        self.hot.give_back(Sql::PutUsed, put);
        Ok(())
    }
}

fn load_ledger(t: &Connection, team: &str) -> Result<Ledger, StoreError> {
    let mut ledger = Ledger::default();
    let mut stmt = t
        .prepare_cached("SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases WHERE team = ?1")
        .map_err(db)?;
    let rows = stmt.query_map([team], purchase_row).map_err(db)?;
    for row in rows {
        let (purchase, used) = row.map_err(db)?;
        let purchase = purchase?;
        ledger.used.insert(purchase.id.clone(), used);
        ledger.purchases.push(purchase);
    }
    Ok(ledger)
}

type PurchaseRow = (Result<Purchase, StoreError>, u64);

fn purchase_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PurchaseRow> {
    let when = |s: String| {
        DateTime::parse_from_rfc3339(&s)
            .map(|d| d.to_utc())
            .map_err(corrupt)
    };
    let (bought, expires): (String, String) = (r.get(3)?, r.get(4)?);
    let purchase = (|| {
        Ok(Purchase {
            id: r.get(0).map_err(db)?,
            team: r.get(1).map_err(db)?,
            tokens: r.get::<_, i64>(2).map_err(db)?.max(0) as u64,
            purchased_at: when(bought)?,
            expires_at: when(expires)?,
        })
    })();
    Ok((purchase, r.get::<_, i64>(5)?.max(0) as u64))
}

fn add_purchase(t: &Connection, p: &Purchase, ledgers: &mut Ledgers) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO purchases (id, team, tokens, purchased_at, expires_at, used) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
        params![p.id, p.team, p.tokens as i64, p.purchased_at.to_rfc3339(), p.expires_at.to_rfc3339()],
    )
    .map_err(db)?;
    if let Some(ledger) = ledgers.teams.get_mut(&p.team) {
        ledger.purchases.push(p.clone());
    }
    Ok(())
}

/// Sets a purchase's tokens and expiry anew and records the correction beside it.
/// Days it already paid for stay paid (the ledger is never rewritten); what it can
/// still pay follows the new values. False: no such purchase.
fn correct_purchase(
    t: &Connection,
    c: &PurchaseCorrection,
    ledgers: &mut Ledgers,
) -> Result<bool, StoreError> {
    let recorded = t
        .execute(
            "INSERT INTO purchase_corrections
                 (id, purchase, at, tokens_before, tokens_after, expires_before, expires_after, reason)
             SELECT ?1, id, ?3, tokens, ?4, expires_at, ?5, ?6 FROM purchases WHERE id = ?2",
            params![
                c.id,
                c.purchase,
                c.at.to_rfc3339(),
                c.tokens as i64,
                c.expires_at.to_rfc3339(),
                c.reason
            ],
        )
        .map_err(db)?;
    if recorded == 0 {
        return Ok(false);
    }
    t.execute(
        "UPDATE purchases SET tokens = ?2, expires_at = ?3 WHERE id = ?1",
        params![c.purchase, c.tokens as i64, c.expires_at.to_rfc3339()],
    )
    .map_err(db)?;
    for ledger in ledgers.teams.values_mut() {
        for p in ledger.purchases.iter_mut().filter(|p| p.id == c.purchase) {
            p.tokens = c.tokens;
            p.expires_at = c.expires_at;
        }
    }
    Ok(true)
}

fn put_settings(
    t: &Connection,
    settings: &Settings,
    ledgers: &mut Ledgers,
    runs: &mut Runs,
    hot: &mut Hot<'_>,
) -> Result<(), StoreError> {
    // Every key is recomputed from the database below: its runs must all be there.
    flush_runs(t, runs)?;
    let mut put = t
        .prepare_cached("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .map_err(db)?;
    put.execute(params![
        "policy",
        serde_json::to_string(&settings.policy).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "catalog",
        serde_json::to_string(&settings.catalog).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "teams",
        serde_json::to_string(&settings.teams).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "entitlements",
        serde_json::to_string(&settings.entitlements).map_err(corrupt)?
    ])
    .map_err(db)?;
    let keys: Vec<(String, String)> = {
        let mut stmt = t
            .prepare("SELECT DISTINCT user, product FROM session_runs")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let now = Utc::now().to_rfc3339();
    for (user, product) in keys {
        let mut tail = load_tail(t, runs, &user, &product, i64::MIN, &[])?;
        settle(
            t,
            &user,
            &product,
            settings,
            (Cause::Import, &now),
            &mut tail,
            i64::MIN,
            ledgers,
            hot,
        )?;
    }
    Ok(())
}

fn read_settings(conn: &Connection) -> Result<Settings, StoreError> {
    let mut settings = Settings::default();
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM settings")
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?;
    for row in rows {
        let (key, value) = row.map_err(db)?;
        match key.as_str() {
            "policy" => settings.policy = serde_json::from_str(&value).map_err(corrupt)?,
            "catalog" => settings.catalog = serde_json::from_str(&value).map_err(corrupt)?,
            "entitlements" => {
                settings.entitlements = serde_json::from_str(&value).map_err(corrupt)?
            }
            "teams" => settings.teams = serde_json::from_str(&value).map_err(corrupt)?,
            _ => {}
        }
    }
    Ok(settings)
}

fn day_start_ns(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_nanos_opt().unwrap_or_default())
}

impl Store for SqliteStore {
    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, hostname, os, agent_version, token_hash, enrolled_at, revoked FROM devices")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, bool>(6)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, hostname, os, agent_version, hash, enrolled_at, revoked) = row.map_err(db)?;
                out.push(Device {
                    id,
                    hostname,
                    os,
                    agent_version,
                    token_hash: hash.try_into().map_err(|_| corrupt("token hash is not 32 bytes"))?,
                    enrolled_at: DateTime::parse_from_rfc3339(&enrolled_at).map_err(corrupt)?.to_utc(),
                    revoked,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_device(&self, device: Device) -> Result<(), StoreError> {
        self.write(|tx| Job::AddDevice(Box::new(device), tx)).await
    }

    async fn revoke_device(&self, id: String) -> Result<bool, StoreError> {
        self.write(|tx| Job::Revoke(id, tx)).await
    }

    async fn reenrol_device(&self, device: Device, proof: [u8; 32]) -> Result<bool, StoreError> {
        self.write(|tx| Job::Reenrol(Box::new((device, proof)), tx))
            .await
    }

    async fn ingest(&self, ingest: Ingest) -> Result<IngestOutcome, StoreError> {
        self.write(|tx| Job::Ingest(Box::new(ingest), tx)).await
    }

    async fn settings(&self) -> Result<Settings, StoreError> {
        self.read(read_settings).await
    }

    async fn put_settings(&self, settings: Settings) -> Result<(), StoreError> {
        self.write(|tx| Job::PutSettings(Box::new(settings), tx))
            .await
    }

    async fn usage_days(
        &self,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        // Days are stored as `YYYY-MM-DD`, which sorts as text; a missing bound is NULL
        // (not a sentinel date, whose text form would not sort among them).
        let (from, to) = (from.map(|d| d.to_string()), to.map(|d| d.to_string()));
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT user, product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
                     WHERE (?1 IS NULL OR day >= ?1) AND (?2 IS NULL OR day <= ?2)
                     ORDER BY user, product, window_start_ns",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![from, to], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (user, product, day, start, end, plan, tokens) = row.map_err(db)?;
                out.push(UsageDay {
                    user: user.into(),
                    product: product.into(),
                    day: day.parse().map_err(corrupt)?,
                    window_start: DateTime::from_timestamp_nanos(start),
                    window_end: DateTime::from_timestamp_nanos(end),
                    plan: serde_json::from_value(serde_json::Value::String(plan)).map_err(corrupt)?,
                    tokens: tokens as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<StoredSession>, StoreError> {
        self.read(move |c| {
            let from = filter.from.map_or(i64::MIN, day_start_ns);
            let to = filter
                .to
                .and_then(|d| d.succ_opt())
                .map_or(i64::MAX, day_start_ns);
            let mut stmt = c
                .prepare(
                    "SELECT first_row, user, device, bodies, ends FROM session_batches
                     WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR product = ?2)",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![filter.user, filter.product])
                .map_err(db)?;
            let mut zones = ZoneCache::new();
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                let first: i64 = r.get(0).map_err(db)?;
                let user: String = r.get(1).map_err(db)?;
                let device: String = r.get(2).map_err(db)?;
                let batch = stored_batch(first, r.get(3).map_err(db)?, r.get(4).map_err(db)?)?;
                for (row, body) in (first..).zip(batch.iter()) {
                    let (mut s, _) = read_back(body, row, &mut zones)?;
                    if s.start_nanos() >= to || s.end_nanos() < from {
                        continue;
                    }
                    s.user = Some(user.clone().into());
                    s.device = Some(device.clone().into());
                    out.push(s.into_owned());
                }
            }
            out.sort_by(|a, b| {
                (&a.user, &a.product, a.start_nanos(), &a.id).cmp(&(
                    &b.user,
                    &b.product,
                    b.start_nanos(),
                    &b.id,
                ))
            });
            Ok(out)
        })
        .await
    }

    async fn current_windows(
        &self,
        user: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        let at = at.timestamp_nanos_opt().unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
                     WHERE user = ?1 AND window_end_ns > ?2 AND window_start_ns <= ?2 ORDER BY product, window_start_ns",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![user, at], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (product, day, start, end, plan, tokens) = row.map_err(db)?;
                out.push(UsageDay {
                    user: user.clone().into(),
                    product: product.into(),
                    day: day.parse().map_err(corrupt)?,
                    window_start: DateTime::from_timestamp_nanos(start),
                    window_end: DateTime::from_timestamp_nanos(end),
                    plan: serde_json::from_value(serde_json::Value::String(plan)).map_err(corrupt)?,
                    tokens: tokens.max(0) as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_purchase(&self, purchase: Purchase) -> Result<(), StoreError> {
        self.write(|tx| Job::AddPurchase(Box::new(purchase), tx))
            .await
    }

    async fn purchase(&self, id: String) -> Result<Option<Purchase>, StoreError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases WHERE id = ?1",
                    [&id],
                    purchase_row,
                )
                .optional()
                .map_err(db)?;
            row.map(|(p, _)| p).transpose()
        })
        .await
    }

    async fn correct_purchase(&self, correction: PurchaseCorrection) -> Result<bool, StoreError> {
        self.write(|tx| Job::CorrectPurchase(Box::new(correction), tx))
            .await
    }

    async fn balances(
        &self,
        at: DateTime<Utc>,
        settings: Settings,
    ) -> Result<Vec<Balance>, StoreError> {
        self.read(move |c| {
            let mut teams: BTreeMap<String, Vec<PurchaseState>> = settings.teams.keys().map(|t| (t.clone(), Vec::new())).collect();
            let mut stmt = c
                .prepare("SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases ORDER BY expires_at, id")
                .map_err(db)?;
            for row in stmt.query_map([], purchase_row).map_err(db)? {
                let (purchase, used) = row.map_err(db)?;
                let purchase = purchase?;
                teams.entry(purchase.team.clone()).or_default().push(PurchaseState { purchase, used });
            }
            let mut unfunded: BTreeMap<String, i64> = BTreeMap::new();
            let mut stmt = c.prepare("SELECT team, SUM(tokens) FROM ledger WHERE purchase IS NULL GROUP BY team").map_err(db)?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db)? {
                let (team, n) = row.map_err(db)?;
                teams.entry(team.clone()).or_default();
                unfunded.insert(team, n);
            }
            Ok(teams
                .into_iter()
                .map(|(team, purchases)| {
                    let remaining = purchases
                        .iter()
                        .filter(|p| p.purchase.active_at(at))
                        .map(|p| p.purchase.tokens.saturating_sub(p.used))
                        .sum();
                    let low_balance = settings.teams.get(&team).and_then(|t| t.low_balance);
                    Balance {
                        unfunded: unfunded.get(&team).copied().unwrap_or(0).max(0) as u64,
                        low: low_balance.is_some_and(|l| remaining < l),
                        low_balance,
                        remaining,
                        purchases,
                        team,
                    }
                })
                .collect())
        })
        .await
    }

    async fn ledger(
        &self,
        team: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason FROM ledger
                     WHERE (?1 IS NULL OR team = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(rusqlite::params![team, after.unwrap_or(i64::MIN), limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, String>(9)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, team, user, product, day, start, purchase, tokens, reason) = row.map_err(db)?;
                out.push(LedgerEntry {
                    seq,
                    at: DateTime::parse_from_rfc3339(&at).map_err(corrupt)?.to_utc(),
                    team,
                    user,
                    product,
                    day,
                    window_start: DateTime::from_timestamp_nanos(start),
                    purchase,
                    tokens,
                    reason,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn team_remaining(&self, team: String, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.read(move |c| Ok(load_ledger(c, &team)?.remaining(at)))
            .await
    }

    async fn longest_session(&self) -> Result<i64, StoreError> {
        // SQLite's julianday reads RFC 3339 with its offset; a scan of every stored
        // body, which only an import that changes the window pays.
        self.read(|c| {
            let days: Option<f64> = c
                .query_row(
                    "SELECT max(julianday(coalesce(e.value ->> 'end', e.value ->> 'last_seen'))
                                - julianday(e.value ->> 'start'))
                     FROM session_batches AS b, json_each(b.bodies) AS e",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(days.map_or(0, |d| (d * 86_400.0).ceil() as i64))
        })
        .await
    }

    async fn last_sync(&self, user: String) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |c| {
            let at: Option<String> = c
                .query_row(
                    "SELECT last_sync FROM users WHERE user = ?1",
                    [&user],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            at.map(|a| {
                DateTime::parse_from_rfc3339(&a)
                    .map(|d| d.to_utc())
                    .map_err(corrupt)
            })
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Incoming;
    use daymeter_shared::catalog::Product;
    use daymeter_shared::policy::{Rollover, ShortSessions};
    use daymeter_shared::session::OwnedSession;
    use daymeter_shared::session::RawSession;
    use daymeter_shared::time::ZoneCache;

    fn temp_db(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("daymeter-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("c.db")
    }

    fn session(id: &str, start: &str, end: &str) -> OwnedSession {
        let text = serde_json::json!({
            "id": id, "product": "acad", "start": start, "end": end, "tz": "Europe/Berlin"
        })
        .to_string();
        let raw: RawSession<'_> = serde_json::from_str(&text).unwrap();
        let (mut s, _) = raw.check(&mut ZoneCache::new()).unwrap();
        s.user = Some("sophie".into());
        s.device = Some("ws-1".into());
        s.into_owned()
    }

    /// Sophie's sessions on ws-1, synced now.
    fn ingest_of(sessions: &[OwnedSession]) -> Ingest {
        let with_zones = sessions.iter().map(|s| {
            let zone = Zone::of(s.tz.as_deref(), &s.start).unwrap();
            (s.clone(), zone)
        });
        Ingest::new("sophie".into(), "ws-1".into(), with_zones, Utc::now()).unwrap()
    }

    fn settings(policy: Policy) -> Settings {
        let mut s = Settings {
            policy,
            ..Settings::default()
        };
        s.catalog.insert(
            "acad".into(),
            Product {
                name: None,
                tokens_per_day: 7,
                matches: vec![],
                rate_confirmed: None,
            },
        );
        s
    }

    /// What `replay` says for the same sessions.
    fn replayed(sessions: &[OwnedSession], settings: &Settings) -> Vec<UsageDay<'static>> {
        let scenario = serde_json::json!({
            "policy": settings.policy, "catalog": settings.catalog, "sessions": sessions,
        });
        daymeter_shared::scenario::replay(scenario.to_string().as_bytes())
            .unwrap()
            .usage_days
    }

    use daymeter_shared::policy::Policy;

    /// A year of sessions, some over night, some short, sent in batches in an order
    /// that exercises resuming: forward, then a late batch from the past.
    fn history() -> Vec<OwnedSession> {
        let mut out = Vec::new();
        for day in 1..=60 {
            let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(day);
            let at = |h: u32, m: u32| format!("{d}T{h:02}:{m:02}:00+01:00");
            out.push(session(&format!("a{day}"), &at(9, 0), &at(12, 0)));
            out.push(session(&format!("s{day}"), &at(13, 0), &at(13, 3)));
            if day % 7 == 0 {
                let next = d + chrono::Days::new(2);
                out.push(session(
                    &format!("n{day}"),
                    &at(17, 0),
                    &format!("{next}T08:10:00+01:00"),
                ));
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn settings_survive_a_reopen_and_price_the_ingests_queued_after_them() {
        let path = temp_db("settings");
        let store = SqliteStore::open(&path).unwrap();
        let mut s = settings(Policy::default());
        s.teams.insert(
            "design".into(),
            daymeter_shared::ledger::Team {
                users: vec!["sophie".into()],
                low_balance: Some(50),
            },
        );
        store.put_settings(s.clone()).await.unwrap();
        let first = session(
            "p1",
            "2026-02-02T09:00:00+01:00",
            "2026-02-02T12:00:00+01:00",
        );
        let ingest = |sessions: Vec<OwnedSession>| ingest_of(&sessions);
        store.ingest(ingest(vec![first])).await.unwrap();
        // A new rate, then a sync queued right behind it: both days at the new rate.
        let mut repriced = s.clone();
        if let Some(p) = repriced.catalog.get_mut("acad") {
            p.tokens_per_day = 9;
        }
        let second = session(
            "p2",
            "2026-02-04T09:00:00+01:00",
            "2026-02-04T12:00:00+01:00",
        );
        let (a, b) = tokio::join!(
            store.put_settings(repriced.clone()),
            store.ingest(ingest(vec![second]))
        );
        a.unwrap();
        b.unwrap();
        let days = store.usage_days(None, None).await.unwrap();
        assert_eq!(days.len(), 2);
        assert!(days.iter().all(|d| d.tokens == 9), "{days:?}");
        store.close();
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.settings().await.unwrap(), repriced);
        let day = |s: &str| s.parse::<NaiveDate>().ok();
        assert_eq!(
            store
                .usage_days(day("2026-02-03"), None)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .usage_days(None, day("2026-02-03"))
                .await
                .unwrap()
                .len(),
            1
        );
        store.close();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A database written before usage days recorded what they drew: the migration
    /// reads it from the ledger, and a later re-pricing reverses exactly that.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_list_shaped_session_stored_by_an_earlier_build_is_repaired_at_open() {
        let path = temp_db("repair-list");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            for sql in &MIGRATIONS[..8] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 8).unwrap();
            let mut batch = Batch::new();
            batch.push(
                r#"["s-list",null,null,"acad",null,"2026-02-02T09:00:00Z","2026-02-02T17:00:00Z"]"#,
            );
            batch.push(r#"{"id":"s-obj","product":"acad","start":"2026-02-03T09:00:00Z","end":"2026-02-03T17:00:00Z"}"#);
            conn.execute(
                "INSERT INTO session_batches (first_row, user, device, product, bodies, ends)
                 VALUES (1, 'sophie', 'ws-1', 'acad', ?1, ?2)",
                params![batch.bodies(), batch.ends()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).expect("opens despite the list-shaped session");
        let stored = store.sessions(SessionFilter::default()).await.unwrap();
        let ids: Vec<&str> = stored.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["s-list", "s-obj"]);
        assert_eq!(
            stored[0].end.map(|e| e.to_rfc3339()),
            Some("2026-02-02T17:00:00+00:00".to_owned())
        );
        store.close();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn migrated_days_keep_what_they_drew_and_a_repricing_reverses_it() {
        let path = temp_db("migrate-drawn");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let s = session(
            "0193-m",
            "2026-02-02T09:00:00+01:00",
            "2026-02-02T17:00:00+01:00",
        );
        let start = s.start_nanos();
        let day_ns = 24 * 3600 * 1_000_000_000_i64;
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            conn.execute(
                "INSERT INTO sessions (id, user, device, product, start_ns, end_ns, body)
                 VALUES (?1, 'sophie', 'ws-1', 'acad', ?2, ?3, ?4)",
                params![
                    &*s.id,
                    start,
                    s.end_nanos(),
                    serde_json::to_string(&s).unwrap()
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO purchases (id, team, tokens, purchased_at, expires_at, used)
                 VALUES ('p1', 'default', 4, '2026-01-01T00:00:00+00:00', '2027-01-01T00:00:00+00:00', 4)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO usage_days (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row)
                 VALUES ('sophie', 'acad', ?1, ?2, '2026-02-02', 'flex', 7, 0)",
                params![start, start + day_ns],
            )
            .unwrap();
            // The day drew 4 from p1 and 3 unfunded; an earlier booking was reversed.
            for (purchase, tokens) in [
                (Some("p1"), 2),
                (Some("p1"), -2),
                (Some("p1"), 4),
                (None, 3),
            ] {
                conn.execute(
                    "INSERT INTO ledger (at, team, user, product, day, window_start_ns, purchase, tokens, reason)
                     VALUES ('2026-02-03T00:00:00+00:00', 'default', 'sophie', 'acad', '2026-02-02', ?1, ?2, ?3, 'usage')",
                    params![start, purchase, tokens],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let look = Connection::open(&path).unwrap();
        let drawn: String = look
            .query_row("SELECT drawn FROM usage_days", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            drawn_of(&drawn).unwrap(),
            vec![(None, 3), (Some("p1".into()), 4)]
        );
        let kept = store.sessions(SessionFilter::default()).await.unwrap();
        assert_eq!(kept.len(), 1, "the sessions are kept");
        // The migrated session's id is known: a copy is a copy, another user's is a conflict.
        let again = store.ingest(ingest_of(&kept)).await.unwrap();
        assert_eq!(again.accepted.len(), 1);
        let mut stolen = kept[0].clone();
        stolen.user = Some("tom".into());
        let with_zone = (
            stolen.clone(),
            Zone::of(stolen.tz.as_deref(), &stolen.start).unwrap(),
        );
        let theirs = Ingest::new("tom".into(), "ws-9".into(), [with_zone], Utc::now()).unwrap();
        let refused = store.ingest(theirs).await.unwrap();
        assert_eq!(refused.rejected.len(), 1, "{refused:?}");
        let runs: i64 = look
            .query_row("SELECT COUNT(*) FROM session_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 1, "the migrated session is in a run of its key");

        let mut repriced = settings(Policy::default());
        if let Some(p) = repriced.catalog.get_mut("acad") {
            p.tokens_per_day = 10;
        }
        store.put_settings(repriced).await.unwrap();
        let sum = |filter: &str| -> i64 {
            look.query_row(
                &format!("SELECT COALESCE(SUM(tokens), 0) FROM ledger WHERE window_start_ns = ?1 AND {filter}"),
                [start],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(
            sum("reason LIKE 'day changed%'"),
            -7,
            "the reversal takes back exactly what the day drew"
        );
        assert_eq!(sum("1"), 10, "the day now holds its new price");
        assert_eq!(
            sum("purchase = 'p1'"),
            4,
            "p1 was given back, then drawn again"
        );
        assert_eq!(sum("purchase IS NULL"), 6);
        let drawn: String = look
            .query_row("SELECT drawn FROM usage_days", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            drawn_of(&drawn).unwrap(),
            vec![(Some("p1".into()), 4), (None, 6)]
        );
        store.close();
    }

    /// A user's last sync is recorded to the minute: a sync less than a minute after
    /// the recorded one leaves it, a later one moves it, also after a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn last_sync_is_recorded_to_the_minute() {
        let path = temp_db("last-sync");
        let t0 = Utc::now();
        let at = |secs: i64| t0 + chrono::TimeDelta::seconds(secs);
        let sync = |secs: i64| {
            Ingest::new("sophie".into(), "ws-1".into(), std::iter::empty(), at(secs)).unwrap()
        };
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.last_sync("sophie".into()).await.unwrap(), None);
        for (secs, recorded) in [(0, 0), (30, 0), (59, 0), (61, 61), (90, 61)] {
            store.ingest(sync(secs)).await.unwrap();
            assert_eq!(
                store.last_sync("sophie".into()).await.unwrap(),
                Some(at(recorded)),
                "after a sync at +{secs} s"
            );
        }
        store.close();
        drop(store);
        store = SqliteStore::open(&path).unwrap();
        for (secs, recorded) in [(100, 61), (125, 125)] {
            store.ingest(sync(secs)).await.unwrap();
            assert_eq!(
                store.last_sync("sophie".into()).await.unwrap(),
                Some(at(recorded)),
                "after a restart and a sync at +{secs} s"
            );
        }
    }

    /// A sync of more sessions than a batch holds, naming one id twice (the running
    /// copy, then the closed one) and repeating an id stored earlier: every id is stored
    /// once, as its longer copy, across batches and a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_id_sent_twice_in_one_sync_is_stored_once_as_its_longer_copy() {
        let path = temp_db("twice");
        let settings = settings(Policy::default());
        let mut store = SqliteStore::open(&path).unwrap();
        store.put_settings(settings.clone()).await.unwrap();
        let all = history();
        let (first, rest) = all.split_at(5);
        store.ingest(ingest_of(first)).await.unwrap();
        let mut sync: Vec<OwnedSession> = rest[..BATCH_MAX + 8].to_vec();
        let running = |s: &OwnedSession| {
            let mut r = s.clone();
            r.end = Some(r.start + chrono::TimeDelta::minutes(1));
            r
        };
        // Closed copy in a later batch than its running copy, then in the same one
        // (not written yet when the closed copy comes).
        let (a, b) = (running(&sync[BATCH_MAX + 2]), running(&sync[BATCH_MAX + 6]));
        sync.insert(3, a);
        sync.insert(BATCH_MAX + 3, b);
        sync.push(first[1].clone());
        let outcome = store.ingest(ingest_of(&sync)).await.unwrap();
        assert_eq!(outcome.accepted.len(), sync.len());
        assert!(outcome.rejected.is_empty());
        let mut expected: Vec<OwnedSession> = first.to_vec();
        expected.extend_from_slice(&rest[..BATCH_MAX + 8]);
        for _ in 0..2 {
            let listed = store.sessions(SessionFilter::default()).await.unwrap();
            let mut ids: Vec<&str> = listed.iter().map(|s| &*s.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!((listed.len(), ids.len()), (expected.len(), expected.len()));
            for s in &expected {
                let stored = listed.iter().find(|l| l.id == s.id).unwrap();
                assert_eq!(stored.end, s.end, "{}", s.id);
            }
            assert_eq!(
                store.usage_days(None, None).await.unwrap(),
                replayed(&expected, &settings)
            );
            store.close();
            drop(store);
            store = SqliteStore::open(&path).unwrap();
            // After the restart, the ids come back from the batches: nothing is new.
            let again = store.ingest(ingest_of(&sync)).await.unwrap();
            assert_eq!(again.accepted.len(), sync.len());
        }
    }

    /// The stored body is the record as the agent sent it (spacing, field order and
    /// offsets); user and device come back from the row, and a longer copy sent later
    /// replaces the body whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_is_stored_as_received_and_read_back_with_its_user_and_device() {
        let path = temp_db("as-received");
        let store = SqliteStore::open(&path).unwrap();
        store
            .put_settings(settings(Policy::default()))
            .await
            .unwrap();
        let received = |end: &str| {
            let text = format!(
                r#"{{ "product" : "acad", "id": "0193-r", "start": "2026-02-02T14:15:00+05:45",
                     "end": "{end}", "tz": "Asia/Kathmandu", "extra": [1, 2] }}"#
            );
            let raw: RawSession<'_> = serde_json::from_str(&text).unwrap();
            let (mut session, zone) = raw.check(&mut ZoneCache::new()).unwrap();
            session.user = Some("sophie".into());
            session.device = Some("ws-1".into());
            let session = session.into_owned();
            (
                Incoming {
                    session,
                    zone,
                    body: text,
                },
                end.to_owned(),
            )
        };
        for end in ["2026-02-02T15:00:00+05:45", "2026-02-02T16:00:00+05:45"] {
            let (incoming, _) = received(end);
            let ingest =
                Ingest::received("sophie".into(), "ws-1".into(), vec![incoming], Utc::now());
            let outcome = store.ingest(ingest).await.unwrap();
            assert_eq!(outcome.accepted, ["0193-r"]);
        }
        let listed = store.sessions(SessionFilter::default()).await.unwrap();
        assert_eq!(listed.len(), 1);
        let s = &listed[0];
        assert_eq!(s.user.as_deref(), Some("sophie"));
        assert_eq!(s.device.as_deref(), Some("ws-1"));
        assert_eq!(s.start.to_rfc3339(), "2026-02-02T14:15:00+05:45");
        assert_eq!(
            s.end.map(|e| e.to_rfc3339()).as_deref(),
            Some("2026-02-02T16:00:00+05:45")
        );
        store.close();
        let conn = Connection::open(&path).unwrap();
        let (_, _, _, batch) = find_batch(&mut conn.prepare(FIND_BATCH).unwrap(), 1).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            batch.get(0),
            Some(&*received("2026-02-02T16:00:00+05:45").0.body)
        );
    }

    /// Runs held by the writer are written out in bulk, and those held when the process
    /// stops are gathered again when the store opens: after any restart, every stored
    /// session is in exactly one run, written out or held, of its own key.
    #[tokio::test(flavor = "multi_thread")]
    async fn every_session_is_in_one_run_of_its_key_across_flushes_and_restarts() {
        let all = history();
        let path = temp_db("runs");
        let settings = settings(Policy::default());
        let mut store = SqliteStore::open(&path).unwrap();
        store.put_settings(settings.clone()).await.unwrap();
        for (i, batch) in all.chunks(3).enumerate() {
            store.ingest(ingest_of(batch)).await.unwrap();
            if i % 7 == 3 {
                store.close();
                drop(store);
                store = SqliteStore::open(&path).unwrap();
            }
        }
        // Covered: rows in `session_runs`, and rows the store gathers at open.
        store.close();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let mut written: Vec<(String, String, i64, i64)> = conn
            .prepare("SELECT user, product, first_row, last_row FROM session_runs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!written.is_empty(), "runs were written out");
        let held = gather_runs(&conn).unwrap();
        let held: Vec<Run> = held.of("sophie", "acad", i64::MIN).collect();
        written.extend(
            held.iter()
                .map(|r| ("sophie".into(), "acad".into(), r.first, r.last)),
        );
        let rows: Vec<(i64, String, String)> = conn
            .prepare("SELECT row, user, product FROM sessions")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), all.len());
        for (row, user, product) in rows {
            let holding: Vec<_> = written
                .iter()
                .filter(|(_, _, first, last)| (*first..=*last).contains(&row))
                .collect();
            assert_eq!(holding.len(), 1, "row {row}: {holding:?}");
            assert_eq!((&holding[0].0, &holding[0].1), (&user, &product));
        }
        let store = SqliteStore::open(&path).unwrap();
        // A session before all the others makes the key load its tail from the runs.
        let early = session(
            "0000-early",
            "2025-01-01T09:00:00+01:00",
            "2025-01-01T17:00:00+01:00",
        );
        store
            .ingest(ingest_of(std::slice::from_ref(&early)))
            .await
            .unwrap();
        let mut everything = all.clone();
        everything.push(early);
        assert_eq!(
            store.usage_days(None, None).await.unwrap(),
            replayed(&everything, &settings)
        );
        store.close();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Ledger entries are written a batch per recomputed key and read one by one,
    /// numbered without a gap across syncs, an import and a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn ledger_entries_are_numbered_one_by_one_across_batches_and_a_restart() {
        let all = history();
        let path = temp_db("ledger-batches");
        let mut store = SqliteStore::open(&path).unwrap();
        store
            .put_settings(settings(Policy::default()))
            .await
            .unwrap();
        let (first, rest) = all.split_at(40);
        for batch in first.chunks(5) {
            store.ingest(ingest_of(batch)).await.unwrap();
        }
        store.close();
        drop(store);
        store = SqliteStore::open(&path).unwrap();
        for batch in rest.chunks(7) {
            store.ingest(ingest_of(batch)).await.unwrap();
        }
        let mut repriced = settings(Policy::default());
        if let Some(p) = repriced.catalog.get_mut("acad") {
            p.tokens_per_day = 9;
        }
        store.put_settings(repriced).await.unwrap();
        let entries = store.ledger(None, None, usize::MAX).await.unwrap();
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=entries.len() as i64).collect::<Vec<_>>());
        assert!(entries.iter().any(|e| e.reason.starts_with("day changed")));
        let charged: i64 = store
            .usage_days(None, None)
            .await
            .unwrap()
            .iter()
            .map(|d| d.tokens as i64)
            .sum();
        assert_eq!(entries.iter().map(|e| e.tokens).sum::<i64>(), charged);
        store.close();
        let conn = Connection::open(&path).unwrap();
        let batches: i64 = conn
            .query_row("SELECT COUNT(*) FROM ledger_batches", [], |r| r.get(0))
            .unwrap();
        assert!(
            batches < entries.len() as i64 / 2,
            "{batches} batches for {} entries",
            entries.len()
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_write_fails_alone_in_its_group() {
        let path = temp_db("fails-alone");
        let store = SqliteStore::open(&path).unwrap();
        store
            .put_settings(settings(Policy::default()))
            .await
            .unwrap();
        let device = |id: &str, hash: u8| Device {
            id: id.into(),
            hostname: id.into(),
            os: "linux".into(),
            agent_version: "0".into(),
            token_hash: [hash; 32],
            enrolled_at: Utc::now(),
            revoked: false,
        };
        store.add_device(device("ws-1", 1)).await.unwrap();
        let monday = session(
            "m1",
            "2026-02-02T09:00:00+01:00",
            "2026-02-02T12:00:00+01:00",
        );
        // Queued together: the duplicate device fails, the others are stored.
        let (dup, synced, other) = tokio::join!(
            store.add_device(device("ws-1", 1)),
            store.ingest(ingest_of(&[monday])),
            store.add_device(device("ws-2", 2)),
        );
        assert!(dup.is_err());
        assert_eq!(synced.unwrap().accepted, vec!["m1".to_string()]);
        other.unwrap();
        let devices = store.devices().await.unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(store.usage_days(None, None).await.unwrap().len(), 1);
        store.close();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bounded_recomputation_equals_replay_whatever_the_batch_order() {
        for policy in [
            Policy::default(),
            Policy {
                short_sessions: ShortSessions::CountFree,
                ..Policy::default()
            },
            Policy {
                rollover: Rollover::Active,
                ..Policy::default()
            },
        ] {
            let path = temp_db("bounded");
            let store = SqliteStore::open(&path).unwrap();
            let settings = settings(policy);
            store.put_settings(settings.clone()).await.unwrap();
            let all = history();
            // Forward in batches of 5, but the first 20 sessions arrive last (late).
            let (early, late) = all.split_at(20);
            for batch in late.chunks(5).chain(early.chunks(5)) {
                let ingest = ingest_of(batch);
                let outcome = store.ingest(ingest).await.unwrap();
                assert_eq!(outcome.accepted.len(), batch.len());
            }
            let stored = store.usage_days(None, None).await.unwrap();
            assert_eq!(stored, replayed(&all, &settings), "{:?}", settings.policy);
            store.close();
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }

    /// `session` still running halfway through: no end, last seen then.
    fn running(s: &OwnedSession) -> OwnedSession {
        let mut open = s.clone();
        let end = s.end.unwrap();
        open.end = None;
        open.last_seen = Some(s.start + (end - s.start) / 2);
        open
    }

    /// The writer's tails and id index against `replay`: shuffled batches of many sizes,
    /// sessions first reported running and later closed, copies sent twice, and a
    /// restart halfway (which empties the tails and rebuilds the index from the table).
    #[tokio::test(flavor = "multi_thread")]
    async fn tails_and_the_id_index_equal_replay_across_shuffles_copies_and_a_restart() {
        let all = history();
        for seed in 1..=4u64 {
            let path = temp_db(&format!("tails-{seed}"));
            let settings = settings(Policy::default());
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            // Mostly forward, with some sessions moved later, and a running copy of every
            // fifth session sent somewhat before the closed one.
            let mut sends: Vec<(u64, OwnedSession)> = Vec::new();
            for (i, s) in all.iter().enumerate() {
                let at = i as u64 * 10 + if next(6) == 0 { next(400) } else { 0 };
                if i % 5 == 0 {
                    sends.push((at.saturating_sub(15), running(s)));
                }
                sends.push((at, s.clone()));
                if next(10) == 0 {
                    sends.push((at + next(100), s.clone()));
                }
            }
            sends.sort_by_key(|(at, _)| *at);
            let mut store = SqliteStore::open(&path).unwrap();
            store.put_settings(settings.clone()).await.unwrap();
            let mut sent = 0;
            let half = sends.len() / 2;
            while sent < sends.len() {
                if sent >= half && sent < half + 8 {
                    store.close();
                    drop(store);
                    store = SqliteStore::open(&path).unwrap();
                    sent = half + 8;
                    // The batches that would have gone in between go now.
                    let batch: Vec<_> = sends[half..half + 8]
                        .iter()
                        .map(|(_, s)| s.clone())
                        .collect();
                    let outcome = store.ingest(ingest_of(&batch)).await.unwrap();
                    assert!(outcome.rejected.is_empty(), "{outcome:?}");
                    continue;
                }
                let n = (1 + next(8) as usize).min(sends.len() - sent);
                let batch: Vec<_> = sends[sent..sent + n]
                    .iter()
                    .map(|(_, s)| s.clone())
                    .collect();
                let outcome = store.ingest(ingest_of(&batch)).await.unwrap();
                assert!(outcome.rejected.is_empty(), "seed {seed}: {outcome:?}");
                assert_eq!(outcome.accepted.len(), n);
                sent += n;
            }
            let stored = store.usage_days(None, None).await.unwrap();
            assert_eq!(stored, replayed(&all, &settings), "seed {seed}");
            let kept = store.sessions(SessionFilter::default()).await.unwrap();
            assert_eq!(kept.len(), all.len(), "seed {seed}: each id stored once");
            assert!(
                kept.iter().all(|s| s.end.is_some()),
                "seed {seed}: closed copies won"
            );
            let charged: i64 = stored.iter().map(|d| d.tokens as i64).sum();
            let booked: i64 = store
                .ledger(None, None, usize::MAX)
                .await
                .unwrap()
                .iter()
                .map(|e| e.tokens)
                .sum();
            assert_eq!(
                booked, charged,
                "seed {seed}: the ledger holds the usage days"
            );
            store.close();
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }
}
