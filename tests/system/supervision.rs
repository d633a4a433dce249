//! Running under systemd: readiness, the watchdog, reloads and stops, as a
//! unit with `Type=notify` and `WatchdogSec=` sees them (through a
//! notification socket of the test's own); and an agent that stays
//! responsive with a slow sensor, a bad request, or a cloned id.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// What systemd's notification socket would receive.
struct Notifications {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Notifications { socket, seen: Vec::new() }
    }

    /// Waits until `count` notifications equal to `state` have arrived.
    fn wait_for(&mut self, state: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        while self.seen.iter().filter(|s| *s == state).count() < count {
            assert!(
                Instant::now() < deadline,
                "{count} × {state} not received within {timeout:?}: {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

#[test]
fn the_hub_tells_systemd_it_is_ready_pings_its_watchdog_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = Notifications::bind(&dir.path().join("notify"));
    let config = dir.path().join("hub.toml");
    let write_config = |level: &str| {
        let text = format!("data_dir = \"{}\"\nlog_level = \"{level}\"\n", dir.path().join("data").display());
        std::fs::write(&config, text).unwrap();
    };
    write_config("info");
    let broker = free_endpoint();
    let mut cmd = Command::new(bin("hub"));
    cmd.args(["serve", "--config"]).arg(&config).args(["--broker", &broker]).args(HubPorts::new().args());
    cmd.env("NOTIFY_SOCKET", dir.path().join("notify"))
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("RUST_LOG");
    let mut hub = Proc::spawn("hub", cmd);

    systemd.wait_for("READY=1", 1, 20 * SECOND);
    // Pinged every second while every loop turns.
    systemd.wait_for("WATCHDOG=1", 3, 10 * SECOND);

    // SIGHUP re-reads the log level, and the hub keeps running.
    write_config("debug");
    hub.signal(libc::SIGHUP);
    wait_for("the new log level", 10 * SECOND, || hub.stderr().contains("log level: debug").then_some(()));
    assert!(hub.is_running(), "SIGHUP ended the hub:\n{}", hub.stderr());
    assert!(call(broker.as_str(), proto::mdp::Dialect::Rfc7, "mmi.service", &["mmi.service"], 2 * SECOND)
        .is_some());

    hub.signal(libc::SIGTERM);
    systemd.wait_for("STOPPING=1", 1, 10 * SECOND);
    let status = hub.wait_exit(20 * SECOND).expect("the hub stops");
    assert!(status.success(), "{status:?}\n{}", hub.stderr());
}

#[test]
fn the_agent_tells_systemd_it_is_ready_and_pings_while_its_executor_turns() {
    let hub = HubProc::start();
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = Notifications::bind(&dir.path().join("notify"));
    let metric = hub.bus("metric").frontend.clone();
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric, "");
    // A top-level key: before the tables agent_config writes.
    let with_level = |level: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        let rest: Vec<&str> = text.lines().filter(|l| !l.starts_with("log_level")).collect();
        std::fs::write(&config, format!("log_level = \"{level}\"\n{}\n", rest.join("\n"))).unwrap();
    };
    with_level("info");
    let mut cmd = Command::new(bin("agent"));
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env("NOTIFY_SOCKET", dir.path().join("notify"))
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("RUST_LOG");
    let mut agent = Proc::spawn("agent", cmd);
    systemd.wait_for("READY=1", 1, 20 * SECOND);
    systemd.wait_for("WATCHDOG=1", 3, 10 * SECOND);
    with_level("debug");
    agent.signal(libc::SIGHUP);
    wait_for("the new log level", 10 * SECOND, || agent.stderr().contains("log level: debug").then_some(()));
    agent.signal(libc::SIGTERM);
    systemd.wait_for("STOPPING=1", 1, 10 * SECOND);
    let status = agent.wait_exit(20 * SECOND).expect("the agent stops");
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
}

/// A channel whose every read blocks for a second (a DS18B20's conversion,
/// three times over) beside a fast durable one.
const SLOW_AND_FAST: &str = "[[channel]]\nname = \"slow\"\nperiod_ms = 200\ndriver = { kind = \"slow\", read_ms = 1000 }\n\n[[channel]]\nname = \"fast\"\nperiod_ms = 50\ndriver = { kind = \"ramp\" }\n";

