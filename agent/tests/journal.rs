//! The journal's contracts, one test each, run against both backends: `redb_journal::…`
//! (the agent's [`DefaultJournal`]) and `sled_journal::…`.
//!
//! Tests that need a second process re-execute this test binary with
//! `DAYMETER_JOURNAL_CHILD` set, which turns [`child_helper`] into that process.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone};

use daymeter_agent::journal::redb::RedbJournal;
use daymeter_agent::journal::sled::SledJournal;
use daymeter_agent::journal::{
    DefaultJournal, Durability, Enrolment, Journal, JournalError, Stage, Tracked,
};
use daymeter_agent::watch::ProcessKey;
use daymeter_shared::session::Session;

const CHILD_ENV: &str = "DAYMETER_JOURNAL_CHILD";

/// What the tests need of a backend beyond [`Journal`].
trait Backend: Journal + Sized {
    const NAME: &'static str;
    /// The longest a lazy write may stay in memory only.
    // Read by the crash tests, which need fork (Unix).
    #[cfg_attr(not(unix), allow(dead_code))]
    const FLUSH_PERIOD: Duration;
    fn open(dir: &Path) -> Result<Self, JournalError>;
    fn strict(&self) -> Result<Vec<Tracked>, JournalError>;
    /// Writes raw bytes as a session record, straight into the closed database.
    fn inject(dir: &Path, key: &str, value: &[u8]);
    /// Opens the database itself, bypassing the journal (and its directory lock), and
    /// holds it, with its own lock, until the value drops.
    fn hold_database(dir: &Path) -> Box<dyn std::any::Any>;
}

impl Backend for RedbJournal {
    const NAME: &'static str = "redb";
    const FLUSH_PERIOD: Duration = daymeter_agent::journal::redb::FLUSH_EVERY;
    fn open(dir: &Path) -> Result<Self, JournalError> {
        RedbJournal::open(dir)
    }
    fn strict(&self) -> Result<Vec<Tracked>, JournalError> {
        self.sessions_strict()
    }
    fn inject(dir: &Path, key: &str, value: &[u8]) {
        const SESSIONS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("sessions");
        let path = dir.join(daymeter_agent::journal::redb::DB_FILE);
        let db = retrying(|| redb::Database::create(&path));
        let txn = db.begin_write().unwrap();
        txn.open_table(SESSIONS)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }
    fn hold_database(dir: &Path) -> Box<dyn std::any::Any> {
        let path = dir.join(daymeter_agent::journal::redb::DB_FILE);
        Box::new(retrying(|| redb::Database::create(&path)))
    }
}

impl Backend for SledJournal {
    const NAME: &'static str = "sled";
    const FLUSH_PERIOD: Duration =
        Duration::from_millis(daymeter_agent::journal::sled::FLUSH_EVERY_MS);
    fn open(dir: &Path) -> Result<Self, JournalError> {
        SledJournal::open(dir)
    }
    fn strict(&self) -> Result<Vec<Tracked>, JournalError> {
        self.sessions_strict()
    }
    fn inject(dir: &Path, key: &str, value: &[u8]) {
        let path = dir.join(daymeter_agent::journal::sled::DB_DIR);
        let db = retrying(|| sled::open(&path));
        db.open_tree("sessions")
            .unwrap()
            .insert(key.as_bytes(), value)
            .unwrap();
        db.flush().unwrap();
    }
    fn hold_database(dir: &Path) -> Box<dyn std::any::Any> {
        let path = dir.join(daymeter_agent::journal::sled::DB_DIR);
        Box::new(retrying(|| sled::open(&path)))
    }
}

/// Opens the journal, waiting out a child process that another test is starting: from
/// its fork to its exec the child holds copies of every descriptor of this process,
/// journal locks included (the directory's and the database's own, both reported as
/// `InUse`: see [`the_databases_own_lock_held_elsewhere_is_in_use`]).
fn open<J: Backend>(dir: &Path) -> J {
    retrying(|| match J::open(dir) {
        Err(e @ JournalError::InUse { .. }) => Err(e),
        Err(e) => panic!("open {}: {e}", dir.display()),
        Ok(journal) => Ok(journal),
    })
}

