//! The hub as a Sparkplug B edge node, against Debian's mosquitto and a
//! Python host (paho-mqtt, payloads decoded by classes built from the
//! Sparkplug schema; tests/interop/sparkplug_host.py) that checks the rules
//! a host relies on: births before data, seq continuity, bdSeq in NBIRTH and
//! the will, aliases known.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// A tank (a sine, degC) and a valve (a writable boolean), every 100 ms.
const CHANNELS: &str =
    "[[channel]]\nname = \"tank\"\nperiod_ms = 100\nunit = \"degC\"\ndriver = { kind = \"sine\" }\n\n\
     [[channel]]\nname = \"valve\"\nperiod_ms = 100\ndriver = { kind = \"sim-output\", initial = false }\n";

/// Best-effort vibration, every 100 ms: live telemetry the agent does not keep.
const VIBRATION: &str = "[[channel]]\nname = \"vibration\"\nperiod_ms = 100\ndelivery = \"best-effort\"\n\
     driver = { kind = \"noise\" }\n";

/// A hub config with `[sparkplug]` for `broker` (and `extra` lines in it).
fn hub_config(dir: &Path, broker: &Mosquitto, extra: &str) -> String {
    let path = dir.join("hub.toml");
    let text = format!(
        "[sparkplug]\nbroker = \"{}\"\ngroup_id = \"plant-a\"\nedge_node_id = \"hub-1\"\n\
         commands = [\"sp-*/valve\"]\nlive_window_ms = 1000\ndevice_timeout_s = 3\nkeep_alive_s = 5\n{extra}\n",
        broker.url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn is(kind: &str) -> impl Fn(&Value) -> Option<Value> + '_ {
    move |m: &Value| (m["kind"] == kind).then(|| m.clone())
}

fn metric<'a>(message: &'a Value, name: &str) -> Option<&'a Value> {
    message["metrics"].as_array()?.iter().find(|m| m["name"] == name)
}

