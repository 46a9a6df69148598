//! The journal on sled 0.34: sessions and cached answers in two sled trees under
//! `sled/` in the journal directory; the lock and the enrolment are `journal/files.rs`'s.
//!
//! The admin's other choice (`journal = "sled"`, the backend the product's design
//! named): sled passes the same crash torture, but costs several times redb's memory
//! and disk for the same journal (figures in [`super::redb`]), so redb is the default.
//! In debug builds its
//! first open also zero-fills ≈ 21 MiB of metrics histograms (42 of 64 Ki counters,
//! `no_metrics` feature or not), which makes debug RSS figures meaningless.
//!
//! Decisions, and why:
//! - **Cache**: sled's page cache defaults to 1 GiB; [`CACHE_BYTES`] (2 MiB) holds a
//!   journal of a few thousand small records.
//! - **Lazy writes**: sled's own flusher writes its buffers out and fsyncs every
//!   [`FLUSH_EVERY_MS`], so a [`Durability::Lazy`] write is on disk within that period
//!   even if the caller never calls [`Journal::flush`]; [`Durability::Flush`] writes call
//!   `Db::flush` before returning.
//! - **Bad records**: [`Journal::sessions`] skips a record that does not decode, with a
//!   `tracing::warn!` naming its key, so that one damaged record cannot stop the agent;
//!   the record stays on disk for inspection. [`SledJournal::sessions_strict`] fails on
//!   it instead.
//! - **Damaged files** are found when the journal opens (sled's recovery, then a walk of
//!   both trees, all under `catch_unwind`: sled panics on some damage) and are
//!   [`JournalError::Damaged`]; [`SledJournal::open_healing`] moves `sled/` aside and
//!   starts afresh with what can be salvaged, as redb's journal does (`journal/heal.rs`).
//!   Damage sled's recovery does not report (it stops reading its log at the first bad
//!   segment and opens anyway) loses what follows it silently: sled gives no signal.

use std::path::Path;

use super::files::{JournalDir, decode_all, decode_session, encode_session};
use super::heal::{self, OnDamage, Salvage};
use super::{Durability, Enrolment, Journal, JournalError, Tracked};

/// Ceiling of sled's page cache, in bytes.
pub const CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Period of sled's background flush (buffers written out and fsynced): the bound on how
/// long a [`Durability::Lazy`] write stays in memory only.
pub const FLUSH_EVERY_MS: u64 = 5_000;

/// Where a scratch copy of damaged files is opened to salvage them (see `read_damaged`).
const SCRATCH_DIR: &str = "sled.salvage";
const SESSIONS_TREE: &str = "sessions";
const CACHE_TREE: &str = "cache";
/// sled's directory inside the journal directory.
pub const DB_DIR: &str = "sled";

/// The agent's journal on sled. See the module notes.
pub struct SledJournal {
    // Fields drop in order: sled closes (flushing) before the directory lock goes.
    sessions: sled::Tree,
    cache: sled::Tree,
    db: sled::Db,
    dir: JournalDir,
}

