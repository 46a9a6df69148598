//! Sync load, end to end: the real `serve` binary over loopback HTTP, driven by simulated
//! agents, every reply durable and the accounting up to date.
//!
//! ```sh
//! cargo bench -p daymeter-collector --bench sync_load
//! DAYMETER_BENCH_SECONDS=3 cargo bench -p daymeter-collector --bench sync_load
//! DAYMETER_BENCH_SHAPE=5x200 cargo bench -p daymeter-collector --bench sync_load
//! ```
//!
//! The collector runs on a fresh SQLite file in a temporary directory. The bench imports
//! a catalog (acad 7, revit 10, civil3d 10 tokens a day), then runs two shapes one after
//! the other: 50-session batches over 50 connections, and 5-session batches (a real
//! agent's sync) over 200 connections. Each connection is one enrolled agent of its own
//! user (`user-0042`) with its own HTTP/1.1 client holding exactly one keep-alive
//! connection; it loops: build a batch of fresh closed sessions that continue its user's
//! working history (Europe/Berlin, offsets as written by the agent, weekdays, short
//! sessions, overnight ones, idle stretches), POST /v1/sync, check 200 and that every id
//! is in `accepted`, record the latency (building the body is not measured). A warm-up
//! (2 s) precedes the timed phase (10 s; `DAYMETER_BENCH_SECONDS` overrides). Generator and
//! collector share the machine's cores.
//!
//! After SIGTERM (which must exit 0) the database is opened read-only and checked: it
//! holds exactly the sessions acknowledged, user by user; every user's ledger adds up to
//! their usage days; and for a sample of users the stored usage days equal what `replay`
//! computes from their stored sessions. Goals on the 2-core development machine:
//! ≥ 150,000 sessions/s with 50-session batches, ≥ 30,000 sessions/s with 5-session
//! batches, p99 < 50 ms for both (anchor: aw-server-rust ingests 135,000–156,000 events/s
//! in 50-event batches over 50 connections, p99 ~30 ms).

mod machine;
mod server;

/// The collector's allocator: glibc's malloc and free were a sixth of the generator's
/// time, and the generator shares the collector's cores.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use machine::{load_average, machine};
use server::{ADMIN_TOKEN, ENROLLMENT_SECRET, Server, print_log};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, Utc, Weekday};
use chrono_tz::{Europe::Berlin, Tz};
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;

const DEFAULT_SECONDS: f64 = 10.0;
const WARM_UP: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CATALOG: &[(&str, &str, u64)] = &[
    ("acad", "AutoCAD", 7),
    ("revit", "Revit", 10),
    ("civil3d", "Civil 3D", 10),
];
/// Users whose stored usage days are compared with `replay`, per shape: first and last.
const REPLAY_SAMPLE: usize = 2;
const P99_GOAL_MS: f64 = 50.0;

