//! The hub's web view in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol by `tests/interop/web_check.py`, against a hub
//! with a simulated agent whose durable samples flow (a real subscriber
//! listens on the metric bus, so ingest accepts them).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// The Chromium binary: `PLANTD_CHROMIUM`, or `chromium` on the PATH. A
/// missing browser fails the test (with what to install), it is not skipped.
fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PLANTD_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "PLANTD_CHROMIUM={} is not a file", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no chromium on the PATH: the web view's browser test needs Debian's headless Chromium. \
                 Install it with `apt-get install chromium` (scripts/setup.sh does, and scripts/test.sh \
                 runs that), or point PLANTD_CHROMIUM at a Chromium binary"
            )
        })
}

/// Headless Chromium with a fresh profile, its DevTools endpoint on a port of
/// its choosing on 127.0.0.1. It runs in a process group of its own, killed
/// whole (renderers and zygote too) when this is dropped.
struct Chromium {
    proc: Proc,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let profile = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(chromium_binary());
        cmd.args([
            "--headless",
            "--no-sandbox", // as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            // No connections of its own: this machine's network refuses them.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .process_group(0);
        let mut proc = Proc::spawn("chromium", cmd);
        // Chromium writes the port it took (and the browser's path) there.
        let port_file = profile.path().join("DevToolsActivePort");
        let port = wait_for("Chromium's DevTools port", 30 * SECOND, || {
            assert!(proc.is_running(), "chromium exited at start:\n{}", proc.stderr());
            let text = std::fs::read_to_string(&port_file).ok()?;
            let (port, rest) = text.split_once('\n')?;
            (!rest.is_empty()).then_some(())?; // both lines written
            port.trim().parse::<u16>().ok().filter(|p| *p > 0)
        });
        Chromium { proc, devtools: format!("127.0.0.1:{port}"), _profile: profile }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: killpg(2) on the process group we created for our own child.
        unsafe {
            libc::killpg(self.proc.pid() as i32, libc::SIGKILL);
        }
    }
}

/// Reads what `web_check.py` reports (JSON lines `{"step": ...}`) up to step
/// `want`; fails with its output when it exits first or takes too long.
fn wait_step(lines: &Lines, check: &mut Proc, want: &str, timeout: Duration) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(line) = lines.next(left) else {
            let exited = check.wait_exit(5 * SECOND);
            panic!(
                "web_check.py did not report `{want}` within {timeout:?} (exit: {exited:?}):\n{}",
                check.stderr()
            );
        };
        eprintln!("web_check.py: {line}");
        let step: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("web_check.py said {line:?}: {e}"));
        if step["step"] == want {
            return step;
        }
    }
}

#[test]
fn the_web_view_shows_agents_counters_and_a_live_chart_and_survives_a_hub_restart() {
    let started = std::time::Instant::now();
    // First, so a machine without the browser fails at once, saying what to install.
    let chromium = Chromium::start();
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    // A real consumer: without one, ingest holds the agent's batches back.
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.");
    let dir = tempfile::tempdir().unwrap();
    let channels = "[[channel]]\nname = \"tank_level\"\nperiod_ms = 100\ndriver = { kind = \"sine\" }\n\n\
                    [[channel]]\nname = \"pump_current\"\nperiod_ms = 250\ndriver = { kind = \"ramp\" }\n";
    let config = agent_config(dir.path(), "pump-7", &hub.broker, &metric.frontend, channels);
    let _agent = agent_run(&config);
    wait_for("durable samples on the metric bus", 20 * SECOND, || {
        (collector.durable().len() >= 5).then_some(())
    });

    let url = format!("http://{}/", hub.http);
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/interop/web_check.py")).args([
        "--devtools",
        &chromium.devtools,
        "--url",
        &url,
        "--agent",
        "pump-7",
        "--channel",
        "tank_level",
        "--outage",
    ]);
    if let Some(shot) = std::env::var_os("PLANTD_WEB_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let mut check = Proc::spawn("web_check.py", cmd);
    let lines = Lines::new(check.take_stdout());

    // Loaded without console errors or CSP violations, the agent listed,
    // counters moving, a typed topic without samples saying so, a picked
    // channel drawn as its points arrive.
    wait_step(&lines, &mut check, "checked", 60 * SECOND);

    // The hub goes away: the page says disconnected ...
    let (ports, broker) = (hub.ports(), hub.broker.clone());
    let HubProc { mut proc, data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(10 * SECOND).expect("SIGKILL ends the hub");
    wait_step(&lines, &mut check, "disconnected", 30 * SECOND);

    // ... and comes back by itself when the hub does, charting again.
    let _hub = HubProc::start_with_ports(data, &broker, ports, &[]);
    wait_step(&lines, &mut check, "reconnected", 60 * SECOND);
    let status = check.wait_exit(10 * SECOND).expect("web_check.py exits once it has reported");
    assert!(status.success(), "web_check.py failed ({status}):\n{}", check.stderr());
    drop(chromium);
    eprintln!("the browser test took {:?}", started.elapsed());
}
