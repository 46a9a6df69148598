//! Starting a program the test has just copied under a product's name.
//!
//! Tests run on many threads of one process. While one thread writes its copy, another
//! thread's `fork` may carry that copy's write descriptor into a child for the moment
//! before the child's `exec` closes it; an `exec` of the copy in that moment fails with
//! ETXTBSY. The copy is complete, so trying again a few milliseconds later is correct.

#![allow(dead_code)]

use std::io::ErrorKind;
use std::process::{Child, Command};
use std::time::Duration;

/// `command.spawn()`, tried again while the executable is busy (up to half a second).
pub fn spawn_fresh_copy(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => return spawned,
        }
    }
}
