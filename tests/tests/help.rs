//! Both binaries' `--help` name what they read besides their flags: the environment
//! variables and the configuration file's keys, so an admin at a console needs no docs.

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
