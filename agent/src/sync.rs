//! Talking to the collector: enrolment and `/v1/sync` over reqwest with rustls.
//!
//! The client trusts the system's roots plus, optionally, one CA file from the
//! configuration (a company CA). It never retries on its own: the service loop decides
//! when to try again ([`Backoff`]), so that a collector outage costs one failed request
//! per back-off step and nothing else.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use daymeter_shared::catalog::Catalog;
use daymeter_shared::policy::Policy;
use daymeter_shared::session::OwnedSession;

use crate::journal::Enrolment;

/// Why a call to the collector did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Network, TLS or a 5xx: try again later.
    #[error("collector unreachable: {0}")]
    Unreachable(String),
    /// 401: a wrong enrolment secret, or this device's token was revoked.
    #[error("collector refused the credentials: {0}")]
    Unauthorized(String),
    /// 401 naming `previous_device_token`: the collector does not take the previous
    /// enrolment as proof (it no longer knows the device, or the token was replaced).
    #[error("collector refused the previous enrolment as proof: {0}")]
    ProofRefused(String),
    /// Any other 4xx: the request itself is wrong; retrying will not help.
    #[error("collector refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// A 200 whose body is not what the protocol promises.
    #[error("collector answered something unexpected: {0}")]
    BadAnswer(String),
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: String, message: String },
}

impl SyncError {
    /// Whether waiting and retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Unreachable(_))
    }
}

/// The body of `/v1/sync`.
#[derive(Debug, Serialize)]
pub struct SyncRequest<'a> {
    pub user: &'a str,
    pub agent_time: String,
    pub sessions: Vec<&'a OwnedSession>,
}

/// A rejected session, with the collector's error object.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RejectedItem {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub error: Value,
}

impl RejectedItem {
    /// The error's message, else its code, else the whole object.
    pub fn reason(&self) -> String {
        let field = self.error.get("field").and_then(Value::as_str);
        let text = self
            .error
            .get("message")
            .or_else(|| self.error.get("code"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.error.to_string());
        match field {
            Some(f) => format!("{text} (field {f})"),
            None => text,
        }
    }
}

/// The grace deadlines the collector computed from this sync.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct GraceUntil {
    #[serde(default)]
    pub flex: Option<DateTime<Utc>>,
    #[serde(default)]
    pub subscription: Option<DateTime<Utc>>,
}

/// A running product's current charge window.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct OpenWindow {
    pub product: String,
    #[serde(default)]
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: DateTime<Utc>,
    #[serde(default)]
    pub next_tokens: Option<u64>,
}

