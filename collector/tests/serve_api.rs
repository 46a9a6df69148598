//! `daymeter-collector serve` as agents and admins meet it (spec/protocol.md): the real
//! binary, started as a child process on a temporary SQLite file, driven over real TCP.
//!
//! The core check throughout: whatever order, duplication or concurrency the sessions
//! arrive in, `GET /v1/admin/usage-days` answers exactly what
//! `daymeter_shared::scenario::replay` computes from the same sessions and settings.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;
// ---------------------------------------------------------------------------------------
// 1. Enrolment
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn enroll_with_the_right_secret_gives_a_device_token_and_a_wrong_secret_is_401() {
    let dir = TempDir::new("enroll");
    let c = Collector::start(&dir);

    let r = c
        .api
        .post(
            "/v1/enroll",
            None,
            &json!({ "enrollment_secret": ENROLLMENT_SECRET, "hostname": "ws-17",
                     "os": "windows 11", "agent_version": "0.1.0" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_json(&r);
    let id = r.body["device_id"].as_str().expect("device_id");
    assert!(!id.is_empty());
    let token = r.body["device_token"].as_str().expect("device_token");
    assert_eq!(token.len(), 43, "device token {token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "device token is not URL-safe base64: {token:?}"
    );

    // A second enrolment is another device with another token.
    let other = c.api.enroll("ws-18").await;
    assert_ne!(other.id, id);
    assert_ne!(other.token, token);

    // The token works.
    let device = Device {
        id: id.to_owned(),
        token: token.to_owned(),
    };
    c.api.sync(&device, "sophie", &[]).await;

    for secret in ["wrong-secret-but-long-enough", "", &ENROLLMENT_SECRET[1..]] {
        let r = c
            .api
            .post(
                "/v1/enroll",
                None,
                &json!({ "enrollment_secret": secret, "hostname": "intruder", "os": "linux",
                         "agent_version": "0.1.0" }),
            )
            .await;
        assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
        assert!(r.body.get("device_token").is_none());
    }
}

// ---------------------------------------------------------------------------------------
// 2. Device authentication and revocation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sync_without_a_valid_token_or_from_a_revoked_device_is_401() {
    let dir = TempDir::new("auth");
    let mut c = Collector::start(&dir);
    let s = settings(default_policy());
    c.api.import(&s).await;
    let a = c.api.enroll("ws-a").await;
    let b = c.api.enroll("ws-b").await;
    let one = [ny(
        "auth-1",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T11:00:00"),
        None,
    )];
    let body = Api::sync_body("sophie", &one);

    // No token, a wrong token, the admin token, a malformed header: 401.
    let none = c.api.post_bytes("/v1/sync", None, body.clone()).await;
    assert_error_reply(&none, StatusCode::UNAUTHORIZED, None);
    let wrong = "A".repeat(43);
    for token in [wrong.as_str(), ADMIN_TOKEN, ""] {
        let r = c
            .api
            .post_bytes("/v1/sync", Some(token), body.clone())
            .await;
        assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    }
    let r = c
        .api
        .http
        .post(format!("{}/v1/sync", c.api.base))
        .header("authorization", format!("Basic {}", a.token))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        c.api.stored().await.is_empty(),
        "an unauthenticated sync was stored"
    );

    // The right token: 200.
    c.api.sync_all(&a, "sophie", &one).await;

    // Revoking needs the admin token.
    let path = format!("/v1/admin/devices/{}/revoke", a.id);
    let r = c.api.post(&path, None, &json!({})).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    let r = c.api.post(&path, Some(&b.token), &json!({})).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    c.api.sync(&a, "sophie", &[]).await;

    c.api.admin_post(&path, &json!({})).await;
    let late = [ny(
        "auth-2",
        "acad",
        "2026-02-04T09:00:00",
        Some("2026-02-04T11:00:00"),
        None,
    )];
    let r = c
        .api
        .post_bytes("/v1/sync", Some(&a.token), Api::sync_body("sophie", &late))
        .await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    // The other device is unaffected; the revoked one's sessions were not stored.
    c.api.sync(&b, "marc", &[]).await;
    let stored: BTreeSet<String> = c.api.stored().await.iter().map(id_of).collect();
    assert_eq!(stored, BTreeSet::from(["auth-1".to_owned()]));

    // Revocation is durable: still 401 after a restart; the other device still works.
    c.kill9();
    let c = Collector::start(&dir);
    let r = c
        .api
        .post_bytes("/v1/sync", Some(&a.token), Api::sync_body("sophie", &late))
        .await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
    c.api.sync(&b, "marc", &[]).await;
}

// ---------------------------------------------------------------------------------------
// 3. Bodies refused as a whole
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_or_oversized_sync_bodies_are_refused_and_nothing_is_stored() {
    let (_dir, c) = collector_with("bodies", &settings(default_policy())).await;
    let device = c.api.enroll("ws-17").await;
    let good = ny(
        "body-1",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T11:00:00"),
        None,
    );

    // Not JSON, and JSON cut short after a valid session: 400.
    let r = c
        .api
        .post_bytes(
            "/v1/sync",
            Some(&device.token),
            b"this is not json".to_vec(),
        )
        .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, None);
    let whole = String::from_utf8(Api::sync_body("sophie", std::slice::from_ref(&good))).unwrap();
    let cut = whole.as_bytes()[..whole.len() - 2].to_vec();
    let r = c.api.post_bytes("/v1/sync", Some(&device.token), cut).await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, None);

    // Over 1 MiB (valid JSON, few sessions, long version strings): 413.
    let mut big = Vec::new();
    for i in 0..4 {
        let mut s = ny(
            &format!("body-big-{i}"),
            "acad",
            "2026-02-03T09:00:00",
            Some("2026-02-03T11:00:00"),
            None,
        );
        s["version"] = json!("x".repeat(300 * 1024));
        big.push(s);
    }
    let body = Api::sync_body("sophie", &big);
    assert!(body.len() > 1 << 20);
    // The 413 reaches the client every time, not a reset while it is still sending.
    for _ in 0..10 {
        let r = c
            .api
            .post_bytes("/v1/sync", Some(&device.token), body.clone())
            .await;
        assert_error_reply(&r, StatusCode::PAYLOAD_TOO_LARGE, None);
    }

    // 501 sessions (well under 1 MiB): 413.
    let mut generator = Gen::new(3);
    let many = generator.sessions("body-many", 501, PRODUCTS);
    let body = Api::sync_body("sophie", &many);
    assert!(body.len() < 1 << 20);
    let r = c
        .api
        .post_bytes("/v1/sync", Some(&device.token), body)
        .await;
    assert_error_reply(&r, StatusCode::PAYLOAD_TOO_LARGE, None);

    // Nothing of those requests is stored or counted.
    assert!(c.api.stored().await.is_empty());
    assert_eq!(
        c.api.usage_days().await["usage_days"],
        json!([]),
        "refused requests were accounted"
    );

    // The same good session in a proper request is stored (the refusals were about the
    // requests, not their sessions).
    c.api.sync_all(&device, "sophie", &[good]).await;
    assert_eq!(c.api.stored().await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Per-record validation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_sessions_are_rejected_one_by_one_naming_the_field_and_good_ones_are_stored() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("records", &s).await;
    let device = c.api.enroll("ws-17").await;

    let good = [
        ny(
            "good-1",
            "acad",
            "2026-02-02T09:00:00",
            Some("2026-02-02T17:00:00"),
            None,
        ),
        ny(
            "good-2",
            "revit",
            "2026-02-03T09:00:00",
            None,
            Some("2026-02-03T10:00:00"),
        ),
        json!({ "id": "good-3", "product": "acad", "start": "2026-02-05T08:00:00Z",
                "end": "2026-02-05T12:30:00Z" }),
    ];
    let mut missing_start = ny(
        "bad-no-start",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T10:00:00"),
        None,
    );
    missing_start.as_object_mut().unwrap().remove("start");
    let mut unknown_tz = ny(
        "bad-tz",
        "acad",
        "2026-02-06T09:00:00",
        Some("2026-02-06T10:00:00"),
        None,
    );
    unknown_tz["tz"] = json!("Mars/Olympus_Mons");
    let bad: Vec<(Value, &str)> = vec![
        (
            ny(
                "bad-end",
                "acad",
                "2026-02-02T09:00:00",
                Some("2026-02-02T08:00:00"),
                None,
            ),
            "end",
        ),
        (missing_start, "start"),
        (
            json!({ "id": "bad-offset", "product": "acad", "start": "2026-02-04T09:00:00",
                    "end": "2026-02-04T10:00:00Z", "tz": "Europe/Berlin" }),
            "start",
        ),
        (unknown_tz, "tz"),
    ];
    let mut batch: Vec<Value> = Vec::new();
    for (i, g) in good.iter().enumerate() {
        batch.push(g.clone());
        batch.push(bad[i % bad.len()].0.clone());
    }
    batch.push(bad[3].0.clone());

    let answer = c.api.sync(&device, "sophie", &batch).await;
    assert_eq!(
        ids(&answer["accepted"]),
        good.iter().map(id_of).collect::<BTreeSet<_>>()
    );
    let rejected = answer["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), bad.len(), "rejected: {rejected:?}");
    for (session, field) in &bad {
        let id = id_of(session);
        let entry = rejected
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} is not in rejected: {rejected:?}"));
        assert_error_object(&entry["error"], Some(field));
    }

    let stored: BTreeSet<String> = c.api.stored().await.iter().map(id_of).collect();
    assert_eq!(stored, good.iter().map(id_of).collect::<BTreeSet<_>>());
    let owned_good: Vec<Value> = good.iter().map(|g| owned(g, "sophie", &device)).collect();
    let report = assert_usage_is_replay(&c.api, &s, &owned_good).await;
    assert_some_days(&report, 3);
}

