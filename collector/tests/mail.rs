//! Mail from a real collector to an SMTP server on loopback that the test starts
//! (`support::smtp`), the collector's clock moved through a file
//! (`DAYMETER_TEST_CLOCK_FILE`), the scheduler looking every 100 ms. Every number a
//! test expects is worked out here from the sessions it syncs, not by calling the
//! collector's functions.
//!
//! The seeded world (November 2026, UTC, policy defaults; acad 7 tokens a day, revit
//! 10; teams civil — ana, ben, dan — and arch — cleo, hashed):
//! - ana, acad Mon 2 Nov 09:00–17:00 and Tue 3 Nov 09:00–12:00 (a second window), revit
//!   Tue 3 Nov 13:00–15:00;
//! - ben, acad left open Fri 6 Nov 17:00 to Mon 9 Nov 09:30, idle from Fri 18:00 to
//!   Mon 09:00: windows Fri, Sat, Sun; Saturday's saw no use at all;
//! - dan, a revit subscription since 1 January, used Wed 4 Nov;
//! - cleo, an acad subscription since 1 January, never used;
//! - civil bought 1,000 tokens on 1 October.
//!
//! The collector's clock stands at Tue 10 Nov 06:00 while the world is seeded; the
//! schedules start at 07:00 that day.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mail_parser::MimeHeaders;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::smtp::{Received, SmtpServer, Wrap};
use support::*;

const SEEDED_AT: &str = "2026-11-10T06:00:00Z";
const FIRST_SEND: &str = "2026-11-10T07:00:00Z";
const JUST_AFTER: &str = "2026-11-10T07:00:30Z";
/// How long a test waits for a mail that must come.
const ARRIVES: Duration = Duration::from_secs(20);
/// How long a test watches for a mail that must not come: many scheduler ticks.
const QUIET: Duration = Duration::from_millis(1200);
const SMTP_USER: &str = "daymeter";
const SMTP_PASSWORD: &str = "smtp-password-0001";

/// A collector with mail configured, the SMTP server it sends to, and its clock.
struct World {
    dir: TempDir,
    smtp: SmtpServer,
    collector: Collector,
}

impl World {
    fn clock_file(&self) -> PathBuf {
        self.dir.path.join("clock")
    }

    fn set_clock(&self, at: &str) {
        let tmp = self.dir.path.join("clock.tmp");
        std::fs::write(&tmp, at).expect("writing the clock");
        std::fs::rename(&tmp, self.clock_file()).expect("moving the clock");
    }

    fn start_collector(dir: &TempDir, config: &Path) -> Collector {
        let clock = dir.path.join("clock");
        Collector::start_env(
            dir,
            &["--config", &config.display().to_string()],
            &[
                ("DAYMETER_TEST_CLOCK_FILE", &clock.display().to_string()),
                ("DAYMETER_SMTP_PASSWORD", SMTP_PASSWORD),
            ],
        )
    }

    /// SIGTERM, wait for the exit, and start again on the same database.
    async fn restart(&mut self) {
        self.collector.signal(libc::SIGTERM);
        let status = self.collector.wait_exit(EXIT_DEADLINE).await;
        assert!(status.success(), "the collector exited with {status}");
        self.collector = World::start_collector(&self.dir, &self.dir.path.join("mail.toml"));
    }

    fn api(&self) -> &Api {
        &self.collector.api
    }

    async fn schedule(&self, body: Value) -> Value {
        self.api()
            .admin_post("/v1/admin/mail/schedules", &body)
            .await
    }

    async fn schedules(&self) -> Vec<Value> {
        let list = self.api().admin_get("/v1/admin/mail/schedules").await;
        list["schedules"].as_array().expect("a list").clone()
    }

    /// Exactly `n` mails arrived, and no more come while the scheduler keeps ticking.
    async fn exactly(&self, n: usize) -> Vec<Received> {
        self.smtp.wait_for(n, ARRIVES).await;
        tokio::time::sleep(QUIET).await;
        let got = self.smtp.received();
        assert_eq!(got.len(), n, "{got:#?}");
        got
    }
}

