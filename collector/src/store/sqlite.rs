//! The SQLite store: WAL mode, versioned migrations, one writer thread with group commit.
//!
//! Every write goes to one thread that owns the write connection. It takes all jobs
//! waiting in its queue, applies each inside its own savepoint of one transaction, and
//! commits once: many syncs, one fsync (`synchronous = FULL`, so a commit is on disk
//! before any of them is answered). Reads use a small pool of separate connections,
//! which WAL lets run beside the writer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::entitlement::Pricing;
use daymeter_shared::record::Problem;
use daymeter_shared::scenario::account_key;
use daymeter_shared::session::{OwnedSession, Session};
use daymeter_shared::time::Zone;
use daymeter_shared::usage::UsageDay;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::{
    Device, Ingest, IngestOutcome, SessionFilter, Settings, Store, StoreError, StoredSession,
};

/// Most jobs committed together; bounds the time the first of them waits.
const MAX_GROUP: usize = 1024;
const READERS: usize = 4;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
-- body: the session as received (wire JSON with user and device), offsets kept.
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
"#];

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

enum Job {
    Ingest(
        Box<(Ingest, Settings)>,
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
    ),
    AddDevice(Box<Device>, oneshot::Sender<Result<(), StoreError>>),
    Revoke(String, oneshot::Sender<Result<bool, StoreError>>),
    PutSettings(Box<Settings>, oneshot::Sender<Result<(), StoreError>>),
}

/// A job's answer, held back until the group's commit.
enum Reply {
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        Result<IngestOutcome, StoreError>,
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
            Reply::Ingest(tx, r) => drop(tx.send(fail(commit).and(r))),
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
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = open(path)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("daymeter-db-writer".into())
            .spawn(move || write_loop(conn, rx))
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

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let commit = match conn.transaction() {
            Ok(mut tx) => {
                for job in jobs {
                    replies.push(apply(&mut tx, job));
                }
                tx.commit().map_err(|e| e.to_string())
            }
            Err(e) => {
                let e = e.to_string();
                for job in jobs {
                    replies.push(refuse(job, &e));
                }
                Err(e)
            }
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "database commit failed; the syncs in this group were not acknowledged and will be retried by their agents");
        }
        for reply in replies {
            reply.send(&commit);
        }
    }
}

fn refuse(job: Job, e: &str) -> Reply {
    fn err<T>(e: &str) -> Result<T, StoreError> {
        Err(StoreError::Database(e.to_owned()))
    }
    match job {
        Job::Ingest(_, tx) => Reply::Ingest(tx, err(e)),
        Job::AddDevice(_, tx) | Job::PutSettings(_, tx) => Reply::Unit(tx, err(e)),
        Job::Revoke(_, tx) => Reply::Bool(tx, err(e)),
    }
}

