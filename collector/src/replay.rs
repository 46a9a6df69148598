//! `daymeter-collector replay FILE|-` (spec/replay.md): reads one scenario, runs the same
//! accounting the server runs, prints the result as JSON on stdout.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use daymeter_shared::scenario::Scenario;

/// Exit code for bad input: an unreadable file or a bad record.
pub const BAD_INPUT: u8 = 2;

/// Runs the command: the report on stdout and exit 0, or one line on stderr and exit 2.
pub fn run(path: &Path) -> ExitCode {
    let input = match read_input(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(BAD_INPUT);
        }
    };
    let scenario = match Scenario::parse(&input) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(BAD_INPUT);
        }
    };
    let report = scenario.account();
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    match report.write_json(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure to report.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writing the result: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_input(path: &Path) -> io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        io::stdin().lock().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// The error contract is one line: fold any newline a parser message might carry.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
