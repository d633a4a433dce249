use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| e.to_string())
}

#[test]
fn only_loopback_without_security_unless_insecure() {
    for local in ["tcp://127.0.0.1:9797", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///tmp/x", "inproc://a"]
    {
        assert!(is_local(local), "{local}");
    }
    for exposed in ["tcp://*:9797", "tcp://0.0.0.0:1", "tcp://10.0.0.5:1", "tcp://eth0:1"] {
        assert!(!is_local(exposed), "{exposed}");
    }
    let mut c = Config::default();
    c.validate().unwrap();
    c.buses[2].backend = "tcp://*:13001".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("tcp://*:13001") && err.contains("hub keygen"), "{err}");
    c.insecure = true;
    c.validate().unwrap();
}

#[test]
fn empty_file_gives_embedded_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.broker.endpoint, "tcp://127.0.0.1:9797");
    assert_eq!(c.broker.heartbeat_interval(), Duration::from_millis(2500));
    assert_eq!(c.broker.queue_limit, 10_000);
    assert_eq!(c.broker.max_message_bytes, 1 << 20);
}

#[test]
fn file_overrides_only_what_it_names() {
    let c = parse(
        "data_dir = \"/var/lib/hub\"\n[broker]\nqueue_limit = 5\nredeliver = [\"org.plantd.Ingest\"]\n",
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/hub"));
    assert_eq!(c.broker.queue_limit, 5);
    assert_eq!(c.broker.redeliver, vec!["org.plantd.Ingest".to_string()]);
    assert_eq!(c.broker.hwm, BrokerConfig::default().hwm);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let err = parse("[broker]\nqueue_limt = 5\n").unwrap_err();
    assert!(err.contains("queue_limt"), "{err}");
}

#[test]
fn wrong_types_are_errors_naming_the_key() {
    let err = parse("[broker]\nheartbeat_interval_ms = \"fast\"\n").unwrap_err();
    assert!(err.contains("heartbeat_interval_ms"), "{err}");
}

#[test]
fn validation_names_the_field() {
    let mut c = Config::default();
    c.broker.heartbeat_liveness = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("broker.heartbeat_liveness"), "{err}");
}

#[test]
fn default_buses_are_plantds() {
    let c = Config::default();
    let names: Vec<_> =
        c.buses.iter().map(|b| (b.name.as_str(), b.frontend.as_str(), b.backend.as_str())).collect();
    assert_eq!(
        names,
        vec![
            ("state", "tcp://127.0.0.1:11000", "tcp://127.0.0.1:11001"),
            ("event", "tcp://127.0.0.1:12000", "tcp://127.0.0.1:12001"),
            ("metric", "tcp://127.0.0.1:13000", "tcp://127.0.0.1:13001"),
        ]
    );
}

#[test]
fn the_seeds_bus_layout_is_expressible() {
    let c = parse(
        "insecure = true\n[[bus]]\nname = \"metric\"\nfrontend = \"tcp://*:11000\"\nbackend = \"tcp://*:11001\"\ncapture = \"tcp://*:11002\"\n\n[state]\nenabled = false\n",
    )
    .unwrap();
    assert_eq!(
        c.buses,
        vec![BusConfig::new("metric", "tcp://*:11000", "tcp://*:11001", Some("tcp://*:11002"))]
    );
    c.validate().unwrap();
    let flag = BusConfig::parse_flag("metric=tcp://*:11000,tcp://*:11001,tcp://*:11002").unwrap();
    assert_eq!(flag, c.buses[0]);
    assert!(BusConfig::parse_flag("metric=tcp://*:1").is_err());
    assert!(BusConfig::parse_flag("tcp://*:1,tcp://*:2").is_err());
}

#[test]
fn services_need_their_buses() {
    let mut c = Config::default();
    c.buses.retain(|b| b.name != "state");
    assert!(c.validate().unwrap_err().to_string().contains("state.bus"));
    c.state.enabled = false;
    c.validate().unwrap();
    c.buses.retain(|b| b.name != "metric");
    assert!(c.validate().unwrap_err().to_string().contains("ingest.bus"));
    c.ingest.enabled = false;
    c.validate().unwrap();
}

#[test]
fn printed_config_parses_back() {
    let c = Config::default();
    assert_eq!(parse(&c.to_toml()).unwrap(), c);
}
