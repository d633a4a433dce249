//! Harness for the black-box tests: the real binaries, on free loopback
//! ports, in temporary directories, killed when the test ends.
//!
//! Nothing here sleeps to synchronise: waits poll a condition until a
//! deadline and fail with what was last seen.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proto::mdp::Dialect;
use transport::{Client, ClientOptions};

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
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
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bins", "--workspace", "--profile", &profile])
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err("building the workspace binaries failed (the compiler's errors are above)".into())
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
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
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let child = command
            .stdin(Stdio::null())
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

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for exit, up to `timeout`; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// One bus's endpoints.
#[derive(Clone, Debug)]
pub struct BusEndpoints {
    pub frontend: String,
    pub backend: String,
    pub capture: Option<String>,
}

/// `hub serve` on free ports (broker, the three default buses, HTTP) with its
/// own data directory.
pub struct HubProc {
    pub proc: Proc,
    pub broker: String,
    pub data: tempfile::TempDir,
    pub buses: std::collections::HashMap<String, BusEndpoints>,
    pub http: String,
}

/// Free endpoints for the default buses and HTTP, as `hub serve` flags.
pub struct HubPorts {
    pub buses: std::collections::HashMap<String, BusEndpoints>,
    pub http: String,
}

impl HubPorts {
    pub fn new() -> HubPorts {
        let buses = ["state", "event", "metric"]
            .into_iter()
            .map(|name| {
                (
                    name.to_string(),
                    BusEndpoints { frontend: free_endpoint(), backend: free_endpoint(), capture: None },
                )
            })
            .collect();
        HubPorts { buses, http: format!("127.0.0.1:{}", free_port()) }
    }

    /// No `--bus` flags (the buses come from a config file), just HTTP.
    pub fn http_only() -> HubPorts {
        HubPorts { buses: Default::default(), http: format!("127.0.0.1:{}", free_port()) }
    }

    /// One bus on free ports, optionally with a capture endpoint.
    pub fn one_bus(name: &str, capture: bool) -> HubPorts {
        let bus = BusEndpoints {
            frontend: free_endpoint(),
            backend: free_endpoint(),
            capture: capture.then(free_endpoint),
        };
        HubPorts { buses: [(name.to_string(), bus)].into(), http: format!("127.0.0.1:{}", free_port()) }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut names: Vec<_> = self.buses.keys().collect();
        names.sort();
        for name in names {
            let bus = &self.buses[name];
            args.push("--bus".into());
            match &bus.capture {
                Some(capture) => args.push(format!("{name}={},{},{capture}", bus.frontend, bus.backend)),
                None => args.push(format!("{name}={},{}", bus.frontend, bus.backend)),
            }
        }
        args.extend(["--http".into(), self.http.clone()]);
        args
    }
}

impl Default for HubPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl HubProc {
    pub fn start() -> HubProc {
        Self::start_with(&[])
    }

    /// Starts a hub with extra `serve` arguments and waits until its broker answers.
    pub fn start_with(extra: &[&str]) -> HubProc {
        let data = tempfile::tempdir().expect("temp dir");
        Self::start_in(data, &free_endpoint(), extra)
    }

    /// Starts a hub with `data` as its data directory. `broker` is tried
    /// first; if the hub cannot bind (a "free" port taken meanwhile by some
    /// outgoing connection), it is started again on fresh ports.
    pub fn start_in(data: tempfile::TempDir, broker: &str, extra: &[&str]) -> HubProc {
        let mut broker = broker.to_string();
        let mut data = data;
        for _ in 0..4 {
            match Self::try_start(data, &broker, HubPorts::new(), extra) {
                Ok(hub) => return hub,
                Err(back) => data = back,
            }
            broker = free_endpoint();
        }
        panic!("the hub would not start on fresh ports four times over");
    }

    /// Starts a hub on exactly these endpoints (to restart one where it was).
    pub fn start_with_ports(
        data: tempfile::TempDir,
        broker: &str,
        ports: HubPorts,
        extra: &[&str],
    ) -> HubProc {
        Self::try_start(data, broker, ports, extra)
            .unwrap_or_else(|_| panic!("the hub would not start on {broker}"))
    }

