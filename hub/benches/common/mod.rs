//! Helpers shared by the benchmarks: the real `hub serve` as a child process,
//! free endpoints, named threads, process CPU time.
#![allow(dead_code)] // each bench uses a different subset

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

pub fn named<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().name(name.into()).spawn(f).unwrap()
}

pub fn free_endpoint() -> String {
    if std::env::var("BENCH_TRANSPORT").as_deref() == Ok("ipc") {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        return format!("ipc:///tmp/plantd-bench-{}-{n}.sock", std::process::id());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("tcp://127.0.0.1:{port}")
}

/// User + system CPU time a process has used, from /proc/<pid>/stat.
pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// The real `hub serve` binary as a child process, measured like majortomo's.
pub struct HubChild {
    pub child: std::process::Child,
    pub endpoint: String,
    _data: TempDir,
}

impl HubChild {
    pub fn start() -> HubChild {
        Self::start_with(&[])
    }

    /// Starts `hub serve` with extra arguments (its broker on a free port).
    pub fn start_with(extra: &[&str]) -> HubChild {
        let data = TempDir::new();
        let endpoint = free_endpoint();
        let child = Command::new(env!("CARGO_BIN_EXE_hub"))
            .args(["serve", "--broker", &endpoint, "--data-dir"])
            .arg(&data.0)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hub serve");
        HubChild { child, endpoint, _data: data }
    }

    pub fn cpu(&self) -> Duration {
        process_cpu_time(self.child.id())
    }
}

impl Drop for HubChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop (the bench avoids a tempfile dependency).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("plantd-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