#[test]
fn births_data_rebirth_and_commands_reach_a_host_as_sparkplug_says() {
    let mqtt = Mosquitto::start();
    let mut host = SparkplugHost::start(&mqtt, "plant-a");
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&["--config", &hub_config(dir.path(), &mqtt, "live = true")]);
    let metric_bus = hub.bus("metric").clone();
    let body = format!("{CHANNELS}\n{VIBRATION}");
    let config = agent_config(dir.path(), "sp-1", &hub.broker, &metric_bus.frontend, &body);
    let _agent = agent_run(&config);

    let nbirth = host.wait("NBIRTH", 20 * SECOND, is("NBIRTH"));
    assert_eq!(
        (nbirth["seq"].as_u64(), metric(&nbirth, "bdSeq").unwrap()["value"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(metric(&nbirth, "Node Control/Rebirth").unwrap()["value"], false);
    let dbirth = host.wait("DBIRTH of sp-1", 20 * SECOND, |m| {
        (m["kind"] == "DBIRTH" && m["device"] == "sp-1" && metric(m, "valve").is_some()).then(|| m.clone())
    });
    let tank = metric(&dbirth, "tank").unwrap();
    assert_eq!(
        (tank["datatype"].as_u64(), tank["unit"].as_str()),
        (Some(10), Some("degC")),
        "a Double in degC"
    );
    assert_eq!(metric(&dbirth, "valve").unwrap()["datatype"], 11, "a Boolean");
    assert!(tank["alias"].is_u64(), "aliases are given in births: {tank}");
    let ddata = host.wait("DDATA of sp-1", 20 * SECOND, |m| {
        (m["kind"] == "DDATA" && m["device"] == "sp-1").then(|| m.clone())
    });
    assert!(ddata["metrics"][0]["alias"].is_u64() && ddata["metrics"][0]["datatype"].is_null(), "{ddata}");

    // A rebirth: NBIRTH with seq 0 and the same bdSeq, then the DBIRTH, no reconnect.
    host.send(json!({"rebirth": true, "node": "hub-1"}));
    let again = host.wait("the rebirth's NBIRTH", 10 * SECOND, is("NBIRTH"));
    assert_eq!(
        (again["seq"].as_u64(), metric(&again, "bdSeq").unwrap()["value"].as_u64()),
        (Some(0), Some(0))
    );
    host.wait("the rebirth's DBIRTH", 10 * SECOND, |m| (m["kind"] == "DBIRTH").then_some(()));

    // A DCMD to the allowed valve reaches the agent's output; one to the tank is refused and counted.
    host.send(json!({"dcmd": "sp-1", "node": "hub-1", "metric": "valve", "value": true}));
    wait_for("the valve written", 10 * SECOND, || {
        let s = agent_status(&dir.path().join("sp-1-data"))?;
        (s["channels"]["valve"]["last"] == true).then_some(())
    });
    // Quick writes land in the order sent: the last one stands.
    for value in [false, true, false] {
        host.send(json!({"dcmd": "sp-1", "node": "hub-1", "metric": "valve", "value": value}));
    }
    wait_for("the three writes made", 10 * SECOND, || {
        (hub.metric("plantd_sparkplug_commands_written_total") == 4).then_some(())
    });
    wait_for("the valve closed, as last written", 10 * SECOND, || {
        let s = agent_status(&dir.path().join("sp-1-data"))?;
        (s["channels"]["valve"]["last"] == false).then_some(())
    });
    host.send(json!({"dcmd": "sp-1", "node": "hub-1", "metric": "tank", "value": 1.0}));
    wait_for("the tank command refused", 10 * SECOND, || {
        (hub.metric("plantd_sparkplug_commands_refused_total") >= 1).then_some(())
    });
    assert_eq!(hub.metric("plantd_sparkplug_commands_written_total"), 4);

    let out = hub_cli(&["sparkplug", "status", "--json", "--broker", &hub.broker]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (status["connected"].as_bool(), status["devices_born"].as_u64()),
        (Some(true), Some(1)),
        "{status}"
    );
    host.wait("more data", 10 * SECOND, |m| (m["kind"] == "DDATA").then_some(()));
    // `live = true`: the best-effort channel is published too.
    let seen_live = host.seen.iter().any(|m| m["kind"] == "DDATA" && m["metrics"][0]["name"] == "vibration");
    if !seen_live {
        host.wait("best-effort vibration", 10 * SECOND, |m| {
            (m["kind"] == "DDATA" && m["metrics"][0]["name"] == "vibration").then_some(())
        });
    }
    assert!(hub.metric("plantd_sparkplug_live_published_total") > 0);
    assert_eq!(host.violations(), Vec::<String>::new());
}

#[test]
fn a_killed_hub_leaves_its_ndeath_and_comes_back_with_the_next_bd_seq_and_every_sample_of_the_outage() {
    let mqtt = Mosquitto::start();
    let mut host = SparkplugHost::start(&mqtt, "plant-a");
    let dir = tempfile::tempdir().unwrap();
    let config_path = hub_config(dir.path(), &mqtt, "");
    let hub = HubProc::start_with(&["--config", &config_path]);
    let metric_bus = hub.bus("metric").clone();
    // Every durable sample ingest takes, as the hub republishes it: what the host must see.
    let ingested = Collector::start(metric_bus.backend.as_str(), "org.plantd.Metric.sp-2.");
    let body = format!("[uplink]\nlive_window_ms = 1000\nbackoff_max_ms = 500\n\n{CHANNELS}");
    let config = agent_config(dir.path(), "sp-2", &hub.broker, &metric_bus.frontend, &body);
    let data = dir.path().join("sp-2-data");
    let _agent = agent_run(&config);
    host.wait("live DDATA", 20 * SECOND, |m| (m["kind"] == "DDATA").then_some(()));

    let (ports, broker) = (hub.ports(), hub.broker.clone());
    let HubProc { mut proc, data: hub_data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(10 * SECOND).expect("SIGKILL ends the hub");
    let death = host.wait("the NDEATH the broker publishes for the hub", 20 * SECOND, is("NDEATH"));
    assert_eq!(metric(&death, "bdSeq").unwrap()["value"], 0, "{death}");
    assert_eq!(death["has_seq"], false);
    wait_for_status(&data, "a backlog at the agent", 20 * SECOND, |s| {
        (s["link"]["state"] == "down" && s["outbox"]["records"].as_u64()? >= 30).then_some(())
    });

    let _hub = HubProc::start_with_ports(hub_data, &broker, ports, &["--config", &config_path]);
    let nbirth = host.wait("the NBIRTH after the restart", 20 * SECOND, is("NBIRTH"));
    assert_eq!(metric(&nbirth, "bdSeq").unwrap()["value"], 1, "one more per connect: {nbirth}");
    // The device registry outlived the hub: the first DBIRTH names both channels, aliases kept.
    let dbirth = host.wait("the first DBIRTH after the restart", 20 * SECOND, is("DBIRTH"));
    assert!(metric(&dbirth, "tank").is_some() && metric(&dbirth, "valve").is_some(), "{dbirth}");
    wait_for_status(&data, "the agent's backlog drained", 60 * SECOND, |s| {
        (s["outbox"]["records"] == 0 && s["link"]["state"] == "up").then_some(())
    });

    // Every durable sample ingest took reaches the host, the outage's as historical.
    let wanted: Vec<(String, i64)> = ingested
        .durable()
        .iter()
        .map(|s| (s.channel.clone(), s.json["wall_ns"].as_i64().unwrap() / 1_000_000))
        .collect();
    let mut stored: HashMap<(String, i64), Vec<Value>> = HashMap::new();
    let mut historical = 0;
    // Each metric a host would store: by name and time, every value it came with.
    let mut store = |m: &Value, stored: &mut HashMap<(String, i64), Vec<Value>>| {
        if m["kind"] == "DDATA" || m["kind"] == "DBIRTH" {
            for x in m["metrics"].as_array().into_iter().flatten() {
                let key = (
                    x["name"].as_str().unwrap_or_default().to_string(),
                    x["timestamp"].as_i64().unwrap_or(0),
                );
                historical += usize::from(x["is_historical"] == true);
                stored.entry(key).or_default().push(x["value"].clone());
            }
        }
    };
    for m in host.seen.clone() {
        store(&m, &mut stored);
    }
    host.wait("every durable sample at the host", 60 * SECOND, |m| {
        store(m, &mut stored);
        wanted.iter().all(|k| stored.contains_key(k)).then_some(())
    });
    assert!(historical > 0, "samples of the outage are marked historical");
    // A sample sent twice (after the crash, from the journal's cursor) is the
    // same metric, time and value: a host stores it once.
    for (key, values) in &stored {
        assert!(values.windows(2).all(|w| w[0] == w[1]), "{key:?} arrived with different values: {values:?}");
    }
    assert_eq!(host.violations(), Vec::<String>::new());
}

#[test]
fn a_primary_host_offline_holds_the_node_back_and_its_return_brings_a_birth_and_the_backlog() {
    let mqtt = Mosquitto::start();
    let mut host = SparkplugHost::start(&mqtt, "plant-a");
    host.send(json!({"state": true, "host": "scada", "timestamp": 1000}));
    let dir = tempfile::tempdir().unwrap();
    let hub =
        HubProc::start_with(&["--config", &hub_config(dir.path(), &mqtt, "primary_host_id = \"scada\"")]);
    let metric_bus = hub.bus("metric").clone();
    let config = agent_config(dir.path(), "sp-3", &hub.broker, &metric_bus.frontend, CHANNELS);
    let data = dir.path().join("sp-3-data");
    let _agent = agent_run(&config);
    host.wait("DDATA while the host is online", 20 * SECOND, |m| (m["kind"] == "DDATA").then_some(()));

    host.send(json!({"state": false, "host": "scada", "timestamp": 2000}));
    let death = host.wait("the NDEATH for the offline host", 10 * SECOND, is("NDEATH"));
    let bd_seq = metric(&death, "bdSeq").unwrap()["value"].as_u64().unwrap();
    // An older STATE (a stale retained one) saying online is ignored.
    host.send(json!({"state": true, "host": "scada", "timestamp": 1500}));
    let samples = |s: &Value| s["channels"]["tank"]["samples"].as_u64();
    let before = samples(&agent_status(&data).unwrap()).unwrap();
    wait_for_status(&data, "twenty more readings while the host is away", 20 * SECOND, |s| {
        (samples(s)? >= before + 20).then_some(())
    });
    let out = hub_cli(&["sparkplug", "status", "--json", "--broker", &hub.broker]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["host_online"], false, "{status}");
    assert!(status["backlog"]["records"].as_u64().unwrap() > 0, "the samples wait in the journal: {status}");

    host.send(json!({"state": true, "host": "scada", "timestamp": 3000}));
    let nbirth = host.wait("the NBIRTH when the host is back", 20 * SECOND, is("NBIRTH"));
    assert_eq!(metric(&nbirth, "bdSeq").unwrap()["value"].as_u64(), Some(bd_seq + 1));
    // Nothing was published while the host was away.
    let i = host.seen.iter().position(|m| m["kind"] == "NDEATH").unwrap();
    let j = host.seen.iter().rposition(|m| m["kind"] == "NBIRTH").unwrap();
    assert!(host.seen[i + 1..j].iter().all(|m| m["kind"].is_null()), "{:#?}", &host.seen[i..j]);
    host.wait("the backlog, historical", 20 * SECOND, |m| {
        (m["kind"] == "DDATA" && m["metrics"][0]["is_historical"] == true).then_some(())
    });
    assert_eq!(host.violations(), Vec::<String>::new());
}

#[test]
fn the_node_reaches_an_mqtts_broker_through_its_ca_and_not_without_it() {
    let mqtt = Mosquitto::start_tls();
    let (tls_port, ca) = mqtt.tls.clone().unwrap();
    let mut host = SparkplugHost::start(&mqtt, "plant-a");
    let dir = tempfile::tempdir().unwrap();
    let config = |ca: &Path| {
        let path = dir.path().join("hub.toml");
        let text = format!(
            "[sparkplug]\nbroker = \"mqtts://127.0.0.1:{tls_port}\"\ngroup_id = \"plant-a\"\n\
             edge_node_id = \"hub-tls\"\ntls_ca = \"{}\"\n",
            ca.display()
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    // A CA that did not sign the broker's certificate: no session, and the status says why.
    let other = Mosquitto::start_tls();
    let wrong = HubProc::start_with(&["--config", &config(&other.tls.clone().unwrap().1)]);
    let status = wait_for("the TLS failure reported", 20 * SECOND, || {
        let out = hub_cli(&["sparkplug", "status", "--json", "--broker", &wrong.broker]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        status["last_error"].is_string().then_some(status)
    });
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["last_error"].as_str().unwrap().contains("ertificate"), "{status}");
    drop(wrong);

    let hub = HubProc::start_with(&["--config", &config(&ca)]);
    let nbirth = host.wait("an NBIRTH over TLS", 20 * SECOND, |m| {
        (m["node"] == "hub-tls" && m["kind"] == "NBIRTH").then(|| m.clone())
    });
    assert_eq!(nbirth["seq"], 0);
    let out = hub_cli(&["sparkplug", "status", "--json", "--broker", &hub.broker]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["connected"], true, "{status}");
}

#[test]
fn with_security_a_dcmd_is_made_as_its_identity_and_only_what_its_roles_allow() {
    let mqtt = Mosquitto::start();
    let mut host = SparkplugHost::start(&mqtt, "plant-a");
    let site = Site::new();
    let (pump, _scada, _grafana) = (site.identity("sp-4"), site.identity("scada"), site.identity("grafana"));
    let dir = tempfile::tempdir().unwrap();
    let roles = "\"sp-*\" = [\"agent\"]\n\"scada\" = [\"operator\"]\n\"grafana\" = [\"viewer\"]";
    let sparkplug = |node: &str, identity: &str| {
        format!(
            "[sparkplug]\nbroker = \"{}\"\ngroup_id = \"plant-a\"\nedge_node_id = \"{node}\"\n\
             commands = [\"sp-*/valve\"]\ncommand_identity = \"{identity}\"\n",
            mqtt.url()
        )
    };
    // Writes are made as scada, an operator.
    let hub = site.hub(roles, &sparkplug("hub-sec", "scada"));
    let body = format!("{}\n{CHANNELS}", site.agent_keys(&pump));
    let config = agent_config(dir.path(), "sp-4", &hub.broker, &hub.bus("metric").frontend, &body);
    let _agent = agent_run(&config);
    host.wait("the DBIRTH of sp-4", 30 * SECOND, |m| {
        (m["kind"] == "DBIRTH" && m["device"] == "sp-4" && metric(m, "valve").is_some()).then_some(())
    });
    host.send(json!({"dcmd": "sp-4", "node": "hub-sec", "metric": "valve", "value": true}));
    wait_for("the valve written as scada", 10 * SECOND, || {
        let s = agent_status(&dir.path().join("sp-4-data"))?;
        (s["channels"]["valve"]["last"] == true).then_some(())
    });
    assert_eq!(hub.metric("plantd_sparkplug_commands_written_total"), 1);
    assert_eq!(hub.metric("plantd_sparkplug_commands_refused_total"), 0);

    // A node whose commands are made as grafana, a viewer: its write is refused by the
    // viewer's roles (though the channel is allow-listed), counted as grafana's denial.
    let viewer_hub = site.hub(roles, &sparkplug("hub-viewer", "grafana"));
    host.wait("the second node's NBIRTH", 30 * SECOND, |m| {
        (m["kind"] == "NBIRTH" && m["node"] == "hub-viewer").then_some(())
    });
    host.send(json!({"dcmd": "sp-4", "node": "hub-viewer", "metric": "valve", "value": false}));
    wait_for("the write refused", 10 * SECOND, || {
        (viewer_hub.metric("plantd_sparkplug_commands_refused_total") == 1).then_some(())
    });
    viewer_hub.wait_denied("grafana", "call");
    assert_eq!(viewer_hub.metric("plantd_sparkplug_commands_written_total"), 0);
    assert_eq!(agent_status(&dir.path().join("sp-4-data")).unwrap()["channels"]["valve"]["last"], true);
    assert_eq!(host.violations(), Vec::<String>::new());
}
