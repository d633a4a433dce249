//! A hub with security, attacked as a peer on the plant network would: every
//! attack fails for the attacker and shows up as a counted denial.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ingest::{Batch, Reply, Sent};
use proto::mdp::worker::WorkerTiming;
use proto::mdp::Dialect;
use proto::sample::{Quality, Sample, Value as Sampled};
use serde_json::Value;
use system_tests::*;
use transport::{Shutdown, Subscriber, Worker, WorkerOptions};

const SECOND: Duration = Duration::from_secs(1);

/// A worker on its own thread until dropped; counts the requests it served.
struct TestWorker {
    served: Arc<AtomicU64>,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWorker {
    fn start(endpoint: transport::Endpoint, service: &str, answer: &'static str) -> TestWorker {
        let served = Arc::new(AtomicU64::new(0));
        let shutdown = Shutdown::new();
        let watch = shutdown.watch().unwrap();
        let timing = WorkerTiming {
            heartbeat_interval: Duration::from_millis(250),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
            ..WorkerTiming::default()
        };
        let worker = Worker::new(
            &zmq::Context::new(),
            endpoint,
            service,
            WorkerOptions { timing, ..Default::default() },
        );
        let count = served.clone();
        let thread = std::thread::spawn(move || {
            let _ = worker.run(&watch, move |_body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
                count.fetch_add(1, Ordering::SeqCst);
                vec![zmq::Message::from(answer)]
            });
        });
        TestWorker { served, shutdown, thread: Some(thread) }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn as_(
    site: &Site,
    who: &Identity,
    hub: &HubProc,
    service: &str,
    body: &[&str],
) -> Option<Vec<String>> {
    call(site.endpoint(who, &hub.broker), Dialect::Rfc7, service, body, 2 * SECOND)
}

fn batch(agent: &str, seqs: &[u64]) -> Vec<u8> {
    let samples = seqs
        .iter()
        .map(|&seq| Sent {
            sample: Sample {
                channel: "temp".into(),
                epoch: 1,
                seq,
                wall_ns: 0,
                mono_ns: 0,
                clock_synced: true,
                value: Sampled::Number(20.0),
                unit: "degC".into(),
                quality: Quality::Good,
            },
            historical: false,
        })
        .collect();
    Batch { agent: agent.into(), samples, events: Vec::new() }.encode()
}

fn ingest(site: &Site, who: &Identity, hub: &HubProc, body: Vec<u8>) -> Reply {
    let ctx = zmq::Context::new();
    let options = transport::ClientOptions { timeout: 5 * SECOND, retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, site.endpoint(who, &hub.broker), options);
    let reply = client.request(proto::ingest::SERVICE, &[&body]).expect("ingest answers");
    Reply::decode(&reply[0]).unwrap()
}

const NO_GATE: &str = "[ingest]\nrequire_subscriber = false\n";

#[test]
fn a_fake_ingest_worker_is_refused_and_batches_reach_the_real_one() {
    let site = Site::new();
    let (evil, pump) = (site.identity("pump-evil"), site.identity("pump-1"));
    let hub = site.hub(r#""pump-*" = ["agent"]"#, NO_GATE);
    hub.wait_for_service(proto::ingest::SERVICE);
    let fake = TestWorker::start(site.endpoint(&evil, &hub.broker), proto::ingest::SERVICE, "\x01stolen");
    hub.wait_denied("pump-evil", "provide");
    for seq in 1..=20 {
        assert!(matches!(
            ingest(&site, &pump, &hub, batch("pump-1", &[seq])),
            Reply::Ack { accepted: 1, .. }
        ));
    }
    assert_eq!(fake.served.load(Ordering::SeqCst), 0, "no batch ever reached the impostor");
}

#[test]
fn writing_to_an_agent_needs_an_operator_and_strangers_cannot_connect() {
    let site = Site::new();
    let (pump, viewer, stranger) =
        (site.identity("pump-1"), site.identity("grafana"), site.stranger("mallory"));
    let hub = site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]", "");
    let agent = TestWorker::start(site.endpoint(&pump, &hub.broker), "org.plantd.Agent.pump-1", "done");
    hub.wait_for_service("org.plantd.Agent.pump-1");
    let service = "org.plantd.Agent.pump-1";
    assert_eq!(as_(&site, &viewer, &hub, service, &["write", "pump_relay", "true"]).unwrap(), ["403"]);
    assert_eq!(as_(&site, &viewer, &hub, service, &["status"]).unwrap(), ["done"]);
    assert_eq!(as_(&site, &pump, &hub, service, &["write", "pump_relay", "true"]).unwrap(), ["403"]);
    assert_eq!(agent.served.load(Ordering::SeqCst), 1, "only the viewer's status got through");
    let ops = Identity {
        name: "ops".into(),
        public: site.path().join("keys/ops.key"),
        secret: site.path().join("keys/ops.key_secret"),
    };
    assert_eq!(as_(&site, &ops, &hub, service, &["write", "pump_relay", "true"]).unwrap(), ["done"]);
    assert!(hub.denials("grafana", "call") >= 1);
    // A key the hub does not know: no answer at all, and the refusal is counted.
    assert_eq!(as_(&site, &stranger, &hub, service, &["status"]), None);
    assert_eq!(agent.served.load(Ordering::SeqCst), 2);
    hub.wait_denied("(unknown)", "connect");
}

#[test]
fn an_agent_cannot_poison_another_agents_watermark() {
    let site = Site::new();
    let (victim, attacker) = (site.identity("pump-1"), site.identity("pump-2"));
    let hub = site.hub(r#""pump-*" = ["agent"]"#, NO_GATE);
    hub.wait_for_service(proto::ingest::SERVICE);
    let poison = ingest(&site, &attacker, &hub, batch("pump-1", &[u64::MAX]));
    assert!(matches!(poison, Reply::Refused { .. }), "{poison:?}");
    assert_eq!(hub.denials("pump-2", "ingest"), 1);
    // The victim's real samples are new, not duplicates of the forged one.
    let reply = ingest(&site, &victim, &hub, batch("pump-1", &[1, 2, 3]));
    assert_eq!(reply, Reply::Ack { accepted: 3, duplicates: 0 });
}

#[test]
fn forged_metrics_and_snooping_on_state_reach_nobody() {
    let site = Site::new();
    let (pump1, pump2, viewer) = (site.identity("pump-1"), site.identity("pump-2"), site.identity("grafana"));
    let hub = site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]", "");
    let ctx = zmq::Context::new();
    let metric = hub.bus("metric").clone();
    let mut watcher =
        Subscriber::connect(&ctx, site.endpoint(&viewer, &metric.backend), &[b"org.plantd.Metric."]).unwrap();
    let forger =
        transport::Publisher::connect(&ctx, site.endpoint(&pump2, &metric.frontend), Default::default())
            .unwrap();
    // Publish the forgery beside pump-2's own topic until the watcher hears pump-2 itself.
    let mut forged = 0;
    wait_for("pump-2's own sample to reach the watcher", 20 * SECOND, || {
        forger.publish(b"org.plantd.Metric.pump-1.temp", br#"{"forged":true}"#).unwrap();
        forger.publish(b"org.plantd.Metric.pump-2.temp", br#"{"own":true}"#).unwrap();
        while let Ok(Some(m)) = watcher.recv(Duration::from_millis(20)) {
            if m.topic.starts_with(b"org.plantd.Metric.pump-1.") {
                forged += 1;
            }
            if m.topic == b"org.plantd.Metric.pump-2.temp" {
                return Some(());
            }
        }
        None
    });
    assert_eq!(forged, 0, "a forged pump-1 sample reached a subscriber");
    hub.wait_denied("pump-2", "publish");

    // An agent subscribing to every state change is refused at the handshake;
    // a viewer hears the change meanwhile.
    let state = hub.bus("state").clone();
    let mut snoop = Subscriber::connect(&ctx, site.endpoint(&pump1, &state.backend), &[b""]).unwrap();
    let mut viewer_sub = Subscriber::connect(&ctx, site.endpoint(&viewer, &state.backend), &[b""]).unwrap();
    let mut changes = 0;
    wait_for("the viewer to hear a state change", 20 * SECOND, || {
        changes += 1;
        hub.try_call(
            "org.plantd.State",
            &["state-set", &format!(r#"{{"service":"plant","key":"k","value":{changes}}}"#)],
            2 * SECOND,
        )?;
        viewer_sub.recv(Duration::from_millis(200)).ok().flatten()
    });
    assert_eq!(snoop.recv(Duration::from_millis(500)).unwrap(), None, "the snooper heard a state change");
    hub.wait_denied("pump-1", "connect");
}

#[test]
fn two_controllers_with_one_id_cannot_both_serve_it() {
    let site = Site::new();
    let pump = site.identity("pump-1");
    let hub = site.hub(r#""pump-*" = ["agent"]"#, "");
    let first = TestWorker::start(site.endpoint(&pump, &hub.broker), "org.plantd.Agent.pump-1", "first");
    hub.wait_for_service("org.plantd.Agent.pump-1");
    let clone = TestWorker::start(site.endpoint(&pump, &hub.broker), "org.plantd.Agent.pump-1", "clone");
    hub.wait_denied("pump-1", "duplicate");
    for _ in 0..10 {
        assert_eq!(hub.try_call("org.plantd.Agent.pump-1", &["status"], 2 * SECOND).unwrap(), ["first"]);
    }
    assert_eq!(clone.served.load(Ordering::SeqCst), 0);
    assert_eq!(first.served.load(Ordering::SeqCst), 10);
    assert!(hub.metric("plantd_broker_duplicate_workers_total") >= 1);
}

#[test]
fn an_unknown_key_gets_zero_messages_through() {
    let site = Site::new();
    let (stranger, viewer) = (site.stranger("mallory"), site.identity("grafana"));
    let hub = site.hub(r#""grafana" = ["viewer"]"#, "");
    let ctx = zmq::Context::new();
    let event = hub.bus("event").clone();
    // Provide: never registered.
    let _fake = TestWorker::start(site.endpoint(&stranger, &hub.broker), "echo", "x");
    // Subscribe: nothing arrives, while a known subscriber hears everything.
    let mut spy = Subscriber::connect(&ctx, site.endpoint(&stranger, &event.backend), &[b""]).unwrap();
    let mut watcher = Subscriber::connect(&ctx, site.endpoint(&viewer, &event.backend), &[b""]).unwrap();
    // Publish: the stranger's messages reach no one.
    let spam =
        transport::Publisher::connect(&ctx, site.endpoint(&stranger, &event.frontend), Default::default())
            .unwrap();
    let ops = transport::Publisher::connect(&ctx, hub.endpoint(&event.frontend), Default::default()).unwrap();
    let mut from_stranger = 0;
    wait_for("the operator's event to reach the watcher", 20 * SECOND, || {
        spam.publish(b"org.plantd.Spam", b"{}").unwrap();
        ops.publish(b"org.plantd.Ops.events", b"{}").unwrap();
        while let Ok(Some(m)) = watcher.recv(Duration::from_millis(20)) {
            if m.topic == b"org.plantd.Spam" {
                from_stranger += 1;
            }
            if m.topic == b"org.plantd.Ops.events" {
                return Some(());
            }
        }
        None
    });
    assert_eq!(from_stranger, 0);
    assert_eq!(
        spy.recv(Duration::from_millis(300)).unwrap(),
        None,
        "the stranger's subscription got something"
    );
    assert_eq!(
        hub.try_call("mmi.service", &["echo"], 2 * SECOND).unwrap(),
        ["404"],
        "the stranger registered"
    );
    assert_eq!(as_(&site, &stranger, &hub, "mmi.service", &["echo"]), None, "the stranger called");
    assert!(hub.denials("(unknown)", "connect") >= 3);
}

/// Relays TCP to `target` through a port of its own, recording every byte.
struct Relay {
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let target = target.trim_start_matches("tcp://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let record = record.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    });
                }
            }
        });
        Relay { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

#[test]
fn traffic_on_the_wire_is_encrypted() {
    let site = Site::new();
    let echo = site.identity("echo-worker");
    let hub = site.hub("\"echo-worker\" = [\"echoer\"]\n\n[security.roles.echoer]\nprovide = [\"echo\"]", "");
    let relay = Relay::start(&hub.broker);
    let _worker = TestWorker::start(site.endpoint(&echo, &relay.endpoint()), "echo", "PLAINTEXT-REPLY-7c1e");
    hub.wait_for_service("echo");
    let secret = "PLAINTEXT-REQUEST-3f9a";
    let reply = call(hub.endpoint(&relay.endpoint()), Dialect::Rfc7, "echo", &[secret], 5 * SECOND).unwrap();
    assert_eq!(reply, ["PLAINTEXT-REPLY-7c1e"]);
    let seen = relay.seen.lock().unwrap().clone();
    assert!(seen.len() > 500, "traffic went through the relay ({} bytes)", seen.len());
    for needle in [secret, "PLAINTEXT-REPLY-7c1e", "echo"] {
        assert!(!seen.windows(needle.len()).any(|w| w == needle.as_bytes()), "'{needle}' crossed in clear");
    }
}

#[test]
fn floods_are_bounded_in_bytes_and_subscriptions() {
    let site = Site::new();
    let (viewer, pump) = (site.identity("grafana"), site.identity("pump-1"));
    let bounds = "[broker]\nmax_queued_bytes_per_service = 16777216\nmax_queued_bytes = 33554432\nmax_queued_bytes_per_identity = 1073741824\nrate_per_identity = 100000.0\nburst_per_identity = 100000.0\nmax_in_flight_per_identity = 100000\n";
    let hub = site.hub("\"grafana\" = [\"viewer\"]\n\"pump-*\" = [\"agent\"]", bounds);
    let rss = || testkit::bench::rss_kib(hub.proc.pid()) / 1024;
    let before = rss();

    // 300 requests of 1 MiB for a service nobody provides: 300 MiB offered.
    let ctx = zmq::Context::new();
    let flood = transport::PipelinedClient::connect(&ctx, hub.endpoint(&hub.broker), Dialect::Rfc7).unwrap();
    let mib = vec![b'x'; 1 << 20];
    for _ in 0..300 {
        flood.send(b"nobody-home", [&mib[..]]).unwrap();
    }
    wait_for("the flood to be counted", 60 * SECOND, || {
        (hub.metric("plantd_broker_requests_total") >= 300).then_some(())
    });
    let started = Instant::now();
    assert_eq!(as_(&site, &viewer, &hub, "mmi.service", &["nobody-home"]).unwrap(), ["404"]);
    assert!(started.elapsed() < 2 * SECOND, "another client is still served at once");
    let m = hub.metrics();
    assert!(m["plantd_broker_queued_bytes"].as_u64().unwrap() <= 16 << 20, "{m}");
    assert!(m["plantd_broker_queue_bytes_overflow_total"].as_u64().unwrap() >= 280, "{m}");
    let after_flood = rss();
    assert!(after_flood < before + 80, "hub RSS went from {before} to {after_flood} MiB");

    // 100 000 subscriptions from one subscriber: capped, and an agent's PUB never sees them.
    let metric = hub.bus("metric").clone();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[channel]]\nname = \"t\"\nperiod_ms = 500\ndriver = {{ kind = \"sine\" }}\n",
        site.agent_keys(&pump)
    );
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, &body);
    let agent = agent_run(&config);
    let agent_rss = || testkit::bench::rss_kib(agent.pid());
    wait_for_status(&dir.path().join("pump-1-data"), "the agent to be up", 20 * SECOND, |s| {
        (s["link"]["state"] == "up").then_some(())
    });
    let agent_before = agent_rss();
    let hog = ctx.socket(zmq::SUB).unwrap();
    // No high-water mark, so not one of the 100 000 subscriptions is dropped on the way.
    hog.set_sndhwm(0).unwrap();
    transport::curve::make_client(&hog, &site.keys(&viewer)).unwrap();
    hog.connect(&metric.backend).unwrap();
    for i in 0..100_000 {
        hog.set_subscribe(format!("org.plantd.Metric.{i}").as_bytes()).unwrap();
    }
    // libzmq ≥ 4.3.5 leaves the hog connected with 1000 applied; before, the
    // first refused subscription closes it (see hub/src/bus/upstream.rs).
    wait_for("the subscriptions to be refused", 120 * SECOND, || {
        let denied = hub.bus_counter("metric", "subscribe_denied");
        (denied >= 99_000 || hub.bus_counter("metric", "subscribers_closed") >= 1).then_some(())
    });
    let text = http_get(&hub.http, "/metrics").1;
    assert!(prometheus_value(&text, "plantd_bus_subscriptions{bus=\"metric\"}").unwrap() <= 1000);
    assert!(agent_rss() < agent_before + 3 * 1024, "agent RSS {} → {} KiB", agent_before, agent_rss());
}

#[test]
fn the_agent_runs_end_to_end_over_curve_and_check_names_the_wrong_key() {
    let site = Site::new();
    let (pump, viewer) = (site.identity("pump-1"), site.identity("grafana"));
    let hub = site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]", "");
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(site.endpoint(&viewer, &metric.backend), "org.plantd.Metric.pump-1.");
    let dir = tempfile::tempdir().unwrap();
    let channel = "[[channel]]\nname = \"temp\"\nperiod_ms = 100\ndriver = { kind = \"sine\" }\n";
    let body = format!("{}\n{channel}", site.agent_keys(&pump));
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, &body);

    let checks = |config: &std::path::Path| -> Vec<Value> {
        let out = agent_cli(&["check", "--json", "--config", config.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let keys = |list: &[Value]| list.iter().find(|c| c["check"] == "hub keys").cloned().unwrap_or_default();
    let good = checks(&config);
    assert_eq!(keys(&good)["status"], "ok", "{good:?}");
    assert_eq!(good.iter().find(|c| c["check"] == "hub mdp").unwrap()["status"], "ok", "{good:?}");

    let _agent = agent_run(&config);
    wait_for("durable samples over CURVE", 30 * SECOND, || (collector.durable().len() >= 5).then_some(()));
    let status =
        as_(&site, &viewer, &hub, "org.plantd.Agent.pump-1", &["status"]).expect("the agent answers");
    assert_eq!(serde_json::from_str::<Value>(&status[0]).unwrap()["link"]["state"], "up");

    // A wrong hub key, then a key the hub does not list: each check says which key to fix.
    let impostor = site.stranger("not-the-hub");
    let text = std::fs::read_to_string(&config).unwrap();
    let wrong_hub = dir.path().join("wrong-hub.toml");
    let hub_key = site.hub_public.display().to_string();
    std::fs::write(&wrong_hub, text.replace(&hub_key, &impostor.public.display().to_string())).unwrap();
    let detail = keys(&checks(&wrong_hub))["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("not the hub's public key") && detail.contains("not-the-hub.key"), "{detail}");
    let unknown = site.stranger("pump-9");
    let not_listed = dir.path().join("not-listed.toml");
    let own_key = pump.secret.display().to_string();
    std::fs::write(&not_listed, text.replace(&own_key, &unknown.secret.display().to_string())).unwrap();
    let detail = keys(&checks(&not_listed))["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("refused this agent's key") && detail.contains("hub keys add"), "{detail}");
}

#[test]
fn without_security_only_loopback_unless_insecure() {
    let broker = format!("tcp://0.0.0.0:{}", free_port());
    let data = tempfile::tempdir().unwrap();
    let args = ["serve", "--broker", &broker, "--http", "off", "--data-dir", data.path().to_str().unwrap()];
    let out = hub_cli(&args);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("refusing to bind") && said.contains("hub keygen") && said.contains("--insecure"),
        "{said}"
    );
    let mut cmd = std::process::Command::new(bin("hub"));
    cmd.args(args).args([
        "--insecure",
        "--no-state",
        "--bus",
        &format!("metric={},{}", free_endpoint(), free_endpoint()),
    ]);
    let mut hub = Proc::spawn("insecure hub", cmd);
    wait_for("the insecure warning", 20 * SECOND, || hub.stderr().contains("running INSECURE").then_some(()));
    assert!(hub.is_running());
}
