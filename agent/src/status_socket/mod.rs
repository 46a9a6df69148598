//! The local socket through which the running agent answers `daymeter-agent status`
//! and `daymeter-agent enroll` (redb lets only one process open the journal, so these
//! commands ask the agent that holds it).
//!
//! One command per connection: the client writes `status` or `enroll` and a newline,
//! the agent writes one JSON document and closes. Unix domain socket on Linux and macOS
//! ([`unix`]); Windows will use a named pipe with the service issue (until then `status`
//! there reads the journal of a stopped agent).
//!
//! Every local account may connect (a designer asks the system's agent about their own
//! products), so the file's mode decides nothing: each request is authorised by the
//! caller's credentials as the kernel reports them for the connection ([`Access::of`]):
//! - `enroll` only from root or the account the agent runs as: enrolling replaces the
//!   device's token, which is the service's business, not a designer's;
//! - `status` from anyone, but a caller who is neither sees only the sessions of
//!   processes their own account runs (a session records the owner of its process when
//!   the process is recognised; sessions journaled before that was recorded are shown to
//!   root and the agent's account only). The licence user is still the configuration's
//!   `user` for every session; the uid decides what a caller may see, not whom a
//!   session is charged to.
//!
//! A refused request is answered (`{"refused": true, "error": …}`), never dropped, so
//! the command line can say why.

#[cfg(unix)]
mod unix;

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::run::{Agent, RunError};

// Used by the Unix socket today, by the Windows named pipe later.
#[cfg_attr(not(unix), allow(dead_code))]
/// Longest command line accepted (`ack` and a session id); anything longer is not a
/// client of ours.
const MAX_COMMAND: usize = 128;

/// What a caller may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root or the agent's own account: every command, every session.
    Full,
    /// Any other account: `status`, about the sessions of this uid's processes.
    Own(u32),
}

impl Access {
    /// The rule: root (uid 0) and the account the agent runs as (its effective uid) get
    /// everything; anyone else their own sessions' status.
    pub fn of(caller_uid: u32, service_uid: u32) -> Access {
        if caller_uid == 0 || caller_uid == service_uid {
            Access::Full
        } else {
            Access::Own(caller_uid)
        }
    }
}

/// Starts answering on the configured socket path; a stale socket from a killed agent is
/// replaced.
pub fn serve(agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, RunError> {
    #[cfg(unix)]
    {
        unix::serve(agent)
    }
    #[cfg(not(unix))]
    {
        let _ = agent;
        Ok(tokio::spawn(async {}))
    }
}

// Used by the Unix socket today, by the Windows named pipe later.
#[cfg_attr(not(unix), allow(dead_code))]
/// The answer to one command from a caller with `access` (`None`: the caller's
/// credentials could not be read, so nothing is answered but the refusal).
async fn answer(agent: &Agent, command: &str, access: Option<Access>) -> String {
    let Some(access) = access else {
        return refused("the agent cannot tell which account is asking; nothing is answered");
    };
    let value = match (command, access) {
        ("status", Access::Full) => status_json(agent, None),
        ("status", Access::Own(uid)) => status_json(agent, Some(uid)),
        ("enroll", Access::Full) => match agent.enroll().await {
            Ok(e) => json!({ "enrolled": true, "device_id": e.device_id }),
            Err(e) => json!({ "enrolled": false, "error": e.to_string() }),
        },
        ("enroll", Access::Own(uid)) => {
            tracing::warn!(
                uid,
                "enroll refused on the status socket: not root or the agent's account"
            );
            return refused(&format!(
                "enroll is allowed only to root and the agent's own account; uid {uid} may ask for status"
            ));
        }
        (ack, Access::Full) if ack.starts_with("ack ") => {
            let id = ack["ack ".len()..].trim();
            match agent.acknowledge(id) {
                Ok(()) => json!({ "acknowledged": id }),
                Err(e) => json!({ "error": e }),
            }
        }
        (ack, Access::Own(uid)) if ack.starts_with("ack ") => {
            tracing::warn!(
                uid,
                "ack refused on the local socket: not root or the agent's account"
            );
            return refused(&format!(
                "acknowledging a rejected session is allowed only to root and the agent's own account; uid {uid} may ask for status"
            ));
        }
        (other, _) => json!({
            "error": format!("unknown command {:?}; try status, enroll or ack ID", other)
        }),
    };
    value.to_string()
}

// Used by the Unix socket today, by the Windows named pipe later.
#[cfg_attr(not(unix), allow(dead_code))]
fn status_json(agent: &Agent, only_owner: Option<u32>) -> serde_json::Value {
    serde_json::to_value(agent.status(only_owner))
        .unwrap_or_else(|e| json!({"error": e.to_string()}))
}

// Used by the Unix socket today, by the Windows named pipe later.
#[cfg_attr(not(unix), allow(dead_code))]
fn refused(why: &str) -> String {
    json!({ "refused": true, "enrolled": false, "error": why }).to_string()
}

/// Asks the running agent; `Err` with `NotFound`/`ConnectionRefused` means none runs.
pub fn ask(path: &Path, command: &str) -> io::Result<String> {
    #[cfg(unix)]
    {
        unix::ask(path, command)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, command);
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no status socket on this platform yet",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_agents_own_account_have_full_access_and_others_their_own() {
        assert_eq!(Access::of(0, 998), Access::Full);
        assert_eq!(Access::of(998, 998), Access::Full);
        assert_eq!(Access::of(1000, 998), Access::Own(1000));
        assert_eq!(Access::of(1000, 0), Access::Own(1000));
    }
}
