//! Child processes and waiting: the built binaries, free ports, processes
//! killed on drop, lines read with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ sits in the workspace").to_path_buf()
}

/// The directory this test binary's profile builds into (`target/debug`, ...).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/system-<hash>
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Path to one of the workspace's binaries. The first call builds them all
/// with the test's own profile, so a test never runs a stale binary.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILD.get_or_init(|| {
        let profile = match profile_dir().file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        // scripts/test.sh has built them already, so this is a check that
        // nothing is stale; the deadline covers a cold build on two cores.
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--bins", "--workspace", "--profile", &profile]);
        cargo.current_dir(workspace_root());
        // Cargo gives a test process its package's variables (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, ...). Some build scripts (ring's) rerun when
        // those differ from the last build's, and everything above them is
        // rebuilt: a minute per test binary. Build as a shell would.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let per_package =
                ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"];
            if per_package.iter().any(|p| name.starts_with(p))
                || name == "CARGO_TARGET_TMPDIR"
                || name == "OUT_DIR"
            {
                cargo.env_remove(&*name);
            }
        }
        let out = run_bounded("cargo build --bins", &mut cargo, Duration::from_secs(20 * 60));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("building the workspace binaries failed:\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on right now, and that no
/// outgoing connection will take before the test binds it.
///
/// Tests pick a port, then start a process that binds it, sometimes many
/// seconds later (a hub restarted where it was). A port from the kernel's
/// ephemeral range can be taken meanwhile as the local end of any of the
/// thousands of connections other tests make, so ports come from below that
/// range, each handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Some((low, high)) = below_ephemeral_range() {
        let span = u32::from(high - low);
        // A per-process start, so that two test processes rarely walk the same ports.
        let _ = NEXT.compare_exchange(0, 1 + std::process::id() % span, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..span {
            let port = low + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Ports from 20000 up to the start of the kernel's ephemeral range (32768 by
/// default), or `None` when that range starts too low to leave room.
fn below_ephemeral_range() -> Option<(u16, u16)> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (first_ephemeral > 21000).then_some((20000, first_ephemeral))
}

/// The nats-server binary: `PLANTD_NATS_SERVER`, else on the PATH or in
/// /usr/sbin (where Debian puts it). Missing, it panics with what to install:
/// the tests and benchmarks that need it fail, they are not skipped.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PLANTD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no nats-server: the bridge's tests and benchmark run a real NATS server with JetStream. \
                 Install it with `apt-get install nats-server` (scripts/setup.sh does, and scripts/test.sh \
                 runs that), or point PLANTD_NATS_SERVER at a nats-server binary"
            )
        })
}

/// A fresh `tcp://127.0.0.1:<port>` endpoint.
pub fn free_endpoint() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// How long a one-shot command of ours (`hub call`, `agent check`, ...) may
/// take before a test calls it stuck. They finish in milliseconds to seconds.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// [`run_bounded`] with [`CLI_DEADLINE`], for one-shot commands and tools.
pub fn output(command: &mut Command) -> Output {
    run_bounded(&format!("{command:?}"), command, CLI_DEADLINE)
}

/// Runs `command` to completion and returns what it printed, but never
/// waits longer than `timeout`: past it the process is killed and the test
/// fails with its captured output. Use this instead of `Command::output`,
/// which waits forever (a child spinning under qemu once hung CI that way).
pub fn run_bounded(what: &str, command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drain both pipes on threads: a child blocked on a full pipe never exits.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut status = None;
    if !wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => panic!(
            "{what} did not finish within {timeout:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// What a [`drain`] thread read, waiting at most a few seconds more: the
/// pipe closes when the child exits, unless something it started holds it.
fn collect(reader: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    wait_until(Duration::from_secs(5), || reader.is_finished());
    if reader.is_finished() {
        reader.join().unwrap_or_default()
    } else {
        b"(not collected: a process it started still holds the pipe open)".to_vec()
    }
}

/// Polls `done` until it is true or `timeout` passes; returns whether it became true.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that is killed (SIGKILL) when dropped. Its stderr goes to
/// a file, printed when a test fails so the cause is visible.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command.stdin(Stdio::null());
        Self::spawn_as_set(name, command)
    }

    /// [`Proc::spawn`] with its stdin a pipe ([`Proc::take_stdin`]), for a peer driven by commands.
    pub fn spawn_with_stdin(name: &str, mut command: Command) -> Proc {
        command.stdin(Stdio::piped());
        Self::spawn_as_set(name, command)
    }

    fn spawn_as_set(name: &str, mut command: Command) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child, stderr_path, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout already taken")
    }

    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child.stdin.take().expect("stdin is a pipe (spawn_with_stdin), not taken yet")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for exit, up to `timeout`; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} stderr (last lines) ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Reads lines from a child's stdout on a thread, so tests can wait for a
/// line with a deadline instead of blocking.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(stdout: ChildStdout) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_and_fails_with_its_output() {
        let started = Instant::now();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 60"]);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_bounded("a stuck command", &mut cmd, Duration::from_millis(300))
        }));
        let message = *outcome.expect_err("a stuck command fails").downcast::<String>().unwrap();
        assert!(message.contains("did not finish within 300ms"), "{message}");
        assert!(message.contains("started"), "its output is shown: {message}");
        assert!(started.elapsed() < Duration::from_secs(10), "killed, not waited for");
    }

    #[test]
    fn a_command_that_finishes_gives_its_output_and_status() {
        let out = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(
            (out.status.code(), &out.stdout[..], &out.stderr[..]),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
    }
}