/// `attempt`'s first success within 5 s (see [`open`] for why).
fn retrying<T, E: std::fmt::Debug>(mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn at(secs: i64) -> DateTime<FixedOffset> {
    FixedOffset::east_opt(3600)
        .unwrap()
        .timestamp_opt(1_790_000_000 + secs, 0)
        .unwrap()
}

fn tracked(id: &str, stage: Stage, last_seen: i64) -> Tracked {
    let closed = stage != Stage::Open;
    Tracked {
        session: Session {
            id: Cow::Owned(id.to_owned()),
            user: None,
            device: None,
            product: Cow::Borrowed("acad"),
            version: Some(Cow::Borrowed("2026")),
            start: at(0),
            end: closed.then(|| at(last_seen)),
            last_seen: Some(at(last_seen)),
            tz: Some(Cow::Borrowed("Europe/Berlin")),
            suspended: vec![[at(10), at(20)]],
            idle: Vec::new(),
        },
        process: ProcessKey {
            pid: 4242,
            started: 123_456,
        },
        owner: Some(1000),
        user: Some("sophie".into()),
        exe: Some("acad.exe".into()),
        stage,
        clock_offset_ms: 0,
    }
}

fn id(n: u32) -> String {
    format!("0190a000-0000-7000-8000-{n:012}")
}

fn ids(sessions: Vec<Tracked>) -> Vec<String> {
    sessions
        .into_iter()
        .map(|t| t.session.id.into_owned())
        .collect()
}

fn enrolment(token: &str) -> Enrolment {
    Enrolment {
        collector_url: "https://licensing.example.com:8650".to_owned(),
        device_id: "dev-17".to_owned(),
        device_token: token.to_owned(),
    }
}

// ---- the other process ----------------------------------------------------------

/// Starts this test binary as the other process, in `mode`, on `dir`.
fn child<J: Backend>(mode: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}:{mode}:{}", J::NAME, dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Marks the child's own lines: libtest writes to the same stdout (in serial mode
/// `test child_helper ... ` comes first, on the same line).
const MARK: &str = "@@ ";

/// Prints one marked line and flushes it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("\n{MARK}{line}\n").as_bytes())
        .unwrap();
    out.flush().unwrap();
}

/// Waits (30 s at most) for the child to say `want`; panics with its stderr if it
/// ends or stalls first.
fn wait_for_line(child: &mut Child, want: &str) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((_, said)) = line.split_once(MARK)
                && tx.send(said.to_owned()).is_err()
            {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(said) if said == want => return,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("child never said {want:?} ({e}): {err}");
            }
        }
    }
}

/// The other process: does what `DAYMETER_JOURNAL_CHILD` says; a no-op in a normal run.
#[test]
fn child_helper() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (backend, mode, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        Path::new(parts.next().unwrap()),
    );
    match backend {
        "redb" => child_main::<RedbJournal>(mode, dir),
        "sled" => child_main::<SledJournal>(mode, dir),
        other => panic!("unknown backend {other}"),
    }
}

fn child_main<J: Backend>(mode: &str, dir: &Path) {
    let journal = open::<J>(dir);
    match mode {
        // Holds the journal open until the parent closes our stdin.
        "hold" => {
            say("opened");
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink).unwrap();
        }
        // One lazy write, then waits to be killed.
        "lazy" => {
            journal
                .put(&tracked(&id(1), Stage::Open, 5), Durability::Lazy)
                .unwrap();
            say("put");
            std::thread::sleep(Duration::from_secs(600));
        }
        // Fills the disk (a file size limit stands in for it), then makes room.
        #[cfg(unix)]
        "full" => fill_the_disk_then_make_room(&journal, dir),
        other => panic!("unknown child mode {other}"),
    }
}