    /// Starts a hub and waits until its broker answers; gives the data
    /// directory back if the hub exited because an endpoint was taken.
    fn try_start(
        data: tempfile::TempDir,
        broker: &str,
        ports: HubPorts,
        extra: &[&str],
    ) -> Result<HubProc, tempfile::TempDir> {
        let mut cmd = Command::new(bin("hub"));
        cmd.args(["serve", "--broker", broker, "--data-dir"]).arg(data.path()).args(ports.args()).args(extra);
        let proc = Proc::spawn("hub", cmd);
        let mut hub =
            HubProc { proc, broker: broker.to_string(), data, buses: ports.buses, http: ports.http };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if hub.try_call("mmi.service", &["mmi.service"], Duration::from_millis(200)).is_some() {
                return Ok(hub);
            }
            if !hub.proc.is_running() {
                let stderr = hub.proc.stderr();
                if stderr.contains("Address already in use") {
                    let HubProc { data, .. } = hub;
                    return Err(data);
                }
                panic!("the hub exited at start:\n{stderr}");
            }
            assert!(Instant::now() < deadline, "timed out after 20s waiting for the hub's broker to answer");
        }
    }

    /// One request with a short timeout and no retries; `None` on timeout.
    pub fn try_call(&self, service: &str, body: &[&str], timeout: Duration) -> Option<Vec<String>> {
        call(&self.broker, Dialect::Rfc7, service, body, timeout)
    }

    /// Waits until `service` has a registered worker.
    pub fn wait_for_service(&self, service: &str) {
        wait_for(&format!("service {service} to register"), Duration::from_secs(20), || {
            let status = self.try_call("mmi.service", &[service], Duration::from_millis(500))?;
            (status == ["200"]).then_some(())
        });
    }

    /// Waits until `service` has no registered worker.
    pub fn wait_for_no_service(&self, service: &str, timeout: Duration) {
        wait_for(&format!("service {service} to lose its workers"), timeout, || {
            let status = self.try_call("mmi.service", &[service], Duration::from_millis(500))?;
            (status == ["404"]).then_some(())
        });
    }

    /// The endpoints this hub was started on, to restart it in the same place.
    pub fn ports(&self) -> HubPorts {
        HubPorts { buses: self.buses.clone(), http: self.http.clone() }
    }

    pub fn bus(&self, name: &str) -> &BusEndpoints {
        &self.buses[name]
    }

    /// The broker's counters (`mmi.metrics`).
    pub fn metrics(&self) -> serde_json::Value {
        let reply = self.try_call("mmi.metrics", &[], Duration::from_secs(2)).expect("mmi.metrics answers");
        serde_json::from_str(&reply[0]).expect("mmi.metrics is JSON")
    }
}

/// One MDP request through the Rust client; `None` on timeout.
pub fn call(
    broker: &str,
    dialect: Dialect,
    service: &str,
    body: &[&str],
    timeout: Duration,
) -> Option<Vec<String>> {
    let ctx = zmq::Context::new();
    let mut client = Client::new(&ctx, broker, ClientOptions { dialect, timeout, retries: 0 });
    let body: Vec<&[u8]> = body.iter().map(|b| b.as_bytes()).collect();
    let reply = client.request(service, &body).ok()?;
    Some(reply.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect())
}

/// Runs `hub <args>` to completion.
pub fn hub_cli(args: &[&str]) -> Output {
    Command::new(bin("hub")).args(args).output().expect("run hub")
}

/// Starts `hub echo-worker` for `service` on `broker`.
pub fn echo_worker(broker: &str, service: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("hub"));
    cmd.args(["echo-worker", "--broker", broker, "--service", service]).args(extra);
    Proc::spawn(&format!("echo-worker {service}"), cmd)
}

/// The Python interpreter with the interop peers installed (pyzmq,
/// majortomo). `scripts/setup.sh` creates it; `PLANTD_PYTHON` overrides.
pub fn python() -> PathBuf {
    let path = std::env::var_os("PLANTD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/interop-venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for the interop peers at {}: run scripts/setup.sh (scripts/test.sh does), \
         or point PLANTD_PYTHON at a python with pyzmq and majortomo==0.2.0",
        path.display()
    );
    path
}

/// Starts `tests/interop/peers.py <args>`.
pub fn python_peer(name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/interop/peers.py")).args(args);
    Proc::spawn(name, cmd)
}