fn session(id: &str, product: &str, start: &str, end: &str) -> Value {
    json!({ "id": id, "product": product, "start": start, "end": end, "tz": "UTC" })
}

/// The collector, its SMTP server and its clock, with `settings` imported: the
/// scheduler looks every 100 ms, sends as `licences@firm.example` with a password
/// from the environment.
async fn world(name: &str, settings: &Value) -> World {
    let smtp = SmtpServer::start().await;
    let table = format!(
        "host = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
        smtp.port
    );
    world_with(name, settings, smtp, &table).await
}

/// As [`world`], with `smtp` and the `[mail]` keys `table` (the sender, the user, the
/// tick added).
async fn world_with(name: &str, settings: &Value, smtp: SmtpServer, table: &str) -> World {
    let dir = TempDir::new(name);
    let config = dir.path.join("mail.toml");
    std::fs::write(
        &config,
        format!(
            "[mail]\n{table}username = \"{SMTP_USER}\"\n\
             from = \"daymeter <licences@firm.example>\"\ntick = \"100ms\"\n"
        ),
    )
    .expect("writing the config");
    std::fs::write(dir.path.join("clock"), SEEDED_AT).expect("writing the clock");
    let collector = World::start_collector(&dir, &config);
    collector.api.import(settings).await;
    World {
        dir,
        smtp,
        collector,
    }
}

fn seeded_settings() -> Value {
    json!({
        "catalog": {
            "acad": { "name": "AutoCAD", "tokens_per_day": 7 },
            "revit": { "name": "Revit", "tokens_per_day": 10 }
        },
        "entitlements": [
            { "user": "cleo", "product": "acad", "plan": "subscription",
              "from": "2026-01-01T00:00:00Z" },
            { "user": "dan", "product": "revit", "plan": "subscription",
              "from": "2026-01-01T00:00:00Z" }
        ],
        "policy": default_policy(),
        "teams": {
            "civil": { "users": ["ana", "ben", "dan"] },
            "arch": { "users": ["cleo"], "personal_data": "hashed" }
        },
        "users": {
            "ana": { "email": "ana@firm.example", "first_name": "Ana", "last_name": "Núñez" },
            "cleo": { "email": "cleo@firm.example", "first_name": "Cleo", "last_name": "Ruiz" }
        }
    })
}

