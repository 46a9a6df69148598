//! A stand-in logind for tests, on zbus, on a private bus used as the system bus: it
//! answers `Inhibit` with one end of a socket pair (the test keeps the other, to see when
//! the lock is released) and emits `PrepareForSleep` when told. logind itself cannot run
//! here, and a real suspend cannot happen in a test.

#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use zbus::message::Type as MessageType;
use zbus::{Connection, Message, MessageStream};

const WAIT: Duration = Duration::from_secs(10);

/// What the stand-in logind saw of one `Inhibit` call, and its end of the descriptor.
pub struct Inhibited {
    pub args: (String, String, String, String),
    pub ours: UnixStream,
}

/// A logind that answers `Inhibit` with one end of a socket pair and emits
/// `PrepareForSleep` when told.
pub struct StandIn {
    conn: Connection,
    inhibits: mpsc::UnboundedReceiver<Inhibited>,
}

impl StandIn {
    pub async fn start(address: &str) -> StandIn {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .expect("connect to the private bus");
        let mut calls = MessageStream::from(&conn);
        conn.request_name("org.freedesktop.login1")
            .await
            .expect("own logind's name");
        let (tx, inhibits) = mpsc::unbounded_channel();
        let replier = conn.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = next_message(&mut calls).await {
                if msg.message_type() != MessageType::MethodCall
                    || msg.header().member().map(|m| m.as_str()) != Some("Inhibit")
                {
                    continue;
                }
                let args: (String, String, String, String) =
                    msg.body().deserialize().expect("Inhibit(ssss)");
                let (ours, theirs) = UnixStream::pair().expect("a socket pair");
                let theirs = OwnedFd::from(theirs);
                replier
                    .reply(&msg.header(), &zbus::Fd::from(&theirs))
                    .await
                    .expect("reply");
                drop(theirs);
                let _ = tx.send(Inhibited { args, ours });
            }
        });
        StandIn { conn, inhibits }
    }

    pub async fn prepare_for_sleep(&self, start: bool) {
        emit(&self.conn, start).await;
    }

    pub async fn next_inhibit(&mut self) -> Inhibited {
        timeout(WAIT, self.inhibits.recv())
            .await
            .expect("an Inhibit call in time")
            .expect("the stand-in runs")
    }
}

pub async fn emit(conn: &Connection, start: bool) {
    conn.emit_signal(
        None::<&str>,
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "PrepareForSleep",
        &(start,),
    )
    .await
    .expect("emit PrepareForSleep");
}

async fn next_message(stream: &mut MessageStream) -> Option<zbus::Result<Message>> {
    use zbus::export::futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