/// A device whose clock runs two days ahead sends a session ending then: it is refused
/// with the retryable `clock_ahead`, naming the instant, while the good session beside
/// it is stored; the answer's `server_time` is the collector's clock, from which the
/// agent learns its offset.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_past_the_collectors_clock_is_refused_as_clock_ahead_and_the_rest_is_stored() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("clock-ahead", &s).await;
    let device = c.api.enroll("ws-fast-clock").await;
    let now = Utc::now();
    let at = |minutes: i64| stamp(now + chrono::TimeDelta::minutes(minutes), None);
    let good = json!({ "id": "now-1", "product": "acad", "start": at(-90), "end": at(-30) });
    let two_days = 2 * 24 * 60;
    let ahead = json!({ "id": "ahead-1", "product": "acad",
                        "start": at(-60), "end": at(two_days) });
    let running_ahead = json!({ "id": "ahead-2", "product": "revit",
                                "start": at(two_days - 60), "last_seen": at(two_days) });
    // Within the five minutes' tolerance: a clock a little fast is still accepted.
    let nearly = json!({ "id": "nearly-1", "product": "revit",
                         "start": at(-20), "last_seen": at(4) });

    let answer = c
        .api
        .sync(
            &device,
            "sophie",
            &[ahead.clone(), good.clone(), running_ahead, nearly.clone()],
        )
        .await;
    assert_eq!(
        ids(&answer["accepted"]),
        BTreeSet::from(["now-1".to_owned(), "nearly-1".to_owned()]),
        "{answer}"
    );
    let rejected = answer["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for (id, field) in [("ahead-1", "end"), ("ahead-2", "start")] {
        let entry = rejected
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not in rejected: {rejected:?}"));
        assert_error_object(&entry["error"], Some(field));
        assert_eq!(entry["error"]["code"], "clock_ahead", "{entry}");
        let message = entry["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("device clock seems ahead") && message.contains("re-sent"),
            "{message}"
        );
    }
    let server_time = DateTime::parse_from_rfc3339(answer["server_time"].as_str().unwrap())
        .expect("server_time is RFC 3339");
    assert!(
        (server_time.to_utc() - now).num_seconds().abs() < 60,
        "server_time {server_time}, now {now}"
    );

    let stored: BTreeSet<String> = c.api.stored().await.iter().map(id_of).collect();
    assert_eq!(
        stored,
        BTreeSet::from(["now-1".to_owned(), "nearly-1".to_owned()])
    );

    // The same session with corrected instants is accepted.
    let corrected = json!({ "id": "ahead-1", "product": "acad", "start": at(-60), "end": at(-1) });
    let again = c
        .api
        .sync(&device, "sophie", std::slice::from_ref(&corrected))
        .await;
    assert_eq!(
        ids(&again["accepted"]),
        BTreeSet::from(["ahead-1".to_owned()])
    );
    let stored: Vec<Value> = [good, nearly, corrected]
        .iter()
        .map(|x| owned(x, "sophie", &device))
        .collect();
    let report = assert_usage_is_replay(&c.api, &s, &stored).await;
    assert_some_days(&report, 1);
}

