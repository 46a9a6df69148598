//! The report API against a real collector over HTTP: a known data set seeded through
//! `/v1/sync`, every number worked out here by hand from the sessions (not by calling
//! the collector's report functions).
//!
//! November 2026, UTC, policy defaults (24 h windows, 5 min minimum, rollover = open);
//! acad 7 tokens a day, revit 10; teams civil (ana, ben) and arch (cleo):
//! - ana, acad on her laptop Mon 2 Nov 09:00–17:00 and Tue 3 Nov 09:00–12:00 (a
//!   relaunch exactly at the window's end: a second window), revit Tue 13:00–15:00,
//!   and acad on the office desktop Mon 10:00–11:00 (same login, two devices: listed as
//!   concurrent, charged once);
//! - ben, acad left open Fri 6 Nov 17:00 to Mon 9 Nov 09:30, idle from Fri 18:00 to
//!   Mon 09:00: windows Fri, Sat, Sun (rollovers Sat and Sun; Saturday's window saw no
//!   use at all);
//! - cleo, an acad subscription since 1 January, never used;
//! - civil bought 1,000 tokens on 1 October, before any of these days;
//! - ana and cleo are named in the import; team arch hashes its people;
//! - a token costs 3 EUR, a year of acad 2,100 EUR (break-even: 100 days of 21 EUR).

mod support;

use serde_json::{Value, json};

use support::*;

fn session(id: &str, product: &str, start: &str, end: &str) -> Value {
    json!({ "id": id, "product": product, "start": start, "end": end, "tz": "UTC" })
}

async fn seeded() -> (TempDir, Collector) {
    let settings = json!({
        "catalog": {
            "acad": { "name": "AutoCAD", "tokens_per_day": 7, "subscription_price": 2100 },
            "revit": { "name": "Revit", "tokens_per_day": 10 }
        },
        "token_price": 3.0,
        "currency": "EUR",
        "entitlements": [
            { "user": "cleo", "product": "acad", "plan": "subscription",
              "from": "2026-01-01T00:00:00Z" }
        ],
        "policy": default_policy(),
        "teams": {
            "civil": { "users": ["ana", "ben"] },
            "arch": { "users": ["cleo"], "personal_data": "hashed" }
        },
        "users": {
            "ana": { "email": "ana@firm.example", "first_name": "Ana", "last_name": "Núñez" },
            "cleo": { "email": "cleo@firm.example", "first_name": "Cleo", "last_name": "Ruiz" }
        }
    });
    let (dir, c) = collector_with("reports", &settings).await;
    // Bought before the days were charged: they draw from it.
    c.api
        .admin_post(
            "/v1/admin/purchases",
            &json!({ "team": "civil", "tokens": 1000, "purchased_at": "2026-10-01T00:00:00Z",
                     "expires_at": "2036-01-01T00:00:00Z" }),
        )
        .await;
    let laptop = c.api.enroll("ana-laptop").await;
    let desktop = c.api.enroll("office-desktop").await;
    let bens = c.api.enroll("ben-laptop").await;
    c.api
        .sync(
            &laptop,
            "ana",
            &[
                session(
                    "ana-1",
                    "acad",
                    "2026-11-02T09:00:00Z",
                    "2026-11-02T17:00:00Z",
                ),
                session(
                    "ana-2",
                    "acad",
                    "2026-11-03T09:00:00Z",
                    "2026-11-03T12:00:00Z",
                ),
                session(
                    "ana-3",
                    "revit",
                    "2026-11-03T13:00:00Z",
                    "2026-11-03T15:00:00Z",
                ),
            ],
        )
        .await;
    c.api
        .sync(
            &desktop,
            "ana",
            &[session(
                "ana-4",
                "acad",
                "2026-11-02T10:00:00Z",
                "2026-11-02T11:00:00Z",
            )],
        )
        .await;
    let mut weekend = session(
        "ben-1",
        "acad",
        "2026-11-06T17:00:00Z",
        "2026-11-09T09:30:00Z",
    );
    weekend["idle"] = json!([["2026-11-06T18:00:00Z", "2026-11-09T09:00:00Z"]]);
    c.api.sync(&bens, "ben", &[weekend]).await;
    (dir, c)
}

