//! `daymeter-collector`: the binary edge. Parses the command line and hands over to the
//! library's commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use daymeter_collector::config::ServeArgs;

/// mimalloc rather than glibc's allocator: measured with sync_load, the writer and the
/// request threads spent 7-11 % of their time in glibc's malloc and free (many small
/// short-lived allocations, freed on other threads than the one that made them); with
/// mimalloc the collector used 5-15 % less CPU per session (A/B, same machine).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Said under every `--help`: what the collector reads besides its flags.
const ENVIRONMENT: &str = "\
Config file keys (--config, TOML; unknown keys are refused by name):
  enrollment_secret   what a device shows to enrol (at least 16 characters)
  admin_token         the bearer token of the admin API (at least 16 characters)
  admin_password_hash the dashboard's admin password, from `hash-password` (optional)
  [mail]              mail over SMTP: host, port, security (starttls, tls, none), username,
                      password, from, tick, root_certificate (docs/collector.md, Mail)

Environment (wins over the file):
  DAYMETER_ENROLLMENT_SECRET  the enrolment secret
  DAYMETER_ADMIN_TOKEN        the admin token
  DAYMETER_SMTP_USERNAME      the SMTP username of [mail]
  DAYMETER_SMTP_PASSWORD      the SMTP password of [mail]
  DAYMETER_LOG                log filter (default: lifecycle at info, the rest from warn), e.g. debug
  TOKIO_WORKER_THREADS        request threads (default: one fewer than the cores, at least one)
  DAYMETER_TEST_CLOCK_FILE    for tests only, never set in production: the clock read from a file";

/// daymeter's collector: authoritative day and token accounting.
#[derive(Parser)]
#[command(name = "daymeter-collector", version, about, after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Account a scenario file without a server and print the usage days as JSON.
    ///
    /// Exit 0 with the result on stdout; on bad input exit 2 with one line on stderr
    /// naming the first bad record in file order, and nothing on stdout.
    Replay {
        /// The scenario (JSON), or `-` for standard input.
        file: PathBuf,
    },
    /// Serve the agent and admin API. Secrets come from DAYMETER_ENROLLMENT_SECRET and
    /// DAYMETER_ADMIN_TOKEN or --config; with neither, a dev config is generated.
    #[command(after_help = ENVIRONMENT)]
    Serve(ServeArgs),
    /// Read an admin password from standard input (one line) and print its Argon2 hash
    /// for the config file's `admin_password_hash`: the dashboard's password login.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay { file } => daymeter_collector::replay::run(&file),
        Command::HashPassword => hash_password(),
        Command::Serve(args) => {
            init_logs();
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            // Every sync waits for the one database writer thread: the request threads
            // leave it a core of its own. Measured with sync_load on 2 cores (one request
            // thread instead of two, A/B, four pairs): 10 % more sessions/s with
            // 50-session batches, 16 % more with 5-session batches, and a lower p99.
            // TOKIO_WORKER_THREADS still decides when set.
            if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                runtime.worker_threads(cores.saturating_sub(1).max(1));
            }
            // The writer first (see `priority`).
            runtime.on_thread_start(|| {
                daymeter_collector::priority::lower_this_thread(
                    daymeter_collector::priority::BACKGROUND,
                );
            });
            let runtime = match runtime.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("daymeter-collector: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daymeter_collector::serve::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("daymeter-collector: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `hash-password`: the password from stdin, never argv (a shell keeps its history and
/// `ps` shows argv to every account).
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("daymeter-collector: reading the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.len() < 12 {
        eprintln!("daymeter-collector: the admin password must be at least 12 characters");
        return ExitCode::FAILURE;
    }
    match daymeter_collector::auth::hash_password(password) {
        Ok(phc) => {
            println!("admin_password_hash = \"{phc}\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("daymeter-collector: hashing the password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: lifecycle events at info, everything else from warnings up.
/// `DAYMETER_LOG` (tracing's filter syntax) says otherwise.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAYMETER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,daymeter_collector=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
