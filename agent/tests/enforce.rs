//! The Linux closer against real processes: asking closes a process that obeys SIGTERM,
//! never ends one that asks its user to save first, killing does, and a pid that now
//! belongs to another process instance is left alone.

#![cfg(target_os = "linux")]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daymeter_agent::enforce::{Closer, Owner, Signals};
use daymeter_agent::watch::ProcessKey;

/// A spawned child and its key, killed when dropped (a failed test leaves nothing).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn spawn(script: &str) -> Proc {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        Proc(child)
    }

    fn key(&self) -> ProcessKey {
        let pid = self.0.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after = &stat[stat.rfind(')').expect(")") + 1..];
        let started = after.split_whitespace().nth(19).expect("field 22");
        ProcessKey {
            pid,
            started: started.parse().expect("a number"),
        }
    }

    /// The exit signal once it ended within `within`, `None` if it still runs.
    fn ended(&mut self, within: Duration) -> Option<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status.signal());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the shell to print its first line (its traps are set by then).
    fn ready(&mut self) -> String {
        let mut out = self.0.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut byte = [0u8];
        while out.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        self.0.stdout = Some(out);
        String::from_utf8(line).expect("utf-8")
    }
}

/// "Asks to save": traps SIGTERM, says so, keeps running.
const ASKS_TO_SAVE: &str = r#"trap 'echo asked' TERM; echo ready; while :; do sleep 0.1; done"#;

#[test]
fn a_process_that_obeys_sigterm_is_closed_by_asking() {
    let mut p = Proc::spawn("echo ready; exec sleep 60");
    p.ready();
    Signals
        .ask_to_close(p.key(), Owner::unknown())
        .expect("asked");
    assert_eq!(p.ended(Duration::from_secs(5)), Some(Some(libc::SIGTERM)));
}

#[test]
fn a_process_that_asks_to_save_keeps_running_after_the_ask_and_kill_ends_it() {
    let mut p = Proc::spawn(ASKS_TO_SAVE);
    assert_eq!(p.ready(), "ready");
    let key = p.key();
    Signals.ask_to_close(key, Owner::unknown()).expect("asked");
    assert_eq!(p.ready(), "asked", "the process saw the ask");
    assert_eq!(
        p.ended(Duration::from_millis(500)),
        None,
        "never killed by an ask"
    );
    Signals.kill(key).expect("killed");
    assert_eq!(p.ended(Duration::from_secs(5)), Some(Some(libc::SIGKILL)));
}

#[test]
fn a_pid_that_belongs_to_another_process_instance_is_not_signalled() {
    let mut p = Proc::spawn("echo ready; exec sleep 60");
    p.ready();
    let mut key = p.key();
    key.started += 1;
    let e = Signals
        .ask_to_close(key, Owner::unknown())
        .expect_err("not that process");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    let e = Signals.kill(key).expect_err("not that process");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert_eq!(p.ended(Duration::from_millis(300)), None);
}

#[test]
fn a_process_that_ended_is_not_found() {
    let mut p = Proc::spawn("exit 0");
    let key = ProcessKey {
        pid: p.0.id(),
        started: 0,
    };
    p.0.wait().expect("wait");
    let e = Signals
        .ask_to_close(key, Owner::unknown())
        .expect_err("gone");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
}
