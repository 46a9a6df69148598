//! Switching the journal's backend on an existing data directory: every record carried
//! over both ways, once; a crash at each step of the migration recovered; the cases
//! that cannot be migrated safely refused with a message that says what to do.
//!
//! Crashes are real: this test binary re-executes itself as a child that opens the
//! journal with `DAYMETER_TEST_MIGRATION_CRASH` naming a step, and the agent's code
//! aborts the child there (see [`migration_child`]).

// The crash tests run on Unix only; elsewhere their helpers stand unused.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::borrow::Cow;
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone};

use daymeter_agent::config::Config;
#[cfg(unix)]
use daymeter_agent::journal::migrate::CRASH_ENV;
use daymeter_agent::journal::migrate::in_charge;
use daymeter_agent::journal::redb::RedbJournal;
use daymeter_agent::journal::sled::SledJournal;
use daymeter_agent::journal::{
    ChosenJournal, Durability, Enrolment, Journal, JournalError, JournalKind, Purpose, Stage,
    Tracked,
};
use daymeter_agent::watch::ProcessKey;
use daymeter_shared::session::Session;

const CHILD_ENV: &str = "DAYMETER_MIGRATION_CHILD";

fn at(secs: i64) -> DateTime<FixedOffset> {
    FixedOffset::east_opt(3600)
        .unwrap()
        .timestamp_opt(1_790_000_000 + secs, 0)
        .unwrap()
}

fn tracked(n: u32, stage: Stage) -> Tracked {
    let closed = stage != Stage::Open;
    Tracked {
        session: Session {
            id: Cow::Owned(format!("0190a000-0000-7000-8000-{n:012}")),
            user: None,
            device: None,
            product: Cow::Borrowed("civil3d"),
            version: Some(Cow::Borrowed("2026")),
            start: at(0),
            end: closed.then(|| at(600 + i64::from(n))),
            last_seen: Some(at(600 + i64::from(n))),
            tz: Some(Cow::Borrowed("Europe/Vienna")),
            suspended: Vec::new(),
            idle: Vec::new(),
        },
        process: ProcessKey {
            pid: 4000 + n,
            started: 77,
        },
        owner: Some(1000 + n),
        user: Some(format!("user-{n}@firm.com")),
        exe: Some("civil3d.exe".to_owned()),
        stage,
        clock_offset_ms: i64::from(n) * 1_500,
    }
}

/// Everything the journal stores, as written and as read back.
#[derive(Debug, PartialEq)]
struct Contents {
    sessions: Vec<Tracked>,
    cached: Vec<(String, Vec<u8>)>,
    enrolment: Option<Enrolment>,
}

fn read(journal: &dyn Journal) -> Contents {
    Contents {
        sessions: journal.sessions().unwrap(),
        cached: journal.cached_all().unwrap(),
        enrolment: journal.enrolment().unwrap(),
    }
}

/// A journal of `kind` in `dir` holding open, closed and rejected sessions, an
/// enrolment and the cached values the agent keeps; returns what it holds.
fn write_journal(dir: &Path, kind: JournalKind) -> Contents {
    let journal = open(dir, kind, Purpose::Run);
    assert_eq!(journal.kind(), kind);
    let rejected = Stage::Rejected {
        reason: "unknown product".to_owned(),
    };
    for n in 0..40 {
        let stage = match n % 4 {
            0 => Stage::Closed,
            1 => rejected.clone(),
            _ => Stage::Open,
        };
        journal.put(&tracked(n, stage), Durability::Lazy).unwrap();
    }
    journal
        .set_enrolment(Some(&Enrolment {
            collector_url: "https://licensing.example.com:8650".to_owned(),
            device_id: "dev-0042".to_owned(),
            device_token: "secret-token-0042".to_owned(),
        }))
        .unwrap();
    for (key, value) in [
        ("sync_answer", &b"{\"catalog\":{}}"[..]),
        ("sync_answers_by_user", b"{}"),
        ("last_sync", b"2026-12-05T10:00:00+00:00"),
        ("revoked", b"0"),
        ("clock_offset_ms", b"-2500"),
        (
            "grace",
            b"{\"sign_in\":\"2026-12-05T10:00:00Z\",\"boot\":12}",
        ),
        ("\u{e9}t\u{e9} \x00 any key", &[0, 159, 255, 7]),
    ] {
        journal.set_cached(key, value).unwrap();
    }
    journal.flush().unwrap();
    let contents = read(&journal);
    assert_eq!(contents.sessions.len(), 40);
    assert_eq!(contents.cached.len(), 7);
    contents
}