#[test]
fn a_blocking_sensor_stalls_neither_the_other_channels_nor_the_uplink_nor_status() {
    let hub = HubProc::start();
    let dir = tempfile::tempdir().unwrap();
    let metric = hub.bus("metric");
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, SLOW_AND_FAST);
    let data = dir.path().join("pump-1-data");
    let collector = Collector::start(metric.backend.as_str(), "org.plantd.Metric.pump-1.");
    let _agent = agent_run(&config);
    let start = wait_for_status(&data, "the agent to sample", 20 * SECOND, |s| {
        s["channels"]["fast"]["samples"].as_u64()
    });
    let started = Instant::now();
    // A status request answers at once however the slow sensor blocks.
    for _ in 0..5 {
        let asked = Instant::now();
        let status = agent::control::ask_status(&data, 2 * SECOND).expect("status answers");
        assert!(asked.elapsed() < Duration::from_millis(500), "status took {:?}", asked.elapsed());
        assert!(status["channels"]["slow"].is_object() || status["channels"]["slow"].is_null());
    }
    wait_for("four seconds of sampling", 10 * SECOND, || (started.elapsed() >= 4 * SECOND).then_some(()));
    let status = agent_status(&data).expect("status");
    let fast = status["channels"]["fast"]["samples"].as_u64().unwrap() - start;
    let slow = status["channels"]["slow"]["samples"].as_u64().unwrap_or(0);
    // 50 ms for ~4 s is ~80 reads; a blocked executor would manage ~4.
    assert!(fast >= 50, "the fast channel read {fast} times in 4 s beside a 1 s sensor");
    assert!((2..=6).contains(&slow), "the slow channel read {slow} times in ~4 s");
    // And the uplink kept sending: fast samples reached the bus all along.
    let durable = collector.durable();
    let fast_seen = durable.iter().filter(|s| s.channel == "fast").count();
    assert!(fast_seen >= 40, "only {fast_seen} fast samples reached the hub");
}

#[test]
fn the_agent_control_socket_answers_junk_and_keeps_serving() {
    let hub = HubProc::start();
    let dir = tempfile::tempdir().unwrap();
    let metric = hub.bus("metric").frontend.clone();
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric, "");
    let data = dir.path().join("pump-1-data");
    let _agent = agent_run(&config);
    wait_for_status(&data, "the agent to answer", 20 * SECOND, |_| Some(()));
    for junk in [&b"what"[..], &[0xff; 300][..]] {
        let reply = transport::control::ask(&data, junk, 2 * SECOND).expect("an answer, not silence");
        assert!(String::from_utf8_lossy(&reply).contains("error"));
    }
    // A multipart request, straight on the socket.
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).unwrap();
    req.connect(&transport::control::endpoint(&data)).unwrap();
    req.send_multipart([&b"status"[..], b"extra"], 0).unwrap();
    assert_eq!(req.poll(zmq::POLLIN, 2000).unwrap(), 1, "a multipart request is answered");
    assert!(agent_status(&data).is_some(), "status still answers");
}

#[test]
fn two_controllers_with_one_id_say_so_on_the_one_refused() {
    let hub = HubProc::start();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let metric = hub.bus("metric").frontend.clone();
    let first = agent_run(&agent_config(a.path(), "pump-1", &hub.broker, &metric, ""));
    hub.wait_for_service("org.plantd.Agent.pump-1");
    let clone = agent_run(&agent_config(b.path(), "pump-1", &hub.broker, &metric, ""));
    let data = b.path().join("pump-1-data");
    wait_for_status(&data, "the clone to be refused three times", 60 * SECOND, |s| {
        (s["service"]["refused_in_a_row"].as_u64()? >= 3).then_some(())
    });
    wait_for("the clone to say why", 10 * SECOND, || {
        clone.stderr().contains("another controller is serving it").then_some(())
    });
    let original = agent_status(&a.path().join("pump-1-data")).expect("status");
    assert_eq!(original["service"]["refused"], 0, "the first one keeps its service");
    drop(first);
}
