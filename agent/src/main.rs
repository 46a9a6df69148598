//! `daymeter-agent`: the workstation service's command line. Everything it does lives in
//! the library; this file reads flags, sets up logging and reports errors.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use daymeter_agent::config::Config;
use daymeter_agent::journal::{ChosenJournal, Journal, JournalError, Purpose};
use daymeter_agent::run::{enroll_offline, offline_status};
use daymeter_agent::service::{self, runtime};
use daymeter_agent::status::Status;
use daymeter_agent::status_socket;
use daymeter_shared::clock::{Clock, SystemClock};

/// Said under every `--help`: what the agent reads besides its flags.
const ENVIRONMENT: &str = "\
Configuration file keys (TOML; unknown keys are refused by name):
  collector_url       the collector, http:// or https:// (required)
  enrollment_secret   prefer DAYMETER_ENROLLMENT_SECRET; keep the file owner-only if set here
  data_dir            journal and state (default /var/lib/daymeter as root)
  socket              the local socket for status, enroll and session helpers
                      (default /run/daymeter/agent.sock as root, else DATA_DIR/agent.sock;
                      on Windows the named pipe \\\\.\\pipe\\daymeter-agent;
                      `session --socket` must name the same path when it is not the default)
  user                charge every session to this licence user (single-user machines)
  user_map            \"{login}@firm.com\" or a table login = \"licence user\" (default: the login)
  poll_interval       how often processes are listed (default 1s)
  ca_file             a CA trusted besides the system roots
  journal             \"redb\" (default) or \"sled\"; a change migrates the journal at the next run
  catalog             products recognised before the collector's catalog arrives

Windows (the configuration file is then optional; `status` says where each setting came from):
  HKLM\\Software\\Policies\\Daymeter\\Agent   Group Policy (daymeter.admx), wins over all below:
                      CollectorUrl, EnrollmentSecret, CaFile, UserMap, PollInterval,
                      RemindBefore, GraceEnforcement (string values; unknown ones refused)
  HKLM\\Software\\Daymeter\\Agent            CollectorUrl, EnrollmentSecret written by the MSI
                      (msiexec /i daymeter-agent.msi COLLECTOR_URL=… ENROLLMENT_SECRET=…)
  %ProgramData%\\daymeter                     agent.toml, the journal (LocalSystem and
                      Administrators only), logs\\agent.log of the service

Environment:
  DAYMETER_ENROLLMENT_SECRET  the enrolment secret (wins over the file)
  DAYMETER_LOG                log filter (default warn,daymeter_agent=info), e.g. debug
  DBUS_SYSTEM_BUS_ADDRESS     the system bus (logind: sleep announcements), if not the default
  DBUS_SESSION_BUS_ADDRESS    the session bus of `session` (idle monitors, notifications,
                              the one-helper-per-session name org.daymeter.Session)
  DISPLAY                     the X display of `session` (X11 idle time, as a fallback)
  TZ, LC_ALL, LC_TIME, LANG   the zone and 12/24-hour clock `session` shows reminders in
  DAYMETER_TEST_CLOCK_SKEW, DAYMETER_TEST_SLEEP_FILE   for tests only: never set in production";

