//! What the collector's HTTP tests share: a temporary directory, the real
//! `daymeter-collector serve` binary as a child process on a temporary SQLite file, its
//! HTTP API over real TCP, session generation and the replay oracle.
//!
//! Each test file includes this module and uses a part of it, hence `dead_code`.
#![allow(dead_code)]

pub mod smtp;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_daymeter-collector");
pub const ENROLLMENT_SECRET: &str = "serve-api-enrollment-secret-0001";
pub const ADMIN_TOKEN: &str = "serve-api-admin-token-000000000001";
/// How long the collector gets to print its `listening on` line.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERMed collector gets to drain and exit.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(40);
/// Products the generated sessions use (all in [`settings`]' catalog).
pub const PRODUCTS: &[&str] = &["acad", "revit", "dc"];

// ---------------------------------------------------------------------------------------
// Helpers: a temporary directory, the collector process, its HTTP API, session generation
// and the replay oracle.
// ---------------------------------------------------------------------------------------

/// A directory of its own per test, removed at the end. On a failing test the collector's
/// log is printed first (the harness shows it with the failure).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "daymeter-serve-api-{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("creating the test's temp dir");
        TempDir { path }
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("collector.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(self.log())
        {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- collector log (last lines) ---\n{}", tail.join("\n"));
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running `daymeter-collector serve` on the test's temp dir; killed when dropped.
pub struct Collector {
    pub child: Child,
    pub api: Api,
}

impl Collector {
    /// Starts the collector on `dir`'s database and waits for its `listening on` line.
    pub fn start(dir: &TempDir) -> Collector {
        Collector::start_with(dir, &[])
    }

    /// As [`Collector::start`], with more arguments to `serve`.
    pub fn start_with(dir: &TempDir, extra: &[&str]) -> Collector {
        Collector::start_env(dir, extra, &[])
    }

    /// As [`Collector::start_with`], with more environment variables.
    pub fn start_env(dir: &TempDir, extra: &[&str], env: &[(&str, &str)]) -> Collector {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.log())
            .expect("opening the collector log");
        let db = dir.path.join("collector.db");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(format!("sqlite://{}", db.display()))
            .args(extra)
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("DAYMETER_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting daymeter-collector serve");
        let stdout = child.stdout.take().expect("collector stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Keep the pipe drained until the collector exits.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the collector printed no `listening on` line: {other:?}");
            }
        };
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line on stdout: {line:?}"))
            .trim()
            .to_owned();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "listening line names {base:?}"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the HTTP client");
        Collector {
            child,
            api: Api { base, http },
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it cannot affect memory safety.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().expect("reaping the killed collector");
    }

    /// Waits (polling, with a deadline) for the collector to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the collector") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the collector did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.api
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the base URL")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An answer: status, content type, and the body as JSON (a string if it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

/// An enrolled device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub token: String,
}

/// The collector's HTTP API, cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    pub async fn post_bytes(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.post_bytes(path, token, body.to_string().into_bytes())
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, token, None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// An admin GET that must succeed.
    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self.get(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
        assert_json(&r);
        r.body
    }

    /// An admin POST that must succeed.
    pub async fn admin_post(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, Some(ADMIN_TOKEN), body).await;
        assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.body);
        assert_json(&r);
        r.body
    }

    pub async fn import(&self, doc: &Value) -> Value {
        self.admin_post("/v1/admin/import", doc).await
    }

    pub async fn enroll(&self, hostname: &str) -> Device {
        let r = self
            .post(
                "/v1/enroll",
                None,
                &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": hostname,
                         "os": "linux", "agent_version": "0.1.0" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "enroll: {}", r.body);
        Device {
            id: r.body["device_id"]
                .as_str()
                .expect("device_id in the enrolment answer")
                .to_owned(),
            token: r.body["device_token"]
                .as_str()
                .expect("device_token in the enrolment answer")
                .to_owned(),
        }
    }

    pub fn sync_body(user: &str, sessions: &[Value]) -> Vec<u8> {
        json!({ "user": user, "agent_time": "2026-11-23T09:00:00Z", "sessions": sessions })
            .to_string()
            .into_bytes()
    }

    pub async fn try_sync(
        &self,
        device: &Device,
        user: &str,
        sessions: &[Value],
    ) -> Result<Reply, reqwest::Error> {
        self.send(
            reqwest::Method::POST,
            "/v1/sync",
            Some(&device.token),
            Some(Self::sync_body(user, sessions)),
        )
        .await
    }

    /// A sync that must be answered 200; the answer's body.
    pub async fn sync(&self, device: &Device, user: &str, sessions: &[Value]) -> Value {
        let r = self
            .try_sync(device, user, sessions)
            .await
            .unwrap_or_else(|e| panic!("sync: {e}"));
        assert_eq!(r.status, StatusCode::OK, "sync: {}", r.body);
        assert_json(&r);
        r.body
    }

    /// A sync whose every session must be accepted.
    pub async fn sync_all(&self, device: &Device, user: &str, sessions: &[Value]) -> Value {
        let body = self.sync(device, user, sessions).await;
        assert_eq!(
            ids(&body["accepted"]),
            sessions.iter().map(id_of).collect::<BTreeSet<_>>(),
            "not every session was accepted: {}",
            body["rejected"]
        );
        body
    }

    /// Every usage day (the sessions are in 2026; the range is the protocol's form).
    pub async fn usage_days(&self) -> Value {
        self.admin_get("/v1/admin/usage-days?from=2000-01-01&to=2099-12-31")
            .await
    }

    pub async fn stored(&self) -> Vec<Value> {
        let body = self.admin_get("/v1/admin/sessions").await;
        body["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("sessions list: {body}"))
            .clone()
    }
}

