//! The NATS bridge: a site's hub as part of a fleet, through NATS JetStream.
//!
//! - Durable export ([`export`]): every sample ingest accepts is kept in the
//!   export journal (`crate::journal`) and published to the stream
//!   with a JetStream acknowledgement and a deduplication id
//!   (`Nats-Msg-Id` = site/agent/epoch/seq); the journal's cursor moves only
//!   on an acknowledgement. A NATS outage, a NATS node lost, a hub killed:
//!   the journal resends from its cursor and the stream holds each sample
//!   once. A long outage fills the journal up to its bounds, then ingest
//!   answers Retry and the agents keep buffering.
//! - Best-effort export ([`live`]): live telemetry and the other configured
//!   topics, from the buses' in-process taps, published without waiting,
//!   counted when dropped.
//! - Import ([`rpc`]): requests on `plantd.<site>.rpc.<service>` are sent
//!   through the broker and answered, as `rpc_identity` when security is on.
//!
//! The NATS client (async-nats) runs on a tokio runtime on the bridge's own
//! thread; nothing else in the hub uses tokio.

pub mod export;
pub mod live;
pub mod rpc;
pub mod subjects;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use transport::ShutdownWatch;

use crate::journal::consumers::Spec;
use crate::journal::{self, Export, ExportConfig};
use crate::metrics::Families;
use crate::security::Security;

/// `[bridge]` in the hub's config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsConfig>,
}

impl BridgeConfig {
    pub fn is_empty(&self) -> bool {
        self.nats.is_none()
    }
}

/// `[bridge.nats]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS servers to connect to (any of them; the client fails over).
    pub servers: Vec<String>,
    /// This hub's site: a subject token (letters, digits, '-', '_').
    pub site: String,
    /// The JetStream stream to publish into, created if missing, taking
    /// `plantd.*.<kind>.>` for each exported kind (so sites can share it).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Bus topic prefixes to export. Durable samples of exported metric
    /// topics go through the journal; the rest best-effort.
    #[serde(default = "default_export")]
    pub export: Vec<String>,
    /// NATS credentials file (JWT and NKey seed), as `nsc` makes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// A user and a file holding its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A file holding a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TLS: the CA to trust, this hub's certificate and key, and whether TLS is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_required: bool,
    /// Replicas, when the bridge creates the stream.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The stream's deduplication window, when the bridge creates it: a
    /// sample resent within it is stored once (a hub restarting later than
    /// this after a crash could store its last unflushed acknowledgements twice).
    #[serde(default = "default_duplicate_window_s")]
    pub duplicate_window_s: u64,
    /// The export journal's bounds: past them ingest answers Retry.
    #[serde(default = "default_max_backlog_records")]
    pub max_backlog_records: u64,
    #[serde(default = "default_max_backlog_bytes")]
    pub max_backlog_bytes: u64,
    /// Durable samples published and not yet acknowledged, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long JetStream has to acknowledge one.
    #[serde(default = "default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Durable samples published per second, at most (a backlog drains paced).
    #[serde(default = "default_max_rate")]
    pub max_rate: u64,
    /// Best-effort messages waiting for NATS, at most; more are dropped and counted.
    #[serde(default = "default_live_queue")]
    pub live_queue: usize,
    /// Answer requests on `plantd.<site>.rpc.<service>`.
    #[serde(default = "default_true")]
    pub rpc: bool,
    /// With security: the identity those requests are authorised as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_identity: Option<String>,
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    /// Requests being answered at once, at most; more are answered 429.
    #[serde(default = "default_rpc_max_in_flight")]
    pub rpc_max_in_flight: usize,
}

