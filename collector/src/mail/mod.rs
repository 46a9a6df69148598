//! Mail from the collector: scheduled reports with their CSV attached, inactive-user
//! notifications, low-balance alerts and a weekly waste digest, over SMTP.
//!
//! By role:
//! - [`schedule`] — when each goes out: sends computed from the start, missed sends
//!   collapsed into one, five schedules per recipient, alerts once per crossing, the
//!   days a report covers.
//! - [`kinds`] — what a schedule is, and the rules a new one is checked by.
//! - [`compose`] — what each mail says, from the reports' documents and the export's
//!   file.
//! - [`config`] — the config file's `[mail]` table.
//! - [`smtp`] — sending over SMTP with lettre (STARTTLS, TLS or none; credentials).
//! - [`worker`] — the scheduler task `serve` starts when mail is configured: it reads
//!   the store, calls the rules above, sends, and stores the next send.
//!
//! Schedules and low-balance readings are stored by the [`crate::store::Store`]; the
//! admin API is `api::mail`.

pub mod compose;
pub mod config;
pub mod kinds;
pub mod schedule;
pub mod smtp;
pub mod worker;
