//! `serve --tls-cert/--tls-key`: the collector speaks HTTPS through rustls, and an agent
//! that trusts the certificate enrols and syncs over it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_serves_https_with_rustls() {
    let dir = std::env::temp_dir().join(format!("daymeter-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_daymeter-collector"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.join("c.db"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .env("DAYMETER_ENROLLMENT_SECRET", "tls-enrolment-secret-01")
        .env("DAYMETER_ADMIN_TOKEN", "tls-admin-token-0123456")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("listening on https://")
        .expect("an https listener")
        .to_owned();
    let port = addr.rsplit(':').next().unwrap();
    let base = format!("https://localhost:{port}");

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .resolve("localhost", addr.parse().unwrap())
        .build()
        .unwrap();
    let enrolled: serde_json::Value = trusting
        .post(format!("{base}/v1/enroll"))
        .body(r#"{"enrollment_secret": "tls-enrolment-secret-01", "hostname": "ws-tls"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = enrolled["device_token"].as_str().unwrap();
    let synced: serde_json::Value = trusting
        .post(format!("{base}/v1/sync"))
        .bearer_auth(token)
        .body(r#"{"user": "sophie", "sessions": [{"id": "t1", "product": "acad", "start": "2026-03-02T09:00:00Z", "end": "2026-03-02T10:00:00Z"}]}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(synced["accepted"], serde_json::json!(["t1"]));

    // A client that does not trust the certificate cannot talk to it.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", addr.parse().unwrap())
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
