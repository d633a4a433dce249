//! The hub's configuration: embedded defaults, overridden by a TOML file,
//! overridden by command-line flags. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::broker::config::BrokerConfig;
pub use crate::bus::config::{BusConfig, RecordConfig};
pub use crate::http::config::HttpConfig;
pub use crate::ingest::config::IngestConfig;
use crate::security::SecurityConfig;
pub use crate::state::config::StateConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the hub keeps its data.
    pub data_dir: PathBuf,
    /// Run without `[security]` on addresses other than loopback. Everyone who
    /// can reach the hub may then do anything: a warning is logged at every start.
    pub insecure: bool,
    /// `info`, `debug`, ... or env_logger directives (`info,hub::broker=debug`).
    /// RUST_LOG and `-v` take precedence; SIGHUP re-reads it.
    pub log_level: String,
    pub broker: BrokerConfig,
    /// The message buses (`[[bus]]` in TOML). Listing any replaces all the defaults.
    #[serde(rename = "bus")]
    pub buses: Vec<BusConfig>,
    pub state: StateConfig,
    pub ingest: IngestConfig,
    pub http: HttpConfig,
    /// CURVE, the allow-list and roles; absent, the hub binds loopback only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityConfig>,
    /// Bridges to other systems (`[bridge.nats]`).
    #[serde(skip_serializing_if = "crate::bridge::BridgeConfig::is_empty")]
    pub bridge: crate::bridge::BridgeConfig,
    /// Pipelines (`[[pipeline]]`): ingest's samples or bus messages, transformed and recorded.
    #[serde(rename = "pipeline", skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<crate::pipeline::PipelineConfig>,
    /// Durable consumers' bounds and defaults (`[consumers]`) ...
    pub consumers: crate::consumers::config::ConsumersConfig,
    /// ... and the ones that exist from start (`[[consumer]]`).
    #[serde(rename = "consumer", skip_serializing_if = "Vec::is_empty")]
    pub declared_consumers: Vec<crate::consumers::config::ConsumerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data/hub"),
            insecure: false,
            log_level: "info".into(),
            broker: BrokerConfig::default(),
            buses: BusConfig::defaults(),
            state: StateConfig::default(),
            ingest: IngestConfig::default(),
            http: HttpConfig::default(),
            security: None,
            bridge: crate::bridge::BridgeConfig::default(),
            pipelines: Vec::new(),
            consumers: Default::default(),
            declared_consumers: Vec::new(),
        }
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
    #[error(
        "refusing to bind {endpoints} without security: anyone who can reach it could read and control \
         the plant. Make keys and an allow-list (`hub keygen hub --dir /etc/plantd/keys`, then \
         [security] server_cert and clients_dir: see \"Secure a site\" in the README), bind loopback \
         only, or accept the risk with --insecure (insecure = true)"
    )]
    Insecure { endpoints: String },
}