// ---------------------------------------------------------------------------------------
// 5. Products the collector does not know yet
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_session_of_an_unknown_product_is_stored_and_counted_once_the_product_is_imported() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("unknown-product", &s).await;
    let device = c.api.enroll("ws-17").await;

    let known = [ny(
        "known-1",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T12:00:00"),
        None,
    )];
    let unknown = vec![
        ny(
            "inv-1",
            "inventor",
            "2026-02-03T09:00:00",
            Some("2026-02-03T12:00:00"),
            None,
        ),
        ny(
            "inv-2",
            "inventor",
            "2026-02-05T09:00:00",
            Some("2026-02-06T10:00:00"),
            None,
        ),
    ];
    let batch: Vec<Value> = known.iter().chain(&unknown).cloned().collect();
    let answer = c.api.sync_all(&device, "sophie", &batch).await;
    assert!(answer["catalog"].get("inventor").is_none(), "{answer}");

    let stored: BTreeSet<String> = c.api.stored().await.iter().map(id_of).collect();
    assert_eq!(stored, batch.iter().map(id_of).collect::<BTreeSet<_>>());
    let before = c.api.usage_days().await;
    assert!(
        !before.to_string().contains("inventor"),
        "an unknown product was accounted: {before}"
    );
    let owned_known: Vec<Value> = known.iter().map(|k| owned(k, "sophie", &device)).collect();
    assert_usage_is_replay(&c.api, &s, &owned_known).await;

    // The import adds the product (merging): its stored sessions are accounted now.
    let added = json!({ "catalog": { "inventor": { "name": "Inventor", "tokens_per_day": 8,
                                                  "match": [ { "exe": "Inventor.exe" } ] } } });
    c.api.import(&added).await;
    let mut merged = s.clone();
    merged["catalog"]["inventor"] = added["catalog"]["inventor"].clone();
    let owned_all: Vec<Value> = batch.iter().map(|b| owned(b, "sophie", &device)).collect();
    let report = assert_usage_is_replay(&c.api, &merged, &owned_all).await;
    // The next sync's answer names the new product (its catalog is the new settings').
    let answer = c.api.sync_all(&device, "sophie", &batch).await;
    assert_eq!(
        answer["catalog"]["inventor"]["tokens_per_day"], 8,
        "{answer}"
    );
    assert_eq!(answer["catalog"], merged["catalog"], "{answer}");
    let inventor_days = report["usage_days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["product"] == "inventor")
        .count();
    assert_eq!(inventor_days, 3, "{report}");
}

// ---------------------------------------------------------------------------------------
// 6. The core guarantee: usage days are replay's, whatever the arrival
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_equal_replay_for_one_batch() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("replay-one", &s).await;
    let device = c.api.enroll("ws-17").await;
    let sessions = Gen::new(61).sessions("one", 60, PRODUCTS);
    c.api.sync_all(&device, "sophie", &sessions).await;
    let owned_all: Vec<Value> = sessions
        .iter()
        .map(|x| owned(x, "sophie", &device))
        .collect();
    let report = assert_usage_is_replay(&c.api, &s, &owned_all).await;
    assert_some_days(&report, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_equal_replay_when_a_batch_is_sent_twice() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("replay-twice", &s).await;
    let device = c.api.enroll("ws-17").await;
    let sessions = Gen::new(62).sessions("twice", 60, PRODUCTS);
    c.api.sync_all(&device, "marc", &sessions).await;
    let owned_all: Vec<Value> = sessions.iter().map(|x| owned(x, "marc", &device)).collect();
    let first = assert_usage_is_replay(&c.api, &s, &owned_all).await;
    assert_some_days(&first, 10);
    let stored_first = c.api.stored().await;

    c.api.sync_all(&device, "marc", &sessions).await;
    // Replay over every copy received gives the same as over one copy each.
    let doubled: Vec<Value> = owned_all.iter().chain(&owned_all).cloned().collect();
    let second = assert_usage_is_replay(&c.api, &s, &doubled).await;
    assert_eq!(
        first, second,
        "sending a batch twice changed the usage days"
    );
    assert_eq!(
        c.api.stored().await,
        stored_first,
        "sending a batch twice changed the stored sessions"
    );
}

