//! The state service (org.plantd.State) through the real hub: plantd's
//! clients, persistence, change events, and the durability window under SIGKILL.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::*;
use transport::Subscriber;

const SECOND: Duration = Duration::from_secs(1);

fn state(hub: &HubProc, op: &str, request: Value) -> Value {
    let reply = hub
        .try_call("org.plantd.State", &[op, &request.to_string()], 5 * SECOND)
        .unwrap_or_else(|| panic!("no reply to {op}"));
    serde_json::from_str(&reply[0]).expect("the state service replies with JSON")
}

fn start_hub_with_state() -> HubProc {
    let hub = HubProc::start();
    hub.wait_for_service("org.plantd.State");
    hub
}

#[test]
fn plantd_dialect_clients_use_the_state_service() {
    let hub = start_hub_with_state();
    let set = json!({"service": "org.plantd.Test", "key": "mode", "value": "auto", "token": "t"}).to_string();
    let mut args =
        vec!["client", "--dialect", "plantd", "--broker", &hub.broker, "--service", "org.plantd.State"];
    args.extend(["state-set", set.as_str()]);
    let out = python_run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let body: Value = serde_json::from_str(reply["final"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"success": true, "data": {"scope": "org.plantd.Test", "key": "mode", "value": "auto", "status": "set"}})
    );
    assert_eq!(
        state(&hub, "get", json!({"service": "org.plantd.Test", "key": "mode"}))["data"]["value"],
        "auto"
    );
}

#[test]
fn operations_and_errors_over_the_wire() {
    let hub = start_hub_with_state();
    assert_eq!(state(&hub, "create-scope", json!({"service": "s"}))["data"]["status"], "created");
    assert_eq!(state(&hub, "create-scope", json!({"service": "s"}))["error"], "Scope 's' already exists");
    state(&hub, "state-set", json!({"service": "s", "key": "a", "value": "1"}));
    state(&hub, "state-set", json!({"service": "s", "key": "b", "value": {"n": 2}}));
    assert_eq!(
        state(&hub, "list-keys", json!({"service": "s"}))["data"],
        json!({"scope": "s", "keys": ["a", "b"], "count": 2})
    );
    assert_eq!(
        state(&hub, "state-get", json!({"service": "s", "key": "b"}))["data"]["value"],
        json!({"n": 2})
    );
    assert_eq!(state(&hub, "delete", json!({"service": "s", "key": "a"}))["data"]["status"], "deleted");
    assert_eq!(state(&hub, "list-scopes", json!({}))["data"], json!({"scopes": ["s"], "count": 1}));
    assert_eq!(state(&hub, "delete-scope", json!({"service": "s"}))["data"]["status"], "deleted");
    assert_eq!(state(&hub, "health", json!({}))["data"]["status"], "healthy");
    // plantd's error shapes
    assert_eq!(state(&hub, "frobnicate", json!({})), json!({"error": "Invalid operation"}));
    let one_frame = hub.try_call("org.plantd.State", &["state-get"], 5 * SECOND).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&one_frame[0]).unwrap(),
        json!({"error": "Invalid message format"})
    );
    let bad = hub.try_call("org.plantd.State", &["state-get", "{oops"], 5 * SECOND).unwrap();
    assert!(bad[0].contains("Invalid request format"), "{bad:?}");
    assert_eq!(state(&hub, "state-get", json!({"service": "s"}))["error"], "Key required for get request");
}

