//! Windows stand-ins for [`link`] and [`status`] while those two speak only the Unix
//! socket: the same API, answering that the service cannot be reached. The helper
//! builds and runs on Windows with them (guard, idle source, notifier, its reconnect
//! loop); the named pipe `\\.\pipe\daymeter-agent` replaces this file.

pub mod link {
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    use crate::reminder::Reminder;
    use crate::reminder::wire::FromHelper;
    use crate::watch::ProcessKey;

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

    #[derive(Debug)]
    pub enum Heard {
        Remind(Box<Reminder>),
        Refused(String),
        Close(ProcessKey),
        Gone,
    }

    pub struct Link {
        pub report_every: Duration,
    }

    impl Link {
        pub async fn open(pipe: &Path) -> Result<Link, LinkError> {
            Err(LinkError::Connect {
                path: pipe.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this build has no named-pipe link to the service yet",
                ),
            })
        }

        pub async fn next(&mut self) -> Heard {
            Heard::Gone
        }

        pub async fn report(&mut self, _report: &FromHelper) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::NotConnected))
        }
    }
}

pub mod status {
    use std::path::Path;

    pub async fn text(_pipe: &Path) -> String {
        "daymeter's status cannot be shown: this build has no named-pipe link to the service yet"
            .to_owned()
    }
}
