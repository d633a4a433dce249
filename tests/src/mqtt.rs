//! An MQTT broker (Debian's mosquitto) and a Sparkplug B host (paho-mqtt,
//! tests/interop/sparkplug_host.py) for the Sparkplug tests.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{free_port, wait_for, Lines, Proc};

use crate::python;

/// mosquitto on a free loopback port, anonymous, in memory (and, with
/// [`Mosquitto::start_tls`], a TLS listener beside it).
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, and the CA that signed its certificate.
    pub tls: Option<(u16, std::path::PathBuf)>,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

/// Runs openssl with `args` in `dir`, failing the test if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = testkit::output(Command::new("openssl").current_dir(dir).args(args));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with(false)
    }

    /// With a TLS listener too, its certificate (for 127.0.0.1) signed by a CA made now.
    pub fn start_tls() -> Mosquitto {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no mosquitto: run scripts/setup.sh (it installs Debian's mosquitto)");
        let (dir, port) = (tempfile::tempdir().unwrap(), free_port());
        // `user root`: mosquitto started as root would drop to its own user, who cannot read this directory.
        let mut text = format!(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {port} 127.0.0.1\n"
        );
        let tls = tls.then(|| {
            let d = dir.path();
            let subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"];
            openssl(d, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"]
                .into_iter()
                .chain(["-days", "2", "-subj", "/CN=plantd test CA"])
                .collect::<Vec<_>>());
            openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr"]
                .into_iter()
                .chain(subject)
                .collect::<Vec<_>>());
            openssl(d, &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
                .into_iter()
                .chain(["-out", "server.crt", "-days", "2", "-copy_extensions", "copy"])
                .collect::<Vec<_>>());
            let tls_port = free_port();
            text += &format!(
                "listener {tls_port} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n",
                d.display()
            );
            (tls_port, d.join("ca.crt"))
        });
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, text).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("mosquitto", cmd);
        for p in [Some(port), tls.as_ref().map(|t| t.0)].into_iter().flatten() {
            wait_for("mosquitto to listen", Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", p)).ok().map(|_| ())
            });
        }
        Mosquitto { port, tls, _dir: dir, _proc: proc }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The Python Sparkplug host: every message of a group, decoded and checked.
pub struct SparkplugHost {
    /// Every message read so far, in order.
    pub seen: Vec<serde_json::Value>,
    /// How many of `seen` a `wait` has looked at (`send` reads ahead without looking).
    looked: usize,
    lines: Lines,
    input: std::process::ChildStdin,
    _proc: Proc,
}

impl SparkplugHost {
    pub fn start(broker: &Mosquitto, group: &str) -> SparkplugHost {
        let mut cmd = Command::new(python());
        cmd.arg(crate::workspace_root().join("tests/interop/sparkplug_host.py"));
        cmd.args(["127.0.0.1", &broker.port.to_string(), group]);
        let mut proc = Proc::spawn_with_stdin("sparkplug host", cmd);
        let (lines, input) = (Lines::new(proc.take_stdout()), proc.take_stdin());
        let mut host = SparkplugHost { seen: Vec::new(), looked: 0, lines, input, _proc: proc };
        host.wait("the host subscribed", Duration::from_secs(20), |m| (m["ready"] == true).then_some(()));
        host
    }

    /// Looks at messages in order, those read ahead by `send` first, until
    /// `check` accepts one (all are kept in `seen`).
    pub fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            while self.looked < self.seen.len() {
                self.looked += 1;
                if let Some(found) = check(&self.seen[self.looked - 1]) {
                    return found;
                }
            }
            let left = deadline.checked_duration_since(Instant::now());
            let Some(line) = left.and_then(|left| self.lines.next(left)) else { break };
            self.seen.push(serde_json::from_str(&line).unwrap_or_default());
        }
        let tail: Vec<String> = self.seen.iter().rev().take(5).map(|m| m.to_string()).collect();
        panic!("timed out after {timeout:?} waiting for {what}; last messages: {tail:#?}");
    }

    /// Sends the host a command (see sparkplug_host.py) and waits until it
    /// is published. What arrives meanwhile is left for the next `wait`: a
    /// reply to the command may come before the host says it sent it.
    pub fn send(&mut self, command: serde_json::Value) {
        writeln!(self.input, "{command}").expect("the host reads commands");
        self.input.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.checked_duration_since(Instant::now());
            let line = left.and_then(|left| self.lines.next(left)).expect("the host publishes within 10 s");
            let message: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if message["sent"] == command {
                return;
            }
            self.seen.push(message);
        }
    }

    /// Every rule the host found broken so far.
    pub fn violations(&self) -> Vec<String> {
        let each = self.seen.iter().flat_map(|m| {
            let found = m["violations"].as_array().cloned().unwrap_or_default();
            found.into_iter().map(move |v| format!("{}: {}", m["topic"], v))
        });
        each.collect()
    }
}
