//! The dashboard over HTTP: the login, the session cookie, CSRF on logout, the page's
//! numbers against the JSON API, and a session that may read but never change. (A
//! browser drives the same pages in a test of its own once Chromium is installed by the
//! test scripts.)

mod support;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

use support::*;

/// An HTML form's body type (the values here need no escaping: tokens are URL-safe).
const FORM: &str = "application/x-www-form-urlencoded";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

async fn collector() -> (TempDir, Collector) {
    let settings = json!({
        "catalog": { "acad": { "name": "AutoCAD", "tokens_per_day": 7 } },
        "entitlements": [],
        "policy": default_policy(),
        "teams": { "civil": { "users": ["ana"] } }
    });
    let (dir, c) = collector_with("dashboard", &settings).await;
    let laptop = c.api.enroll("ana-laptop").await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::TimeDelta::days(1);
    c.api
        .sync(
            &laptop,
            "ana",
            &[json!({ "id": "d-1", "product": "acad", "tz": "UTC",
                      "start": format!("{yesterday}T09:00:00Z"), "end": format!("{yesterday}T12:00:00Z") })],
        )
        .await;
    (dir, c)
}

/// Logs in; the session cookie (`name=value`).
async fn log_in(c: &Collector) -> String {
    let r = client()
        .post(format!("{}/login", c.api.base))
        .header(CONTENT_TYPE, FORM)
        .body(format!("token={}", ADMIN_TOKEN))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[SET_COOKIE].to_str().expect("ASCII").to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    set.split(';').next().expect("name=value").to_owned()
}

fn tile(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id}"));
    let rest = &html[at..];
    let value = rest.split("class=\"value\">").nth(1).expect("a value");
    value.split('<').next().expect("text").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_without_a_session_is_sent_to_the_login_page() {
    let (_dir, c) = collector().await;
    let r = client()
        .get(format!("{}/", c.api.base))
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/login");
    let page = client()
        .get(format!("{}/login", c.api.base))
        .send()
        .await
        .expect("GET /login");
    assert!(page.text().await.expect("HTML").contains("name=\"token\""));
    let wrong = client()
        .post(format!("{}/login", c.api.base))
        .header(CONTENT_TYPE, FORM)
        .body(format!("token={}", "not-the-admin-token"))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_json_apis_numbers() {
    let (_dir, c) = collector().await;
    let cookie = log_in(&c).await;
    let html = client()
        .get(format!("{}/", c.api.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("GET /")
        .text()
        .await
        .expect("HTML");
    let tokens = c
        .api
        .admin_get("/v1/reports/tokens?range=past-30-days")
        .await;
    assert_eq!(tile(&html, "tile-used"), tokens["used"].to_string());
    assert_eq!(tokens["used"], 7, "yesterday's acad day");
    assert_eq!(
        tile(&html, "tile-remaining"),
        tokens["remaining"].to_string()
    );
    let waste = c
        .api
        .admin_get("/v1/reports/waste?range=past-30-days")
        .await;
    assert_eq!(
        tile(&html, "tile-wasted"),
        waste["wasted_tokens"].to_string()
    );
    for id in [
        "chart-tokens-by-day",
        "chart-tokens-by-product",
        "table-users",
        "table-waste",
        "table-inactive",
        "table-advice",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert!(html.contains("<td>ana</td>"), "ana in the user table");
    assert!(!html.contains("<script"), "no script needed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_may_download_exports_but_never_change_anything() {
    let (_dir, c) = collector().await;
    let cookie = log_in(&c).await;
    let csv = client()
        .get(format!(
            "{}/v1/exports/token-usage.csv?range=past-30-days",
            c.api.base
        ))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("GET export");
    assert_eq!(csv.status(), StatusCode::OK);
    let import = client()
        .post(format!("{}/v1/admin/import", c.api.base))
        .header(COOKIE, &cookie)
        .json(&json!({"policy": {"window": "12h"}}))
        .send()
        .await
        .expect("POST import");
    assert_eq!(
        import.status(),
        StatusCode::UNAUTHORIZED,
        "a cookie is not the admin token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_out_needs_the_pages_csrf_token_and_ends_the_session() {
    let (_dir, c) = collector().await;
    let cookie = log_in(&c).await;
    let html = client()
        .get(format!("{}/", c.api.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("GET /")
        .text()
        .await
        .expect("HTML");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("the logout form's CSRF token")
        .to_owned();
    let forged = client()
        .post(format!("{}/logout", c.api.base))
        .header(COOKIE, &cookie)
        .header(CONTENT_TYPE, FORM)
        .body(format!("csrf={}", "forged"))
        .send()
        .await
        .expect("POST /logout");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let out = client()
        .post(format!("{}/logout", c.api.base))
        .header(COOKIE, &cookie)
        .header(CONTENT_TYPE, FORM)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("POST /logout");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = client()
        .get(format!("{}/", c.api.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("GET /");
    assert_eq!(after.headers()[LOCATION], "/login", "the session is over");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_admin_password_logs_in_and_a_wrong_one_does_not() {
    let dir = TempDir::new("dashboard-password");
    let hashed = std::process::Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"a-long-admin-password\n")?;
            child.wait_with_output()
        })
        .expect("hash-password");
    assert!(hashed.status.success());
    let config = dir.path.join("collector.toml");
    std::fs::write(&config, &hashed.stdout).expect("the config file");
    let c = Collector::start_with(&dir, &["--config", config.to_str().expect("UTF-8")]);
    let page = client()
        .get(format!("{}/login", c.api.base))
        .send()
        .await
        .expect("GET /login")
        .text()
        .await
        .expect("HTML");
    assert!(page.contains("name=\"password\""), "{page}");
    for (password, status) in [
        ("not-the-password", StatusCode::UNAUTHORIZED),
        ("a-long-admin-password", StatusCode::SEE_OTHER),
    ] {
        let r = client()
            .post(format!("{}/login", c.api.base))
            .header(CONTENT_TYPE, FORM)
            .body(format!("password={password}"))
            .send()
            .await
            .expect("POST /login");
        assert_eq!(r.status(), status, "{password}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_dashboard_parameter_is_refused_by_name() {
    let (_dir, c) = collector().await;
    let cookie = log_in(&c).await;
    let r = client()
        .get(format!("{}/?rnage=past-3-months", c.api.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("GET /?rnage");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.expect("the error object");
    assert_eq!(body["error"]["field"], "rnage", "{body}");
}