impl std::fmt::Debug for SledJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledJournal")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl SledJournal {
    /// Opens (creating it if needed) the journal in `dir`.
    ///
    /// Fails with [`JournalError::InUse`] ("another daymeter-agent is probably running")
    /// when another process (or another `open` in this one) has the journal open, and
    /// with [`JournalError::Damaged`] when sled's files are damaged: they are left as
    /// they are.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, OnDamage::Report)
    }

    /// Like [`SledJournal::open`], but damaged files are healed rather than reported:
    /// `sled/` is moved aside as `sled.damaged-<UTC time>`, a fresh one started, and
    /// what can still be read carried over (see `journal/heal.rs`).
    pub fn open_healing(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, OnDamage::Heal)
    }

    fn open_with(dir: &Path, on_damage: OnDamage) -> Result<Self, JournalError> {
        Self::open_in(JournalDir::lock(dir)?, on_damage)
    }

    /// Opens the journal in a directory this process has already locked (the choice of
    /// backend and a migration lock it first).
    pub(crate) fn open_in(dir: JournalDir, on_damage: OnDamage) -> Result<Self, JournalError> {
        let store = dir.path().join(DB_DIR);
        let (db, healed) = match open_checked(&store) {
            Err(JournalError::Damaged { reason, .. }) if on_damage == OnDamage::Heal => {
                let aside = heal::move_aside(&store)?;
                let db = open_checked(&store)?;
                let scratch = dir.path().join(SCRATCH_DIR);
                let salvage = heal::salvage(&aside, |found| read_damaged(&aside, &scratch, found));
                (db, Some((aside, reason, salvage)))
            }
            opened => (opened?, None),
        };
        let path = dir.path();
        let sessions = db
            .open_tree(SESSIONS_TREE)
            .map_err(|e| storage(path, "cannot open the sessions of", e))?;
        let cache = db
            .open_tree(CACHE_TREE)
            .map_err(|e| storage(path, "cannot open the cache of", e))?;
        let journal = SledJournal {
            sessions,
            cache,
            db,
            dir,
        };
        if let Some((aside, cause, salvage)) = healed {
            for tracked in &salvage.sessions {
                let value = encode_session(tracked)?;
                journal
                    .sessions
                    .insert(tracked.session.id.as_bytes(), value)
                    .map_err(|e| journal.storage("cannot write to", e))?;
            }
            for (key, value) in &salvage.cached {
                journal
                    .cache
                    .insert(key.as_bytes(), value.as_slice())
                    .map_err(|e| journal.storage("cannot write to the cache of", e))?;
            }
            journal.flush_db()?;
            heal::log_healed(&store, &aside, &cause, &salvage);
        }
        Ok(journal)
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

    /// Bytes the journal occupies on disk (sled's files plus the enrolment).
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        self.dir.size_on_disk()
    }

    fn read_sessions(&self, strict: bool) -> Result<Vec<Tracked>, JournalError> {
        decode_all(self.sessions.iter(), strict, |e| {
            self.storage("cannot read", e)
        })
    }

    fn flush_db(&self) -> Result<(), JournalError> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| self.storage("cannot flush", e))
    }

    fn storage(&self, what: &str, e: sled::Error) -> JournalError {
        storage(self.dir.path(), what, e)
    }
}

impl Journal for SledJournal {
    fn put(&self, tracked: &Tracked, durability: Durability) -> Result<(), JournalError> {
        let value = encode_session(tracked)?;
        self.sessions
            .insert(tracked.session.id.as_bytes(), value)
            .map_err(|e| self.storage("cannot write to", e))?;
        match durability {
            Durability::Flush => self.flush_db(),
            Durability::Lazy => Ok(()),
        }
    }

    fn sessions(&self) -> Result<Vec<Tracked>, JournalError> {
        self.read_sessions(false)
    }

    fn remove(&self, id: &str) -> Result<(), JournalError> {
        self.sessions
            .remove(id.as_bytes())
            .map_err(|e| self.storage("cannot remove from", e))?;
        self.flush_db()
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.flush_db()
    }

    fn enrolment(&self) -> Result<Option<Enrolment>, JournalError> {
        self.dir.enrolment()
    }

    fn set_enrolment(&self, enrolment: Option<&Enrolment>) -> Result<(), JournalError> {
        self.dir.set_enrolment(enrolment)
    }

    fn cached(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        self.cache
            .get(key.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.storage("cannot read the cache of", e))
    }

    fn set_cached(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.cache
            .insert(key.as_bytes(), value)
            .map_err(|e| self.storage("cannot write to the cache of", e))?;
        self.flush_db()
    }

    fn cached_all(&self) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        let mut out = Vec::new();
        for record in self.cache.iter() {
            let (key, value) = record.map_err(|e| self.storage("cannot read the cache of", e))?;
            let Ok(key) = String::from_utf8(key.to_vec()) else {
                return Err(JournalError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: "cache key is not UTF-8".to_owned(),
                });
            };
            out.push((key, value.to_vec()));
        }
        Ok(out)
    }
}