pub fn assert_json(r: &Reply) {
    assert!(
        r.content_type.starts_with("application/json"),
        "content type {:?}",
        r.content_type
    );
}

/// Checks the protocol's error object `{"code", "message", "field"}`; `field`, when
/// given, must name the field at fault.
pub fn assert_error_object(error: &Value, field: Option<&str>) {
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "error without a code: {error}"
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {error}"
    );
    match field {
        Some(f) => assert_eq!(error["field"], f, "error names the wrong field: {error}"),
        None => assert!(
            error
                .get("field")
                .is_none_or(|f| f.is_null() || f.is_string()),
            "field is neither a string nor null: {error}"
        ),
    }
}

/// An error answer: the status, JSON, and `{"error": {...}}`.
pub fn assert_error_reply(r: &Reply, status: StatusCode, field: Option<&str>) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_json(r);
    assert_error_object(&r.body["error"], field);
}

pub fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("session id").to_owned()
}

pub fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list of ids: {list}"))
        .iter()
        .map(|v| v.as_str().expect("an id").to_owned())
        .collect()
}

/// Catalog, entitlements and policy: the import document, and the replay scenario's
/// settings.
pub fn settings(policy: Value) -> Value {
    json!({
        "catalog": {
            "acad": { "name": "AutoCAD", "tokens_per_day": 7, "match": [ { "exe": "acad.exe" } ] },
            "revit": { "name": "Revit", "tokens_per_day": 10, "match": [ { "exe": "Revit.exe" } ] },
            "dc": { "name": "Desktop Connector", "tokens_per_day": 0 }
        },
        "entitlements": [
            { "user": "sophie", "product": "acad", "plan": "subscription",
              "from": "2026-02-06T00:00:00Z", "to": "2026-02-10T00:00:00Z" },
            { "user": "marc", "product": "revit", "plan": "subscription",
              "from": "2026-02-09T00:00:00+01:00" }
        ],
        "policy": policy
    })
}

pub fn default_policy() -> Value {
    json!({ "window": "24h", "min_session": "5m" })
}

/// Adds the owner a wire session gets from its sync request and device token.
pub fn owned(session: &Value, user: &str, device: &Device) -> Value {
    let mut s = session.clone();
    s["user"] = json!(user);
    s["device"] = json!(device.id);
    s
}

/// What `replay` prints for `settings` plus `sessions` (which carry user and device).
pub fn replay(settings: &Value, sessions: &[Value]) -> Value {
    let mut scenario = settings.clone();
    if let Some(doc) = scenario.as_object_mut() {
        doc.remove("teams");
        doc.remove("replace");
    }
    scenario["sessions"] = Value::Array(sessions.to_vec());
    let input = serde_json::to_vec(&scenario).expect("scenario JSON");
    let report = daymeter_shared::scenario::replay(&input)
        .unwrap_or_else(|e| panic!("replay refused the scenario: {e}"));
    let mut out = Vec::new();
    report.write_json(&mut out).expect("writing the report");
    serde_json::from_slice(&out).expect("replay's report is JSON")
}

/// The core guarantee: the collector's usage days are replay's.
pub async fn assert_usage_is_replay(api: &Api, settings: &Value, sessions: &[Value]) -> Value {
    let expected = replay(settings, sessions);
    let actual = api.usage_days().await;
    assert_eq!(
        actual["usage_days"], expected["usage_days"],
        "usage days differ from replay"
    );
    assert_eq!(
        actual["totals"], expected["totals"],
        "totals differ from replay"
    );
    expected
}

