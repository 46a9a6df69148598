//! `daymeter-agent`: the workstation service, as a library so its parts can be tested
//! one by one and the binary stays a thin command line.
//!
//! Map:
//! - [`accounts`] — Windows accounts as `u32` ids (SID → id and name, kept in the
//!   journal so an offline machine names its users as before); Linux has uids.
//! - [`config`] — the agent's TOML configuration, environment overrides, default paths.
//! - [`group_policy`] — the Windows registry's settings (Group Policy, the installer's
//!   values), the order they rank in over the file, and the collector-policy overrides.
//! - [`watch`] — which product processes run now: on Linux the kernel's process events
//!   (netlink process connector) with an incremental `/proc` listing as backstop, or the
//!   listing alone where events cannot be had; a Toolhelp snapshot on Windows; sysinfo on
//!   macOS; all behind
//!   [`watch::ProcessSource`].
//! - [`journal`] — every session, the device token and the collector's cached answers,
//!   durable across crashes, behind [`journal::Journal`]: redb by default, sled at the
//!   admin's choice (`journal = "sled"`), a journal the other wrote migrated on start
//!   (`docs/journal.md`).
//! - [`meter`] — turns what runs into opened, advanced and closed sessions.
//! - [`offset`] — the device clock's offset to the collector's, and which sessions it
//!   may move.
//! - [`sync`] — enrolment and `/v1/sync` with the collector, back-off while it is away.
//! - [`status`] — `daymeter-agent status`, answered by the running agent over a local
//!   socket or read from the journal.
//! - [`status_socket`] — the local socket the running agent answers on, each request
//!   authorised by the caller's credentials (Unix code in its own module).
//! - [`power`] — sleep: suspends found by the clocks, announced by logind (Linux) or the
//!   service control manager's power events (Windows).
//! - [`grace`] — the offline grace: how long products may run without a sign-in, and
//!   the warnings, asks to close and kills that follow, as pure rules.
//! - [`enforce`] — asks a product process to close, or kills it, making sure first that
//!   the pid still is that process.
//! - [`run`] — the service loop that ties them together.
//! - [`service`] — starting and stopping it: in the foreground (`run`) or under the
//!   Windows service control manager (`service`, `install-service`).
//! - [`helper`] — `daymeter-agent session`, the per-user session helper: reports the
//!   user's idle time to the service and shows its reminders as desktop notifications.

pub mod accounts;
pub mod activity;
pub mod config;
pub mod enforce;
pub mod grace;
pub mod group_policy;
pub mod helper;
pub mod journal;
pub mod meter;
pub mod offset;
pub mod power;
pub mod reminder;
pub mod run;
pub mod service;
pub mod status;
pub mod status_socket;
pub mod sync;
pub mod users;
pub mod watch;
pub mod windows;