#[test]
fn every_change_is_published_on_the_state_bus() {
    let hub = start_hub_with_state();
    let ctx = zmq::Context::new();
    let mut events =
        Subscriber::connect(&ctx, &hub.bus("state").backend, &[b"org.plantd.State.plant"]).unwrap();
    // The first event may race the subscription: keep setting until one arrives.
    wait_for("a first state event", 10 * SECOND, || {
        state(&hub, "state-set", json!({"service": "plant", "key": "warmup", "value": "x"}));
        events.recv(Duration::from_millis(50)).unwrap()
    });
    while events.recv(Duration::from_millis(200)).unwrap().is_some() {}

    state(&hub, "state-set", json!({"service": "plant", "key": "mode", "value": "auto"}));
    state(&hub, "delete", json!({"service": "plant", "key": "mode"}));
    state(&hub, "state-get", json!({"service": "plant", "key": "mode"})); // not a change
    state(&hub, "delete-scope", json!({"service": "plant"}));
    let mut got = Vec::new();
    while let Some(m) = events.recv(2 * SECOND).unwrap() {
        assert_eq!(m.topic, b"org.plantd.State.plant");
        let mut e: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(e["ts"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok(), "{e}");
        e.as_object_mut().unwrap().remove("ts");
        got.push(e);
        if got.len() == 3 {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            json!({"scope": "plant", "key": "mode", "op": "set", "value": "auto"}),
            json!({"scope": "plant", "key": "mode", "op": "delete", "value": null}),
            json!({"scope": "plant", "key": null, "op": "delete-scope", "value": null}),
        ]
    );
}

#[test]
fn state_survives_a_restart() {
    let hub = start_hub_with_state();
    state(&hub, "state-set", json!({"service": "plant", "key": "setpoint", "value": "42"}));
    let ports = hub.ports();
    let broker = hub.broker.clone();
    let HubProc { mut proc, data, .. } = hub;
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(10 * SECOND).is_some_and(|s| s.success()));
    let hub = HubProc::start_with_ports(data, &broker, ports, &[]);
    hub.wait_for_service("org.plantd.State");
    assert_eq!(
        state(&hub, "state-get", json!({"service": "plant", "key": "setpoint"}))["data"]["value"],
        "42"
    );
}

/// Writes `n` keys, kills the hub with SIGKILL once the writes are durable
/// (or at once with `flush_interval_ms = 0`), restarts it and reads them back.
fn crash_test(flush_interval_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, format!("[state]\nflush_interval_ms = {flush_interval_ms}\n")).unwrap();
    let config = config.to_string_lossy().into_owned();
    let hub = HubProc::start_with(&["--config", &config]);
    hub.wait_for_service("org.plantd.State");
    let n = 200;
    for i in 0..n {
        let reply = state(&hub, "state-set", json!({"service": "crash", "key": format!("k{i}"), "value": i}));
        assert_eq!(reply["success"], true);
    }
    let acked = Instant::now();
    if flush_interval_ms > 0 {
        // The window is observable: health counts writes known to be on disk.
        let health = wait_for("acknowledged writes to become durable", 10 * SECOND, || {
            let h = state(&hub, "health", json!({}))["data"].clone();
            (h["durable_writes"] == h["writes"]).then_some(h)
        });
        let took = acked.elapsed();
        assert_eq!(health["writes"], n);
        // One flush interval plus a generous allowance for a loaded CI machine.
        assert!(took < Duration::from_millis(flush_interval_ms) + 2 * SECOND, "durable after {took:?}");
    } else {
        let h = state(&hub, "health", json!({}))["data"].clone();
        assert_eq!(
            h["durable_writes"], h["writes"],
            "flush_interval_ms = 0 acknowledges only durable writes"
        );
    }

    let ports = hub.ports();
    let broker = hub.broker.clone();
    let HubProc { mut proc, data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(10 * SECOND).expect("SIGKILL ends the hub");
    let hub = HubProc::start_with_ports(data, &broker, ports, &["--config", &config]);
    hub.wait_for_service("org.plantd.State");
    let keys = state(&hub, "list-keys", json!({"service": "crash"}));
    assert_eq!(keys["data"]["count"], n, "{keys}");
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            state(&hub, "state-get", json!({"service": "crash", "key": format!("k{i}")}))["data"]["value"],
            i
        );
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_past_the_durability_window() {
    crash_test(100);
}

#[test]
fn with_flush_on_every_write_sigkill_right_after_the_ack_loses_nothing() {
    crash_test(0);
}

