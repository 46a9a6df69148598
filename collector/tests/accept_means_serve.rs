//! What the collector accepts, it can always read back, account and serve, across
//! restarts: arbitrary and slightly mutated sessions, sync bodies, imports and purchases
//! sent over real TCP to the real `daymeter-collector serve` on a real SQLite file (the
//! case runner and its properties: `http_cases/mod.rs`).
//!
//! A few cases, for CI: each starts the collector twice. `cargo bench -p
//! daymeter-collector --bench fuzz_http` runs many more (DAYMETER_FUZZ_CASES).

mod http_cases;

use std::path::Path;

use proptest::test_runner::{Config, TestCaseError, TestRunner};

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-collector");

/// Cases per run: each takes about half a second on the development VM (two starts of
/// the collector, a debug build); shrinking a failure is capped for the same reason.
const CASES: u32 = 64;

/// proptest builds a case's value tree recursively, and the case strategy (JSON of any
/// nesting under layers of one-of choices) overflows a test thread's 2 MiB stack in a
/// debug build.
const STACK: usize = 256 << 20;

#[test]
fn what_the_collector_accepts_it_reads_back_accounts_and_serves_across_restarts() {
    let result = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(|| {
            let mut runner = TestRunner::new(Config {
                cases: CASES,
                max_shrink_iters: 32,
                failure_persistence: None,
                ..Config::default()
            });
            runner.run(&http_cases::inputs::case(), |case| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                runtime
                    .block_on(http_cases::run_case(Path::new(BIN), &case))
                    .map_err(|failures| {
                        let all: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
                        TestCaseError::fail(all.join("\n\n"))
                    })
            })
        })
        .expect("starting the test thread")
        .join()
        .expect("the test thread panicked");
    if let Err(e) = result {
        panic!("{e}");
    }
}
