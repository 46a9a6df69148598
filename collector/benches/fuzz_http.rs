//! Many cases of "what the collector accepts, it can always read back, account and
//! serve, across restarts" (the case runner of `tests/accept_means_serve.rs`), against
//! the real `serve` binary.
//!
//! `cargo bench -p daymeter-collector --bench fuzz_http`. DAYMETER_FUZZ_CASES (default
//! 300) sets the number of cases, DAYMETER_FUZZ_SEED (a number) the generator's seed,
//! DAYMETER_FUZZ_SHRINK (default 40) how many shrinking steps the first failure of each
//! kind gets (each step is a case: two starts of the collector), and DAYMETER_FUZZ_BIN
//! another `daymeter-collector` binary (a debug build needs no release build).
//!
//! Prints the cases run, then each distinct failure (by kind) with its count and the
//! smallest reproducer found; exits 1 if there was any.

#[path = "../tests/http_cases/mod.rs"]
mod http_cases;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use http_cases::Failure;
use http_cases::inputs::Case;

/// See `tests/accept_means_serve.rs`: value trees are built recursively.
const STACK: usize = 256 << 20;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(bin: &Path, case: &Case) -> Result<(), Vec<Failure>> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(http_cases::run_case(bin, case)),
        Err(e) => Err(vec![Failure {
            kind: "tokio runtime".into(),
            detail: e.to_string(),
        }]),
    }
}

/// A failure kind seen: how often, and the shortest reproducer.
struct Seen {
    count: u64,
    detail: String,
}

fn main() -> ExitCode {
    let cases = env_number("DAYMETER_FUZZ_CASES", 300);
    let shrink = env_number("DAYMETER_FUZZ_SHRINK", 40);
    let seed = env_number("DAYMETER_FUZZ_SEED", 0);
    let bin = std::env::var_os("DAYMETER_FUZZ_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_daymeter-collector")),
        PathBuf::from,
    );
    let worker = std::thread::Builder::new().stack_size(STACK).spawn(move || {
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = http_cases::inputs::case();
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        let mut failed_cases = 0u64;
        let started = Instant::now();
        for i in 0..cases {
            let Ok(mut tree) = strategy.new_tree(&mut runner) else {
                continue;
            };
            let Err(failures) = run(&bin, &tree.current()) else {
                continue;
            };
            failed_cases += 1;
            for f in failures {
                let new = !seen.contains_key(&f.kind);
                let entry = seen.entry(f.kind.clone()).or_insert(Seen {
                    count: 0,
                    detail: f.detail.clone(),
                });
                entry.count += 1;
                if f.detail.len() < entry.detail.len() {
                    entry.detail = f.detail.clone();
                }
                if new {
                    println!("case {i}: new failure: {}", f.kind);
                    // Shrink the first of a kind: simpler cases that fail the same way.
                    let mut steps = 0;
                    let mut passed = false;
                    while steps < shrink {
                        let more = if passed { tree.complicate() } else { tree.simplify() };
                        if !more {
                            break;
                        }
                        steps += 1;
                        match run(&bin, &tree.current()) {
                            Err(fs) => match fs.into_iter().find(|g| g.kind == f.kind) {
                                Some(g) => {
                                    passed = false;
                                    if g.detail.len() < entry.detail.len() {
                                        entry.detail = g.detail;
                                    }
                                }
                                None => passed = true,
                            },
                            Ok(()) => passed = true,
                        }
                    }
                }
            }
            if (i + 1) % 25 == 0 {
                println!(
                    "{} cases, {failed_cases} failed, {} kinds, {:.0?}",
                    i + 1,
                    seen.len(),
                    started.elapsed()
                );
            }
        }
        println!(
            "\n{cases} cases run (seed {seed}), {failed_cases} failed, {} distinct failures, {:.0?}",
            seen.len(),
            started.elapsed()
        );
        for (kind, s) in &seen {
            println!("\n=== {kind} ({} times)\n{}", s.count, s.detail);
        }
        seen.is_empty()
    });
    match worker.map(|w| w.join()) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
