//! What an attacker or a careless admin tried against the collector, one test per
//! finding: whatever the collector accepts it can read back, account and serve, across
//! restarts; whatever it refuses, it refuses with the error object naming the field.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};

use support::*;

/// Stops the collector with SIGTERM and starts it again on the same database.
async fn restart(dir: &TempDir, mut c: Collector) -> Collector {
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(EXIT_DEADLINE).await;
    assert!(status.success(), "collector exited with {status}");
    Collector::start(dir)
}

/// The admin reads that must answer 200 whatever was stored.
async fn assert_admin_reads_answer(api: &Api) {
    for path in [
        "/v1/admin/usage-days",
        "/v1/admin/sessions",
        "/v1/admin/balances",
        "/v1/admin/ledger",
    ] {
        let r = api.get(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
}

fn good_session(id: &str) -> Value {
    json!({"id": id, "product": "acad", "start": "2026-04-02T09:00:00Z",
           "end": "2026-04-02T17:00:00Z"})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_sent_as_a_list_is_rejected_and_the_collector_still_restarts() {
    let (dir, c) = collector_with("list-session", &settings(default_policy())).await;
    let device = c.api.enroll("ws-list").await;
    let list = json!([
        "s1",
        null,
        null,
        "acad",
        null,
        "2026-04-02T09:00:00Z",
        "2026-04-02T17:00:00Z"
    ]);
    let answer = c
        .api
        .sync(&device, "sophie", &[list, good_session("s2")])
        .await;
    assert_eq!(answer["accepted"], json!(["s2"]), "{answer}");
    let rejected = answer["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 1, "{answer}");
    assert_error_object(&rejected[0]["error"], Some("session"));
    let c = restart(&dir, c).await;
    assert_admin_reads_answer(&c.api).await;
    let stored = c.api.stored().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_instant_past_the_supported_years_is_refused_and_syncs_still_answer() {
    let (dir, c) = collector_with("purchase-years", &settings(default_policy())).await;
    let device = c.api.enroll("ws-years").await;
    for (body, field) in [
        (
            json!({"tokens": 5, "expires_at": "+10000-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"tokens": 5, "purchased_at": "9999-01-01T00:00:00Z"}),
            "purchased_at",
        ),
        (
            json!({"tokens": 5, "purchased_at": "-0001-12-31T23:59:59Z"}),
            "purchased_at",
        ),
    ] {
        let r = c
            .api
            .post("/v1/admin/purchases", Some(ADMIN_TOKEN), &body)
            .await;
        assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    c.api
        .sync_all(&device, "sophie", &[good_session("p1")])
        .await;
    let c = restart(&dir, c).await;
    assert_admin_reads_answer(&c.api).await;
    c.api
        .sync_all(&device, "sophie", &[good_session("p2")])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_policy_duration_is_refused_by_name_and_syncs_still_answer() {
    let (_dir, c) = collector_with("huge-grace", &settings(default_policy())).await;
    let device = c.api.enroll("ws-grace").await;
    for (policy, field) in [
        (json!({"grace_flex": "300000y"}), "grace_flex"),
        (
            json!({"grace_subscription": "300000y"}),
            "grace_subscription",
        ),
        (json!({"window": "1ns"}), "window"),
        (json!({"remind_before": "300000y"}), "remind_before"),
    ] {
        let r = c
            .api
            .post(
                "/v1/admin/import",
                Some(ADMIN_TOKEN),
                &json!({ "policy": policy }),
            )
            .await;
        assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    let answer = c
        .api
        .sync_all(&device, "sophie", &[good_session("g1")])
        .await;
    assert!(answer["grace_until"]["flex"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let (_dir, c) = collector_with("bearer-case", &settings(default_policy())).await;
    let r = c
        .api
        .http
        .get(format!("{}/v1/admin/balances", c.api.base))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("GET balances");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_answers_405_with_the_error_object() {
    let (_dir, c) = collector_with("method", &settings(default_policy())).await;
    let r = c
        .api
        .send(reqwest::Method::GET, "/v1/sync", None, None)
        .await
        .expect("GET /v1/sync");
    assert_error_reply(&r, StatusCode::METHOD_NOT_ALLOWED, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_duplicate_query_parameters_are_refused_by_name() {
    let (_dir, c) = collector_with("query", &settings(default_policy())).await;
    for (path, field) in [
        ("/v1/admin/usage-days?usr=sophie", "usr"),
        (
            "/v1/admin/usage-days?from=2026-04-01&from=2026-04-02",
            "from",
        ),
        ("/v1/admin/sessions?usr=sophie", "usr"),
        ("/v1/admin/ledger?teams=design", "teams"),
    ] {
        let r = c.api.get(path, Some(ADMIN_TOKEN)).await;
        assert_error_reply(&r, StatusCode::BAD_REQUEST, Some(field));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_of_an_unknown_team_is_refused_by_name() {
    let mut doc = settings(default_policy());
    doc["teams"] = json!({"design": {"users": ["sophie"]}});
    let (_dir, c) = collector_with("ledger-team", &doc).await;
    let r = c
        .api
        .get("/v1/admin/ledger?team=nope", Some(ADMIN_TOKEN))
        .await;
    assert_error_reply(&r, StatusCode::NOT_FOUND, Some("team"));
    let r = c
        .api
        .get("/v1/admin/ledger?team=design", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_for_an_unknown_team_is_refused_by_name() {
    let mut doc = settings(default_policy());
    doc["teams"] = json!({"design": {"users": ["sophie"]}});
    let (_dir, c) = collector_with("purchase-team", &doc).await;
    let r = c
        .api
        .post(
            "/v1/admin/purchases",
            Some(ADMIN_TOKEN),
            &json!({"team": "desgin", "tokens": 100}),
        )
        .await;
    assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("team"));
    let balances = c.api.admin_get("/v1/admin/balances").await;
    assert!(
        !balances.to_string().contains("desgin"),
        "phantom team: {balances}"
    );
    let r = c
        .api
        .post(
            "/v1/admin/purchases",
            Some(ADMIN_TOKEN),
            &json!({"team": "design", "tokens": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn import_refused(api: &Api, doc: Value, field: &str) {
    let r = api.post("/v1/admin/import", Some(ADMIN_TOKEN), &doc).await;
    assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_keys_in_an_import_are_refused_by_name_at_every_level() {
    let (_dir, c) = collector_with("import-keys", &settings(default_policy())).await;
    import_refused(
        &c.api,
        json!({"policy": {"grace_flexx": "48h"}}),
        "grace_flexx",
    )
    .await;
    import_refused(&c.api, json!({"users": ["sophie"]}), "users").await;
    import_refused(
        &c.api,
        json!({"teams": {"design": {"users": ["sophie"], "low_balanse": 5}}}),
        "low_balanse",
    )
    .await;
    import_refused(
        &c.api,
        json!({"catalog": {"x": {"tokens_per_day": 1, "match": [{"exe": "x.exe", "arg": "y"}]}}}),
        "arg",
    )
    .await;
    let policy = c.api.admin_get("/v1/admin/usage-days").await;
    assert!(policy.is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entitlement_for_a_product_not_in_the_catalog_is_refused() {
    let (_dir, c) = collector_with("ent-product", &settings(default_policy())).await;
    import_refused(
        &c.api,
        json!({"entitlements": [{"user": "sophie", "product": "nope", "plan": "subscription"}]}),
        "product",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_in_two_teams_of_one_import_is_refused() {
    let (_dir, c) = collector_with("two-teams", &settings(default_policy())).await;
    import_refused(
        &c.api,
        json!({"teams": {"a": {"users": ["sophie"]}, "b": {"users": ["sophie"]}}}),
        "users",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn integers_past_what_is_stored_are_refused() {
    let (_dir, c) = collector_with("integers", &settings(default_policy())).await;
    let r = c
        .api
        .post(
            "/v1/admin/purchases",
            Some(ADMIN_TOKEN),
            &json!({"tokens": 18446744073709551615u64}),
        )
        .await;
    assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("tokens"));
    import_refused(
        &c.api,
        json!({"catalog": {"big": {"tokens_per_day": 18446744073709551615u64}}}),
        "tokens_per_day",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_over_the_window_cap_an_empty_product_and_overlapping_idle_are_rejected_by_name()
{
    let (_dir, c) = collector_with("session-bounds", &settings(default_policy())).await;
    let device = c.api.enroll("ws-bounds").await;
    let long = json!({"id": "long", "product": "acad", "start": "1700-01-01T00:00:00Z",
                      "end": "2020-01-01T00:00:00Z"});
    let empty = json!({"id": "empty", "product": "", "start": "2026-04-02T09:00:00Z",
                       "end": "2026-04-02T17:00:00Z"});
    let overlap = json!({"id": "overlap", "product": "acad", "start": "2026-04-02T09:00:00Z",
                         "end": "2026-04-02T17:00:00Z",
                         "idle": [["2026-04-02T10:00:00Z", "2026-04-02T12:00:00Z"],
                                  ["2026-04-02T11:00:00Z", "2026-04-02T13:00:00Z"]]});
    let answer = c
        .api
        .sync(
            &device,
            "sophie",
            &[long, empty, overlap, good_session("ok")],
        )
        .await;
    assert_eq!(answer["accepted"], json!(["ok"]), "{answer}");
    let by_id = |id: &str| {
        answer["rejected"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"] == id))
            .map(|r| r["error"].clone())
            .unwrap_or_else(|| panic!("{id} not rejected: {answer}"))
    };
    assert_eq!(by_id("long")["code"], "too_many_windows");
    assert_error_object(&by_id("long"), Some("end"));
    assert_error_object(&by_id("empty"), Some("product"));
    assert_error_object(&by_id("overlap"), Some("idle"));
    let long_user = "u".repeat(129);
    let r = c
        .api
        .try_sync(&device, &long_user, &[])
        .await
        .expect("sync");
    assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("user"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_is_read_a_page_at_a_time() {
    let (_dir, c) = collector_with("ledger-pages", &settings(default_policy())).await;
    let device = c.api.enroll("ws-pages").await;
    let days: Vec<Value> = (1..=7)
        .map(|d| {
            json!({"id": format!("day-{d}"), "product": "revit",
                   "start": format!("2026-04-{d:02}T09:00:00Z"),
                   "end": format!("2026-04-{d:02}T17:00:00Z")})
        })
        .collect();
    c.api.sync_all(&device, "sophie", &days).await;
    let whole = c.api.admin_get("/v1/admin/ledger?limit=10000").await;
    let all = whole["entries"].as_array().expect("entries").clone();
    assert!(all.len() >= 7, "{whole}");
    assert_eq!(whole["next_after"], Value::Null);
    let mut paged = Vec::new();
    let mut path = "/v1/admin/ledger?limit=2".to_owned();
    loop {
        let page = c.api.admin_get(&path).await;
        let entries = page["entries"].as_array().expect("entries");
        assert!(entries.len() <= 2, "{page}");
        paged.extend(entries.iter().cloned());
        match page["next_after"].as_i64() {
            Some(after) => path = format!("/v1/admin/ledger?limit=2&after={after}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let r = c
        .api
        .get("/v1/admin/ledger?limit=0", Some(ADMIN_TOKEN))
        .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_session_is_rejected_naming_its_field() {
    let (_dir, c) = collector_with("malformed-field", &settings(default_policy())).await;
    let device = c.api.enroll("ws-malformed").await;
    let bad_start =
        json!({"id": "m1", "product": "acad", "start": 5, "end": "2026-04-02T17:00:00Z"});
    let bad_idle = json!({"id": "m2", "product": "acad", "start": "2026-04-02T09:00:00Z",
                          "end": "2026-04-02T17:00:00Z", "idle": [["2026-04-02T10:00:00Z"]]});
    let answer = c.api.sync(&device, "sophie", &[bad_start, bad_idle]).await;
    let rejected = answer["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 2, "{answer}");
    assert_eq!(rejected[0]["id"], "m1");
    assert_error_object(&rejected[0]["error"], Some("start"));
    assert_eq!(rejected[1]["id"], "m2");
    let field = rejected[1]["error"]["field"].as_str().expect("field");
    assert!(field.starts_with("idle"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_days_honour_the_user_and_product_filters() {
    let (_dir, c) = collector_with("usage-filters", &settings(default_policy())).await;
    let device = c.api.enroll("ws-filters").await;
    c.api
        .sync_all(&device, "sophie", &[good_session("f1")])
        .await;
    c.api.sync_all(&device, "marc", &[good_session("f2")]).await;
    let all = c.api.admin_get("/v1/admin/usage-days").await;
    assert_eq!(all["usage_days"].as_array().map(Vec::len), Some(2), "{all}");
    let sophie = c.api.admin_get("/v1/admin/usage-days?user=sophie").await;
    let rows = sophie["usage_days"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{sophie}");
    assert_eq!(rows[0]["user"], "sophie");
    let none = c.api.admin_get("/v1/admin/usage-days?product=revit").await;
    assert_eq!(none["usage_days"], json!([]), "{none}");
    let sessions = c.api.admin_get("/v1/admin/sessions?user=sophie").await;
    let list = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 1, "{sessions}");
    assert_eq!(list[0]["user"], "sophie");
    let none = c.api.admin_get("/v1/admin/sessions?product=revit").await;
    assert_eq!(none["sessions"], json!([]), "{none}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_may_not_shorten_the_window_past_the_cap_of_a_stored_session() {
    let (_dir, c) = collector_with("window-cap", &settings(default_policy())).await;
    let device = c.api.enroll("ws-window").await;
    let ten_days = json!({"id": "ten", "product": "acad", "start": "2026-04-01T09:00:00Z",
                          "end": "2026-04-11T09:00:00Z"});
    c.api.sync_all(&device, "sophie", &[ten_days]).await;
    import_refused(&c.api, json!({"policy": {"window": "10m"}}), "window").await;
    let r = c
        .api
        .post(
            "/v1/admin/import",
            Some(ADMIN_TOKEN),
            &json!({"policy": {"window": "1h"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let days = c.api.admin_get("/v1/admin/usage-days").await;
    assert_eq!(
        days["usage_days"].as_array().map(Vec::len),
        Some(240),
        "{days}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_is_corrected_or_withdrawn_by_an_appended_correction_that_survives_a_restart() {
    let mut doc = settings(default_policy());
    doc["teams"] = json!({"design": {"users": ["sophie"]}});
    let (dir, c) = collector_with("purchase-correction", &doc).await;
    let bought = c
        .api
        .admin_post(
            "/v1/admin/purchases",
            &json!({"team": "design", "tokens": 100}),
        )
        .await;
    let id = bought["id"].as_str().expect("purchase id").to_owned();
    let remaining = |balances: &Value| {
        balances["balances"]
            .as_array()
            .and_then(|l| l.iter().find(|b| b["team"] == "design"))
            .map(|b| b["remaining"].clone())
            .unwrap_or_else(|| panic!("no design balance: {balances}"))
    };
    let path = format!("/v1/admin/purchases/{id}/corrections");
    let answer = c
        .api
        .admin_post(&path, &json!({"tokens": 30, "reason": "typed 100 for 30"}))
        .await;
    assert_eq!(answer["before"]["tokens"], 100, "{answer}");
    assert_eq!(answer["correction"]["tokens"], 30, "{answer}");
    assert_eq!(remaining(&c.api.admin_get("/v1/admin/balances").await), 30);
    let r = c
        .api
        .post(&path, Some(ADMIN_TOKEN), &json!({"tokens": 0}))
        .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, None);
    let r = c
        .api
        .post(
            "/v1/admin/purchases/nope/corrections",
            Some(ADMIN_TOKEN),
            &json!({"tokens": 0, "reason": "refunded"}),
        )
        .await;
    assert_error_reply(&r, StatusCode::NOT_FOUND, None);
    c.api
        .admin_post(&path, &json!({"tokens": 0, "reason": "refunded"}))
        .await;
    let c = restart(&dir, c).await;
    assert_eq!(remaining(&c.api.admin_get("/v1/admin/balances").await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_enrolment_cannot_forge_a_log_line() {
    let (dir, c) = collector_with("log-forging", &settings(default_policy())).await;
    let forged =
        "ws-1\n2026-01-01T00:00:00Z  INFO daymeter_collector::api: device enrolled\u{1b}[2J";
    let r = c
        .api
        .post(
            "/v1/enroll",
            None,
            &json!({"enrollment_secret": "wrong-secret-wrong-secret", "hostname": forged}),
        )
        .await;
    assert_error_reply(&r, StatusCode::UNAUTHORIZED, Some("enrollment_secret"));
    let log = std::fs::read_to_string(dir.log()).expect("collector log");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("enrolment refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains(r"ws-1\n2026"), "{}", refused[0]);
    assert!(!log.contains('\u{1b}'), "raw escape in the log: {log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolment_with_an_oversized_or_control_character_hostname_is_refused_by_name() {
    let (_dir, c) = collector_with("enrol-text", &settings(default_policy())).await;
    for hostname in ["h".repeat(256), "ws-1\u{7}".to_owned()] {
        let r = c
            .api
            .post(
                "/v1/enroll",
                None,
                &json!({"enrollment_secret": ENROLLMENT_SECRET, "hostname": hostname}),
            )
            .await;
        assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("hostname"));
    }
    c.api.enroll(&"h".repeat(253)).await;
}
