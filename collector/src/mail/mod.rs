//! Mail from the collector: scheduled reports with their CSV attached, inactive-user
//! notifications, low-balance alerts and a weekly waste digest.
//!
//! - [`schedule`] — when each goes out: sends computed from the start, missed sends
//!   collapsed into one, five schedules per recipient, alerts once per crossing.
//!
//! Sending over SMTP (lettre, with the collector config's STARTTLS/TLS and credentials),
//! the stored schedules and the scheduler task come next; the rules above are what they
//! will call.

pub mod schedule;
