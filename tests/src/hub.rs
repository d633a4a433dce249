//! `hub serve` as a child process, and clients of it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use proto::mdp::Dialect;
use transport::curve::ClientKeys;
use transport::{Client, ClientOptions, Endpoint};

use crate::{bin, free_endpoint, free_port, output, wait_for, Proc};

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
    /// With security: the keys the harness's own calls use (an operator's).
    pub client: Option<ClientKeys>,
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
            match Self::try_start(data, &broker, HubPorts::new(), extra, None) {
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
        Self::try_start(data, broker, ports, extra, None)
            .unwrap_or_else(|_| panic!("the hub would not start on {broker}"))
    }

    /// Starts a hub with `--config config` (a file with `[security]`) on free
    /// ports; the harness calls it as `client`.
    pub fn start_secure(config: &std::path::Path, client: ClientKeys) -> HubProc {
        Self::start_secure_on(config, client, HubPorts::new)
    }

    /// [`HubProc::start_secure`] on the buses `ports` makes (fresh ones per attempt).
    pub fn start_secure_on(
        config: &std::path::Path,
        client: ClientKeys,
        ports: impl Fn() -> HubPorts,
    ) -> HubProc {
        let config = config.to_str().expect("a UTF-8 path");
        for _ in 0..4 {
            let data = tempfile::tempdir().expect("temp dir");
            let broker = free_endpoint();
            if let Ok(hub) =
                Self::try_start(data, &broker, ports(), &["--config", config], Some(client.clone()))
            {
                return hub;
            }
        }
        panic!("the hub would not start on fresh ports four times over");
    }

    /// Starts a hub and waits until it is up (its broker answers, its stores
    /// are open and HTTP listens); gives the data
    /// directory back if the hub exited because an endpoint was taken.
    fn try_start(
        data: tempfile::TempDir,
        broker: &str,
        ports: HubPorts,
        extra: &[&str],
        client: Option<ClientKeys>,
    ) -> Result<HubProc, tempfile::TempDir> {
        let mut cmd = Command::new(bin("hub"));
        cmd.args(["serve", "--broker", broker, "--data-dir"]).arg(data.path()).args(ports.args()).args(extra);
        let proc = Proc::spawn("hub", cmd);
        let mut hub =
            HubProc { proc, broker: broker.to_string(), data, buses: ports.buses, http: ports.http, client };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The broker answers before the stores are open; the hub is up
            // when it says so, or (at a quieter log level) when HTTP answers.
            if hub.try_call("mmi.service", &["mmi.service"], Duration::from_millis(200)).is_some()
                && (hub.proc.stderr().contains("hub up:") || std::net::TcpStream::connect(&hub.http).is_ok())
            {
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
        call(self.endpoint(&self.broker), Dialect::Rfc7, service, body, timeout)
    }

    /// `address` (the broker, a bus) as the harness connects to it: with its keys when secure.
    pub fn endpoint(&self, address: &str) -> Endpoint {
        match &self.client {
            Some(keys) => Endpoint::curve(address, keys.clone()),
            None => Endpoint::plain(address),
        }
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

    /// One unlabelled value from `mmi.metrics`, e.g. `plantd_broker_requests_total` (0 if absent).
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics()[name].as_u64().unwrap_or(0)
    }

    /// A labelled value from `mmi.metrics`: the sample with these labels (0 if absent).
    pub fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        labelled(&self.metrics(), name, labels)
    }

    /// Denials of `kind` counted for `identity` (security on).
    pub fn denials(&self, identity: &str, kind: &str) -> u64 {
        self.metric_with("plantd_denials_total", &[("identity", identity), ("kind", kind)])
    }

    /// Waits for a denial of `kind` for `identity`.
    pub fn wait_denied(&self, identity: &str, kind: &str) {
        wait_for(&format!("a {kind} denial of {identity}"), Duration::from_secs(20), || {
            (self.denials(identity, kind) > 0).then_some(())
        });
    }

    /// A bus counter from `/metrics` (`plantd_bus_{what}_total`).
    pub fn bus_counter(&self, bus: &str, what: &str) -> u64 {
        let text = http_get(&self.http, "/metrics").1;
        prometheus_value(&text, &format!("plantd_bus_{what}_total{{bus=\"{bus}\"}}")).unwrap_or(0)
    }
}

/// The sample of labelled family `name` in `mmi.metrics` JSON `metrics` that
/// has these labels (0 if none).
pub fn labelled(metrics: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> u64 {
    let samples = metrics[name].as_array().map(Vec::as_slice).unwrap_or_default();
    let sample = samples.iter().find(|s| labels.iter().all(|(k, v)| s[*k] == *v));
    sample.and_then(|s| s["value"].as_u64()).unwrap_or(0)
}

/// One MDP request through the Rust client; `None` on timeout.
pub fn call(
    broker: impl Into<Endpoint>,
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

/// Runs `hub <args>` to completion (killed, and the test failed, past [`CLI_DEADLINE`]).
pub fn hub_cli(args: &[&str]) -> Output {
    output(Command::new(bin("hub")).args(args))
}

/// Starts `hub echo-worker` for `service` on `broker`.
pub fn echo_worker(broker: &str, service: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("hub"));
    cmd.args(["echo-worker", "--broker", broker, "--service", service]).args(extra);
    Proc::spawn(&format!("echo-worker {service}"), cmd)
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

/// One durable sample as an agent sends it to ingest (epoch 1, a fixed time).
pub fn ingest_sample(
    channel: &str,
    seq: u64,
    value: proto::sample::Value,
    unit: &str,
    quality: proto::sample::Quality,
) -> proto::ingest::Sent {
    let sample = proto::sample::Sample {
        channel: channel.into(),
        epoch: 1,
        seq,
        wall_ns: 1_790_000_000_000_000_000,
        mono_ns: 0,
        clock_synced: true,
        value,
        unit: unit.into(),
        quality,
    };
    proto::ingest::Sent { sample, historical: false }
}

/// Durable temperatures of `channel`, one per seq (its value the seq, in degC).
pub fn ingest_samples(channel: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<proto::ingest::Sent> {
    use proto::sample::{Quality, Value};
    seqs.into_iter()
        .map(|seq| ingest_sample(channel, seq, Value::Number(seq as f64), "degC", Quality::Good))
        .collect()
}

/// Sends ingest one batch of `samples` as agent `pump-1`; the hub's reply
/// (`None`: no answer within 2 s).
pub fn send_batch(
    broker: impl Into<transport::Endpoint>,
    samples: Vec<proto::ingest::Sent>,
) -> Option<proto::ingest::Reply> {
    use proto::ingest::{Batch, Reply};
    let ctx = zmq::Context::new();
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(2), retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, broker, options);
    let batch = Batch { agent: "pump-1".into(), samples, events: Vec::new() }.encode();
    let reply = client.request(proto::ingest::SERVICE, &[&batch]).ok()?;
    Reply::decode(reply.first()?).ok()
}

/// [`send_batch`] of channel `temp`'s samples `seqs`.
pub fn send_ingest(
    broker: impl Into<transport::Endpoint>,
    seqs: impl IntoIterator<Item = u64>,
) -> Option<proto::ingest::Reply> {
    send_batch(broker, ingest_samples("temp", seqs))
}