/// sled's failure to open, with its lock conflict told apart as [`JournalError::InUse`].
///
/// sled's lock on its own file is a second guard behind the directory lock, and another
/// process can hold it while the directory lock is free: a child forked by this process
/// (the agent's tests start many) holds a copy of every descriptor from its fork to its
/// exec, and the exec closes them one by one, so for a moment the child may still hold
/// sled's lock when the directory lock is already free again. Reported as `InUse`, that
/// moment is waited out by the callers that retry (`daymeter-agent` and the tests);
/// reported as a storage error, it failed a test now and then. sled 0.34 has no typed
/// variant for it: an `Io` error of kind `Other` whose text begins "could not acquire
/// lock" (its `Config::try_lock`), which is what is matched.
fn open_error(dir: &Path, e: sled::Error) -> JournalError {
    match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::Other
                && io.to_string().starts_with("could not acquire lock") =>
        {
            JournalError::InUse {
                dir: dir.to_owned(),
            }
        }
        _ => storage(dir, "cannot open", e),
    }
}

/// Opens sled in `store` and reads both trees through, so that damaged files are found
/// here, as [`JournalError::Damaged`], rather than by a panic in the middle of the
/// agent's work; sled panics on some damage (its recovery asserts what it expects to
/// find), hence [`heal::catch`].
fn open_checked(store: &Path) -> Result<sled::Db, JournalError> {
    let dir = store.parent().unwrap_or(store);
    let opened = heal::catch(|| {
        let db = sled::Config::new()
            .path(store)
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open()?;
        walk(&db)?;
        Ok(db)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if is_damage(&e) => Err(JournalError::Damaged {
            path: store.to_owned(),
            reason: e.to_string(),
        }),
        Ok(Err(e)) => Err(open_error(dir, e)),
        Err(panic) => Err(JournalError::Damaged {
            path: store.to_owned(),
            reason: format!("sled panicked opening it: {panic}"),
        }),
    }
}

/// Reads every record of both trees (those that exist), decoding nothing.
fn walk(db: &sled::Db) -> Result<(), sled::Error> {
    for name in [SESSIONS_TREE, CACHE_TREE] {
        if db.tree_names().iter().any(|n| n == name.as_bytes()) {
            for record in db.open_tree(name)?.iter() {
                record?;
            }
        }
    }
    Ok(())
}

/// Whether sled's refusal means its files are damaged, rather than that the disk
/// failed or the journal is in use (those are reported, never healed).
fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// What the damaged copy at `aside` still gives through sled. sled has no read-only
/// open and its recovery rewrites the log it reads, so it opens a scratch copy, which
/// goes afterwards: the copy kept for inspection stays as it was found.
fn read_damaged(aside: &Path, scratch: &Path, found: &mut Salvage) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(aside, scratch).map_err(|e| format!("cannot copy the damaged journal: {e}"))?;
    let walked = heal::catch(|| -> Result<(), sled::Error> {
        let db = sled::Config::new()
            .path(scratch)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        for record in db.open_tree(CACHE_TREE)?.iter() {
            let (key, value) = record?;
            found
                .cached
                .push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
        }
        for record in db.open_tree(SESSIONS_TREE)?.iter() {
            let (key, value) = record?;
            // A record that does not decode is skipped, as `sessions` does.
            if let Ok(tracked) = decode_session(&key, &value) {
                found.sessions.push(tracked);
            }
        }
        Ok(())
    });
    if let Err(e) = std::fs::remove_dir_all(scratch) {
        tracing::warn!(path = %scratch.display(), error = %e, "cannot remove the scratch copy of the damaged journal");
    }
    walked?.map_err(|e| e.to_string())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn storage(dir: &Path, what: &str, e: sled::Error) -> JournalError {
    JournalError::Storage(format!("{what} the journal in {}: {e}", dir.display()))
}