/// Sets this process's file size limit (the soft one; the hard one stays).
#[cfg(unix)]
fn limit_file_size(bytes: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[cfg(unix)]
fn fill_the_disk_then_make_room<J: Backend>(journal: &J, dir: &Path) {
    // Past the limit a write fails with EFBIG instead of killing the process.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    journal
        .put(&tracked(&id(1), Stage::Open, 1), Durability::Flush)
        .unwrap();
    let big = |n: u32| {
        let mut t = tracked(&id(n), Stage::Open, 1);
        t.session.product = Cow::Owned("x".repeat(64 * 1024));
        t
    };
    limit_file_size(files_size(dir));
    let mut written = vec![id(1)];
    let mut failure = None;
    for n in 2..1_000 {
        match journal.put(&big(n), Durability::Flush) {
            Ok(()) => written.push(id(n)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the file size limit never bit");
    eprintln!("write failed as the disk filled: {failure}");
    // The disk stays full: writes keep failing, reads keep working.
    assert!(journal.put(&big(5_000), Durability::Flush).is_err());
    assert_eq!(ids(journal.sessions().unwrap()), written);

    limit_file_size(libc::RLIM_INFINITY);
    journal
        .put(&tracked(&id(9_000), Stage::Open, 1), Durability::Flush)
        .unwrap();
    written.push(id(9_000));
    assert_eq!(ids(journal.sessions().unwrap()), written);
    say("recovered");
}

/// Bytes of the journal's files now.
#[cfg(unix)]
fn files_size(dir: &Path) -> libc::rlim_t {
    disk_usage(dir).0
}

// ---- the contracts ---------------------------------------------------------------

fn put_then_sessions_round_trips<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open::<J>(dir.path());
    assert!(journal.sessions().unwrap().is_empty());

    let open = tracked(&id(1), Stage::Open, 30);
    let closed = tracked(&id(2), Stage::Closed, 90);
    let rejected = tracked(
        &id(3),
        Stage::Rejected {
            reason: "unknown product".to_owned(),
        },
        60,
    );
    journal.put(&open, Durability::Flush).unwrap();
    journal.put(&closed, Durability::Lazy).unwrap();
    journal.put(&rejected, Durability::Flush).unwrap();
    assert_eq!(
        journal.sessions().unwrap(),
        vec![open.clone(), closed, rejected]
    );

    // A put under an existing id replaces the record.
    let advanced = tracked(&id(1), Stage::Open, 45);
    journal.put(&advanced, Durability::Lazy).unwrap();
    let sessions = journal.sessions().unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions[0], advanced);
}

fn flush_is_durable_across_reopen<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let flushed = tracked(&id(1), Stage::Open, 30);
    let lazy_then_flushed = tracked(&id(2), Stage::Closed, 40);
    {
        let journal = open::<J>(dir.path());
        journal.put(&flushed, Durability::Flush).unwrap();
        journal.put(&lazy_then_flushed, Durability::Lazy).unwrap();
        journal.flush().unwrap();
    }
    let journal = open::<J>(dir.path());
    assert_eq!(
        journal.sessions().unwrap(),
        vec![flushed, lazy_then_flushed]
    );
}

/// A lazy write reaches the disk within the journal's flush period with no `flush()`
/// call: a child writes lazily, waits past the period and is killed with SIGKILL, which
/// loses whatever the journal still held in memory only.
#[cfg(unix)]
fn lazy_write_is_on_disk_within_the_flush_period<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = child::<J>("lazy", dir.path());
    wait_for_line(&mut writer, "put");
    std::thread::sleep(J::FLUSH_PERIOD + Duration::from_secs(1));
    writer.kill().unwrap();
    writer.wait().unwrap();

    let journal = open::<J>(dir.path());
    assert_eq!(
        journal.sessions().unwrap(),
        vec![tracked(&id(1), Stage::Open, 5)]
    );
}

fn remove_deletes_the_session_durably<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open::<J>(dir.path());
        for n in 1..=3 {
            journal
                .put(&tracked(&id(n), Stage::Closed, 10), Durability::Flush)
                .unwrap();
        }
        journal.remove(&id(2)).unwrap();
        // Removing what is not there is not an error: an acknowledgement may repeat.
        journal.remove(&id(2)).unwrap();
        journal.remove(&id(99)).unwrap();
        assert_eq!(ids(journal.sessions().unwrap()), vec![id(1), id(3)]);
    }
    let journal = open::<J>(dir.path());
    assert_eq!(ids(journal.sessions().unwrap()), vec![id(1), id(3)]);
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn enrolment_is_stored_owner_only_and_round_trips<J: Backend>() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data").join("journal");
    {
        let journal = open::<J>(&dir);
        assert_eq!(journal.enrolment().unwrap(), None);
        journal
            .set_enrolment(Some(&enrolment("tok-first")))
            .unwrap();
        journal
            .set_enrolment(Some(&enrolment("tok-secret-2")))
            .unwrap();
        assert_eq!(
            journal.enrolment().unwrap(),
            Some(enrolment("tok-secret-2"))
        );
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700, "journal directory");
        assert_eq!(mode(&dir.join("enrolment.json")), 0o600, "enrolment file");
        // The parent keeps the system's defaults: it also holds the status socket.
        assert_ne!(mode(dir.parent().unwrap()) & 0o055, 0, "data directory");
    }
    let journal = open::<J>(&dir);
    let stored = journal.enrolment().unwrap().unwrap();
    assert_eq!(stored, enrolment("tok-secret-2"));
    assert!(!stored.to_string().contains("tok-secret"));
    // No temp file with the token is left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    journal.set_enrolment(None).unwrap();
    assert_eq!(journal.enrolment().unwrap(), None);
    assert!(!dir.join("enrolment.json").exists());
    journal.set_enrolment(None).unwrap();
}

