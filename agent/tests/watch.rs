//! The Linux process sources against real processes: copies of `/bin/sh` renamed to
//! product executables, each blocked in the shell's `read` builtin on a pipe (so it runs
//! with whatever arguments a rule needs, and forks nothing), killed at the end.
//!
//! The common tests run against both sources, the `/proc` listing (`procfs_source::*`)
//! and the process-event one (`connector_source::*`), which must answer alike; the
//! `connector_*` tests check what only the event source does. Where this process may not
//! subscribe to process events (no `CAP_NET_ADMIN` on an older kernel, a container), the
//! event-source tests print a note and pass without checking anything.
#![cfg(target_os = "linux")]

use std::cell::Cell;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use daymeter_agent::watch::connector::{Connector, SubscribeError};
use daymeter_agent::watch::procfs::Procfs;
use daymeter_agent::watch::{self, ProcessKey, ProcessSource, Running, Seen};
use daymeter_shared::catalog::{Catalog, MatchRule, Product, builtin};
use daymeter_shared::recognition::Recogniser;

#[path = "support/spawn.rs"]
mod spawn;

/// A running copy; killed and reaped when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps it: its pid leaves /proc.
    fn end(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `/bin/sh` into `dir` as `name`.
fn install(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sh", &path).unwrap();
    path
}

/// Starts `exe -c <script> <args…>` with its stdin on a pipe; returns as soon as the
/// kernel has switched the child to `exe`.
fn start(exe: &Path, script: &str, args: &[&str]) -> Child {
    let mut command = Command::new(exe);
    command
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn::spawn_fresh_copy(&mut command)
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

/// Waits until the child's `exec` of `exe` is complete: `Command::spawn` returns once the
/// kernel has switched the child to the new program, a moment before `comm` and the
/// command line are the new program's (the source copes; most tests want the settled
/// state at their first poll).
fn wait_exec(pid: u32, exe: &Path) {
    let exe = std::fs::canonicalize(exe).unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    let comm = format!("{}\n", &name[..name.len().min(15)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let settled = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|l| l == *exe)
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == comm)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
        if settled {
            return;
        }
        assert!(Instant::now() < deadline, "{} never ran", exe.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `exe -c <script> <args…>` with its stdin on a pipe, its exec complete.
fn spawn(exe: &Path, script: &str, args: &[&str]) -> Proc {
    let mut child = start(exe, script, args);
    let stdin = child.stdin.take();
    wait_exec(child.id(), exe);
    Proc { child, stdin }
}

/// A product copy that waits on its stdin, with `args` as its arguments after the script.
fn run(exe: &Path, args: &[&str]) -> Proc {
    spawn(exe, "read _", args)
}

/// `/proc/PID/stat` field 22 and field 3, read independently of the source.
fn stat_of(pid: u32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((fields[19].parse().ok()?, fields[0].chars().next()?))
}

fn key_of(p: &Proc) -> ProcessKey {
    ProcessKey {
        pid: p.pid(),
        started: stat_of(p.pid()).unwrap().0,
    }
}

fn product_of(running: &[Running], pid: u32) -> Option<&str> {
    let mut found = running.iter().filter(|r| r.key.pid == pid);
    let first = found.next().map(|r| r.product.as_str());
    assert!(found.next().is_none(), "pid {pid} reported twice");
    first
}

fn recogniser() -> Recogniser {
    Recogniser::new(&builtin())
}

fn poll(source: &mut dyn ProcessSource, r: &Recogniser) -> Vec<Running> {
    source
        .poll(&|s: Seen<'_>| r.recognise(s.exe, s.args).map(str::to_owned))
        .unwrap()
}

/// Which Linux source a common test runs against.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Procfs,
    Connector,
}

impl Kind {
    /// The source, or `None` (with a note) when process events are not available here.
    fn source(self) -> Option<Box<dyn ProcessSource>> {
        self.source_rechecking(2)
    }

    /// The source with `n` round-robin re-checks per poll (the `/proc` listing's way of
    /// noticing an `exec`; the event source is told instead).
    fn source_rechecking(self, n: usize) -> Option<Box<dyn ProcessSource>> {
        match self {
            Kind::Procfs => Some(Box::new(Procfs::new().recheck_per_poll(n))),
            Kind::Connector => connector().map(|c| Box::new(c) as Box<dyn ProcessSource>),
        }
    }
}

/// The process-event source, or `None` with a note where this process may not subscribe.
fn connector() -> Option<Connector> {
    match Connector::new() {
        Ok(c) => Some(c),
        Err(e @ (SubscribeError::Namespace | SubscribeError::NotInKernel)) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(SubscribeError::Os(e)) if e.kind() == ErrorKind::PermissionDenied => {
            eprintln!("skipped: no permission to subscribe to process events here ({e})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Runs each named test (a `fn(Kind)`) once per source, as `procfs_source::NAME` and
/// `connector_source::NAME`.
macro_rules! on_both_sources {
    ($($name:ident),* $(,)?) => {
        mod procfs_source {
            $(#[test]
            fn $name() {
                super::$name(super::Kind::Procfs)
            })*
        }
        mod connector_source {
            $(#[test]
            fn $name() {
                super::$name(super::Kind::Connector)
            })*
        }
    };
}

on_both_sources!(
    products_are_detected_with_their_key_and_gone_once_they_end,
    a_killed_product_is_gone_before_it_is_reaped,
    a_process_started_between_polls_is_detected_at_the_next_poll,
    a_product_caught_in_the_middle_of_its_exec_is_detected_by_the_next_poll,
    alive_is_true_only_for_the_same_process_instance,
    names_longer_than_comm_are_matched_through_the_exe_link,
    a_deleted_executable_is_still_recognised,
    classify_sees_the_exe_name_and_joined_args_once_per_instance,
    classifications_are_kept_until_forget,
    not_products_are_never_reported,
    a_launcher_that_execs_the_product_is_detected_in_its_turn,
    a_forked_copy_of_a_product_is_reported_as_well,
);

fn catalog(rules: &[(&str, &str)]) -> Catalog {
    rules
        .iter()
        .map(|(id, exe)| {
            (
                (*id).to_owned(),
                Product {
                    name: None,
                    tokens_per_day: 1,
                    matches: vec![MatchRule {
                        exe: (*exe).to_owned(),
                        args_contain: None,
                    }],
                    rate_confirmed: None,
                },
            )
        })
        .collect()
}

fn products_are_detected_with_their_key_and_gone_once_they_end(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let acad = run(&install(dir.path(), "acad.exe"), &[]);
    let revit = run(&install(dir.path(), "Revit.exe"), &[]);
    let civil = run(&install(dir.path(), "acad"), &["/product", "C3D"]);
    let mech = run(&install(dir.path(), "ACAD.EXE"), &["/product", "ACADM"]);
    let other = run(&install(dir.path(), "notepad.exe"), &["/product", "C3D"]);
    let r = recogniser();
    let Some(mut source) = kind.source() else {
        return;
    };

    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, acad.pid()), Some("acad"));
    assert_eq!(product_of(&running, revit.pid()), Some("revit"));
    assert_eq!(product_of(&running, civil.pid()), Some("civil3d"));
    assert_eq!(product_of(&running, mech.pid()), Some("acadm"));
    assert_eq!(product_of(&running, other.pid()), None);
    for p in [&acad, &revit, &civil, &mech] {
        let reported = running.iter().find(|r| r.key.pid == p.pid()).unwrap();
        assert_eq!(reported.key, key_of(p));
    }
    assert!(running.windows(2).all(|w| w[0].key.pid < w[1].key.pid));

    let (acad_pid, revit_pid) = (acad.pid(), revit.pid());
    acad.end();
    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, acad_pid), None);
    assert_eq!(product_of(&running, revit_pid), Some("revit"));
    assert_eq!(product_of(&running, civil.pid()), Some("civil3d"));

    revit.end();
    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, revit_pid), None);
    assert_eq!(product_of(&running, civil.pid()), Some("civil3d"));
}

fn a_killed_product_is_gone_before_it_is_reaped(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let mut revit = run(&install(dir.path(), "Revit.exe"), &[]);
    let r = recogniser();
    let Some(mut source) = kind.source() else {
        return;
    };
    assert_eq!(
        product_of(&poll(source.as_mut(), &r), revit.pid()),
        Some("revit")
    );

    revit.child.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat_of(revit.pid()).map(|s| s.1) != Some('Z') {
        assert!(Instant::now() < deadline, "no zombie");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Still listed in /proc, as a zombie: not running.
    assert_eq!(product_of(&poll(source.as_mut(), &r), revit.pid()), None);
    assert!(!source.alive(key_of(&revit)));
}

fn a_process_started_between_polls_is_detected_at_the_next_poll(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let exe = install(dir.path(), "maya.exe");
    let r = recogniser();
    let Some(mut source) = kind.source() else {
        return;
    };
    let before = poll(source.as_mut(), &r);
    let maya = run(&exe, &[]);
    assert_eq!(product_of(&before, maya.pid()), None);
    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, maya.pid()), Some("maya"));
    assert_eq!(
        running
            .iter()
            .find(|r| r.key.pid == maya.pid())
            .unwrap()
            .key,
        key_of(&maya)
    );
}

fn a_product_caught_in_the_middle_of_its_exec_is_detected_by_the_next_poll(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let exe = install(dir.path(), "acadlt.exe");
    let r = recogniser();
    let Some(mut source) = kind.source() else {
        return;
    };
    for _ in 0..20 {
        // Polled at once: the first look may land before, inside or after the exec.
        let mut child = start(&exe, "read _", &[]);
        let pid = child.id();
        poll(source.as_mut(), &r);
        wait_exec(pid, &exe);
        assert_eq!(product_of(&poll(source.as_mut(), &r), pid), Some("acadlt"));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

fn alive_is_true_only_for_the_same_process_instance(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let acad = run(&install(dir.path(), "acad.exe"), &[]);
    let key = key_of(&acad);
    // Without any poll first: the agent asks at start-up.
    let Some(source) = kind.source() else {
        return;
    };
    assert!(source.alive(key));
    assert!(!source.alive(ProcessKey {
        started: key.started + 1,
        ..key
    }));
    assert!(!watch::system().alive(ProcessKey {
        started: key.started.wrapping_sub(1),
        ..key
    }));
    assert!(watch::system().alive(key));
    acad.end();
    assert!(!source.alive(key));
}

fn names_longer_than_comm_are_matched_through_the_exe_link(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let name = "AutodeskVeryLongProductName.exe";
    let long = run(&install(dir.path(), name), &[]);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", long.pid())).unwrap();
    assert_eq!(comm.trim_end(), &name[..15], "comm is cut at 15 bytes");
    // Only the full name matches: a rule for the cut name must not.
    let r = Recogniser::new(&catalog(&[("long", name), ("cut", "AutodeskVeryLon")]));
    let Some(mut source) = kind.source() else {
        return;
    };
    assert_eq!(
        product_of(&poll(source.as_mut(), &r), long.pid()),
        Some("long")
    );
}

fn a_deleted_executable_is_still_recognised(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let exe = install(dir.path(), "Inventor.exe");
    let inventor = run(&exe, &[]);
    std::fs::remove_file(&exe).unwrap();
    let link = std::fs::read_link(format!("/proc/{}/exe", inventor.pid())).unwrap();
    assert!(link.to_string_lossy().ends_with(" (deleted)"));
    let Some(mut source) = kind.source() else {
        return;
    };
    assert_eq!(
        product_of(&poll(source.as_mut(), &recogniser()), inventor.pid()),
        Some("inventor")
    );
}

fn classify_sees_the_exe_name_and_joined_args_once_per_instance(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    // A name of its own: a `Roamer.exe` running on the machine must not be counted.
    const EXE: &str = "dmclassify.exe";
    let p = run(&install(dir.path(), EXE), &["/a", "b c"]);
    let seen: std::cell::RefCell<Vec<(String, String)>> = Default::default();
    let calls = Cell::new(0);
    let Some(mut source) = kind.source() else {
        return;
    };
    for _ in 0..5 {
        let running = source
            .poll(&|s: Seen<'_>| {
                calls.set(calls.get() + 1);
                if s.exe == EXE {
                    seen.borrow_mut()
                        .push((s.exe.to_owned(), s.args.to_owned()));
                    Some("navisworks".to_owned())
                } else {
                    None
                }
            })
            .unwrap();
        assert_eq!(product_of(&running, p.pid()), Some("navisworks"));
    }
    // sh's own arguments come first: -c 'read _', then ours.
    assert_eq!(
        *seen.borrow(),
        [(EXE.to_owned(), "-c read _ /a b c".to_owned())]
    );
    // Every other process was classified once too; nothing is asked twice for a steady
    // machine (a few new processes may appear meanwhile).
    let first_poll_calls = calls.get();
    source.poll(&|_| None).unwrap();
    assert!(calls.get() <= first_poll_calls + 20);
}

fn classifications_are_kept_until_forget(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let p = run(&install(dir.path(), "3dsmax.exe"), &[]);
    let Some(mut source) = kind.source() else {
        return;
    };
    let nothing = Recogniser::new(&Catalog::new());
    assert_eq!(product_of(&poll(source.as_mut(), &nothing), p.pid()), None);
    // A new catalog without forget: the remembered answer stands.
    assert_eq!(
        product_of(&poll(source.as_mut(), &recogniser()), p.pid()),
        None
    );
    source.forget();
    assert_eq!(
        product_of(&poll(source.as_mut(), &recogniser()), p.pid()),
        Some("3dsmax")
    );
}

fn not_products_are_never_reported(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let p = run(&install(dir.path(), "AdskLicensingService.exe"), &[]);
    let r = Recogniser::new(&catalog(&[("licensing", "AdskLicensingService.exe")]));
    let Some(mut source) = kind.source() else {
        return;
    };
    assert_eq!(product_of(&poll(source.as_mut(), &r), p.pid()), None);
}

fn a_launcher_that_execs_the_product_is_detected_in_its_turn(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let launcher = install(dir.path(), "launcher");
    let revit = install(dir.path(), "Revit.exe");
    // Waits for a line, then replaces itself with Revit.exe: same pid, same start time.
    let mut p = spawn(
        &launcher,
        "read _; exec \"$1\" -c 'read _'",
        &["launcher", revit.to_str().unwrap()],
    );
    let r = recogniser();
    let Some(mut source) = kind.source_rechecking(4) else {
        return;
    };
    assert_eq!(product_of(&poll(source.as_mut(), &r), p.pid()), None);
    // The poll after the first look re-checks every new process once.
    assert_eq!(product_of(&poll(source.as_mut(), &r), p.pid()), None);

    let key = key_of(&p);
    writeln!(p.stdin.as_mut().unwrap()).unwrap();
    wait_exec(p.pid(), &revit);
    // At 4 re-checks per poll, every process has had its turn after processes/4 polls.
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    let mut polls = 0;
    let running = loop {
        polls += 1;
        let running = poll(source.as_mut(), &r);
        if product_of(&running, p.pid()).is_some() || polls > processes / 4 + 50 {
            break running;
        }
    };
    assert_eq!(
        product_of(&running, p.pid()),
        Some("revit"),
        "{polls} polls"
    );
    assert_eq!(
        running.iter().find(|r| r.key.pid == p.pid()).unwrap().key,
        key
    );
}

#[test]
fn the_system_source_detects_products() {
    let dir = tempfile::tempdir().unwrap();
    let p = run(&install(dir.path(), "Fusion360.exe"), &["--x"]);
    let mut source = watch::system();
    assert_eq!(
        product_of(&poll(source.as_mut(), &recogniser()), p.pid()),
        Some("fusion")
    );
}

/// The pids of `pid`'s children, waiting up to 5 s for there to be `n`.
fn children(pid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children: Vec<u32> =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect();
        if children.len() >= n {
            return children;
        }
        assert!(Instant::now() < deadline, "{pid} has no child");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn a_forked_copy_of_a_product_is_reported_as_well(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    // After a line, forks a subshell (a copy of the product, no exec) that waits for
    // another one.
    let mut acad = spawn(
        &install(dir.path(), "acad.exe"),
        "read _; (read _); read _",
        &[],
    );
    let r = recogniser();
    let Some(mut source) = kind.source() else {
        return;
    };
    assert_eq!(
        product_of(&poll(source.as_mut(), &r), acad.pid()),
        Some("acad")
    );
    writeln!(acad.stdin.as_mut().unwrap()).unwrap();
    let copy = children(acad.pid(), 1)[0];
    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, acad.pid()), Some("acad"));
    assert_eq!(product_of(&running, copy), Some("acad"));
    // The copy leaves at its line; the product stays.
    writeln!(acad.stdin.as_mut().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat_of(copy).is_some() {
        assert!(Instant::now() < deadline, "the copy did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    let running = poll(source.as_mut(), &r);
    assert_eq!(product_of(&running, copy), None);
    assert_eq!(product_of(&running, acad.pid()), Some("acad"));
}

#[test]
fn connector_sees_a_product_start_and_end_at_the_next_poll_without_listing() {
    let Some(mut source) = connector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = install(dir.path(), "acad.exe");
    let r = recogniser();
    poll(&mut source, &r);
    assert_eq!(source.listings(), 1, "the first poll lists /proc");
    for _ in 0..3 {
        let acad = run(&exe, &["/nologo"]);
        let running = poll(&mut source, &r);
        assert_eq!(product_of(&running, acad.pid()), Some("acad"));
        let reported = running.iter().find(|r| r.key.pid == acad.pid()).unwrap();
        assert_eq!(reported.key, key_of(&acad));
        let pid = acad.pid();
        acad.end();
        assert_eq!(product_of(&poll(&mut source, &r), pid), None);
    }
    assert_eq!(source.listings(), 1, "told by events, not by listings");
    assert!(source.subscribed());
}

#[test]
fn connector_sees_a_fork_that_execs_into_a_product_at_the_next_poll() {
    let Some(mut source) = connector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let launcher = install(dir.path(), "launcher");
    let revit = install(dir.path(), "Revit.exe");
    // After a line, forks a copy of itself that waits for another line and then
    // replaces itself with Revit.exe.
    let mut p = spawn(
        &launcher,
        "read _; (read _; exec \"$1\" -c 'read _')",
        &["launcher", revit.to_str().unwrap()],
    );
    let r = recogniser();
    assert_eq!(product_of(&poll(&mut source, &r), p.pid()), None);
    writeln!(p.stdin.as_mut().unwrap()).unwrap();
    let child = children(p.pid(), 1)[0];
    // Seen as the launcher's copy first: examined, not a product.
    assert_eq!(product_of(&poll(&mut source, &r), child), None);
    assert_eq!(product_of(&poll(&mut source, &r), child), None);

    writeln!(p.stdin.as_mut().unwrap()).unwrap();
    wait_exec(child, &revit);
    let running = poll(&mut source, &r);
    assert_eq!(product_of(&running, child), Some("revit"));
    assert_eq!(product_of(&running, p.pid()), None);
    assert_eq!(
        source.listings(),
        1,
        "told by the exec event, not by a listing"
    );
}

#[test]
fn connector_sees_an_exec_that_keeps_the_comm() {
    let Some(mut source) = connector() else {
        return;
    };
    // Both names share their first 15 bytes, all `comm` keeps: the `/proc` listing
    // cannot tell the `exec` happened; the exec event does.
    let dir = tempfile::tempdir().unwrap();
    let launcher = install(dir.path(), "AutodeskProductLauncher");
    let product = install(dir.path(), "AutodeskProductDesign.exe");
    let mut p = spawn(
        &launcher,
        "read _; exec \"$1\" -c 'read _'",
        &["launcher", product.to_str().unwrap()],
    );
    let r = Recogniser::new(&catalog(&[("design", "AutodeskProductDesign.exe")]));
    assert_eq!(product_of(&poll(&mut source, &r), p.pid()), None);
    assert_eq!(product_of(&poll(&mut source, &r), p.pid()), None);
    writeln!(p.stdin.as_mut().unwrap()).unwrap();
    wait_exec(p.pid(), &product);
    assert_eq!(product_of(&poll(&mut source, &r), p.pid()), Some("design"));
}

#[test]
fn connector_lists_proc_again_after_its_queue_overflowed() {
    let Some(source) = connector() else {
        return;
    };
    // The kernel's smallest receive buffer holds a handful of events.
    let mut source = source.receive_buffer(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = install(dir.path(), "acad.exe");
    let r = recogniser();
    poll(&mut source, &r);
    assert_eq!(source.listings(), 1);
    // Fill the queue: each of these is a fork, an exec and an exit.
    for _ in 0..50 {
        Command::new("true").status().unwrap();
    }
    // Its own events find the queue full and are dropped; the socket says ENOBUFS.
    let acad = run(&exe, &[]);
    let running = poll(&mut source, &r);
    assert_eq!(product_of(&running, acad.pid()), Some("acad"));
    assert_eq!(source.listings(), 2, "lost events made the poll list /proc");
    assert!(source.subscribed());
}

#[test]
fn connector_backstop_finds_what_events_never_told() {
    let Some(source) = connector() else {
        return;
    };
    let mut source = source.list_every(3);
    let dir = tempfile::tempdir().unwrap();
    let r = recogniser();
    poll(&mut source, &r);
    assert_eq!(source.listings(), 1);

    // Events lost without a word: the periodic listing finds the product.
    let acad = run(&install(dir.path(), "acad.exe"), &[]);
    // Its exec event is sent just after the exec completes: let it reach the queue.
    std::thread::sleep(Duration::from_millis(50));
    assert!(source.discard_pending_events() > 0);
    assert_eq!(product_of(&poll(&mut source, &r), acad.pid()), None);
    assert_eq!(product_of(&poll(&mut source, &r), acad.pid()), None);
    assert_eq!(product_of(&poll(&mut source, &r), acad.pid()), Some("acad"));
    assert_eq!(source.listings(), 2, "the third poll after a listing lists");

    // A resync lists at the next poll.
    let revit = run(&install(dir.path(), "Revit.exe"), &[]);
    std::thread::sleep(Duration::from_millis(50));
    source.discard_pending_events();
    source.resync();
    let running = poll(&mut source, &r);
    assert_eq!(product_of(&running, revit.pid()), Some("revit"));
    assert_eq!(product_of(&running, acad.pid()), Some("acad"));
    assert_eq!(source.listings(), 3);
}
