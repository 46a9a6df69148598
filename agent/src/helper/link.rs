//! The helper's end of the service link (`crate::reminder::wire`): one connection to
//! the service's local socket (a Unix socket, or the named pipe on Windows:
//! [`crate::status_socket::connect`]) opened with the line `session`, the service's
//! hello, then reminders in and idle reports out, one JSON document per line.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};

use crate::reminder::Reminder;
use crate::reminder::wire::{FromHelper, ToHelper};

/// A service that accepts but does not say hello within this is not answering.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// Reports more often than this would only cost the service work.
const FASTEST_REPORTS: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the service on {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the service did not say hello: {0}")]
    NoHello(String),
    #[error("the service refused this helper: {0}")]
    Refused(String),
}

/// What the service said.
#[derive(Debug)]
pub enum Heard {
    Remind(Box<Reminder>),
    Refused(String),
    /// Close this process instance's windows ([`ToHelper::Close`]).
    Close(crate::watch::ProcessKey),
    /// The connection ended (the service stopped or restarted).
    Gone,
}

/// An open link, after the hello.
pub struct Link {
    // No length limit on the service's lines: the socket lives in the service's own
    // root-owned runtime directory, so whoever answers there is the service (on
    // Windows the pipe's DACL lets no user create an instance of its name).
    lines: Lines<BufReader<Box<dyn AsyncRead + Send + Unpin>>>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// How often the service wants the idle time.
    pub report_every: Duration,
    /// The account the service knows this helper as (from the connection, not from
    /// anything the helper said).
    pub uid: u32,
}

impl Link {
    /// Connects, says `session` and waits for the hello.
    pub async fn open(socket: &Path) -> Result<Link, LinkError> {
        let connect_error = |source| LinkError::Connect {
            path: socket.display().to_string(),
            source,
        };
        let (reader, mut writer) = crate::status_socket::connect(socket)
            .await
            .map_err(connect_error)?;
        writer
            .write_all(b"session\n")
            .await
            .map_err(connect_error)?;
        let mut lines = BufReader::new(reader).lines();
        let first = tokio::time::timeout(HELLO_WITHIN, lines.next_line())
            .await
            .map_err(|_| LinkError::NoHello("nothing within 10 s".to_owned()))?
            .map_err(|e| LinkError::NoHello(e.to_string()))?
            .ok_or_else(|| LinkError::NoHello("the connection closed".to_owned()))?;
        match serde_json::from_str::<ToHelper>(&first) {
            Ok(ToHelper::Hello {
                uid,
                report_every_ms,
            }) => {
                tracing::debug!(uid, report_every_ms, "the service said hello");
                Ok(Link {
                    lines,
                    writer,
                    uid,
                    report_every: Duration::from_millis(report_every_ms).max(FASTEST_REPORTS),
                })
            }
            Ok(ToHelper::Refused { error }) => Err(LinkError::Refused(error)),
            Ok(ToHelper::Remind(_) | ToHelper::Close { .. }) => {
                Err(LinkError::NoHello("a request came first".to_owned()))
            }
            Err(_) => Err(refusal_of(&first)
                .map(LinkError::Refused)
                .unwrap_or_else(|| LinkError::NoHello(format!("it said {first:?}")))),
        }
    }

    /// The next message. Cancel-safe (a line is taken only when complete), so the
    /// helper waits on it beside its report timer.
    pub async fn next(&mut self) -> Heard {
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => return Heard::Gone,
            };
            match serde_json::from_str::<ToHelper>(&line) {
                Ok(ToHelper::Remind(r)) => return Heard::Remind(Box::new(r)),
                Ok(ToHelper::Refused { error }) => return Heard::Refused(error),
                Ok(ToHelper::Close { pid, started }) => {
                    return Heard::Close(crate::watch::ProcessKey { pid, started });
                }
                Ok(ToHelper::Hello { .. }) => {}
                // A newer service may say things this helper does not know: skip them.
                Err(e) => tracing::debug!(error = %e, "skipped a message from the service"),
            }
        }
    }

    /// Sends one idle report.
    pub async fn report(&mut self, report: &FromHelper) -> io::Result<()> {
        let mut line = serde_json::to_string(report).map_err(io::Error::other)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await
    }
}

/// The local socket's own refusal (`{"refused": true, "error": …}`), which it answers
/// when it cannot tell which account is asking.
fn refusal_of(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("refused")? != true {
        return None;
    }
    Some(value.get("error")?.as_str()?.to_owned())
}
