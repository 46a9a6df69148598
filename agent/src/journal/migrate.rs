//! Switching backends on an existing journal: the journal the other backend wrote is
//! carried over whole, or the agent refuses to start; it is never lost.
//!
//! What is carried over is everything [`Journal`] stores in a database: every session
//! (open, closed and waiting for the collector, rejected with the collector's reason,
//! each with its process, owner, licence user, executable and clock offset) and every
//! cached value, whatever its key (the collector's last answers, the last sync, the
//! revocation, the clock offset, the offline grace's clock and sign-in). The enrolment
//! (device id and token) and the lock live in files of their own beside both
//! databases (`files.rs`) and stay where they are.
//!
//! Invariants: the directory lock is held from the first read to the open of the new
//! journal; at every instant exactly one database is in charge, and a crash at any
//! point leaves either the old one in charge, untouched, or the new one complete.
//!
//! Layout and steps (`A` the old kind, `B` the new):
//!
//! ```text
//! 1  read A whole (strict: a record that does not decode refuses the migration)
//! 2  migration.json       {"from":A,"to":B}, written atomically: a migration is under way
//! 3  migrating-to-B/      a fresh B journal written there, flushed, closed, read back
//! 4  rename migrating-to-B/<B's database> → <B's database>        the commit point
//! 5  rename <A's database> → <A's database>.migrated-to-B-<UTC time>   kept, not deleted
//! 6  remove migrating-to-B/ and migration.json
//! ```
//!
//! [`in_charge`] reads that state back: with the marker, B is in charge once its
//! database is in place (step 4 done) and A before; without it, the one database
//! present. [`settle`], run before anything else when the agent starts, finishes a
//! committed migration (steps 5–6) or rolls back one that was not (drops the staging
//! copy and the marker), so an interrupted migration never leaves both databases live.
//! Both databases present without a marker cannot be told apart: refused
//! ([`JournalError::BothKinds`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::choice::{ChosenJournal, JournalKind};
use super::files::{JournalDir, io_error, sync_dir};
use super::heal::{self, OnDamage};
use super::{Durability, Journal, JournalError, Stage, Tracked};

/// Says a migration is under way, and from which kind to which.
const MARKER: &str = "migration.json";
const MARKER_TEMP: &str = "migration.json.tmp";

/// For tests only: the step after which a migration aborts the process, as a crash
/// there would (`tests/journal_migration.rs`). Never set in production.
pub const CRASH_ENV: &str = "DAYMETER_TEST_MIGRATION_CRASH";

/// The migration under way, as the marker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    from: JournalKind,
    to: JournalKind,
}

/// What a migration carried over, for its log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    pub open: usize,
    pub closed: usize,
    pub rejected: usize,
    pub cached: usize,
}

/// The kind whose database is in charge in `dir`: the one present, or the one an
/// interrupted migration's marker says is current; `None` for a new journal.
pub fn in_charge(dir: &Path) -> Result<Option<JournalKind>, JournalError> {
    if let Some(marker) = read_marker(dir)? {
        if marker.to.present_in(dir) {
            return Ok(Some(marker.to));
        }
        if marker.from.present_in(dir) {
            return Ok(Some(marker.from));
        }
    }
    let present: Vec<JournalKind> = JournalKind::ALL
        .into_iter()
        .filter(|k| k.present_in(dir))
        .collect();
    match present.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(JournalError::BothKinds {
            dir: dir.to_owned(),
        }),
    }
}

/// Finishes a migration that reached its commit point, or undoes one that did not:
/// afterwards no marker and no staging copy are left, and one database is in charge.
pub(crate) fn settle(dir: &JournalDir) -> Result<(), JournalError> {
    let path = dir.path();
    let Some(marker) = read_marker(path)? else {
        return Ok(());
    };
    if marker.to.present_in(path) {
        tracing::info!(dir = %path.display(), from = %marker.from, to = %marker.to, "finishing a journal migration a stop interrupted after its commit");
        if marker.from.present_in(path) {
            move_old_aside(path, marker)?;
        }
    } else {
        tracing::info!(dir = %path.display(), from = %marker.from, to = %marker.to, "undoing a journal migration a stop interrupted before its commit; the old journal stays in charge");
    }
    clean_up(path, marker)
}