/// Applies one job inside its own savepoint: a failing job is rolled back alone.
fn apply(tx: &mut Transaction<'_>, job: Job) -> Reply {
    fn within<T>(
        tx: &mut Transaction<'_>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let sp = tx.savepoint().map_err(db)?;
        let result = f(&sp);
        match result {
            Ok(v) => {
                sp.commit().map_err(db)?;
                Ok(v)
            }
            Err(e) => Err(e), // dropping the savepoint rolls it back
        }
    }
    match job {
        Job::Ingest(boxed, reply) => {
            let (ingest, settings) = *boxed;
            Reply::Ingest(reply, within(tx, |t| ingest_into(t, &ingest, &settings)))
        }
        Job::AddDevice(device, reply) => Reply::Unit(reply, within(tx, |t| add_device(t, &device))),
        Job::Revoke(id, reply) => Reply::Bool(
            reply,
            within(tx, |t| {
                t.execute("UPDATE devices SET revoked = 1 WHERE id = ?1", [&id])
                    .map(|n| n > 0)
                    .map_err(db)
            }),
        ),
        Job::PutSettings(settings, reply) => {
            Reply::Unit(reply, within(tx, |t| put_settings(t, &settings)))
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

fn ingest_into(
    t: &Connection,
    ingest: &Ingest,
    settings: &Settings,
) -> Result<IngestOutcome, StoreError> {
    let mut outcome = IngestOutcome::default();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut find = t
        .prepare_cached("SELECT body FROM sessions WHERE id = ?1")
        .map_err(db)?;
    let mut upsert = t
        .prepare_cached(
            "INSERT INTO sessions (id, user, device, product, start_ns, end_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET end_ns = excluded.end_ns, body = excluded.body",
        )
        .map_err(db)?;
    for s in &ingest.sessions {
        let stored: Option<String> = find
            .query_row([&*s.id], |r| r.get(0))
            .optional()
            .map_err(db)?;
        let write = match stored {
            None => true,
            Some(body) => {
                let old: Session<'_> = serde_json::from_str(&body).map_err(corrupt)?;
                if let Some(field) = s.conflict_with(&old) {
                    outcome
                        .rejected
                        .push((s.id.to_string(), Problem::ConflictingCopies(field)));
                    continue;
                }
                s.copy_order(&old).is_gt()
            }
        };
        if write {
            let body = serde_json::to_string(s).map_err(corrupt)?;
            upsert
                .execute(params![
                    &*s.id,
                    ingest.user,
                    ingest.device,
                    &*s.product,
                    s.start_nanos(),
                    s.end_nanos(),
                    body
                ])
                .map_err(db)?;
            touched.insert(s.product.to_string());
        }
        outcome.accepted.push(s.id.to_string());
    }
    for product in &touched {
        recompute_key(t, &ingest.user, product, settings)?;
    }
    t.execute(
        "INSERT INTO users (user, last_sync) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET last_sync = excluded.last_sync",
        params![ingest.user, ingest.at.to_rfc3339()],
    )
    .map_err(db)?;
    Ok(outcome)
}

fn load_key(
    t: &Connection,
    user: &str,
    product: &str,
) -> Result<Vec<(OwnedSession, Zone)>, StoreError> {
    let mut stmt = t
        .prepare_cached("SELECT body FROM sessions WHERE user = ?1 AND product = ?2")
        .map_err(db)?;
    let rows = stmt
        .query_map([user, product], |r| r.get::<_, String>(0))
        .map_err(db)?;
    let mut out = Vec::new();
    for body in rows {
        let body = body.map_err(db)?;
        let session: Session<'_> = serde_json::from_str(&body).map_err(corrupt)?;
        let session = session.into_owned();
        let zone = Zone::of(session.tz.as_deref(), &session.start).map_err(corrupt)?;
        out.push((session, zone));
    }
    Ok(out)
}

/// Recomputes one key's usage days from all its sessions and writes the difference.
fn recompute_key(
    t: &Connection,
    user: &str,
    product: &str,
    settings: &Settings,
) -> Result<(), StoreError> {
    let mut rows: Vec<UsageDay<'_>> = Vec::new();
    if let Some(entry) = settings.catalog.get(product) {
        let sessions = load_key(t, user, product)?;
        let refs: Vec<(&Session<'_>, Zone)> = sessions.iter().map(|(s, z)| (s, *z)).collect();
        let held: Vec<_> = settings
            .entitlements
            .iter()
            .filter(|e| e.user == user && e.product == product)
            .collect();
        let pricing = Pricing {
            tokens_per_day: entry.tokens_per_day,
            entitlements: &held,
        };
        account_key(
            user,
            product,
            &refs,
            &settings.policy.rules(),
            &pricing,
            &mut rows,
        );
    }
    let mut stored: BTreeMap<i64, (i64, String, String, i64)> = BTreeMap::new();
    {
        let mut stmt = t
            .prepare_cached("SELECT window_start_ns, window_end_ns, day, plan, tokens FROM usage_days WHERE user = ?1 AND product = ?2")
            .map_err(db)?;
        let found = stmt
            .query_map([user, product], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            })
            .map_err(db)?;
        for row in found {
            let (k, v) = row.map_err(db)?;
            stored.insert(k, v);
        }
    }
    let mut put = t
        .prepare_cached(
            "INSERT INTO usage_days (user, product, window_start_ns, window_end_ns, day, plan, tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user, product, window_start_ns) DO UPDATE SET window_end_ns = excluded.window_end_ns,
               day = excluded.day, plan = excluded.plan, tokens = excluded.tokens",
        )
        .map_err(db)?;
    for row in &rows {
        let start = row.window_start.timestamp_nanos_opt().unwrap_or_default();
        let end = row.window_end.timestamp_nanos_opt().unwrap_or_default();
        let value = (
            end,
            row.day.to_string(),
            row.plan.as_str().to_owned(),
            row.tokens as i64,
        );
        if stored.remove(&start).as_ref() != Some(&value) {
            put.execute(params![
                user, product, start, value.0, value.1, value.2, value.3
            ])
            .map_err(db)?;
        }
    }
    let mut drop_row = t
        .prepare_cached(
            "DELETE FROM usage_days WHERE user = ?1 AND product = ?2 AND window_start_ns = ?3",
        )
        .map_err(db)?;
    for start in stored.keys() {
        drop_row
            .execute(params![user, product, start])
            .map_err(db)?;
    }
    Ok(())
}

fn put_settings(t: &Connection, settings: &Settings) -> Result<(), StoreError> {
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
        "entitlements",
        serde_json::to_string(&settings.entitlements).map_err(corrupt)?
    ])
    .map_err(db)?;
    let keys: Vec<(String, String)> = {
        let mut stmt = t
            .prepare("SELECT DISTINCT user, product FROM sessions")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    for (user, product) in keys {
        recompute_key(t, &user, &product, settings)?;
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

    async fn ingest(
        &self,
        ingest: Ingest,
        settings: Settings,
    ) -> Result<IngestOutcome, StoreError> {
        self.write(|tx| Job::Ingest(Box::new((ingest, settings)), tx))
            .await
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
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT user, product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
                     WHERE day >= ?1 AND day <= ?2 ORDER BY user, product, window_start_ns",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([from.to_string(), to.to_string()], |r| {
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
            let to = filter.to.and_then(|d| d.succ_opt()).map_or(i64::MAX, day_start_ns);
            let mut stmt = c
                .prepare(
                    "SELECT body FROM sessions WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR product = ?2)
                     AND start_ns < ?4 AND end_ns >= ?3 ORDER BY user, product, start_ns, id",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![filter.user, filter.product, from, to], |r| r.get::<_, String>(0)).map_err(db)?;
            let mut out = Vec::new();
            for body in rows {
                let body = body.map_err(db)?;
                let s: Session<'_> = serde_json::from_str(&body).map_err(corrupt)?;
                out.push(s.into_owned());
            }
            Ok(out)
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