/// Permissions loosened behind the agent's back (a restore from backup, a careless
/// admin) are tightened again when the journal opens or reads the enrolment.
#[cfg(unix)]
fn loosened_permissions_are_tightened<J: Backend>() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    {
        let journal = open::<J>(&dir);
        journal.set_enrolment(Some(&enrolment("tok"))).unwrap();
    }
    let file = dir.join("enrolment.json");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let journal = open::<J>(&dir);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(journal.enrolment().unwrap(), Some(enrolment("tok")));
    assert_eq!(mode(&file), 0o600);
}

fn damaged_enrolment_is_corrupt_without_showing_the_token<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open::<J>(dir.path());
    std::fs::write(
        dir.path().join("enrolment.json"),
        br#"{"collector_url": "https://c", "device_id": 7, "device_token": "tok-leak""#,
    )
    .unwrap();
    match journal.enrolment() {
        Err(e @ JournalError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains("enrolment"), "{text}");
            assert!(!text.contains("tok-leak"), "{text}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn cached_values_round_trip_and_survive_reopen<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open::<J>(dir.path());
        assert_eq!(journal.cached("answer").unwrap(), None);
        journal.set_cached("answer", b"{\"catalog\":[]}").unwrap();
        journal
            .set_cached("last_sync", b"2026-11-02T10:00:00Z")
            .unwrap();
        journal
            .set_cached("last_sync", b"2026-11-02T10:05:00Z")
            .unwrap();
        journal.set_cached("empty", b"").unwrap();
    }
    let journal = open::<J>(dir.path());
    assert_eq!(
        journal.cached("answer").unwrap().as_deref(),
        Some(&b"{\"catalog\":[]}"[..])
    );
    assert_eq!(
        journal.cached("last_sync").unwrap().as_deref(),
        Some(&b"2026-11-02T10:05:00Z"[..])
    );
    assert_eq!(journal.cached("empty").unwrap().as_deref(), Some(&b""[..]));
    // The cache and the sessions are apart: a cache key is never a session.
    assert!(journal.sessions().unwrap().is_empty());
}

fn sessions_come_in_id_order<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open::<J>(dir.path());
    // UUID v7 ids of sessions started one after another, written out of order.
    let mut started: Vec<String> = (0..50)
        .map(|_| {
            let id = uuid::Uuid::now_v7().to_string();
            std::thread::sleep(Duration::from_micros(50));
            id
        })
        .collect();
    let mut shuffled = started.clone();
    shuffled.reverse();
    shuffled.rotate_left(17);
    for id in &shuffled {
        journal
            .put(&tracked(id, Stage::Open, 1), Durability::Lazy)
            .unwrap();
    }
    started.sort();
    assert_eq!(ids(journal.sessions().unwrap()), started);
}

fn assert_in_use<J: Backend>(result: Result<J, JournalError>) {
    match result {
        Err(e @ JournalError::InUse { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("another daymeter-agent is probably running"),
                "{text}"
            );
        }
        Err(other) => panic!("a second open must say who holds the journal: {other}"),
        Ok(_) => panic!("a second open must fail"),
    }
}

fn second_open_fails_saying_another_agent_runs<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();

    // Another process holds it.
    let mut holder = child::<J>("hold", dir.path());
    wait_for_line(&mut holder, "opened");
    assert_in_use(J::open(dir.path()));
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());

    // This process holds it.
    let first = open::<J>(dir.path());
    assert_in_use(J::open(dir.path()));
    drop(first);
    open::<J>(dir.path());
}

