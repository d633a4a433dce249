//! Real third-party Majordomo peers (tests/interop/peers.py) against our hub:
//! majortomo's own classes, an RFC 7 client and worker, and plantd's word
//! dialect, alone and mixed with each other and with our Rust peers.

use serde_json::{json, Value};
use system_tests::*;

/// Runs a Python client; returns its {"partials": [...], "final": [...]}.
fn py_client(dialect: &str, broker: &str, service: &str, frames: &[&str]) -> Value {
    let mut args = vec!["client", "--dialect", dialect, "--broker", broker, "--service", service];
    args.extend_from_slice(frames);
    let out = python_run(&args);
    assert!(
        out.status.success(),
        "{dialect} client failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

/// Starts a Python worker and waits until the hub has it registered.
fn py_worker(hub: &HubProc, dialect: &str, service: &str, stream: bool) -> Proc {
    let mut args = vec!["worker", "--dialect", dialect, "--broker", &hub.broker, "--service", service];
    if stream {
        args.push("--stream");
    }
    let worker = python_peer(&format!("{dialect} worker"), &args);
    hub.wait_for_service(service);
    worker
}

#[test]
fn majortomo_worker_and_client_with_partials_and_multi_frame_bodies() {
    let hub = HubProc::start();
    let _worker = py_worker(&hub, "majortomo", "mt", true);
    let reply = py_client("majortomo", &hub.broker, "mt", &["alpha", "beta", "gamma"]);
    assert_eq!(
        reply,
        json!({"partials": [["alpha"], ["beta"], ["gamma"]], "final": ["alpha", "beta", "gamma"]})
    );
}

#[test]
fn rfc7_client_and_worker_from_the_spec() {
    let hub = HubProc::start();
    let _worker = py_worker(&hub, "rfc7", "r7", false);
    assert_eq!(
        py_client("rfc7", &hub.broker, "r7", &["x", "y"]),
        json!({"partials": [], "final": ["x", "y"]})
    );
    assert_eq!(
        py_client("rfc7", &hub.broker, "mmi.service", &["r7"]),
        json!({"partials": [], "final": ["200"]})
    );
    assert_eq!(
        py_client("rfc7", &hub.broker, "mmi.service", &["none"]),
        json!({"partials": [], "final": ["404"]})
    );
}

#[test]
fn plantd_client_and_worker_with_word_commands() {
    let hub = HubProc::start();
    let _worker = py_worker(&hub, "plantd", "org.plantd.Test", true);
    let reply = py_client("plantd", &hub.broker, "org.plantd.Test", &["k", "v"]);
    assert_eq!(reply, json!({"partials": [["k"], ["v"]], "final": ["k", "v"]}));
    let mmi = py_client("plantd", &hub.broker, "mmi.service", &["org.plantd.Test"]);
    assert_eq!(mmi, json!({"partials": [], "final": ["200"]}));
}

#[test]
fn rfc7_client_served_by_a_majortomo_worker() {
    let hub = HubProc::start();
    let _worker = py_worker(&hub, "majortomo", "mixed", true);
    // The worker streams; an RFC 7 client has no PARTIAL and gets the FINAL alone.
    let reply = py_client("rfc7", &hub.broker, "mixed", &["one", "two"]);
    assert_eq!(reply, json!({"partials": [], "final": ["one", "two"]}));
}

#[test]
fn majortomo_client_served_by_our_rust_worker() {
    let hub = HubProc::start();
    let _worker = echo_worker(&hub.broker, "rusty", &["--dialect", "rfc18", "--stream"]);
    hub.wait_for_service("rusty");
    let reply = py_client("majortomo", &hub.broker, "rusty", &["p", "q"]);
    assert_eq!(reply, json!({"partials": [["p"], ["q"]], "final": ["p", "q"]}));
}

#[test]
fn plantd_client_served_by_an_rfc7_worker_and_back() {
    let hub = HubProc::start();
    let _rfc7 = py_worker(&hub, "rfc7", "old", false);
    let _plantd = py_worker(&hub, "plantd", "new", false);
    assert_eq!(py_client("plantd", &hub.broker, "old", &["a"]), json!({"partials": [], "final": ["a"]}));
    assert_eq!(py_client("rfc7", &hub.broker, "new", &["b"]), json!({"partials": [], "final": ["b"]}));
    assert_eq!(py_client("majortomo", &hub.broker, "old", &["c"]), json!({"partials": [], "final": ["c"]}));
}

#[test]
fn python_peers_see_timeouts_as_timeouts() {
    // Guards the harness itself: a client with no worker must not report success.
    let hub = HubProc::start();
    let out = python_run(&[
        "client",
        "--dialect",
        "rfc7",
        "--broker",
        &hub.broker,
        "--service",
        "void",
        "--timeout",
        "0.3",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(3));
}