/// The sync answer, as far as the agent reads it. Every part but `accepted` is
/// optional, so that a collector that adds or drops an extra never breaks an agent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SyncAnswer {
    #[serde(default)]
    pub server_time: Option<DateTime<Utc>>,
    pub accepted: Vec<String>,
    #[serde(default)]
    pub rejected: Vec<RejectedItem>,
    #[serde(default)]
    pub catalog: Option<Catalog>,
    #[serde(default)]
    pub entitlements: Vec<Value>,
    #[serde(default)]
    pub grace_until: GraceUntil,
    #[serde(default)]
    pub open_windows: Vec<OpenWindow>,
    #[serde(default)]
    pub reminders: Vec<Value>,
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// An HTTP client bound to one collector.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for `base` (`https://host:8650`), trusting the system roots and, if given,
    /// the CA in `ca_file` (PEM).
    pub fn new(base: &str, ca_file: Option<&Path>) -> Result<Client, SyncError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("daymeter-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            // One idle connection is all a sync every few minutes needs.
            .pool_max_idle_per_host(1);
        if let Some(path) = ca_file {
            let ca_error = |message: String| SyncError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| SyncError::Unreachable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Enrols this device with the enrolment secret; the answer holds its token. With
    /// `previous` (this device's earlier enrolment with this collector, revoked or not)
    /// its id and token go along as proof, so that the collector keeps the device id and
    /// the copies of sessions still open keep agreeing on their device.
    pub async fn enroll(
        &self,
        secret: &str,
        hostname: &str,
        previous: Option<&Enrolment>,
    ) -> Result<Enrolment, SyncError> {
        #[derive(Deserialize)]
        struct Answer {
            device_id: String,
            device_token: String,
        }
        let mut body = serde_json::json!({
            "enrollment_secret": secret,
            "hostname": hostname,
            "os": std::env::consts::OS,
            "agent_version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(previous) = previous {
            body["previous_device_id"] = Value::from(previous.device_id.as_str());
            body["previous_device_token"] = Value::from(previous.device_token.as_str());
        }
        let response = self
            .http
            .post(format!("{}/v1/enroll", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| SyncError::Unreachable(describe(&e)))?;
        let answer: Answer = read(response).await?;
        Ok(Enrolment {
            collector_url: self.base.clone(),
            device_id: answer.device_id,
            device_token: answer.device_token,
        })
    }

    /// One `/v1/sync` call.
    pub async fn sync(
        &self,
        token: &str,
        request: &SyncRequest<'_>,
    ) -> Result<SyncAnswer, SyncError> {
        let response = self
            .http
            .post(format!("{}/v1/sync", self.base))
            .bearer_auth(token)
            .json(request)
            .send()
            .await
            .map_err(|e| SyncError::Unreachable(describe(&e)))?;
        read(response).await
    }
}

/// The error and its causes on one line (reqwest's own message omits the cause).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, SyncError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| SyncError::Unreachable(describe(&e)))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| SyncError::BadAnswer(e.to_string()));
    }
    let error = serde_json::from_slice::<Value>(&bytes).ok();
    let message = error
        .as_ref()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    let field = error
        .as_ref()
        .and_then(|v| v.pointer("/error/field").and_then(Value::as_str));
    Err(match status.as_u16() {
        401 if field == Some("previous_device_token") => SyncError::ProofRefused(message),
        401 => SyncError::Unauthorized(message),
        s if status.is_server_error() || s == 408 || s == 429 => {
            SyncError::Unreachable(format!("{status}: {message}"))
        }
        s => SyncError::Refused { status: s, message },
    })
}

/// Exponential back-off with jitter, capped by the policy's `retry_max`.
///
/// Jitter spreads a building's agents out after a collector restart instead of having
/// them all retry in the same second.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait after one more failure: 1 s, 2 s, 4 s … up to `max`, each drawn
    /// uniformly from its upper half.
    pub fn next_delay(&mut self, max: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = Duration::from_secs(1)
            .checked_mul(1u32 << self.failures.saturating_sub(1).min(20))
            .unwrap_or(max)
            .min(max);
        let fraction = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
        exp.mul_f64(0.5 + 0.5 * fraction)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_retry_max_with_jitter_in_the_upper_half() {
        let max = Duration::from_secs(60);
        let mut b = Backoff::new();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let d = b.next_delay(max);
            ceilings.push(d);
        }
        for (i, d) in ceilings.iter().enumerate() {
            let ceiling = Duration::from_secs(1u64 << i.min(20)).min(max);
            assert!(*d <= ceiling && *d >= ceiling / 2, "step {i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay(max) <= Duration::from_secs(1));
    }

    #[test]
    fn a_rejection_reason_names_the_field() {
        let r = RejectedItem {
            id: Some("x".into()),
            error: serde_json::json!({"code": "bad_instant", "message": "start is not RFC 3339", "field": "start"}),
        };
        assert_eq!(r.reason(), "start is not RFC 3339 (field start)");
    }

    #[test]
    fn an_answer_with_only_accepted_is_read() {
        let a: SyncAnswer = serde_json::from_str(r#"{"accepted": ["a"]}"#).unwrap();
        assert_eq!(a.accepted, ["a"]);
        assert!(a.catalog.is_none());
    }
}