/// daymeter's workstation agent: meters licensed products by the day, offline-safe.
#[derive(Parser)]
#[command(name = "daymeter-agent", version, about, after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (as the service manager starts it).
    #[command(after_help = ENVIRONMENT)]
    Run {
        /// Agent configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Enrol this device with the collector (again, after a revocation).
    #[command(after_help = ENVIRONMENT)]
    Enroll {
        #[arg(long, default_value_os_t = default_config())]
        config: PathBuf,
        /// Enrol although the device is enrolled and in good standing: the collector
        /// issues a new device token and keeps the device id (its sessions stay one
        /// device); the old token stops working.
        #[arg(long)]
        force: bool,
    },
    /// Show open sessions, idle state, last sleep, offline grace, reminders, uploads.
    #[command(after_help = ENVIRONMENT)]
    Status {
        /// Agent configuration (TOML); not needed with --socket.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Ask the agent on this socket (needs no configuration file or secret).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop a session the collector rejected, once you have read why (status lists them).
    #[command(after_help = ENVIRONMENT)]
    Ack {
        /// The rejected session's id.
        id: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Run this desktop session's helper: idle time to the agent, reminders shown.
    ///
    /// As the systemd user unit or the XDG autostart entry starts it (on Windows the
    /// Run key): reports the session's idle time to the agent and shows its reminders
    /// as notifications. One per session; a second one exits at once.
    #[cfg(any(target_os = "linux", windows))]
    #[command(after_help = ENVIRONMENT)]
    Session {
        /// The agent's socket (default /run/daymeter/agent.sock, the system service's;
        /// on Windows its named pipe, \\.\pipe\daymeter-agent).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Run as the Windows service (what the service control manager starts; logs to
    /// %ProgramData%\daymeter\logs\agent.log).
    #[cfg(windows)]
    #[command(after_help = ENVIRONMENT)]
    Service {
        #[arg(long, default_value_os_t = default_config())]
        config: PathBuf,
    },
    /// Register the Windows service (LocalSystem, automatic start, restarted after a
    /// failure) and start it; the MSI does this itself.
    #[cfg(windows)]
    #[command(after_help = ENVIRONMENT)]
    InstallService {
        /// The configuration the service is started with (default: the standard path).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Register only; do not start it now.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and remove the Windows service; the journal and enrolment stay.
    #[cfg(windows)]
    #[command(after_help = ENVIRONMENT)]
    UninstallService,
}

/// Where a system service's socket is (systemd's `RuntimeDirectory=daymeter`).
const SYSTEM_SOCKET: &str = "/run/daymeter/agent.sock";

fn default_config() -> PathBuf {
    #[cfg(windows)]
    {
        if let Some(pd) = std::env::var_os("ProgramData") {
            return PathBuf::from(pd).join("daymeter").join("agent.toml");
        }
    }
    PathBuf::from("/etc/daymeter/agent.toml")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(windows)]
    if matches!(cli.command, Command::Service { .. }) {
        init_service_logs();
    } else {
        init_logs();
    }
    #[cfg(not(windows))]
    init_logs();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Enroll { config, force } => enroll(&config, force),
        Command::Status {
            config,
            socket,
            json,
        } => status(config.as_deref(), socket.as_deref(), json),
        Command::Ack { id, config, socket } => ack(&id, config.as_deref(), socket.as_deref()),
        #[cfg(any(target_os = "linux", windows))]
        Command::Session { socket } => session(socket),
        #[cfg(windows)]
        Command::Service { config } => service::windows::dispatch(config),
        #[cfg(windows)]
        Command::InstallService { config, no_start } => {
            service::windows::install(config.as_deref(), !no_start)
                .map(|()| println!("service {} installed", service::SERVICE_NAME))
        }
        #[cfg(windows)]
        Command::UninstallService => service::windows::uninstall()
            .map(|()| println!("service {} removed", service::SERVICE_NAME)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daymeter-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Quiet by default: sessions opening and closing, sync trouble. `DAYMETER_LOG` takes
/// a tracing filter (`debug`, `daymeter_agent=trace`…).
fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("DAYMETER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,daymeter_agent=info"))
}

/// A Windows service has no console: its log goes to
/// `%ProgramData%\daymeter\logs\agent.log` (appended; started afresh when it passed
/// 10 MiB), where an admin looks first. Stderr when the file cannot be opened.
#[cfg(windows)]
fn init_service_logs() {
    const LIMIT: u64 = 10 << 20;
    let dir = std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("daymeter")
        .join("logs");
    let path = dir.join("agent.log");
    let opened = std::fs::create_dir_all(&dir).and_then(|()| {
        let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > LIMIT);
        std::fs::OpenOptions::new()
            .create(true)
            .append(!too_big)
            .write(true)
            .truncate(too_big)
            .open(&path)
    });
    match opened {
        Ok(file) => tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init(),
        Err(_) => init_logs(),
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    service::run(config, shutdown_signal(), None)
}

/// SIGTERM (the service manager) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The running agent (over its socket), or the journal when no agent runs.
enum Reach {
    Agent(String),
    Journal(ChosenJournal),
}

/// Asks the running agent `command`, or opens the journal when none runs. An agent
/// that is starting holds the journal before its socket is up: keep trying both. A
/// damaged journal is reported, not healed, and one the other backend wrote is read
/// as it is: the agent heals or migrates it when it starts.
fn reach(config: &Config, command: &str) -> anyhow::Result<Reach> {
    let dir = config.journal_dir();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(answer) = status_socket::ask(&config.socket, command) {
            return Ok(Reach::Agent(answer));
        }
        match ChosenJournal::open(&dir, config.journal, Purpose::Look) {
            Ok(journal) => return Ok(Reach::Journal(journal)),
            Err(JournalError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the journal in {}", dir.display()));
            }
        }
    }
}

fn enroll(path: &Path, force: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    match reach(&config, "status")? {
        Reach::Agent(answer) => {
            let value: serde_json::Value =
                serde_json::from_str(&answer).context("the running agent's answer")?;
            if !force
                && let Some(device) = value["device_id"].as_str()
                && value["revoked"] != true
            {
                bail!("{}", good_standing(device));
            }
        }
        Reach::Journal(journal) => {
            let revoked = offline_status(&config, &journal, SystemClock.now())?.revoked;
            if !force
                && let Some(e) = journal.enrolment()?
                && !revoked
            {
                bail!("{}", good_standing(&e.device_id));
            }
        }
    }
    match reach(&config, "enroll")? {
        Reach::Agent(answer) => {
            let value: serde_json::Value =
                serde_json::from_str(&answer).context("the running agent's answer")?;
            if value["enrolled"] == true {
                println!(
                    "enrolled as device {}",
                    value["device_id"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            bail!("{}", value["error"].as_str().unwrap_or("enrolment failed"));
        }
        Reach::Journal(journal) => {
            let enrolment = runtime()?.block_on(enroll_offline(&config, &journal))?;
            println!("enrolled as device {}", enrolment.device_id);
            Ok(())
        }
    }
}

fn good_standing(device: &str) -> String {
    format!(
        "this machine is enrolled as device {device} and the collector has not revoked it; \
         `daymeter-agent enroll --force` enrols again: the collector issues a new device token \
         and keeps the device id (its sessions stay one device), and the old token stops working"
    )
}

/// The socket to ask: `--socket`, else the configuration's, else the system
/// service's. A configuration that cannot be read is reported once, naming its path,
/// and only when no agent answered on the system socket either.
fn socket_and_config(
    config: Option<&Path>,
    socket: Option<&Path>,
) -> (PathBuf, Option<anyhow::Result<Config>>) {
    if let Some(socket) = socket {
        return (socket.to_owned(), None);
    }
    let path = config.map_or_else(default_config, Path::to_owned);
    match Config::load(&path) {
        Ok(c) => (c.socket.clone(), Some(Ok(c))),
        Err(e) => (PathBuf::from(SYSTEM_SOCKET), Some(Err(e.into()))),
    }
}

fn status(config: Option<&Path>, socket: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let (socket, config) = socket_and_config(config, socket);
    let status: Status = match status_socket::ask(&socket, "status") {
        Ok(answer) => {
            let value: serde_json::Value =
                serde_json::from_str(&answer).context("the running agent's answer")?;
            // A refusal or an error is an object of its own, not a status.
            if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
                bail!("the running agent answered: {error}");
            }
            serde_json::from_value(value).context("the running agent's answer")?
        }
        Err(e) => match config {
            None => bail!("no agent answers on {}: {e}", socket.display()),
            Some(Err(config_error)) => {
                return Err(config_error.context(format!(
                    "no agent answers on {} and the configuration cannot be read",
                    socket.display()
                )));
            }
            Some(Ok(config)) => match reach(&config, "status")? {
                Reach::Agent(answer) => {
                    serde_json::from_str(&answer).context("the running agent's answer")?
                }
                Reach::Journal(journal) => offline_status(&config, &journal, SystemClock.now())?,
            },
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// The session helper, on the one-thread runtime: it waits on a socket and a timer, and
/// a worker pool would be most of its memory.
#[cfg(any(target_os = "linux", windows))]
fn session(socket: Option<PathBuf>) -> anyhow::Result<()> {
    use daymeter_agent::helper::{self, Options};
    #[cfg(windows)]
    const SYSTEM_SOCKET: &str = r"\\.\pipe\daymeter-agent";
    let socket = socket.unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET));
    runtime()?.block_on(helper::run(Options { socket }, shutdown_signal()))
}

fn ack(id: &str, config: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<()> {
    let (socket, config) = socket_and_config(config, socket);
    let answer = match status_socket::ask(&socket, &format!("ack {id}")) {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(Err(config_error)) = config {
                return Err(
                    config_error.context(format!("no agent answers on {}", socket.display()))
                );
            }
            bail!(
                "no agent answers on {} ({e}); start it, then acknowledge",
                socket.display()
            );
        }
    };
    let value: serde_json::Value = serde_json::from_str(&answer).context("the agent's answer")?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        bail!("{error}");
    }
    println!("dropped rejected session {id}");
    Ok(())
}
