//! The real `daymeter-collector serve`, as a child process on a SQLite file of its own,
//! spoken to over TCP; and its answers, kept whole for the reports.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub const ENROLLMENT_SECRET: &str = "http-cases-enrollment-secret-0001";
pub const ADMIN_TOKEN: &str = "http-cases-admin-token-00000000001";
/// How long the collector gets to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERMed collector gets to drain and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(40);

/// A directory per case, removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> std::io::Result<TempDir> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "daymeter-{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("collector.log")
    }

    /// The last lines of the collector's log, for a report.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running collector; killed when dropped.
pub struct Collector {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Collector {
    /// Starts `bin serve` on `dir`'s database and waits for its `listening on` line; the
    /// error says why not (with the log's last lines).
    pub fn start(bin: &Path, dir: &TempDir) -> Result<Collector, String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.log())
            .map_err(|e| format!("opening the collector log: {e}"))?;
        let db = dir.path.join("collector.db");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(format!("sqlite://{}", db.display()))
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOKIO_WORKER_THREADS", "1")
            .env_remove("DAYMETER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                return Err(format!(
                    "serve printed no `listening on` line ({other:?}; {status:?}); log:\n{}",
                    dir.log_tail(20)
                ));
            }
        };
        let base = line
            .strip_prefix("listening on ")
            .map(|b| b.trim().to_owned())
            .ok_or_else(|| format!("unexpected first line on stdout: {line:?}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Collector { child, base, http })
    }

    /// Whether the process is still running; if not, how it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(mut self) -> Result<ExitStatus, String> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: kill(2) on our own child's pid; it cannot affect memory safety.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(format!("kill({pid}, SIGTERM) failed"));
        }
        let until = Instant::now() + EXIT_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > until {
                return Err(format!("no exit within {EXIT_DEADLINE:?} of SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One request; `Err` when no complete HTTP answer came back.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await.map_err(|e| format!("{e:?}"))?;
        Ok(Reply {
            status,
            content_type,
            json: serde_json::from_slice(&bytes).ok(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub async fn get_admin(&self, path: &str) -> Result<Reply, String> {
        self.send(reqwest::Method::GET, path, Some(ADMIN_TOKEN), None)
            .await
    }

    /// Enrols a device: its id and token.
    pub async fn enroll(&self, hostname: &str) -> Result<(String, String), String> {
        let body = json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": hostname,
                           "os": "linux", "agent_version": "0.1.0" });
        let r = self
            .send(
                reqwest::Method::POST,
                "/v1/enroll",
                None,
                Some(body.to_string().into_bytes()),
            )
            .await?;
        let field = |name: &str| {
            r.json
                .as_ref()
                .and_then(|j| j[name].as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("enrol answered {}: {}", r.status, r.text))
        };
        Ok((field("device_id")?, field("device_token")?))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An answer, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    /// The body, when it is JSON.
    pub json: Option<Value>,
    pub text: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The answer as a report shows it (long bodies cut).
    pub fn show(&self) -> String {
        let text = if self.text.len() > 1_500 {
            format!(
                "{}… ({} bytes)",
                &self.text[..self.text.floor_char_boundary(1_500)],
                self.text.len()
            )
        } else {
            self.text.clone()
        };
        format!("{} {}", self.status, text)
    }

    /// Why this non-2xx answer is not the protocol's error object
    /// `{"error": {"code", "message", "field"?}}` in JSON, if it is not.
    pub fn error_object_problem(&self) -> Option<String> {
        if !self.content_type.starts_with("application/json") {
            return Some(format!("content type {:?}", self.content_type));
        }
        let Some(error) = self.json.as_ref().and_then(|j| j.get("error")) else {
            return Some("no `error` object".into());
        };
        let non_empty = |k: &str| {
            error
                .get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        if !non_empty("code") {
            return Some("`error.code` is not a non-empty string".into());
        }
        if !non_empty("message") {
            return Some("`error.message` is not a non-empty string".into());
        }
        if !error
            .get("field")
            .is_none_or(|f| f.is_null() || f.is_string())
        {
            return Some("`error.field` is neither a string nor null".into());
        }
        None
    }
}
