//! `daymeter-agent`: the workstation service. This build carries the command line only;
//! metering, the journal and sync arrive with the agent pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// daymeter's workstation agent: meters licensed products by the day, offline-safe.
#[derive(Parser)]
#[command(name = "daymeter-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (as the service manager starts it).
    Run {
        /// Agent configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Enrol this device with the collector (again, after a revocation).
    Enroll {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show open sessions, time left in their windows, last sync and grace.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } | Command::Enroll { .. } | Command::Status { .. } => {
            eprintln!("daymeter-agent: this build has no metering yet");
            ExitCode::FAILURE
        }
    }
}
