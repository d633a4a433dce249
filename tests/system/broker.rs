//! The hub's broker through its real binary and real sockets.

use std::time::Duration;

use proto::mdp::{self, Dialect, FromBroker};
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn linked_libzmq_has_curve() {
    assert_eq!(zmq::has("curve"), Some(true), "libzmq was not linked with CURVE: check .cargo/config.toml");
}

#[test]
fn every_client_dialect_reaches_every_worker_dialect() {
    let hub = HubProc::start();
    let workers: Vec<Proc> = Dialect::ALL
        .iter()
        .map(|d| echo_worker(&hub.broker, &format!("echo-{d}"), &["--dialect", d.name()]))
        .collect();
    for d in Dialect::ALL {
        hub.wait_for_service(&format!("echo-{d}"));
    }
    for client in Dialect::ALL {
        for worker in Dialect::ALL {
            let reply = call(&hub.broker, client, &format!("echo-{worker}"), &["one", "two"], 5 * SECOND);
            assert_eq!(reply, Some(vec!["one".into(), "two".into()]), "{client} client → {worker} worker");
        }
    }
    drop(workers);
}

#[test]
fn hub_call_prints_partials_then_the_final_reply() {
    let hub = HubProc::start();
    let _worker = echo_worker(&hub.broker, "stream", &["--dialect", "rfc18", "--stream"]);
    hub.wait_for_service("stream");
    let out = hub_cli(&["call", "--broker", &hub.broker, "--dialect", "rfc18", "stream", "a", "b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\na\nb\n");
    // An RFC 7 client gets the final reply alone.
    let out = hub_cli(&["call", "--broker", &hub.broker, "stream", "a", "b"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    assert_eq!(hub.metric("plantd_broker_partials_dropped_rfc7_total"), 2);
}

#[test]
fn hub_call_prints_binary_frames_as_hex() {
    let hub = HubProc::start();
    let _worker = echo_worker(&hub.broker, "echo", &[]);
    hub.wait_for_service("echo");
    let out = hub_cli(&["call", "--broker", &hub.broker, "echo", "text", "\u{1}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "text\n0x01\n");
}

#[test]
fn hub_call_times_out_with_a_clear_message_and_exit_3() {
    let hub = HubProc::start();
    let out = hub_cli(&["call", "--broker", &hub.broker, "--timeout", "200", "--retries", "1", "nobody"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no reply from service 'nobody'"), "{err}");
    assert!(err.contains("2 attempt(s)"), "{err}");
    assert!(err.contains("mmi.service nobody"), "{err}");
}

#[test]
fn mmi_over_the_wire() {
    let hub = HubProc::start();
    let _worker = echo_worker(&hub.broker, "echo", &[]);
    for service in [
        "echo",
        "org.plantd.Hub",
        "org.plantd.State",
        "org.plantd.Ingest",
        "org.plantd.Ingest.Ordered",
        "org.plantd.Consumer",
        "org.plantd.Consumer.Admin",
        "org.plantd.Fleet",
        "org.plantd.Fleet.Admin",
    ] {
        hub.wait_for_service(service);
    }
    let get = |service: &str, body: &[&str]| hub.try_call(service, body, 2 * SECOND).expect("mmi answers");
    assert_eq!(get("mmi.service", &["echo"]), vec!["200"]);
    assert_eq!(get("mmi.service", &["nope"]), vec!["404"]);
    assert_eq!(
        get("mmi.services", &[]),
        vec![
            r#"["echo","org.plantd.Consumer","org.plantd.Consumer.Admin","org.plantd.Fleet","org.plantd.Fleet.Admin","org.plantd.Hub","org.plantd.Ingest","org.plantd.Ingest.Ordered","org.plantd.State"]"#
        ]
    );
    let workers: serde_json::Value = serde_json::from_str(&get("mmi.workers", &[])[0]).unwrap();
    assert_eq!(workers["echo"]["workers"], 1);
    assert_eq!(get("mmi.heartbeat", &[]), vec!["501"]);
}

#[test]
fn workers_register_again_after_the_broker_restarts() {
    let hub = HubProc::start();
    let broker = hub.broker.clone();
    let _worker = echo_worker(&broker, "echo", &["--heartbeat", "200"]);
    hub.wait_for_service("echo");
    let ports = hub.ports();
    let HubProc { mut proc, data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(5 * SECOND).expect("hub dies on SIGKILL");
    let hub = HubProc::start_with_ports(data, &broker, ports, &[]);
    // The worker's next heartbeat reaches a broker that does not know it; the
    // DISCONNECT it gets back makes it register again.
    hub.wait_for_service("echo");
    assert_eq!(hub.try_call("echo", &["back"], 5 * SECOND), Some(vec!["back".into()]));
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn dead_workers_are_purged_after_the_liveness_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[broker]\nheartbeat_interval_ms = 100\nheartbeat_liveness = 3\n");
    let hub = HubProc::start_with(&["--config", &config]);
    let worker = echo_worker(&hub.broker, "echo", &["--heartbeat", "100"]);
    hub.wait_for_service("echo");
    worker.signal(libc::SIGKILL);
    hub.wait_for_no_service("echo", 5 * SECOND);
    assert_eq!(hub.metric("plantd_broker_workers_expired_total"), 1);
}

/// A worker that takes a request and leaves without answering: the broker
/// redelivers it to another worker, once, for services that opt in.
#[test]
fn in_flight_requests_are_redelivered_once_for_opted_in_services() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[broker]\nredeliver = [\"jobs\"]\n");
    let hub = HubProc::start_with(&["--config", &config]);

    let ctx = zmq::Context::new();
    let quitter = ctx.socket(zmq::DEALER).unwrap();
    quitter.connect(&hub.broker).unwrap();
    quitter.send_multipart(mdp::worker_ready(Dialect::Rfc7, b"jobs").with_body::<Vec<u8>>(&[]), 0).unwrap();
    hub.wait_for_service("jobs");

    let broker = hub.broker.clone();
    let client = std::thread::spawn(move || call(&broker, Dialect::Rfc7, "jobs", &["payload"], 20 * SECOND));
    assert!(quitter.poll(zmq::POLLIN, 10_000).unwrap() > 0, "the request reaches the first worker");
    let frames = quitter.recv_multipart(0).unwrap();
    assert!(matches!(mdp::decode_from_broker(&frames), Ok((_, FromBroker::Request { .. }))));
    quitter.send_multipart(mdp::worker_disconnect(Dialect::Rfc7, true).with_body::<Vec<u8>>(&[]), 0).unwrap();

    let _worker = echo_worker(&hub.broker, "jobs", &[]);
    assert_eq!(client.join().unwrap(), Some(vec!["payload".into()]));
    assert_eq!(hub.metric("plantd_broker_redelivered_total"), 1);
}

/// Garbage, oversized and over-framed messages are dropped and counted;
/// a well-behaved client keeps being served throughout.
#[test]
fn bad_peers_are_counted_and_harm_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[broker]\nmax_message_bytes = 4096\nmax_frames = 16\n");
    let hub = HubProc::start_with(&["--config", &config]);
    let _worker = echo_worker(&hub.broker, "echo", &[]);
    hub.wait_for_service("echo");

    let ctx = zmq::Context::new();
    let evil = ctx.socket(zmq::DEALER).unwrap();
    evil.connect(&hub.broker).unwrap();
    evil.send_multipart([&b"garbage"[..]], 0).unwrap();
    evil.send_multipart([&b""[..], b"MDPC01"], 0).unwrap();
    evil.send_multipart([&b"MDPW02"[..], b"\x09"], 0).unwrap();
    let many: Vec<&[u8]> = std::iter::repeat_n(&b"x"[..], 100).collect();
    evil.send_multipart(many, 0).unwrap();

    let malformed = |m: &serde_json::Value, reason: &str| {
        labelled(m, "plantd_broker_malformed_total", &[("reason", reason)])
    };
    let metrics = wait_for("malformed messages to be counted", 5 * SECOND, || {
        let m = hub.metrics();
        let total: u64 =
            m["plantd_broker_malformed_total"].as_array()?.iter().filter_map(|s| s["value"].as_u64()).sum();
        (total == 3 && m["plantd_broker_too_many_frames_total"] == 1).then_some(m)
    });
    assert_eq!(malformed(&metrics, "unknown_header"), 1);
    assert_eq!(malformed(&metrics, "missing_service"), 1);
    assert_eq!(
        metrics["plantd_broker_unknown_workers_total"], 0,
        "an undecodable message is not a worker command"
    );

    // An oversized frame makes libzmq drop that peer's connection.
    let big = ctx.socket(zmq::DEALER).unwrap();
    big.connect(&hub.broker).unwrap();
    big.send_multipart([&b""[..], b"MDPC01", b"echo", &vec![0u8; 10_000]], 0).unwrap();

    assert_eq!(hub.try_call("echo", &["still here"], 5 * SECOND), Some(vec!["still here".into()]));
}

#[test]
fn sigterm_stops_the_hub_cleanly_and_workers_are_told() {
    let hub = HubProc::start();
    let mut worker = python_peer(
        "rfc7 worker",
        &["worker", "--dialect", "rfc7", "--broker", &hub.broker, "--service", "w"],
    );
    let lines = Lines::new(worker.take_stdout());
    assert_eq!(lines.next(10 * SECOND).as_deref(), Some("ready"));
    hub.wait_for_service("w");
    let mut proc = hub.proc;
    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(10 * SECOND).expect("hub exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(lines.next(10 * SECOND).as_deref(), Some("disconnected"), "the worker got DISCONNECT");
}

#[test]
fn a_second_hub_on_the_same_endpoint_fails_with_advice() {
    let hub = HubProc::start();
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["serve".to_string(), "--broker".into(), hub.broker.clone(), "--data-dir".into()];
    args.push(data.path().to_str().unwrap().into());
    args.extend(HubPorts::new().args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hub_cli(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind the broker") && err.contains("--broker"), "{err}");
}

/// Sends `n` requests at once, each from its own client, and while they are
/// out reads `service`'s row of `mmi.workers` until `seen` accepts it.
/// Returns the replies, and whether `seen` accepted a row before they all came.
fn burst_watching(
    hub: &HubProc,
    service: &str,
    n: usize,
    seen: impl Fn(&serde_json::Value) -> bool,
) -> (Vec<Option<Vec<String>>>, bool) {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (broker, service) = (hub.broker.clone(), service.to_string());
            std::thread::spawn(move || call(&broker, Dialect::Rfc7, &service, &[&i.to_string()], 20 * SECOND))
        })
        .collect();
    let mut accepted = false;
    while !accepted && !calls.iter().all(|c| c.is_finished()) {
        let row = hub.try_call("mmi.workers", &[], 5 * SECOND).and_then(|r| serde_json::from_str(&r[0]).ok());
        accepted = row.is_some_and(|w: serde_json::Value| seen(&w[service]));
    }
    (calls.into_iter().map(|c| c.join().unwrap()).collect(), accepted)
}

/// A worker that announces credit 8 holds eight slow requests at once; a
/// stock worker beside it is sent one at a time while the rest wait queued.
/// Seen in the broker's own account (`mmi.workers`), not in wall time, so a
/// loaded machine cannot fail it.
#[test]
fn a_credit_worker_holds_concurrent_requests_and_a_stock_worker_one() {
    let hub = HubProc::start();
    let _credit = echo_worker(&hub.broker, "slow8", &["--credit", "8", "--delay-ms", "2000"]);
    let _stock = echo_worker(&hub.broker, "slow1", &["--delay-ms", "200"]);
    hub.wait_for_service("slow8");
    hub.wait_for_service("slow1");
    let workers: serde_json::Value =
        serde_json::from_str(&hub.try_call("mmi.workers", &[], 5 * SECOND).expect("mmi answers")[0]).unwrap();
    assert_eq!(workers["slow8"]["credit"], 8, "{workers}");
    assert_eq!(workers["slow1"].get("credit"), None, "a stock worker's row is as before: {workers}");

    let (replies, all_held) =
        burst_watching(&hub, "slow8", 8, |row| row["in_flight"] == 8 && row["queued"] == 0);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.as_deref(), Some(&[i.to_string()][..]), "request {i}");
    }
    assert!(all_held, "the credit-8 worker never held all 8 requests at once");

    let (replies, waited) = burst_watching(&hub, "slow1", 8, |row| row["queued"].as_u64() >= Some(4));
    assert!(replies.iter().all(Option::is_some), "{replies:?}");
    assert!(waited, "a stock worker holds one request at a time, so the rest queue at the broker");
    // slow8, the hub's own two state workers (credit 64) and its two consumer services; not slow1.
    assert_eq!(hub.metric("plantd_broker_credit_workers_total"), 5);
}
