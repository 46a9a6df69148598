//! The footprint bench on Linux (see `footprint.rs`).

use super::{bus, desktop};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const OTHER_PROCESSES: usize = 400;
const SYSINFO_LOOP_ENV: &str = "DAYMETER_BENCH_SYSINFO_LOOP";
/// The bench's product: a name no other program on the machine has.
const PRODUCT_EXE: &str = "daymeter-footprint-cad.exe";

pub fn main() {
    if let Ok(seconds) = std::env::var(SYSINFO_LOOP_ENV) {
        sysinfo_loop(Duration::from_secs(seconds.parse().unwrap_or(600)));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let seconds: u64 = std::env::var("DAYMETER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let run = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().expect("scratch folder");

    let others: Vec<Killed> = (0..OTHER_PROCESSES)
        .map(|_| {
            Killed(
                Command::new("sleep")
                    .arg("100000")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn sleep"),
            )
        })
        .collect();
    let total = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
        })
        .count();
    println!(
        "footprint: {} other processes started, {total} processes on the machine, {} s per run",
        others.len(),
        run.as_secs()
    );

    // The agent.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            // Its own product name instead of the built-in catalog, so that an `acad.exe`
            // running on the machine is not metered into the figures.
            "collector_url = \"http://127.0.0.1:9\"\nuser = \"bench\"\ndata_dir = \"{0}\"\nsocket = \"{0}/agent.sock\"\npoll_interval = \"1s\"\n[catalog.footprint]\ntokens_per_day = 7\nmatch = [{{ exe = \"{PRODUCT_EXE}\" }}]\n",
            dir.path().join("data").display()
        ),
    )
    .expect("agent config");
    let mut agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_daymeter-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("DAYMETER_ENROLLMENT_SECRET", "bench-enrolment-secret-01")
            .env("DAYMETER_LOG", "error,daymeter_agent::run=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start daymeter-agent"),
    );
    let agent_pid = agent.0.id();
    let (lines_tx, lines) = mpsc::channel::<(Instant, String)>();
    let stderr = agent.0.stderr.take().expect("agent stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // The desktop session and its helper.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the stand-ins");
    let session_bus = bus::Bus::start();
    let (notes, _mutter) = runtime.block_on(async {
        let notes = desktop::Notifications::start(&session_bus.address, true).await;
        let mutter = desktop::IdleMonitor::start(
            &session_bus.address,
            desktop::Monitor::Mutter,
            Duration::ZERO,
        )
        .await;
        (notes, mutter)
    });
    let mut helper = Killed(
        Command::new(env!("CARGO_BIN_EXE_daymeter-agent"))
            .arg("session")
            .arg("--socket")
            .arg(dir.path().join("data").join("agent.sock"))
            .env("DBUS_SESSION_BUS_ADDRESS", &session_bus.address)
            .env("DAYMETER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the session helper"),
    );
    let helper_pid = helper.0.id();
    // Let them start, open the journal, connect and settle.
    std::thread::sleep(Duration::from_secs(5));

    let product = dir.path().join(PRODUCT_EXE);
    std::fs::copy("/bin/sleep", &product).expect("copy sleep as the product");

    let cpu_start = cpu_seconds(agent_pid);
    let helper_cpu_start = cpu_seconds(helper_pid);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut reminded = Vec::new();
    // A product start every 30 s (at least three per run): each is detected, journaled
    // (flushed) and later closed, as a designer's day would have it, only denser.
    let every = Duration::from_secs(30)
        .min(run / 3)
        .max(Duration::from_secs(2));
    while started.elapsed() + every <= run {
        let tick = Instant::now();
        // Start at a random phase of the agent's poll, so latencies are not all alike.
        let phase = getrandom::u32().unwrap_or(0) % 1000;
        std::thread::sleep(Duration::from_millis(u64::from(phase)));
        let mut p = Killed(
            Command::new(&product)
                .arg("100000")
                .spawn()
                .expect("start the product"),
        );
        let spawned = Instant::now();
        let shown_before = notes.all().len();
        let pid = p.0.id();
        let needle = format!("pid={pid}");
        let deadline = spawned + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok((at, line)) if line.contains("session opened") && line.contains(&needle) => {
                    latencies.push(at.saturating_duration_since(spawned));
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    eprintln!("footprint: product pid {pid} not detected within 10 s");
                    break;
                }
            }
        }
        // The launch reminder reaching the notification server.
        let deadline = spawned + Duration::from_secs(10);
        while Instant::now() < deadline {
            if notes.all().len() > shown_before {
                reminded.push(spawned.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(spawned.elapsed()));
        p.stop();
        std::thread::sleep(every.saturating_sub(tick.elapsed()));
    }
    std::thread::sleep(run.saturating_sub(started.elapsed()));
    let agent_cpu = cpu_seconds(agent_pid) - cpu_start;
    let agent_wall = started.elapsed().as_secs_f64();
    let agent_hwm = peak_rss_kib(agent_pid);
    let helper_cpu = cpu_seconds(helper_pid) - helper_cpu_start;
    let helper_hwm = peak_rss_kib(helper_pid);
    helper.stop();
    agent.stop();

    // The comparison: a sysinfo full refresh every second, as its own process.
    let mut sysinfo = Killed(
        Command::new(std::env::current_exe().expect("bench path"))
            .env(SYSINFO_LOOP_ENV, run.as_secs().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sysinfo loop"),
    );
    let report = BufReader::new(sysinfo.0.stdout.take().expect("loop stdout"))
        .lines()
        .map_while(Result::ok)
        .last()
        .unwrap_or_default();
    sysinfo.stop();
    drop(others);

    let share = |cpu: f64, wall: f64| 100.0 * cpu / wall;
    println!(
        "daymeter-agent (1 s poll): cpu {:.3} s over {:.0} s = {:.4} % of one core; peak RSS {:.1} MiB",
        agent_cpu,
        agent_wall,
        share(agent_cpu, agent_wall),
        agent_hwm as f64 / 1024.0
    );
    println!(
        "daymeter-agent session (idle reported every 1 s): cpu {:.3} s over {:.0} s = {:.4} % of one core; peak RSS {:.1} MiB",
        helper_cpu,
        agent_wall,
        share(helper_cpu, agent_wall),
        helper_hwm as f64 / 1024.0
    );
    if !reminded.is_empty() {
        reminded.sort();
        let mean = reminded.iter().sum::<Duration>() / reminded.len() as u32;
        println!(
            "launch reminder shown, from the product's start, over {} starts: mean {} ms, max {} ms (goal: within 1 s of the poll that sees the launch)",
            reminded.len(),
            mean.as_millis(),
            reminded.last().map_or(0, Duration::as_millis)
        );
    }
    if !latencies.is_empty() {
        latencies.sort();
        let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
        println!(
            "detection latency over {} product starts: mean {} ms, max {} ms (goal: poll interval + 100 ms = 1100 ms)",
            latencies.len(),
            mean.as_millis(),
            latencies.last().map_or(0, Duration::as_millis)
        );
    }
    println!("{report}");
}

/// The comparison loop: what the agent would cost polling through sysinfo on Linux.
fn sysinfo_loop(run: Duration) {
    let me = std::process::id();
    let Ok(mut system) = sysinfo::System::new() else {
        println!("sysinfo full refresh: unavailable on this machine");
        return;
    };
    let cpu_start = cpu_seconds(me);
    let started = Instant::now();
    let mut refreshes = 0u32;
    while started.elapsed() < run {
        let tick = Instant::now();
        system.refresh_processes(sysinfo::ProcessesToUpdate::All, true);
        refreshes += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let cpu = cpu_seconds(me) - cpu_start;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "sysinfo full refresh (1 s loop, {refreshes} refreshes of {} processes): cpu {:.3} s over {:.0} s = {:.4} % of one core; peak RSS {:.1} MiB",
        system.processes().len(),
        cpu,
        wall,
        100.0 * cpu / wall,
        peak_rss_kib(me) as f64 / 1024.0
    );
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(14) + ticks(15)) as f64 / hz
}

/// VmHWM: the peak resident set, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    read_status_field(format!("/proc/{pid}/status"), "VmHWM:")
}

fn read_status_field(path: impl AsRef<Path>, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A child killed (and reaped) when dropped.
struct Killed(Child);

impl Killed {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.stop();
    }
}
