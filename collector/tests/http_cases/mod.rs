//! "What the collector accepts, it can always read back, account and serve, across
//! restarts", checked on one case at a time against the real `daymeter-collector serve`.
//!
//! A case starts a collector on a fresh SQLite file, enrols two devices, and sends its
//! requests (imports, purchases, syncs; mostly valid, some mutated, some any JSON or any
//! bytes). Then:
//! - every request got a complete HTTP answer and the process is alive (nothing
//!   panicked); no answer is a 5xx (the inputs are the client's: a bad one is a 4xx);
//! - every non-2xx answer, and every rejected session, carries the protocol's error
//!   object `{"code", "message", "field"?}`;
//! - the sync answer accepts only ids it was sent;
//! - usage days, sessions, balances and ledger answer 200, and the usage days equal
//!   `replay` of what was accepted (the accepted imports merged, the accepted sessions);
//! - after SIGTERM (exit 0) `serve` starts again on the same file and the four answer
//!   the same as before.
//!
//! Shared by the property test `tests/accept_means_serve.rs` (few cases, for CI) and the
//! bench `benches/fuzz_http.rs` (many cases, failures counted by kind).

pub mod inputs;
pub mod json;
pub mod oracle;
pub mod server;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use inputs::{Body, Case, Op};
use json::J;
use oracle::{Accepted, from_value};
use server::{ADMIN_TOKEN, Collector, Reply, TempDir};

/// A broken property: `kind` names it (one per distinct failure), `detail` is the
/// reproducer: the case's requests up to the failing one, and the answers.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.kind, self.detail)
    }
}

/// The admin reads whose answers must survive a restart.
const READS: &[&str] = &[
    "/v1/admin/usage-days",
    "/v1/admin/sessions",
    "/v1/admin/balances",
    "/v1/admin/ledger",
];