#[test]
fn hub_state_cli_prints_replies_and_exit_codes() {
    let hub = start_hub_with_state();
    let run = |args: &[&str]| {
        let mut all = vec!["state", "--broker", &hub.broker];
        all.extend_from_slice(args);
        let out = hub_cli(&all);
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    let (code, reply) = run(&["--scope", "p", "set", "mode", "auto"]);
    assert_eq!((code, reply["data"]["status"].clone()), (Some(0), json!("set")));
    let (code, reply) = run(&["--scope", "p", "set", "--json", "limits", r#"{"max":80}"#]);
    assert_eq!((code, reply["data"]["value"].clone()), (Some(0), json!({"max": 80})));
    let (code, reply) = run(&["--scope", "p", "get", "limits"]);
    assert_eq!((code, reply["data"]["value"]["max"].clone()), (Some(0), json!(80)));
    let (code, reply) = run(&["--scope", "nope", "list-keys"]);
    assert_eq!((code, reply["error"].clone()), (Some(1), json!("Scope 'nope' does not exist")));
    let out = hub_cli(&["state", "--broker", &hub.broker, "get", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scope"), "a missing scope is explained");
}

/// Sets `keys` in `scope`, over one connection; the replies.
fn set_all(hub: &HubProc, scope: &str, keys: impl Iterator<Item = String>) -> Vec<Value> {
    let ctx = zmq::Context::new();
    let options = transport::ClientOptions { timeout: 5 * SECOND, retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, hub.endpoint(&hub.broker), options);
    keys.map(|key| {
        let request = json!({"service": scope, "key": key, "value": 1}).to_string();
        let reply = client.request("org.plantd.State", &[b"state-set", request.as_bytes()]).expect("a reply");
        serde_json::from_slice(&reply[0]).expect("JSON")
    })
    .collect()
}

#[test]
fn a_state_key_flood_is_refused_at_the_quota_and_counted() {
    let site = Site::new();
    let hub = site.hub("", "[state.limits]\nmax_scope_bytes = 16384\n");
    hub.wait_for_service("org.plantd.State");
    // The finding: 900 kB keys were taken (72 MB in one scope with 80 of them).
    let huge =
        state(&hub, "state-set", json!({"service": "flood", "key": "k".repeat(900 << 10), "value": 1}));
    let said = huge["error"].as_str().unwrap_or_default();
    assert!(said.contains("a key of 921600 bytes is over the limit of 256 (max_key_bytes)"), "{huge}");
    // 256-byte keys with 1-byte values: 63 × 257 bytes fit in 16 384, the 64th does not.
    let replies = set_all(&hub, "flood", (0..80).map(|i| format!("{i:03}{}", "k".repeat(253))));
    let taken = replies.iter().take_while(|r| r["success"] == true).count();
    assert_eq!(taken, 63, "{}", replies[taken]);
    assert!(replies[taken..]
        .iter()
        .all(|r| r["error"].as_str().unwrap_or_default().contains("max_scope_bytes")));
    assert_eq!(state(&hub, "list-keys", json!({"service": "flood"}))["data"]["count"], 63);
    // Counted as the caller's state denials, and in the state service's own counter.
    assert_eq!(hub.denials("ops", "state"), 1 + 80 - 63);
    assert_eq!(hub.metric("plantd_state_refused_total"), 1 + 80 - 63);
    assert_eq!(state(&hub, "health", json!({}))["data"]["refused"], 1 + 80 - 63);
}

#[test]
fn list_keys_of_a_big_scope_pages_and_every_reply_stays_under_max_message_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    let max = 65536;
    std::fs::write(
        &config,
        format!("[broker]\nmax_message_bytes = {max}\n\n[state.limits]\nmax_reply_bytes = {max}\nmax_value_bytes = 16384\n"),
    )
    .unwrap();
    let hub = HubProc::start_with(&["--config", config.to_str().unwrap()]);
    hub.wait_for_service("org.plantd.State");
    let keys: Vec<String> = (0..1000).map(|i| format!("{i:04}{}", "k".repeat(196))).collect();
    assert!(set_all(&hub, "big", keys.iter().cloned()).iter().all(|r| r["success"] == true));

    // 1000 keys of 200 bytes: 200 kB to list, in pages of at most 64 KiB.
    let (mut listed, mut after, mut pages) = (Vec::<String>::new(), None::<String>, 0);
    loop {
        pages += 1;
        assert!(pages <= 50, "paging ends");
        let request = json!({"service": "big", "after": after}).to_string();
        let reply = hub.try_call("org.plantd.State", &["list-keys", &request], 5 * SECOND).expect("a reply");
        assert!(reply[0].len() <= max, "page {pages}: {} bytes", reply[0].len());
        let reply: Value = serde_json::from_str(&reply[0]).unwrap();
        listed.extend(
            reply["data"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()),
        );
        match proto::state::next_page(&reply) {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert!(pages >= 4, "{pages} pages");
    assert_eq!(listed, keys, "every key once, in order");

    // `hub state` follows the pages and prints plantd's shape.
    let out = hub_cli(&["state", "--broker", &hub.broker, "--scope", "big", "list-keys"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let whole: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(whole["data"]["count"], 1000);
    assert_eq!(whole["data"]["keys"], json!(keys));
    assert!(
        whole["data"].get("truncated").is_none() && whole["data"].get("next").is_none(),
        "{}",
        whole["data"]["count"]
    );
}