/// The state a child between its fork and its exec can leave for a moment: the
/// directory lock free, the database's own lock still held. That is "in use" (which
/// callers wait out), not a storage error (which they do not): sled's lock error was
/// once reported as storage and failed `cached_values_round_trip_and_survive_reopen`.
fn the_databases_own_lock_held_elsewhere_is_in_use<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    drop(open::<J>(dir.path()));
    let holder = J::hold_database(dir.path());
    assert_in_use(J::open(dir.path()));
    drop(holder);
    open::<J>(dir.path());
}

fn a_damaged_record_is_skipped_and_named<J: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let good = [
        tracked(&id(1), Stage::Open, 5),
        tracked(&id(3), Stage::Closed, 7),
    ];
    {
        let journal = open::<J>(dir.path());
        for t in &good {
            journal.put(t, Durability::Flush).unwrap();
        }
    }
    // Bad JSON, and a good record filed under another id.
    J::inject(dir.path(), &id(2), b"{\"session\": tru");
    let misfiled = serde_json::to_vec(&tracked(&id(9), Stage::Open, 1)).unwrap();
    J::inject(dir.path(), &id(4), &misfiled);

    let journal = open::<J>(dir.path());
    assert_eq!(journal.sessions().unwrap(), good.to_vec());
    match journal.strict() {
        Err(JournalError::Corrupt { key, .. }) => assert_eq!(key, id(2)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The damaged records stay for inspection, and writing goes on.
    journal
        .put(&tracked(&id(5), Stage::Open, 1), Durability::Flush)
        .unwrap();
    assert_eq!(ids(journal.sessions().unwrap()), vec![id(1), id(3), id(5)]);
}

macro_rules! contracts {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn put_then_sessions_round_trips() {
                super::put_then_sessions_round_trips::<$backend>();
            }
            #[test]
            fn flush_is_durable_across_reopen() {
                super::flush_is_durable_across_reopen::<$backend>();
            }
            #[cfg(unix)]
            #[test]
            fn lazy_write_is_on_disk_within_the_flush_period() {
                super::lazy_write_is_on_disk_within_the_flush_period::<$backend>();
            }
            #[test]
            fn remove_deletes_the_session_durably() {
                super::remove_deletes_the_session_durably::<$backend>();
            }
            #[test]
            fn enrolment_is_stored_owner_only_and_round_trips() {
                super::enrolment_is_stored_owner_only_and_round_trips::<$backend>();
            }
            #[cfg(unix)]
            #[test]
            fn loosened_permissions_are_tightened() {
                super::loosened_permissions_are_tightened::<$backend>();
            }
            #[test]
            fn damaged_enrolment_is_corrupt_without_showing_the_token() {
                super::damaged_enrolment_is_corrupt_without_showing_the_token::<$backend>();
            }
            #[test]
            fn cached_values_round_trip_and_survive_reopen() {
                super::cached_values_round_trip_and_survive_reopen::<$backend>();
            }
            #[test]
            fn sessions_come_in_id_order() {
                super::sessions_come_in_id_order::<$backend>();
            }
            #[test]
            fn second_open_fails_saying_another_agent_runs() {
                super::second_open_fails_saying_another_agent_runs::<$backend>();
            }
            #[test]
            fn the_databases_own_lock_held_elsewhere_is_in_use() {
                super::the_databases_own_lock_held_elsewhere_is_in_use::<$backend>();
            }
            #[test]
            fn a_damaged_record_is_skipped_and_named() {
                super::a_damaged_record_is_skipped_and_named::<$backend>();
            }
            #[test]
            #[ignore = "measurement for the README: run alone, in release"]
            fn measure_10k_sessions() {
                super::measure::<$backend>();
            }
        }
    };
}

contracts!(redb_journal, RedbJournal);
contracts!(sled_journal, SledJournal);

/// A full disk fails writes; once there is room again the journal writes again, without
/// a restart (redb needs its file reopened after a failed commit; the journal does it).
#[cfg(unix)]
#[test]
fn redb_journal_writes_again_once_the_disk_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = child::<RedbJournal>("full", dir.path());
    wait_for_line(&mut writer, "recovered");
    assert!(writer.wait().unwrap().success());
    let journal = open::<RedbJournal>(dir.path());
    assert_eq!(
        journal.sessions().unwrap().last().unwrap().session.id,
        id(9_000)
    );
}

