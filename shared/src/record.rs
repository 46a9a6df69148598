//! Errors that name the record and the field at fault.
//!
//! Bad input must never take a batch down: replay reports the first bad record in file
//! order, `/v1/sync` lists each bad session in `rejected` with the same [`Problem`] and
//! stores the rest. The wording is for the IT admin who reads it, so every message says
//! which record, which field and what was wrong with it.

use std::fmt;

use thiserror::Error;

/// What is wrong with one field of one record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error(
        "{field} {value:?} has no UTC offset (write it as 2026-03-02T09:00:00-05:00 or with Z)"
    )]
    NoOffset { field: &'static str, value: String },
    #[error("{field} {value:?} is not an RFC 3339 instant")]
    BadInstant { field: &'static str, value: String },
    #[error("{field} is out of the supported range (years 1677-2262)")]
    OutOfRange { field: &'static str },
    #[error("{field} is before start")]
    BeforeStart { field: &'static str },
    #[error("has neither end nor last_seen")]
    Unbounded,
    #[error("{field} interval #{index} ends before it starts")]
    BackwardsInterval { field: &'static str, index: usize },
    #[error("tz {0:?} is not a known IANA time zone")]
    UnknownZone(String),
    #[error("product {0:?} is not in the catalog")]
    UnknownProduct(String),
    #[error("conflicting copies: {0} differs from an earlier copy of this id")]
    ConflictingCopies(&'static str),
    #[error("{field} {value:?} is not a duration ({reason})")]
    BadDuration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{field} must be longer than zero")]
    NotPositive { field: &'static str },
    #[error("{field} is too long")]
    TooLong { field: &'static str },
    #[error("the session spans {max} charge windows or more; split it or check its instants")]
    TooManyWindows { max: i64 },
    #[error("{field} is out of bounds: {bounds}")]
    OutOfBounds {
        field: &'static str,
        bounds: &'static str,
    },
    #[error("{field} {value:?} is not one of {allowed}")]
    UnknownValue {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// An instant later than the collector's clock allows: the device clock is ahead.
    /// Retryable, unlike every other problem: the same session with corrected instants
    /// is accepted (see [`crate::session::CLOCK_TOLERANCE`]).
    #[error(
        "{field} is later than the collector's time plus 5 minutes: the device clock seems ahead; the session will be accepted when re-sent with corrected instants"
    )]
    ClockAhead { field: &'static str },
    #[error("{0}")]
    Malformed(String),
}

impl Problem {
    /// The field at fault, for the protocol's error object.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Problem::Missing(f)
            | Problem::NoOffset { field: f, .. }
            | Problem::BadInstant { field: f, .. }
            | Problem::OutOfRange { field: f }
            | Problem::BeforeStart { field: f }
            | Problem::BackwardsInterval { field: f, .. }
            | Problem::BadDuration { field: f, .. }
            | Problem::NotPositive { field: f }
            | Problem::TooLong { field: f }
            | Problem::OutOfBounds { field: f, .. }
            | Problem::UnknownValue { field: f, .. }
            | Problem::WrongType { field: f, .. }
            | Problem::ClockAhead { field: f } => Some(f),
            Problem::Unbounded | Problem::TooManyWindows { .. } => Some("end"),
            Problem::UnknownZone(_) => Some("tz"),
            Problem::UnknownProduct(_) => Some("product"),
            Problem::ConflictingCopies(f) => Some(f),
            Problem::Malformed(_) => None,
        }
    }

    /// A stable machine-readable code, for the protocol's error object.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Missing(_) => "missing_field",
            Problem::NoOffset { .. } => "instant_without_offset",
            Problem::BadInstant { .. } => "bad_instant",
            Problem::OutOfRange { .. } => "out_of_range",
            Problem::BeforeStart { .. } => "before_start",
            Problem::Unbounded => "unbounded_session",
            Problem::BackwardsInterval { .. } => "backwards_interval",
            Problem::UnknownZone(_) => "unknown_time_zone",
            Problem::UnknownProduct(_) => "unknown_product",
            Problem::ConflictingCopies(_) => "conflicting_copies",
            Problem::BadDuration { .. } => "bad_duration",
            Problem::NotPositive { .. } => "not_positive",
            Problem::TooLong { .. } => "too_long",
            Problem::OutOfBounds { .. } => "out_of_bounds",
            Problem::TooManyWindows { .. } => "too_many_windows",
            Problem::UnknownValue { .. } => "unknown_value",
            Problem::WrongType { .. } => "wrong_type",
            Problem::ClockAhead { .. } => "clock_ahead",
            Problem::Malformed(_) => "malformed",
        }
    }
}

/// Which record a problem belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A session, by id when it has one, else by its position (from 1) in the file.
    Session { id: Option<String>, position: usize },
    /// An entitlement, by position (from 1) and what it is about.
    Entitlement {
        position: usize,
        user: Option<String>,
        product: Option<String>,
    },
    /// A catalog entry, by product id.
    Product(String),
    /// The policy object.
    Policy,
    /// The scenario or request as a whole (not JSON, not an object…).
    Document,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Session { id: Some(id), .. } => write!(f, "session {id}"),
            Record::Session { id: None, position } => write!(f, "session #{position} (no id)"),
            Record::Entitlement {
                position,
                user,
                product,
            } => {
                write!(f, "entitlement #{position}")?;
                match (user, product) {
                    (Some(u), Some(p)) => write!(f, " ({u}, {p})"),
                    (Some(u), None) => write!(f, " ({u})"),
                    (None, Some(p)) => write!(f, " ({p})"),
                    (None, None) => Ok(()),
                }
            }
            Record::Product(id) => write!(f, "catalog product {id}"),
            Record::Policy => write!(f, "policy"),
            Record::Document => write!(f, "input"),
        }
    }
}

/// A problem with the record it belongs to: `session s7: end is before start`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{record}: {problem}")]
pub struct RecordError {
    pub record: Record,
    pub problem: Problem,
}

impl RecordError {
    pub fn new(record: Record, problem: Problem) -> Self {
        Self { record, problem }
    }
}
