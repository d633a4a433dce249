//! What the hub's benchmarks share beyond `testkit`: the real `hub serve` as
//! a child process, and endpoints that can be switched to `ipc://`.
#![allow(dead_code)] // each bench uses a different subset

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::bench::process_cpu_time;
use testkit::Proc;

/// A fresh loopback endpoint; `BENCH_TRANSPORT=ipc` makes it an `ipc://` path instead.
pub fn endpoint() -> String {
    if std::env::var("BENCH_TRANSPORT").as_deref() == Ok("ipc") {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        return format!("ipc:///tmp/plantd-bench-{}-{n}.sock", std::process::id());
    }
    testkit::free_endpoint()
}

/// The real `hub serve` binary as a child process (killed on drop), measured like majortomo's.
pub struct HubChild {
    pub proc: Proc,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl HubChild {
    pub fn start() -> HubChild {
        Self::start_with(&[])
    }

    /// Starts `hub serve` with extra arguments (its broker on a free endpoint).
    pub fn start_with(extra: &[&str]) -> HubChild {
        let data = tempfile::tempdir().expect("temp dir");
        let endpoint = endpoint();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
        cmd.args(["serve", "--broker", &endpoint, "--data-dir"]).arg(data.path()).args(extra);
        HubChild { proc: Proc::spawn("hub", cmd), endpoint, _data: data }
    }

    pub fn cpu(&self) -> Duration {
        process_cpu_time(self.proc.pid())
    }
}
