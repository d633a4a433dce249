//! The hub's web view in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol by `tests/interop/web_check.py`, against a hub
//! with an HTTP token and a simulated agent whose durable samples flow (a
//! real subscriber listens on the metric bus, so ingest accepts them). And
//! what guards it, over raw HTTP: the Host check against DNS rebinding, the
//! headers that forbid framing, the token only in a header, stream tickets,
//! and state changes kept small whatever clients write.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);
const MILLI: Duration = Duration::from_millis(1);

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

/// A random token in a file only its owner reads, and a hub config naming it
/// (with `extra` lines in `[http]`); returns (token, config path).
fn token_config(dir: &Path, extra: &str) -> (String, PathBuf) {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token_file = dir.join("http.token");
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&token_file).unwrap();
    writeln!(file, "{token}").unwrap();
    let config = dir.join("hub.toml");
    std::fs::write(&config, format!("[http]\ntoken_file = \"{}\"\n{extra}", token_file.display())).unwrap();
    (token, config)
}

/// One HTTP/1.1 request to `address`, naming it in Host unless `headers`
/// holds a Host: (status, head, body).
fn request(address: &str, path: &str, headers: &str) -> (u16, String, String) {
    let host = if headers.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        format!("Host: {address}\r\n")
    };
    raw_request(address, &format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n{headers}\r\n"))
}

/// `text` sent as is to `address`: (status, head, body).
fn raw_request(address: &str, text: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP endpoint");
    stream.set_read_timeout(Some(10 * SECOND)).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A live stream opened with `path`: (status, head, what came within `read_for`).
fn stream_for(address: &str, path: &str, read_for: Duration) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let deadline = Instant::now() + read_for;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let at = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, answer[at..].to_vec())
}

#[test]
fn the_web_view_shows_agents_counters_and_a_live_chart_and_survives_a_hub_restart() {
    let started = std::time::Instant::now();
    // First, so a machine without the browser fails at once, saying what to install.
    let chromium = Chromium::start();
    let dir = tempfile::tempdir().unwrap();
    // With a token: the page asks for it, and sends it only in a header.
    let (token, hub_config) = token_config(dir.path(), "");
    let hub_config = hub_config.to_str().unwrap().to_string();
    let hub = HubProc::start_with(&["--config", &hub_config]);
    let metric = hub.bus("metric").clone();
    // A real consumer: without one, ingest holds the agent's batches back.
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.");
    let dir = tempfile::tempdir().unwrap();
    let channels = "[[channel]]\nname = \"tank_level\"\nperiod_ms = 100\ndriver = { kind = \"sine\" }\n\n\
                    [[channel]]\nname = \"pump_current\"\nperiod_ms = 250\ndriver = { kind = \"ramp\" }\n\n\
                    [[channel]]\nname = \"tank_temp\"\nperiod_ms = 250\n\
                    driver = { kind = \"step\", levels = [90.0, 91.0], every_s = 1.0 }\nalarm = { hi = 80.0 }\n";
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
        "--alarm",
        "tank_temp",
        "--outage",
        "--token",
        &token,
    ]);
    if let Some(shot) = std::env::var_os("PLANTD_WEB_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let mut check = Proc::spawn("web_check.py", cmd);
    let lines = Lines::new(check.take_stdout());

    // Loaded without console errors or CSP violations, the agent listed (its alarm shown),
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
    let _hub = HubProc::start_with_ports(data, &broker, ports, &["--config", &hub_config]);
    wait_step(&lines, &mut check, "reconnected", 60 * SECOND);
    let status = check.wait_exit(10 * SECOND).expect("web_check.py exits once it has reported");
    assert!(status.success(), "web_check.py failed ({status}):\n{}", check.stderr());
    drop(chromium);
    eprintln!("the browser test took {:?}", started.elapsed());
}