/// The agent opens redb unless its configuration names sled.
#[test]
fn the_default_journal_is_redb() {
    assert_eq!(
        std::any::type_name::<DefaultJournal>(),
        std::any::type_name::<RedbJournal>()
    );
    assert_eq!(
        daymeter_agent::journal::JournalKind::default(),
        daymeter_agent::journal::JournalKind::Redb
    );
}

// ---- measurement -------------------------------------------------------------------

/// `VmRSS` and `VmHWM` of this process, in KiB (Linux; zeros elsewhere).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Apparent and allocated bytes under `path`.
fn disk_usage(path: &Path) -> (u64, u64) {
    let mut apparent = 0;
    let mut allocated = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path());
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            #[cfg(unix)]
            {
                allocated += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
            }
        }
    }
    (apparent, allocated)
}

/// The README's figures, not a contract. Run alone, in release:
/// `cargo test --release -p daymeter-agent --test journal -- --ignored --exact
/// redb_journal::measure_10k_sessions --nocapture`.
fn measure<J: Backend>() {
    const N: u32 = 10_000;
    let kib = |bytes: u64| bytes / 1024;
    let (base, _) = rss_kib();

    // The agent's steady state first, on a fresh process's heap: 50 running products,
    // `last_seen` written lazily every poll, a flush every 30 polls, 40 flushes.
    let small = tempfile::tempdir().unwrap();
    let journal = open::<J>(small.path());
    let (opened, _) = rss_kib();
    for n in 0..50 {
        journal
            .put(&tracked(&id(n), Stage::Open, 0), Durability::Flush)
            .unwrap();
    }
    let began = std::time::Instant::now();
    for poll in 1..=1_200 {
        for n in 0..50 {
            journal
                .put(&tracked(&id(n), Stage::Open, poll), Durability::Lazy)
                .unwrap();
        }
        if poll % 30 == 0 {
            journal.flush().unwrap();
        }
    }
    let steady_time = began.elapsed();
    let (steady, _) = rss_kib();
    drop(journal);
    let (steady_disk, _) = disk_usage(small.path());

    // Then 10k sessions: offline for weeks, or a collector that refuses everything.
    let dir = tempfile::tempdir().unwrap();
    let journal = open::<J>(dir.path());
    let began = std::time::Instant::now();
    for n in 0..N {
        journal
            .put(&tracked(&id(n), Stage::Open, 1), Durability::Flush)
            .unwrap();
    }
    let flushed = began.elapsed();
    let began = std::time::Instant::now();
    for n in 0..N {
        journal
            .put(&tracked(&id(n), Stage::Open, 2), Durability::Lazy)
            .unwrap();
    }
    journal.flush().unwrap();
    let lazy = began.elapsed();
    let (full, _) = rss_kib();
    let began = std::time::Instant::now();
    let sessions = journal.sessions().unwrap();
    let read = began.elapsed();
    assert_eq!(sessions.len(), N as usize);
    let (with_list, _) = rss_kib();
    drop(sessions);
    drop(journal);
    let began = std::time::Instant::now();
    let journal = open::<J>(dir.path());
    let reopen = began.elapsed();
    drop(journal);
    let (_, peak) = rss_kib();
    let (apparent, allocated) = disk_usage(dir.path());
    println!(
        "{name}: RSS KiB of this process: {base} before open, {opened} after open, \
         {steady} after 60k lazy puts of 50 sessions with a flush every 1,500 \
         ({:.1} µs a lazy put; journal {} KiB on disk); {N} sessions: flushed put \
         {:.0} µs, lazy put {:.1} µs, RSS {full} KiB after the puts, {with_list} KiB \
         holding sessions() (read in {:.1} ms), peak {peak} KiB; reopen {:.1} ms; disk \
         {} KiB apparent, {} KiB allocated",
        steady_time.as_secs_f64() * 1e6 / 60_000.0,
        kib(steady_disk),
        flushed.as_secs_f64() * 1e6 / f64::from(N),
        lazy.as_secs_f64() * 1e6 / f64::from(N),
        read.as_secs_f64() * 1e3,
        reopen.as_secs_f64() * 1e3,
        kib(apparent),
        kib(allocated),
        name = J::NAME,
    );
}
