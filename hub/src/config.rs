//! The hub's configuration: embedded defaults, overridden by a TOML file,
//! overridden by command-line flags. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::security::SecurityConfig;

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

/// One bus: publishers connect to `frontend` (XSUB), subscribers to `backend` (XPUB).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub name: String,
    pub frontend: String,
    pub backend: String,
    /// A PUB endpoint that gets a copy of every message the bus forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Messages queued per subscriber before the bus drops for that subscriber
    /// (a slow subscriber never stalls the others), and per publisher inbound.
    #[serde(default = "default_bus_hwm")]
    pub hwm: i32,
    /// Largest frame accepted on any of the bus's sockets (ZMQ_MAXMSGSIZE):
    /// a peer that sends more is disconnected.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: i64,
    /// Subscriptions one subscriber connection may hold; more are not applied (and counted).
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Longest topic prefix a subscription may have.
    #[serde(default = "default_max_subscription_bytes")]
    pub max_subscription_bytes: usize,
    /// Subscriptions all subscribers of the bus may hold together.
    #[serde(default = "default_max_total_subscriptions")]
    pub max_total_subscriptions: usize,
    /// Bytes of the prefixes all subscribers of the bus may hold together:
    /// libzmq's filter costs about 50 bytes of hub memory per prefix byte.
    #[serde(default = "default_max_total_subscription_bytes")]
    pub max_total_subscription_bytes: usize,
    /// Subscriptions one identity may hold over all its connections (with security).
    #[serde(default = "default_max_subscriptions_per_identity")]
    pub max_subscriptions_per_identity: usize,
    /// Prefix bytes one identity may hold over all its connections (with security).
    #[serde(default = "default_max_subscription_bytes_per_identity")]
    pub max_subscription_bytes_per_identity: usize,
    /// Connections holding subscriptions one identity may have (with security).
    #[serde(default = "default_max_connections_per_identity")]
    pub max_connections_per_identity: usize,
    /// Subscriptions libzmq takes in from one subscriber connection before
    /// the proxy has checked them (the backend's receive high-water mark).
    /// Small, so that a flood of subscriptions cannot be applied unchecked
    /// (libzmq before 4.3.5 applies them itself; see `bus::upstream`).
    #[serde(default = "default_max_unread_subscriptions")]
    pub max_unread_subscriptions: i32,
    /// After the bus closes a subscriber for going over its grants or a
    /// bound, that identity's new subscriber connections are refused for this long.
    #[serde(default = "default_subscriber_cooldown_ms")]
    pub subscriber_cooldown_ms: u64,
    /// Appends every forwarded message to a JSON-lines file, for audits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordConfig>,
}

fn default_bus_hwm() -> i32 {
    10_000
}

fn default_max_message_bytes() -> i64 {
    1 << 20
}

fn default_max_subscriptions() -> usize {
    1_000
}

fn default_max_subscription_bytes() -> usize {
    256
}

fn default_max_total_subscriptions() -> usize {
    100_000
}

fn default_max_total_subscription_bytes() -> usize {
    2 << 20
}

fn default_max_subscriptions_per_identity() -> usize {
    1_000
}

fn default_max_subscription_bytes_per_identity() -> usize {
    64 << 10
}

fn default_max_connections_per_identity() -> usize {
    16
}

fn default_max_unread_subscriptions() -> i32 {
    2
}

fn default_subscriber_cooldown_ms() -> u64 {
    10_000
}

impl BusConfig {
    pub fn new(name: &str, frontend: &str, backend: &str, capture: Option<&str>) -> Self {
        BusConfig {
            name: name.into(),
            frontend: frontend.into(),
            backend: backend.into(),
            capture: capture.map(Into::into),
            hwm: default_bus_hwm(),
            max_message_bytes: default_max_message_bytes(),
            max_subscriptions: default_max_subscriptions(),
            max_subscription_bytes: default_max_subscription_bytes(),
            max_total_subscriptions: default_max_total_subscriptions(),
            max_total_subscription_bytes: default_max_total_subscription_bytes(),
            max_subscriptions_per_identity: default_max_subscriptions_per_identity(),
            max_subscription_bytes_per_identity: default_max_subscription_bytes_per_identity(),
            max_connections_per_identity: default_max_connections_per_identity(),
            max_unread_subscriptions: default_max_unread_subscriptions(),
            subscriber_cooldown_ms: default_subscriber_cooldown_ms(),
            record: None,
        }
    }

