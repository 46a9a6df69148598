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
    start_wine();
    exe
}

/// Starts Wine's own services (services.exe, winedevice, rpcss) once, from a command
/// whose output nobody reads: the first `wine` command of a Wine server starts them,
/// and they inherit that command's stdout and stderr — a test reading its output to
/// the end would wait for them, which never end.
fn start_wine() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = Command::new("wine")
            .args(["cmd", "/c", "exit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
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
        mingw_build(
            "sleeper",
            "#include <windows.h>\nint main(void) { Sleep(INFINITE); return 0; }\n",
        )
    });
    copy_as(built, dir, name)
}

/// What the windowed product prints when `WM_CLOSE` reaches it, before it closes.
pub const WINDOW_CLOSE_SEEN: &str = "WM_CLOSE";
/// The exit code of the windowed product closed through its window (`WM_CLOSE`, then
/// `WM_DESTROY`): not 0 or 1, so that neither a crash nor `TerminateProcess` passes
/// for it.
pub const WINDOW_CLOSED_EXIT: i32 = 42;

/// A product with a window, as AutoCAD has: a visible top-level window of its own
/// class that closes on `WM_CLOSE` as a product without unsaved work does, then exits
/// with [`WINDOW_CLOSED_EXIT`]. Prints `ready` once its window shows. Needs an X
/// display (`xvfb-run`).
pub fn window_product_exe(dir: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let built = BUILT.get_or_init(|| mingw_build("windowed", WINDOW_PRODUCT_C));
    copy_as(built, dir, name)
}

/// Its own window class: Wine's builtin classes (`STATIC`) are not registered for a
/// program that loads no comctl32, and a class of ours is what a real product has.
const WINDOW_PRODUCT_C: &str = r#"#include <windows.h>
#include <stdio.h>
static LRESULT CALLBACK proc(HWND w, UINT m, WPARAM wp, LPARAM lp) {
    if (m == WM_CLOSE) { printf("WM_CLOSE\n"); fflush(stdout); DestroyWindow(w); return 0; }
    if (m == WM_DESTROY) { PostQuitMessage(42); return 0; }
    return DefWindowProcW(w, m, wp, lp);
}
int main(void) {
    WNDCLASSW c = {0};
    MSG msg;
    HWND w;
    c.lpfnWndProc = proc;
    c.hInstance = GetModuleHandleW(NULL);
    c.lpszClassName = L"DaymeterTestProduct";
    if (!RegisterClassW(&c)) { printf("RegisterClassW failed: %lu\n", GetLastError()); return 2; }
    w = CreateWindowExW(0, L"DaymeterTestProduct", L"Test product", WS_OVERLAPPEDWINDOW,
                        CW_USEDEFAULT, CW_USEDEFAULT, 320, 200, NULL, NULL, c.hInstance, NULL);
    if (!w) { printf("CreateWindowExW failed: %lu\n", GetLastError()); return 3; }
    ShowWindow(w, SW_SHOW);
    printf("ready\n");
    fflush(stdout);
    while (GetMessageW(&msg, NULL, 0, 0) > 0) { TranslateMessage(&msg); DispatchMessageW(&msg); }
    return (int)msg.wParam;
}
"#;

/// Builds `source` (C) with mingw-w64 into `<temp>/daymeter-<name>-<pid>/<name>.exe`.
fn mingw_build(name: &str, source: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("daymeter-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("a folder for the product program");
    let c = out.join(format!("{name}.c"));
    std::fs::write(&c, source).expect("write the product's source");
    let exe = out.join(format!("{name}.exe"));
    let built = Command::new("x86_64-w64-mingw32-gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .arg("-luser32")
        .output()
        .expect("x86_64-w64-mingw32-gcc (scripts/windows-deps installs mingw-w64)");
    assert!(
        built.status.success(),
        "building the product program {name} failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    exe
}

fn copy_as(built: &Path, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(built, &path).expect("copy the product under its name");
    path
}

/// A product running under Wine, ended (SIGKILL to its Wine process) when dropped.
pub struct WinProduct {
    child: Option<Child>,
    /// What a windowed product prints, line by line.
    lines: Option<std::sync::mpsc::Receiver<String>>,
}

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
        WinProduct {
            child: Some(child),
            lines: None,
        }
    }

    /// Starts a [`window_product_exe`] and waits until its window shows.
    pub fn start_windowed(exe: &Path) -> WinProduct {
        let mut child = crate::spawn_fresh_copy(
            Command::new("wine")
                .arg(exe)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("start the product under wine");
        let stdout = child.stdout.take().expect("the product's stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end().to_owned()).is_err() {
                    break;
                }
            }
        });
        let mut product = WinProduct {
            child: Some(child),
            lines: Some(lines),
        };
        let first = product.next_line(Duration::from_secs(60));
        assert_eq!(
            first.as_deref(),
            Some("ready"),
            "the windowed product did not show its window (is there an X display? run under xvfb-run)"
        );
        product
    }

    /// The product's next line of output, if one comes within `limit`.
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(limit).ok()
    }

    /// The exit code, once the product ends by itself within `limit`.
    pub fn exited_within(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

/// A named pipe of the test's own, so that a test's agent never answers another's
/// helper or `status` (the default, `\\.\pipe\daymeter-agent`, is the service's).
pub fn test_pipe(tag: &str) -> String {
    format!(r"\\.\pipe\daymeter-test-{tag}-{}", std::process::id())
}

/// `daymeter-agent.exe status --json` over the agent's named pipe.
pub fn status_over_pipe(pipe: &str) -> Option<serde_json::Value> {
    let out = wine(&agent_exe(), &["status", "--json", "--socket", pipe]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `daymeter-agent.exe session` (the session helper) under Wine, connected to `pipe`,
/// its log kept line by line; killed when dropped.
pub struct WinHelper {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl WinHelper {
    pub fn start(pipe: &str) -> WinHelper {
        let mut child = Command::new("wine")
            .arg(agent_exe())
            .args(["session", "--socket", pipe])
            .env("DAYMETER_LOG", "warn,daymeter_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the session helper under wine");
        let stderr = child.stderr.take().expect("the helper's log");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("helper: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        WinHelper {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a log line containing every one of `parts`.
    pub fn logged(&mut self, parts: &[&str], limit: Duration) -> String {
        let matches = |l: &str| parts.iter().all(|p| l.contains(p));
        if let Some(l) = self.seen.iter().find(|l| matches(l)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = matches(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the helper did not log {parts:?} within {limit:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for WinHelper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
