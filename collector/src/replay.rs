//! `daymeter-collector replay FILE|-` (spec/replay.md): reads one scenario, runs the same
//! accounting the server runs, prints the result as JSON on stdout.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::ops::Deref;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};
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
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    let written = scenario.write_json(&mut out).and_then(|_| out.flush());
    // The process ends right after this: handing hundreds of megabytes back piece by
    // piece (and unmapping the input) would only cost time the exit does for free.
    std::mem::forget(scenario);
    std::mem::forget(input);
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure to report.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writing the result: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The scenario's bytes: standard input read whole, or the file mapped into memory.
enum Input {
    Read(Vec<u8>),
    Mapped(Mmap),
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Input::Read(v) => v,
            Input::Mapped(m) => m,
        }
    }
}

/// Files are mapped rather than read: a year of sessions is hundreds of megabytes, and
/// mapping spares copying them and faulting in a buffer as large (ripgrep does the same
/// for large files). Small and special files are read.
fn read_input(path: &Path) -> io::Result<Input> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        io::stdin().lock().read_to_end(&mut buf)?;
        return Ok(Input::Read(buf));
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() < (1 << 20) {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        (&file).read_to_end(&mut buf)?;
        return Ok(Input::Read(buf));
    }
    // SAFETY: the map is read-only and private to this short-lived process. Another
    // process truncating the file while it is mapped would end this one with SIGBUS
    // (never wrong output); an auditor's scenario file is not rewritten under replay.
    let map = unsafe { MmapOptions::new().populate().map(&file)? };
    Ok(Input::Mapped(map))
}

/// The error contract is one line: fold any newline a parser message might carry.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