/// The names in `dir`, sorted, without the timestamps of moved-aside copies.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            match name.split_once(".migrated-to-") {
                Some((db, rest)) => format!("{db}.migrated-to-{}", &rest[..4]),
                None => name,
            }
        })
        .collect();
    names.sort();
    names
}

fn journal_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("journal");
    (temp, dir)
}

fn migrates_keeping_every_record(from: JournalKind, to: JournalKind) {
    let (_temp, dir) = journal_dir();
    let written = write_journal(&dir, from);

    let journal = open(&dir, to, Purpose::Run);
    assert_eq!(journal.kind(), to);
    assert_eq!(read(&journal), written);
    assert_eq!(journal.sessions_strict().unwrap(), written.sessions);
    drop(journal);
    let after = listing(&dir);
    assert_eq!(
        after,
        expected_listing(from, to),
        "the old journal kept aside, nothing else left"
    );

    // A second open finds its own kind: nothing migrates again, nothing is lost.
    let journal = open(&dir, to, Purpose::Run);
    assert_eq!(read(&journal), written);
    drop(journal);
    assert_eq!(listing(&dir), after);
}

/// The journal directory after a migration from `from` to `to`.
fn expected_listing(from: JournalKind, to: JournalKind) -> Vec<String> {
    let mut names = vec![
        "enrolment.json".to_owned(),
        "lock".to_owned(),
        to.database().to_owned(),
        format!("{}.migrated-to-{to}", from.database()),
    ];
    names.sort();
    names
}

#[test]
fn redb_to_sled_keeps_every_record_and_migrates_once() {
    migrates_keeping_every_record(JournalKind::Redb, JournalKind::Sled);
}

#[test]
fn sled_to_redb_keeps_every_record_and_migrates_once() {
    migrates_keeping_every_record(JournalKind::Sled, JournalKind::Redb);
}

#[test]
fn an_empty_directory_opens_the_configured_kind() {
    for kind in JournalKind::ALL {
        let (_temp, dir) = journal_dir();
        assert_eq!(in_charge(&dir).ok().flatten(), None);
        let journal = open(&dir, kind, Purpose::Run);
        assert_eq!(journal.kind(), kind);
        drop(journal);
        assert_eq!(in_charge(&dir).unwrap(), Some(kind));
    }
}

/// `status` and `enroll` read the journal in charge as it is: no migration, no move.
#[test]
fn looking_reads_the_other_kinds_journal_without_migrating_it() {
    let (_temp, dir) = journal_dir();
    let written = write_journal(&dir, JournalKind::Redb);
    let before = listing(&dir);
    let journal = open(&dir, JournalKind::Sled, Purpose::Look);
    assert_eq!(journal.kind(), JournalKind::Redb);
    assert_eq!(read(&journal), written);
    drop(journal);
    assert_eq!(listing(&dir), before);
}

/// The child: opens the journal in `dir` as `run` would, with the crash step in the
/// environment; a no-op in a normal run.
#[test]
fn migration_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (kind, dir) = spec.split_once(':').unwrap();
    let kind = JournalKind::from_name(kind).unwrap();
    let journal = open(Path::new(dir), kind, Purpose::Run);
    drop(journal);
    // Reaching here means the crash step was never met.
    std::process::exit(3);
}

/// Runs the child, which must die at `step`.
#[cfg(unix)]
fn crash_at(dir: &Path, to: JournalKind, step: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "migration_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{to}:{}", dir.display()))
        .env(CRASH_ENV, step)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.code().is_none(),
        "the child should have crashed at {step}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
fn crash_mid_migration_recovers(from: JournalKind, to: JournalKind) {
    for step in [
        "marked",
        "half-staged",
        "staged",
        "committed",
        "moved-aside",
    ] {
        let (_temp, dir) = journal_dir();
        let written = write_journal(&dir, from);
        crash_at(&dir, to, step);

        // Whatever the step, one journal is in charge and it holds everything; looking
        // at it rearranges nothing.
        let left = listing(&dir);
        let committed = matches!(step, "committed" | "moved-aside");
        let expected = if committed { to } else { from };
        assert_eq!(in_charge(&dir).unwrap(), Some(expected), "after {step}");
        let look = open(&dir, to, Purpose::Look);
        assert_eq!(look.kind(), expected, "after {step}");
        assert_eq!(read(&look), written, "after {step}");
        drop(look);
        assert_eq!(listing(&dir), left, "looking after {step} moved files");

        // The next start settles it: the new journal, complete, and only it.
        let journal = open(&dir, to, Purpose::Run);
        assert_eq!(journal.kind(), to);
        assert_eq!(read(&journal), written, "after {step}");
        drop(journal);
        assert_eq!(listing(&dir), expected_listing(from, to), "after {step}");
    }
}

