//! The status socket authorises each request by the caller's credentials: the real
//! agent binary, its real socket, and the real `daymeter-agent` command line run as
//! other accounts (the tests run as root and drop to other uids for the clients).
//!
//! The agent here has no collector (its URL points at a closed port): what is checked
//! happens before any network.
#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/spawn.rs"]
mod spawn;

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-agent");
/// `nobody` on Debian; any uid works for `setuid` as root.
const OTHER: u32 = 65534;
/// An account with no process of its own.
const THIRD: u32 = 65533;
const LIMIT: Duration = Duration::from_secs(30);

/// A folder every account can read, with an agent configuration in it.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("scratch folder");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("an open folder");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "collector_url = \"http://127.0.0.1:9\"\nuser = \"socket-test\"\ndata_dir = \"{0}\"\nsocket = \"{0}/agent.sock\"\npoll_interval = \"100ms\"\n\n[catalog.theirs]\nmatch = [{{ exe = \"dmsock-theirs.exe\" }}]\n\n[catalog.mine]\nmatch = [{{ exe = \"dmsock-mine.exe\" }}]\n",
                dir.path().join("data").display()
            ),
        )
        .expect("the agent configuration");
        Setup { dir, config }
    }

    /// Runs the service as this (root) account.
    fn start_agent(&self) -> Killed {
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("DAYMETER_ENROLLMENT_SECRET", "status-socket-secret-0123")
            .env("DAYMETER_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Killed(child);
        self.status_where(None, "the agent answering", |s| s["running"] == true);
        agent
    }

    /// `daymeter-agent <args> --config …`, as `uid` (this account when `None`).
    fn cli(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("DAYMETER_LOG", "error");
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command.output().expect("the daymeter-agent command line")
    }

    fn status(&self, uid: Option<u32>) -> Option<Value> {
        let out = self.cli(uid, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn status_where(&self, uid: Option<u32>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(s) = self.status(uid)
                && pred(&s)
            {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A product process (a copy of `sleep` under a name of this test's own catalog, so
    /// that a product running on the machine is never counted) run as `uid`.
    fn product(&self, exe: &str, uid: Option<u32>) -> Killed {
        let path = self.dir.path().join(exe);
        std::fs::copy("/bin/sleep", &path).expect("copy sleep under the product's name");
        let mut command = Command::new(&path);
        command.arg("3600");
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        Killed(spawn::spawn_fresh_copy(&mut command).expect("start the product"))
    }
}

/// A child killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn open_products(status: &Value) -> Vec<String> {
    let mut products: Vec<String> = status["open"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["product"].as_str().map(str::to_owned))
        .collect();
    products.sort();
    products
}

#[test]
fn enroll_from_another_account_is_refused_with_an_answer_and_root_may_enroll() {
    let setup = Setup::new();
    let _agent = setup.start_agent();

    let refused = setup.cli(Some(OTHER), &["enroll"]);
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("enroll is allowed only to root and the agent's own account"),
        "{}",
        stderr(&refused)
    );

    // Root gets past the rule: the enrolment is tried, and fails only for want of a
    // collector.
    let tried = setup.cli(None, &["enroll"]);
    assert!(!tried.status.success());
    assert!(
        stderr(&tried).contains("collector unreachable"),
        "{}",
        stderr(&tried)
    );
    // The refused caller still gets its status.
    setup.status_where(Some(OTHER), "a status for the other account", |s| {
        s["sessions_of_uid"] == OTHER
    });
}

#[test]
fn status_from_another_account_shows_only_the_sessions_of_its_own_processes() {
    let setup = Setup::new();
    let _agent = setup.start_agent();
    let _theirs = setup.product("dmsock-theirs.exe", Some(OTHER));
    let _mine = setup.product("dmsock-mine.exe", None);

    let all = setup.status_where(None, "both products open", |s| {
        let open = open_products(s);
        open.contains(&"mine".to_owned()) && open.contains(&"theirs".to_owned())
    });
    assert!(all["sessions_of_uid"].is_null(), "{all}");

    let theirs = setup
        .status(Some(OTHER))
        .expect("a status for the other account");
    assert_eq!(open_products(&theirs), ["theirs"], "{theirs}");
    assert_eq!(theirs["waiting_upload"], 1, "{theirs}");
    assert_eq!(theirs["sessions_of_uid"], OTHER, "{theirs}");

    let none = setup
        .status(Some(THIRD))
        .expect("a status for a third account");
    assert_eq!(open_products(&none), Vec::<String>::new(), "{none}");
    assert_eq!(none["waiting_upload"], 0, "{none}");

    // The text form says the list is partial.
    let text = setup.cli(Some(OTHER), &["status"]);
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("sessions of uid {OTHER}'s processes only")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

/// The socket must not be the only guard: it stays open to every account by design.
#[test]
fn the_socket_is_open_to_every_account_and_the_journal_is_not() {
    let setup = Setup::new();
    let _agent = setup.start_agent();
    let data = setup.dir.path().join("data");
    let socket = std::fs::metadata(data.join("agent.sock")).expect("the socket");
    assert_eq!(socket.permissions().mode() & 0o777, 0o666);
    let journal = std::fs::metadata(data.join("journal")).expect("the journal");
    assert_eq!(
        journal.permissions().mode() & 0o077,
        0,
        "journal owner-only"
    );
}