async fn seeded(name: &str) -> World {
    let w = world(name, &seeded_settings()).await;
    let api = w.api();
    api.admin_post(
        "/v1/admin/purchases",
        &json!({ "team": "civil", "tokens": 1000, "purchased_at": "2026-10-01T00:00:00Z",
                 "expires_at": "2036-01-01T00:00:00Z" }),
    )
    .await;
    let laptop = api.enroll("ana-laptop").await;
    api.sync_all(
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
    let bens = api.enroll("ben-laptop").await;
    let mut weekend = session(
        "ben-1",
        "acad",
        "2026-11-06T17:00:00Z",
        "2026-11-09T09:30:00Z",
    );
    weekend["idle"] = json!([["2026-11-06T18:00:00Z", "2026-11-09T09:00:00Z"]]);
    api.sync_all(&bens, "ben", &[weekend]).await;
    let dans = api.enroll("dan-desktop").await;
    api.sync_all(
        &dans,
        "dan",
        &[session(
            "dan-1",
            "revit",
            "2026-11-04T09:00:00Z",
            "2026-11-04T12:00:00Z",
        )],
    )
    .await;
    w
}

fn body_of(mail: &Received) -> String {
    mail.parsed()
        .body_text(0)
        .expect("a text body")
        .replace("\r\n", "\n")
}

fn subject_of(mail: &Received) -> String {
    mail.parsed().subject().expect("a subject").to_owned()
}

/// The CSV attachment `file` of a mail, as text.
fn attachment(mail: &Received, file: &str) -> String {
    let parsed = mail.parsed();
    let part = parsed
        .attachments()
        .find(|a| a.attachment_name() == Some(file))
        .unwrap_or_else(|| panic!("no attachment {file}"));
    String::from_utf8(part.contents().to_vec()).expect("UTF-8")
}

fn weekly_token_report() -> Value {
    json!({ "recipient": "it@firm.example", "kind": "report", "report": "token-usage",
            "every": "week", "start": FIRST_SEND })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_report_goes_to_its_recipient_with_the_export_attached_and_its_totals_in_the_body()
 {
    let w = seeded("report").await;
    let created = w.schedule(weekly_token_report()).await;
    assert_eq!(created["next_run"], FIRST_SEND, "{created}");
    tokio::time::sleep(QUIET).await;
    assert!(w.smtp.received().is_empty(), "nothing before the start");

    w.set_clock(JUST_AFTER);
    let mail = w.exactly(1).await.remove(0);
    assert_eq!(mail.rcpt_to, ["it@firm.example"]);
    assert_eq!(mail.mail_from, "licences@firm.example");
    assert_eq!(
        mail.auth.as_deref(),
        Some(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}").as_str()),
        "logged in with the configured user and the password from the environment"
    );
    // The week before Tuesday 10 November: Tue 3 to Mon 9. Ana's Monday 2 is before it.
    assert_eq!(
        subject_of(&mail),
        "daymeter: Token usage report, 2026-11-03 to 2026-11-09"
    );
    let body = body_of(&mail);
    // ana acad Tue 7 + revit Tue 10; ben acad Fri, Sat, Sun 3 × 7.
    assert!(body.contains("Tokens used: 38\n"), "{body}");
    assert!(body.contains("Days charged: 5\n"), "{body}");
    assert!(body.contains("Users: 2\n"), "{body}");
    assert!(body.contains("  AutoCAD: 28 tokens\n"), "{body}");
    assert!(body.contains("  Revit: 10 tokens\n"), "{body}");

    let csv = attachment(&mail, "token-usage.csv");
    let rows: Vec<Vec<String>> = csv
        .trim_start_matches('\u{feff}')
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            // User, Feature, Day used, Tokens used
            [cells[4], cells[6], cells[7], cells[8]]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    assert_eq!(
        rows,
        [
            ["ana", "acad", "2026-11-03", "7"],
            ["ana", "revit", "2026-11-03", "10"],
            ["ben", "acad", "2026-11-06", "7"],
            ["ben", "acad", "2026-11-07", "7"],
            ["ben", "acad", "2026-11-08", "7"],
        ]
    );
    let api = w
        .api()
        .get(
            "/v1/exports/token-usage.csv?from=2026-11-03&to=2026-11-09",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(
        api.body,
        Value::String(csv),
        "the attachment is the API's export of the same days"
    );
    let next = w.schedules().await;
    assert_eq!(next[0]["next_run"], "2026-11-17T07:00:00Z");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipient_has_at_most_five_schedules_and_the_sixth_is_refused_naming_the_recipient() {
    let w = world("five", &seeded_settings()).await;
    let mut ids = Vec::new();
    for (i, report) in ["token-usage", "seat-usage", "usage", "usage", "usage"]
        .iter()
        .enumerate()
    {
        let recipient = if i == 0 {
            "IT@firm.example"
        } else {
            "it@firm.example"
        };
        let s = w
            .schedule(json!({ "recipient": recipient, "kind": "report",
                               "report": report, "every": "month", "start": "2026-12-01" }))
            .await;
        ids.push(s["id"].as_str().expect("an id").to_owned());
    }
    let sixth = json!({ "recipient": "it@firm.example", "kind": "waste_digest" });
    let r = w
        .api()
        .post("/v1/admin/mail/schedules", Some(ADMIN_TOKEN), &sixth)
        .await;
    assert_error_reply(&r, StatusCode::CONFLICT, Some("recipient"));
    // Another recipient is not affected; a deleted schedule frees a place.
    w.schedule(json!({ "recipient": "finance@firm.example", "kind": "low_balance" }))
        .await;
    let gone = w
        .api()
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/admin/mail/schedules/{}", ids[0]),
            Some(ADMIN_TOKEN),
            None,
        )
        .await
        .expect("DELETE");
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    w.schedule(sixth).await;
    assert_eq!(w.schedules().await.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_with_an_unknown_key_or_a_bad_value_is_refused_by_name() {
    let w = world("refused", &seeded_settings()).await;
    let api = w.api().clone();
    let post = |body: Value| {
        let api = api.clone();
        async move {
            api.post("/v1/admin/mail/schedules", Some(ADMIN_TOKEN), &body)
                .await
        }
    };
    let r = post(
        json!({ "recipient": "it@firm.example", "kind": "inactive_users",
                         "inactive_four": "3-months", "every": "week" }),
    )
    .await;
    assert_error_reply(&r, StatusCode::BAD_REQUEST, Some("inactive_four"));
    let r = post(
        json!({ "recipient": "it@firm.example", "kind": "inactive_users",
                         "inactive_for": "2-months", "every": "week" }),
    )
    .await;
    assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("inactive_for"));
    let r = post(json!({ "recipient": "it@firm.example", "kind": "report",
                         "report": "usage", "every": "week", "team": "nobody" }))
    .await;
    assert_error_reply(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("team"));
    let r = w
        .api()
        .post(
            "/v1/admin/mail/schedules",
            None,
            &json!({ "recipient": "it@firm.example", "kind": "waste_digest" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(w.schedules().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_down_across_several_sends_sends_one_mail_when_back() {
    let mut w = seeded("missed").await;
    w.schedule(weekly_token_report()).await;
    w.collector.signal(libc::SIGTERM);
    w.collector.wait_exit(EXIT_DEADLINE).await;
    // Down from before the first send until Wednesday 2 December: the sends of 10, 17
    // and 24 November and 1 December were missed.
    w.set_clock("2026-12-02T12:00:00Z");
    w.restart_stopped().await;
    let mail = w.exactly(1).await.remove(0);
    assert_eq!(
        subject_of(&mail),
        "daymeter: Token usage report, 2026-11-03 to 2026-12-01",
        "one report over everything since"
    );
    assert!(body_of(&mail).contains("Tokens used: 38\n"));
    assert_eq!(w.schedules().await[0]["next_run"], "2026-12-08T07:00:00Z");
}

impl World {
    /// Starts the collector again after it was stopped.
    async fn restart_stopped(&mut self) {
        self.collector = World::start_collector(&self.dir, &self.dir.path.join("mail.toml"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_send_is_tried_again_at_the_next_tick_and_the_next_send_stored_only_after() {
    let w = seeded("retry").await;
    w.schedule(weekly_token_report()).await;
    w.smtp.refuse(true);
    w.set_clock(JUST_AFTER);
    tokio::time::sleep(QUIET).await;
    assert!(w.smtp.received().is_empty());
    assert_eq!(
        w.schedules().await[0]["next_run"],
        FIRST_SEND,
        "not moved on while unsent"
    );
    let log = std::fs::read_to_string(w.dir.log()).expect("the collector's log");
    assert!(
        log.contains("sending failed") && log.contains("451"),
        "the refusal is logged: {log}"
    );
    assert!(!log.contains(SMTP_PASSWORD), "never the password: {log}");
    w.smtp.refuse(false);
    w.exactly(1).await;
    assert_eq!(w.schedules().await[0]["next_run"], "2026-11-17T07:00:00Z");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_low_balance_alert_fires_once_per_crossing_and_again_after_a_top_up_and_a_new_crossing()
{
    let mut settings = seeded_settings();
    settings["teams"]["civil"]["low_balance"] = json!(100);
    let mut w = world("low-balance", &settings).await;
    w.set_clock("2026-11-25T12:00:00Z");
    let api = w.api().clone();
    api.admin_post(
        "/v1/admin/purchases",
        &json!({ "team": "civil", "tokens": 120, "purchased_at": "2026-10-01T00:00:00Z",
                 "expires_at": "2036-01-01T00:00:00Z" }),
    )
    .await;
    w.schedule(
        json!({ "recipient": "finance@firm.example", "kind": "low_balance", "team": "civil" }),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert!(w.smtp.received().is_empty(), "120 is above 100");

    let laptop = api.enroll("ana-laptop").await;
    let day = |n: u32, product: &str| {
        session(
            &format!("ana-{product}-{n}"),
            product,
            &format!("2026-11-{n:02}T09:00:00Z"),
            &format!("2026-11-{n:02}T12:00:00Z"),
        )
    };
    // Three days of acad: 120 − 21 = 99, below 100.
    api.sync_all(
        &laptop,
        "ana",
        &[day(2, "acad"), day(3, "acad"), day(4, "acad")],
    )
    .await;
    let mail = w.exactly(1).await.remove(0);
    assert_eq!(mail.rcpt_to, ["finance@firm.example"]);
    assert_eq!(
        subject_of(&mail),
        "daymeter: team civil is low on tokens: 99 left (threshold 100)"
    );
    assert!(body_of(&mail).contains("Team civil has 99 tokens left"));

    // Still low a day later, and across a restart: no second alert.
    api.sync_all(&laptop, "ana", &[day(5, "acad")]).await;
    w.restart().await;
    let api = w.api().clone();
    w.exactly(1).await;

    // A top-up lifts it to 192; ten days of revit bring it to 92: a new crossing.
    api.admin_post(
        "/v1/admin/purchases",
        &json!({ "team": "civil", "tokens": 100, "purchased_at": "2026-11-10T00:00:00Z",
                 "expires_at": "2036-01-01T00:00:00Z" }),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(w.smtp.received().len(), 1, "above again: nothing to say");
    let revit: Vec<Value> = (12..22).map(|n| day(n, "revit")).collect();
    api.sync_all(&laptop, "ana", &revit).await;
    let second = w.exactly(2).await.remove(1);
    assert_eq!(
        subject_of(&second),
        "daymeter: team civil is low on tokens: 92 left (threshold 100)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inactive_users_mail_lists_the_unused_seats_under_their_report_pseudonym() {
    let w = seeded("inactive").await;
    w.schedule(
        json!({ "recipient": "it@firm.example", "kind": "inactive_users",
                       "inactive_for": "30-days", "every": "week", "start": FIRST_SEND }),
    )
    .await;
    w.set_clock(JUST_AFTER);
    let mail = w.exactly(1).await.remove(0);
    assert_eq!(mail.rcpt_to, ["it@firm.example"]);
    // cleo's acad seat, assigned all year, unused; dan used his revit seat on 4 Nov;
    // ana and ben pay per day (Flex) and are never inactive.
    assert_eq!(subject_of(&mail), "daymeter: 1 user inactive for 30 days");
    let body = body_of(&mail);
    let usage = w
        .api()
        .admin_get("/v1/reports/usage?range=past-30-days")
        .await;
    let cleo = usage["usage"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["status"] == "inactive")
        .expect("cleo's line")["user"]
        .as_str()
        .expect("a user")
        .to_owned();
    assert!(
        cleo.starts_with("u-"),
        "arch hashes its people in reports: {cleo}"
    );
    assert!(
        body.contains(&format!(
            "  {cleo}  team arch  acad  last used never  unused 30 days\n"
        )),
        "{body}"
    );
    for name in ["cleo", "Cleo", "dan", "ana", "ben"] {
        assert!(!body.contains(name), "{name} in {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_weekly_waste_digest_lists_the_idle_days_of_the_week() {
    let w = seeded("waste").await;
    w.schedule(
        json!({ "recipient": "it@firm.example", "kind": "waste_digest",
                       "start": FIRST_SEND }),
    )
    .await;
    w.set_clock(JUST_AFTER);
    let mail = w.exactly(1).await.remove(0);
    // Ben's Saturday window (7 tokens) saw no use; his Saturday and Sunday windows
    // opened by rollover. Under rollover = active his weekend is Friday and Monday:
    // 14 instead of 21 tokens.
    assert_eq!(
        subject_of(&mail),
        "daymeter: waste digest, 2026-11-03 to 2026-11-09: 7 tokens on idle days"
    );
    let body = body_of(&mail);
    assert!(
        body.contains("Tokens charged for days nobody worked: 7\n"),
        "{body}"
    );
    assert!(
        body.contains("Tokens rollover = active would have saved: 7\n"),
        "{body}"
    );
    assert!(
        body.contains("  ben  acad  1 idle day (7 tokens), 2 rollovers\n"),
        "{body}"
    );
    assert!(!body.contains("ana"), "ana wasted nothing: {body}");
    assert_eq!(
        w.schedules().await[0]["every"],
        "week",
        "the digest is weekly"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_goes_over_starttls_to_a_relay_whose_certificate_the_configured_root_trusts() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let smtp =
        SmtpServer::start_tls(&cert.pem(), &signing_key.serialize_pem(), Wrap::StartTls).await;
    let root = std::env::temp_dir().join(format!("daymeter-smtp-root-{}.pem", std::process::id()));
    std::fs::write(&root, cert.pem()).expect("writing the root");
    let table = format!(
        "host = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nroot_certificate = \"{}\"\n",
        smtp.port,
        root.display()
    );
    let w = world_with("starttls", &seeded_settings(), smtp, &table).await;
    w.schedule(
        json!({ "recipient": "it@firm.example", "kind": "waste_digest",
                       "start": FIRST_SEND }),
    )
    .await;
    w.set_clock(JUST_AFTER);
    let mail = w.exactly(1).await.remove(0);
    let _ = std::fs::remove_file(&root);
    assert!(mail.encrypted, "sent after STARTTLS");
    assert_eq!(
        mail.auth.as_deref(),
        Some(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}").as_str())
    );
    assert_eq!(mail.rcpt_to, ["it@firm.example"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_to_a_relay_whose_certificate_nothing_trusts_sends_nothing() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let smtp =
        SmtpServer::start_tls(&cert.pem(), &signing_key.serialize_pem(), Wrap::StartTls).await;
    let table = format!(
        "host = \"localhost\"\nport = {}\nsecurity = \"starttls\"\n",
        smtp.port
    );
    let w = world_with("starttls-untrusted", &seeded_settings(), smtp, &table).await;
    w.schedule(
        json!({ "recipient": "it@firm.example", "kind": "waste_digest",
                       "start": FIRST_SEND }),
    )
    .await;
    w.set_clock(JUST_AFTER);
    tokio::time::sleep(QUIET).await;
    assert!(w.smtp.received().is_empty(), "never sent in clear instead");
    let log = std::fs::read_to_string(w.dir.log()).expect("the collector's log");
    assert!(
        log.contains("sending failed") && log.to_lowercase().contains("certificate"),
        "the untrusted certificate is logged: {log}"
    );
    assert_eq!(
        w.schedules().await[0]["next_run"],
        FIRST_SEND,
        "still due: tried again at every tick"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_mail_table_mail_is_off_and_schedules_are_still_kept() {
    let dir = TempDir::new("mail-off");
    let c = Collector::start(&dir);
    c.api
        .admin_post(
            "/v1/admin/mail/schedules",
            &json!({ "recipient": "it@firm.example", "kind": "waste_digest" }),
        )
        .await;
    let log = std::fs::read_to_string(dir.log()).expect("the collector's log");
    assert_eq!(log.matches("mail is off").count(), 1, "said once: {log}");
}

#[test]
fn a_misspelt_mail_key_stops_serve_naming_the_key() {
    let dir = TempDir::new("mail-misspelt");
    let config = dir.path.join("mail.toml");
    std::fs::write(
        &config,
        "[mail]\nhost = \"127.0.0.1\"\nfrom = \"licences@firm.example\"\npasword = \"x\"\n",
    )
    .expect("writing the config");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path.join("collector.db"))
        .arg("--config")
        .arg(&config)
        .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
        .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("running serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pasword"), "{stderr}");
    assert!(out.stdout.is_empty(), "never listening");
}

#[tokio::test(flavor = "multi_thread")]
async fn seat_usage_and_usage_reports_attach_their_exports_and_count_them_in_the_body() {
    let w = seeded("seat-and-usage").await;
    for report in ["seat-usage", "usage"] {
        w.schedule(
            json!({ "recipient": "it@firm.example", "kind": "report", "report": report,
                           "every": "week", "start": FIRST_SEND }),
        )
        .await;
    }
    w.set_clock(JUST_AFTER);
    let mails = w.exactly(2).await;
    let by_subject = |s: &str| {
        mails
            .iter()
            .find(|m| subject_of(m) == s)
            .unwrap_or_else(|| panic!("no mail {s:?}"))
    };
    // Tue 3 to Mon 9 November: dan's revit subscription day on Wednesday 4 is the only
    // day counted under a subscription.
    let seats = by_subject("daymeter: Seat usage report, 2026-11-03 to 2026-11-09");
    let body = body_of(seats);
    assert!(body.contains("Seat days used: 1\nUsers: 1\n"), "{body}");
    assert!(body.contains("  Revit: 1 day\n"), "{body}");
    let csv = attachment(seats, "seat-usage.csv");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows, ["civil,,,,dan,Revit,2026-11-04"]);

    // Per user and product: ana acad and revit, ben acad, dan revit used; cleo's acad
    // seat unused all week.
    let usage = by_subject("daymeter: Usage report, 2026-11-03 to 2026-11-09");
    let body = body_of(usage);
    assert!(body.contains("Users: 4\n"), "{body}");
    assert!(body.contains("Active: 4\nInactive: 1\n"), "{body}");
    let csv = attachment(usage, "usage.csv");
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_goes_over_tls_from_the_first_byte_when_security_is_tls() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let smtp =
        SmtpServer::start_tls(&cert.pem(), &signing_key.serialize_pem(), Wrap::Implicit).await;
    let root = std::env::temp_dir().join(format!(
        "daymeter-smtp-implicit-root-{}.pem",
        std::process::id()
    ));
    std::fs::write(&root, cert.pem()).expect("writing the root");
    let table = format!(
        "host = \"localhost\"\nport = {}\nsecurity = \"tls\"\nroot_certificate = \"{}\"\n",
        smtp.port,
        root.display()
    );
    let w = world_with("implicit-tls", &seeded_settings(), smtp, &table).await;
    w.schedule(
        json!({ "recipient": "it@firm.example", "kind": "waste_digest",
                       "start": FIRST_SEND }),
    )
    .await;
    w.set_clock(JUST_AFTER);
    let mail = w.exactly(1).await.remove(0);
    let _ = std::fs::remove_file(&root);
    assert!(mail.encrypted, "sent over TLS");
    assert!(subject_of(&mail).starts_with("daymeter: waste digest"));
}

/// A crossing that happens while the collector is down — here a purchase expiring — is
/// alerted once when it is back, from the reading stored before.
#[tokio::test(flavor = "multi_thread")]
async fn a_low_balance_crossing_while_the_collector_was_down_is_alerted_once_when_it_is_back() {
    let mut settings = seeded_settings();
    settings["teams"]["civil"]["low_balance"] = json!(100);
    let mut w = world("low-balance-down", &settings).await;
    w.set_clock("2026-11-25T12:00:00Z");
    w.api()
        .admin_post(
            "/v1/admin/purchases",
            &json!({ "team": "civil", "tokens": 150, "purchased_at": "2026-10-01T00:00:00Z",
                     "expires_at": "2026-12-01T00:00:00Z" }),
        )
        .await;
    w.schedule(json!({ "recipient": "finance@firm.example", "kind": "low_balance" }))
        .await;
    tokio::time::sleep(QUIET).await;
    assert!(w.smtp.received().is_empty(), "150 is above 100");
    w.collector.signal(libc::SIGTERM);
    w.collector.wait_exit(EXIT_DEADLINE).await;
    // The purchase expired on 1 December, while the collector was down.
    w.set_clock("2026-12-02T12:00:00Z");
    w.restart_stopped().await;
    let mail = w.exactly(1).await.remove(0);
    assert_eq!(
        subject_of(&mail),
        "daymeter: team civil is low on tokens: 0 left (threshold 100)"
    );
}
