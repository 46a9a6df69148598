//! The Windows process source, under Windows (Wine in CI): a product started with
//! arguments is recognised by its executable's name and its command line, with its
//! owner's account id and a start time that tells it from a later process on its pid.
#![cfg(windows)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use daymeter_agent::watch::windows::Toolhelp;
use daymeter_agent::watch::{ProcessSource, Running, Seen};

const SLEEPER_ENV: &str = "DAYMETER_TEST_SLEEPER";

/// Run as a child (this test binary copied under a product's name): sleeps.
#[test]
fn sleeper() {
    if std::env::var_os(SLEEPER_ENV).is_some() {
        std::thread::sleep(Duration::from_secs(120));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This test binary copied as `exe`, run with `args` after the ones that make it sleep.
fn product(dir: &std::path::Path, exe: &str, args: &[&str]) -> Killed {
    let path = dir.join(exe);
    std::fs::copy(std::env::current_exe().expect("this test"), &path).expect("the copy");
    Killed(
        Command::new(path)
            .args(["sleeper", "--exact"])
            .args(args)
            .env(SLEEPER_ENV, "1")
            .spawn()
            .expect("the product"),
    )
}

fn poll_until(source: &mut Toolhelp, pred: impl Fn(&[Running]) -> bool) -> Vec<Running> {
    let classify = |seen: Seen<'_>| {
        let exe = seen.exe.to_ascii_lowercase();
        (exe == "dmwatch-acad.exe").then(|| {
            if seen.args.contains("/product C3D") {
                "civil3d".to_owned()
            } else {
                "acad".to_owned()
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = source.poll(&classify).expect("a poll");
        if pred(&running) {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; last poll {running:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_toolset_is_told_by_its_command_line_and_carries_its_owner() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let child = product(dir.path(), "dmwatch-acad.exe", &["/product", "C3D"]);
    let pid = child.0.id();
    let mut source = Toolhelp::new();
    let running = poll_until(&mut source, |r| r.iter().any(|p| p.key.pid == pid));
    let mine = running
        .iter()
        .find(|p| p.key.pid == pid)
        .expect("the product");
    assert_eq!(mine.product, "civil3d");
    assert_eq!(mine.exe.to_ascii_lowercase(), "dmwatch-acad.exe");
    let owner = mine.owner.expect("the owner's account id");
    let accounts = daymeter_agent::accounts::installed_or_memory();
    assert!(
        accounts.login_of(owner).is_some(),
        "the owner {owner} is named"
    );
    assert!(mine.key.started > 1_600_000_000, "seconds since the epoch");
    assert!(source.alive(mine.key));
    let key = mine.key;
    drop(child);
    poll_until(&mut source, |r| r.iter().all(|p| p.key.pid != pid));
    assert!(!source.alive(key), "an ended process is not alive");
}
