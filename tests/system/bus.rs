//! The hub's buses through real sockets: both layouts, filters, capture,
//! late joiners, slow subscribers, recording, `hub tap` and `hub publish`.

use std::time::{Duration, Instant};

use proto::bus::Framing;
use serde_json::{json, Value};
use system_tests::*;
use transport::{Publisher, Subscriber};

const SECOND: Duration = Duration::from_secs(1);

/// Receives `n` messages (or panics at the deadline).
fn receive(sub: &mut Subscriber, n: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + 10 * SECOND;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "received {} of {n} messages: {got:?}", got.len());
        if let Some(m) = sub.recv(left).unwrap() {
            let payload = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            got.push((String::from_utf8_lossy(&m.topic).into_owned(), payload));
        }
    }
    got
}

fn py_publish(bus: &str, topic: &str, framing: &str, count: usize) {
    let count = count.to_string();
    let out =
        python_run(&["publish", "--broker", bus, "--topic", topic, "--framing", framing, "--count", &count]);
    assert!(out.status.success(), "python publisher: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn both_layouts_from_a_pyzmq_publisher_reach_a_rust_subscriber() {
    let hub = HubProc::start();
    let ctx = zmq::Context::new();
    let mut sub = Subscriber::connect(&ctx, &hub.bus("metric").backend, &[b"org.plantd.Metric"]).unwrap();
    py_publish(&hub.bus("metric").frontend, "org.plantd.Metric.one", "one", 3);
    py_publish(&hub.bus("metric").frontend, "org.plantd.Metric.two", "two", 3);
    let got = receive(&mut sub, 6);
    let expected: Vec<(String, Value)> = ["one", "two"]
        .iter()
        .flat_map(|t| (0..3).map(move |i| (format!("org.plantd.Metric.{t}"), json!({"seq": i}))))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn rust_publisher_reaches_a_pyzmq_subscriber_in_both_layouts() {
    let hub = HubProc::start();
    let bus = hub.bus("event");
    let mut py = python_peer(
        "py subscriber",
        &["subscribe", "--broker", &bus.backend, "--topic", "org.plantd.", "--count", "2"],
    );
    let lines = Lines::new(py.take_stdout());
    assert_eq!(lines.next(10 * SECOND).as_deref(), Some("ready"));
    let ctx = zmq::Context::new();
    let two = Publisher::connect(&ctx, &bus.frontend, Framing::TwoFrame).unwrap();
    let one = Publisher::connect(&ctx, &bus.frontend, Framing::OneFrame).unwrap();
    // PUB drops until the subscription has travelled back to it: publish until heard.
    let first = wait_for("the subscriber to hear the two-frame publisher", 10 * SECOND, || {
        two.publish(b"org.plantd.A.events", br#"{"n":1}"#).unwrap();
        lines.next(Duration::from_millis(50))
    });
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"topic": "org.plantd.A.events", "payload": {"n": 1}})
    );
    let second = wait_for("the subscriber to hear the one-frame publisher", 10 * SECOND, || {
        one.publish(b"org.plantd.B.events", br#"{"n":2}"#).unwrap();
        lines.next(Duration::from_millis(50)).filter(|l| l.contains("org.plantd.B"))
    });
    assert_eq!(
        serde_json::from_str::<Value>(&second).unwrap(),
        json!({"topic": "org.plantd.B.events", "payload": {"n": 2}})
    );
}

#[test]
fn prefix_filters_select_topics_at_the_hub() {
    let hub = HubProc::start();
    let ctx = zmq::Context::new();
    let mut pumps =
        Subscriber::connect(&ctx, &hub.bus("metric").backend, &[b"org.plantd.Metric.pump"]).unwrap();
    py_publish(&hub.bus("metric").frontend, "org.plantd.Metric.pump1", "two", 2);
    // Publishers send everything while anyone listens: the hub filters.
    py_publish(&hub.bus("metric").frontend, "org.plantd.Metric.valve", "two", 1);
    py_publish(&hub.bus("metric").frontend, "org.plantd.Metric.pump2", "one", 1);
    let topics: Vec<String> = receive(&mut pumps, 3).into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["org.plantd.Metric.pump1", "org.plantd.Metric.pump1", "org.plantd.Metric.pump2"]);
}

