//! Storage behind one trait: SQLite (embedded default) now, PostgreSQL next.
//!
//! The trait is shaped by what must be atomic, not by tables: an [`Ingest`] stores a
//! batch of sessions *and* recomputes the usage days of every key it touched in one
//! transaction, and answers only once that transaction is durable. Implementations are
//! free to group many ingests into one commit.
//!
//! Map — the rules, written once against any backend, then the backends:
//! - `settle` — settling a key: walk, price, compare with the stored days, ledger
//!   reasons, charge and reverse, through the `settle::Sink` a backend implements.
//! - `tails` — what the walk resumes from: a key's sessions and days from an instant on.
//! - `tally` — monthly totals of usage days, kept in step by `settle`, for reports.
//! - `balances` — teams' balances from what a backend reads, by the shared ledger rules.
//! - `conformance` (tests) — what every [`Store`] must do, instantiated per backend.
//! - [`sqlite`] — the SQLite backend: its own I/O only.

pub(crate) mod balances;
#[cfg(test)]
pub(crate) mod conformance;
pub(crate) mod settle;
pub mod sqlite;
pub(crate) mod tails;
pub(crate) mod tally;

use std::future::Future;

use chrono::{DateTime, NaiveDate, Utc};
use daymeter_shared::ledger::Purchase;
use daymeter_shared::record::Problem;
use daymeter_shared::session::OwnedSession;
use daymeter_shared::time::Zone;
use daymeter_shared::usage::UsageDay;
use thiserror::Error;

pub use crate::mail::kinds::Schedule as MailSchedule;
pub use crate::settings::Settings;

/// A failure of the store itself (not of a record).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed, with the backend's own error kept as the source: a second
    /// backend must tell a retryable serialization failure from a real one. The message
    /// repeats it because the logs print errors by their message alone.
    #[error("database: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub token_hash: [u8; 32],
    pub enrolled_at: DateTime<Utc>,
    pub revoked: bool,
    /// Its last successful sync, to the minute (`None`: none yet).
    pub last_sync: Option<DateTime<Utc>>,
}

/// Why usage days are being recomputed; written into the ledger's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// New or longer sessions arrived.
    Sync,
    /// Rates, entitlements, teams or policy changed.
    Import,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Sync => "sync",
            Cause::Import => "import",
        }
    }
}

/// A purchase set anew: its tokens and expiry from now on, and why. Kept beside the
/// purchase, append-only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurchaseCorrection {
    pub id: String,
    pub purchase: String,
    pub at: DateTime<Utc>,
    pub tokens: u64,
    pub expires_at: DateTime<Utc>,
    pub reason: String,
}

/// One ledger entry. Positive tokens pay for a usage day; a reversal is negative.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub team: String,
    pub user: String,
    pub product: String,
    pub day: String,
    pub window_start: DateTime<Utc>,
    /// `None`: no purchase could pay (unfunded).
    pub purchase: Option<String>,
    pub tokens: i64,
    pub reason: String,
}

/// A team's token balance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Balance {
    pub team: String,
    /// Active purchases minus what they paid for.
    pub remaining: u64,
    /// Tokens charged that no purchase could pay.
    pub unfunded: u64,
    pub low_balance: Option<u64>,
    pub low: bool,
    pub purchases: Vec<PurchaseState>,
}

/// A purchase and what it has paid for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurchaseState {
    #[serde(flatten)]
    pub purchase: Purchase,
    pub used: u64,
}

/// One sync's checked sessions, for one user on one device.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub user: String,
    pub device: String,
    pub sessions: Vec<Incoming>,
    pub at: DateTime<Utc>,
}

/// A checked session with what the store keeps of it, prepared by the caller (on the
/// request's thread, not the store's single writer).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub session: OwnedSession,
    /// The zone its days are read in.
    pub zone: Zone,
    /// The stored form: the session's JSON as it arrived. The store keeps user and device
    /// beside it (they come from the request and the device token, not the record) and
    /// reads it back through the same parser and checks as the request's
    /// ([`daymeter_shared::session::RawSession::check`]), so what was accepted once is
    /// read back alike, offsets and all.
    pub body: String,
}

impl Ingest {
    /// An ingest of `sessions` as they arrived: each checked, with its zone and the JSON
    /// it came as. Why not serialize the checked session again: that took a quarter of a
    /// request thread's time under load (sync_load 50x50), and the JSON as received is
    /// what the store should keep anyway.
    pub fn received(
        user: String,
        device: String,
        sessions: Vec<Incoming>,
        at: DateTime<Utc>,
    ) -> Ingest {
        Ingest {
            user,
            device,
            sessions,
            at,
        }
    }

