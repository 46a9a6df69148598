//! Healing a damaged journal: what happens when the database no longer opens or reads
//! (a disk that lost sectors, a file restored half-way from a backup, a scanner or an
//! editor writing into it).
//!
//! The rule: metering never stops for a damaged journal. `daymeter-agent run` moves the
//! damaged database aside, next to the journal (`journal.redb.damaged-<UTC time>`,
//! `sled.damaged-<UTC time>`) and never writes to it again, so that someone can look at
//! it; starts a fresh database; carries over what can still be read; and says so in one
//! error-level log line. `status` and `enroll` only report the damage
//! ([`JournalError::Damaged`]): a command someone runs to look should not rearrange the
//! files an agent about to start will heal anyway.
//!
//! What counts as damage: what the database cannot open or read without losing a
//! record. redb's integrity check on open verifies every page of its committed trees
//! and rebuilds the allocator state from them, exactly as after a crash, so damage to
//! free pages or to that state (it made the old plain open fail or panic) is repaired
//! in place with nothing lost, and nothing is moved aside. sled's recovery is weaker:
//! it stops reading its log at the first bad segment and opens without an error, so
//! what it drops that way gives no signal to heal on (`tests/journal_heal.rs` prints
//! how much); one more reason redb is the default.
//!
//! What "salvaged" means, and why:
//! - **Through the database first.** The damaged copy is opened without being changed
//!   (redb read-only; sled, which has no read-only open and rewrites the log it
//!   recovers, on a scratch copy) and every session and cached value its tree still
//!   reaches is carried over: that is the journal's last committed state.
//! - **Raw bytes when the tree is out of reach.** When the copy does not open, or the
//!   walk of the sessions stops at a damaged page, the files' bytes are scanned for
//!   session records (JSON, found by their opening `{"session":`) and, for each id, the
//!   newest copy is kept by the collector's own rule ([`newest_copies`]). The scan also
//!   finds copies the database had freed: older versions, and sessions the collector
//!   had already acknowledged. Sending those again is harmless, because the collector
//!   keeps the copy with the later end; losing a session the scan would have found is
//!   not. Cached values (opaque bytes with no mark to find them by) are carried over only
//!   through the tree; the next sync brings them back.
//! - **The enrolment** lives in its own file, outside the database (`files.rs`), and is
//!   not touched by any of this.
//! - **Panics.** redb and sled trust the files they wrote; on a damaged one both can
//!   panic (redb's debug builds do on purpose, at checks "no file redb wrote can fail").
//!   Every call into them on a file that may be damaged therefore runs under
//!   [`catch`], and a panic counts as damage. This needs `panic = "unwind"`, the
//!   default, in every profile. The panic's own message still reaches stderr through
//!   the default hook, which is left alone: it is process-wide, and a real bug's panic
//!   on another thread must keep printing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::files::{io_error, sync_dir};
use super::{JournalError, Stage, Tracked};

/// What a session record's JSON starts with ([`Tracked`]'s first field).
const RECORD_START: &[u8] = b"{\"session\":";

/// Whether a damaged database is healed or reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDamage {
    /// Fail with [`JournalError::Damaged`] (`status`, `enroll`, tests).
    Report,
    /// Move it aside, salvage, start afresh (`run`).
    Heal,
}

/// What was read back from a damaged database.
#[derive(Debug, Default)]
pub(crate) struct Salvage {
    /// Newest copy of each session found, in id order.
    pub(crate) sessions: Vec<Tracked>,
    /// Cached values the tree still reached.
    pub(crate) cached: Vec<(String, Vec<u8>)>,
    /// Why the walk through the database stopped short, if it did (the sessions then
    /// also come from the raw scan).
    pub(crate) walk_failed: Option<String>,
}

/// Runs `f`, turning a panic into an error carrying the panic's message.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // Unwind safety: the callers only lose the database handle the panic went through
    // (it is dropped or moved aside) and keep plain vectors pushed whole.
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Renames the damaged database (a file or a directory) to
/// `<name>.damaged-<UTC time>` beside it, durably, and returns the new path.
pub(crate) fn move_aside(path: &Path) -> Result<PathBuf, JournalError> {
    move_aside_as(path, "damaged")
}

/// Renames a database (a file or a directory) to `<name>.<label>-<UTC time>` beside it,
/// durably, and returns the new path.
pub(crate) fn move_aside_as(path: &Path, label: &str) -> Result<PathBuf, JournalError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    // Two heals in one second (a crash loop) must not overwrite the first copy.
    let mut aside = parent.join(format!("{name}.{label}-{stamp}"));
    let mut n = 1;
    while aside.symlink_metadata().is_ok() {
        n += 1;
        aside = parent.join(format!("{name}.{label}-{stamp}-{n}"));
    }
    fs::rename(path, &aside).map_err(io_error(path))?;
    sync_dir(parent)?;
    Ok(aside)
}

/// Reads what can be read from the damaged copy at `aside`: `walk` goes through the
/// database (under [`catch`]); when it fails, the raw scan adds what it finds.
pub(crate) fn salvage(
    aside: &Path,
    walk: impl FnOnce(&mut Salvage) -> Result<(), String>,
) -> Salvage {
    let mut found = Salvage::default();
    if let Err(why) = catch(|| walk(&mut found)).and_then(|walked| walked) {
        found.walk_failed = Some(why);
        found.sessions.extend(scan(aside));
    }
    found.sessions = newest_copies(std::mem::take(&mut found.sessions));
    found
}

