//! The admin's choice of backend (`journal = "redb" | "sled"` in the agent's
//! configuration) and the one way every command opens the journal.
//!
//! - **Which backend is in charge** is read from the directory, not assumed from the
//!   configuration: `journal.redb` is redb's, `sled/` is sled's, and an interrupted
//!   migration's marker says which of the two a crash left current (`migrate.rs`).
//! - **`run`** ([`Purpose::Run`]) settles an interrupted migration, migrates a journal
//!   the other backend wrote, and heals a damaged one: metering starts on the
//!   configured backend with everything the journal held.
//! - **`status` and `enroll`** ([`Purpose::Look`]) open whichever journal is in charge
//!   and rearrange nothing: a command someone runs to look must not move files under
//!   an agent about to start (the same rule as for healing, `heal.rs`).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::JournalDir;
use super::heal::OnDamage;
use super::redb::{self, RedbJournal};
use super::sled::{self, SledJournal};
use super::{Durability, Enrolment, Journal, JournalError, Tracked, migrate};

/// A journal backend, as the configuration names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// The default: a fraction of sled's memory and disk for the same journal.
    #[default]
    Redb,
    /// The backend the product's design named.
    Sled,
}

impl JournalKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [JournalKind; 2] = [JournalKind::Redb, JournalKind::Sled];

    /// The configuration's spelling.
    pub fn name(self) -> &'static str {
        match self {
            JournalKind::Redb => "redb",
            JournalKind::Sled => "sled",
        }
    }

    /// The kind a configuration value names, exactly as written (lowercase).
    pub fn from_name(name: &str) -> Option<JournalKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The backend's database inside the journal directory (a file for redb, a
    /// directory for sled): its presence is what says a journal of this kind is there.
    pub fn database(self) -> &'static str {
        match self {
            JournalKind::Redb => redb::DB_FILE,
            JournalKind::Sled => sled::DB_DIR,
        }
    }

    /// Whether `dir` holds this kind's database.
    pub(crate) fn present_in(self, dir: &Path) -> bool {
        dir.join(self.database()).symlink_metadata().is_ok()
    }

    /// Opens this backend in a directory the caller has locked.
    pub(crate) fn open_in(
        self,
        dir: JournalDir,
        on_damage: OnDamage,
    ) -> Result<ChosenJournal, JournalError> {
        Ok(match self {
            JournalKind::Redb => ChosenJournal::Redb(RedbJournal::open_in(dir, on_damage)?),
            JournalKind::Sled => ChosenJournal::Sled(SledJournal::open_in(dir, on_damage)?),
        })
    }
}

impl fmt::Display for JournalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the journal is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The agent's service: migrate to the configured backend, heal damage.
    Run,
    /// A command that reads or writes a little (`status`, `enroll`): open the journal in
    /// charge as it is, report damage.
    Look,
}

/// The journal of the chosen backend.
///
/// An enum rather than a `Box<dyn Journal>`: the service already holds its journal as
/// an `Arc<dyn Journal>`, so a box inside would be a second indirection on every poll's
/// write for nothing, while the enum costs one predictable match and keeps each
/// backend's own methods ([`ChosenJournal::sessions_strict`], `size_on_disk`) in reach
/// of tests and diagnostics without downcasting.
#[derive(Debug)]
pub enum ChosenJournal {
    Redb(RedbJournal),
    Sled(SledJournal),
}

/// Runs `$call` on the backend inside, whichever it is (a match, no vtable).
macro_rules! each {
    ($journal:expr, $j:ident => $call:expr) => {
        match $journal {
            ChosenJournal::Redb($j) => $call,
            ChosenJournal::Sled($j) => $call,
        }
    };
}

impl ChosenJournal {
    /// Opens the journal in `dir` for `purpose`, `configured` being the configuration's
    /// choice. With [`Purpose::Run`] the result is always of the configured kind; with
    /// [`Purpose::Look`] it is the kind in charge on disk (the configured one for a new
    /// journal).
    ///
    /// Fails with [`JournalError::BothKinds`] when both databases are there and no
    /// interrupted migration explains it, and with [`JournalError::CannotMigrate`] when
    /// the other kind's journal cannot be carried over.
    pub fn open(
        dir: &Path,
        configured: JournalKind,
        purpose: Purpose,
    ) -> Result<ChosenJournal, JournalError> {
        let locked = JournalDir::lock(dir)?;
        let journal = match purpose {
            Purpose::Run => {
                migrate::settle(&locked)?;
                match migrate::in_charge(locked.path())? {
                    Some(found) if found != configured => {
                        migrate::migrate(&locked, found, configured)?;
                    }
                    _ => {}
                }
                configured.open_in(locked, OnDamage::Heal)?
            }
            Purpose::Look => {
                let kind = migrate::in_charge(locked.path())?.unwrap_or(configured);
                if kind != configured {
                    tracing::info!(
                        dir = %dir.display(),
                        backend = %kind,
                        configured = %configured,
                        "reading the journal its agent wrote; `daymeter-agent run` migrates it to the configured backend"
                    );
                }
                kind.open_in(locked, OnDamage::Report)?
            }
        };
        match purpose {
            Purpose::Run => {
                tracing::info!(dir = %dir.display(), backend = %journal.kind(), "journal backend");
            }
            Purpose::Look => {
                tracing::debug!(dir = %dir.display(), backend = %journal.kind(), "journal backend");
            }
        }
        Ok(journal)
    }

    /// The backend.
    pub fn kind(&self) -> JournalKind {
        match self {
            ChosenJournal::Redb(_) => JournalKind::Redb,
            ChosenJournal::Sled(_) => JournalKind::Sled,
        }
    }

    /// The directory the journal lives in.
    pub fn dir(&self) -> &Path {
        each!(self, j => j.dir())
    }

    /// Every session, failing on a record that does not decode (see the backends').
    pub fn sessions_strict(&self) -> Result<Vec<Tracked>, JournalError> {
        each!(self, j => j.sessions_strict())
    }

    /// Bytes the journal occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        each!(self, j => j.size_on_disk())
    }
}

impl Journal for ChosenJournal {
    fn put(&self, tracked: &Tracked, durability: Durability) -> Result<(), JournalError> {
        each!(self, j => j.put(tracked, durability))
    }

    fn sessions(&self) -> Result<Vec<Tracked>, JournalError> {
        each!(self, j => j.sessions())
    }

    fn remove(&self, id: &str) -> Result<(), JournalError> {
        each!(self, j => j.remove(id))
    }

    fn flush(&self) -> Result<(), JournalError> {
        each!(self, j => j.flush())
    }

    fn enrolment(&self) -> Result<Option<Enrolment>, JournalError> {
        each!(self, j => j.enrolment())
    }

    fn set_enrolment(&self, enrolment: Option<&Enrolment>) -> Result<(), JournalError> {
        each!(self, j => j.set_enrolment(enrolment))
    }

    fn cached(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        each!(self, j => j.cached(key))
    }

    fn set_cached(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        each!(self, j => j.set_cached(key, value))
    }

    fn cached_all(&self) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        each!(self, j => j.cached_all())
    }
}