    /// An ingest of `sessions` (each with its zone) for `user` on `device`, each stored
    /// as its serialized form.
    pub fn new(
        user: String,
        device: String,
        sessions: impl IntoIterator<Item = (OwnedSession, Zone)>,
        at: DateTime<Utc>,
    ) -> Result<Ingest, StoreError> {
        let sessions = sessions
            .into_iter()
            .map(|(session, zone)| {
                let body = serde_json::to_string(&session)
                    .map_err(|e| StoreError::Corrupt(format!("session {}: {e}", session.id)))?;
                Ok(Incoming {
                    session,
                    zone,
                    body,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Ingest {
            user,
            device,
            sessions,
            at,
        })
    }
}

/// What happened to each session of an [`Ingest`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestOutcome {
    /// Durable: stored (or already stored with an equal or longer copy).
    pub accepted: Vec<String>,
    /// Refused with the reason (a copy that conflicts with the stored one).
    pub rejected: Vec<(String, Problem)>,
    /// The remaining tokens of the user's team once the ingest is applied.
    pub team_remaining: u64,
}

/// Filter of `GET /v1/admin/sessions`; every part optional.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub product: Option<String>,
    /// Only these users' sessions (a page of a per-user report), when given.
    pub users: Option<Vec<String>>,
    /// Sessions overlapping these UTC days (inclusive).
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// One product's usage days on one day, over all users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDay {
    pub product: String,
    pub day: NaiveDate,
    pub tokens: u64,
    pub days: u64,
}

/// One team's usage days on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamDay {
    pub team: String,
    pub day: NaiveDate,
    pub tokens: u64,
    pub days: u64,
}

/// Waste of a team's (or one user's) product over a range: see [`Store::waste_totals`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasteTotal {
    pub team: String,
    pub product: String,
    pub wasted: u64,
    pub saved: u64,
}

/// A key's tokens and days used over whole months.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotal {
    pub user: String,
    pub product: String,
    pub tokens: u64,
    pub days_used: u64,
}

/// A key's last access: an effective session end on the UTC day of its latest (a
/// backend may keep the first end it saw on that day: reports read the day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub user: String,
    pub product: String,
    pub last_end: DateTime<Utc>,
}

/// A stored session with its owner.
pub type StoredSession = OwnedSession;