/// An open copy of `session` that saw only the first `percent` of it.
fn open_copy(session: &Value, percent: i32) -> Value {
    let start = DateTime::parse_from_rfc3339(session["start"].as_str().unwrap()).unwrap();
    let end = session["end"]
        .as_str()
        .or(session["last_seen"].as_str())
        .map(|e| DateTime::parse_from_rfc3339(e).unwrap())
        .unwrap();
    let seen = start + (end - start) * percent / 100;
    let mut copy = session.clone();
    copy["end"] = Value::Null;
    copy["last_seen"] = json!(seen.to_rfc3339_opts(SecondsFormat::Secs, false));
    // An earlier copy knows only the intervals up to its last_seen; the collector
    // refuses intervals outside their session.
    if let Some(c) = copy.as_object_mut() {
        c.remove("idle");
        c.remove("suspended");
    }
    copy
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_equal_replay_when_batches_arrive_in_shuffled_order() {
    let policies = [
        default_policy(),
        // Idle-aware with free short rows: idle intervals must arrive intact.
        json!({ "window": "24h", "min_session": "5m", "rollover": "active",
                "short_sessions": "count_free" }),
        json!({ "window": "8h", "min_session": "10m", "day_basis": "utc" }),
    ];
    for (p, policy) in policies.iter().enumerate() {
        let s = settings(policy.clone());
        let (_dir, c) = collector_with(&format!("replay-shuffled-{p}"), &s).await;
        let device = c.api.enroll("ws-17").await;
        let mut generator = Gen::new(63 + p as u64);
        let mut every_copy = Vec::new();
        let mut batches: Vec<(&str, Vec<Value>)> = Vec::new();
        for user in ["sophie", "marc", "paul"] {
            let sessions = generator.sessions(&format!("shuffled-{user}"), 50, PRODUCTS);
            // Every third session also as an earlier open copy, sent in any order.
            let mut copies = sessions.clone();
            for x in sessions.iter().step_by(3) {
                copies.push(open_copy(x, generator.below(100) as i32));
            }
            generator.shuffle(&mut copies);
            every_copy.extend(copies.iter().map(|x| owned(x, user, &device)));
            let mut rest = &copies[..];
            while !rest.is_empty() {
                let n = (1 + generator.below(15) as usize).min(rest.len());
                batches.push((user, rest[..n].to_vec()));
                rest = &rest[n..];
            }
        }
        generator.shuffle(&mut batches);
        assert!(batches.len() >= 12);
        for (user, batch) in &batches {
            c.api.sync_all(&device, user, batch).await;
        }
        let report = assert_usage_is_replay(&c.api, &s, &every_copy).await;
        assert_some_days(&report, 20);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_equal_replay_for_open_then_closed_copies_in_either_order() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("replay-copies", &s).await;
    let device = c.api.enroll("ws-17").await;
    let mut generator = Gen::new(64);

    // Closed sessions, and an open copy of each that saw less of it (or, for a few, all
    // of it: a tie on the effective end, which the closed copy wins).
    let mut closed = Vec::new();
    let mut open = Vec::new();
    for i in 0..40 {
        let mut s = generator.session(format!("copy-{i:03}"), PRODUCTS);
        let start = DateTime::parse_from_rfc3339(s["start"].as_str().unwrap()).unwrap();
        let end = start + chrono::TimeDelta::minutes(3 + generator.below(50 * 60) as i64);
        s["end"] = json!(end.to_rfc3339_opts(SecondsFormat::Secs, false));
        s.as_object_mut().unwrap().remove("last_seen");
        s.as_object_mut().unwrap().remove("idle");
        // The end moved: intervals drawn for the old one may lie outside the session.
        s.as_object_mut().unwrap().remove("suspended");
        let seen = if i % 8 == 0 {
            end
        } else {
            start + (end - start) * (generator.below(90) as i32) / 100
        };
        let mut o = s.clone();
        o["end"] = Value::Null;
        o["last_seen"] = json!(seen.to_rfc3339_opts(SecondsFormat::Secs, false));
        closed.push(s);
        open.push(o);
    }
    let all: Vec<Value> = open
        .iter()
        .chain(&closed)
        .map(|x| owned(x, "sophie", &device))
        .collect();
    let owned_closed: Vec<Value> = closed.iter().map(|x| owned(x, "sophie", &device)).collect();
    let owned_open: Vec<Value> = open.iter().map(|x| owned(x, "sophie", &device)).collect();
    let final_report = replay(&s, &owned_closed);
    assert_some_days(&final_report, 10);
    assert_ne!(
        replay(&s, &owned_open),
        final_report,
        "the open copies should account differently from the closed ones"
    );

    // Open copies first: progress is recorded, then the closed copies win.
    c.api.sync_all(&device, "sophie", &open).await;
    assert_usage_is_replay(&c.api, &s, &owned_open).await;
    c.api.sync_all(&device, "sophie", &closed).await;
    assert_eq!(assert_usage_is_replay(&c.api, &s, &all).await, final_report);

    // The reverse order on a fresh collector: the late open copies change nothing.
    let (_dir2, c2) = collector_with("replay-copies-rev", &s).await;
    let device2 = c2.api.enroll("ws-17").await;
    let rename = |list: &[Value]| -> Vec<Value> {
        list.iter().map(|x| owned(x, "sophie", &device2)).collect()
    };
    c2.api.sync_all(&device2, "sophie", &closed).await;
    assert_usage_is_replay(&c2.api, &s, &rename(&closed)).await;
    c2.api.sync_all(&device2, "sophie", &open).await;
    let reversed: Vec<Value> = rename(&closed).into_iter().chain(rename(&open)).collect();
    assert_eq!(
        assert_usage_is_replay(&c2.api, &s, &reversed).await,
        final_report
    );
    // Every stored copy is the closed one.
    for stored in c2.api.stored().await {
        assert!(
            !stored["end"].is_null(),
            "an open copy replaced a closed one: {stored}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_equal_replay_for_overlapping_sessions_of_one_user_on_two_devices() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("replay-devices", &s).await;
    let a = c.api.enroll("ws-a").await;
    let b = c.api.enroll("laptop-b").await;

    // Spec example 12: device A 09:00–11:00, device B 10:00–12:00 → one window at 09:00.
    let on_a = vec![ny(
        "dev-a-1",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T11:00:00"),
        None,
    )];
    let on_b = vec![ny(
        "dev-b-1",
        "acad",
        "2026-02-02T10:00:00",
        Some("2026-02-02T12:00:00"),
        None,
    )];
    c.api.sync_all(&a, "paul", &on_a).await;
    c.api.sync_all(&b, "paul", &on_b).await;
    let mut all = vec![owned(&on_a[0], "paul", &a), owned(&on_b[0], "paul", &b)];
    let report = assert_usage_is_replay(&c.api, &s, &all).await;
    assert_eq!(
        report["usage_days"],
        json!([{ "user": "paul", "product": "acad", "day": "2026-02-02",
                 "window_start": "2026-02-02T14:00:00Z", "window_end": "2026-02-03T14:00:00Z",
                 "plan": "flex", "tokens": 7 }])
    );

    // Many more, interleaved across both devices.
    let mut generator = Gen::new(65);
    for round in 0..4 {
        let (device, name) = if round % 2 == 0 { (&a, "a") } else { (&b, "b") };
        let batch = generator.sessions(&format!("dev-{name}-r{round}"), 25, PRODUCTS);
        c.api.sync_all(device, "paul", &batch).await;
        all.extend(batch.iter().map(|x| owned(x, "paul", device)));
    }
    let report = assert_usage_is_replay(&c.api, &s, &all).await;
    assert_some_days(&report, 10);
    // Pooled: fewer windows than accounting each device on its own would give.
    let per_device: usize = [&a, &b]
        .iter()
        .map(|d| {
            let mine: Vec<Value> = all
                .iter()
                .filter(|x| x["device"] == d.id.as_str())
                .cloned()
                .collect();
            replay(&s, &mine)["usage_days"].as_array().unwrap().len()
        })
        .sum();
    assert!(report["usage_days"].as_array().unwrap().len() < per_device);
}

// ---------------------------------------------------------------------------------------
// 7. Conflicting copies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_with_a_different_start_is_rejected_as_conflicting() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("conflict", &s).await;
    let device = c.api.enroll("ws-17").await;
    let first = ny(
        "conflict-1",
        "acad",
        "2026-02-02T09:00:00",
        None,
        Some("2026-02-02T10:00:00"),
    );
    let other = ny(
        "conflict-2",
        "acad",
        "2026-02-04T09:00:00",
        Some("2026-02-04T10:00:00"),
        None,
    );
    c.api
        .sync_all(&device, "sophie", &[first.clone(), other.clone()])
        .await;
    let stored_before = c.api.stored().await;

    let mut moved = ny(
        "conflict-1",
        "acad",
        "2026-02-02T08:00:00",
        Some("2026-02-02T18:00:00"),
        None,
    );
    moved["version"] = json!("2026.1");
    let later = ny(
        "conflict-3",
        "acad",
        "2026-02-06T09:00:00",
        Some("2026-02-06T10:00:00"),
        None,
    );
    let answer = c.api.sync(&device, "sophie", &[moved, later.clone()]).await;
    assert_eq!(
        ids(&answer["accepted"]),
        BTreeSet::from(["conflict-3".to_owned()])
    );
    let rejected = answer["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["id"], "conflict-1");
    assert_eq!(rejected[0]["error"]["code"], "conflicting_copies");
    assert_error_object(&rejected[0]["error"], Some("start"));

    // The stored copy is untouched; the usage days are those of the first copy.
    let stored_after = c.api.stored().await;
    let find = |list: &[Value]| {
        list.iter()
            .find(|x| x["id"] == "conflict-1")
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&stored_after), find(&stored_before));
    let owned_all: Vec<Value> = [first, other, later]
        .iter()
        .map(|x| owned(x, "sophie", &device))
        .collect();
    assert_usage_is_replay(&c.api, &s, &owned_all).await;
}

// ---------------------------------------------------------------------------------------
// 8. Many agents at once
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn many_agents_syncing_at_once_give_the_usage_days_of_replay() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("many-agents", &s).await;
    let mut devices = Vec::new();
    for i in 0..20 {
        devices.push(c.api.enroll(&format!("ws-{i:02}")).await);
    }
    let users = [
        "sophie", "marc", "paul", "ines", "omar", "li", "ana", "tom", "eva", "noor", "kai", "mia",
        "leo", "zoe", "raj", "ida", "ben", "amy", "jon", "uma",
    ];
    let mut tasks = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let api = c.api.clone();
        let device = device.clone();
        let user = users[i].to_owned();
        tasks.push(tokio::spawn(async move {
            let mut generator = Gen::new(800 + i as u64);
            let mut sent = Vec::new();
            for b in 0..5 {
                let n = 5 + generator.below(46) as usize;
                let batch = generator.sessions(&format!("{user}-b{b}"), n, PRODUCTS);
                api.sync_all(&device, &user, &batch).await;
                sent.extend(batch.iter().map(|x| owned(x, &user, &device)));
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a syncing task failed"));
    }
    assert!(all.len() >= 500, "only {} sessions", all.len());
    assert_eq!(c.api.stored().await.len(), all.len());
    let report = assert_usage_is_replay(&c.api, &s, &all).await;
    assert_some_days(&report, 200);
}

// ---------------------------------------------------------------------------------------
// 9. kill -9 under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_sessions_survive_kill_9_under_load() {
    let s = settings(default_policy());
    let dir = TempDir::new("kill9");
    let mut c = Collector::start(&dir);
    c.api.import(&s).await;
    let users = ["sophie", "marc", "paul", "ines", "omar", "li"];
    let mut devices = Vec::new();
    for u in users {
        devices.push(c.api.enroll(&format!("ws-{u}")).await);
    }
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        tasks.push(tokio::spawn(sync_until_gone(
            c.api.clone(),
            device.clone(),
            users[i].to_owned(),
            900 + i as u64,
            25,
            400,
            acked.clone(),
        )));
    }
    wait_for_acks(&acked, 1000, Duration::from_secs(60)).await;
    c.kill9();
    let mut odd = Vec::new();
    for t in tasks {
        odd.extend(t.await.expect("a syncing task failed"));
    }
    assert!(odd.is_empty(), "unexpected answers under load: {odd:?}");
    let acked = acked.lock().unwrap().clone();

    let c = Collector::start(&dir);
    let stored = c.api.stored().await;
    assert_all_stored(&acked, &stored);
    let report = assert_usage_is_replay(&c.api, &s, &stored).await;
    assert_some_days(&report, 100);

    // The restarted collector knows the devices and keeps accounting.
    let more = Gen::new(999).sessions("after-restart", 20, PRODUCTS);
    c.api.sync_all(&devices[0], users[0], &more).await;
    let mut all = stored;
    all.extend(more.iter().map(|x| owned(x, users[0], &devices[0])));
    assert_usage_is_replay(&c.api, &s, &all).await;
}

// ---------------------------------------------------------------------------------------
// 10. SIGTERM drains
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_requests_in_flight_and_exits_0() {
    let s = settings(default_policy());
    let dir = TempDir::new("sigterm");
    let mut c = Collector::start(&dir);
    c.api.import(&s).await;
    let users = ["sophie", "marc", "paul", "ines"];
    let mut devices = Vec::new();
    for u in users {
        devices.push(c.api.enroll(&format!("ws-{u}")).await);
    }
    let slow = c.api.enroll("ws-slow").await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        tasks.push(tokio::spawn(sync_until_gone(
            c.api.clone(),
            device.clone(),
            users[i].to_owned(),
            1000 + i as u64,
            40,
            400,
            acked.clone(),
        )));
    }
    wait_for_acks(&acked, 300, Duration::from_secs(60)).await;

    // A request certainly in flight: its head is read and its handler waits for the body
    // (the server said `100 Continue`) when the signal comes.
    let slow_sessions = Gen::new(1100).sessions("in-flight", 30, PRODUCTS);
    let body = Api::sync_body("uma", &slow_sessions);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", c.port()))
        .await
        .expect("connecting");
    let head = format!(
        "POST /v1/sync HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
         connection: close\r\n\r\n",
        slow.token,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    conn.write_all(&body[..half]).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let until = Instant::now() + Duration::from_secs(20);
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < until, "no 100 Continue");
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("waiting for 100 Continue")
            .unwrap();
        assert!(n > 0, "connection closed before 100 Continue");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 100"),
        "expected 100 Continue, got {:?}",
        String::from_utf8_lossy(&seen)
    );

    c.signal(libc::SIGTERM);
    // The listener closes: new connections are refused.
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", c.port()))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < until,
            "still accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The request in flight completes and is answered.
    conn.write_all(&body[half..]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest))
        .await
        .expect("waiting for the drained answer")
        .expect("reading the drained answer");
    let text = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request in flight was not answered 200: {text}"
    );
    let json_start = text.find("\r\n\r\n").expect("answer head") + 4;
    let answer: Value = serde_json::from_str(&text[json_start..]).expect("JSON answer");
    assert_eq!(
        ids(&answer["accepted"]),
        slow_sessions.iter().map(id_of).collect::<BTreeSet<_>>()
    );
    acked.lock().unwrap().extend(ids(&answer["accepted"]));

    let status = c.wait_exit(EXIT_DEADLINE).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let mut odd = Vec::new();
    for t in tasks {
        odd.extend(t.await.expect("a syncing task failed"));
    }
    assert!(odd.is_empty(), "unexpected answers while draining: {odd:?}");
    let acked = acked.lock().unwrap().clone();

    let c = Collector::start(&dir);
    let stored = c.api.stored().await;
    assert_all_stored(&acked, &stored);
    let report = assert_usage_is_replay(&c.api, &s, &stored).await;
    assert_some_days(&report, 50);
}

