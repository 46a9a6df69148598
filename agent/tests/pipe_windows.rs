//! The status socket as a named pipe, under Windows (Wine in CI): the real agent binary
//! answers `daymeter-agent status` over its pipe, a session helper's link gets its
//! hello, and the account table that names pipe callers and process owners survives a
//! restart. Under Wine every process is the same account, so the refusals are tested
//! through `Access` and `answer` in the library's unit tests.
//!
//! The agent has no collector (its URL points at a closed port) and an empty catalog:
//! what is checked happens before any network.
#![cfg(windows)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use daymeter_agent::accounts::{Account, KEY};
use daymeter_agent::config::Config;
use daymeter_agent::helper::link::Link;
use daymeter_agent::journal::Journal;
use daymeter_agent::journal::redb::RedbJournal;

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-agent");
const LIMIT: Duration = Duration::from_secs(60);

/// A configuration with a pipe name of its own (tests run side by side).
struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    pipe: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().expect("scratch folder");
        let pipe = PathBuf::from(format!(
            r"\\.\pipe\daymeter-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "collector_url = \"http://127.0.0.1:9\"\nuser = \"pipe-test\"\ndata_dir = '{}'\nsocket = '{}'\npoll_interval = \"100ms\"\ncatalog = {{}}\n",
                dir.path().join("data").display(),
                pipe.display()
            ),
        )
        .expect("the agent configuration");
        Setup {
            _dir: dir,
            config,
            pipe,
        }
    }

    fn start_agent(&self) -> Killed {
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("DAYMETER_ENROLLMENT_SECRET", "pipe-test-secret-0123")
            .env("DAYMETER_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Killed(child);
        self.status_where("the agent answering on its pipe", |s| s["running"] == true);
        agent
    }

    fn status(&self) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .env("DAYMETER_LOG", "error")
            .output()
            .expect("the daymeter-agent command line");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn status_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The account table in the (stopped) agent's journal.
    fn accounts(&self) -> std::collections::BTreeMap<String, Account> {
        let config = Config::load(&self.config).expect("the configuration");
        let journal = RedbJournal::open(&config.journal_dir()).expect("the journal");
        let bytes = journal
            .cached(KEY)
            .expect("the journal reads")
            .expect("an account table");
        serde_json::from_slice(&bytes).expect("the table's JSON")
    }
}

/// A child killed (TerminateProcess) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_running_agent_answers_status_over_its_named_pipe() {
    let setup = Setup::new();
    let _agent = setup.start_agent();
    let status = setup.status_where("a status from the agent", |s| s["running"] == true);
    assert_eq!(status["open"].as_array().map(Vec::len), Some(0), "{status}");
    let raw = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&setup.config)
        .env("DAYMETER_LOG", "error")
        .output()
        .expect("status as text");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
}

#[test]
fn a_session_helper_link_over_the_pipe_gets_its_hello_as_the_callers_account() {
    let setup = Setup::new();
    let agent = setup.start_agent();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (uid, report_every) = runtime.block_on(async {
        let link = Link::open(&setup.pipe).await.expect("the hello");
        (link.uid, link.report_every)
    });
    assert_eq!(report_every, Duration::from_millis(250), "the hello's pace");
    let text = runtime.block_on(daymeter_agent::helper::status::text(&setup.pipe));
    assert!(!text.contains("cannot be shown"), "{text}");
    drop(agent);
    let table = setup.accounts();
    let ours = table.values().find(|a| a.id == uid);
    assert!(
        ours.is_some_and(|a| a.name.is_some()),
        "the helper's account {uid} is named in {table:?}"
    );
}

#[test]
fn the_account_table_survives_a_restart_with_the_same_ids() {
    let setup = Setup::new();
    let agent = setup.start_agent();
    drop(agent);
    // The agent's own account, which is also the caller's under Wine.
    let first = setup.accounts();
    assert!(!first.is_empty());
    let agent = setup.start_agent();
    setup.status_where("status again", |s| s["running"] == true);
    drop(agent);
    assert_eq!(setup.accounts(), first, "same SIDs, same ids and names");
}
