//! The agent as a Windows service: `daymeter-agent service` is what the service control
//! manager starts, `install-service` / `uninstall-service` register it by hand (the
//! MSI does the same through its ServiceInstall rows).
//!
//! It runs as **LocalSystem**: it must open every user's product processes to read
//! their owner and command line (a toolset is `acad.exe /product C3D`), which a virtual
//! service account (`NT SERVICE\daymeter-agent`) may not do for other users'
//! processes, and it creates the named pipe every interactive user connects to. It
//! holds no secret beyond the device token, kept in a journal directory whose access list
//! admits only LocalSystem and the Administrators (`journal::windows_acl`).
//!
//! Stop and shutdown end the agent cleanly (open sessions' `last_seen` persisted, exit
//! code 0); a suspend announced by `SERVICE_CONTROL_POWEREVENT` (`PBT_APMSUSPEND`) is
//! handled as logind's is on Linux: the handler waits, at most [`SUSPEND_WAIT`], until
//! the pre-sleep reminders are out and the journal is flushed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use windows_service::service::{
    PowerEventParam, ServiceAccess, ServiceAction, ServiceActionType, ServiceControl,
    ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::SERVICE_NAME;
use crate::power::announce;

/// What the services list shows.
pub const DISPLAY_NAME: &str = "daymeter agent";
const DESCRIPTION: &str = "Meters licensed CAD products by the day, keeps the offline grace and \
     sends close-the-app reminders to each user's session.";

/// How long a suspend is held back for the pre-sleep reminders: Windows allows a
/// `PBT_APMSUSPEND` handler about two seconds.
pub const SUSPEND_WAIT: Duration = Duration::from_millis(1500);

/// Restarts after a failure: at once, after 10 s, then every minute; the count resets
/// after a day without failures.
const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
];

/// The configuration the service was started with (`service --config`), for the
/// service's main function, which the dispatcher calls without it.
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands this process to the service control manager; returns when the service has
/// stopped. Fails at once when the process was not started by the manager (run it
/// with `run` in a console instead).
pub fn dispatch(config: PathBuf) -> anyhow::Result<()> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).context(
        "not started by the service control manager (`daymeter-agent run --config …` runs the agent in a console)",
    )
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!(error = %format!("{e:#}"), "the service stopped on an error");
    }
}

fn serve() -> anyhow::Result<()> {
    let config = CONFIG.get().cloned().context("no configuration path")?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let (announcer, announcements) = announce::channel();
    let handler = {
        let stop = stop.clone();
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                stop.notify_one();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            ServiceControl::PowerEvent(event) => {
                on_power_event(&announcer, event);
                ServiceControlHandlerResult::NoError
            }
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let status = service_control_handler::register(SERVICE_NAME, handler)
        .context("cannot register the service control handler")?;
    status
        .set_service_status(state(ServiceState::Running, ServiceExitCode::Win32(0)))
        .context("cannot report the service running")?;
    tracing::info!(config = %config.display(), "service started");
    ensure_recovery();
    let result = super::run(
        &config,
        async move { stop.notified().await },
        Some(announcements),
    );
    let exit = match &result {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    let _ = status.set_service_status(state(ServiceState::Stopped, exit));
    result
}

/// A power event, as the service sees it: a suspend is announced and waited for, a
/// resume told; battery and setting changes are none of the agent's business.
pub fn on_power_event(announcer: &announce::Announcer, event: PowerEventParam) {
    match event {
        PowerEventParam::Suspend => {
            let in_time = announcer.suspending(SUSPEND_WAIT);
            if !in_time {
                tracing::warn!("the machine went to sleep before the pre-sleep reminders were out");
            }
        }
        PowerEventParam::ResumeSuspend | PowerEventParam::ResumeAutomatic => announcer.resumed(),
        _ => {}
    }
}

fn state(current_state: ServiceState, exit_code: ServiceExitCode) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state,
        controls_accepted: if current_state == ServiceState::Running {
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::POWER_EVENT
        } else {
            ServiceControlAccept::empty()
        },
        exit_code,
        checkpoint: 0,
        wait_hint: Duration::ZERO,
        process_id: None,
    }
}

