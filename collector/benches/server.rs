//! The release `daymeter-collector serve` as the benches run it: a child process on a
//! database of the bench's, its address read from its first line.
//!
//! Each bench uses a part of it (`port` is sync_load's), hence `dead_code`.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub const ENROLLMENT_SECRET: &str = "bench-enrollment-secret-0123456789";
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// The collector process.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
    /// Kept open: the collector's stdout.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    pub fn start(db: &Path, log: &Path) -> Result<Server> {
        // DAYMETER_BENCH_COLLECTOR runs another build of the collector (to compare two
        // builds under one load generator); the default is this workspace's.
        let bin = std::env::var_os("DAYMETER_BENCH_COLLECTOR").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_daymeter-collector")),
            PathBuf::from,
        );
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(format!("sqlite://{}", db.display()))
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("DAYMETER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let base = line.trim().strip_prefix("listening on ").map(str::to_owned);
        let Some(base) = base else {
            let _ = child.kill();
            let _ = child.wait();
            print_log(log);
            bail!("the collector did not say where it listens (stdout: {line:?})");
        };
        let port = base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in {base:?}"))?;
        Ok(Server {
            child,
            base,
            port,
            _stdout: stdout,
        })
    }

    /// SIGTERM, then wait (up to a minute) for the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: `kill` only sends a signal to our own child's pid.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!("sending SIGTERM: {}", std::io::Error::last_os_error());
        }
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                bail!("the collector did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn print_log(log: &Path) {
    if let Ok(text) = fs::read_to_string(log) {
        for line in text.lines().take(20) {
            eprintln!("    | {line}");
        }
    }
}
