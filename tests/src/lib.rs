//! The harness of the end-to-end tests: the real `daymeter-collector` and
//! `daymeter-agent` binaries, started as processes over real TCP, with real product
//! processes (a copy of `sleep` under a product's executable name).
//!
//! Every test uses its own product executable names, user and folders, and its agents
//! recognise no built-in product, so tests never meter each other's processes nor the
//! machine's own (an `acad.exe` started by hand).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[cfg(target_os = "linux")]
pub mod wine;

pub const ENROLLMENT_SECRET: &str = "e2e-enrolment-secret-0123";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// The folder the workspace's binaries are built into (`target/debug`), built on first
/// use so that `cargo test -p daymeter-tests` works on its own too.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "daymeter-agent",
                "-p",
                "daymeter-collector",
                "--bins",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build of the binaries");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/<test> → target/debug
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_owned()
    })
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("daymeter-agent")
}

pub fn collector_bin() -> PathBuf {
    bin_dir().join("daymeter-collector")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running collector on SQLite.
pub struct Collector {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub db: PathBuf,
    http: reqwest::Client,
    /// Certificate and key files when serving HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Collector {
    /// Starts a collector on a free loopback port with its database in `dir`.
    pub fn start(dir: &Path) -> Collector {
        Self::start_on(dir, "127.0.0.1:0", None)
    }

    /// Serves HTTPS with a certificate for `localhost` generated into `dir`; returns the
    /// collector and the certificate's PEM file (the CA an agent must trust).
    pub fn start_tls(dir: &Path) -> (Collector, PathBuf) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("a test certificate");
        let cert_file = dir.join("collector-cert.pem");
        let key_file = dir.join("collector-key.pem");
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, signing_key.serialize_pem()).expect("write the key");
        let c = Self::start_on(dir, "127.0.0.1:0", Some((cert_file.clone(), key_file)));
        (c, cert_file)
    }

    fn start_on(dir: &Path, listen: &str, tls: Option<(PathBuf, PathBuf)>) -> Collector {
        let db = dir.join("collector.db");
        let mut command = Command::new(collector_bin());
        command.args(["serve", "--listen", listen, "--db"]).arg(&db);
        if let Some((cert, key)) = &tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let mut child = command
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the collector");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the collector's first line");
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        let http = match &tls {
            None => reqwest::Client::new(),
            Some((cert, _)) => reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&std::fs::read(cert).expect("certificate"))
                        .expect("a PEM certificate"),
                )
                .resolve("localhost", addr)
                .build()
                .expect("an HTTPS client"),
        };
        Collector {
            child: Some(child),
            addr,
            db,
            http,
            tls,
        }
    }

    /// The collector's base URL (`https://localhost:PORT` when serving HTTPS, so that
    /// the certificate's name matches).
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and database.
    pub fn restart(&mut self, dir: &Path) {
        self.kill();
        let addr = self.addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            if std::net::TcpListener::bind(&addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tls = self.tls.take();
        *self = Self::start_on(dir, &addr, tls);
    }

    pub async fn admin_get(&self, path_and_query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin GET");
        assert!(
            r.status().is_success(),
            "GET {path_and_query}: {}",
            r.status()
        );
        r.json().await.expect("admin JSON")
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("admin POST");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Imports a catalog of `products` (id → executable name) at `tokens` per day, with a
    /// short policy so a test's sessions count.
    pub async fn import_products(&self, products: &[(&str, &str)], policy: Value) {
        let catalog: serde_json::Map<String, Value> = products
            .iter()
            .map(|(id, exe)| {
                (
                    (*id).to_owned(),
                    json!({"name": id, "tokens_per_day": 7, "match": [{"exe": exe}]}),
                )
            })
            .collect();
        self.admin_post(
            "/v1/admin/import",
            &json!({"catalog": catalog, "policy": policy}),
        )
        .await;
    }

    /// The sessions the collector holds for `user`.
    pub async fn sessions_of(&self, user: &str) -> Vec<Value> {
        let v = self
            .admin_get(&format!("/v1/admin/sessions?user={user}"))
            .await;
        v["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// A reachable collector's answer to /healthz.
    /// Waits (up to 30 s) for `user`'s stored sessions to satisfy `pred`; returns them.
    pub async fn sessions_where(&self, user: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(
            &format!("sessions of {user} as expected"),
            Duration::from_secs(30),
            || async {
                let s = self.sessions_of(user).await;
                pred(&s).then_some(s)
            },
        )
        .await
    }

    pub async fn healthy(&self) -> bool {
        self.http
            .get(format!("{}/healthz", self.url()))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub config: PathBuf,
}

impl Agent {
    /// Writes a configuration for `user` in `dir` pointing at `collector_url`, the
    /// enrolment secret in the environment (never in the file or argv).
    pub fn configure(dir: &Path, collector_url: &str, user: &str) -> PathBuf {
        Self::configure_with(dir, collector_url, user, "")
    }

    /// As [`Agent::configure`], on the journal backend `journal` (`"redb"`, `"sled"`),
    /// so that a test body runs unchanged on either.
    pub fn configure_journal(
        dir: &Path,
        collector_url: &str,
        user: &str,
        journal: &str,
    ) -> PathBuf {
        Self::configure_with(
            dir,
            collector_url,
            user,
            &format!("journal = \"{journal}\"\n"),
        )
    }

    /// The agent's journal directory under a test's `dir` (as [`Agent::configure`] sets
    /// its data directory).
    pub fn journal_dir(dir: &Path) -> PathBuf {
        dir.join("data").join("journal")
    }

    /// As [`Agent::configure`], with `extra` lines appended to the file; an empty `user`
    /// leaves the key out.
    ///
    /// `catalog = {}` replaces the agent's built-in catalog with nothing: it recognises
    /// only what the test imports into the collector (its own executable names), never
    /// an `acad.exe` or `Revit.exe` that happens to run on the machine.
    pub fn configure_with(dir: &Path, collector_url: &str, user: &str, extra: &str) -> PathBuf {
        let config = dir.join("agent.toml");
        // No `user`: each session is charged to its process owner through `user_map`.
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("user = \"{user}\"\n")
        };
        let text = format!(
            "collector_url = \"{collector_url}\"\n{user}data_dir = \"{}\"\nsocket = \"{}\"\npoll_interval = \"100ms\"\ncatalog = {{}}\n{extra}",
            dir.join("data").display(),
            Agent::socket(dir).display()
        );
        std::fs::write(&config, text).expect("write the agent config");
        config
    }

    /// The local socket of an agent configured in `dir` (beside its data directory,
    /// which is owner-only, so that a test may let another account reach it).
    pub fn socket(dir: &Path) -> PathBuf {
        dir.join("agent.sock")
    }

    pub fn start(config: &Path) -> Agent {
        Self::start_skewed(config, "")
    }

    /// As [`Agent::start`], the agent's device clock moved by `skew` (`2days`, `-90s`;
    /// empty for none) through the binary's test-only `DAYMETER_TEST_CLOCK_SKEW`.
    pub fn start_skewed(config: &Path, skew: &str) -> Agent {
        Self::start_with(config, &[("DAYMETER_TEST_CLOCK_SKEW", skew)])
    }

    /// As [`Agent::start`] with more environment: a private system bus
    /// (`DBUS_SYSTEM_BUS_ADDRESS`), an injected sleep (`DAYMETER_TEST_SLEEP_FILE`)…
    /// Without a system bus of the test's own, the agent is pointed at none, so that it
    /// never takes the machine's own logind inhibitor.
    pub fn start_with(config: &Path, env: &[(&str, &str)]) -> Agent {
        let mut command = Command::new(agent_bin());
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/daymeter-test-bus",
            )
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_LOG", "warn,daymeter_agent=debug");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent");
        Agent {
            child: Some(child),
            config: config.to_owned(),
        }
    }

    /// The agent's pid (to stop and continue it as a suspend would).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok().and_then(|s| s.code())
    }

    /// `daymeter-agent status --json` (from the running agent or the journal).
    pub fn status(config: &Path) -> Option<Value> {
        let out = Command::new(agent_bin())
            .args(["status", "--json", "--config"])
            .arg(config)
            .env("DAYMETER_LOG", "error")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits (up to 30 s) for a `status` that satisfies `pred`, and returns it; `what`
    /// names the wait in the failure.
    pub fn status_where(config: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = Agent::status(config)
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for status: {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running session helper (`daymeter-agent session`), as a desktop session would
/// start it: its session bus and zone from the environment, nothing but the socket
/// path on the command line.
pub struct Helper {
    child: Option<Child>,
}

impl Helper {
    /// Starts a helper on `socket` with the session bus at `bus`; `env` adds `TZ`,
    /// `LANG`…; `uid` runs it as that account (and its group of the same number).
    pub fn start(socket: &Path, bus: &str, env: &[(&str, &str)], uid: Option<u32>) -> Helper {
        use std::os::unix::process::CommandExt;

        let mut command = Command::new(agent_bin());
        command
            .arg("session")
            .arg("--socket")
            .arg(socket)
            .env_clear()
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/daymeter-test-bus",
            )
            .env("DAYMETER_LOG", "warn,daymeter_agent=info");
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the session helper");
        Helper { child: Some(child) }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A product process: a copy of `sleep` under the product's executable name.
pub struct Product {
    child: Option<Child>,
}

impl Product {
    pub fn start(dir: &Path, exe: &str) -> Product {
        Self::start_as(dir, exe, None)
    }

    /// As [`Product::start`], run by account `uid` (and the group of the same number)
    /// when given; `dir` must then be open to that account.
    pub fn start_as(dir: &Path, exe: &str, uid: Option<u32>) -> Product {
        use std::os::unix::process::CommandExt;

        let path = dir.join(exe);
        if !path.exists() {
            std::fs::copy("/bin/sleep", &path).expect("copy sleep under the product's name");
        }
        let mut command = Command::new(&path);
        command.arg("3600");
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = spawn_fresh_copy(&mut command).expect("start the product");
        Product { child: Some(child) }
    }

    /// A product that handles SIGTERM by asking to save (it keeps running): a copy of
    /// `sh` under the product's name, ignoring TERM.
    pub fn start_asking_to_save(dir: &Path, exe: &str) -> Product {
        let path = dir.join(exe);
        if !path.exists() {
            std::fs::copy("/bin/sh", &path).expect("copy sh under the product's name");
        }
        let mut command = Command::new(&path);
        command
            .args([
                "-c",
                "trap 'echo save your work?' TERM; while :; do sleep 0.1; done",
            ])
            .stdout(Stdio::null());
        let child = spawn_fresh_copy(&mut command).expect("start the product");
        Product { child: Some(child) }
    }

    /// Whether the process still runs (not reaped, not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The signal that ended the process, once it ended.
    pub fn ended_by(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .and_then(|s| s.signal())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `command.spawn()` of an executable a test has just copied, tried again while it is
/// busy: on the many threads of a test process, another thread's `fork` may carry the
/// copy's write descriptor into a child until that child's `exec`, and an `exec` of the
/// copy in that moment fails with ETXTBSY although the copy is complete.
pub fn spawn_fresh_copy(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => return spawned,
        }
    }
}