/// Carries the `from` journal in `dir` over to a fresh `to` journal and switches to it
/// (the steps in the module notes). Fails with [`JournalError::CannotMigrate`], leaving
/// the old journal in charge and as it was, when it cannot be read whole.
pub(crate) fn migrate(
    dir: &JournalDir,
    from: JournalKind,
    to: JournalKind,
) -> Result<Carried, JournalError> {
    let path = dir.path();
    let marker = Marker { from, to };
    let refuse = |source: JournalError| JournalError::CannotMigrate {
        dir: path.to_owned(),
        from,
        to,
        source: Box::new(source),
    };

    // 1: everything the old journal holds, strictly.
    let old = from
        .open_in(dir.clone(), OnDamage::Report)
        .map_err(refuse)?;
    let sessions = old.sessions_strict().map_err(refuse)?;
    let cached = old.cached_all().map_err(refuse)?;
    drop(old);

    // 2 to 4: a failure here leaves the old journal in charge, as it was.
    stage_and_commit(path, marker, &sessions, &cached).map_err(refuse)?;

    // 5 and 6.
    let aside = move_old_aside(path, marker)?;
    crash_point("moved-aside");
    clean_up(path, marker)?;

    let carried = Carried {
        open: count(&sessions, |s| *s == Stage::Open),
        closed: count(&sessions, |s| *s == Stage::Closed),
        rejected: count(&sessions, |s| matches!(s, Stage::Rejected { .. })),
        cached: cached.len(),
    };
    tracing::info!(
        dir = %path.display(),
        from = %from,
        to = %to,
        open_sessions = carried.open,
        closed_sessions = carried.closed,
        rejected_sessions = carried.rejected,
        cached_values = carried.cached,
        old_journal = %aside.display(),
        "journal migrated to the configured backend; the enrolment stays as it was; the old \
         journal is kept beside it and can be deleted once the agent runs well"
    );
    Ok(carried)
}

/// Steps 2 to 4: the marker, the new journal beside the old one, the switch.
fn stage_and_commit(
    path: &Path,
    marker: Marker,
    sessions: &[Tracked],
    cached: &[(String, Vec<u8>)],
) -> Result<(), JournalError> {
    let to = marker.to;
    // 2: the marker, before anything is written beside the old journal.
    write_marker(path, marker)?;
    crash_point("marked");

    // 3: the new journal, beside the old one, flushed and closed.
    let staging = staging_dir(path, to);
    remove_all(&staging)?;
    {
        let new = to.open_in(JournalDir::lock(&staging)?, OnDamage::Report)?;
        for (n, tracked) in sessions.iter().enumerate() {
            new.put(tracked, Durability::Lazy)?;
            if n == sessions.len() / 2 {
                crash_point("half-staged");
            }
        }
        for (key, value) in cached {
            new.set_cached(key, value)?;
        }
        new.flush()?;
        check_copy(&new, sessions, cached)?;
    }
    crash_point("staged");

    // 4: the commit point.
    let staged = staging.join(to.database());
    let live = path.join(to.database());
    fs::rename(&staged, &live).map_err(io_error(&live))?;
    sync_dir(path)?;
    crash_point("committed");

    Ok(())
}

/// Reads the copy back and compares it with what was read from the old journal: the
/// switch happens only onto a journal known to hold every record.
fn check_copy(
    new: &ChosenJournal,
    sessions: &[Tracked],
    cached: &[(String, Vec<u8>)],
) -> Result<(), JournalError> {
    let copied = new.sessions_strict()?;
    let copied_cache = new.cached_all()?;
    if copied != sessions || copied_cache != cached {
        return Err(JournalError::Storage(format!(
            "the migrated copy in {} does not read back as written ({} of {} sessions, {} of {} cached values)",
            new.dir().display(),
            copied.len(),
            sessions.len(),
            copied_cache.len(),
            cached.len()
        )));
    }
    Ok(())
}

fn count(sessions: &[Tracked], stage: impl Fn(&Stage) -> bool) -> usize {
    sessions.iter().filter(|t| stage(&t.stage)).count()
}

/// Where the new journal is written before the switch.
fn staging_dir(dir: &Path, to: JournalKind) -> PathBuf {
    dir.join(format!("migrating-to-{to}"))
}

fn move_old_aside(dir: &Path, marker: Marker) -> Result<PathBuf, JournalError> {
    heal::move_aside_as(
        &dir.join(marker.from.database()),
        &format!("migrated-to-{}", marker.to),
    )
}

/// Removes the staging copy, then the marker: the marker goes last, so that a crash
/// in between leaves it to say the staging copy is a leftover.
fn clean_up(dir: &Path, marker: Marker) -> Result<(), JournalError> {
    remove_all(&staging_dir(dir, marker.to))?;
    let path = dir.join(MARKER);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    sync_dir(dir)
}

fn remove_all(path: &Path) -> Result<(), JournalError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn read_marker(dir: &Path) -> Result<Option<Marker>, JournalError> {
    let path = dir.join(MARKER);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            key: path.display().to_string(),
            reason: format!("not a migration marker ({e}); remove it if no migration is under way"),
        })
}

/// Writes the marker so that a crash leaves none or all of it.
fn write_marker(dir: &Path, marker: Marker) -> Result<(), JournalError> {
    let temp = dir.join(MARKER_TEMP);
    let path = dir.join(MARKER);
    let bytes = serde_json::to_vec(&marker)
        .map_err(|e| JournalError::Storage(format!("cannot encode the migration marker: {e}")))?;
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&temp)?;
        io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()
    };
    write().map_err(io_error(&temp))?;
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// Aborts the process at `step` when [`CRASH_ENV`] names it: a crash, for the tests.
fn crash_point(step: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|s| s == step) {
        std::process::abort();
    }
}