/// Guards against comparing two empty reports.
pub fn assert_some_days(report: &Value, at_least: usize) {
    let n = report["usage_days"].as_array().map_or(0, Vec::len);
    assert!(
        n >= at_least,
        "expected at least {at_least} usage days, got {n}: {report}"
    );
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Gen(pub u64);

pub const ZONES: &[Option<&str>] = &[
    Some("America/New_York"),
    Some("Europe/Berlin"),
    Some("Asia/Tokyo"),
    Some("Australia/Sydney"),
    Some("UTC"),
    None, // no tz: the offset written in start decides the day
];

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A wire session of one of `products` in February 2026: short, ordinary or long,
    /// some still open, some with idle intervals.
    pub fn session(&mut self, id: String, products: &[&str]) -> Value {
        let product = *self.pick(products);
        let zone = *self.pick(ZONES);
        let start = base_time() + chrono::TimeDelta::seconds(self.below(14 * 86_400) as i64);
        let minutes = match self.below(10) {
            0..=2 => 1 + self.below(7),
            3..=7 => 10 + self.below(8 * 60),
            _ => 8 * 60 + self.below(32 * 60),
        };
        let end = start + chrono::TimeDelta::seconds((minutes * 60 + self.below(60)) as i64);
        let open = self.below(5) == 0;
        let mut s = json!({
            "id": id,
            "product": product,
            "version": "2026",
            "start": stamp(start, zone),
            "end": if open { Value::Null } else { json!(stamp(end, zone)) },
        });
        if open || self.below(2) == 0 {
            s["last_seen"] = json!(stamp(end, zone));
        }
        if let Some(z) = zone {
            s["tz"] = json!(z);
        }
        let span = (end - start).num_seconds();
        if span > 1800 && self.below(3) == 0 {
            let a = start + chrono::TimeDelta::seconds(self.below(span as u64 / 2) as i64);
            let b = a + chrono::TimeDelta::seconds(60 + self.below(span as u64 / 3) as i64);
            let b = b.min(end);
            s["idle"] = json!([[stamp(a, zone), stamp(b, zone)]]);
            s["suspended"] = json!([[stamp(a, zone), stamp(a + (b - a) / 2, zone)]]);
        }
        s
    }

    pub fn sessions(&mut self, prefix: &str, n: usize, products: &[&str]) -> Vec<Value> {
        (0..n)
            .map(|i| self.session(format!("{prefix}-{i:05}"), products))
            .collect()
    }
}

pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 2, 0, 0, 0).unwrap()
}

/// An instant written with the offset of `zone` at that instant (`+05:30` without one).
pub fn stamp(t: DateTime<Utc>, zone: Option<&str>) -> String {
    match zone {
        Some(z) => {
            let tz: chrono_tz::Tz = z.parse().expect("a known zone");
            t.with_timezone(&tz)
                .fixed_offset()
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        }
        None => {
            let india = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
            t.with_timezone(&india)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        }
    }
}

/// A session written by hand: local wall times in New York (UTC-5 in early 2026).
pub fn ny(
    id: &str,
    product: &str,
    start: &str,
    end: Option<&str>,
    last_seen: Option<&str>,
) -> Value {
    let mut s = json!({
        "id": id, "product": product, "version": "2026",
        "start": format!("{start}-05:00"),
        "end": end.map(|e| format!("{e}-05:00")),
        "tz": "America/New_York",
    });
    if let Some(l) = last_seen {
        s["last_seen"] = json!(format!("{l}-05:00"));
    }
    s
}

/// Starts a collector on a fresh temp dir with `settings` imported.
pub async fn collector_with(name: &str, settings: &Value) -> (TempDir, Collector) {
    let dir = TempDir::new(name);
    let c = Collector::start(&dir);
    c.api.import(settings).await;
    (dir, c)
}

/// Syncs fresh generated sessions in a loop until the collector stops answering (or
/// `max_batches`), recording the ids of every accepted session whose answer arrived.
pub async fn sync_until_gone(
    api: Api,
    device: Device,
    user: String,
    seed: u64,
    batch: usize,
    max_batches: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
) -> Vec<String> {
    let mut generator = Gen::new(seed);
    let mut odd = Vec::new();
    for b in 0..max_batches {
        let sessions: Vec<Value> = (0..batch)
            .map(|i| generator.session(format!("{user}-b{b:04}-{i:03}"), PRODUCTS))
            .collect();
        match api.try_sync(&device, &user, &sessions).await {
            Ok(r) if r.status == StatusCode::OK => {
                let accepted = ids(&r.body["accepted"]);
                if accepted.len() != sessions.len() {
                    odd.push(format!("batch {b}: rejected {}", r.body["rejected"]));
                }
                acked.lock().unwrap().extend(accepted);
            }
            Ok(r) => {
                odd.push(format!("batch {b}: status {} {}", r.status, r.body));
                break;
            }
            Err(_) => break, // the collector is gone
        }
    }
    odd
}

/// Polls (with a deadline) until `acked` holds at least `n` ids.
pub async fn wait_for_acks(acked: &Mutex<BTreeSet<String>>, n: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    while acked.lock().unwrap().len() < n {
        assert!(
            Instant::now() < until,
            "only {} sessions acknowledged within {deadline:?}",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every acknowledged id is stored exactly once.
pub fn assert_all_stored(acked: &BTreeSet<String>, stored: &[Value]) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in stored {
        *count.entry(id_of(s)).or_default() += 1;
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !count.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged sessions are not stored, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<(&String, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sessions stored more than once: {twice:?}"
    );
}
