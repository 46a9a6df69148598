//! Crash torture: a writer process is killed with SIGKILL hundreds of times while it
//! writes to one journal, and after every kill the journal must hold every write the
//! writer reported as flushed, at least as new as reported, nothing it reported removed,
//! nothing it never wrote, and no record that does not decode.
//!
//! The writer is this test binary re-executed with `DAYMETER_TORTURE_CHILD` set (see
//! [`torture_writer_child`]), so nothing extra ships. It speaks one line per event on
//! stdout, each written with one `write` after the call it reports returned, after a
//! newline and the mark `@@ ` (libtest writes to the same stdout):
//!
//! ```text
//! ready                 journal open, existing records read back
//! A <id>                about to create session <id> (it may exist from here on)
//! F <id> <stage> <v>    put(Flush) of <id> at stage o|c, version <v>, returned
//! D <id>                about to remove <id> (it may be gone from here on)
//! R <id>                remove(<id>) returned
//! E <n>                 set_enrolment with token "tok-<n>" returned
//! C <n>                 set_cached("counter", "<n>") returned
//! X <message>           the writer failed (a test failure)
//! ```
//!
//! A session's version is its `last_seen` in seconds after its start; it only grows,
//! through flushed puts and through lazy ones in between (which the test never counts
//! on), so "at least as new" is `version >= reported`. The same directory is used for
//! every round, so damage, if any, accumulates.
//!
//! Both backends an admin may choose (`journal = "redb" | "sled"`) run by default, each
//! on its own journal, and each run prints its kill count and time.
//!
//! Knobs: `DAYMETER_TORTURE_KILLS` (rounds, for both backends; default the backend's
//! [`Backend::KILLS`]), `DAYMETER_TORTURE_SEED`, `DAYMETER_TORTURE_DIR` (keep the journal
//! somewhere to look at afterwards).

#![cfg(unix)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, TimeZone};

use daymeter_agent::journal::redb::RedbJournal;
use daymeter_agent::journal::sled::SledJournal;
use daymeter_agent::journal::{Durability, Enrolment, Journal, JournalError, Stage, Tracked};
use daymeter_agent::watch::ProcessKey;
use daymeter_shared::session::Session;

const CHILD_ENV: &str = "DAYMETER_TORTURE_CHILD";
/// Open sessions the writer keeps at most; closed ones wait for removal.
const MAX_OPEN: usize = 40;
const CACHE_KEY: &str = "counter";
/// Starts each of the writer's lines (libtest prints on the same stdout).
const MARK: &str = "@@ ";

/// What the torture needs of a backend beyond [`Journal`].
trait Backend: Journal + Sized {
    const NAME: &'static str;
    /// Rounds (one SIGKILL each) in a normal run.
    const KILLS: usize;
    fn open(dir: &Path) -> Result<Self, JournalError>;
    /// Every session, failing on a record that does not decode.
    fn strict(&self) -> Result<Vec<Tracked>, JournalError>;
    fn size_on_disk(&self) -> Result<u64, JournalError>;
}

impl Backend for RedbJournal {
    const NAME: &'static str = "redb";
    const KILLS: usize = 240;
    fn open(dir: &Path) -> Result<Self, JournalError> {
        RedbJournal::open(dir)
    }
    fn strict(&self) -> Result<Vec<Tracked>, JournalError> {
        self.sessions_strict()
    }
    fn size_on_disk(&self) -> Result<u64, JournalError> {
        RedbJournal::size_on_disk(self)
    }
}

impl Backend for SledJournal {
    const NAME: &'static str = "sled";
    /// Half redb's: the default backend gets the deeper run, and CI time is shared.
    const KILLS: usize = 120;
    fn open(dir: &Path) -> Result<Self, JournalError> {
        SledJournal::open(dir)
    }
    fn strict(&self) -> Result<Vec<Tracked>, JournalError> {
        self.sessions_strict()
    }
    fn size_on_disk(&self) -> Result<u64, JournalError> {
        SledJournal::size_on_disk(self)
    }
}