#[test]
fn only_its_own_names_a_token_in_a_header_and_single_use_stream_tickets_open_the_web_view() {
    let dir = tempfile::tempdir().unwrap();
    let (token, config) =
        token_config(dir.path(), "allowed_hosts = [\"hub.plant.example\"]\nticket_ttl_ms = 1000\n");
    let hub = HubProc::start_with(&["--config", config.to_str().unwrap()]);
    let http = hub.http.as_str();
    let port = http.rsplit_once(':').unwrap().1;
    let bearer = format!("Authorization: Bearer {token}\r\n");

    // DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 names
    // evil.example. Refused, health checks and the page's own code too.
    for path in ["/", "/api/overview", "/healthz", "/metrics"] {
        let (status, _, body) = request(http, path, &format!("Host: evil.example:{port}\r\n{bearer}"));
        assert_eq!(status, 421, "{path}: {body}");
        assert!(body.contains("allowed_hosts"), "says what to do: {body}");
    }
    assert_eq!(request(http, "/healthz", &format!("Host: localhost:{port}\r\n")).0, 200);
    assert_eq!(request(http, "/healthz", "Host: hub.plant.example\r\n").0, 200, "a configured name");
    assert_eq!(raw_request(http, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").0, 400);
    assert_eq!(raw_request(http, "GET /healthz HTTP/1.0\r\n\r\n").0, 200, "HTTP/1.0 probes need no Host");

    // The page's own code needs no token (it asks for one); every answer forbids framing.
    let (status, head, body) = request(http, "/", "");
    assert_eq!(status, 200);
    assert!(body.contains("id=\"login\""), "the page has its token form");
    for (status, head) in [(status, head), {
        let (s, h, _) = request(http, "/api/overview", "");
        (s, h)
    }] {
        for header in [
            "content-security-policy: default-src 'self'; frame-ancestors 'none'",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "x-content-type-options: nosniff",
        ] {
            assert!(head.contains(header), "{status}: {header} missing in\n{head}");
        }
    }

    // The token in a header only: in the address it is refused, header or not.
    assert_eq!(request(http, "/api/overview", "").0, 401);
    assert_eq!(request(http, "/api/overview", &bearer).0, 200);
    let (status, _, body) = request(http, &format!("/api/overview?token={token}"), &bearer);
    assert_eq!(status, 401);
    assert!(body.contains("Authorization: Bearer") && body.contains("never in the address"), "{body}");
    assert_eq!(request(http, "/api/overview", &format!("Cookie: plantd_token={token}\r\n")).0, 401);

    // A ticket, for a token holder, opens one stream once, for a second.
    assert_eq!(request(http, "/api/ticket", "").0, 401);
    let ticket = || {
        let (status, _, body) = request(http, "/api/ticket", &bearer);
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["expires_in_s"], 1.0);
        body["ticket"].as_str().unwrap().to_string()
    };
    let first = ticket();
    let (status, head, events) = stream_for(http, &format!("/api/events?ticket={first}"), 1500 * MILLI);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/event-stream"));
    assert!(String::from_utf8_lossy(&events).contains("data: {"), "an overview came");
    assert_eq!(request(http, &format!("/api/events?ticket={first}"), "").0, 401, "used");
    assert_eq!(request(http, &format!("/api/overview?ticket={}", ticket()), "").0, 401, "streams only");
    let late = ticket();
    // Waiting out the ticket's life (1 s), not synchronising.
    std::thread::sleep(1200 * MILLI);
    let (status, _, body) = request(http, &format!("/api/events?ticket={late}"), "");
    assert_eq!(status, 401, "expired");
    assert!(body.contains("ask /api/ticket for another"), "{body}");

    let metrics = request(http, "/metrics", &bearer).2;
    let value = |name: &str| prometheus_value(&metrics, name).unwrap_or_else(|| panic!("{name} in /metrics"));
    assert_eq!(value("plantd_http_misdirected_total"), 5, "four rebinding requests and one without Host");
    assert_eq!(value("plantd_http_token_in_query_total"), 1);
    assert_eq!(value("plantd_http_tickets_issued_total"), 3);
    assert_eq!(value("plantd_http_max_tickets"), 256);
    assert!(value("plantd_http_unauthorized_total") >= 6);
}

#[test]
fn a_huge_state_key_or_value_leaves_the_overview_and_its_stream_small() {
    let hub = HubProc::start();
    let http = hub.http.as_str();
    // What the watcher sees on the state bus, straight from a publisher
    // (the state service has bounds of its own: this is the web view's).
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.connect(&hub.bus("state").frontend).unwrap();
    let change = |key: &str, value: Value| {
        let event = proto::state::Event {
            scope: "plant".into(),
            key: Some(key.into()),
            op: proto::state::EventOp::Set,
            value: Some(value),
            ts: "2026-01-01T00:00:00Z".into(),
        };
        let payload = serde_json::to_vec(&event).unwrap();
        publisher.send_multipart([&event.topic().into_bytes(), &payload], 0).unwrap();
    };
    let overview = |http: &str| -> Value {
        let (status, _, body) = request(http, "/api/overview", "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    };
    wait_for("a state change to reach the web view", 20 * SECOND, || {
        change("hello", Value::from(1));
        (overview(http)["state_changes"][0]["key"] == "hello").then_some(())
    });
    // 60 changes of 900 kB (54 MB): the page keeps the last 50, each cut.
    let huge_value = Value::from("v".repeat(900_000));
    for i in 0..59 {
        change(&format!("big-{i}"), huge_value.clone());
    }
    change(&"k".repeat(900_000), Value::from(1));
    let overview = wait_for("the huge changes in the overview", 20 * SECOND, || {
        let (_, _, body) = request(http, "/api/overview", "");
        let parsed: Value = serde_json::from_str(&body).unwrap();
        (parsed["state_changes"][0]["key_bytes"] == 900_000).then_some(body)
    });
    eprintln!("/api/overview with 50 changes of 900 kB: {} bytes", overview.len());
    assert!(overview.len() < 64 << 10, "the overview is {} bytes", overview.len());
    let parsed: Value = serde_json::from_str(&overview).unwrap();
    let changes = parsed["state_changes"].as_array().unwrap();
    assert_eq!(changes.len(), 50);
    assert_eq!(changes[0]["truncated"], serde_json::json!(["key"]));
    assert_eq!(changes[0]["key"].as_str().unwrap().len(), 256);
    assert_eq!(
        (&changes[1]["key"], &changes[1]["truncated"]),
        (&Value::from("big-58"), &serde_json::json!(["value"]))
    );
    assert_eq!(changes[1]["value_bytes"], 900_002);
    assert!(changes[1]["value_preview"].as_str().unwrap().len() <= 256);

    // The live stream: an overview a second, each as small.
    let (status, _, events) = stream_for(http, "/api/events", 3 * SECOND);
    assert_eq!(status, 200);
    let sent = String::from_utf8_lossy(&events);
    let count = sent.matches("data: ").count();
    eprintln!("/api/events: {} bytes in 3 s ({count} events)", events.len());
    assert!(count >= 2, "{count} events in 3 s");
    assert!(events.len() < 4 * (64 << 10), "{} bytes in 3 s", events.len());
    let metrics = http_get(http, "/metrics").1;
    assert!(prometheus_value(&metrics, "plantd_http_web_state_truncated_total").unwrap() >= 60);
}
