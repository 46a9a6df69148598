//! The local socket through which the running agent answers `daymeter-agent status`
//! and `daymeter-agent enroll` (redb lets only one process open the journal, so these
//! commands ask the agent that holds it).
//!
//! One command per connection: the client writes `status` or `enroll` and a newline,
//! the agent writes one JSON document and closes; the line `session` instead keeps the
//! connection for a session helper (`crate::reminder::wire`). Unix domain socket on
//! Linux and macOS (`unix`), a named pipe on Windows (`pipe`, where the `socket`
//! setting is the pipe's name); [`connect`] is the client's end of either, for the
//! session helper.
//!
//! Every local account may connect (a designer asks the system's agent about their own
//! products), so the file's mode decides nothing: each request is authorised by the
//! caller's credentials as the kernel reports them for the connection ([`Access::of`];
//! on Windows the account id of the connecting process's token user, see
//! [`crate::accounts`], and [`Access::of_member`]):
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

#[cfg(windows)]
mod pipe;
#[cfg(unix)]
mod unix;

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::run::{Agent, RunError};

/// Longest command line accepted (`ack` and a session id); anything longer is not a
/// client of ours.
const MAX_COMMAND: usize = 128;
/// How long a client waits for the agent's answer: a status is answered in
/// milliseconds, but an agent busy flushing a large journal to a slow disk may take a
/// while; a hung agent must not hang `status` for good.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(90);
/// How long a connection may take to send its command.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// The Windows rule: [`Access::of`], and members of BUILTIN\Administrators whose
    /// token is elevated (`admin`) get everything too, as root does on Linux. A
    /// UAC-filtered administrator's token is not elevated: they see their own sessions
    /// until they ask from an elevated prompt.
    pub fn of_member(caller_id: u32, service_id: u32, admin: bool) -> Access {
        if admin {
            Access::Full
        } else {
            Access::of(caller_id, service_id)
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
    #[cfg(windows)]
    {
        pipe::serve(agent)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = agent;
        Ok(tokio::spawn(async {}))
    }
}

/// One connection, on either transport: reads the command line (at most
/// [`MAX_COMMAND`] bytes within [`COMMAND_WAIT`]), then keeps the connection for a
/// session helper or writes the one answer. `caller` is the account id and its access
/// as the system named them for this connection (`None`: it could not tell).
async fn one_connection<R, W>(
    agent: Arc<Agent>,
    caller: Option<(u32, Access)>,
    read: R,
    mut write: W,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_COMMAND as u64);
    // A caller that connects and says nothing must not hold a task and a descriptor
    // (or a pipe instance) for good: any account may connect.
    let read = tokio::time::timeout(COMMAND_WAIT, reader.read_line(&mut line));
    if !matches!(read.await, Ok(Ok(_))) {
        return;
    }
    if line.trim() == "session" {
        match caller {
            // A session helper: the connection stays open, and the account the system
            // named is the one whose reminders it hears.
            Some((id, _)) => crate::run::serve_helper(agent, id, reader.into_inner(), write).await,
            None => {
                let refusal = refused("the agent cannot tell which account is asking");
                let _ = write.write_all(refusal.as_bytes()).await;
            }
        }
        return;
    }
    let answer = answer(&agent, line.trim(), caller.map(|(_, access)| access)).await;
    let _ = write.write_all(answer.as_bytes()).await;
    // The end of the answer; on a pipe a flush (what was written stays readable by the
    // client until it reads the end: only DisconnectNamedPipe would discard it).
    let _ = write.shutdown().await;
}

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

fn status_json(agent: &Agent, only_owner: Option<u32>) -> serde_json::Value {
    serde_json::to_value(agent.status(only_owner))
        .unwrap_or_else(|e| json!({"error": e.to_string()}))
}

fn refused(why: &str) -> String {
    json!({ "refused": true, "enrolled": false, "error": why }).to_string()
}

/// Asks the running agent; `Err` with `NotFound`/`ConnectionRefused` means none runs.
pub fn ask(path: &Path, command: &str) -> io::Result<String> {
    #[cfg(unix)]
    {
        unix::ask(path, command)
    }
    #[cfg(windows)]
    {
        pipe::ask(path, command)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (path, command);
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no status socket on this platform yet",
        ))
    }
}

/// The two halves of a client's connection to the agent.
pub type Connection = (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
);

/// Connects to the running agent (the Unix socket, or the named pipe on Windows), for
/// a client that talks longer than one `ask`: the session helper's link and its status.
#[cfg(any(unix, windows))]
pub async fn connect(path: &Path) -> io::Result<Connection> {
    #[cfg(unix)]
    {
        let (read, write) = tokio::net::UnixStream::connect(path).await?.into_split();
        Ok((Box::new(read), Box::new(write)))
    }
    #[cfg(windows)]
    {
        pipe::connect(path).await
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

    #[test]
    fn on_windows_an_elevated_administrator_has_full_access_and_a_filtered_one_their_own() {
        // LocalSystem is id 0, as root; the service's own account is full as on Linux.
        assert_eq!(Access::of_member(0, 1000, false), Access::Full);
        assert_eq!(Access::of_member(1000, 1000, false), Access::Full);
        assert_eq!(Access::of_member(1001, 0, true), Access::Full);
        assert_eq!(Access::of_member(1001, 0, false), Access::Own(1001));
    }

    #[tokio::test]
    async fn a_caller_with_their_own_access_may_not_enroll_or_acknowledge() {
        let agent = scratch_agent();
        let own = Some(Access::of_member(1001, 0, false));
        let enroll: serde_json::Value =
            serde_json::from_str(&answer(&agent, "enroll", own).await).unwrap();
        assert_eq!(enroll["refused"], true, "{enroll}");
        let ack: serde_json::Value =
            serde_json::from_str(&answer(&agent, "ack 0190", own).await).unwrap();
        assert_eq!(ack["refused"], true, "{ack}");
        let unknown: serde_json::Value =
            serde_json::from_str(&answer(&agent, "status", None).await).unwrap();
        assert_eq!(unknown["refused"], true, "{unknown}");
        let status: serde_json::Value =
            serde_json::from_str(&answer(&agent, "status", own).await).unwrap();
        assert!(status.get("refused").is_none(), "{status}");
    }

    /// An agent on a scratch journal with no collector, never run.
    fn scratch_agent() -> Agent {
        let dir = tempfile::tempdir().expect("scratch folder");
        let text = format!(
            "collector_url = \"http://127.0.0.1:9\"\ndata_dir = {:?}\nuser = \"t\"\n",
            dir.path().display().to_string()
        );
        let config = crate::config::Config::parse(
            std::path::Path::new("agent.toml"),
            &text,
            Some("secret-0123456789".to_owned()),
        )
        .expect("a configuration");
        let journal =
            Arc::new(crate::journal::redb::RedbJournal::open(dir.path()).expect("a journal"));
        // The folder stays for the test's life (the journal holds files in it).
        std::mem::forget(dir);
        Agent::start(
            config,
            journal,
            Arc::new(daymeter_shared::clock::SystemClock),
            &NoProcesses,
            None,
        )
        .expect("the agent")
    }

    struct NoProcesses;

    impl crate::watch::ProcessSource for NoProcesses {
        fn poll(
            &mut self,
            _: &dyn Fn(crate::watch::Seen<'_>) -> Option<String>,
        ) -> std::io::Result<Vec<crate::watch::Running>> {
            Ok(Vec::new())
        }
        fn forget(&mut self) {}
        fn alive(&self, _: crate::watch::ProcessKey) -> bool {
            false
        }
    }
}