/// What publishers (agents) are asked for: everything while anyone
/// subscribes, nothing once nobody does, never a subscriber's own prefixes
/// (which would cost every agent memory for every subscription).
#[test]
fn publishers_never_see_subscribers_subscriptions() {
    let hub = HubProc::start();
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::XPUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.connect(&hub.bus("event").frontend).unwrap();
    let asked = |what: &str| {
        wait_for(what, 10 * SECOND, || {
            (publisher.poll(zmq::POLLIN, 100).unwrap() > 0).then(|| publisher.recv_bytes(0).unwrap())
        })
    };
    let subscribers: Vec<Subscriber> = (0..3)
        .map(|i| {
            let prefix = format!("org.plantd.Event.{i}.");
            Subscriber::connect(&ctx, &hub.bus("event").backend, &[prefix.as_bytes()]).unwrap()
        })
        .collect();
    assert_eq!(asked("the publisher to be asked for everything"), b"\x01");
    drop(subscribers);
    assert_eq!(asked("the publisher to be asked for nothing"), b"\x00");
    assert_eq!(publisher.poll(zmq::POLLIN, 200).unwrap(), 0, "nothing else reached the publisher");
}

#[test]
fn a_late_subscriber_gets_messages_from_an_earlier_publisher() {
    // plantd's SUB-frontend bus forwarded nothing: subscriptions never reached publishers.
    let hub = HubProc::start();
    let ctx = zmq::Context::new();
    let publisher = Publisher::connect(&ctx, &hub.bus("metric").frontend, Framing::TwoFrame).unwrap();
    for i in 0..50 {
        publisher.publish(b"early", format!(r#"{{"i":{i}}}"#).as_bytes()).unwrap();
    }
    let mut late = Subscriber::connect(&ctx, &hub.bus("metric").backend, &[]).unwrap();
    let got = wait_for("the late subscriber to receive", 10 * SECOND, || {
        publisher.publish(b"late", br#"{"i":-1}"#).unwrap();
        late.recv(Duration::from_millis(20)).unwrap()
    });
    assert_eq!(got.topic, b"late", "messages from before the subscription are not replayed");
}

#[test]
fn capture_gets_a_copy_of_everything_even_unsubscribed_topics() {
    let ports = HubPorts::one_bus("metric", true);
    let bus = ports.buses["metric"].clone();
    let _hub =
        HubProc::start_with_ports(tempfile::tempdir().unwrap(), &free_endpoint(), ports, &["--no-state"]);
    let ctx = zmq::Context::new();
    let mut copy = Subscriber::connect(&ctx, bus.capture.as_deref().unwrap(), &[]).unwrap();
    // The proxy subscribes to everything when capturing, so the publisher sends without any subscriber.
    let publisher = Publisher::connect(&ctx, &bus.frontend, Framing::OneFrame).unwrap();
    let got = wait_for("the capture copy", 10 * SECOND, || {
        publisher.publish(b"nobody.listens", br#"{"x":1}"#).unwrap();
        copy.recv(Duration::from_millis(20)).unwrap()
    });
    assert_eq!((got.topic.as_slice(), got.payload.as_slice()), (&b"nobody.listens"[..], &br#"{"x":1}"#[..]));
}

/// Starts a hub whose buses come from `config_text` (plus a free broker and HTTP port).
fn hub_with_config(dir: &std::path::Path, config_text: &str) -> HubProc {
    let config = dir.join("hub.toml");
    std::fs::write(&config, config_text).unwrap();
    let data = tempfile::tempdir().unwrap();
    HubProc::start_with_ports(
        data,
        &free_endpoint(),
        HubPorts::http_only(),
        &["--config", config.to_str().unwrap()],
    )
}

#[test]
fn a_slow_subscriber_stalls_neither_the_bus_nor_a_fast_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let (frontend, backend) = (free_endpoint(), free_endpoint());
    let hub = hub_with_config(
        dir.path(),
        &format!("[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nhwm = 100\n\n[state]\nenabled = false\n"),
    );

    let ctx = zmq::Context::new();
    let slow = ctx.socket(zmq::SUB).unwrap();
    slow.set_rcvhwm(10).unwrap();
    slow.set_rcvbuf(4096).unwrap();
    slow.set_subscribe(b"").unwrap();
    slow.connect(&backend).unwrap(); // never reads
    let mut fast = Subscriber::connect(&ctx, &backend, &[]).unwrap();
    let publisher = Publisher::connect(&ctx, &frontend, Framing::TwoFrame).unwrap();
    wait_for("the fast subscriber to be wired", 10 * SECOND, || {
        publisher.publish(b"hello", b"{}").unwrap();
        fast.recv(Duration::from_millis(20)).unwrap()
    });
    while fast.recv(Duration::from_millis(100)).unwrap().is_some() {}

    // 20 MB through the bus in lockstep with the fast subscriber: far more than
    // the slow subscriber's queues and socket buffers can hold. Bursts stay
    // well under the high-water mark so the fast subscriber never hits it.
    let payload = vec![b'x'; 1024];
    let started = Instant::now();
    for batch in 0..1000 {
        for i in 0..20 {
            publisher.publish(format!("t.{batch}.{i}").as_bytes(), &payload).unwrap();
        }
        for i in 0..20 {
            let m = fast
                .recv(10 * SECOND)
                .unwrap()
                .unwrap_or_else(|| panic!("fast subscriber starved at {batch}.{i}"));
            assert_eq!(m.topic, format!("t.{batch}.{i}").as_bytes());
        }
    }
    assert!(started.elapsed() < 60 * SECOND);
    let (_, metrics) = http_get(&hub.http, "/metrics");
    let down = prometheus_value(&metrics, "plantd_bus_messages_down_total{bus=\"metric\"}").unwrap();
    assert!(down >= 20_000, "the bus forwarded {down} messages");
}

#[test]
fn recording_writes_json_lines_with_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let (frontend, backend) = (free_endpoint(), free_endpoint());
    let record = dir.path().join("audit/metric.jsonl");
    let _hub = hub_with_config(
        dir.path(),
        &format!(
            "[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nrecord = {{ path = \"{}\", max_bytes = 4096, keep = 2 }}\n\n[state]\nenabled = false\n",
            record.display()
        ),
    );
    let ctx = zmq::Context::new();
    let publisher = Publisher::connect(&ctx, &frontend, Framing::TwoFrame).unwrap();
    let lines = wait_for("the recording to fill", 10 * SECOND, || {
        publisher.publish(b"org.plantd.Metric.t", br#"{"v":1}"#).unwrap();
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        (text.lines().count() >= 3).then_some(text)
    });
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["topic"], "org.plantd.Metric.t");
    assert_eq!(first["payload"], json!({"v": 1}));
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    // Past max_bytes it rotates.
    wait_for("the recording to rotate", 20 * SECOND, || {
        for _ in 0..50 {
            publisher.publish(b"org.plantd.Metric.t", br#"{"v":2}"#).unwrap();
        }
        dir.path().join("audit/metric.jsonl.1").exists().then_some(())
    });
}

#[test]
fn hub_tap_prints_what_hub_publish_sends() {
    let hub = HubProc::start();
    let bus = hub.bus("event");
    let mut tap = {
        let mut cmd = std::process::Command::new(bin("hub"));
        cmd.args(["tap", "--bus", &bus.backend, "--count", "3", "org.plantd."]);
        Proc::spawn("hub tap", cmd)
    };
    let lines = Lines::new(tap.take_stdout());
    for (args, topic, payload) in [
        (vec![], "org.plantd.Pump.events", r#"{"on":true}"#),
        (vec!["--one-frame"], "org.plantd.Valve.events", r#"{"open":42}"#),
        (vec![], "org.plantd.Note.events", "plain text"),
    ] {
        let mut cmd = vec!["publish", "--bus", &bus.frontend, "--wait", "10000"];
        cmd.extend(args);
        cmd.extend([topic, payload]);
        let out = hub_cli(&cmd);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.stderr.is_empty(),
            "publish saw the subscriber: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got: Vec<String> = (0..3).map(|_| lines.next(10 * SECOND).expect("a tap line")).collect();
    assert_eq!(
        got,
        [
            r#"org.plantd.Pump.events {"on":true}"#,
            r#"org.plantd.Valve.events {"open":42}"#,
            "org.plantd.Note.events plain text"
        ]
    );
    assert!(tap.wait_exit(10 * SECOND).is_some_and(|s| s.success()), "tap exits after --count");
}

#[test]
fn bus_counters_show_in_metrics_and_health() {
    let hub = HubProc::start();
    let ctx = zmq::Context::new();
    let mut sub = Subscriber::connect(&ctx, &hub.bus("metric").backend, &[]).unwrap();
    py_publish(&hub.bus("metric").frontend, "m", "two", 5);
    receive(&mut sub, 5);
    let (status, metrics) = http_get(&hub.http, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(prometheus_value(&metrics, "plantd_bus_messages_down_total{bus=\"metric\"}"), Some(5));
    assert!(prometheus_value(&metrics, "plantd_bus_messages_up_total{bus=\"metric\"}").unwrap() >= 1);
    assert_eq!(prometheus_value(&metrics, "plantd_bus_hwm{bus=\"metric\"}"), Some(10_000));
    assert!(prometheus_value(&metrics, "plantd_broker_queue_limit").is_some());
    let (status, health) = http_get(&hub.http, "/healthz");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    let (status, ready) = http_get(&hub.http, "/readyz");
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    for bus in ["event", "metric", "state"] {
        assert_eq!(ready["components"][format!("loop:bus-{bus}")]["ok"], true, "{ready}");
    }
}
