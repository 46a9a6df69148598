//! Sending a [`Letter`] over SMTP with lettre: STARTTLS (required, not opportunistic),
//! TLS from the first byte, or — to a relay on loopback — none; the credentials of the
//! `[mail]` table; the system's root certificates plus an optional extra one (a company
//! CA that signs the mail relay).
//!
//! Errors say what failed (connecting, the server's refusal, a bad address) and never
//! carry the password: lettre does not put credentials into its errors, and nothing
//! here formats them.

use std::str::FromStr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment as Part, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::compose::Letter;
use super::config::{MailConfig, Security};

/// How long one SMTP conversation may take before the send counts as failed (and is
/// retried at the next tick).
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("the root certificate {path}: {message}")]
    RootCertificate { path: String, message: String },
    #[error("TLS set-up for {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("recipient {0:?} is not an address")]
    Recipient(String),
    #[error("building the message: {0}")]
    Message(#[source] lettre::error::Error),
    #[error("sending: {0}")]
    Send(#[source] lettre::transport::smtp::Error),
}

/// The SMTP connection settings and the sender, ready to send.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &MailConfig) -> Result<Mailer, SmtpError> {
        let tls = match config.security {
            Security::None => Tls::None,
            Security::Starttls => Tls::Required(tls_parameters(config)?),
            Security::Tls => Tls::Wrapper(tls_parameters(config)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let Some((user, password)) = &config.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: config.from.clone(),
        })
    }

    /// Sends one letter; `Ok` once the server accepted it.
    pub async fn send(&self, letter: &Letter) -> Result<(), SmtpError> {
        let message = message(&self.from, letter)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(SmtpError::Send)
    }
}

fn tls_parameters(config: &MailConfig) -> Result<TlsParameters, SmtpError> {
    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.root_certificate {
        let root = |message: String| SmtpError::RootCertificate {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| root(e.to_string()))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| root(e.to_string()))?;
        params = params.add_root_certificate(cert);
    }
    params.build_rustls().map_err(|source| SmtpError::Tls {
        host: config.host.clone(),
        source,
    })
}

/// The MIME message: plain text, and the CSV as an attachment when there is one.
fn message(from: &Mailbox, letter: &Letter) -> Result<Message, SmtpError> {
    let to = Mailbox::from_str(&letter.to).map_err(|_| SmtpError::Recipient(letter.to.clone()))?;
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(letter.subject.clone());
    let text = SinglePart::plain(letter.body.clone());
    let built = match &letter.attachment {
        None => builder.singlepart(text),
        Some(a) => {
            let csv =
                ContentType::parse("text/csv; charset=utf-8").unwrap_or(ContentType::TEXT_PLAIN);
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(text)
                    .singlepart(Part::new(a.file.clone()).body(a.csv.clone(), csv)),
            )
        }
    };
    built.map_err(SmtpError::Message)
}
