//! `daymeter-collector` as a library, so tests and benchmarks can drive its commands.
//!
//! Map:
//! - [`replay`] — `daymeter-collector replay FILE|-`: accounting without a server.
//! - [`serve`] — `daymeter-collector serve`: the HTTP server until SIGTERM.
//! - [`api`] — the protocol's endpoints and error object, a module per resource.
//! - [`sync_answer`] — what a sync answers: plans now, open windows, reminders due.
//! - [`sync_body`] — a sync's body read in one pass (sessions parsed and as received).
//! - [`store`] — the storage trait and its SQLite implementation.
//! - [`auth`] — device tokens, secrets, constant-time comparison.
//! - [`config`] — flags, environment, config file, generated dev config.
//! - [`dashboard`] — the admin's pages in the browser: login, reports, charts.
//! - [`mail`] — scheduled reports, inactive users, low-balance alerts and the waste
//!   digest, sent over SMTP by a scheduler inside `serve`.
//! - [`clock`] — the clock `serve` runs on (the system's; a file's in tests).
//! - [`settings`] — policy, catalog, entitlements and teams as one value: pricing,
//!   teams, and the rules an import is merged into them by.
//! - [`reports`] — what licence admins ask (tokens, usage, waste, forecast, advice,
//!   concurrent use), as rules over what the store returns.
//! - [`priority`] — the database writer first: request threads run nicer.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod mail;
pub mod priority;
pub mod replay;
pub mod reports;
pub mod serve;
pub mod settings;
pub mod store;
pub mod sync_answer;
pub mod sync_body;
