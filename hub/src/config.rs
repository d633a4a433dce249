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
    /// Agents' desired configurations (`hub config`), kept under the data directory.
    pub fleet: crate::fleet::FleetConfig,
    /// The hub as a Sparkplug B edge node on an MQTT broker (`[sparkplug]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<crate::sparkplug::SparkplugConfig>,
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
            fleet: Default::default(),
            sparkplug: None,
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

pub use transport::is_local;

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

    /// Checks values serde cannot: each component its own fields, then
    /// what relates them (a bus named, ingest a bridge needs, names used twice).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let exposed = self.exposed_endpoints();
        if self.security.is_none() && !self.insecure && !exposed.is_empty() {
            return Err(ConfigError::Insecure { endpoints: exposed.join(", ") });
        }
        let invalid = |(field, problem): (&'static str, String)| ConfigError::Invalid { field, problem };
        let buses: Vec<&str> = self.buses.iter().map(|b| b.name.as_str()).collect();
        self.http.validate(self.insecure).map_err(invalid)?;
        self.fleet.validate().map_err(invalid)?;
        if let Some(sparkplug) = &self.sparkplug {
            sparkplug.validate().map_err(invalid)?;
            if !(self.ingest.enabled && buses.contains(&self.ingest.bus.as_str())) {
                return Err(invalid((
                    "sparkplug",
                    "publishes ingest's samples: needs [ingest] enabled with its bus".into(),
                )));
            }
        }
        crate::consumers::config::validate(&self.consumers, &self.declared_consumers).map_err(invalid)?;
        if !self.declared_consumers.is_empty() && !self.ingest.enabled {
            return Err(invalid((
                "consumer",
                "durable consumers read ingest's samples: needs [ingest] enabled".into(),
            )));
        }
        let ingest_on = self.ingest.enabled && buses.contains(&self.ingest.bus.as_str());
        if let Some(nats) = self.bridge_nats() {
            nats.validate().map_err(invalid)?;
            if !ingest_on {
                return Err(invalid((
                    "bridge.nats",
                    "exports ingest's samples: needs [ingest] enabled with its bus".into(),
                )));
            }
        }
        let mut pipeline_names = std::collections::HashSet::new();
        for p in &self.pipelines {
            p.validate(&buses, ingest_on)
                .map_err(|(field, problem)| invalid((field, format!("(pipeline '{}') {problem}", p.name))))?;
            if !pipeline_names.insert(p.name.as_str()) {
                return Err(invalid(("pipeline.name", format!("'{}' is used twice", p.name))));
            }
        }
        self.broker.validate().map_err(invalid)?;
        let mut names = std::collections::HashSet::new();
        for bus in &self.buses {
            if bus.name.is_empty() || !names.insert(bus.name.as_str()) {
                return Err(invalid(("bus.name", format!("'{}' is empty or used twice", bus.name))));
            }
            bus.validate().map_err(invalid)?;
        }
        self.ingest.validate(&buses).map_err(invalid)?;
        self.state.validate(&buses).map_err(invalid)?;
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is always representable as TOML")
    }
}

#[cfg(test)]
mod tests;
