//! The agent's footprint on a workstation: CPU time and peak RSS of the real
//! `daymeter-agent run` binary at a 1 s poll with 400 other processes running, and of
//! its session helper (`daymeter-agent session`) in a desktop session made of a private
//! `dbus-daemon`, a notification server and a GNOME idle monitor stand-in (the helper
//! reports idle every poll and shows a launch reminder for every product start); the
//! latency from a product's start to the agent opening its session and to the reminder
//! reaching the notification server; and, for comparison, the same run of a loop doing
//! a sysinfo full process refresh every second.
//!
//! `cargo bench -p daymeter-agent --bench footprint`; `DAYMETER_BENCH_SECONDS` sets the
//! measured run (default 600 s, the ten minutes). The agent runs offline (its
//! collector address refuses connections, so it journals and backs off): the state it
//! spends most of its life in is polling, which is what this measures.
//!
//! Linux only: CPU time and RSS are read from `/proc/PID/stat` and `/proc/PID/status`.

#[cfg(target_os = "linux")]
#[path = "../tests/support/bus.rs"]
mod bus;
#[cfg(target_os = "linux")]
#[path = "../tests/support/desktop.rs"]
mod desktop;
#[cfg(target_os = "linux")]
#[path = "footprint/linux.rs"]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("the footprint bench measures the Linux agent through /proc; nothing to do here");
}