#[cfg(unix)]
#[test]
fn a_crash_at_any_step_of_redb_to_sled_leaves_one_complete_journal() {
    crash_mid_migration_recovers(JournalKind::Redb, JournalKind::Sled);
}

#[cfg(unix)]
#[test]
fn a_crash_at_any_step_of_sled_to_redb_leaves_one_complete_journal() {
    crash_mid_migration_recovers(JournalKind::Sled, JournalKind::Redb);
}

/// A half-written copy left beside the journal (a crash while staging) is a leftover,
/// whatever it holds: the migration starts over and nothing of it counts.
#[test]
fn a_half_written_new_journal_is_dropped_and_the_migration_done_again() {
    let (_temp, dir) = journal_dir();
    let written = write_journal(&dir, JournalKind::Redb);
    let staging = dir.join("migrating-to-sled");
    std::fs::create_dir_all(staging.join("sled")).unwrap();
    std::fs::write(staging.join("sled").join("db"), b"half a sled log").unwrap();
    std::fs::write(
        dir.join("migration.json"),
        br#"{"from":"redb","to":"sled"}"#,
    )
    .unwrap();
    let journal = open(&dir, JournalKind::Sled, Purpose::Run);
    assert_eq!(read(&journal), written);
    drop(journal);
    assert_eq!(
        listing(&dir),
        expected_listing(JournalKind::Redb, JournalKind::Sled)
    );
}

#[test]
fn both_kinds_present_is_refused_naming_the_directory_both_kinds_and_what_to_do() {
    let (_temp, dir) = journal_dir();
    write_journal(&dir, JournalKind::Redb);
    drop(retry_in_use(|| SledJournal::open(&dir)));
    let before = listing(&dir);
    for kind in JournalKind::ALL {
        for purpose in [Purpose::Run, Purpose::Look] {
            let e = open_err(&dir, kind, purpose);
            assert!(matches!(e, JournalError::BothKinds { .. }), "{e}");
            let text = e.to_string();
            for named in [
                dir.display().to_string().as_str(),
                "redb",
                "journal.redb",
                "sled/",
                "move the other out",
                "set `journal`",
            ] {
                assert!(text.contains(named), "{named:?} missing from: {text}");
            }
        }
    }
    assert_eq!(listing(&dir), before, "nothing moved");
}

#[test]
fn an_unreadable_old_journal_is_refused_and_left_as_it_was() {
    let (_temp, dir) = journal_dir();
    write_journal(&dir, JournalKind::Redb);
    let file = dir.join(daymeter_agent::journal::redb::DB_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let cut = 4096.min(bytes.len());
    bytes[..cut].fill(0xa5);
    std::fs::write(&file, &bytes).unwrap();
    let before = listing(&dir);

    let e = open_err(&dir, JournalKind::Sled, Purpose::Run);
    assert!(matches!(e, JournalError::CannotMigrate { .. }), "{e}");
    let text = e.to_string();
    for named in [
        dir.display().to_string().as_str(),
        "a redb journal",
        "asks for sled",
        "journal = \"redb\"",
    ] {
        assert!(text.contains(named), "{named:?} missing from: {text}");
    }
    assert_eq!(listing(&dir), before, "nothing moved or written");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
    // Its own backend heals it, as before the choice existed.
    drop(retry_in_use(|| RedbJournal::open_healing(&dir)));
}

#[test]
fn a_journal_value_typo_in_the_configuration_is_refused_by_name() {
    let e = Config::parse(
        Path::new("/etc/daymeter/agent.toml"),
        "collector_url = \"http://h\"\ndata_dir = \"/tmp/d\"\njournal = \"sqlite\"\n",
        None,
    )
    .unwrap_err();
    let text = e.to_string();
    for named in [
        "/etc/daymeter/agent.toml",
        "journal",
        "sqlite",
        "\"redb\"",
        "\"sled\"",
    ] {
        assert!(text.contains(named), "{named:?} missing from: {text}");
    }
}

fn open(dir: &Path, kind: JournalKind, purpose: Purpose) -> ChosenJournal {
    retry_in_use(|| ChosenJournal::open(dir, kind, purpose))
}

/// The error opening fails with (other than the journal being in use for a moment).
fn open_err(dir: &Path, kind: JournalKind, purpose: Purpose) -> JournalError {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ChosenJournal::open(dir, kind, purpose) {
            Err(JournalError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return e,
            Ok(j) => panic!("opened {} as {:?}", dir.display(), j.kind()),
        }
    }
}

/// `attempt`'s first success within 5 s: a child another test starts holds copies of
/// this process's descriptors (journal locks included) from its fork to its exec.
fn retry_in_use<T>(mut attempt: impl FnMut() -> Result<T, JournalError>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(JournalError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