    /// plantd's buses and ports, on loopback.
    pub fn defaults() -> Vec<BusConfig> {
        vec![
            BusConfig::new("state", "tcp://127.0.0.1:11000", "tcp://127.0.0.1:11001", None),
            BusConfig::new("event", "tcp://127.0.0.1:12000", "tcp://127.0.0.1:12001", None),
            BusConfig::new("metric", "tcp://127.0.0.1:13000", "tcp://127.0.0.1:13001", None),
        ]
    }

    /// Parses `NAME=FRONTEND,BACKEND[,CAPTURE]` (the `--bus` flag).
    pub fn parse_flag(flag: &str) -> Result<BusConfig, String> {
        let usage = "expected NAME=FRONTEND,BACKEND[,CAPTURE], e.g. metric=tcp://127.0.0.1:11000,tcp://127.0.0.1:11001";
        let (name, endpoints) = flag.split_once('=').ok_or_else(|| format!("--bus {flag}: {usage}"))?;
        let parts: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        match parts.as_slice() {
            [f, b] if !name.is_empty() => Ok(BusConfig::new(name, f, b, None)),
            [f, b, c] if !name.is_empty() => Ok(BusConfig::new(name, f, b, Some(c))),
            _ => Err(format!("--bus {flag}: {usage}")),
        }
    }

    pub fn subscriber_cooldown(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.subscriber_cooldown_ms)
    }

    /// The in-process endpoint hub components publish to.
    pub fn inproc_frontend(&self) -> String {
        format!("inproc://bus.{}.frontend", self.name)
    }

    /// Where the hub's own views (the web view) subscribe, in process.
    pub fn inproc_tap(&self) -> String {
        format!("inproc://bus.{}.tap", self.name)
    }
}

/// Recording of a bus to JSON lines, rotated by size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    pub path: PathBuf,
    /// Rotate when the file reaches this size.
    #[serde(default = "default_record_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` is the newest).
    #[serde(default = "default_record_keep")]
    pub keep: u32,
}

fn default_record_bytes() -> u64 {
    64 << 20
}

fn default_record_keep() -> u32 {
    4
}

/// The state service (`org.plantd.State`), a worker inside the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub enabled: bool,
    /// Worker threads serving requests (sled is safe to share between them).
    pub workers: usize,
    /// Requests each worker holds at once (its MDP credit): it applies all
    /// that are waiting and commits them with one flush. 1 is a stock worker.
    pub credit: u32,
    /// Durability window: acknowledged writes reach disk within this many
    /// milliseconds. 0 flushes every write before it is acknowledged.
    pub flush_interval_ms: u64,
    /// sled's page cache, in bytes (its RSS runs well above this).
    pub cache_bytes: u64,
    /// The bus that carries change events.
    pub bus: String,
    /// Bounds on what clients may store (values, keys and bytes per scope,
    /// scopes) and on the replies (`[state.limits]`).
    pub limits: crate::state::store::Limits,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            workers: 2,
            credit: 64,
            flush_interval_ms: 100,
            cache_bytes: 16 << 20,
            bus: "state".into(),
            limits: crate::state::store::Limits::default(),
        }
    }
}

/// The ingest service (`org.plantd.Ingest`): agents' durable samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub enabled: bool,
    /// The bus accepted samples are published on.
    pub bus: String,
    /// Accept a batch only when a subscriber on the bus covers at least one
    /// of its samples' topics, so nothing is published into the void while
    /// nobody listens; until then agents keep buffering. (One watched channel
    /// is enough: holding an agent's whole queue back for one unwatched
    /// channel would fill its outbox.)
    pub require_subscriber: bool,
    /// Worker threads: batches of different agents are handled at once. Each
    /// holds its batch until the watermarks are flushed, so the workers
    /// bound the batches a second (4: about 6 000 agents sending every second).
    pub workers: usize,
    /// Boot epochs whose watermarks are kept per agent (the least recently
    /// used are retired): bounds the store as agents reboot.
    pub epochs_kept: usize,
    /// Agents the hub keeps watermarks for; batches of further ones are refused.
    pub max_agents: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            bus: "metric".into(),
            require_subscriber: true,
            workers: 4,
            epochs_kept: 64,
            max_agents: 10_000,
        }
    }
}

