//! The journal on redb 4: sessions and cached answers in two tables of one file,
//! `journal.redb` in the journal directory; the lock and the enrolment are
//! `journal/files.rs`'s. This is the agent's default journal ([`super::DefaultJournal`]).
//!
//! Why redb rather than sled (the design card's first choice): both pass the crash
//! torture (`tests/journal_torture.rs`), but sled costs several times the memory and
//! disk for the same journal, measured in release builds: 50 running sessions written
//! lazily every poll for 1,200 polls took sled +3 to +4.5 MiB RSS and 3.4 MiB on disk,
//! redb +0.4 MiB and 192 KiB; 10k sessions took sled's process to 19 MiB RSS (26 MiB
//! peak) and 13 MiB on disk, redb's to 7 MiB (12 MiB peak, with the 10k sessions read
//! back in memory) and 8.6 MiB, against an agent budget of 15 MB. redb is also a
//! stable 4.x with ACID commits checked by checksums, where sled 0.34 is a beta. sled
//! is faster per flushed write (≈ 115 µs against ≈ 400 µs), which the agent, writing a
//! few records a minute, does not need. In debug builds sled also zero-fills ≈ 21 MiB
//! of metrics histograms on its first open (release builds get that memory zeroed from
//! the system and never touch it).
//!
//! Decisions, and why:
//! - **Cache**: redb's cache defaults to 1 GiB; [`CACHE_BYTES`] (2 MiB) holds a journal
//!   of a few thousand small records, which is all the agent keeps.
//! - **Durability**: a [`Durability::Flush`] write is one transaction committed with
//!   `Durability::Immediate` (fsync before `commit` returns). A [`Durability::Lazy`]
//!   write is a transaction committed with `Durability::None`: visible at once, durable
//!   at the next immediate commit. That commit comes from the next flushed write, from
//!   [`Journal::flush`], or from the journal's own flusher thread, which makes lazy
//!   writes durable within [`FLUSH_EVERY`] even if the caller forgets to flush, and
//!   sleeps when there is nothing to flush.
//! - **Bad records**: [`Journal::sessions`] skips a record that does not decode, with a
//!   `tracing::warn!` naming its key, so that one damaged record cannot stop the agent;
//!   the record stays on disk for inspection. [`RedbJournal::sessions_strict`] fails on
//!   it instead.
//! - **A damaged file** (redb's own pages: checksums that fail, a cut or overwritten
//!   file) is found when the journal opens, by redb's integrity check and a walk of both
//!   tables, and is [`JournalError::Damaged`]; [`RedbJournal::open_healing`], the
//!   agent's open, moves it aside and starts afresh with what can be salvaged
//!   (`journal/heal.rs`). The check reads the whole file and commits once per open: the
//!   agent opens the journal once per start, and a plain open may panic on such a file.
//! - **After a failed write** (a full disk, an I/O error) redb refuses further writes
//!   until the file is reopened, which repairs it. The journal marks itself broken and
//!   reopens the file on its next use, so the agent's retries succeed once the disk has
//!   room again instead of failing until a restart. Lazy writes not yet durable may be
//!   lost then; the agent rewrites `last_seen` on its next poll anyway.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ::redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::files::{JournalDir, decode_all, decode_session, encode_session};
use super::heal::{self, OnDamage, Salvage};
use super::{Durability, Enrolment, Journal, JournalError, Tracked};

/// redb's page cache, in bytes.
pub const CACHE_BYTES: usize = 2 * 1024 * 1024;

/// The longest a [`Durability::Lazy`] write stays in memory only.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The database file inside the journal directory.
pub const DB_FILE: &str = "journal.redb";

/// Session id → JSON of [`Tracked`].
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Cache key → opaque bytes.
const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");

/// Stack of the flusher thread: it only commits an empty transaction.
const FLUSHER_STACK: usize = 256 * 1024;

