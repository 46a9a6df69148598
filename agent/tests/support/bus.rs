//! A private D-Bus daemon for tests: the real `dbus-daemon`, on a socket in a
//! temporary directory, open to every local account (a test may connect as uid 65534),
//! stopped when dropped. Tests start one as the "session bus" (notifications, idle
//! monitors) and another as the "system bus" (logind), and hand the addresses to the
//! code under test through `DBUS_SESSION_BUS_ADDRESS` / `DBUS_SYSTEM_BUS_ADDRESS`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

pub struct Bus {
    child: Child,
    /// The address to connect to (`unix:path=…`).
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Starts a daemon and waits until it listens. Panics with the reason when
    /// `dbus-daemon` is missing (`scripts/test-deps` installs it).
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the bus directory");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write the bus configuration");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon (Debian package `dbus-daemon`; scripts/test-deps installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("dbus-daemon prints its address");
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        // Other accounts (a helper run as uid 65534) must reach the socket too.
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777));
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
