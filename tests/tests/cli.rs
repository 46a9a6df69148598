//! The command lines, as an admin at a console meets them: both binaries' `--help` name
//! the environment variables and the configuration file's keys, and a missing
//! configuration file is reported once, by its path.

use std::process::Command;

use daymeter_tests::{agent_bin, collector_bin};

fn help(bin: std::path::PathBuf, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_agents_help_names_its_environment_and_config_keys() {
    for args in [&["--help"][..], &["run", "--help"], &["status", "--help"]] {
        let text = help(agent_bin(), args);
        for name in [
            "DAYMETER_ENROLLMENT_SECRET",
            "DAYMETER_LOG",
            "DBUS_SESSION_BUS_ADDRESS",
            "collector_url",
            "socket",
            "user_map",
            "journal",
        ] {
            assert!(text.contains(name), "{args:?} names {name}:\n{text}");
        }
    }
}

#[test]
fn the_collectors_help_names_its_environment_and_config_keys() {
    for args in [&["--help"][..], &["serve", "--help"]] {
        let text = help(collector_bin(), args);
        for name in [
            "DAYMETER_ENROLLMENT_SECRET",
            "DAYMETER_ADMIN_TOKEN",
            "DAYMETER_LOG",
            "enrollment_secret",
            "admin_token",
        ] {
            assert!(text.contains(name), "{args:?} names {name}:\n{text}");
        }
    }
}

#[test]
fn a_missing_config_file_is_reported_once_naming_the_path() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let path = dir.path().join("agent.toml");
    for args in [&["run", "--config"][..], &["enroll", "--config"]] {
        let out = Command::new(agent_bin())
            .args(args)
            .arg(&path)
            .env("DAYMETER_LOG", "error")
            .output()
            .expect("run the agent");
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            text.matches(&*path.to_string_lossy()).count(),
            1,
            "{args:?}: {text}"
        );
        assert_eq!(text.matches("No such file").count(), 1, "{args:?}: {text}");
    }
}
