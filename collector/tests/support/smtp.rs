//! A small SMTP server on loopback for the mail tests: EHLO/HELO, AUTH PLAIN, MAIL FROM,
//! RCPT TO, DATA, RSET, NOOP and QUIT, each message kept as received (envelope and raw
//! text). It can be told to refuse every recipient with a temporary error, as a relay
//! does when it is overloaded, to show that a failed send is tried again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The decoded `AUTH PLAIN` response (`\0user\0password`), if the client logged in.
    pub auth: Option<String>,
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
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the SMTP server");
        let port = listener.local_addr().expect("its address").port();
        let server = SmtpServer {
            port,
            received: Arc::default(),
            refuse: Arc::default(),
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

    async fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write
            .write_all(b"220 localhost ESMTP daymeter-test\r\n")
            .await?;
        let mut current: Option<Received> = None;
        let mut auth = None;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_owned();
            let upper = command.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("HELO") {
                b"250 localhost\r\n"
            } else if let Some(b64) = upper.strip_prefix("AUTH PLAIN ") {
                let raw = &command[command.len() - b64.len()..];
                auth = Some(decode_base64(raw));
                b"235 2.7.0 authenticated\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                current = Some(Received {
                    mail_from: address(&command["MAIL FROM:".len()..]),
                    rcpt_to: Vec::new(),
                    auth: auth.clone(),
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
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
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
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                b"502 5.5.2 not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
    }
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