/// Whether a ZeroMQ endpoint can only be reached from this machine.
pub fn is_local(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        // ipc:// and inproc:// never leave the machine.
        return endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://");
    };
    let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

    /// The NATS bridge's settings, if it is configured.
    pub fn bridge_nats(&self) -> Option<&crate::bridge::NatsConfig> {
        self.bridge.nats.as_ref()
    }

    /// The ZeroMQ endpoints the hub binds that other machines could reach.
    pub fn exposed_endpoints(&self) -> Vec<&str> {
        let buses = self.buses.iter().flat_map(|b| [Some(&b.frontend), Some(&b.backend), b.capture.as_ref()]);
        std::iter::once(&self.broker.endpoint)
            .chain(buses.flatten())
            .map(String::as_str)
            .filter(|e| !is_local(e))
            .collect()
    }

    /// Checks values serde cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let exposed = self.exposed_endpoints();
        if self.security.is_none() && !self.insecure && !exposed.is_empty() {
            return Err(ConfigError::Insecure { endpoints: exposed.join(", ") });
        }
        let b = &self.broker;
        let invalid = |field, problem: &str| Err(ConfigError::Invalid { field, problem: problem.into() });
        let h = &self.http;
        let http_exposed = h.listen != "off" && !is_local(&format!("tcp://{}", h.listen));
        if http_exposed && h.token_file.is_none() && !self.insecure {
            return invalid(
                "http.token_file",
                "the HTTP endpoint listens beyond loopback, and its metrics and web view name every \
                 identity and agent: set token_file (a file with a long random token, e.g. \
                 `openssl rand -hex 32 > /etc/plantd/http.token`), or listen on 127.0.0.1",
            );
        }
        if let Err((field, problem)) =
            crate::consumers::config::validate(&self.consumers, &self.declared_consumers)
        {
            return Err(ConfigError::Invalid { field, problem });
        }
        if !self.declared_consumers.is_empty() && !self.ingest.enabled {
            return invalid("consumer", "durable consumers read ingest's samples: needs [ingest] enabled");
        }
        if let Some(nats) = self.bridge_nats() {
            if let Err(problem) = nats.validate() {
                return Err(ConfigError::Invalid { field: problem.0, problem: problem.1 });
            }
            if !self.ingest.enabled || !self.buses.iter().any(|b| b.name == self.ingest.bus) {
                return invalid(
                    "bridge.nats",
                    "exports ingest's samples: needs [ingest] enabled with its bus",
                );
            }
        }
        let buses: Vec<&str> = self.buses.iter().map(|b| b.name.as_str()).collect();
        let ingest_on = self.ingest.enabled && buses.contains(&self.ingest.bus.as_str());
        let mut pipeline_names = std::collections::HashSet::new();
        for p in &self.pipelines {
            if let Err((field, problem)) = p.validate(&buses, ingest_on) {
                return Err(ConfigError::Invalid {
                    field,
                    problem: format!("(pipeline '{}') {problem}", p.name),
                });
            }
            if !pipeline_names.insert(p.name.as_str()) {
                return invalid("pipeline.name", &format!("'{}' is used twice", p.name));
            }
        }
        if h.max_connections == 0 || h.max_streams == 0 || h.header_timeout_ms == 0 {
            return invalid("http.max_connections/max_streams/header_timeout_ms", "must be at least 1");
        }
        if h.max_connections_per_address == 0 || h.max_tickets == 0 {
            return invalid("http.max_connections_per_address/max_tickets", "must be at least 1");
        }
        if !(1000..=600_000).contains(&h.ticket_ttl_ms) {
            return invalid(
                "http.ticket_ttl_ms",
                "must be from 1000 (a page needs a moment to use its ticket) to 600000 (a ticket is a \
                 secret in an address: it should not outlive its use by long)",
            );
        }
        if let Err(e) = h.hosts() {
            return Err(ConfigError::Invalid { field: "http.allowed_hosts", problem: e.to_string() });
        }
        if h.max_header_bytes < 1024 {
            return invalid("http.max_header_bytes", "must be at least 1024");
        }
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
        if b.max_queued_bytes_per_service == 0 || b.max_queued_bytes < b.max_queued_bytes_per_service {
            return invalid(
                "broker.max_queued_bytes",
                "must be at least max_queued_bytes_per_service, which must be at least 1",
            );
        }
        if b.max_queued_bytes_per_identity < b.max_message_bytes.max(1) as usize {
            return invalid(
                "broker.max_queued_bytes_per_identity",
                "must be at least max_message_bytes, or no request of that size could ever queue",
            );
        }
        if b.max_in_flight_per_identity == 0 || b.rate_per_identity <= 0.0 || b.burst_per_identity < 1.0 {
            return invalid(
                "broker.max_in_flight_per_identity/rate_per_identity/burst_per_identity",
                "must be at least 1 (rate: more than 0)",
            );
        }
        if b.max_message_bytes < 64 {
            return invalid("broker.max_message_bytes", "must be at least 64");
        }
        if b.max_frames < 8 {
            return invalid("broker.max_frames", "must be at least 8 (Majordomo envelopes take up to 6)");
        }
        if b.max_services == 0 || b.max_workers == 0 || b.max_requested_services == 0 {
            return invalid("broker.max_services/max_requested_services/max_workers", "must be at least 1");
        }
        if b.max_requested_services_per_identity == 0 {
            return invalid("broker.max_requested_services_per_identity", "must be at least 1");
        }
        if b.hwm < 0 {
            return invalid("broker.hwm", "must be 0 (no limit) or more");
        }
        let mut names = std::collections::HashSet::new();
        for bus in &self.buses {
            if bus.name.is_empty() || !names.insert(bus.name.as_str()) {
                return invalid("bus.name", &format!("'{}' is empty or used twice", bus.name));
            }
            if bus.hwm < 0 {
                return invalid("bus.hwm", "must be 0 (no limit) or more");
            }
            if bus.max_unread_subscriptions < 2 {
                // At 1, libzmq 4.3.4 stalls a subscriber's first subscription.
                return invalid("bus.max_unread_subscriptions", "must be at least 2");
            }
            if bus.max_subscriptions_per_identity == 0
                || bus.max_subscription_bytes_per_identity == 0
                || bus.max_connections_per_identity == 0
            {
                return invalid(
                    "bus.max_subscriptions_per_identity/max_subscription_bytes_per_identity/max_connections_per_identity",
                    "must be at least 1",
                );
            }
            if bus.record.as_ref().is_some_and(|r| r.max_bytes < 1024) {
                return invalid("bus.record.max_bytes", "must be at least 1024");
            }
        }
        if self.ingest.enabled {
            if self.ingest.workers == 0 {
                return invalid("ingest.workers", "must be at least 1");
            }
            if !self.buses.iter().any(|b| b.name == self.ingest.bus) {
                return invalid("ingest.bus", &format!("names no configured bus ('{}')", self.ingest.bus));
            }
        }
        if self.state.enabled {
            if self.state.workers == 0 {
                return invalid("state.workers", "must be at least 1");
            }
            if !(1..=proto::mdp::MAX_BROKER_CREDIT).contains(&self.state.credit) {
                return invalid("state.credit", &format!("must be 1 to {}", proto::mdp::MAX_BROKER_CREDIT));
            }
            if !self.buses.iter().any(|b| b.name == self.state.bus) {
                return invalid("state.bus", &format!("names no configured bus ('{}')", self.state.bus));
            }
            if let Err((field, problem)) = self.state.limits.check() {
                return invalid(field, &problem);
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is always representable as TOML")
    }
}

#[cfg(test)]
mod tests;
