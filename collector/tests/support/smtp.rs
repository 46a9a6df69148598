//! A small SMTP server on loopback for the mail tests: EHLO/HELO, AUTH PLAIN, MAIL FROM,
//! RCPT TO, DATA, RSET, NOOP and QUIT, each message kept as received (envelope and raw
//! text), optionally offering STARTTLS with a given certificate. It can be told to refuse every recipient with a temporary error, as a relay
//! does when it is overloaded, to show that a failed send is tried again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The decoded `AUTH PLAIN` response (`\0user\0password`), if the client logged in.
    pub auth: Option<String>,
    /// Sent over TLS (after STARTTLS, or from the first byte).
    pub encrypted: bool,
    pub data: String,
}

impl Received {
    /// The message as a mail client reads it.
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .expect("a parsable message")
    }
}

/// The running server; it stops with the test's runtime.
#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicBool>,
    tls: Option<(tokio_rustls::TlsAcceptor, Wrap)>,
}

/// How a server with a certificate uses it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// Offered by STARTTLS (port 587's way).
    StartTls,
    /// From the first byte (port 465's way).
    Implicit,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        SmtpServer::start_with(None).await
    }

    async fn start_with(tls: Option<(tokio_rustls::TlsAcceptor, Wrap)>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the SMTP server");
        let port = listener.local_addr().expect("its address").port();
        let server = SmtpServer {
            port,
            received: Arc::default(),
            refuse: Arc::default(),
            tls,
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(stream).await;
                });
            }
        });
        server
    }

    /// Refuse (`451`) every recipient from now on, or accept again.
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (with a deadline) until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        let until = Instant::now() + deadline;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < until,
                "{} of {n} mails arrived within {deadline:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// As [`SmtpServer::start`], with `cert` (PEM chain) and `key` (PEM): offered by
    /// STARTTLS (a client that asks upgrades the connection before anything else), or
    /// TLS from the first byte.
    pub async fn start_tls(cert: &str, key: &str, wrap: Wrap) -> SmtpServer {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("the key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        SmtpServer::start_with(Some((acceptor, wrap))).await
    }

    async fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        if let Some((acceptor, Wrap::Implicit)) = &self.tls {
            let mut conn = BufReader::new(acceptor.accept(stream).await?);
            conn.write_all(b"220 localhost ESMTP daymeter-test\r\n")
                .await?;
            return self.session(&mut conn, false, true).await.map(|_| ());
        }
        let mut conn = BufReader::new(stream);
        conn.write_all(b"220 localhost ESMTP daymeter-test\r\n")
            .await?;
        let offer = self.tls.is_some();
        match self.session(&mut conn, offer, false).await? {
            Ended::Quit => Ok(()),
            Ended::StartTls => {
                let Some((acceptor, _)) = self.tls.clone() else {
                    return Ok(());
                };
                let tls = acceptor.accept(conn.into_inner()).await?;
                let mut conn = BufReader::new(tls);
                self.session(&mut conn, false, true).await.map(|_| ())
            }
        }
    }

    /// One SMTP conversation on `conn` until QUIT, the end of the connection, or (when
    /// `offer_tls`) STARTTLS.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut BufReader<S>,
        offer_tls: bool,
        encrypted: bool,
    ) -> std::io::Result<Ended> {
        let mut current: Option<Received> = None;
        let mut auth = None;
        let mut line = String::new();
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(Ended::Quit);
            }
            let command = line.trim_end().to_owned();
            let upper = command.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                if offer_tls {
                    b"250-localhost\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                } else {
                    b"250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
                }
            } else if upper.starts_with("HELO") {
                b"250 localhost\r\n"
            } else if upper == "STARTTLS" && offer_tls {
                conn.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
                return Ok(Ended::StartTls);
            } else if let Some(b64) = upper.strip_prefix("AUTH PLAIN ") {
                let raw = &command[command.len() - b64.len()..];
                auth = Some(decode_base64(raw));
                b"235 2.7.0 authenticated\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                current = Some(Received {
                    mail_from: address(&command["MAIL FROM:".len()..]),
                    rcpt_to: Vec::new(),
                    auth: auth.clone(),
                    encrypted,
                    data: String::new(),
                });
                b"250 2.1.0 ok\r\n"
            } else if upper.starts_with("RCPT TO:") {
                if self.refuse.load(Ordering::SeqCst) {
                    b"451 4.3.0 try again later\r\n"
                } else if let Some(m) = current.as_mut() {
                    m.rcpt_to.push(address(&command["RCPT TO:".len()..]));
                    b"250 2.1.5 ok\r\n"
                } else {
                    b"503 5.5.1 MAIL first\r\n"
                }
            } else if upper == "DATA" {
                conn.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 {
                        return Ok(Ended::Quit);
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321, 4.5.2).
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                match current.take() {
                    Some(mut m) if !m.rcpt_to.is_empty() => {
                        m.data = data;
                        self.received.lock().unwrap().push(m);
                        b"250 2.0.0 queued\r\n"
                    }
                    _ => b"554 5.5.1 no valid recipients\r\n",
                }
            } else if upper == "RSET" {
                current = None;
                b"250 2.0.0 ok\r\n"
            } else if upper == "NOOP" {
                b"250 2.0.0 ok\r\n"
            } else if upper == "QUIT" {
                conn.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(Ended::Quit);
            } else {
                b"502 5.5.2 not implemented\r\n"
            };
            conn.write_all(reply).await?;
        }
    }
}

/// How a conversation ended.
enum Ended {
    Quit,
    StartTls,
}

/// `<a@b>` (with any parameters after it) → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    arg.strip_prefix('<')
        .and_then(|a| a.split('>').next())
        .unwrap_or(arg)
        .to_owned()
}

fn decode_base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
