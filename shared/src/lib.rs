//! `daymeter-shared`: everything the agent and the collector must agree on, as pure
//! functions and plain data. Nothing here opens a file, a socket or reads the system
//! clock behind a caller's back (time enters through [`clock::Clock`]).
//!
//! Map:
//! - [`time`] — instants on the engine's integer time line, zones, humantime durations.
//! - [`clock`] — the injected clock ([`clock::SystemClock`], [`clock::ManualClock`]).
//! - [`policy`] — the policy keys with their defaults and validation.
//! - [`catalog`] — products and their daily token rates; the built-in catalog.
//! - [`recognition`] — which catalog product a process (executable, arguments) runs.
//! - [`entitlement`] — plans (flex, subscription, free) and who holds which.
//! - [`session`] — the wire session, lenient parsing into it, and the rules for copies.
//! - [`record`] — errors that name the record and field at fault.
//! - [`accounting`] — the day-window walk over one (user, product) key.
//! - [`usage`] — usage days, totals, and their JSON output.
//! - [`waste`] — which charged windows were idle or rolled over: the waste marks.
//! - [`ledger`] — token purchases, teams, and which purchase pays for a day.
//! - [`scenario`] — a whole replay scenario: validation in file order, then accounting of
//!   every key on all cores.

pub mod accounting;
pub mod catalog;
pub mod clock;
pub mod entitlement;
pub mod ledger;
pub mod policy;
pub mod recognition;
pub mod record;
pub mod scenario;
pub mod session;
pub mod time;
pub mod usage;
pub mod waste;
