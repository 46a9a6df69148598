//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, both from Debian's packages, installed by `scripts/test-deps`). It logs
//! in against a collector with seeded data, saves a screenshot of each page under
//! `target/tmp/screenshots/`, and fails if a chart or a table is missing or a number
//! differs from the JSON API.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use support::*;

/// chromedriver on a port of its own, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/test-deps installs chromium and chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            // A laptop's screen.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1366,900"]
        }),
    );
    ClientBuilder::rustls()
        .expect("a WebDriver client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

async fn seeded() -> (TempDir, Collector) {
    let settings = json!({
        "catalog": {
            "acad": { "name": "AutoCAD", "tokens_per_day": 7 },
            "revit": { "name": "Revit", "tokens_per_day": 10 }
        },
        "entitlements": [
            { "user": "cleo", "product": "acad", "plan": "subscription",
              "from": "2026-01-01T00:00:00Z" }
        ],
        "policy": default_policy(),
        "teams": { "civil": { "users": ["ana", "ben"] }, "arch": { "users": ["cleo"] } }
    });
    let (dir, c) = collector_with("browser", &settings).await;
    c.api
        .admin_post(
            "/v1/admin/purchases",
            &json!({ "team": "civil", "tokens": 500, "purchased_at": "2026-01-01T00:00:00Z",
                     "expires_at": "2036-01-01T00:00:00Z" }),
        )
        .await;
    let laptop = c.api.enroll("ana-laptop").await;
    let bens = c.api.enroll("ben-laptop").await;
    let today = chrono::Utc::now().date_naive();
    let day = |back: i64| today - chrono::TimeDelta::days(back);
    let mut anas = Vec::new();
    for back in [2, 3, 5, 8, 13] {
        anas.push(json!({ "id": format!("ana-{back}"), "product": "acad", "tz": "UTC",
            "start": format!("{}T09:00:00Z", day(back)), "end": format!("{}T16:00:00Z", day(back)) }));
    }
    anas.push(json!({ "id": "ana-revit", "product": "revit", "tz": "UTC",
        "start": format!("{}T09:00:00Z", day(4)), "end": format!("{}T11:00:00Z", day(4)) }));
    c.api.sync(&laptop, "ana", &anas).await;
    // Left open and idle over two nights.
    c.api
        .sync(
            &bens,
            "ben",
            &[json!({ "id": "ben-1", "product": "acad", "tz": "UTC",
                "start": format!("{}T17:00:00Z", day(6)), "end": format!("{}T09:30:00Z", day(4)),
                "idle": [[format!("{}T18:00:00Z", day(6)), format!("{}T09:00:00Z", day(4))]] })],
        )
        .await;
    (dir, c)
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} is missing: {e}"))
        .text()
        .await
        .expect("its text")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_chromium_shows_every_chart_and_table_with_the_apis_numbers() {
    let (_dir, c) = seeded().await;
    let driver = Driver::start();
    let client = browser(&driver).await;
    let shots = screenshots();

    client
        .goto(&format!("{}/", c.api.base))
        .await
        .expect("open /");
    let url = client.current_url().await.expect("the URL");
    assert_eq!(
        url.path(),
        "/login",
        "a visitor without a session logs in first"
    );
    std::fs::write(
        shots.join("login.png"),
        client.screenshot().await.expect("a PNG"),
    )
    .expect("save");
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .send_keys(ADMIN_TOKEN)
        .await
        .expect("typed");
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("clicked");

    for range in ["past-30-days", "past-12-months"] {
        client
            .goto(&format!("{}/?range={range}", c.api.base))
            .await
            .expect("the dashboard");
        std::fs::write(
            shots.join(format!("dashboard-{range}.png")),
            client.screenshot().await.expect("a PNG"),
        )
        .expect("save");
        for id in [
            "chart-tokens-by-day",
            "chart-tokens-by-product",
            "table-users",
            "table-waste",
            "table-inactive",
            "table-advice",
        ] {
            client
                .find(Locator::Id(id))
                .await
                .unwrap_or_else(|e| panic!("{range}: {id} is missing: {e}"));
        }
        client
            .find(Locator::Css("#chart-tokens-by-day polyline"))
            .await
            .expect("the line of the chart");
        let tokens = c
            .api
            .admin_get(&format!("/v1/reports/tokens?range={range}"))
            .await;
        assert_eq!(
            text(&client, "#tile-used .value").await,
            tokens["used"].to_string(),
            "{range}"
        );
        assert_eq!(
            text(&client, "#tile-remaining .value").await,
            tokens["remaining"].to_string(),
            "{range}"
        );
        let waste = c
            .api
            .admin_get(&format!("/v1/reports/waste?range={range}"))
            .await;
        assert_eq!(
            text(&client, "#tile-wasted .value").await,
            waste["wasted_tokens"].to_string(),
            "{range}"
        );
        let users = c
            .api
            .admin_get(&format!("/v1/reports/users?range={range}"))
            .await;
        for u in users["users"].as_array().expect("users") {
            let row = text(&client, "#table-users tbody").await;
            assert!(
                row.contains(&format!("{} {}", u["tokens"], u["days_used"])),
                "{range}: {u} not in the table: {row}"
            );
        }
    }
    client.close().await.expect("closed");
}
