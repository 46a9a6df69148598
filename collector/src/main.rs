//! `daymeter-collector`: the binary edge. Parses the command line and hands over to the
//! library's commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// daymeter's collector: authoritative day and token accounting.
#[derive(Parser)]
#[command(name = "daymeter-collector", version, about)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay { file } => daymeter_collector::replay::run(&file),
    }
}