/// The requests sent so far, as a report prints them.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn push(&mut self, op: &Op, reply: &str) {
        let device = match op {
            Op::Sync { device, .. } => format!(" (device {device})"),
            _ => String::new(),
        };
        self.0.push(format!(
            "POST {}{device} {:?}\n  → {reply}",
            op.path(),
            op.body()
        ));
    }

    fn fail(&self, kind: impl Into<String>, detail: impl fmt::Display) -> Failure {
        Failure {
            kind: kind.into(),
            detail: format!("{detail}\nrequests:\n{}", self.0.join("\n")),
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// The id a session element carries, read as the collector reads it (serde's derived
/// Deserialize also reads a struct from a list, its fields in order: `id` first).
fn id_of(element: &J) -> Option<String> {
    if let J::Arr(fields) = element {
        return fields.first().and_then(J::string_value);
    }
    serde_json::from_str::<IdOnly>(&element.text())
        .ok()
        .and_then(|i| i.id)
}

/// A body's JSON as built, or its bytes read as JSON.
fn body_json(body: &Body) -> Option<J> {
    match body {
        Body::Json(j) => Some(j.clone()),
        Body::Bytes(b) => serde_json::from_slice::<Value>(b)
            .ok()
            .map(|v| from_value(&v)),
    }
}

/// Checks a 2xx sync answer and adds what it accepted to `accepted`.
fn sync_accepted(
    body: &Body,
    reply: &Reply,
    device: &str,
    accepted: &mut Accepted,
) -> Result<(), (String, String)> {
    let answer = reply
        .json
        .as_ref()
        .ok_or(("sync answered 2xx without JSON".to_owned(), reply.show()))?;
    let ids: BTreeSet<String> = answer["accepted"]
        .as_array()
        .ok_or((
            "sync answer without an `accepted` list".to_owned(),
            reply.show(),
        ))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or(("`accepted` holds a non-string".to_owned(), reply.show()))?;
    for r in answer["rejected"].as_array().into_iter().flatten() {
        let error = &r["error"];
        let fine = error["code"].as_str().is_some_and(|s| !s.is_empty())
            && error["message"].as_str().is_some_and(|s| !s.is_empty())
            && error
                .get("field")
                .is_none_or(|f| f.is_null() || f.is_string());
        if !fine {
            return Err((
                "a rejected session without the error object".to_owned(),
                format!("{r}"),
            ));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let doc = body_json(body).ok_or((
        "sessions accepted from a body that is not JSON".to_owned(),
        reply.show(),
    ))?;
    let user = doc.get("user").and_then(J::string_value).ok_or((
        "sessions accepted from a sync without a string user".to_owned(),
        reply.show(),
    ))?;
    let elements = match doc.get("sessions") {
        Some(J::Arr(list)) => list.clone(),
        _ => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for e in &elements {
        let Some(id) = id_of(e).filter(|id| ids.contains(id)) else {
            continue;
        };
        if !matches!(e, J::Obj(_)) {
            return Err((
                "a session that is not a JSON object is accepted".to_owned(),
                format!("session {}\n  → {}", e.text(), reply.show()),
            ));
        }
        accepted.session(e, &user, device);
        seen.insert(id);
    }
    if let Some(id) = ids.difference(&seen).next() {
        return Err((
            "sync accepts an id it was not sent".to_owned(),
            format!("id {id:?}\n  → {}", reply.show()),
        ));
    }
    Ok(())
}

/// Reads the four admin answers that must survive a restart (`None` for one that did
/// not answer 200 with JSON: a failure, recorded).
async fn read_all(
    c: &Collector,
    when: &str,
    t: &Transcript,
    failures: &mut Vec<Failure>,
) -> Vec<Option<Value>> {
    let mut out = Vec::new();
    for path in READS {
        let r = match c.get_admin(path).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(t.fail(format!("GET {path} {when}: no complete answer"), e));
                out.push(None);
                continue;
            }
        };
        match (&r.json, r.status) {
            (Some(v), 200) => out.push(Some(v.clone())),
            _ => {
                failures.push(t.fail(
                    format!("GET {path} {when}: {} {}", r.status, error_code(&r)),
                    r.show(),
                ));
                out.push(None);
            }
        }
    }
    out
}

fn error_code(r: &Reply) -> String {
    r.json
        .as_ref()
        .and_then(|j| j["error"]["code"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Runs one case against `bin` (a `daymeter-collector` binary): every broken property,
/// in the order found (a dead or unstartable collector ends the case).
pub async fn run_case(bin: &Path, case: &Case) -> Result<(), Vec<Failure>> {
    let mut t = Transcript::default();
    let mut failures = Vec::new();
    let dir = TempDir::new("http-cases").map_err(|e| vec![t.fail("temp dir", e)])?;
    let mut c = Collector::start(bin, &dir)
        .map_err(|e| vec![t.fail("a fresh collector does not start", e)])?;
    let mut devices = Vec::new();
    for host in ["ws-1", "ws-2"] {
        devices.push(c.enroll(host).await.map_err(|e| vec![t.fail("enrol", e)])?);
    }
    let mut accepted = Accepted::default();
    for op in &case.ops {
        let token = match op {
            Op::Sync { device, .. } => devices[*device % devices.len()].1.clone(),
            _ => ADMIN_TOKEN.to_owned(),
        };
        let path = op.path();
        let sent = c
            .send(
                reqwest::Method::POST,
                path,
                Some(&token),
                Some(op.body().bytes()),
            )
            .await;
        let reply = match sent {
            Ok(r) => r,
            Err(e) => {
                t.push(op, &format!("no answer: {e}"));
                let status = c.exited();
                failures.push(t.fail(
                    format!("POST {path}: no complete answer"),
                    format!(
                        "the process: {}\nlog:\n{}",
                        status.map_or("still running".into(), |s| s.to_string()),
                        dir.log_tail(15)
                    ),
                ));
                return Err(failures);
            }
        };
        t.push(op, &reply.show());
        if reply.status >= 500 {
            failures.push(t.fail(
                format!("POST {path}: {} {}", reply.status, error_code(&reply)),
                dir.log_tail(5),
            ));
            continue;
        }
        if !reply.ok() {
            if let Some(problem) = reply.error_object_problem() {
                failures.push(t.fail(
                    format!("POST {path}: a {} without the error object", reply.status),
                    problem,
                ));
            }
            continue;
        }
        match op {
            Op::Import(body) => {
                if let Some(doc) = body_json(body) {
                    accepted.import(&doc);
                }
            }
            Op::Purchase(_) => {}
            Op::Sync { device, body } => {
                let id = &devices[*device % devices.len()].0;
                if let Err((kind, detail)) = sync_accepted(body, &reply, id, &mut accepted) {
                    failures.push(t.fail(kind, detail));
                }
            }
        }
    }
    if let Some(status) = c.exited() {
        failures.push(t.fail("the collector exited", status));
        return Err(failures);
    }

    let before = read_all(&c, "before a restart", &t, &mut failures).await;
    match (&before[0], accepted.replay()) {
        (_, Err(e)) => failures.push(t.fail("replay refuses what the collector accepted", e)),
        (Some(actual), Ok(expected))
            if actual["usage_days"] != expected["usage_days"]
                || actual["totals"] != expected["totals"] =>
        {
            failures.push(t.fail(
                "usage days differ from replay of what was accepted",
                format!(
                    "collector: {actual}\nreplay:    {expected}\nscenario: {}",
                    accepted.scenario()
                ),
            ));
        }
        _ => {}
    }

    match c.stop().await {
        Ok(status) if status.success() => {}
        Ok(status) => failures.push(t.fail(
            "SIGTERM does not exit 0",
            format!("{status}\n{}", dir.log_tail(10)),
        )),
        Err(e) => failures.push(t.fail("SIGTERM", e)),
    }
    let c = match Collector::start(bin, &dir) {
        Ok(c) => c,
        Err(e) => {
            failures.push(t.fail("serve does not start again on the same file", e));
            return Err(failures);
        }
    };
    let after = read_all(&c, "after a restart", &t, &mut failures).await;
    for ((path, b), a) in READS.iter().zip(&before).zip(&after) {
        if let (Some(b), Some(a)) = (b, a)
            && a != b
        {
            failures.push(t.fail(
                format!("GET {path} differs after a restart"),
                format!("before: {b}\nafter:  {a}"),
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}
