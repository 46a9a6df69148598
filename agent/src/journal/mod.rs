//! The agent's journal: everything that must survive a crash, a power loss or a week
//! offline.
//!
//! It holds every session the collector has not yet acknowledged in its final form, the
//! device's enrolment, and the collector's last answer (catalog, policy, entitlements,
//! grace), so that the agent meters correctly from its first second after a restart,
//! online or not. Opens, closes and acknowledgements are flushed before the call returns;
//! `last_seen` progress is written lazily ([`Durability::Lazy`]) and flushed by the
//! caller at least every 30 s, because an fsync per poll would cost more CPU than the
//! whole rest of the agent.
//!
//! A damaged database does not stop metering: the agent's `run` moves it aside, starts a
//! fresh one and carries over what can still be read (`heal.rs` says what and why).
//!
//! The backend is the admin's choice (`journal = "redb" | "sled"`, `choice.rs`); redb
//! is the default. A journal written by the other backend is migrated when `run` opens
//! it, or the agent refuses to start and says why (`migrate.rs`).

pub mod choice;
mod files;
mod heal;
pub mod migrate;
pub mod redb;
pub mod sled;
#[cfg(windows)]
mod windows_acl;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use daymeter_shared::session::OwnedSession;

use crate::watch::ProcessKey;

pub use choice::{ChosenJournal, JournalKind, Purpose};

/// The journal the agent opens when its configuration names none: redb, which keeps
/// the same journal in a fraction of sled's memory and disk (figures in [`redb`]).
pub type DefaultJournal = self::redb::RedbJournal;

/// Where a session stands in its journey to the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stage {
    /// The product runs (or ran when the agent last looked).
    Open,
    /// The product ended; the session waits for the collector to accept its final copy.
    Closed,
    /// The collector refused the session; kept for the admin, never resent.
    Rejected { reason: String },
}

/// A session as the agent keeps it: the wire session plus the process it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    /// The wire session (`user` and `device` unset: the sync request carries them).
    #[serde(deserialize_with = "daymeter_shared::session::deserialize_owned")]
    pub session: OwnedSession,
    /// The process instance; lets a restarted agent adopt a product that still runs.
    pub process: ProcessKey,
    /// The account that ran the process (see [`crate::watch::Running::owner`]); absent
    /// in journals written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// The licence user the session is charged to, fixed when it opened (a later
    /// change of `user_map` never splits a session); absent in journals written before
    /// it was recorded, which are read as the configured user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The executable's file name, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub stage: Stage,
    /// The offset (collector − device clock, milliseconds) the session's instants were
    /// written with; lets a session refused as `clock_ahead` be moved once, by exactly
    /// what it lacks (see [`crate::offset`]). Absent in journals written before it: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock_offset_ms: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// How soon a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk before the call returns (opens, closes, acknowledgements).
    Flush,
    /// In the journal's memory now, on disk at the next flush or within its own period.
    Lazy,
}

/// The device's identity with the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub collector_url: String,
    pub device_id: String,
    /// Secret: kept owner-only, never logged.
    pub device_token: String,
}

impl std::fmt::Display for Enrolment {
    /// Never shows the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} at {}", self.device_id, self.collector_url)
    }
}

/// A journal failure. The agent keeps metering in memory and retries; it never drops a
/// session because the disk said no.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(String),
    /// Another process holds the journal: a running agent, or a `status` reading it
    /// for a moment.
    #[error(
        "the journal in {} is in use: another daymeter-agent is probably running (stop it, or ask it with `daymeter-agent status`)",
        dir.display()
    )]
    InUse { dir: std::path::PathBuf },
    #[error("journal record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The database itself is damaged: it does not open, fails its checksums, is not a
    /// database, or its library panicked reading it. `daymeter-agent run` heals it
    /// (moves it aside, salvages, starts afresh); other commands report this.
    #[error(
        "the journal {} is damaged ({reason}); `daymeter-agent run` moves it aside, salvages what it can and starts a fresh journal",
        path.display()
    )]
    Damaged {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("journal file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Both backends' databases are in the journal directory and no interrupted
    /// migration explains it (a copy restored by hand, two agents configured apart).
    /// Which one is current cannot be told from the files, and guessing could count
    /// sessions twice or drop some: the agent refuses to start.
    #[error(
        "the journal directory {} holds both a redb journal ({}) and a sled journal ({}/) and no interrupted migration explains it; the agent will not guess which is current. Keep the one the agent last ran with (its log says `backend=` when it opens the journal), move the other out of {}, set `journal` to the kept one's kind and start again",
        dir.display(),
        redb::DB_FILE,
        sled::DB_DIR,
        dir.display()
    )]
    BothKinds { dir: PathBuf },
    /// The journal was written by the other backend and cannot be carried over safely
    /// (it does not open, or a record does not decode); it is left as it was.
    #[error(
        "the journal in {} is a {from} journal and the configuration asks for {to}, but it cannot be migrated ({source}); it is left as it was. Set `journal = \"{from}\"` again to run on it (the agent heals a damaged journal on its own backend), then switch",
        dir.display()
    )]
    CannotMigrate {
        dir: PathBuf,
        from: JournalKind,
        to: JournalKind,
        #[source]
        source: Box<JournalError>,
    },
}

/// What the journal stores. One process owns it at a time.
pub trait Journal: Send + Sync {
    /// Writes (inserts or replaces) a session under its id.
    fn put(&self, tracked: &Tracked, durability: Durability) -> Result<(), JournalError>;

    /// Every session in the journal, in id order (UUID v7: start order).
    fn sessions(&self) -> Result<Vec<Tracked>, JournalError>;

    /// Removes a session whose final copy the collector accepted; flushed.
    fn remove(&self, id: &str) -> Result<(), JournalError>;

    /// Forces every lazy write to disk.
    fn flush(&self) -> Result<(), JournalError>;

    /// The device's enrolment, if any.
    fn enrolment(&self) -> Result<Option<Enrolment>, JournalError>;

    /// Stores (or, with `None`, forgets) the enrolment; flushed, owner-only on disk.
    fn set_enrolment(&self, enrolment: Option<&Enrolment>) -> Result<(), JournalError>;

    /// An opaque cached value (the collector's last sync answer, the last sync time…).
    fn cached(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError>;

    /// Stores an opaque cached value; flushed.
    fn set_cached(&self, key: &str, value: &[u8]) -> Result<(), JournalError>;

    /// Every cached value, in key order: what a migration to another backend carries
    /// over without having to know the agent's keys.
    fn cached_all(&self) -> Result<Vec<(String, Vec<u8>)>, JournalError>;
}