// ---------------------------------------------------------------------------------------
// 11. Teams, purchases, ledger, reminders
// ---------------------------------------------------------------------------------------

fn balance_of<'a>(balances: &'a Value, team: &str) -> &'a Value {
    balances["balances"]
        .as_array()
        .expect("balances list")
        .iter()
        .find(|b| b["team"] == team)
        .unwrap_or_else(|| panic!("no balance for team {team}: {balances}"))
}

fn ledger_sum(entries: &[Value]) -> i64 {
    entries.iter().map(|e| e["tokens"].as_i64().unwrap()).sum()
}

async fn ledger_of(api: &Api, team: &str) -> Vec<Value> {
    let body = api
        .admin_get(&format!("/v1/admin/ledger?team={team}"))
        .await;
    body["entries"].as_array().expect("ledger entries").clone()
}

fn insufficient(answer: &Value) -> Vec<&Value> {
    answer["reminders"]
        .as_array()
        .expect("reminders list")
        .iter()
        .filter(|r| r["kind"] == "insufficient_balance")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn purchases_are_drawn_by_charged_days_and_repricing_writes_reversals() {
    let mut s = json!({
        "catalog": {
            "acad": { "name": "AutoCAD", "tokens_per_day": 7 },
            "revit": { "name": "Revit", "tokens_per_day": 10 }
        },
        "entitlements": [],
        "policy": default_policy(),
        "teams": {
            "design": { "users": ["sophie"], "low_balance": 50 },
            "small": { "users": ["bob"] }
        }
    });
    let (_dir, c) = collector_with("ledger", &s).await;
    let laptop = c.api.enroll("ws-sophie").await;
    let bobs = c.api.enroll("ws-bob").await;
    let buy = |team: &str, tokens: u64| {
        json!({ "team": team, "tokens": tokens, "purchased_at": "2026-01-01T00:00:00Z",
                "expires_at": "2036-01-01T00:00:00Z" })
    };
    let bought = c
        .api
        .admin_post("/v1/admin/purchases", &buy("design", 60))
        .await;
    let design_purchase = bought["id"].as_str().expect("purchase id").to_owned();
    c.api
        .admin_post("/v1/admin/purchases", &buy("small", 5))
        .await;
    let balances = c.api.admin_get("/v1/admin/balances").await;
    assert_eq!(balance_of(&balances, "design")["remaining"], 60);
    assert_eq!(balance_of(&balances, "small")["remaining"], 5);

    // A team below a product's rate: the sync answer says so, product by product.
    let answer = c.api.sync(&bobs, "bob", &[]).await;
    let due = insufficient(&answer);
    assert_eq!(due.len(), 2, "reminders: {}", answer["reminders"]);
    for (product, rate) in [("acad", 7), ("revit", 10)] {
        let r = due
            .iter()
            .find(|r| r["product"] == product)
            .unwrap_or_else(|| panic!("no insufficient_balance for {product}"));
        assert_eq!(r["balance"], 5);
        assert_eq!(r["tokens_per_day"], rate);
        assert!(r["text"].as_str().is_some_and(|t| !t.is_empty()));
    }

    // Three acad days and a revit day: 31 tokens from design's purchase.
    let days = vec![
        ny(
            "led-1",
            "acad",
            "2026-02-02T09:00:00",
            Some("2026-02-02T12:00:00"),
            None,
        ),
        ny(
            "led-2",
            "acad",
            "2026-02-04T09:00:00",
            Some("2026-02-04T12:00:00"),
            None,
        ),
        ny(
            "led-3",
            "acad",
            "2026-02-06T09:00:00",
            Some("2026-02-06T12:00:00"),
            None,
        ),
        ny(
            "led-4",
            "revit",
            "2026-02-03T09:00:00",
            Some("2026-02-03T12:00:00"),
            None,
        ),
    ];
    let answer = c.api.sync_all(&laptop, "sophie", &days).await;
    assert!(
        insufficient(&answer).is_empty(),
        "design can pay: {}",
        answer["reminders"]
    );
    let mut sessions: Vec<Value> = days.iter().map(|d| owned(d, "sophie", &laptop)).collect();
    let report = assert_usage_is_replay(&c.api, &s, &sessions).await;
    assert_eq!(report["totals"]["tokens"], 31);
    let balances = c.api.admin_get("/v1/admin/balances").await;
    let design = balance_of(&balances, "design");
    assert_eq!(design["remaining"], 29);
    assert_eq!(design["low"], true, "29 is below design's low_balance 50");
    let ledger = ledger_of(&c.api, "design").await;
    assert_eq!(ledger.len(), 4, "{ledger:?}");
    assert_eq!(ledger_sum(&ledger), 31);
    for e in &ledger {
        assert_eq!(e["team"], "design");
        assert_eq!(e["user"], "sophie");
        assert_eq!(e["purchase"], design_purchase.as_str());
        assert!(e["tokens"].as_i64().unwrap() > 0);
    }

    // A late session moves the 4 Feb window to 07:00: the old day is reversed, the new
    // one charged; the balance is unchanged.
    let early = ny(
        "led-5",
        "acad",
        "2026-02-04T07:00:00",
        Some("2026-02-04T08:00:00"),
        None,
    );
    c.api
        .sync_all(&laptop, "sophie", std::slice::from_ref(&early))
        .await;
    sessions.push(owned(&early, "sophie", &laptop));
    assert_usage_is_replay(&c.api, &s, &sessions).await;
    let ledger = ledger_of(&c.api, "design").await;
    let reversals: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["tokens"].as_i64().unwrap() < 0)
        .collect();
    assert_eq!(reversals.len(), 1, "{ledger:?}");
    assert_eq!(reversals[0]["tokens"], -7);
    assert_eq!(reversals[0]["window_start"], "2026-02-04T14:00:00Z");
    assert!(
        reversals[0]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(ledger_sum(&ledger), 31);
    assert_eq!(
        balance_of(&c.api.admin_get("/v1/admin/balances").await, "design")["remaining"],
        29
    );

    // Sophie becomes an acad subscriber: her acad days are re-priced to 0, each reversed;
    // the balance gets the 21 tokens back.
    let subscribe = json!({ "entitlements": [ { "user": "sophie", "product": "acad",
                                               "plan": "subscription",
                                               "from": "2026-01-01T00:00:00Z" } ] });
    c.api.import(&subscribe).await;
    s["entitlements"] = subscribe["entitlements"].clone();
    let report = assert_usage_is_replay(&c.api, &s, &sessions).await;
    assert_eq!(report["totals"]["tokens"], 10);
    let ledger = ledger_of(&c.api, "design").await;
    let import_reversals: Vec<&Value> = ledger
        .iter()
        .filter(|e| {
            e["tokens"].as_i64().unwrap() < 0
                && e["reason"].as_str().is_some_and(|r| r.contains("import"))
        })
        .collect();
    assert_eq!(import_reversals.len(), 3, "{ledger:?}");
    assert!(import_reversals.iter().all(|e| e["product"] == "acad"));
    assert_eq!(ledger_sum(&ledger), 10);
    let design = balance_of(&c.api.admin_get("/v1/admin/balances").await, "design").clone();
    assert_eq!(design["remaining"], 50);
    assert_eq!(design["low"], false);

    // Bob's day costs more than his team holds: 5 paid, 2 unfunded, and he is told.
    let bob_day = ny(
        "led-bob",
        "acad",
        "2026-02-05T09:00:00",
        Some("2026-02-05T12:00:00"),
        None,
    );
    let answer = c.api.sync_all(&bobs, "bob", &[bob_day]).await;
    let due = insufficient(&answer);
    assert!(
        due.iter()
            .any(|r| r["product"] == "acad" && r["balance"] == 0),
        "reminders: {}",
        answer["reminders"]
    );
    let small = balance_of(&c.api.admin_get("/v1/admin/balances").await, "small").clone();
    assert_eq!(small["remaining"], 0);
    assert_eq!(small["unfunded"], 2);
    assert_eq!(ledger_sum(&ledger_of(&c.api, "small").await), 7);
}

// ---------------------------------------------------------------------------------------
// Beyond the list: the usage-days range, settings across a restart, imports racing
// syncs, and SIGTERM at the very start.
// ---------------------------------------------------------------------------------------

/// Replay's rows whose `day` is in `[from, to]`, with totals over them (what
/// `GET /v1/admin/usage-days?from=&to=` must answer).
fn in_range(report: &Value, from: &str, to: &str) -> Value {
    let rows: Vec<Value> = report["usage_days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let day = r["day"].as_str().unwrap();
            from <= day && day <= to
        })
        .cloned()
        .collect();
    let tokens: u64 = rows.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    let days: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["user"].to_string(),
                r["product"].to_string(),
                r["day"].to_string(),
            )
        })
        .collect();
    json!({ "usage_days": rows, "totals": { "tokens": tokens, "days_used": days.len() } })
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_keep_the_rows_of_the_requested_range_with_their_totals() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("range", &s).await;
    let device = c.api.enroll("ws-17").await;
    let sessions = Gen::new(71).sessions("range", 60, PRODUCTS);
    c.api.sync_all(&device, "sophie", &sessions).await;
    let owned_all: Vec<Value> = sessions
        .iter()
        .map(|x| owned(x, "sophie", &device))
        .collect();
    let report = assert_usage_is_replay(&c.api, &s, &owned_all).await;
    for (from, to) in [
        ("2026-02-05", "2026-02-08"),
        ("2026-02-07", "2026-02-07"),
        ("2026-01-01", "2026-02-03"),
        ("2026-03-01", "2026-03-31"),
    ] {
        let got = c
            .api
            .admin_get(&format!("/v1/admin/usage-days?from={from}&to={to}"))
            .await;
        let want = in_range(&report, from, to);
        assert_eq!(got["usage_days"], want["usage_days"], "[{from}, {to}]");
        assert_eq!(got["totals"], want["totals"], "[{from}, {to}]");
    }
    assert_some_days(&in_range(&report, "2026-02-05", "2026-02-08"), 3);
    let r = c
        .api
        .get("/v1/admin/usage-days?from=yesterday", Some(ADMIN_TOKEN))
        .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("from"));
    let r = c.api.get("/v1/admin/usage-days", None).await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_without_from_or_to_list_every_day() {
    let s = settings(default_policy());
    let (_dir, c) = collector_with("no-range", &s).await;
    let device = c.api.enroll("ws-17").await;
    let sessions = Gen::new(72).sessions("no-range", 30, PRODUCTS);
    c.api.sync_all(&device, "sophie", &sessions).await;
    let owned_all: Vec<Value> = sessions
        .iter()
        .map(|x| owned(x, "sophie", &device))
        .collect();
    let report = replay(&s, &owned_all);
    assert_some_days(&report, 5);
    // The range is optional: without it (or with only one bound) nothing is cut off.
    for query in ["", "?from=2026-01-01", "?to=2026-12-31"] {
        let got = c
            .api
            .admin_get(&format!("/v1/admin/usage-days{query}"))
            .await;
        assert_eq!(
            got["usage_days"], report["usage_days"],
            "GET /v1/admin/usage-days{query}"
        );
        assert_eq!(
            got["totals"], report["totals"],
            "GET /v1/admin/usage-days{query}"
        );
    }
}

