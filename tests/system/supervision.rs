//! Running under systemd: readiness, the watchdog, reloads and stops, as a
//! unit with `Type=notify` and `WatchdogSec=` sees them (through a
//! notification socket of the test's own).

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
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("RUST_LOG");
    let mut hub = Proc::spawn("hub", cmd);

    systemd.wait_for("READY=1", 1, 20 * SECOND);
    // Pinged every half second while every loop turns.
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