/// A load shape: sessions per sync, concurrent connections (one agent each), goal.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    connections: usize,
    goal: f64,
    what: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        batch: 50,
        connections: 50,
        goal: 150_000.0,
        what: "50-session batches over 50 connections",
    },
    Shape {
        batch: 5,
        connections: 200,
        goal: 30_000.0,
        what: "5-session batches over 200 connections",
    },
];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; this target has no filters or options of its own.
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sync_load bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let seconds = match std::env::var("DAYMETER_BENCH_SECONDS") {
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => s,
            _ => bail!("DAYMETER_BENCH_SECONDS must be a positive number, not {v:?}"),
        },
        Err(_) => DEFAULT_SECONDS,
    };
    let timed = Duration::from_secs_f64(seconds);
    let shapes: Vec<Shape> = match std::env::var("DAYMETER_BENCH_SHAPE") {
        Ok(v) => {
            let picked: Vec<Shape> = SHAPES
                .iter()
                .copied()
                .filter(|s| v == format!("{}x{}", s.batch, s.connections))
                .collect();
            if picked.is_empty() {
                bail!("DAYMETER_BENCH_SHAPE must be 50x50 or 5x200, not {v:?}");
            }
            picked
        }
        Err(_) => SHAPES.to_vec(),
    };
    let (cores, model) = machine();
    println!(
        "sync_load bench: {:.0} s timed + {:.0} s warm-up per shape; machine: {cores} cores, \
         {model}; load average {}",
        timed.as_secs_f64(),
        WARM_UP.as_secs_f64(),
        load_average()
    );

    let dir = std::env::temp_dir().join(format!("daymeter-sync-load-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("bench.db");
    let outcome = bench(&dir, &db, &shapes, timed);
    if outcome.is_ok() && std::env::var_os("DAYMETER_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&dir);
    } else {
        eprintln!("  kept {} for inspection", dir.display());
    }
    outcome
}

fn bench(dir: &Path, db: &Path, shapes: &[Shape], timed: Duration) -> Result<ExitCode> {
    // 1. The real binary on a fresh database.
    let log = dir.join("collector.log");
    let mut server = Server::start(db, &log)?;
    println!(
        "  collector: pid {} at {}, db {} ({})",
        server.child.id(),
        server.base,
        db.display(),
        fs_type(dir)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let results = runtime.block_on(drive_all(&server, shapes, timed));
    drop(runtime);

    // 2. SIGTERM drains and exits 0.
    let stopped = Instant::now();
    let status = server.stop()?;
    println!(
        "  collector: SIGTERM -> {status} after {:.2} s",
        stopped.elapsed().as_secs_f64()
    );
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            print_log(&log);
            return Err(e);
        }
    };
    let mut failed = false;
    if !status.success() {
        eprintln!("the collector did not exit 0 on SIGTERM: {status}");
        print_log(&log);
        failed = true;
    }
    let log_lines = fs::read_to_string(&log).map_or(0, |l| l.lines().count());
    if log_lines > 0 {
        println!("  collector: {log_lines} lines of warnings or errors in its log:");
        print_log(&log);
    }

    // 3. What the collector holds: exactly what it acknowledged, accounted.
    let checked = Instant::now();
    let verdict = verify(db, &results);
    let db_bytes: u64 = ["bench.db", "bench.db-wal"]
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    match &verdict {
        Ok(v) => println!(
            "  verified in {:.2} s: {} sessions stored = {} acknowledged ({} users, each exact); \
             {} usage days, {} tokens, ledger = usage days for every user; {} users' usage days \
             = replay of their stored sessions ({} sessions, {} days); database {:.0} MB",
            checked.elapsed().as_secs_f64(),
            v.stored,
            v.acknowledged,
            v.users,
            v.usage_days,
            v.tokens,
            v.replayed_users,
            v.replayed_sessions,
            v.replayed_days,
            db_bytes as f64 / 1e6,
        ),
        Err(e) => {
            eprintln!("verification FAILED: {e:#}");
            failed = true;
        }
    }

    // 4. The summary and the goals.
    println!();
    for r in &results {
        let s = &r.timed;
        println!(
            "sync {:>2}x{:<3} ({}): {:.0} sessions/s, {:.0} requests/s over {:.2} s; latency p50 \
             {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} errors; {} TCP connections; \
             cpu: collector {:.2} cores (db writer {:.2}), load generator {:.2} cores",
            r.shape.batch,
            r.shape.connections,
            r.shape.what,
            s.sessions_per_s(),
            s.requests_per_s(),
            s.wall.as_secs_f64(),
            s.percentile_ms(0.50),
            s.percentile_ms(0.90),
            s.percentile_ms(0.99),
            s.percentile_ms(1.0),
            s.errors,
            r.connections
                .map_or("n/a".to_string(), |n: usize| n.to_string()),
            r.cpu.server,
            r.cpu.writer,
            r.cpu.generator,
        );
    }
    for r in &results {
        let rate = r.timed.sessions_per_s();
        let p99 = r.timed.percentile_ms(0.99);
        println!(
            "goal: >= {:.0} sessions/s with {}: {} ({:.0}% of goal)",
            r.shape.goal,
            r.shape.what,
            if rate >= r.shape.goal {
                "met"
            } else {
                "NOT met"
            },
            rate / r.shape.goal * 100.0
        );
        println!(
            "goal: p99 < {P99_GOAL_MS:.0} ms with {}: {} (p99 {p99:.1} ms)",
            r.shape.what,
            if p99 < P99_GOAL_MS { "met" } else { "NOT met" },
        );
    }
    let errors: u64 = results
        .iter()
        .map(|r| r.timed.errors + r.warm_up.errors)
        .sum();
    if errors > 0 {
        eprintln!(
            "{errors} syncs failed; the first: {}",
            first_error(&results)
        );
        failed = true;
    }
    println!(
        "machine: {} cores, {}; load average {}",
        machine().0,
        machine().1,
        load_average()
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One shape's outcome.
struct ShapeResult {
    shape: Shape,
    warm_up: PhaseStats,
    timed: PhaseStats,
    /// Established TCP connections to the collector, sampled in the timed phase.
    connections: Option<usize>,
    cpu: Cpu,
    /// Sessions acknowledged per user, warm-up included.
    acked: BTreeMap<String, u64>,
}

#[derive(Default, Clone, Copy)]
struct Cpu {
    server: f64,
    writer: f64,
    generator: f64,
}

async fn drive_all(server: &Server, shapes: &[Shape], timed: Duration) -> Result<Vec<ShapeResult>> {
    import_catalog(&server.base).await?;
    let mut results = Vec::new();
    let mut first_agent = 0;
    for &shape in shapes {
        // Enrol: one agent (device) per connection, each its own user.
        let enrolled = Instant::now();
        let mut agents = Vec::with_capacity(shape.connections);
        let mut tasks = Vec::with_capacity(shape.connections);
        for i in first_agent..first_agent + shape.connections {
            let base = server.base.clone();
            tasks.push(tokio::spawn(async move { Agent::enroll(i, &base).await }));
        }
        for t in tasks {
            agents.push(t.await??);
        }
        first_agent += shape.connections;
        println!(
            "  shape {}x{}: enrolled {} agents in {:.2} s",
            shape.batch,
            shape.connections,
            agents.len(),
            enrolled.elapsed().as_secs_f64()
        );

        let (agents, warm_up) = phase(agents, &server.base, shape.batch, WARM_UP).await;
        println!(
            "    warm-up: {:.0} sessions/s, {:.0} requests/s over {:.2} s, p50 {:.1} ms, \
             p99 {:.1} ms, {} errors",
            warm_up.sessions_per_s(),
            warm_up.requests_per_s(),
            warm_up.wall.as_secs_f64(),
            warm_up.percentile_ms(0.50),
            warm_up.percentile_ms(0.99),
            warm_up.errors
        );

        let before = CpuSample::take(server.child.id());
        let sampled = Arc::new(std::sync::Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (sampled, done, port) = (sampled.clone(), done.clone(), server.port);
            tokio::spawn(async move {
                tokio::time::sleep(timed / 2).await;
                if !done.load(Ordering::Relaxed)
                    && let Ok(mut s) = sampled.lock()
                {
                    *s = established_to(port);
                }
            })
        };
        let (agents, timed_stats) = phase(agents, &server.base, shape.batch, timed).await;
        done.store(true, Ordering::Relaxed);
        let after = CpuSample::take(server.child.id());
        watcher.abort();
        let connections = sampled.lock().ok().and_then(|s| *s);
        let cpu = match (before, after) {
            (Some(b), Some(a)) => a.since(&b),
            _ => Cpu::default(),
        };
        println!(
            "    timed:   {:.0} sessions/s, {:.0} requests/s over {:.2} s, p50 {:.1} ms, \
             p99 {:.1} ms, {} errors",
            timed_stats.sessions_per_s(),
            timed_stats.requests_per_s(),
            timed_stats.wall.as_secs_f64(),
            timed_stats.percentile_ms(0.50),
            timed_stats.percentile_ms(0.99),
            timed_stats.errors
        );
        let acked = agents.iter().map(|a| (a.user.clone(), a.acked)).collect();
        // Dropping the agents closes their connections before the next shape.
        drop(agents);
        results.push(ShapeResult {
            shape,
            warm_up,
            timed: timed_stats,
            connections,
            cpu,
            acked,
        });
    }
    Ok(results)
}

/// Every agent syncs batches back to back until `length` has passed since the common start.
async fn phase(
    agents: Vec<Agent>,
    base: &str,
    batch: usize,
    length: Duration,
) -> (Vec<Agent>, PhaseStats) {
    // Parsed once: reqwest parses a URL given as text on every request.
    let url = match reqwest::Url::parse(&format!("{base}/v1/sync")) {
        Ok(url) => url,
        Err(e) => {
            let stats = PhaseStats {
                errors: 1,
                first_error: Some(format!("sync URL: {e}")),
                ..PhaseStats::default()
            };
            return (agents, stats);
        }
    };
    let start = Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|mut agent| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut stats = PhaseStats::default();
                while Instant::now() < deadline {
                    let (body, ids) = agent.batch(batch);
                    let sent = Instant::now();
                    let result = agent.sync(&url, body, &ids).await;
                    let latency = sent.elapsed();
                    stats.requests += 1;
                    match result {
                        Ok(()) => {
                            stats.latencies.push(latency);
                            stats.sessions += ids.len() as u64;
                            agent.acked += ids.len() as u64;
                        }
                        Err(e) => {
                            stats.errors += 1;
                            if stats.first_error.is_none() {
                                stats.first_error = Some(format!("{}: {e:#}", agent.user));
                            }
                        }
                    }
                }
                (agent, stats, start.elapsed())
            })
        })
        .collect();
    let mut agents = Vec::with_capacity(tasks.len());
    let mut total = PhaseStats::default();
    for t in tasks {
        match t.await {
            Ok((agent, stats, finished)) => {
                agents.push(agent);
                total.merge(stats);
                total.wall = total.wall.max(finished);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("agent task: {e}"));
            }
        }
    }
    total.latencies.sort_unstable();
    (agents, total)
}