/// Opens the journal, waiting (5 s at most) while it is in use. Both tortures run at
/// once in this binary, and a writer one of them starts holds copies of every
/// descriptor of this process from its fork to its exec, the other torture's journal
/// locks included: for that moment the journal is in use.
fn open_waiting<J: Backend>(dir: &Path) -> Result<J, JournalError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match J::open(dir) {
            Err(JournalError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed_from_env_or_clock() -> u64 {
    std::env::var("DAYMETER_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn start() -> DateTime<FixedOffset> {
    FixedOffset::east_opt(0)
        .unwrap()
        .timestamp_opt(1_790_000_000, 0)
        .unwrap()
}

fn session(id: &str, closed: bool, version: u64) -> Tracked {
    let seen = start() + chrono::Duration::seconds(version as i64);
    Tracked {
        session: Session {
            id: Cow::Owned(id.to_owned()),
            user: None,
            device: None,
            product: Cow::Borrowed("civil3d"),
            version: Some(Cow::Borrowed("2026")),
            start: start(),
            end: closed.then_some(seen),
            last_seen: Some(seen),
            tz: Some(Cow::Borrowed("Europe/Vienna")),
            suspended: Vec::new(),
            idle: Vec::new(),
        },
        process: ProcessKey {
            pid: 1000,
            started: version,
        },
        owner: None,
        user: None,
        exe: None,
        stage: if closed { Stage::Closed } else { Stage::Open },
        clock_offset_ms: 0,
    }
}

fn version_of(t: &Tracked) -> u64 {
    t.session
        .last_seen
        .map_or(0, |seen| (seen - start()).num_seconds() as u64)
}

fn is_closed(t: &Tracked) -> bool {
    t.stage == Stage::Closed
}

fn counter_of(enrolment: &Enrolment) -> u64 {
    enrolment
        .device_token
        .strip_prefix("tok-")
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// The writer, when this binary runs as one; a no-op in a normal run.
#[test]
fn torture_writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (backend, seed, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse().unwrap(),
        Path::new(parts.next().unwrap()),
    );
    let out = std::io::stdout();
    let say = |line: String| {
        let mut out = out.lock();
        // One write per line: a kill cannot split it. The mark (after a newline) sets it
        // apart from libtest's own output on the same stdout.
        out.write_all(format!("\n{MARK}{line}\n").as_bytes())
            .unwrap();
        out.flush().unwrap();
    };
    let result = match backend {
        "redb" => write_until_killed::<RedbJournal>(dir, seed, &say),
        "sled" => write_until_killed::<SledJournal>(dir, seed, &say),
        other => panic!("unknown backend {other}"),
    };
    if let Err(e) = result {
        say(format!("X {e}"));
        std::process::exit(2);
    }
}

fn write_until_killed<J: Backend>(
    dir: &Path,
    seed: u64,
    say: &dyn Fn(String),
) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(seed);
    let journal = open_waiting::<J>(dir)?;
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut closed: Vec<String> = Vec::new();
    for t in journal.strict()? {
        let id = t.session.id.to_string();
        if is_closed(&t) {
            closed.push(id);
        } else {
            open.push((id, version_of(&t)));
        }
    }
    let mut enrolled = journal.enrolment()?.map_or(0, |e| counter_of(&e));
    let mut counter: u64 = journal
        .cached(CACHE_KEY)?
        .map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
    say("ready".to_owned());

    loop {
        let roll = rng.below(100);
        if roll < 20 && open.len() < MAX_OPEN {
            let id = uuid::Uuid::now_v7().to_string();
            say(format!("A {id}"));
            journal.put(&session(&id, false, 1), Durability::Flush)?;
            say(format!("F {id} o 1"));
            open.push((id, 1));
        } else if roll < 60 && !open.is_empty() {
            // Progress of a running product: lazy, as the agent writes it every poll.
            let i = rng.below(open.len() as u64) as usize;
            open[i].1 += 1;
            journal.put(&session(&open[i].0, false, open[i].1), Durability::Lazy)?;
        } else if roll < 70 && !open.is_empty() {
            // The periodic flush of that progress, as one flushed put.
            let i = rng.below(open.len() as u64) as usize;
            open[i].1 += 1;
            let (id, v) = &open[i];
            journal.put(&session(id, false, *v), Durability::Flush)?;
            say(format!("F {id} o {v}"));
        } else if roll < 82 && !open.is_empty() {
            let i = rng.below(open.len() as u64) as usize;
            let (id, v) = open.swap_remove(i);
            journal.put(&session(&id, true, v + 1), Durability::Flush)?;
            say(format!("F {id} c {}", v + 1));
            closed.push(id);
        } else if roll < 95 && !closed.is_empty() {
            let i = rng.below(closed.len() as u64) as usize;
            let id = closed.swap_remove(i);
            say(format!("D {id}"));
            journal.remove(&id)?;
            say(format!("R {id}"));
        } else if roll < 97 {
            enrolled += 1;
            journal.set_enrolment(Some(&Enrolment {
                collector_url: "https://licensing.example.com:8650".to_owned(),
                device_id: "dev-torture".to_owned(),
                device_token: format!("tok-{enrolled}"),
            }))?;
            say(format!("E {enrolled}"));
        } else if roll < 99 {
            counter += 1;
            journal.set_cached(CACHE_KEY, counter.to_string().as_bytes())?;
            say(format!("C {counter}"));
        } else {
            journal.flush()?;
        }
    }
}

/// What the parent knows of one session from the writer's reports.
#[derive(Debug, Default)]
struct Known {
    /// Flushed at least this (closed?, version); `None` while only attempted.
    flushed: Option<(bool, u64)>,
    /// A removal began: the session may be gone.
    removing: bool,
    /// A removal returned: the session must be gone.
    removed: bool,
}

#[derive(Debug, Default)]
struct Model {
    sessions: HashMap<String, Known>,
    enrolled: u64,
    counter: u64,
    /// Reports taken in, for the summary.
    confirmed: u64,
}

impl Model {
    fn take(&mut self, line: &str) -> Result<(), String> {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ready"] => {}
            ["A", id] => {
                self.sessions.entry((*id).to_owned()).or_default();
            }
            ["F", id, stage, v] => {
                let known = self
                    .sessions
                    .get_mut(*id)
                    .ok_or_else(|| format!("flushed {id} without announcing it"))?;
                let now = (*stage == "c", v.parse::<u64>().map_err(|e| e.to_string())?);
                known.flushed = Some(known.flushed.map_or(now, |was| was.max(now)));
                self.confirmed += 1;
            }
            ["D", id] => {
                self.sessions
                    .get_mut(*id)
                    .ok_or_else(|| format!("removing unknown {id}"))?
                    .removing = true;
            }
            ["R", id] => {
                self.sessions
                    .get_mut(*id)
                    .ok_or_else(|| format!("removed unknown {id}"))?
                    .removed = true;
                self.confirmed += 1;
            }
            ["E", n] => {
                self.enrolled = n.parse().map_err(|_| line.to_owned())?;
                self.confirmed += 1;
            }
            ["C", n] => {
                self.counter = n.parse().map_err(|_| line.to_owned())?;
                self.confirmed += 1;
            }
            ["X", ..] => return Err(format!("writer failed: {line}")),
            _ => return Err(format!("unexpected writer line {line:?}")),
        }
        Ok(())
    }

    /// Checks the journal on disk against everything reported so far.
    fn check<J: Backend>(&mut self, dir: &Path) -> Result<usize, String> {
        let journal = open_waiting::<J>(dir).map_err(|e| format!("reopen: {e}"))?;
        let on_disk = journal.strict().map_err(|e| format!("read back: {e}"))?;
        let mut problems = Vec::new();
        for pair in on_disk.windows(2) {
            if pair[0].session.id >= pair[1].session.id {
                problems.push(format!(
                    "out of order or duplicated: {} then {}",
                    pair[0].session.id, pair[1].session.id
                ));
            }
        }
        let by_id: HashMap<&str, &Tracked> =
            on_disk.iter().map(|t| (t.session.id.as_ref(), t)).collect();
        for t in &on_disk {
            match self.sessions.get(t.session.id.as_ref()) {
                None => problems.push(format!("{} was never written", t.session.id)),
                Some(k) if k.removed => {
                    problems.push(format!("{} is back after its removal", t.session.id))
                }
                Some(_) => {}
            }
        }
        for (id, known) in &self.sessions {
            let (Some((closed, version)), false) = (known.flushed, known.removed) else {
                continue;
            };
            match by_id.get(id.as_str()) {
                None if known.removing => {}
                None => problems.push(format!(
                    "{id} flushed (closed={closed} v{version}) but missing"
                )),
                Some(t) => {
                    if version_of(t) < version || (closed && !is_closed(t)) {
                        problems.push(format!(
                            "{id} flushed as closed={closed} v{version}, found closed={} v{}",
                            is_closed(t),
                            version_of(t)
                        ));
                    }
                }
            }
        }
        match journal.enrolment() {
            Ok(e) => {
                let n = e.as_ref().map_or(0, counter_of);
                if n < self.enrolled {
                    problems.push(format!("enrolment {n}, flushed {}", self.enrolled));
                }
                self.enrolled = n;
            }
            Err(e) => problems.push(format!("enrolment: {e}")),
        }
        match journal.cached(CACHE_KEY) {
            Ok(v) => {
                let n = v.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
                if n < self.counter {
                    problems.push(format!("cached counter {n}, flushed {}", self.counter));
                }
                self.counter = n;
            }
            Err(e) => problems.push(format!("cache: {e}")),
        }
        // Forget what is settled (removed, or attempted and never written: the writer
        // only learns ids from the disk) so the model stays the journal's size. A
        // missing session is reported once.
        self.sessions
            .retain(|id, _| by_id.contains_key(id.as_str()));
        if problems.is_empty() {
            Ok(on_disk.len())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One round: start the writer, kill it with SIGKILL at a random moment, read back
/// everything it said.
fn round<J: Backend>(dir: &Path, rng: &mut Rng) -> Result<Vec<String>, String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "torture_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}:{}:{}", J::NAME, rng.next(), dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                // A line without its newline was cut by the kill: it reports nothing.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    let Some((_, said)) = line.trim_end().split_once(MARK) else {
                        continue;
                    };
                    if tx.send(said.to_owned()).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut lines = Vec::new();
    // One round in ten kills at any moment from the start, recovery included; one in
    // ten 50–300 ms into the writing, so that state builds up (a flushed write takes
    // milliseconds in a debug build on a busy disk); the rest 1–50 ms in.
    let moment = rng.below(10);
    if moment == 0 {
        std::thread::sleep(Duration::from_millis(rng.below(40)));
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line == "ready";
                    lines.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "writer never became ready: {lines:?} {}",
                        errors.join().unwrap_or_default()
                    ));
                }
            }
        }
        let ms = if moment == 1 {
            50 + rng.below(251)
        } else {
            1 + rng.below(50)
        };
        std::thread::sleep(Duration::from_millis(ms));
    }
    // `Child::kill` is SIGKILL on Unix.
    let _ = child.kill();
    let status = child.wait().map_err(|e| e.to_string())?;
    reader.join().map_err(|_| "reader panicked".to_owned())?;
    lines.extend(rx.try_iter());
    let errors = errors.join().unwrap_or_default();
    if status.code().is_some() {
        // It ended by itself before the kill: only a failure does that.
        return Err(format!("writer exited with {status}: {lines:?} {errors}"));
    }
    Ok(lines)
}

