//! Enrolling again (`POST /v1/enroll` with `previous_device_id` and
//! `previous_device_token`): the real `daymeter-collector serve` on a temporary SQLite
//! file, over real HTTP.
//!
//! What is checked: with its latest token as proof a device keeps its id (revoked or
//! not), so an open session's later copies still agree with the earlier ones; a wrong
//! proof is 401 naming the field and changes nothing; the replaced token is refused
//! afterwards, also as proof, also after a restart; without proof a revoked device's id
//! is never handed out again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-collector");
const ENROLLMENT_SECRET: &str = "reenrol-enrollment-secret-0001";
const ADMIN_TOKEN: &str = "reenrol-admin-token-000000000001";

/// A folder of its own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "daymeter-reenrol-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("creating the test's temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `daymeter-collector serve` on `dir`'s database; killed when dropped.
struct Collector {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(format!("sqlite://{}", dir.join("collector.db").display()))
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("DAYMETER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting daymeter-collector serve");
        let stdout = child.stdout.take().expect("collector stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("a `listening on` line");
        std::thread::spawn(move || for _ in lines {});
        let base = line
            .strip_prefix("listening on ")
            .expect("the listening line")
            .trim()
            .to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        Collector { child, base, http }
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the collector answers");
        let status = response.status();
        let body = response.json().await.expect("a JSON body");
        (status, body)
    }