/// Every session record in the bytes of `path` (a file, or every file under a
/// directory); unreadable files count as empty.
pub(crate) fn scan(path: &Path) -> Vec<Tracked> {
    let mut out = Vec::new();
    if path.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            out.extend(scan(&entry.path()));
        }
    } else if let Ok(bytes) = fs::read(path) {
        out.extend(scan_bytes(&bytes));
    }
    out
}

/// Every session record in `bytes`: each JSON value starting at a [`RECORD_START`] that
/// decodes as a [`Tracked`].
pub(crate) fn scan_bytes(bytes: &[u8]) -> Vec<Tracked> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(offset) = find(&bytes[at..], RECORD_START) {
        let start = at + offset;
        let mut values = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter();
        match values.next() {
            Some(Ok(tracked)) => {
                out.push(tracked);
                at = start + values.byte_offset();
            }
            _ => at = start + 1,
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One copy per session id, the newest: the collector's rule for competing copies
/// ([`daymeter_shared::session::Session::copy_order`]: the later end, then closed over
/// open…), then the further stage (a rejection is recorded after the close, on the same
/// session). In id order.
pub(crate) fn newest_copies(copies: impl IntoIterator<Item = Tracked>) -> Vec<Tracked> {
    fn stage_rank(stage: &Stage) -> u8 {
        match stage {
            Stage::Open => 0,
            Stage::Closed => 1,
            Stage::Rejected { .. } => 2,
        }
    }
    let mut newest: BTreeMap<String, Tracked> = BTreeMap::new();
    for copy in copies {
        match newest.get_mut(copy.session.id.as_ref()) {
            None => {
                newest.insert(copy.session.id.to_string(), copy);
            }
            Some(kept) => {
                let order = copy
                    .session
                    .copy_order(&kept.session)
                    .then_with(|| stage_rank(&copy.stage).cmp(&stage_rank(&kept.stage)));
                if order == Ordering::Greater {
                    *kept = copy;
                }
            }
        }
    }
    newest.into_values().collect()
}

/// Says, loudly and once, that the journal was replaced, why, where the damaged copy
/// is and what came over: an admin reading this at night must know that metering went
/// on and what, if anything, to do.
pub(crate) fn log_healed(journal: &Path, aside: &Path, cause: &str, salvage: &Salvage) {
    let how = match &salvage.walk_failed {
        None => "read through the database",
        Some(_) => "database unreadable: sessions recovered from raw bytes, newest copy of each",
    };
    tracing::error!(
        journal = %journal.display(),
        damaged_copy = %aside.display(),
        cause,
        salvaged_sessions = salvage.sessions.len(),
        salvaged_cached_values = salvage.cached.len(),
        salvage = how,
        walk_error = salvage.walk_failed.as_deref().unwrap_or(""),
        "the journal was damaged: moved aside and replaced by a fresh journal, salvaged \
         sessions carried over, metering goes on; sessions already uploaded may be sent \
         again (harmless); the damaged copy is kept for inspection and can be deleted"
    );
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use chrono::{FixedOffset, TimeZone};

    use super::*;
    use crate::watch::ProcessKey;
    use daymeter_shared::session::Session;

    fn tracked(id: &str, last_seen: i64, stage: Stage) -> Tracked {
        let at = |s: i64| {
            FixedOffset::east_opt(0)
                .unwrap()
                .timestamp_opt(1_790_000_000 + s, 0)
                .unwrap()
        };
        Tracked {
            session: Session {
                id: Cow::Owned(id.to_owned()),
                user: None,
                device: None,
                product: Cow::Borrowed("acad"),
                version: None,
                start: at(0),
                end: (stage != Stage::Open).then(|| at(last_seen)),
                last_seen: Some(at(last_seen)),
                tz: None,
                suspended: Vec::new(),
                idle: Vec::new(),
            },
            process: ProcessKey { pid: 7, started: 1 },
            owner: None,
            user: None,
            exe: None,
            clock_offset_ms: 0,
            stage,
        }
    }

    #[test]
    fn the_newest_copy_of_each_session_wins_in_id_order() {
        let rejected = Stage::Rejected {
            reason: "unknown product".to_owned(),
        };
        let copies = vec![
            tracked("b", 50, Stage::Open),
            tracked("a", 10, Stage::Open),
            tracked("b", 90, Stage::Open),
            tracked("a", 30, Stage::Closed),
            tracked("b", 70, Stage::Open),
            tracked("a", 30, rejected.clone()),
            tracked("a", 20, Stage::Open),
        ];
        assert_eq!(
            newest_copies(copies),
            vec![tracked("a", 30, rejected), tracked("b", 90, Stage::Open)]
        );
    }

    #[test]
    fn raw_bytes_give_back_every_whole_record_among_garbage() {
        let one = tracked("0190a000-0000-7000-8000-000000000001", 5, Stage::Open);
        let two = tracked("0190a000-0000-7000-8000-000000000002", 9, Stage::Closed);
        let mut bytes = vec![0xa5; 100];
        bytes.extend(serde_json::to_vec(&one).unwrap());
        bytes.extend(b"\x00\x01{\"session\":{\"id\":");
        bytes.extend(serde_json::to_vec(&two).unwrap());
        let cut = serde_json::to_vec(&two).unwrap();
        bytes.extend(&cut[..cut.len() / 2]);
        assert_eq!(scan_bytes(&bytes), vec![one, two]);
    }

    #[test]
    fn a_panic_is_an_error_carrying_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        let message = format!("page {} is damaged", 3);
        assert_eq!(
            catch(|| -> u8 { std::panic::panic_any(message.clone()) }),
            Err(message)
        );
    }
}