/// Registers this executable as the `daymeter-agent` service (LocalSystem, started
/// automatically, restarted after failures) with `service --config CONFIG`, and starts
/// it unless `start` is false.
pub fn install(config: Option<&Path>, start: bool) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("cannot open the service control manager (run as an administrator)")?;
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let mut arguments = vec![OsString::from("service")];
    if let Some(config) = config {
        arguments.push("--config".into());
        arguments.push(config.as_os_str().to_owned());
    }
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: arguments,
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("cannot create the service {SERVICE_NAME}"))?;
    service
        .set_description(DESCRIPTION)
        .context("cannot set the service's description")?;
    set_recovery(&service)?;
    if start {
        service
            .start::<&str>(&[])
            .with_context(|| format!("the service {SERVICE_NAME} was created but did not start"))?;
    }
    Ok(())
}

/// Sets the recovery actions on the running service itself: the MSI's ServiceInstall
/// row cannot carry them (wixl writes no MsiServiceConfigFailureActions), and an admin
/// who reset them by hand gets them back at the next start. A failure is logged, never
/// fatal: metering matters more than restarts.
fn ensure_recovery() {
    let service = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .and_then(|manager| {
            manager.open_service(
                SERVICE_NAME,
                ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_CONFIG,
            )
        });
    let set = match service {
        Ok(service) => set_recovery(&service),
        Err(e) => Err(anyhow::Error::new(e).context("cannot open the service's own entry")),
    };
    if let Err(e) = set {
        tracing::warn!(error = %format!("{e:#}"), "the service's recovery actions could not be set");
    }
}

/// Restart on failure, crashes and error exits alike.
fn set_recovery(service: &windows_service::service::Service) -> anyhow::Result<()> {
    let actions = RESTART_DELAYS
        .iter()
        .map(|&delay| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay,
        })
        .collect();
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(actions),
        })
        .context("cannot set the service's recovery actions")?;
    // Windows Vista and later take this flag; Wine does not: a service that restarts
    // after crashes only is still worth installing.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        tracing::warn!(error = %e, "the service restarts after crashes but not after error exits");
    }
    Ok(())
}

/// Stops the service if it runs and removes it. The journal and the enrolment stay in
/// the data directory (a reinstall picks them up).
pub fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service control manager (run as an administrator)")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .with_context(|| format!("no service {SERVICE_NAME} to remove"))?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while service.query_status()?.current_state != ServiceState::Stopped
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    service
        .delete()
        .with_context(|| format!("cannot remove the service {SERVICE_NAME}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::announce::Announced;

    /// What the service hears from the control handler for each power event.
    fn heard(event: PowerEventParam) -> Vec<Announced> {
        let (announcer, mut announcements) = announce::channel();
        let listener = std::thread::spawn(move || {
            let mut heard = Vec::new();
            while let Some(a) = announcements.0.blocking_recv() {
                heard.push(a.what);
                if let Some(done) = a.done {
                    let _ = done.send(());
                }
            }
            heard
        });
        on_power_event(&announcer, event);
        drop(announcer);
        listener.join().unwrap()
    }

    #[test]
    fn a_suspend_event_is_announced_and_waited_for_and_a_resume_told() {
        assert_eq!(heard(PowerEventParam::Suspend), [Announced::Suspending]);
        assert_eq!(heard(PowerEventParam::ResumeSuspend), [Announced::Resumed]);
        assert_eq!(
            heard(PowerEventParam::ResumeAutomatic),
            [Announced::Resumed]
        );
    }

    #[test]
    fn battery_and_setting_changes_are_not_sleeps() {
        assert!(heard(PowerEventParam::BatteryLow).is_empty());
        assert!(heard(PowerEventParam::PowerStatusChange).is_empty());
    }
}
