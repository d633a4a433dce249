//! `agent run` as a child process (natively or, for ARM builds, under
//! qemu-user), its status, and a collector of what reaches the metric bus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{bin, output, wait_for, workspace_root, Proc};

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

/// Runs `agent <args>` to completion (killed, and the test failed, past [`CLI_DEADLINE`]).
pub fn agent_cli(args: &[&str]) -> Output {
    output(Command::new(bin("agent")).args(args))
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

/// A durable or best-effort sample as a subscriber on the metric bus saw it
/// (or any JSON message on a bus).
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// When the subscriber received it.
    pub at: Instant,
    pub channel: String,
    pub epoch: u64,
    pub seq: u64,
    pub historical: bool,
    pub durable: bool,
    pub value: serde_json::Value,
    pub quality: String,
    /// The whole message, for what the fields above leave out (an alarm event's).
    pub json: serde_json::Value,
}

/// Collects every sample published under `prefix` on a bus backend, on a
/// thread, until dropped.
pub struct Collector {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(backend: impl Into<transport::Endpoint>, prefix: &str) -> Collector {
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
                    value: j["value"].clone(),
                    quality: j["quality"].as_str().unwrap_or("").to_string(),
                    json: j,
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

/// An ARM build of the agent, run under qemu-user by `scripts/qemu-run.sh`
/// (the way the README shows). `None` (after saying so) only when
/// PLANTD_SKIP_ARM=1; otherwise a missing build is a failure, with advice.
pub fn arm_agent(arch: &str) -> Option<Command> {
    let triple = match arch {
        "arm64" => "aarch64-unknown-linux-gnu",
        "armhf" => "armv7-unknown-linux-gnueabihf",
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
    let mut cmd = Command::new(root.join("scripts/qemu-run.sh"));
    cmd.arg(arch).arg(binary);
    Some(cmd)
}
