//! The CPU time of one poll of the Windows process sources, with ~300 processes
//! running: the Toolhelp snapshot the agent uses (`watch::windows`) against the
//! sysinfo refresh it used before (`watch::sysinfo`), each reading the command line
//! and owner of new processes only.
//!
//! `cargo bench -p daymeter-agent --bench windows_poll --target x86_64-pc-windows-gnu`
//! (under Wine through the runner). `DAYMETER_BENCH_POLLS` sets the polls per source
//! (default 60, one a second). Printed per source: the first poll (every process new),
//! then the mean CPU of a steady poll, of this process and, under Wine, of the
//! wineserver (which does part of every system call's work: read from `/proc` through
//! Wine's `Z:` drive, at 100 ticks a second).

#[cfg(windows)]
fn main() {
    bench::main();
}

#[cfg(not(windows))]
fn main() {
    eprintln!(
        "windows_poll measures the Windows process sources: run it with --target x86_64-pc-windows-gnu"
    );
}

#[cfg(windows)]
mod bench {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use daymeter_agent::watch::sysinfo::Sysinfo;
    use daymeter_agent::watch::windows::Toolhelp;
    use daymeter_agent::watch::{ProcessSource, Seen};
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};

    const CHILD_ENV: &str = "DAYMETER_BENCH_CHILD";
    const PROCESSES: usize = 300;
    /// The bench's products among them.
    const PRODUCTS: usize = 3;
    const PRODUCT_EXE: &str = "dmbench-acad.exe";

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub fn main() {
        if std::env::var_os(CHILD_ENV).is_some() {
            std::thread::sleep(Duration::from_secs(3600));
            return;
        }
        let polls: u32 = std::env::var("DAYMETER_BENCH_POLLS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let dir = tempfile::tempdir().expect("scratch folder");
        let me = std::env::current_exe().expect("this bench");
        let product = dir.path().join(PRODUCT_EXE);
        std::fs::copy(&me, &product).expect("the product copy");
        let already = daymeter_agent::watch::windows::snapshot()
            .expect("a snapshot")
            .len();
        let others = PROCESSES.saturating_sub(already + PRODUCTS);
        eprintln!("starting {others} processes and {PRODUCTS} products ({already} run already)");
        let mut children: Vec<Killed> = Vec::new();
        for i in 0..others + PRODUCTS {
            let exe = if i < PRODUCTS { &product } else { &me };
            let mut command = Command::new(exe);
            if i < PRODUCTS {
                command.args(["/product", "C3D"]);
            }
            children.push(Killed(
                command
                    .env(CHILD_ENV, "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("a child"),
            ));
        }
        // Let them all finish starting (Wine loads each one's DLLs).
        std::thread::sleep(Duration::from_secs(15));
        let listed = daymeter_agent::watch::windows::snapshot()
            .expect("a snapshot")
            .len();
        println!("processes listed: {listed}; polls per source: {polls}, 1 s apart");
        println!("source    first poll (ms)   steady poll: process CPU (ms)   wineserver CPU (ms)");
        measure("toolhelp", &mut Toolhelp::new(), polls);
        measure("sysinfo", &mut Sysinfo::new(), polls);
        drop(children);
    }

    fn classify(seen: Seen<'_>) -> Option<String> {
        (seen.exe.eq_ignore_ascii_case(PRODUCT_EXE) && seen.args.contains("/product C3D"))
            .then(|| "civil3d".to_owned())
    }

    fn measure(name: &str, source: &mut dyn ProcessSource, polls: u32) {
        let (cpu0, server0) = (own_cpu(), wineserver_cpu());
        let found = source.poll(&classify).expect("a poll");
        let first = own_cpu() - cpu0;
        assert_eq!(found.len(), PRODUCTS, "{name} sees the products: {found:?}");
        assert!(
            found.iter().all(|r| r.owner.is_some()),
            "{name} reads owners"
        );
        let _ = server0;
        let (cpu0, server0) = (own_cpu(), wineserver_cpu());
        let mut next = Instant::now();
        for _ in 0..polls {
            next += Duration::from_secs(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let found = source.poll(&classify).expect("a poll");
            assert_eq!(found.len(), PRODUCTS);
        }
        let steady = (own_cpu() - cpu0) / polls;
        let server = match (server0, wineserver_cpu()) {
            (Some(a), Some(b)) => format!("{:.2}", ms(b.saturating_sub(a) / polls)),
            _ => "n/a".to_owned(),
        };
        println!(
            "{name:<9} {:>15.1}   {:>29.2}   {server:>19}",
            ms(first),
            ms(steady)
        );
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// This process's user and kernel time.
    fn own_cpu() -> Duration {
        let mut t = [FILETIME::default(); 4];
        let [created, exited, kernel, user] = &mut t;
        // SAFETY: out-parameters only; the pseudo handle needs no closing.
        unsafe { GetProcessTimes(GetCurrentProcess(), created, exited, kernel, user) };
        let ticks = |f: &FILETIME| (u64::from(f.dwHighDateTime) << 32) | u64::from(f.dwLowDateTime);
        Duration::from_nanos((ticks(&t[2]) + ticks(&t[3])) * 100)
    }

    /// The wineserver's user and system time, when running under Wine.
    fn wineserver_cpu() -> Option<Duration> {
        for entry in std::fs::read_dir(r"Z:\proc").ok()?.flatten() {
            let path = entry.path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            // `wineserver64` on Debian's 64-bit Wine.
            if !comm.trim().starts_with("wineserver") {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            return Some(Duration::from_millis(ticks * 10));
        }
        None
    }
}