/// The agent's journal on redb. See the module notes.
pub struct RedbJournal {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    // Dropped after the database (see `Drop`), so the lock outlives it.
    dir: JournalDir,
}

/// What the flusher thread shares with the journal.
struct Shared {
    /// `None` only while a reopen after a failed write has not succeeded yet.
    db: RwLock<Option<::redb::Database>>,
    path: PathBuf,
    /// A write failed: the file must be reopened before the next use.
    broken: AtomicBool,
    /// Lazy commits since the last immediate one.
    dirty: AtomicBool,
    /// Set to stop the flusher.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl RedbJournal {
    /// Opens (creating it if needed) the journal in `dir`, repairing the file if the last
    /// agent did not close it (a crash or a power loss).
    ///
    /// Fails with [`JournalError::InUse`] ("another daymeter-agent is probably running")
    /// when another process (or another `open` in this one) has the journal open, and
    /// with [`JournalError::Damaged`] when the file is damaged: it is left as it is.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, OnDamage::Report)
    }

    /// Like [`RedbJournal::open`], but a damaged file is healed rather than reported:
    /// moved aside as `journal.redb.damaged-<UTC time>`, replaced by a fresh file, and
    /// what can still be read carried over (see `journal/heal.rs`). The agent's `run`
    /// opens its journal this way so that metering never waits for someone to repair it.
    pub fn open_healing(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, OnDamage::Heal)
    }

    fn open_with(dir: &Path, on_damage: OnDamage) -> Result<Self, JournalError> {
        Self::open_in(JournalDir::lock(dir)?, on_damage)
    }

    /// Opens the journal in a directory this process has already locked (the choice of
    /// backend and a migration lock it first).
    pub(crate) fn open_in(dir: JournalDir, on_damage: OnDamage) -> Result<Self, JournalError> {
        let path = dir.path().join(DB_FILE);
        let (db, healed) = match open_checked(&path) {
            Err(JournalError::Damaged { reason, .. }) if on_damage == OnDamage::Heal => {
                let aside = heal::move_aside(&path)?;
                let db = open_checked(&path)?;
                let salvage = heal::salvage(&aside, |found| read_damaged(&aside, found));
                (db, Some((aside, reason, salvage)))
            }
            opened => (opened?, None),
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path,
            broken: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        // Both tables exist from the first open on, so readers never meet a missing one;
        // created in a write transaction only when missing, which spares an fsync to
        // every open but the first.
        if !shared.tables_exist()? {
            shared.write(Durability::Flush, |txn| {
                txn.open_table(SESSIONS)?;
                txn.open_table(CACHE)?;
                Ok(())
            })?;
        }
        if let Some((aside, cause, salvage)) = healed {
            shared.write(Durability::Flush, |txn| {
                let mut sessions = txn.open_table(SESSIONS)?;
                for tracked in &salvage.sessions {
                    // Encoding what was just decoded cannot fail; a record that did is
                    // left out rather than the whole salvage.
                    if let Ok(value) = encode_session(tracked) {
                        sessions.insert(tracked.session.id.as_ref(), value.as_slice())?;
                    }
                }
                let mut cache = txn.open_table(CACHE)?;
                for (key, value) in &salvage.cached {
                    cache.insert(key.as_str(), value.as_slice())?;
                }
                Ok(())
            })?;
            heal::log_healed(&shared.path, &aside, &cause, &salvage);
        }
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("journal flusher".to_owned())
                .stack_size(FLUSHER_STACK)
                .spawn(move || shared.flush_periodically())
                .map_err(|e| {
                    JournalError::Storage(format!("cannot start the journal flusher: {e}"))
                })?
        };
        Ok(RedbJournal {
            shared,
            flusher: Some(flusher),
            dir,
        })
    }

    /// The directory the journal lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Like [`Journal::sessions`], but a record that does not decode is an error
    /// ([`JournalError::Corrupt`] naming its key) instead of a warning: for tests and
    /// diagnostics, where hiding damage would defeat the purpose.
    pub fn sessions_strict(&self) -> Result<Vec<Tracked>, JournalError> {
        self.read_sessions(true)
    }

    /// Bytes the journal occupies on disk (the database file plus the enrolment).
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        self.dir.size_on_disk()
    }

    fn read_sessions(&self, strict: bool) -> Result<Vec<Tracked>, JournalError> {
        let shared = &self.shared;
        shared.with_db(|db| {
            let txn = db
                .begin_read()
                .map_err(|e| shared.storage("cannot read", e))?;
            let table = txn
                .open_table(SESSIONS)
                .map_err(|e| shared.storage("cannot read", e))?;
            let records = table
                .iter()
                .map_err(|e| shared.storage("cannot read", e))?
                .map(|record| {
                    record.map(|(k, v)| (k.value().as_bytes().to_vec(), v.value().to_vec()))
                });
            decode_all(records, strict, |e| shared.storage("cannot read", e))
        })
    }
}