fn default_stream() -> String {
    "PLANTD".into()
}
fn default_export() -> Vec<String> {
    vec![proto::sample::TOPIC_PREFIX.into(), proto::state::TOPIC_PREFIX.into()]
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window_s() -> u64 {
    3600
}
fn default_max_backlog_records() -> u64 {
    1_000_000
}
fn default_max_backlog_bytes() -> u64 {
    256 << 20
}
fn default_max_in_flight() -> usize {
    256
}
fn default_publish_timeout_ms() -> u64 {
    5000
}
fn default_max_rate() -> u64 {
    50_000
}
fn default_live_queue() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_rpc_timeout_ms() -> u64 {
    5000
}
fn default_rpc_max_in_flight() -> usize {
    64
}

impl NatsConfig {
    /// Checks what serde cannot: (field, problem).
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        let fail = |field: &'static str, problem: &str| Err((field, problem.to_string()));
        if self.servers.is_empty() {
            return fail("bridge.nats.servers", "name at least one server, e.g. \"nats://10.0.0.9:4222\"");
        }
        if !proto::identity::is_valid(&self.site) {
            return Err(("bridge.nats.site", format!("'{}' must be {}", self.site, proto::identity::RULE)));
        }
        if self.stream.is_empty() || self.stream.contains(['.', ' ', '*', '>', '/', '\\']) {
            return fail("bridge.nats.stream", "a stream name without '.', spaces, wildcards or slashes");
        }
        if self.export.is_empty() || self.export.iter().any(|p| subjects::kind_of_prefix(p).is_none()) {
            return fail(
                "bridge.nats.export",
                "bus topic prefixes naming a kind, like \"org.plantd.Metric.\" or \"org.plantd.State.\" \
                 (not Rpc: requests arrive on plantd.<site>.rpc.)",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return fail("bridge.nats.tls_cert/tls_key", "set both, or neither");
        }
        if self.user.is_some() != self.password_file.is_some() {
            return fail("bridge.nats.user/password_file", "set both, or neither");
        }
        if self.max_in_flight == 0
            || self.max_rate == 0
            || self.live_queue == 0
            || self.rpc_max_in_flight == 0
        {
            return fail(
                "bridge.nats",
                "max_in_flight, max_rate, live_queue and rpc_max_in_flight must be at least 1",
            );
        }
        if self.max_backlog_records == 0 || self.max_backlog_bytes < 1 << 20 {
            return fail("bridge.nats.max_backlog_bytes", "at least 1 record and 1 MiB");
        }
        Ok(())
    }

    /// Checks that every file named (credentials, password, token, TLS) can be read.
    pub fn check_files(&self) -> Result<(), String> {
        let files = [
            ("creds_file", &self.creds_file),
            ("password_file", &self.password_file),
            ("token_file", &self.token_file),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                std::fs::read(path).map_err(|e| format!("bridge.nats.{key} {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    fn exports_durable(&self) -> bool {
        self.export.iter().any(|p| proto::sample::TOPIC_PREFIX.starts_with(p.as_str()))
    }
}

/// What ingest needs to know of the bridge: whether it keeps a journal, and
/// which topics count as heard.
pub fn export_config(nats: Option<&NatsConfig>) -> Option<ExportConfig> {
    let nats = nats.filter(|n| n.exports_durable())?;
    Some(ExportConfig {
        prefixes: nats.export.clone(),
        consumers: vec![Spec::hub(journal::BRIDGE, nats.max_backlog_records, nats.max_backlog_bytes)],
    })
}

/// What the bridge has done, for `hub bridge status`, metrics and readiness.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub connected: AtomicBool,
    server: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    /// Acknowledged as already stored: JetStream's deduplication at work.
    pub duplicates: AtomicU64,
    /// Publishes that failed or timed out, resent from the cursor.
    pub retries: AtomicU64,
    /// Journal entries or topics that could not be exported (counted, skipped).
    pub unexportable: AtomicU64,
    pub cursor: AtomicU64,
    pub live_exported: AtomicU64,
    pub live_dropped: AtomicU64,
    pub rpc_requests: AtomicU64,
    pub rpc_denied: AtomicU64,
    pub rpc_busy: AtomicU64,
    pub rpc_timeouts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BridgeStatus {
    pub fn failed(&self, what: impl std::fmt::Display) {
        let text = what.to_string();
        let mut last = lock(&self.last_error);
        if last.as_deref() != Some(&text) {
            log::warn!("bridge: {text}");
        }
        *last = Some(text);
    }

    pub fn set_server(&self, server: Option<String>) {
        self.connected.store(server.is_some(), Relaxed);
        *lock(&self.server) = server;
    }

    pub fn to_json(&self, config: &NatsConfig, export: Option<&Export>) -> Value {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let backlog = export.map_or(Value::Null, |e| e.journal.backlog_json(journal::BRIDGE));
        json!({
            "servers": config.servers,
            "site": config.site,
            "stream": config.stream,
            "connected": self.connected.load(Relaxed),
            "server": *lock(&self.server),
            "last_error": *lock(&self.last_error),
            "cursor": get(&self.cursor),
            "backlog": backlog,
            "published": get(&self.published),
            "acked": get(&self.acked),
            "duplicates": get(&self.duplicates),
            "retries": get(&self.retries),
            "unexportable": get(&self.unexportable),
            "live": {"exported": get(&self.live_exported), "dropped": get(&self.live_dropped)},
            "rpc": {
                "requests": get(&self.rpc_requests),
                "denied": get(&self.rpc_denied),
                "busy": get(&self.rpc_busy),
                "timeouts": get(&self.rpc_timeouts),
            },
        })
    }

    pub fn collect(&self, export: Option<&Export>, out: &mut Families) {
        let get = |c: &AtomicU64| c.load(Relaxed);
        out.gauge(
            "bridge_connected",
            "1 while connected to a NATS server.",
            vec![],
            self.connected.load(Relaxed).into(),
        );
        let counters: [(&str, &'static str, u64); 11] = [
            ("published", "Durable samples published to JetStream.", get(&self.published)),
            ("acked", "Durable samples JetStream acknowledged.", get(&self.acked)),
            ("duplicates", "Acknowledged as already stored (deduplicated).", get(&self.duplicates)),
            ("retries", "Publishes that failed or timed out, resent.", get(&self.retries)),
            ("unexportable", "Entries or topics that make no NATS message.", get(&self.unexportable)),
            ("live_exported", "Best-effort messages exported.", get(&self.live_exported)),
            (
                "live_dropped",
                "Best-effort messages dropped (queue full or NATS down).",
                get(&self.live_dropped),
            ),
            ("rpc_requests", "Requests from NATS.", get(&self.rpc_requests)),
            ("rpc_denied", "Requests from NATS refused for rpc_identity.", get(&self.rpc_denied)),
            ("rpc_busy", "Requests from NATS refused: rpc_max_in_flight open.", get(&self.rpc_busy)),
            ("rpc_timeouts", "Requests from NATS that timed out.", get(&self.rpc_timeouts)),
        ];
        for (name, help, value) in counters {
            out.counter(&format!("bridge_{name}"), help, vec![], value);
        }
        if let Some(e) = export {
            e.journal.collect_backlog(
                journal::BRIDGE,
                "bridge",
                "Durable samples waiting for JetStream.",
                out,
            );
        }
    }
}

/// Everything the bridge thread needs.
pub struct Bridge {
    pub config: NatsConfig,
    pub export: Option<Export>,
    pub status: Arc<BridgeStatus>,
    pub ctx: zmq::Context,
    /// The buses' in-process taps, for best-effort export.
    pub taps: Vec<String>,
    pub security: Option<Arc<Security>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot start the bridge's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("bridge: {0}")]
    Config(String),
}

impl Bridge {
    /// Runs until `stop`, on this thread.
    pub fn run(self, stop: &ShutdownWatch) -> Result<(), BridgeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BridgeError::Runtime)?;
        runtime.block_on(async {
            let options = connect_options(&self.config, self.status.clone()).await?;
            let servers: Vec<String> = self.config.servers.clone();
            let client = match options.connect(servers.as_slice()).await {
                Ok(client) => client,
                Err(e) => return Err(BridgeError::Config(format!("cannot set up the NATS client: {e}"))),
            };
            let stopped = async {
                // Turns the bridge's watch every 250 ms: the watchdog sees it alive.
                while !stop.is_set() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            let exporting = export::run(&client, &self.config, self.export.clone(), self.status.clone());
            let live = live::run(&client, &self.config, &self.ctx, &self.taps, self.status.clone());
            let answering =
                rpc::run(&client, &self.config, &self.ctx, self.security.clone(), self.status.clone());
            tokio::select! {
                _ = stopped => {}
                _ = exporting => {}
                _ = live => {}
                _ = answering => {}
            }
            if let Some(export) = &self.export {
                let _ = export.journal.flush();
            }
            let _ = client.drain().await;
            Ok(())
        })
    }
}

/// The client's options: credentials, TLS, and connection state reported
/// to `status`. It retries the first connection and reconnects for ever.
async fn connect_options(
    config: &NatsConfig,
    status: Arc<BridgeStatus>,
) -> Result<async_nats::ConnectOptions, BridgeError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| BridgeError::Config(format!("{}: {e}", path.display())))
    };
    let mut options = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| BridgeError::Config(format!("creds_file {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(file)) = (&config.user, &config.password_file) {
        options = options.user_and_password(user.clone(), read(file)?);
    }
    if let Some(file) = &config.token_file {
        options = options.token(read(file)?);
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let events = status.clone();
    Ok(options
        .require_tls(config.tls_required)
        .name(format!("plantd-hub {}", config.site))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let status = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => log::info!("bridge: connected to NATS"),
                    async_nats::Event::Disconnected => {
                        status.set_server(None);
                        status.failed("disconnected from NATS");
                    }
                    other => log::debug!("bridge: NATS {other}"),
                }
            }
        }))
}
