//! Enrolling again (`POST /v1/enroll` with `previous_device_id` and
//! `previous_device_token`): the real `daymeter-collector serve` on a temporary SQLite
//! file, over real HTTP.
//!
//! What is checked: with its latest token as proof a device keeps its id (revoked or
//! not), so an open session's later copies still agree with the earlier ones; a wrong
//! proof is 401 naming the field and changes nothing; the replaced token is refused
//! afterwards, also as proof, also after a restart; without proof a revoked device's id
//! is never handed out again.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};

use support::*;

const SESSION_ID: &str = "0193a1f0-reenrol-1";

/// `POST /v1/enroll`, with `previous` (id, token) as proof when given.
async fn enroll_with(api: &Api, previous: Option<(&str, &str)>) -> Reply {
    let mut body = json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "ws-17",
                           "os": "linux", "agent_version": "0.1.0" });
    if let Some((id, token)) = previous {
        body["previous_device_id"] = json!(id);
        body["previous_device_token"] = json!(token);
    }
    api.post("/v1/enroll", None, &body).await
}

fn device_of(r: &Reply) -> Device {
    assert_eq!(r.status, StatusCode::OK, "enroll: {}", r.body);
    Device {
        id: r.body["device_id"].as_str().expect("device_id").to_owned(),
        token: r.body["device_token"]
            .as_str()
            .expect("device_token")
            .to_owned(),
    }
}

async fn revoke(api: &Api, id: &str) {
    api.admin_post(&format!("/v1/admin/devices/{id}/revoke"), &json!({}))
        .await;
}

/// One session of `sophie`'s, open or ended at `end`.
fn session(end: Option<&str>) -> Value {
    json!({ "id": SESSION_ID, "product": "acad",
            "start": "2026-03-02T09:00:00-05:00", "end": end,
            "last_seen": end.unwrap_or("2026-03-02T10:00:00-05:00"),
            "tz": "America/New_York" })
}

/// Syncs `sessions` with `token`: the reply, whatever it is.
async fn sync_with(api: &Api, token: &str, sessions: &[Value]) -> Reply {
    api.post_bytes("/v1/sync", Some(token), Api::sync_body("sophie", sessions))
        .await
}

fn assert_accepted(r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["accepted"], json!([SESSION_ID]), "{}", r.body);
}

#[tokio::test]
async fn a_revoked_device_enrolling_with_its_old_token_keeps_its_id_and_its_open_session_ends() {
    let dir = TempDir::new("reenrol-keeps");
    let c = Collector::start(&dir);
    let old = c.api.enroll("ws-17").await;
    assert_accepted(&sync_with(&c.api, &old.token, &[session(None)]).await);
    revoke(&c.api, &old.id).await;
    let r = sync_with(&c.api, &old.token, &[session(None)]).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);

    let new = device_of(&enroll_with(&c.api, Some((&old.id, &old.token))).await);
    assert_eq!(new.id, old.id, "the device keeps its id");
    assert_ne!(new.token, old.token);

    // The session's final copy agrees with the open one: accepted, stored once, ended.
    let end = "2026-03-02T11:00:00-05:00";
    assert_accepted(&sync_with(&c.api, &new.token, &[session(Some(end))]).await);
    let stored = c.api.stored().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["device"], json!(old.id));
    assert_eq!(stored[0]["end"], json!(end));

    // The replaced token is refused, for syncs and as proof, also after a restart.
    let r = sync_with(&c.api, &old.token, &[session(Some(end))]).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    let r = enroll_with(&c.api, Some((&old.id, &old.token))).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, Some("previous_device_token"));
    drop(c);
    let c = Collector::start(&dir);
    let r = sync_with(&c.api, &old.token, &[session(Some(end))]).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    assert_accepted(&sync_with(&c.api, &new.token, &[session(Some(end))]).await);
    assert_eq!(c.api.stored().await.len(), 1);
}

#[tokio::test]
async fn a_wrong_proof_is_401_naming_the_field_and_changes_nothing() {
    let dir = TempDir::new("reenrol-wrong");
    let c = Collector::start(&dir);
    let a = c.api.enroll("ws-a").await;
    let b = c.api.enroll("ws-b").await;

    let guessed = "A".repeat(43);
    for (previous_id, proof) in [
        (a.id.as_str(), guessed.as_str()),
        (a.id.as_str(), b.token.as_str()),
        ("0193a1f0-no-such-device", a.token.as_str()),
        (b.id.as_str(), a.token.as_str()),
    ] {
        let r = enroll_with(&c.api, Some((previous_id, proof))).await;
        assert_error_reply(&r, StatusCode::UNAUTHORIZED, Some("previous_device_token"));
        assert_eq!(r.body["error"]["code"], "unauthorized", "{}", r.body);
    }
    // One field without the other is a malformed request, naming the missing one.
    let r = c
        .api
        .post(
            "/v1/enroll",
            None,
            &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "ws-a",
                     "previous_device_id": a.id }),
        )
        .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("previous_device_token"));
    // The enrolment secret is still required, and checked first.
    let r = c
        .api
        .post(
            "/v1/enroll",
            None,
            &json!({ "enrollment_secret": "wrong-secret-0123456789", "hostname": "ws-a",
                     "previous_device_id": a.id, "previous_device_token": a.token }),
        )
        .await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, Some("enrollment_secret"));

    // Both devices still sync with their own tokens.
    assert_accepted(&sync_with(&c.api, &a.token, &[session(None)]).await);
    c.api.sync(&b, "marc", &[]).await;
}

#[tokio::test]
async fn a_revoked_device_enrolling_without_proof_is_a_new_device_and_the_old_id_stays_revoked() {
    let dir = TempDir::new("reenrol-noproof");
    let c = Collector::start(&dir);
    let old = c.api.enroll("ws-17").await;
    revoke(&c.api, &old.id).await;
    let new = c.api.enroll("ws-17").await;
    assert_ne!(new.id, old.id);
    let r = sync_with(&c.api, &old.token, &[session(None)]).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    assert_accepted(&sync_with(&c.api, &new.token, &[session(None)]).await);
}

#[tokio::test]
async fn a_device_not_revoked_may_change_its_token_and_of_two_racing_proofs_one_links() {
    let dir = TempDir::new("reenrol-race");
    let c = Collector::start(&dir);
    let old = c.api.enroll("ws-17").await;
    let proof = Some((old.id.as_str(), old.token.as_str()));
    let (a, b) = tokio::join!(enroll_with(&c.api, proof), enroll_with(&c.api, proof));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::UNAUTHORIZED],
        "{} / {}",
        a.body,
        b.body
    );
    let new = device_of(if a.status == StatusCode::OK { &a } else { &b });
    assert_eq!(new.id, old.id);
    assert_accepted(&sync_with(&c.api, &new.token, &[session(None)]).await);
    let r = sync_with(&c.api, &old.token, &[session(None)]).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
}
