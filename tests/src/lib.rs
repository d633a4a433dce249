//! Harness for the black-box tests: the real binaries, on free loopback
//! ports, in temporary directories, killed when the test ends.
//!
//! Nothing here sleeps to synchronise: waits poll a condition until a
//! deadline and fail with what was last seen.

mod agent;
mod hub;
mod mqtt;
mod nats;
mod python;
mod secure;

pub use agent::*;
pub use hub::*;
pub use mqtt::*;
pub use nats::*;
pub use python::*;
pub use secure::*;
pub use testkit::*;

use std::process::Command;

/// Fails (never skips) when the namespaces a storage-fault test needs cannot
/// be made: those tests run a binary in user, mount and pid namespaces with
/// a small tmpfs as its disk.
pub fn require_unshare() {
    let out = output(Command::new("unshare").args(["-Urmpf", "--kill-child", "true"]));
    assert!(
        out.status.success(),
        "`unshare -Urmpf true` fails here ({}): the disk-full tests need unprivileged user, mount and pid \
         namespaces. Install util-linux, and allow them (sysctl kernel.unprivileged_userns_clone=1, \
         user.max_user_namespaces > 0; in a container, e.g. docker --security-opt seccomp=unconfined), \
         or run the tests as root. This test is not skipped: disk-full handling would go untested.",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
