//! Account ids on Windows: the `u32` that [`crate::status_socket::Access`], a process's
//! owner ([`crate::watch::Running::owner`]), activity and helper links carry, made from
//! a Windows account's SID.
//!
//! Linux has uids and needs none of this. Windows names an account by its SID
//! (`S-1-5-21-…-1104`), and its name (`FIRM\sophie`) lives with a domain controller
//! that an offline laptop cannot reach. So each SID gets a small id the first time the
//! agent meets it, its name is looked up **once** (`LookupAccountSidW`) while that
//! works, and both are kept in the journal (cached value [`KEY`]): after a restart, a
//! week offline or a controller that no longer answers, the same SID has the same id
//! and the same name, and one person is never split into two licence users.
//!
//! The rules:
//! - `S-1-5-18` (LocalSystem) is id 0, as root is uid 0 on Linux: [`Access::of`]
//!   gives it everything, and a service running as LocalSystem is its own account.
//! - Every other SID gets the next id from [`FIRST_ID`] up, never reused.
//! - A name that cannot be looked up yet is tried again at most every
//!   [`LOOKUP_AGAIN`]; until then [`Accounts::login_of`] says nothing and the
//!   session is charged as an unknown owner's would be.
//! - A name, once known, is never replaced: a later lookup that answers differently (a
//!   rename in the directory) would split the person.
//!
//! One table per process: the journal belongs to one agent, and the process source
//! (built before the journal is open), the named pipe and [`crate::users::login_of`]
//! all read the table [`Agent::start`](crate::run::Agent::start) installs
//! ([`install`], [`installed`]).
//!
//! [`Access::of`]: crate::status_socket::Access::of

#[cfg(windows)]
pub mod sid;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};

/// The journal's cached value holding the table (JSON: SID → id and name).
pub const KEY: &str = "accounts";
/// LocalSystem.
pub const SYSTEM_SID: &str = "S-1-5-18";
/// LocalSystem's id: like root's uid.
pub const SYSTEM_ID: u32 = 0;
/// The first id given to any other account; ids below it stay free for well-known
/// accounts, should they ever need one of their own.
pub const FIRST_ID: u32 = 1000;
/// How often a name that could not be looked up is tried again: a lookup that waits
/// for an absent domain controller can take seconds, and polls come every second.
pub const LOOKUP_AGAIN: Duration = Duration::from_secs(600);

/// One account as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: u32,
    /// `DOMAIN\name` as the first successful lookup said; `None` until one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The table of accounts met so far.
pub struct Accounts {
    /// Where the table is kept; `None` for a table that lives in memory only (a process
    /// source used without an agent).
    journal: Option<Arc<dyn Journal>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_sid: BTreeMap<String, Account>,
    /// When a failed lookup was last tried, per SID (not kept: a restart tries again).
    tried: HashMap<String, Instant>,
}

impl Accounts {
    /// The table kept in `journal` (empty when the journal has none yet).
    pub fn load(journal: Arc<dyn Journal>) -> Result<Accounts, JournalError> {
        let by_sid = match journal.cached(KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                key: KEY.to_owned(),
                reason: e.to_string(),
            })?,
            None => BTreeMap::new(),
        };
        Ok(Accounts {
            journal: Some(journal),
            state: Mutex::new(State {
                by_sid,
                tried: HashMap::new(),
            }),
        })
    }

    /// A table in memory only.
    pub fn in_memory() -> Accounts {
        Accounts {
            journal: None,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the account `sid`, given one the first time. `lookup` names the
    /// account (`DOMAIN\name`); it is called only while the name is not known yet, and
    /// then at most every [`LOOKUP_AGAIN`].
    pub fn id_of(&self, sid: &str, lookup: impl FnOnce() -> Option<String>) -> u32 {
        let mut state = self.state();
        let state = &mut *state;
        let known = state.by_sid.get(sid).cloned();
        let named = known.as_ref().is_some_and(|a| a.name.is_some());
        if let Some(account) = &known
            && (named
                || state
                    .tried
                    .get(sid)
                    .is_some_and(|at| at.elapsed() < LOOKUP_AGAIN))
        {
            return account.id;
        }
        let name = lookup();
        if name.is_none() {
            state.tried.insert(sid.to_owned(), Instant::now());
        }
        let account = match known {
            Some(mut account) => {
                if name.is_none() {
                    return account.id;
                }
                account.name = name;
                account
            }
            None => Account {
                id: if sid == SYSTEM_SID {
                    SYSTEM_ID
                } else {
                    next_id(&state.by_sid)
                },
                name,
            },
        };
        let id = account.id;
        tracing::info!(sid, id, name = ?account.name, "account met");
        state.by_sid.insert(sid.to_owned(), account);
        self.save(&state.by_sid);
        id
    }

    fn save(&self, by_sid: &BTreeMap<String, Account>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let result = serde_json::to_vec(by_sid)
            .map_err(|e| JournalError::Storage(e.to_string()))
            .and_then(|bytes| journal.set_cached(KEY, &bytes));
        if let Err(e) = result {
            // Kept in memory: the next account met or named writes the whole table again.
            tracing::warn!(error = %e, "cannot keep the account table in the journal");
        }
    }

    /// The account's name as looked up (`FIRM\sophie`).
    pub fn name_of(&self, id: u32) -> Option<String> {
        self.state()
            .by_sid
            .values()
            .find(|a| a.id == id)
            .and_then(|a| a.name.clone())
    }

    /// The account's login: its name without the domain (`sophie` for `FIRM\sophie`),
    /// which is what `user_map` templates and tables are written against, as a Linux
    /// login is.
    pub fn login_of(&self, id: u32) -> Option<String> {
        self.name_of(id).map(|name| login_of_name(&name).to_owned())
    }

    /// The SID an id was given to.
    pub fn sid_of(&self, id: u32) -> Option<String> {
        self.state()
            .by_sid
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(sid, _)| sid.clone())
    }
}

fn next_id(by_sid: &BTreeMap<String, Account>) -> u32 {
    by_sid
        .values()
        .map(|a| a.id.saturating_add(1))
        .max()
        .unwrap_or(FIRST_ID)
        .max(FIRST_ID)
}

/// `sophie` from `FIRM\sophie` (and from `sophie`).
pub fn login_of_name(name: &str) -> &str {
    name.rsplit_once('\\').map_or(name, |(_, login)| login)
}

static INSTALLED: OnceLock<Arc<Accounts>> = OnceLock::new();

/// Makes `accounts` this process's table; the first one installed stays (returned).
pub fn install(accounts: Arc<Accounts>) -> Arc<Accounts> {
    INSTALLED.get_or_init(|| accounts).clone()
}

/// This process's table, if one is installed.
pub fn installed() -> Option<Arc<Accounts>> {
    INSTALLED.get().cloned()
}

/// This process's table, or one in memory that becomes it (a process source or a
/// pipe used without an agent that installed the journal's).
pub fn installed_or_memory() -> Arc<Accounts> {
    INSTALLED
        .get_or_init(|| Arc::new(Accounts::in_memory()))
        .clone()
}

#[cfg(test)]
mod tests;