    async fn enroll(&self, previous: Option<(&str, &str)>) -> (StatusCode, Value) {
        let mut body = json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "ws-17",
                               "os": "linux", "agent_version": "0.1.0" });
        if let Some((id, token)) = previous {
            body["previous_device_id"] = json!(id);
            body["previous_device_token"] = json!(token);
        }
        self.post("/v1/enroll", None, &body).await
    }

    /// A first enrolment: (device id, token).
    async fn enroll_new(&self) -> (String, String) {
        let (status, body) = self.enroll(None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        device(&body)
    }

    async fn revoke(&self, id: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/admin/devices/{id}/revoke"),
                Some(ADMIN_TOKEN),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Syncs one session of `sophie`'s: its status and answer.
    async fn sync(&self, token: &str, session: &Value) -> (StatusCode, Value) {
        let body = json!({ "user": "sophie", "agent_time": "2026-03-02T12:00:00Z",
                           "sessions": [session] });
        self.post("/v1/sync", Some(token), &body).await
    }

    async fn sessions(&self) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/v1/admin/sessions", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the collector answers");
        let body: Value = response.json().await.expect("a JSON body");
        body["sessions"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn device(body: &Value) -> (String, String) {
    (
        body["device_id"].as_str().expect("device_id").to_owned(),
        body["device_token"]
            .as_str()
            .expect("device_token")
            .to_owned(),
    )
}

fn session(end: Option<&str>) -> Value {
    json!({ "id": "0193a1f0-reenrol-1", "product": "acad",
            "start": "2026-03-02T09:00:00-05:00", "end": end,
            "last_seen": end.unwrap_or("2026-03-02T10:00:00-05:00"),
            "tz": "America/New_York" })
}

fn assert_accepted(reply: &(StatusCode, Value)) {
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    assert_eq!(
        reply.1["accepted"],
        json!(["0193a1f0-reenrol-1"]),
        "{}",
        reply.1
    );
}

fn assert_unauthorized(reply: &(StatusCode, Value), field: Option<&str>) {
    assert_eq!(reply.0, StatusCode::UNAUTHORIZED, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], "unauthorized", "{}", reply.1);
    assert_eq!(reply.1["error"]["field"].as_str(), field, "{}", reply.1);
}

#[tokio::test]
async fn a_revoked_device_enrolling_with_its_old_token_keeps_its_id_and_its_open_session_ends() {
    let dir = TempDir::new("keeps");
    let c = Collector::start(&dir.0);
    let (id, old_token) = c.enroll_new().await;
    assert_accepted(&c.sync(&old_token, &session(None)).await);
    c.revoke(&id).await;
    assert_unauthorized(&c.sync(&old_token, &session(None)).await, None);

    let (status, body) = c.enroll(Some((&id, &old_token))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (same_id, new_token) = device(&body);
    assert_eq!(same_id, id, "the device keeps its id");
    assert_ne!(new_token, old_token);

    // The session's final copy agrees with the open one: accepted, stored once, ended.
    let end = "2026-03-02T11:00:00-05:00";
    assert_accepted(&c.sync(&new_token, &session(Some(end))).await);
    let stored = c.sessions().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["device"], json!(id));
    assert_eq!(stored[0]["end"], json!(end));

    // The replaced token is refused, for syncs and as proof, also after a restart.
    assert_unauthorized(&c.sync(&old_token, &session(Some(end))).await, None);
    assert_unauthorized(
        &c.enroll(Some((&id, &old_token))).await,
        Some("previous_device_token"),
    );
    drop(c);
    let c = Collector::start(&dir.0);
    assert_unauthorized(&c.sync(&old_token, &session(Some(end))).await, None);
    assert_accepted(&c.sync(&new_token, &session(Some(end))).await);
    assert_eq!(c.sessions().await.len(), 1);
}

#[tokio::test]
async fn a_wrong_proof_is_401_naming_the_field_and_changes_nothing() {
    let dir = TempDir::new("wrong");
    let c = Collector::start(&dir.0);
    let (id, token) = c.enroll_new().await;
    let (other_id, other_token) = c.enroll_new().await;

    let guessed = "A".repeat(43);
    for (previous_id, proof) in [
        (id.as_str(), guessed.as_str()),
        (id.as_str(), other_token.as_str()),
        ("0193a1f0-no-such-device", token.as_str()),
        (other_id.as_str(), token.as_str()),
    ] {
        let reply = c.enroll(Some((previous_id, proof))).await;
        assert_unauthorized(&reply, Some("previous_device_token"));
    }
    // One field without the other is a malformed request, naming the missing one.
    let (status, body) = c
        .post(
            "/v1/enroll",
            None,
            &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "ws-17",
                     "previous_device_id": id }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "previous_device_token", "{body}");
    // The proof is checked after the enrolment secret, which is still required.
    let (status, body) = c
        .post(
            "/v1/enroll",
            None,
            &json!({ "enrollment_secret": "wrong-secret-0123456789", "hostname": "ws-17",
                     "previous_device_id": id, "previous_device_token": token }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["field"], "enrollment_secret", "{body}");

    // Both devices still sync with their own tokens.
    assert_accepted(&c.sync(&token, &session(None)).await);
    let empty = json!({ "user": "marc", "agent_time": "2026-03-02T12:00:00Z", "sessions": [] });
    let reply = c.post("/v1/sync", Some(&other_token), &empty).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
}

#[tokio::test]
async fn a_revoked_device_enrolling_without_proof_is_a_new_device_and_the_old_id_stays_revoked() {
    let dir = TempDir::new("noproof");
    let c = Collector::start(&dir.0);
    let (id, token) = c.enroll_new().await;
    c.revoke(&id).await;
    let (new_id, new_token) = c.enroll_new().await;
    assert_ne!(new_id, id);
    assert_unauthorized(&c.sync(&token, &session(None)).await, None);
    assert_accepted(&c.sync(&new_token, &session(None)).await);
}

#[tokio::test]
async fn a_device_not_revoked_may_change_its_token_and_only_one_of_two_races_links() {
    let dir = TempDir::new("race");
    let c = Collector::start(&dir.0);
    let (id, token) = c.enroll_new().await;
    let (a, b) = tokio::join!(c.enroll(Some((&id, &token))), c.enroll(Some((&id, &token))));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::UNAUTHORIZED],
        "{} / {}",
        a.1,
        b.1
    );
    let winner = if a.0 == StatusCode::OK { &a.1 } else { &b.1 };
    let (same_id, new_token) = device(winner);
    assert_eq!(same_id, id);
    assert_accepted(&c.sync(&new_token, &session(None)).await);
    assert_unauthorized(&c.sync(&token, &session(None)).await, None);
}