const NOVEMBER: &str = "from=2026-11-01&to=2026-11-30";

#[tokio::test(flavor = "multi_thread")]
async fn the_token_report_sums_the_charged_days_of_the_range() {
    let (_dir, c) = seeded().await;
    let r = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}"))
        .await;
    // ana: acad Mon + Tue (14), revit Tue (10); ben: acad Fri, Sat, Sun (21).
    assert_eq!(r["used"], 45, "{r}");
    assert_eq!(r["products_used"], 2);
    assert_eq!(r["users"], 2);
    assert_eq!(r["by_day"].as_array().map(Vec::len), Some(365));
    let civil = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}&team=civil"))
        .await;
    assert_eq!(civil["used"], 45);
    assert_eq!(civil["remaining"], 1000 - 45);
    let arch = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}&team=arch"))
        .await;
    assert_eq!(arch["used"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_product_and_user_reports_split_the_same_days() {
    let (_dir, c) = seeded().await;
    let p = c
        .api
        .admin_get(&format!("/v1/reports/products?{NOVEMBER}"))
        .await;
    let products = p["products"].as_array().expect("products");
    let acad = products
        .iter()
        .find(|x| x["product"] == "acad")
        .expect("acad");
    assert_eq!(
        (acad["users"].as_u64(), acad["tokens"].as_u64()),
        (Some(2), Some(35))
    );
    let revit = products
        .iter()
        .find(|x| x["product"] == "revit")
        .expect("revit");
    assert_eq!(
        (revit["users"].as_u64(), revit["tokens"].as_u64()),
        (Some(1), Some(10))
    );

    let u = c
        .api
        .admin_get(&format!("/v1/reports/users?{NOVEMBER}"))
        .await;
    let users = u["users"].as_array().expect("users");
    let ana = users.iter().find(|x| x["user"] == "ana").expect("ana");
    assert_eq!(ana["tokens"], 24);
    assert_eq!(ana["days_used"], 2, "2 and 3 November");
    assert_eq!(ana["team"], "civil");
    let ben = users.iter().find(|x| x["user"] == "ben").expect("ben");
    assert_eq!(
        (ben["tokens"].as_u64(), ben["days_used"].as_u64()),
        (Some(21), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unused_subscription_is_inactive_and_used_products_are_active() {
    let (_dir, c) = seeded().await;
    let r = c
        .api
        .admin_get(&format!("/v1/reports/usage?{NOVEMBER}"))
        .await;
    let lines = r["usage"].as_array().expect("usage");
    let of = |user: &str, product: &str| {
        lines
            .iter()
            .find(|l| l["user"] == user && l["product"] == product)
            .unwrap_or_else(|| panic!("no line for {user} {product}: {r}"))
    };
    // cleo's team hashes its people: her line is the arch team's one.
    let cleo = lines
        .iter()
        .find(|l| l["team"] == "arch")
        .unwrap_or_else(|| panic!("no line for arch: {r}"));
    assert_eq!(cleo["status"], "inactive");
    assert_eq!(cleo["days_inactive"], 30);
    assert_eq!(of("ana", "acad")["status"], "active");
    assert_eq!(of("ana", "acad")["last_accessed"], "2026-11-03");
    assert_eq!(of("ana", "acad")["days_inactive"], 27);
    assert_eq!(of("ben", "acad")["days_used"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waste_report_finds_the_idle_weekend_and_what_active_rollover_saves() {
    let (_dir, c) = seeded().await;
    let r = c
        .api
        .admin_get(&format!("/v1/reports/waste?{NOVEMBER}"))
        .await;
    assert_eq!(r["wasted_tokens"], 7, "Saturday's window: {r}");
    // Under rollover = active: Friday, then Monday from 09:00: 14 instead of 21.
    assert_eq!(r["active_rollover_would_save"], 7);
    let keys = r["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "only ben's acad wasted anything: {r}");
    assert_eq!(keys[0]["rollovers"].as_array().map(Vec::len), Some(2));
    assert_eq!(keys[0]["idle_windows"][0]["sessions"], json!(["ben-1"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_login_on_two_devices_at_once_is_listed_as_concurrent_and_charged_once() {
    let (_dir, c) = seeded().await;
    let r = c
        .api
        .admin_get(&format!("/v1/reports/concurrent?{NOVEMBER}"))
        .await;
    let overlaps = r["overlaps"].as_array().expect("overlaps");
    assert_eq!(overlaps.len(), 1, "{r}");
    assert_eq!(overlaps[0]["user"], "ana");
    assert_eq!(overlaps[0]["from"], "2026-11-02T10:00:00Z");
    assert_eq!(overlaps[0]["to"], "2026-11-02T11:00:00Z");
    let days = c
        .api
        .admin_get("/v1/admin/usage-days?from=2026-11-02&to=2026-11-02&user=ana&product=acad")
        .await;
    assert_eq!(days["usage_days"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_forecast_counts_the_balance_left_after_the_charged_days() {
    let (_dir, c) = seeded().await;
    let r = c.api.admin_get("/v1/reports/forecast?team=civil").await;
    let teams = r["teams"].as_array().expect("teams");
    assert_eq!(teams.len(), 1, "{r}");
    assert_eq!(teams[0]["remaining"], 1000 - 45);
    // The charged days, worked out by hand; the burn rate is what the last 30 days
    // (today included) charged, per day.
    let charged = [
        ("2026-11-02", 7),
        ("2026-11-03", 17),
        ("2026-11-06", 7),
        ("2026-11-07", 7),
        ("2026-11-08", 7),
    ];
    let today = chrono::Utc::now().date_naive();
    let recent: u64 = charged
        .iter()
        .filter(|(d, _)| {
            let d: chrono::NaiveDate = d.parse().expect("a day");
            d > today - chrono::TimeDelta::days(30) && d <= today
        })
        .map(|(_, t)| t)
        .sum();
    let burn = (recent as f64 / 30.0 * 100.0).round() / 100.0;
    assert_eq!(teams[0]["burn_per_day_30"].as_f64(), Some(burn), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_range_or_an_unknown_parameter_is_refused_by_name() {
    let (_dir, c) = seeded().await;
    for (query, field) in [
        ("range=past-4-months", "range"),
        ("from=2026-11-31&to=2026-12-01", "from"),
        ("from=2026-11-02&to=2026-11-01", "to"),
        ("teem=civil", "teem"),
    ] {
        let r = c
            .api
            .get(&format!("/v1/reports/tokens?{query}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(
            r.status,
            reqwest::StatusCode::BAD_REQUEST,
            "{query}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{query}: {}", r.body);
    }
    let r = c.api.get("/v1/reports/tokens", None).await;
    assert_eq!(r.status, reqwest::StatusCode::UNAUTHORIZED);
}

/// The raw body of an admin GET.
async fn admin_bytes(c: &Collector, path: &str) -> (String, Vec<u8>) {
    let r = c
        .api
        .http
        .get(format!("{}{path}", c.api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET");
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (content_type, r.bytes().await.expect("body").to_vec())
}

fn csv_rows(bytes: &[u8], delimiter: u8) -> Vec<Vec<String>> {
    let text = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .expect("UTF-8 with a byte-order mark, for Excel");
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .from_reader(text)
        .records()
        .map(|r| {
            r.expect("an RFC 4180 record")
                .iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_usage_export_has_the_vendors_columns_and_one_row_per_charged_day() {
    let (_dir, c) = seeded().await;
    let (content_type, bytes) =
        admin_bytes(&c, &format!("/v1/exports/token-usage.csv?{NOVEMBER}")).await;
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let rows = csv_rows(&bytes, b',');
    assert_eq!(
        rows[0],
        [
            "Team",
            "Email",
            "First name",
            "Last name",
            "User",
            "Product",
            "Feature",
            "Day used",
            "Tokens used"
        ]
    );
    let days = &rows[1..];
    // ana: acad 2 and 3 Nov, revit 3 Nov; ben: acad 6, 7, 8 Nov.
    assert_eq!(days.len(), 6, "{rows:?}");
    let tokens: u64 = days
        .iter()
        .map(|r| r[8].parse::<u64>().expect("tokens"))
        .sum();
    assert_eq!(tokens, 45);
    let ana = days.iter().find(|r| r[4] == "ana").expect("ana's row");
    assert_eq!(
        ana[..7],
        [
            "civil",
            "ana@firm.example",
            "Ana",
            "Núñez",
            "ana",
            "AutoCAD",
            "acad"
        ]
    );
    let (_, semicolons) = admin_bytes(
        &c,
        &format!("/v1/exports/token-usage.csv?{NOVEMBER}&delimiter=%3B&user=ben"),
    )
    .await;
    let rows = csv_rows(&semicolons, b';');
    assert_eq!(rows.len(), 1 + 3, "ben's three days: {rows:?}");
    assert_eq!(rows[0][0], "Team");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seat_usage_export_has_a_row_per_subscription_or_free_day_and_no_flex_day() {
    let (_dir, c) = seeded().await;
    let cleos = c.api.enroll("cleo-desktop").await;
    c.api
        .sync(
            &cleos,
            "cleo",
            &[
                session(
                    "cleo-1",
                    "acad",
                    "2026-11-10T09:00:00Z",
                    "2026-11-10T17:00:00Z",
                ),
                session(
                    "cleo-2",
                    "acad",
                    "2026-11-12T09:00:00Z",
                    "2026-11-12T10:00:00Z",
                ),
            ],
        )
        .await;
    let (_, bytes) = admin_bytes(&c, &format!("/v1/exports/seat-usage.csv?{NOVEMBER}")).await;
    let rows = csv_rows(&bytes, b',');
    assert_eq!(
        rows[0],
        [
            "Team",
            "Email",
            "First name",
            "Last name",
            "User",
            "Product",
            "Day used"
        ]
    );
    // cleo's two subscription days (her team hashes her: no name, no id); ana's and
    // ben's Flex days are token usage, not seats.
    let days: Vec<&str> = rows[1..].iter().map(|r| r[6].as_str()).collect();
    assert_eq!(days, ["2026-11-10", "2026-11-12"], "{rows:?}");
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[0] == "arch" && r[5] == "AutoCAD")
    );
    // A product at rate 0 is free for everyone: ana's day of it is a seat day.
    c.api
        .admin_post(
            "/v1/admin/import",
            &json!({ "catalog": { "viewer": { "tokens_per_day": 0 } } }),
        )
        .await;
    let laptop = c.api.enroll("ana-laptop-2").await;
    c.api
        .sync(
            &laptop,
            "ana",
            &[session(
                "ana-5",
                "viewer",
                "2026-11-16T09:00:00Z",
                "2026-11-16T17:00:00Z",
            )],
        )
        .await;
    let (_, bytes) = admin_bytes(&c, &format!("/v1/exports/seat-usage.csv?{NOVEMBER}")).await;
    let rows = csv_rows(&bytes, b',');
    let ana: Vec<&Vec<String>> = rows[1..].iter().filter(|r| r[4] == "ana").collect();
    assert_eq!(ana.len(), 1, "{rows:?}");
    assert_eq!(
        (ana[0][5].as_str(), ana[0][6].as_str()),
        ("viewer", "2026-11-16")
    );
    assert_eq!(rows.len(), 1 + 3, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hashed_team_is_never_named_in_an_export_or_a_report() {
    let (_dir, c) = seeded().await;
    let (_, bytes) = admin_bytes(&c, &format!("/v1/exports/usage.csv?{NOVEMBER}")).await;
    let text = String::from_utf8(bytes.clone()).expect("UTF-8");
    assert!(
        !text.contains("cleo") && !text.contains("Cleo") && !text.contains("Ruiz"),
        "{text}"
    );
    let rows = csv_rows(&bytes, b',');
    let arch: Vec<_> = rows.iter().filter(|r| r[0] == "arch").collect();
    assert_eq!(arch.len(), 1, "{rows:?}");
    let pseudonym = &arch[0][4];
    assert!(pseudonym.starts_with("u-"), "{pseudonym}");
    assert_eq!(arch[0][1], *pseudonym, "the email is the pseudonym too");
    assert_eq!(arch[0][6], "Inactive");
    // The same pseudonym in the JSON report.
    let usage = c
        .api
        .admin_get(&format!("/v1/reports/usage?{NOVEMBER}&team=arch"))
        .await;
    assert_eq!(usage["usage"][0]["user"], pseudonym.as_str(), "{usage}");
    assert!(!usage.to_string().contains("cleo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_with_an_unknown_delimiter_or_parameter_is_refused_by_name() {
    let (_dir, c) = seeded().await;
    for (query, field) in [("delimiter=%7C", "delimiter"), ("format=xlsx", "format")] {
        let r = c
            .api
            .get(&format!("/v1/exports/usage.csv?{query}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(
            r.status,
            reqwest::StatusCode::BAD_REQUEST,
            "{query}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{query}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_advice_prices_a_year_of_flex_days_against_a_subscription() {
    let (_dir, c) = seeded().await;
    let r = c
        .api
        .admin_get("/v1/reports/advice?user=ana&product=acad")
        .await;
    // ana's acad days, if they are within the last twelve months when the test runs.
    let today = chrono::Utc::now().date_naive();
    let days = ["2026-11-02", "2026-11-03"]
        .iter()
        .filter(|d| {
            let d: chrono::NaiveDate = d.parse().expect("a day");
            d > today - chrono::TimeDelta::days(365) && d <= today
        })
        .count() as u64;
    let lines = r["advice"].as_array().expect("advice");
    if days == 0 {
        assert!(lines.is_empty(), "{r}");
        return;
    }
    let ana = &lines[0];
    assert_eq!(ana["tokens"].as_u64(), Some(days * 7), "{r}");
    assert_eq!(ana["flex_cost"].as_f64(), Some((days * 7 * 3) as f64));
    assert_eq!(ana["currency"], "EUR");
    assert_eq!(ana["subscription_price"].as_f64(), Some(2100.0));
    assert_eq!(ana["break_even_days"], 100);
    assert_eq!(ana["recommendation"], "flex");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tabular_report_comes_as_csv_with_the_same_numbers() {
    let (_dir, c) = seeded().await;
    let (content_type, bytes) = admin_bytes(
        &c,
        &format!("/v1/reports/products?{NOVEMBER}&format=csv&delimiter=%3B"),
    )
    .await;
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let rows = csv_rows(&bytes, b';');
    let column = |name: &str| {
        rows[0]
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name}: {:?}", rows[0]))
    };
    let (product, tokens, band) = (
        column("product"),
        column("tokens"),
        column("users_by_band.0-100"),
    );
    let acad = rows.iter().find(|r| r[product] == "acad").expect("acad");
    assert_eq!(acad[tokens], "35");
    assert_eq!(acad[band], "2");
    for report in [
        "tokens",
        "users",
        "usage",
        "waste",
        "forecast",
        "advice",
        "concurrent",
    ] {
        let (content_type, bytes) =
            admin_bytes(&c, &format!("/v1/reports/{report}?format=csv")).await;
        assert!(
            content_type.starts_with("text/csv"),
            "{report}: {content_type}"
        );
        assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_list_names_each_device_and_its_last_sync_and_reports_use_hostnames() {
    let (_dir, c) = seeded().await;
    let r = c.api.admin_get("/v1/admin/devices").await;
    let devices = r["devices"].as_array().expect("devices");
    let hostnames: Vec<_> = devices.iter().map(|d| d["hostname"].as_str()).collect();
    assert_eq!(
        hostnames,
        [
            Some("ana-laptop"),
            Some("ben-laptop"),
            Some("office-desktop")
        ]
    );
    for d in devices {
        assert!(d["last_sync"].is_string(), "each has synced: {d}");
        assert_eq!(d["revoked"], false);
        assert_eq!(d["os"], "linux");
        assert!(d.get("token_hash").is_none());
    }
    let r = c
        .api
        .admin_get(&format!("/v1/reports/concurrent?{NOVEMBER}"))
        .await;
    let o = &r["overlaps"][0];
    let sides = [
        o["first"]["hostname"].as_str(),
        o["second"]["hostname"].as_str(),
    ];
    assert_eq!(sides, [Some("ana-laptop"), Some("office-desktop")], "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_session_that_changes_a_past_day_changes_every_report_alike() {
    let (_dir, c) = seeded().await;
    let before = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}"))
        .await;
    // ana's revit day arrives late from the office desktop: 4 Nov, a new Revit day.
    let desktop = c.api.enroll("office-desktop-2").await;
    c.api
        .sync(
            &desktop,
            "ana",
            &[session(
                "ana-late",
                "revit",
                "2026-11-04T14:00:00Z",
                "2026-11-04T18:00:00Z",
            )],
        )
        .await;
    let tokens = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}"))
        .await;
    assert_eq!(tokens["used"], before["used"].as_u64().expect("used") + 10);
    let products = c
        .api
        .admin_get(&format!("/v1/reports/products?{NOVEMBER}"))
        .await;
    let revit = products["products"]
        .as_array()
        .expect("products")
        .iter()
        .find(|p| p["product"] == "revit")
        .expect("revit");
    assert_eq!(revit["tokens"], 20);
    let users = c
        .api
        .admin_get(&format!("/v1/reports/users?{NOVEMBER}"))
        .await;
    let ana = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["user"] == "ana")
        .expect("ana");
    assert_eq!(
        (ana["tokens"].as_u64(), ana["days_used"].as_u64()),
        (Some(34), Some(3))
    );
    let (_, csv) = admin_bytes(&c, &format!("/v1/exports/token-usage.csv?{NOVEMBER}")).await;
    let rows = csv_rows(&csv, b',');
    let sum: u64 = rows[1..]
        .iter()
        .map(|r| r[8].parse::<u64>().expect("tokens"))
        .sum();
    assert_eq!(
        sum,
        tokens["used"].as_u64().expect("used"),
        "the export agrees"
    );
    let civil = c.api.admin_get("/v1/reports/forecast?team=civil").await;
    assert_eq!(civil["teams"][0]["remaining"], 1000 - 55);
}

/// Per-user reports answer a page of users at a time, in user order: ana, ben (who
/// synced) and cleo (entitled, never synced).
#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_report_pages_its_users_in_order() {
    let (_dir, c) = seeded().await;
    let first = c
        .api
        .get(
            &format!("/v1/reports/usage?{NOVEMBER}&per_page=2"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(first.status, reqwest::StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["page"]["users"], 3);
    assert_eq!(first.body["page"]["next"], 2);
    let users: Vec<&str> = first.body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["user"].as_str().unwrap())
        .collect();
    assert!(
        users.iter().all(|u| *u == "ana" || *u == "ben"),
        "{users:?}"
    );
    let second = c
        .api
        .get(
            &format!("/v1/reports/usage?{NOVEMBER}&per_page=2&page=2"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(second.body["page"]["next"], serde_json::Value::Null);
    let lines = second.body["usage"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{}", second.body);
    assert_eq!(lines[0]["status"], "inactive", "cleo's unused seat");
    for (query, field) in [("per_page=0", "per_page"), ("page=x", "page")] {
        let r = c
            .api
            .get(&format!("/v1/reports/users?{query}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.status, reqwest::StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(r.body["error"]["field"], field, "{query}: {}", r.body);
    }
}

/// A hashed team's user is asked for by the pseudonym reports show; an unknown team
/// is refused as the other endpoints refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn a_hashed_user_is_filtered_by_pseudonym_and_an_unknown_team_is_not_found() {
    let (_dir, c) = seeded().await;
    let all = c
        .api
        .get(&format!("/v1/reports/usage?{NOVEMBER}"), Some(ADMIN_TOKEN))
        .await;
    let cleo = all.body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["user"].as_str().unwrap().to_owned())
        .find(|u| u.starts_with("u-"))
        .expect("cleo under a pseudonym");
    let one = c
        .api
        .get(
            &format!("/v1/reports/usage?{NOVEMBER}&user={cleo}"),
            Some(ADMIN_TOKEN),
        )
        .await;
    let lines = one.body["usage"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{}", one.body);
    assert_eq!(lines[0]["user"], cleo.as_str());
    assert_eq!(lines[0]["product"], "acad");
    for path in [
        "/v1/reports/tokens?team=nosuch",
        "/v1/exports/usage.csv?team=nosuch",
    ] {
        let r = c.api.get(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, reqwest::StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body["error"]["field"], "team", "{path}: {}", r.body);
    }
}

/// The waste totals are over every user the filter keeps, while the page of users
/// holds only the first: ana (page 1 of 1 user each) wasted nothing, ben's Saturday
/// still counts; filtering by someone else's user, team or product leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_waste_totals_cover_every_user_the_filter_keeps_not_just_the_page() {
    let (_dir, c) = seeded().await;
    let first = c
        .api
        .admin_get(&format!("/v1/reports/waste?{NOVEMBER}&per_page=1"))
        .await;
    assert_eq!(first["page"]["next"], 2, "{first}");
    assert_eq!(first["keys"], json!([]), "ana wasted nothing: {first}");
    assert_eq!(first["wasted_tokens"], 7, "{first}");
    assert_eq!(first["active_rollover_would_save"], 7, "{first}");
    for (filter, wasted) in [
        ("team=civil", 7),
        ("user=ben", 7),
        ("product=acad", 7),
        ("team=arch", 0),
        ("user=ana", 0),
        ("product=revit", 0),
    ] {
        let r = c
            .api
            .admin_get(&format!("/v1/reports/waste?{NOVEMBER}&{filter}&per_page=1"))
            .await;
        assert_eq!(r["wasted_tokens"], wasted, "{filter}: {r}");
        assert_eq!(r["active_rollover_would_save"], wasted, "{filter}: {r}");
    }
    // Outside the weekend the same filter finds nothing to total.
    let r = c
        .api
        .admin_get("/v1/reports/waste?from=2026-11-10&to=2026-11-30")
        .await;
    assert_eq!(r["wasted_tokens"], 0, "{r}");
}

/// Ben's Saturday window (Sat 17:00 to Sun 17:00) was idle on his laptop; an hour of
/// AutoCAD on Sunday morning from the office desktop, synced a week later, means the
/// day was used after all: nothing wasted, nothing to save, and no day charged more.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_session_in_an_idle_window_takes_it_out_of_the_waste() {
    let (_dir, c) = seeded().await;
    let tokens = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}"))
        .await;
    let desktop = c.api.enroll("ben-desktop").await;
    c.api
        .sync(
            &desktop,
            "ben",
            &[session(
                "ben-sunday",
                "acad",
                "2026-11-08T10:00:00Z",
                "2026-11-08T11:00:00Z",
            )],
        )
        .await;
    let r = c
        .api
        .admin_get(&format!("/v1/reports/waste?{NOVEMBER}"))
        .await;
    assert_eq!(r["wasted_tokens"], 0, "{r}");
    assert_eq!(r["active_rollover_would_save"], 0, "{r}");
    let after = c
        .api
        .admin_get(&format!("/v1/reports/tokens?{NOVEMBER}"))
        .await;
    assert_eq!(after["used"], tokens["used"], "inside a charged window");
}
