//! `replay` throughput, end to end: the real binary over a generated year of sessions,
//! parsing and printing included.
//!
//! ```sh
//! cargo bench -p daymeter-collector --bench replay
//! DAYMETER_BENCH_SESSIONS=100000 cargo bench -p daymeter-collector --bench replay
//! ```
//!
//! The scenario (20,000 users, three products, 2026; see `scenario_gen.rs`) is generated
//! once per size into `target/bench-data/replay-N.json` and reused afterwards; generation
//! is not measured (delete `target/bench-data/` after changing the generator). The binary
//! then runs once to warm up and five times timed, with its stdout redirected to
//! `target/bench-data/replay-N.out.json`. An in-process breakdown through the library
//! (parse and validate, account, write) follows, so a regression can be placed. Goal on
//! the 2-core development machine: 1,000,000 sessions/s end to end.

mod machine;
mod scenario_gen;

use machine::{load_average, machine};
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use daymeter_shared::scenario::Scenario;

const DEFAULT_SESSIONS: usize = 1_000_000;
const USERS: usize = 20_000;
const YEAR: i32 = 2026;
const SEED: u64 = 0xDA7_3E7E5;
const WARM_UP: usize = 1;
const TIMED: usize = 5;
const BREAKDOWN_RUNS: usize = 3;
const GOAL: f64 = 1_000_000.0;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; this target has no filters or options of its own.
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("replay bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> io::Result<ExitCode> {
    let sessions = match std::env::var("DAYMETER_BENCH_SESSIONS") {
        Ok(v) => match v.replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("DAYMETER_BENCH_SESSIONS must be a positive integer, not {v:?}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Err(_) => DEFAULT_SESSIONS,
    };
    let dir = target_dir().join("bench-data");
    fs::create_dir_all(&dir)?;
    let input = dir.join(format!("replay-{sessions}.json"));
    let output = dir.join(format!("replay-{sessions}.out.json"));
    println!(
        "replay bench: {sessions} sessions, {USERS} users, {YEAR}; load average {}",
        load_average()
    );

    // 1. The scenario, generated once per size.
    if input.is_file() {
        println!("  input: reusing {}", input.display());
    } else {
        let started = Instant::now();
        let stats = generate(&input, sessions)?;
        println!(
            "  input: generated {} in {:.2} s: {} records of {} ids ({} open, {} open+closed \
             copy pairs, {} under 5 min, {} left open overnight), {} entitlements",
            input.display(),
            started.elapsed().as_secs_f64(),
            stats.sessions,
            stats.distinct_ids,
            stats.open,
            stats.copies,
            stats.short,
            stats.overnight,
            stats.entitlements,
        );
    }
    let in_bytes = fs::metadata(&input)?.len();
    println!(
        "  input: {:.1} MB, {:.0} bytes per session",
        mb(in_bytes),
        in_bytes as f64 / sessions as f64
    );

    // 2. The real binary, end to end, stdout to a file.
    let bin = env!("CARGO_BIN_EXE_daymeter-collector");
    let mut walls = Vec::with_capacity(TIMED);
    for run in 0..WARM_UP + TIMED {
        let out = File::create(&output)?;
        let before = children_usage();
        let started = Instant::now();
        let result = Command::new(bin)
            .arg("replay")
            .arg(&input)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .output()?;
        let wall = started.elapsed();
        if !result.status.success() {
            eprintln!(
                "{bin} replay {} failed ({}): {}",
                input.display(),
                result.status,
                String::from_utf8_lossy(&result.stderr).trim()
            );
            return Ok(ExitCode::FAILURE);
        }
        let cpu = children_usage().map(|after| {
            after
                .cpu
                .saturating_sub(before.map_or(Duration::ZERO, |b| b.cpu))
        });
        let label = if run < WARM_UP {
            "warm-up".to_string()
        } else {
            format!("run {}", run + 1 - WARM_UP)
        };
        let cpu = cpu.map_or(String::new(), |c| {
            format!(
                ", {:.2} s cpu ({:.2} cores busy)",
                c.as_secs_f64(),
                c.as_secs_f64() / wall.as_secs_f64()
            )
        });
        println!(
            "  {label:>7}: {:.3} s wall{cpu} => {:.2} M sessions/s",
            wall.as_secs_f64(),
            sessions as f64 / wall.as_secs_f64() / 1e6
        );
        if run >= WARM_UP {
            walls.push(wall);
        }
    }
    walls.sort();
    let median = walls[walls.len() / 2];
    let best = walls[0];
    let peak_rss = children_usage().map(|u| u.max_rss_kib);

    let printed = fs::read(&output)?;
    let rows = printed
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"  {"))
        .count();
    let totals = totals_of(&printed);

    // 3. Where the time goes, in process.
    let mut read = Vec::with_capacity(BREAKDOWN_RUNS);
    let mut parse = Vec::with_capacity(BREAKDOWN_RUNS);
    let mut account = Vec::with_capacity(BREAKDOWN_RUNS);
    let mut write = Vec::with_capacity(BREAKDOWN_RUNS);
    let mut same_bytes = true;
    for _ in 0..BREAKDOWN_RUNS {
        let t = Instant::now();
        let bytes = fs::read(&input)?;
        read.push(t.elapsed());
        let t = Instant::now();
        let scenario = match Scenario::parse(&bytes) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("the generated scenario is invalid: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        parse.push(t.elapsed());
        let t = Instant::now();
        let report = scenario.account();
        account.push(t.elapsed());
        let mut buf = Vec::with_capacity(printed.len());
        let t = Instant::now();
        report.write_json(&mut buf)?;
        write.push(t.elapsed());
        same_bytes &= buf == printed;
    }
    let (read, parse, account, write) = (
        median_of(read),
        median_of(parse),
        median_of(account),
        median_of(write),
    );
    if !same_bytes {
        eprintln!("the binary's output differs from the library's report");
        return Ok(ExitCode::FAILURE);
    }

    // 4. The summary.
    let rate = sessions as f64 / median.as_secs_f64();
    let rss = peak_rss.map_or("n/a".to_string(), |k| {
        format!("{:.0} MB", k as f64 * 1024.0 / 1e6)
    });
    let (cores, model) = machine();
    println!();
    println!(
        "replay: {sessions} sessions, {:.1} MB in, {rows} usage days out ({:.1} MB{}); \
         median {:.3} s => {:.2} M sessions/s (best {:.3} s => {:.2} M sessions/s); \
         {:.0} MB/s in; peak RSS {rss}; breakdown (in process, median of {BREAKDOWN_RUNS}): \
         parse+validate {:.3} s, account {:.3} s, write {:.3} s (read {:.3} s); \
         machine: {cores} cores, {model}; load average {}",
        mb(in_bytes),
        mb(printed.len() as u64),
        totals.map_or(String::new(), |t| format!("; {t}")),
        median.as_secs_f64(),
        rate / 1e6,
        best.as_secs_f64(),
        sessions as f64 / best.as_secs_f64() / 1e6,
        mb(in_bytes) / median.as_secs_f64(),
        parse.as_secs_f64(),
        account.as_secs_f64(),
        write.as_secs_f64(),
        read.as_secs_f64(),
        load_average(),
    );
    println!(
        "goal: {:.2} M sessions/s end to end: {} ({:.0}% of goal)",
        GOAL / 1e6,
        if rate >= GOAL { "met" } else { "NOT met" },
        rate / GOAL * 100.0
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the scenario next to its final name, then renames it, so an interrupted run
/// never leaves a truncated file that a later run would reuse.
fn generate(path: &Path, sessions: usize) -> io::Result<scenario_gen::Stats> {
    let partial = path.with_extension("json.partial");
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&partial)?);
    let stats = scenario_gen::generate(
        scenario_gen::Params {
            sessions,
            users: USERS,
            year: YEAR,
            seed: SEED,
        },
        &mut w,
    )?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&partial, path)?;
    Ok(stats)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if absolute, else the first ancestor of
/// this executable that holds Cargo's `CACHEDIR.TAG` (`target/release/deps/replay-…`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    exe.ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .or_else(|| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    max_rss_kib: i64,
}

/// User plus system time of all waited-for children, and the largest child's peak RSS.
fn children_usage() -> Option<Usage> {
    // SAFETY: `getrusage` only writes the `rusage` it is given; all-zero is a valid one.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `ru` is a live, exclusive `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        // Linux reports kibibytes.
        max_rss_kib: ru.ru_maxrss,
    })
}

/// `"tokens": …, "days_used": …` from the printed report.
fn totals_of(printed: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(printed).ok()?;
    let at = text.rfind("\"totals\":")?;
    let value: serde_json::Value = serde_json::from_str(
        text[at + "\"totals\":".len()..]
            .trim_end()
            .strip_suffix('}')?,
    )
    .ok()?;
    Some(format!(
        "{} tokens, {} days used",
        value.get("tokens")?,
        value.get("days_used")?
    ))
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