/// The collector's storage.
pub trait Store: Send + Sync + 'static {
    /// Every device, for the in-memory token table.
    fn devices(&self) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;
    fn add_device(&self, device: Device) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Revokes a device; `false` if there is no such device.
    fn revoke_device(&self, id: String) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Links a new token to an enrolled device, revoked or not (`device.id` names it;
    /// its token hash, hostname, OS and agent version are the new ones; `enrolled_at` is
    /// kept) and lifts any revocation — only while the device's token hash is still
    /// `proof`, checked in the same transaction, so that one old token links one new
    /// token at most. `false` if no device has that id and hash. The caller has
    /// already compared the proof in constant time; this check only settles races.
    fn reenrol_device(
        &self,
        device: Device,
        proof: [u8; 32],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Stores sessions and recomputes the usage days of the keys they touch, durably,
    /// under the store's settings at that moment: an ingest ordered after a
    /// [`Store::put_settings`] is priced by the new settings, one ordered before it is
    /// repriced by it.
    fn ingest(
        &self,
        ingest: Ingest,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send;
    fn settings(&self) -> impl Future<Output = Result<Settings, StoreError>> + Send;
    /// Replaces the settings and recomputes every key's usage days under them.
    fn put_settings(
        &self,
        settings: Settings,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Usage days whose `day` is in `[from, to]` (a missing bound does not limit),
    /// sorted by user, product, window start.
    fn usage_days(
        &self,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> impl Future<Output = Result<Vec<UsageDay<'static>>, StoreError>> + Send;
    /// Each key's monthly totals ([`tally::KeyMonth`]) for the months that overlap
    /// `[from, to]`, of `users` only when given, sorted by user, product, month. What
    /// reports read instead of the days themselves: a row per key and month.
    fn key_months(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        users: Option<Vec<String>>,
    ) -> impl Future<Output = Result<Vec<tally::KeyMonth>, StoreError>> + Send;
    /// Each key's tokens and days used over the days `[from, to]`, one row a key with
    /// any, sorted by user and product: what the token and product reports read, from
    /// whole months' totals and the days of the months the range cuts
    /// ([`tally::split`]).
    fn key_totals(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Future<Output = Result<Vec<KeyTotal>, StoreError>> + Send;
    /// Each product's tokens and usage days by day in `[from, to]`, over all users.
    fn product_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Future<Output = Result<Vec<ProductDay>, StoreError>> + Send;
    /// Each team's tokens and usage days by day in `[from, to]`, users counted in the
    /// team the settings put them in.
    fn team_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Future<Output = Result<Vec<TeamDay>, StoreError>> + Send;
    /// Tokens wasted and what `rollover = active` would have saved, over the usage days
    /// dated in `[from, to]` (see `daymeter_shared::waste`): by team and product, or,
    /// with `user`, that user's by product (`team` empty).
    fn waste_totals(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        user: Option<String>,
    ) -> impl Future<Output = Result<Vec<WasteTotal>, StoreError>> + Send;
    /// Each key's last access (an end on the day of its latest session end), of `users`
    /// only when given, sorted by user and product.
    fn reaches(
        &self,
        users: Option<Vec<String>>,
    ) -> impl Future<Output = Result<Vec<Reach>, StoreError>> + Send;
    /// Users that have sent sessions, in order, those after `after`, at most `limit`:
    /// how per-user reports are paged.
    fn users_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The usage days of `users` whose `day` is in `[from, to]`, sorted by user,
    /// product, window start: a page of a per-user report.
    fn users_days(
        &self,
        users: Vec<String>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Future<Output = Result<Vec<UsageDay<'static>>, StoreError>> + Send;
    fn sessions(
        &self,
        filter: SessionFilter,
    ) -> impl Future<Output = Result<Vec<StoredSession>, StoreError>> + Send;
    /// The user's usage days whose window contains `at` (the products' current windows).
    fn current_windows(
        &self,
        user: String,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<UsageDay<'static>>, StoreError>> + Send;
    /// Records a token purchase.
    fn add_purchase(
        &self,
        purchase: Purchase,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A purchase as it stands now, if there is one of that id.
    fn purchase(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<Purchase>, StoreError>> + Send;
    /// Applies a correction to a purchase; false if there is no such purchase.
    fn correct_purchase(
        &self,
        correction: PurchaseCorrection,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Every team's balance at `at` (teams with purchases or charges, and the settings' teams).
    fn balances(
        &self,
        at: DateTime<Utc>,
        settings: Settings,
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send;
    /// A team's remaining tokens at `at` (active purchases minus what they paid for).
    fn team_remaining(
        &self,
        team: String,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Ledger entries, oldest first, of one team or all.
    /// Ledger entries in `seq` order, those after `after` (a page's last `seq`), at most
    /// `limit` of them: the ledger only grows, so an admin reads it a page at a time.
    fn ledger(
        &self,
        team: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;
    /// The longest span of a stored session (start to its effective end), in whole
    /// seconds: an import may not shorten the window so far that one stored session
    /// spans more charge windows than a sync may bring.
    fn longest_session(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Last successful sync of a user, for the offline grace (to the minute: a sync
    /// within a minute of the recorded one leaves it).
    fn last_sync(
        &self,
        user: String,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;
    /// Stores a mail schedule unless its recipient (compared without regard to case)
    /// already has `max_per_recipient`: counted and inserted in one transaction, so two
    /// requests at once cannot both pass the count. `false`: refused for the limit.
    fn add_mail_schedule(
        &self,
        schedule: MailSchedule,
        max_per_recipient: usize,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Every mail schedule, by recipient and creation.
    fn mail_schedules(&self) -> impl Future<Output = Result<Vec<MailSchedule>, StoreError>> + Send;
    /// Deletes a schedule and its low-balance readings; `false` if there is none.
    fn delete_mail_schedule(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records a schedule's next send (after a send succeeded); `false` if it was
    /// deleted meanwhile.
    fn set_mail_next_run(
        &self,
        id: String,
        next_run: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Each low-balance schedule's last reading of a team's remaining tokens, as
    /// `(schedule, team, remaining)`.
    fn low_balance_readings(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, u64)>, StoreError>> + Send;
    /// Records a low-balance schedule's reading of a team (ignored if the schedule was
    /// deleted meanwhile).
    fn set_low_balance_reading(
        &self,
        schedule: String,
        team: String,
        remaining: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