/// Health (`/healthz`), Prometheus metrics (`/metrics`) and the web view over HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`, or "off".
    pub listen: String,
    /// A file holding the token every path but /healthz, /readyz and the web
    /// view's own code needs, in `Authorization: Bearer` (required when
    /// `listen` is not loopback, unless `insecure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Names (`name` or `name:port`) requests may give in `Host` besides the
    /// address they come in on (and `localhost` on loopback); others get 421.
    pub allowed_hosts: Vec<String>,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Request line and headers, in bytes.
    pub max_header_bytes: usize,
    /// Time a client has to send its headers (and the longest idle keep-alive).
    pub header_timeout_ms: u64,
    /// Live event streams (the web view's) open at once.
    pub max_streams: usize,
    /// Stream tickets (how a page opens a live stream with a token) outstanding at once.
    pub max_tickets: usize,
    /// How long a stream ticket is good for.
    pub ticket_ttl_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = httpd::Limits::default();
        HttpConfig {
            // plantd's health port, on loopback.
            listen: "127.0.0.1:8081".into(),
            token_file: None,
            allowed_hosts: Vec::new(),
            max_connections: limits.max_connections,
            max_connections_per_address: limits.max_connections_per_address,
            max_header_bytes: limits.max_header_bytes,
            header_timeout_ms: limits.header_timeout.as_millis() as u64,
            max_streams: limits.max_streams,
            max_tickets: limits.max_tickets,
            ticket_ttl_ms: limits.ticket_ttl.as_millis() as u64,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> httpd::Limits {
        httpd::Limits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_header_bytes: self.max_header_bytes,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_streams: self.max_streams,
            max_tickets: self.max_tickets,
            ticket_ttl: Duration::from_millis(self.ticket_ttl_ms),
        }
    }

    /// The names requests may give besides the endpoint's own address.
    pub fn hosts(&self) -> Result<httpd::Hosts, httpd::HostError> {
        httpd::Hosts::parse(&self.allowed_hosts)
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
    /// Bytes of request bodies queued per service; more are dropped and counted.
    pub max_queued_bytes_per_service: usize,
    /// Bytes of request bodies queued for all services together.
    pub max_queued_bytes: usize,
    /// With security: bytes of one identity's requests queued at once; more
    /// are answered 429 (so one peer cannot fill a service's queue).
    pub max_queued_bytes_per_identity: usize,
    /// With security: requests one identity may have open (queued or with a
    /// worker) at once; more are answered 429.
    pub max_in_flight_per_identity: u32,
    /// With security: requests per second one identity may send (a token
    /// bucket, refilled at this rate); more are answered 429.
    pub rate_per_identity: f64,
    /// With security: the bucket's size, the burst an identity may send at once.
    pub burst_per_identity: f64,
    /// Queued requests older than this are dropped and counted.
    pub request_expiry_ms: u64,
    /// Largest frame accepted (ZMQ_MAXMSGSIZE); libzmq disconnects a peer that sends more.
    pub max_message_bytes: i64,
    /// Messages with more frames are dropped and counted.
    pub max_frames: usize,
    /// Services with workers (or that had one, while requests wait for it)
    /// tracked at once; services with neither workers nor queued requests
    /// are forgotten.
    pub max_services: usize,
    /// Services known only from requests (no worker has provided them),
    /// tracked apart: requests for made-up names never fill the table a
    /// worker's READY needs. More such requests are answered 404.
    pub max_requested_services: usize,
    /// ... and of those, how many one identity may name (with security).
    pub max_requested_services_per_identity: usize,
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
            // A 1 GB hub: a quarter of it for queued requests at most.
            max_queued_bytes_per_service: 64 << 20,
            max_queued_bytes: 256 << 20,
            max_queued_bytes_per_identity: 16 << 20,
            max_in_flight_per_identity: 1_000,
            rate_per_identity: 2_000.0,
            burst_per_identity: 4_000.0,
            request_expiry_ms: 30_000,
            max_message_bytes: 1 << 20,
            max_frames: 64,
            max_services: 1024,
            max_requested_services: 256,
            max_requested_services_per_identity: 16,
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

    /// Options for the hub's own workers: they heartbeat as this broker expects.
    pub fn worker_options(&self) -> transport::WorkerOptions {
        let timing = proto::mdp::worker::WorkerTiming {
            heartbeat_interval: self.heartbeat_interval(),
            heartbeat_liveness: self.heartbeat_liveness,
            ..Default::default()
        };
        transport::WorkerOptions { timing, ..transport::WorkerOptions::default() }
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn only_loopback_without_security_unless_insecure() {
        for local in
            ["tcp://127.0.0.1:9797", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///tmp/x", "inproc://a"]
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
}
