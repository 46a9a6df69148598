//! The collector as its system service runs it: the config file's keys, and the systemd
//! unit's own command line run the way systemd would run it (specifiers substituted, a
//! clean environment, the credentials and state directories, the dynamic user's uid).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-collector");
/// The uid and gid the test runs the unit's command as: `nobody`, standing in for the
/// uid systemd allocates to a DynamicUser= service (neither root nor the file's owner).
const SERVICE_ID: u32 = 65534;
const DEADLINE: Duration = Duration::from_secs(30);

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "daymeter-units-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        // Traversable by the service's uid, as /run and /var/lib are.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The values of `key=` lines in a unit's text.
fn settings<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

/// Substitutes the specifiers systemd expands in a command line (systemd.unit(5)); any
/// other specifier fails the test, since this one could not run it as systemd would.
fn expand(word: &str, specifiers: &[(char, &Path)]) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(s) => match specifiers.iter().find(|(k, _)| *k == s) {
                Some((_, v)) => out.push_str(&v.display().to_string()),
                None => panic!("specifier %{s} in {word:?}: the test does not know it"),
            },
            None => panic!("a lone % at the end of {word:?}"),
        }
    }
    out
}

/// Waits for the `listening on` line; the address, or the process's stderr on failure.
fn wait_listening(child: &mut Child) -> Result<String, String> {
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut line = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            line.extend_from_slice(&buf[..n]);
            if line.contains(&b'\n') {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        // Keep the pipe drained.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(line) if line.starts_with("listening on http://") => Ok(line
            .trim()
            .trim_start_matches("listening on http://")
            .to_owned()),
        other => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            Err(format!("no listening line ({other:?}); stderr:\n{err}"))
        }
    }
}

/// `GET path` over plain HTTP/1.1: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

fn sigterm_exits_0(mut child: Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < until, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SECRETS: &str = "enrollment_secret = \"units-enrollment-secret-0001\"\n\
                       admin_token = \"units-admin-token-000000000001\"\n";

#[test]
fn an_unknown_key_in_the_config_file_is_refused_by_name() {
    let dir = TempDir::new("unknown-key");
    let config = dir.0.join("collector.toml");
    fs::write(
        &config,
        "enrollment_secret = \"units-enrollment-secret-0001\"\n\
         admin_tokn = \"units-admin-token-000000000001\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.0.join("collector.db"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = match wait_listening(&mut child) {
        Ok(addr) => {
            let _ = child.kill();
            panic!("serve started on {addr} with a misspelt admin_token");
        }
        Err(stderr) => stderr,
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("admin_tokn"),
        "the key is not named: {stderr}"
    );
    assert!(
        stderr.contains(&config.display().to_string()),
        "the file is not named: {stderr}"
    );
    assert!(
        !dir.0.join("collector.db").exists(),
        "serve opened its database despite the bad config"
    );
}

/// Runs the unit's ExecStart= as systemd would: specifiers substituted (`%d` the
/// credentials directory, `%S` the state root), the environment cleared but for what the
/// unit and systemd set, as the service's uid. `--listen` is moved to a free loopback
/// port; everything else is the unit's.
fn run_unit_command(unit_text: &str, creds: &Path, state_root: &Path) -> Child {
    let exec = settings(unit_text, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart= line: {exec:?}");
    let words: Vec<String> = exec[0]
        .split_whitespace()
        .map(|w| expand(w, &[('d', creds), ('S', state_root)]))
        .collect();
    assert_eq!(words[0], "/usr/bin/daymeter-collector");
    let mut args = words[1..].to_vec();
    let listen = args.iter().position(|a| a == "--listen").expect("--listen");
    args[listen + 1] = "127.0.0.1:0".into();
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", creds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/");
    for dir in settings(unit_text, "StateDirectory") {
        cmd.env("STATE_DIRECTORY", state_root.join(dir));
    }
    for env in settings(unit_text, "Environment") {
        let (k, v) = env.split_once('=').expect("Environment=KEY=value");
        cmd.env(k, v);
    }
    if settings(unit_text, "DynamicUser") == ["yes"] {
        // std clears the supplementary groups when root drops to another uid.
        cmd.uid(SERVICE_ID).gid(SERVICE_ID);
    }
    cmd.spawn().expect("starting the unit's command")
}

#[test]
fn the_collector_unit_serves_as_its_dynamic_user_with_the_secrets_from_its_credentials() {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: changing to the service's uid needs root");
        return;
    }
    let text = unit("daymeter-collector.service");
    assert_eq!(settings(&text, "DynamicUser"), ["yes"]);
    let dir = TempDir::new("collector-unit");

    // /etc/daymeter/collector.toml as installed: root's, mode 0600.
    let etc = dir.0.join("etc");
    fs::create_dir(&etc).unwrap();
    let installed = etc.join("collector.toml");
    fs::write(&installed, SECRETS).unwrap();
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o600)).unwrap();

    // LoadCredential=collector.toml:/etc/daymeter/collector.toml: systemd copies the file
    // into the credentials directory, readable by the service's user only.
    let creds = dir.0.join("credentials");
    fs::create_dir(&creds).unwrap();
    let loads = settings(&text, "LoadCredential");
    assert_eq!(loads, ["collector.toml:/etc/daymeter/collector.toml"]);
    let (name, _) = loads[0].split_once(':').unwrap();
    let copy = creds.join(name);
    fs::copy(&installed, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o400)).unwrap();
    chown(&copy, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o500)).unwrap();
    chown(&creds, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();

    // StateDirectory=: created under the state root, owned by the service's user.
    let state_root = dir.0.join("var-lib");
    fs::create_dir(&state_root).unwrap();
    fs::set_permissions(&state_root, fs::Permissions::from_mode(0o755)).unwrap();
    for d in settings(&text, "StateDirectory") {
        let d = state_root.join(d);
        fs::create_dir(&d).unwrap();
        chown(&d, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
    }

    // What the old unit did: the service's user reading root's 0600 file fails.
    let old = text.replace("%d/collector.toml", &installed.display().to_string());
    let mut child = run_unit_command(&old, &creds, &state_root);
    let refused = wait_listening(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("Permission denied")),
        "the service's uid read root's 0600 config: {refused:?}"
    );

    let mut child = run_unit_command(&text, &creds, &state_root);
    let addr = wait_listening(&mut child).unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = get(&addr, "/healthz");
    assert!(status.contains(" 200 "), "{status}: {body}");
    assert!(body.contains("\"ok\""), "{body}");
    // The secrets came from the credential: the admin token opens the admin API.
    let (status, body) = get(&addr, "/v1/admin/balances");
    assert!(status.contains(" 401 "), "without a token: {status} {body}");
    sigterm_exits_0(child);

    let db = state_root.join("daymeter-collector/collector.db");
    let meta = fs::metadata(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.uid(),
        SERVICE_ID,
        "the database belongs to the service's user"
    );
}

#[test]
fn the_agent_and_collector_units_keep_their_state_in_directories_of_their_own() {
    // A DynamicUser= unit's state directory is moved under /var/lib/private and chowned
    // to its dynamic uid at every start; a second unit naming the same directory (the
    // agent, as root) would take it back at its own start.
    let collector = unit("daymeter-collector.service");
    let agent = unit("daymeter-agent.service");
    for d in settings(&collector, "StateDirectory") {
        assert!(
            !settings(&agent, "StateDirectory").contains(&d),
            "both units use StateDirectory={d}"
        );
    }
}
