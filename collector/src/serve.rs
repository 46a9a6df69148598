//! `daymeter-collector serve`: the HTTP server over a store, until SIGTERM or Ctrl-C.
//!
//! On a signal the server stops accepting connections, lets requests in flight finish
//! (their syncs are committed and answered), closes the store, and exits 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::{AppState, router};
use crate::config::{ServeArgs, ServeConfig};
use crate::store::sqlite::SqliteStore;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

pub async fn run(args: ServeArgs) -> Result<()> {
    let config = ServeConfig::load(args)?;
    let store = Arc::new(
        SqliteStore::open(&config.db_path)
            .with_context(|| format!("opening {}", config.db_path.display()))?,
    );
    let mut state = AppState::load(
        store.clone(),
        crate::clock::serve_clock(),
        config.enrollment_secret,
        config.admin_token,
    )
    .await?;
    state.secure_cookies = config.tls.is_some();
    state.admin_password_hash = config.admin_password_hash.clone();
    let state = Arc::new(state);
    let app = router(state.clone());
    // The scheduler needs nothing the listener does: started here, stopped before the
    // store closes.
    let mail = match &config.mail {
        Some(mail) => {
            let mailer = crate::mail::smtp::Mailer::new(mail).context("[mail]")?;
            Some(crate::mail::worker::spawn(state.clone(), mailer, mail.tick))
        }
        None => {
            tracing::info!("no [mail] in the config: mail is off");
            None
        }
    };
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Everything that can fail or that a stop request needs is in place before the
    // `listening on` line: a supervisor may send SIGTERM the moment it reads it.
    let tls = match config.tls {
        Some((cert, key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
        ),
        None => None,
    };
    let signals = Signals::install().context("installing the SIGTERM and Ctrl-C handlers")?;
    let handle = axum_server::Handle::new();
    let on_signal = handle.clone();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutting down: draining requests in flight");
        on_signal.graceful_shutdown(Some(DRAIN));
    });
    tracing::info!(%addr, db = %config.db_path.display(), "collector started");
    // One line on stdout that scripts and tests can wait for (the port may be 0 → chosen).
    println!("listening on {scheme}://{addr}");
    std::io::stdout().flush()?;

    match tls {
        Some(tls) => {
            axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
        None => {
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
    }
    if let Some(mail) = mail {
        mail.abort();
        let _ = mail.await;
    }
    drop(state);
    store.close();
    tracing::info!("collector stopped");
    Ok(())
}

/// The stop signals, registered with the OS when installed (a signal that arrives before
/// [`Signals::wait`] is polled is not lost).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
