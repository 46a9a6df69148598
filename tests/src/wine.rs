//! The Windows agent under Wine, for the tests in `tests/windows_agent.rs`: the
//! cross-built `daymeter-agent.exe` (named by `DAYMETER_WINDOWS_AGENT`, which
//! `scripts/test-windows` sets after building it) run by `wine` in the prefix of
//! `WINEPREFIX` (set up by `scripts/windows-deps`), products that are real Windows
//! programs built here with mingw-w64, and the collector the Linux tests use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::ENROLLMENT_SECRET;

/// Names the cross-built agent.
pub const AGENT_ENV: &str = "DAYMETER_WINDOWS_AGENT";

/// The cross-built agent; panics with what to run when the environment lacks it.
pub fn agent_exe() -> PathBuf {
    let exe = std::env::var_os(AGENT_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{AGENT_ENV} is not set: run scripts/test-windows, which builds the Windows agent and sets up Wine")
    });
    assert!(
        std::env::var_os("WINEPREFIX").is_some(),
        "WINEPREFIX is not set: run scripts/test-windows"
    );
    assert!(exe.is_file(), "{} does not exist", exe.display());
    exe
}

/// A Linux path as Wine's programs name it (`Z:\tmp\…`).
pub fn win_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// `wine PROGRAM ARGS…`, waited for.
pub fn wine(program: &Path, args: &[&str]) -> Output {
    Command::new("wine")
        .arg(program)
        .args(args)
        .env("DAYMETER_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run wine")
}

/// A Windows builtin (`taskkill`, `sc`), waited for.
pub fn wine_builtin(args: &[&str]) -> Output {
    Command::new("wine")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wine")
}

/// A product for the tests: a Windows console program that sleeps until it is ended,
/// built once per test run with mingw-w64 and copied under each product's name.
pub fn product_exe(dir: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("daymeter-sleeper-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("a folder for the product program");
        let source = out.join("sleeper.c");
        std::fs::write(
            &source,
            "#include <windows.h>\nint main(void) { Sleep(INFINITE); return 0; }\n",
        )
        .expect("write the product's source");
        let exe = out.join("sleeper.exe");
        let status = Command::new("x86_64-w64-mingw32-gcc")
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .status()
            .expect("x86_64-w64-mingw32-gcc (scripts/windows-deps installs mingw-w64)");
        assert!(status.success(), "building the product program failed");
        exe
    });
    let path = dir.join(name);
    std::fs::copy(built, &path).expect("copy the product under its name");
    path
}

/// A product running under Wine, ended (SIGKILL to its Wine process) when dropped.
pub struct WinProduct(Option<Child>);

impl WinProduct {
    pub fn start(exe: &Path) -> WinProduct {
        let child = crate::spawn_fresh_copy(
            Command::new("wine")
                .arg(exe)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("start the product under wine");
        WinProduct(Some(child))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WinProduct {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes an agent configuration in `dir` for the Windows agent: the collector, the
/// licence user (so the tests do not depend on Wine's account names), data beside it,
/// a fast poll, only the collector's catalog, and `extra` lines.
pub fn configure(dir: &Path, collector_url: &str, user: &str, extra: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    // TOML literal strings keep the backslashes of Windows paths.
    let text = format!(
        "collector_url = \"{collector_url}\"\nuser = \"{user}\"\ndata_dir = '{}'\npoll_interval = \"200ms\"\ncatalog = {{}}\n{extra}",
        win_path(&dir.join("data")),
    );
    std::fs::write(&config, text).expect("write the agent configuration");
    config
}

/// `daymeter-agent.exe run` under Wine, killed when dropped.
pub struct WinAgent {
    child: Option<Child>,
}

impl WinAgent {
    pub fn start(config: &Path) -> WinAgent {
        let child = Command::new("wine")
            .arg(agent_exe())
            .args(["run", "--config", &win_path(config)])
            .env("DAYMETER_ENROLLMENT_SECRET", ENROLLMENT_SECRET)
            .env("DAYMETER_LOG", "warn,daymeter_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Windows agent under wine");
        WinAgent { child: Some(child) }
    }

    /// Ends the agent as `taskkill /f` does (TerminateProcess: no chance to flush or
    /// say goodbye), by its Windows pid.
    pub fn terminate_process(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let out = wine_builtin(&["taskkill", "/f", "/im", "daymeter-agent.exe"]);
        assert!(
            out.status.success(),
            "taskkill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The Wine process ends with its Windows process.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent outlived taskkill /f"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WinAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