/// Opens (creating or repairing) the database file, checking every page of its trees,
/// and reads both tables through, so that a damaged file is found here, as
/// [`JournalError::Damaged`], rather than by a panic in the middle of the agent's work.
///
/// The check costs one read of the whole file and one commit per open: a reopen of 10k
/// sessions (8.6 MiB) took 5.7 ms instead of 0.3 ms in a release build, peak RSS
/// unchanged; the agent opens its journal once per start. redb panics on some damage where a debug build asserts and on some pages
/// it cannot parse, hence [`heal::catch`].
///
/// redb's own lock on the file is a second guard behind the directory lock, and another
/// process can hold it while the directory lock is free: a child forked by this process
/// holds a copy of every descriptor from its fork to its exec, and the exec closes them
/// one by one. That is [`JournalError::InUse`], which the callers that retry wait out,
/// not a storage error.
fn open_checked(path: &Path) -> Result<::redb::Database, JournalError> {
    let db = open_file(path, true)?;
    match heal::catch(|| walk(&db)) {
        Ok(Ok(())) => Ok(db),
        Ok(Err(e)) => Err(damaged(path, e)),
        Err(panic) => Err(damaged(path, format!("redb panicked reading it: {panic}"))),
    }
}

/// Opens (creating or repairing) the database file; with `check_integrity`, checking
/// every page of its trees first.
fn open_file(path: &Path, check_integrity: bool) -> Result<::redb::Database, JournalError> {
    let opened = heal::catch(|| {
        ::redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(check_integrity)
            .create(path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(::redb::DatabaseError::DatabaseAlreadyOpen)) => Err(JournalError::InUse {
            dir: path.parent().unwrap_or(path).to_owned(),
        }),
        Ok(Err(e)) if is_damage(&e) => Err(damaged(path, e)),
        Ok(Err(e)) => Err(storage(path, "cannot open", e)),
        Err(panic) => Err(damaged(path, format!("redb panicked opening it: {panic}"))),
    }
}

/// Reads every record of both tables (those that exist), decoding nothing.
fn walk(db: &::redb::Database) -> Result<(), ::redb::Error> {
    let txn = db.begin_read()?;
    for table in [SESSIONS, CACHE] {
        match txn.open_table(table) {
            Ok(table) => {
                for record in table.iter()? {
                    record?;
                }
            }
            Err(::redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether redb's refusal means the file is damaged, rather than that the disk failed
/// or the format is another redb's (those are reported, never healed: moving a file
/// aside would not fix the disk, and would hide a journal a newer agent can read).
fn is_damage(e: &::redb::DatabaseError) -> bool {
    match e {
        ::redb::DatabaseError::Storage(::redb::StorageError::Corrupted(_)) => true,
        // "Not a redb database", or a header cut short.
        ::redb::DatabaseError::Storage(::redb::StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// What the damaged copy at `aside` still gives through redb, opened read-only so
/// that the copy stays as it was found. The cache is read even when the sessions' walk
/// fails, and the other way round.
fn read_damaged(aside: &Path, found: &mut Salvage) -> Result<(), String> {
    let db = ::redb::Database::builder()
        .set_cache_size(CACHE_BYTES)
        .open_read_only(aside)
        .map_err(|e| e.to_string())?;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let cached = heal::catch(|| -> Result<(), ::redb::Error> {
        for record in txn.open_table(CACHE)?.iter()? {
            let (key, value) = record?;
            found
                .cached
                .push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(())
    });
    if let Err(e) = cached.map(|r| r.map_err(|e| e.to_string())) {
        tracing::warn!(damaged_copy = %aside.display(), error = %e, "cached values of the damaged journal partly lost; the next sync brings them back");
    }
    let sessions = &mut found.sessions;
    heal::catch(|| -> Result<(), ::redb::Error> {
        for record in txn.open_table(SESSIONS)?.iter()? {
            let (key, value) = record?;
            // A record that does not decode is skipped, as `sessions` does.
            if let Ok(tracked) = decode_session(key.value().as_bytes(), value.value()) {
                sessions.push(tracked);
            }
        }
        Ok(())
    })?
    .map_err(|e| e.to_string())
}

fn damaged(path: &Path, reason: impl Display) -> JournalError {
    JournalError::Damaged {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl Shared {
    /// Runs `use_db` on the open database, reopening it first after a failed write.
    fn with_db<T>(
        &self,
        use_db: impl FnOnce(&::redb::Database) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        if self.broken.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match db.as_ref() {
            Some(db) => use_db(db),
            None => Err(self.storage("cannot use", "closed after a failed write")),
        }
    }

    /// Whether both tables are there (a read: no fsync).
    fn tables_exist(&self) -> Result<bool, JournalError> {
        self.with_db(|db| {
            let txn = db
                .begin_read()
                .map_err(|e| self.storage("cannot read", e))?;
            for table in [SESSIONS, CACHE] {
                match txn.open_table(table) {
                    Ok(_) => {}
                    Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                    Err(e) => return Err(self.storage("cannot read", e)),
                }
            }
            Ok(true)
        })
    }

    /// Closes the database and opens it again, which repairs what a failed write left.
    fn reopen(&self) -> Result<(), JournalError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.broken.load(Ordering::SeqCst) {
            // Another thread reopened it while this one waited.
            return Ok(());
        }
        // The old handle goes first: it holds redb's lock on the file. The file was
        // whole when the journal opened: only redb's own repair is needed, not the full
        // check, whose commit could fail again on the disk that is still full.
        drop(db.take());
        *db = Some(open_file(&self.path, false)?);
        self.broken.store(false, Ordering::SeqCst);
        tracing::info!(path = %self.path.display(), "journal reopened after a failed write");
        Ok(())
    }

    /// Runs `change` in one write transaction committed with `durability`.
    fn write(
        &self,
        durability: Durability,
        change: impl FnOnce(&::redb::WriteTransaction) -> Result<(), ::redb::Error>,
    ) -> Result<(), JournalError> {
        if durability == Durability::Flush {
            // Cleared before the transaction starts: redb runs write transactions one at
            // a time, so every lazy commit that finished before this point is made durable
            // by this commit; one that finishes later sets the flag again.
            self.dirty.store(false, Ordering::SeqCst);
        }
        let result = self.with_db(|db| self.commit(db, durability, change));
        if durability == Durability::Lazy || result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        if result.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        result
    }

    fn commit(
        &self,
        db: &::redb::Database,
        durability: Durability,
        change: impl FnOnce(&::redb::WriteTransaction) -> Result<(), ::redb::Error>,
    ) -> Result<(), JournalError> {
        let mut txn = db
            .begin_write()
            .map_err(|e| self.storage("cannot write to", e))?;
        if durability == Durability::Lazy {
            txn.set_durability(::redb::Durability::None)
                .map_err(|e| self.storage("cannot write to", e))?;
        }
        change(&txn).map_err(|e| self.storage("cannot write to", e))?;
        txn.commit()
            .map_err(|e| self.storage("cannot commit to", e))
    }

    /// Makes every lazy commit durable, if there is one.
    fn make_durable(&self) -> Result<(), JournalError> {
        if self.dirty.load(Ordering::SeqCst) {
            self.write(Durability::Flush, |_| Ok(()))?;
        }
        Ok(())
    }

    /// The flusher thread's loop: every [`FLUSH_EVERY`], makes lazy commits durable,
    /// until the journal is dropped.
    fn flush_periodically(&self) {
        loop {
            let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
            let (stop, _) = self
                .wake
                .wait_timeout_while(stop, FLUSH_EVERY, |stop| !*stop)
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
            drop(stop);
            if let Err(e) = self.make_durable() {
                tracing::warn!(error = %e, "periodic journal flush failed; retrying");
            }
        }
    }

    fn storage(&self, what: &str, e: impl Display) -> JournalError {
        storage(&self.path, what, e)
    }
}

impl Drop for RedbJournal {
    /// Stops the flusher and makes lazy writes durable: a clean stop loses nothing.
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(flusher) = self.flusher.take()
            && flusher.join().is_err()
        {
            tracing::warn!("the journal flusher panicked");
        }
        if let Err(e) = self.shared.make_durable() {
            tracing::warn!(error = %e, "final journal flush failed");
        }
    }
}

impl Journal for RedbJournal {
    fn put(&self, tracked: &Tracked, durability: Durability) -> Result<(), JournalError> {
        let value = encode_session(tracked)?;
        self.shared.write(durability, |txn| {
            txn.open_table(SESSIONS)?
                .insert(tracked.session.id.as_ref(), value.as_slice())?;
            Ok(())
        })
    }

    fn sessions(&self) -> Result<Vec<Tracked>, JournalError> {
        self.read_sessions(false)
    }

    fn remove(&self, id: &str) -> Result<(), JournalError> {
        self.shared.write(Durability::Flush, |txn| {
            txn.open_table(SESSIONS)?.remove(id)?;
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.shared.make_durable()
    }

    fn enrolment(&self) -> Result<Option<Enrolment>, JournalError> {
        self.dir.enrolment()
    }

    fn set_enrolment(&self, enrolment: Option<&Enrolment>) -> Result<(), JournalError> {
        self.dir.set_enrolment(enrolment)
    }

    fn cached(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let shared = &self.shared;
        shared.with_db(|db| {
            let read = || -> Result<Option<Vec<u8>>, ::redb::Error> {
                let txn = db.begin_read()?;
                let table = txn.open_table(CACHE)?;
                Ok(table.get(key)?.map(|v| v.value().to_vec()))
            };
            read().map_err(|e| shared.storage("cannot read the cache of", e))
        })
    }

    fn set_cached(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.shared.write(Durability::Flush, |txn| {
            txn.open_table(CACHE)?.insert(key, value)?;
            Ok(())
        })
    }

    fn cached_all(&self) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        let shared = &self.shared;
        shared.with_db(|db| {
            let read = || -> Result<Vec<(String, Vec<u8>)>, ::redb::Error> {
                let txn = db.begin_read()?;
                let mut out = Vec::new();
                for record in txn.open_table(CACHE)?.iter()? {
                    let (key, value) = record?;
                    out.push((key.value().to_owned(), value.value().to_vec()));
                }
                Ok(out)
            };
            read().map_err(|e| shared.storage("cannot read the cache of", e))
        })
    }
}

fn storage(path: &Path, what: &str, e: impl Display) -> JournalError {
    JournalError::Storage(format!("{what} the journal {}: {e}", path.display()))
}