/// Runs `tests/interop/peers.py <args>` to completion.
pub fn python_run(args: &[&str]) -> Output {
    Command::new(python())
        .arg(workspace_root().join("tests/interop/peers.py"))
        .args(args)
        .output()
        .expect("run peers.py")
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the HTTP endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the HTTP response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// One Prometheus sample's value from `/metrics` text, e.g. `plantd_bus_messages_down_total{bus="metric"}`.
pub fn prometheus_value(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Writes an agent config for hub `hub` (broker and metric bus) with
/// `channels` (TOML `[[channel]]` tables) and `extra` TOML; returns its path.
pub fn agent_config(dir: &Path, id: &str, broker: &str, bus: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    let data = dir.join(format!("{id}-data"));
    let text = format!(
        "id = \"{id}\"\nboard = \"sim\"\ndata_dir = \"{}\"\n\n[hub]\nbroker = \"{broker}\"\nbus = \"{bus}\"\ntimeout_ms = 1000\n\n{body}\n",
        data.display()
    );
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// `agent run --config <path>`.
pub fn agent_run(config: &Path) -> Proc {
    let mut cmd = Command::new(bin("agent"));
    cmd.arg("run").arg("--config").arg(config);
    Proc::spawn("agent", cmd)
}

/// The running agent's status (from its control socket), if it answers.
pub fn agent_status(data_dir: &Path) -> Option<serde_json::Value> {
    agent::control::ask_status(data_dir, Duration::from_millis(500)).ok()
}

/// Polls the agent's status until `check` accepts it.
pub fn wait_for_status<T>(
    data_dir: &Path,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&serde_json::Value) -> Option<T>,
) -> T {
    wait_for(what, timeout, || agent_status(data_dir).as_ref().and_then(&mut check))
}

/// A durable or best-effort sample as a subscriber on the metric bus saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// When the subscriber received it.
    pub at: Instant,
    pub channel: String,
    pub epoch: u64,
    pub seq: u64,
    pub historical: bool,
    pub durable: bool,
}

/// Collects every sample published under `prefix` on a bus backend, on a
/// thread, until dropped.
pub struct Collector {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(backend: &str, prefix: &str) -> Collector {
        use std::sync::atomic::Ordering;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ctx = zmq::Context::new();
        let mut sub = transport::Subscriber::connect(&ctx, backend, &[prefix.as_bytes()]).expect("subscribe");
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            while !stop2.load(Ordering::SeqCst) {
                let Ok(Some(m)) = sub.recv(Duration::from_millis(50)) else { continue };
                let Ok(j) = serde_json::from_slice::<serde_json::Value>(&m.payload) else { continue };
                let seen = Seen {
                    at: Instant::now(),
                    channel: j["channel"].as_str().unwrap_or("").to_string(),
                    epoch: j["epoch"].as_u64().unwrap_or(0),
                    seq: j["seq"].as_u64().unwrap_or(0),
                    historical: j["historical"] == serde_json::json!(true),
                    durable: j["durable"] == serde_json::json!(true),
                };
                seen2.lock().unwrap().push(seen);
            }
        });
        Collector { seen, stop, thread: Some(thread) }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Durable samples seen so far.
    pub fn durable(&self) -> Vec<Seen> {
        self.snapshot().into_iter().filter(|s| s.durable).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An ARM build of the agent, run under qemu-user with the sysroot that
/// scripts/cross-build.sh unpacked. `None` (after saying so) only when
/// PLANTD_SKIP_ARM=1; otherwise a missing build is a failure, with advice.
pub fn arm_agent(arch: &str) -> Option<Command> {
    let (triple, tuple, qemu) = match arch {
        "arm64" => ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu", "qemu-aarch64"),
        "armhf" => ("armv7-unknown-linux-gnueabihf", "arm-linux-gnueabihf", "qemu-arm"),
        other => panic!("unknown architecture {other}"),
    };
    let root = workspace_root();
    let binary = root.join(format!("target/{triple}/release/agent"));
    if std::env::var("PLANTD_SKIP_ARM").as_deref() == Ok("1") {
        eprintln!("PLANTD_SKIP_ARM=1: not testing the {arch} agent");
        return None;
    }
    assert!(
        binary.exists(),
        "no {arch} agent at {}: run scripts/cross-build.sh {arch} (scripts/test.sh does), or set PLANTD_SKIP_ARM=1",
        binary.display()
    );
    let sysroot = root.join(format!("target/sysroot/{arch}"));
    let libs = format!("{}/usr/lib/{tuple}:{}/lib/{tuple}", sysroot.display(), sysroot.display());
    let mut cmd = Command::new(qemu);
    cmd.args(["-L", &format!("/usr/{tuple}"), "-E", &format!("LD_LIBRARY_PATH={libs}")]).arg(binary);
    Some(cmd)
}