#[derive(Default)]
struct PhaseStats {
    requests: u64,
    sessions: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
    /// From the common start until the last agent's last reply.
    wall: Duration,
}

impl PhaseStats {
    fn merge(&mut self, other: PhaseStats) {
        self.requests += other.requests;
        self.sessions += other.sessions;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    fn sessions_per_s(&self) -> f64 {
        self.sessions as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn requests_per_s(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile of the successful syncs' latencies (sorted), in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((p * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }
}

fn first_error(results: &[ShapeResult]) -> String {
    results
        .iter()
        .flat_map(|r| [&r.warm_up.first_error, &r.timed.first_error])
        .find_map(|e| e.clone())
        .unwrap_or_default()
}

/// A simulated agent: one device of one user, with its own single-connection client.
struct Agent {
    index: usize,
    user: String,
    token: String,
    client: reqwest::Client,
    rng: u64,
    /// Where the user's working history continues (Berlin wall clock).
    cursor: NaiveDateTime,
    zone: BerlinClock,
    seq: u64,
    acked: u64,
}

#[derive(Deserialize)]
struct Enrolled {
    device_token: String,
}

#[derive(Deserialize)]
struct SyncReply<'a> {
    #[serde(borrow)]
    accepted: Vec<Cow<'a, str>>,
    #[serde(default)]
    rejected: Vec<serde_json::Value>,
}

impl Agent {
    async fn enroll(index: usize, base: &str) -> Result<Agent> {
        // One client per agent, at most one idle connection: as many TCP connections as
        // agents, each kept alive across syncs.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building an HTTP client")?;
        let reply = client
            .post(format!("{base}/v1/enroll"))
            .json(&serde_json::json!({
                "enrollment_secret": ENROLLMENT_SECRET,
                "hostname": format!("ws-{index:04}"),
                "os": "windows 11",
                "agent_version": "0.1.0",
            }))
            .send()
            .await
            .context("enrolling")?;
        let status = reply.status();
        let body = reply.bytes().await?;
        if status != reqwest::StatusCode::OK {
            bail!(
                "enrolling ws-{index:04}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let enrolled: Enrolled = serde_json::from_slice(&body)?;
        let mut rng =
            0x9E37_79B9_7F4A_7C15_u64 ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED69);
        let jitter = next(&mut rng) % 90;
        Ok(Agent {
            index,
            user: format!("user-{index:04}"),
            token: enrolled.device_token,
            client,
            rng,
            // Monday 2 January 1950, between 07:30 and 09:00. A user's history moves on
            // about 4 sessions a working day, so a fast run writes decades of it (~40,000
            // sessions a user in 12 s of 50x50): it must stay in the past, where the
            // collector accepts it (it refuses instants past its clock as `clock_ahead`).
            cursor: NaiveDate::from_ymd_opt(1950, 1, 2)
                .and_then(|d| d.and_hms_opt(7, 30, 0))
                .ok_or_else(|| anyhow!("start date"))?
                + TimeDelta::minutes(jitter as i64),
            zone: BerlinClock::default(),
            seq: 0,
            acked: 0,
        })
    }

    /// The next sync body and its session ids: fresh closed sessions continuing the
    /// user's history.
    fn batch(&mut self, n: usize) -> (String, Vec<String>) {
        let mut body = String::with_capacity(64 + n * 330);
        let mut ids = Vec::with_capacity(n);
        body.push_str(r#"{"user":""#);
        body.push_str(&self.user);
        body.push_str(r#"","agent_time":""#);
        stamp(&mut body, &Utc::now().fixed_offset());
        body.push_str(r#"","sessions":["#);
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            ids.push(self.session(&mut body));
        }
        body.push_str("]}");
        (body, ids)
    }

    /// Appends one session (JSON) to `out` and returns its id.
    fn session(&mut self, out: &mut String) -> String {
        self.next_workday_if_late();
        let r = next(&mut self.rng);
        let product = match r % 100 {
            0..60 => "acad",
            60..85 => "revit",
            _ => "civil3d",
        };
        let r = next(&mut self.rng);
        let minutes = match r % 100 {
            // Opened and closed again: free under min_session.
            0..12 => 1 + (r >> 8) % 4,
            // Left running overnight, closed the next morning.
            12..16 => {
                let next_morning = (self.cursor.date() + chrono::Days::new(1))
                    .and_hms_opt(8, 0, 0)
                    .unwrap_or(self.cursor);
                ((next_morning - self.cursor).num_minutes().max(60) as u64) + (r >> 8) % 60
            }
            _ => 15 + (r >> 8) % 225,
        };
        let start = self.zone.at(self.cursor);
        let end = self.zone.after(start, minutes as i64);
        self.seq += 1;
        let ms = start.timestamp_millis() as u64;
        // UUID v7 layout: start in ms, then the agent and a counter (unique per run).
        let mut id = String::with_capacity(36);
        hex(&mut id, ms >> 16, 8);
        id.push('-');
        hex(&mut id, ms & 0xffff, 4);
        id.push_str("-7");
        hex(&mut id, self.index as u64 & 0xfff, 3);
        id.push('-');
        hex(&mut id, 0x8000 | ((self.seq >> 48) & 0x3fff), 4);
        id.push('-');
        hex(&mut id, self.seq & 0xffff_ffff_ffff, 12);
        out.push_str(r#"{"id":""#);
        out.push_str(&id);
        out.push_str(r#"","product":""#);
        out.push_str(product);
        out.push_str(r#"","version":"2026","start":""#);
        stamp(out, &start);
        out.push_str(r#"","end":""#);
        stamp(out, &end);
        out.push_str(r#"","last_seen":""#);
        stamp(out, &end);
        out.push_str(r#"","tz":"Europe/Berlin","suspended":[],"idle":["#);
        // A quarter of the longer sessions sat idle for a while.
        if minutes >= 60 && next(&mut self.rng).is_multiple_of(4) {
            let from = self
                .zone
                .after(start, 20 + (next(&mut self.rng) % 20) as i64);
            let to = self
                .zone
                .after(from, 15 + (next(&mut self.rng) % 30) as i64);
            out.push_str("[\"");
            stamp(out, &from);
            out.push_str("\",\"");
            stamp(out, &to.min(end));
            out.push_str("\"]");
        }
        out.push_str("]}");
        let gap = 2 + next(&mut self.rng) % 45;
        self.cursor = end.naive_local() + TimeDelta::minutes(gap as i64);
        id
    }

    /// After 18:30 (or before 07:00) the user continues on the next working day; one
    /// weekend in ten is worked.
    fn next_workday_if_late(&mut self) {
        let hour = chrono::Timelike::hour(&self.cursor);
        let minute = chrono::Timelike::minute(&self.cursor);
        let late = hour > 18 || (hour == 18 && minute >= 30);
        if !late && hour >= 7 {
            return;
        }
        let mut day = self.cursor.date();
        if late {
            day = day + chrono::Days::new(1);
        }
        while matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
            && !next(&mut self.rng).is_multiple_of(10)
        {
            day = day + chrono::Days::new(1);
        }
        let minutes = 7 * 60 + 30 + next(&mut self.rng) % 90;
        self.cursor = day
            .and_hms_opt(0, 0, 0)
            .map_or(self.cursor, |d| d + TimeDelta::minutes(minutes as i64));
    }

    /// POST /v1/sync; Ok once the reply is 200 and every id is in `accepted`.
    async fn sync(&self, url: &reqwest::Url, body: String, ids: &[String]) -> Result<()> {
        let reply = self
            .client
            .post(url.clone())
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = reply.status();
        let bytes = reply.bytes().await?;
        if status != reqwest::StatusCode::OK {
            bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        let parsed: SyncReply<'_> = serde_json::from_slice(&bytes)?;
        if !parsed.rejected.is_empty() {
            bail!("rejected: {:?}", parsed.rejected);
        }
        let same_order = parsed.accepted.len() == ids.len()
            && parsed.accepted.iter().zip(ids).all(|(a, b)| a == b);
        if !same_order {
            let accepted: HashSet<&str> = parsed.accepted.iter().map(|a| &**a).collect();
            if let Some(missing) = ids.iter().find(|id| !accepted.contains(id.as_str())) {
                bail!("session {missing} is not in `accepted`");
            }
        }
        Ok(())
    }
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A Berlin wall-clock time; one in the spring-forward gap moves on by an hour.
fn berlin(local: NaiveDateTime) -> DateTime<Tz> {
    use chrono::TimeZone;
    Berlin
        .from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            Berlin
                .from_local_datetime(&(local + TimeDelta::hours(1)))
                .earliest()
        })
        .unwrap_or_else(|| Berlin.from_utc_datetime(&local))
}

/// Appends an instant as the agent writes it (RFC 3339 with the offset in force:
/// `2026-03-02T09:15:00+01:00`), through the shared formatter: the generator shares the
/// collector's cores, and chrono's format strings were a third of its time.
fn stamp(out: &mut String, t: &DateTime<FixedOffset>) {
    daymeter_shared::time::with_instant_text(t, |text| out.push_str(text));
}

/// `value` as `digits` lowercase hex digits.
fn hex(out: &mut String, value: u64, digits: u32) {
    for k in (0..digits).rev() {
        let nibble = ((value >> (4 * k)) & 0xf) as u32;
        out.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
}

/// Berlin's offsets, looked up once per local date: a session's instants are in the
/// offset in force at each of them, as an agent writes them, without asking chrono-tz
/// for every instant (its lookups were a tenth of the generator's time).
#[derive(Default)]
struct BerlinClock {
    /// The last local date looked up and its offsets at its start and end (they differ
    /// on the two days a year the clocks change).
    day: Option<(NaiveDate, FixedOffset, FixedOffset)>,
}

impl BerlinClock {
    /// A Berlin wall-clock time as an instant.
    fn at(&mut self, local: NaiveDateTime) -> DateTime<FixedOffset> {
        let date = local.date();
        let (first, last) = match self.day {
            Some((d, first, last)) if d == date => (first, last),
            _ => {
                let offset = |t: NaiveDateTime| *berlin(t).offset();
                let first = chrono::Offset::fix(&offset(date.and_time(chrono::NaiveTime::MIN)));
                let last = date
                    .and_hms_opt(23, 59, 59)
                    .map_or(first, |t| chrono::Offset::fix(&offset(t)));
                self.day = Some((date, first, last));
                (first, last)
            }
        };
        if first == last {
            return DateTime::from_naive_utc_and_offset(local - first, first);
        }
        berlin(local).fixed_offset()
    }

    /// `minutes` after `t`, in the offset in force then.
    fn after(&mut self, t: DateTime<FixedOffset>, minutes: i64) -> DateTime<FixedOffset> {
        let utc = t.naive_utc() + TimeDelta::minutes(minutes);
        let guess = utc + *t.offset();
        let at = self.at(guess);
        if at.naive_utc() == utc {
            at
        } else {
            // Across a change of the clocks: the offset in force at that instant.
            use chrono::TimeZone;
            Berlin.from_utc_datetime(&utc).fixed_offset()
        }
    }
}

async fn import_catalog(base: &str) -> Result<()> {
    let catalog: serde_json::Map<String, serde_json::Value> = CATALOG
        .iter()
        .map(|(id, name, rate)| {
            (
                (*id).to_string(),
                serde_json::json!({ "name": name, "tokens_per_day": rate }),
            )
        })
        .collect();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let reply = client
        .post(format!("{base}/v1/admin/import"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "catalog": catalog }))
        .send()
        .await
        .context("importing the catalog")?;
    let status = reply.status();
    let body = reply.text().await?;
    if status != reqwest::StatusCode::OK {
        bail!("importing the catalog: {status}: {body}");
    }
    Ok(())
}

/// CPU time of the collector (all threads and its db writer) and of this process.
struct CpuSample {
    at: Instant,
    server: f64,
    writer: f64,
    generator: f64,
}

impl CpuSample {
    fn take(pid: u32) -> Option<CpuSample> {
        let server = proc_cpu(&format!("/proc/{pid}/stat"))?;
        let mut writer = 0.0;
        for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("daymeter-db") {
                writer += proc_cpu(&task.path().join("stat").to_string_lossy()).unwrap_or(0.0);
            }
        }
        // SAFETY: `getrusage` only writes the `rusage` it is given; all-zero is a valid one.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `ru` is a live, exclusive `rusage`.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(CpuSample {
            at: Instant::now(),
            server,
            writer,
            generator: tv(ru.ru_utime) + tv(ru.ru_stime),
        })
    }

    /// Cores busy on average between `before` and `self`.
    fn since(&self, before: &CpuSample) -> Cpu {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        Cpu {
            server: (self.server - before.server) / wall,
            writer: (self.writer - before.writer) / wall,
            generator: (self.generator - before.generator) / wall,
        }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn proc_cpu(path: &str) -> Option<f64> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: `sysconf` has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Established TCP connections whose local end is the collector's port (its side).
fn established_to(port: u16) -> Option<usize> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    Some(
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"01")
            })
            .count(),
    )
}

struct Verified {
    stored: u64,
    acknowledged: u64,
    users: usize,
    usage_days: u64,
    tokens: i64,
    replayed_users: usize,
    replayed_sessions: usize,
    replayed_days: usize,
}

/// Opens the stopped collector's database read-only and checks that it holds exactly
/// the acknowledged sessions and that its accounting is up to date.
fn verify(db: &Path, results: &[ShapeResult]) -> Result<Verified> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {} read-only", db.display()))?;
    let acked: BTreeMap<&str, u64> = results
        .iter()
        .flat_map(|r| r.acked.iter().map(|(u, n)| (u.as_str(), *n)))
        .collect();
    let acknowledged: u64 = acked.values().sum();
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
    let stored = stored as u64;
    if stored != acknowledged {
        bail!("the collector holds {stored} sessions but acknowledged {acknowledged}");
    }
    let mut per_user: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT user, COUNT(*) FROM sessions GROUP BY user")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (user, n) = row?;
            per_user.insert(user, n as u64);
        }
    }
    for (user, n) in &acked {
        let held = per_user.get(*user).copied().unwrap_or(0);
        if held != *n {
            bail!("{user}: the collector holds {held} sessions but acknowledged {n}");
        }
    }
    // Every user's ledger adds up to their usage days (no purchases: all unfunded).
    let mut days: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    {
        let mut stmt =
            conn.prepare("SELECT user, SUM(tokens), COUNT(*) FROM usage_days GROUP BY user")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })? {
            let (user, tokens, n) = row?;
            days.insert(user, (tokens, n));
        }
        let mut stmt = conn.prepare("SELECT user, SUM(tokens) FROM ledger GROUP BY user")?;
        let mut booked: BTreeMap<String, i64> = BTreeMap::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (user, tokens) = row?;
            booked.insert(user, tokens);
        }
        for user in acked.keys() {
            let (tokens, n) = days.get(*user).copied().unwrap_or((0, 0));
            if acked[user] > 0 && n == 0 {
                bail!("{user} has sessions but no usage days");
            }
            let in_ledger = booked.get(*user).copied().unwrap_or(0);
            if in_ledger != tokens {
                bail!("{user}: ledger {in_ledger} tokens, usage days {tokens}");
            }
        }
    }
    // For a sample of users, the stored usage days are what `replay` computes.
    let mut sample: Vec<&str> = Vec::new();
    for r in results {
        let users: Vec<&str> = r.acked.keys().map(String::as_str).collect();
        if let (Some(first), Some(last)) = (users.first(), users.last()) {
            sample.push(first);
            if REPLAY_SAMPLE > 1 && last != first {
                sample.push(last);
            }
        }
    }
    let catalog: serde_json::Map<String, serde_json::Value> = CATALOG
        .iter()
        .map(|(id, _, rate)| {
            (
                (*id).to_string(),
                serde_json::json!({ "tokens_per_day": rate }),
            )
        })
        .collect();
    let (mut replayed_sessions, mut replayed_days) = (0, 0);
    for user in &sample {
        let mut scenario = format!(
            r#"{{"catalog":{},"sessions":["#,
            serde_json::Value::Object(catalog.clone())
        );
        let mut n = 0;
        // A stored body is the record as the agent sent it: user and device are the row's.
        let mut stmt = conn.prepare("SELECT device, body FROM sessions WHERE user = ?1")?;
        for row in stmt.query_map([user], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })? {
            let (device, body) = row?;
            let mut record: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&body)?;
            record.insert("user".into(), (*user).into());
            record.insert("device".into(), device.into());
            if n > 0 {
                scenario.push(',');
            }
            scenario.push_str(&serde_json::Value::Object(record).to_string());
            n += 1;
        }
        scenario.push_str("]}");
        let report = daymeter_shared::scenario::replay(scenario.as_bytes())
            .map_err(|e| anyhow!("replaying {user}'s stored sessions: {e}"))?;
        let mut expected: Vec<(String, String, i64, i64, String, i64)> = report
            .usage_days
            .iter()
            .map(|d| {
                (
                    d.product.to_string(),
                    d.day.to_string(),
                    d.window_start.timestamp_nanos_opt().unwrap_or_default(),
                    d.window_end.timestamp_nanos_opt().unwrap_or_default(),
                    d.plan.as_str().to_owned(),
                    d.tokens as i64,
                )
            })
            .collect();
        expected.sort();
        let mut stmt = conn.prepare(
            "SELECT product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
             WHERE user = ?1 ORDER BY product, day, window_start_ns",
        )?;
        let mut held: Vec<(String, String, i64, i64, String, i64)> = stmt
            .query_map([user], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        held.sort();
        if held != expected {
            let first_diff = held
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(held.len().min(expected.len()));
            bail!(
                "{user}: {} stored usage days, replay says {}; first difference at #{first_diff}: \
                 stored {:?}, replay {:?}",
                held.len(),
                expected.len(),
                held.get(first_diff),
                expected.get(first_diff)
            );
        }
        replayed_sessions += n;
        replayed_days += held.len();
    }
    Ok(Verified {
        stored,
        acknowledged,
        users: acked.len(),
        usage_days: days.values().map(|(_, n)| n).sum(),
        tokens: days.values().map(|(t, _)| t).sum(),
        replayed_users: sample.len(),
        replayed_sessions,
        replayed_days,
    })
}

/// The file system type of `dir` (from /proc/mounts; the longest matching mount point).
fn fs_type(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
    fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|mounts| {
            mounts
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    Some((*f.get(1)?, *f.get(2)?))
                })
                .filter(|(at, _)| dir.starts_with(at))
                .max_by_key(|(at, _)| at.len())
                .map(|(_, kind)| kind.to_string())
        })
        .unwrap_or_else(|| "unknown file system".to_string())
}
