//! The hub's configuration: embedded defaults, overridden by a TOML file,
//! overridden by command-line flags. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the hub keeps its data.
    pub data_dir: PathBuf,
    pub broker: BrokerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config { data_dir: PathBuf::from("./data/hub"), broker: BrokerConfig::default() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// ROUTER endpoint clients and workers connect to. Loopback by default:
    /// exposing it is a decision for the operator (and for CURVE).
    pub endpoint: String,
    /// Heartbeat period, both ways.
    pub heartbeat_interval_ms: u64,
    /// Missed heartbeats before a worker is declared dead.
    pub heartbeat_liveness: u32,
    /// Requests queued per service while no worker is free; more are dropped and counted.
    pub queue_limit: usize,
    /// Queued requests older than this are dropped and counted.
    pub request_expiry_ms: u64,
    /// Largest frame accepted (ZMQ_MAXMSGSIZE); libzmq disconnects a peer that sends more.
    pub max_message_bytes: i64,
    /// Messages with more frames are dropped and counted.
    pub max_frames: usize,
    /// Distinct services tracked at once (services without workers or queued requests are forgotten).
    pub max_services: usize,
    /// Workers registered at once.
    pub max_workers: usize,
    /// Per-peer send and receive high-water mark, in messages.
    pub hwm: i32,
    /// Services whose in-flight request is delivered once more, to another
    /// worker, when its worker dies or disconnects. Only for idempotent services.
    pub redeliver: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            endpoint: "tcp://127.0.0.1:9797".into(),
            heartbeat_interval_ms: 2500,
            heartbeat_liveness: 3,
            queue_limit: 10_000,
            request_expiry_ms: 30_000,
            max_message_bytes: 1 << 20,
            max_frames: 64,
            max_services: 1024,
            max_workers: 10_000,
            hwm: 10_000,
            redeliver: Vec::new(),
        }
    }
}

impl BrokerConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn request_expiry(&self) -> Duration {
        Duration::from_millis(self.request_expiry_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl Config {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        let invalid = |field, problem: &str| Err(ConfigError::Invalid { field, problem: problem.into() });
        if b.endpoint.trim().is_empty() {
            return invalid("broker.endpoint", "must not be empty (e.g. \"tcp://127.0.0.1:9797\")");
        }
        if b.heartbeat_interval_ms == 0 {
            return invalid("broker.heartbeat_interval_ms", "must be at least 1");
        }
        if b.heartbeat_liveness == 0 {
            return invalid("broker.heartbeat_liveness", "must be at least 1");
        }
        if b.queue_limit == 0 {
            return invalid("broker.queue_limit", "must be at least 1");
        }
        if b.max_message_bytes < 64 {
            return invalid("broker.max_message_bytes", "must be at least 64");
        }
        if b.max_frames < 8 {
            return invalid("broker.max_frames", "must be at least 8 (Majordomo envelopes take up to 6)");
        }
        if b.max_services == 0 || b.max_workers == 0 {
            return invalid("broker.max_services/max_workers", "must be at least 1");
        }
        if b.hwm < 0 {
            return invalid("broker.hwm", "must be 0 (no limit) or more");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is always representable as TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
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
    fn printed_config_parses_back() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }
}