/// The default journal, redb.
#[test]
fn sigkill_while_writing_loses_no_flushed_write() {
    torture::<RedbJournal>();
}

/// sled, the admin's other choice.
#[test]
fn sled_sigkill_while_writing_loses_no_flushed_write() {
    torture::<SledJournal>();
}

fn torture<J: Backend>() {
    let kills: usize = std::env::var("DAYMETER_TORTURE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(J::KILLS);
    let seed = seed_from_env_or_clock();
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("DAYMETER_TORTURE_DIR")
        .map_or_else(|| temp.path().join("journal"), Into::into);
    eprintln!(
        "journal torture ({}): {kills} kills, seed {seed}, dir {}",
        J::NAME,
        dir.display()
    );

    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut failures = Vec::new();
    let mut live = 0;
    let began = Instant::now();
    for i in 0..kills {
        let lines = match round::<J>(&dir, &mut rng) {
            Ok(lines) => lines,
            Err(e) => {
                failures.push(format!("round {i}: {e}"));
                break;
            }
        };
        for line in &lines {
            if let Err(e) = model.take(line) {
                failures.push(format!("round {i}: {e}"));
            }
        }
        match model.check::<J>(&dir) {
            Ok(n) => live = n,
            Err(e) => {
                failures.push(format!("round {i}: {e}"));
                // An unreadable journal ends the run; a wrong one is worth watching on.
                if e.starts_with("reopen") || e.starts_with("read back") {
                    break;
                }
            }
        }
    }
    let size = open_waiting::<J>(&dir)
        .and_then(|j| j.size_on_disk())
        .unwrap_or(0);
    eprintln!(
        "journal torture ({}): {kills} kills in {:.1} s, {} confirmed writes, {live} sessions \
         on disk, {size} bytes, {} failures",
        J::NAME,
        began.elapsed().as_secs_f64(),
        model.confirmed,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