/// A running product's window is in `open_windows` (its end and what the next window
/// costs); sitting idle within `remind_before` of the window's end, it gets a
/// `window_rollover` reminder, and not while it is in use or when its end is further off.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_running_product_near_its_window_end_gets_a_window_rollover_reminder() {
    let s = json!({
        "catalog": { "acad": { "name": "AutoCAD", "tokens_per_day": 7 } },
        "entitlements": [],
        "policy": { "window": "24h", "min_session": "5m", "remind_before": "1h" },
    });
    let (_dir, c) = collector_with("rollover", &s).await;
    let device = c.api.enroll("ws-rollover").await;
    let now = Utc::now();
    let at = |minutes: i64| stamp(now + chrono::TimeDelta::minutes(minutes), None);
    // Started 23.5 h ago: its window ends in about 30 minutes.
    let running = |id: &str, idle_until_last_seen: bool| {
        let idle_to = if idle_until_last_seen {
            at(-1)
        } else {
            at(-30)
        };
        json!({
            "id": id, "product": "acad", "version": "2026",
            "start": at(-23 * 60 - 30), "last_seen": at(-1),
            "idle": [[at(-120), idle_to]],
        })
    };
    let rollovers = |answer: &Value| -> Vec<Value> {
        answer["reminders"]
            .as_array()
            .expect("reminders list")
            .iter()
            .filter(|r| r["kind"] == "window_rollover")
            .cloned()
            .collect()
    };

    let busy = c
        .api
        .sync_all(&device, "ana", &[running("r-1", false)])
        .await;
    let windows = busy["open_windows"].as_array().expect("open_windows list");
    assert_eq!(windows.len(), 1, "{busy}");
    assert_eq!(windows[0]["product"], "acad");
    assert_eq!(windows[0]["next_tokens"], 7);
    let end = DateTime::parse_from_rfc3339(windows[0]["window_end"].as_str().unwrap()).unwrap();
    let left = end.to_utc() - now;
    assert!(
        left > chrono::TimeDelta::minutes(25) && left < chrono::TimeDelta::minutes(35),
        "window end {end}, now {now}"
    );
    assert!(rollovers(&busy).is_empty(), "in use: {}", busy["reminders"]);

    let idle = c
        .api
        .sync_all(&device, "ana", &[running("r-1", true)])
        .await;
    let due = rollovers(&idle);
    assert_eq!(due.len(), 1, "{}", idle["reminders"]);
    assert_eq!(due[0]["product"], "acad");
    assert_eq!(due[0]["tokens"], 7);
    assert_eq!(due[0]["window_end"], windows[0]["window_end"]);
    let text = due[0]["text"].as_str().unwrap();
    assert!(text.starts_with("AutoCAD has been idle"), "{text}");

    // Idle, but its window ends in more than an hour: nothing due yet.
    let fresh = json!({
        "id": "r-2", "product": "acad", "version": "2026",
        "start": at(-120), "last_seen": at(-1), "idle": [[at(-60), at(-1)]],
    });
    let early = c.api.sync_all(&device, "bo", &[fresh]).await;
    assert_eq!(early["open_windows"].as_array().unwrap().len(), 1);
    assert!(rollovers(&early).is_empty(), "{}", early["reminders"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_survive_a_restart() {
    let s = json!({
        "catalog": { "acad": { "tokens_per_day": 7 } },
        "policy": default_policy(),
        "teams": { "design": { "users": ["sophie"], "low_balance": 50 } }
    });
    let dir = TempDir::new("teams-restart");
    let mut c = Collector::start(&dir);
    c.api.import(&s).await;
    c.api
        .admin_post(
            "/v1/admin/purchases",
            &json!({ "team": "design", "tokens": 100, "purchased_at": "2026-01-01T00:00:00Z",
                     "expires_at": "2036-01-01T00:00:00Z" }),
        )
        .await;
    let device = c.api.enroll("ws-sophie").await;
    let monday = ny(
        "team-1",
        "acad",
        "2026-02-02T09:00:00",
        Some("2026-02-02T12:00:00"),
        None,
    );
    c.api.sync_all(&device, "sophie", &[monday]).await;
    let before = balance_of(&c.api.admin_get("/v1/admin/balances").await, "design").clone();
    assert_eq!(before["remaining"], 93);

    c.kill9();
    let c = Collector::start(&dir);
    let balances = c.api.admin_get("/v1/admin/balances").await;
    let design = balance_of(&balances, "design");
    assert_eq!(
        design["low_balance"], 50,
        "the team's settings were lost: {balances}"
    );
    // Sophie is still in design: her next day is paid from design's purchase.
    let wednesday = ny(
        "team-2",
        "acad",
        "2026-02-04T09:00:00",
        Some("2026-02-04T12:00:00"),
        None,
    );
    c.api.sync_all(&device, "sophie", &[wednesday]).await;
    let ledger = ledger_of(&c.api, "design").await;
    assert_eq!(
        ledger_sum(&ledger),
        14,
        "sophie's day after the restart was not charged to design: {}",
        c.api.admin_get("/v1/admin/ledger").await
    );
    let balances = c.api.admin_get("/v1/admin/balances").await;
    assert_eq!(
        balance_of(&balances, "design")["remaining"],
        86,
        "{balances}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_during_concurrent_syncs_reprices_every_day() {
    let mut s = settings(default_policy());
    let (_dir, c) = collector_with("import-race", &s).await;
    // History enough that the import's recomputation takes a moment.
    let loader = c.api.enroll("ws-loader").await;
    let mut all = Vec::new();
    let mut generator = Gen::new(1200);
    for k in 0..10 {
        let user = format!("history-{k}");
        for b in 0..3 {
            let batch = generator.sessions(&format!("{user}-b{b}"), 100, PRODUCTS);
            c.api.sync_all(&loader, &user, &batch).await;
            all.extend(batch.iter().map(|x| owned(x, &user, &loader)));
        }
    }
    // Agents keep syncing (each request a new user's acad sessions) while the admin
    // changes acad's rate.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let api = c.api.clone();
        let device = c.api.enroll(&format!("ws-{i}")).await;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut generator = Gen::new(1300 + i);
            let mut sent = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("agent-{i}-{n}");
                // Three charged acad days.
                let batch: Vec<Value> = (0..3)
                    .map(|k| {
                        let start = base_time()
                            + chrono::TimeDelta::days(2 * k)
                            + chrono::TimeDelta::minutes(generator.below(600) as i64);
                        let end = start + chrono::TimeDelta::hours(2);
                        json!({ "id": format!("{user}-{k}"), "product": "acad",
                                "start": stamp(start, Some("Europe/Berlin")),
                                "end": stamp(end, Some("Europe/Berlin")),
                                "tz": "Europe/Berlin" })
                    })
                    .collect();
                api.sync_all(&device, &user, &batch).await;
                sent.extend(batch.iter().map(|x| owned(x, &user, &device)));
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            sent
        }));
    }
    let wait_done = |n: usize| {
        let done = done.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < until, "the agents stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_done(16).await;
    c.api
        .import(&json!({ "catalog": { "acad": { "name": "AutoCAD", "tokens_per_day": 9 } } }))
        .await;
    let after_import = done.load(Ordering::Relaxed);
    wait_done(after_import + 16).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        all.extend(t.await.expect("a syncing task failed"));
    }

    s["catalog"]["acad"]["tokens_per_day"] = json!(9);
    let expected = replay(&s, &all);
    let actual = c.api.usage_days().await;
    let stale: Vec<&Value> = actual["usage_days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["plan"] == "flex" && r["product"] == "acad" && r["tokens"] != 9)
        .collect();
    assert!(
        stale.is_empty(),
        "{} acad days are priced at the old rate after the import, e.g. {}",
        stale.len(),
        stale[0]
    );
    assert_eq!(actual["usage_days"], expected["usage_days"]);
    assert_eq!(actual["totals"], expected["totals"]);
}

#[test]
fn sigterm_right_after_the_listening_line_exits_0() {
    // Ready means ready: a supervisor may stop the collector the moment it announced
    // itself. The signal is sent by the thread that reads the line, at once; several
    // starts, as the window is short.
    let dir = TempDir::new("sigterm-early");
    for attempt in 0..10 {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(format!(
                "sqlite://{}",
                dir.path.join("collector.db").display()
            ))
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting daymeter-collector serve");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            if line.starts_with("listening on ") {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = tx.send((read.is_ok(), line));
        });
        let (ok, line) = rx.recv_timeout(START_DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no `listening on` line");
        });
        assert!(
            ok && line.starts_with("listening on "),
            "first line {line:?}"
        );
        let until = Instant::now() + EXIT_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("start #{attempt}: no exit within {EXIT_DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "start #{attempt}: SIGTERM right after `listening on` ended the collector with {status}"
        );
    }
}
