//! The hub's HTTP endpoint, on the bounded server (`httpd`):
//!
//! | path | what |
//! | --- | --- |
//! | `/healthz` | the process answers (liveness) |
//! | `/readyz` | every component works (readiness: 503 and which one, if not) |
//! | `/metrics` | the metrics registry, Prometheus text |
//! | `/`, `/api/*` | the live web view and what it reads ([`web`]) |
//!
//! Everything but the two health checks and the page's own code needs the
//! token, when one is set, in `Authorization: Bearer`; the page's live
//! streams open with a ticket (`/api/ticket`). Requests must name the hub in
//! `Host` (its address, `localhost` on loopback, or `[http] allowed_hosts`).

pub mod config;
pub mod ready;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use httpd::{Get, Reply};
use serde_json::json;
use transport::{Shutdown, ShutdownWatch};

use self::config::HttpConfig;
use crate::broker::Snapshot;
use crate::ingest::agents::Agents;
use crate::ingest::IngestCounters;
use crate::metrics::{Families, Registry};
use crate::security::Security;
use crate::state::store::Store;

/// What the endpoint reports on.
pub struct Sources {
    /// How often the state service flushes: readiness allows ten of these
    /// (at least 5 s) for an acknowledged write to reach the disk.
    pub state_flush: std::time::Duration,
    pub registry: Arc<Registry>,
    pub broker: Snapshot,
    /// The hub's shutdown, whose watches say whether each loop still turns.
    pub shutdown: Shutdown,
    pub state: Option<Arc<Store>>,
    pub ingest: Option<(Arc<IngestCounters>, Arc<Agents>)>,
    /// Ingest's journal, for its consumers' backlogs.
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// Every store: damage found at start, health now.
    pub storage: crate::storage::Storage,
    pub security: Option<Arc<Security>>,
    pub web: web::Feeds,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Bind(#[from] httpd::BindError),
    #[error(
        "http.token_file {path}: {source} (write a long random token there, e.g. `openssl rand -hex 32`)"
    )]
    Token { path: std::path::PathBuf, source: std::io::Error },
    #[error("http.token_file {0} is empty: write a long random token there")]
    EmptyToken(std::path::PathBuf),
    /// Others may read the token (exit 78).
    #[error("http.token_file: {0}")]
    TokenExposed(#[from] transport::secret::Exposed),
    #[error("http.allowed_hosts: {0}")]
    Hosts(httpd::HostError),
}

/// Reads the HTTP token: a secret, refused if others may read it.
pub fn read_token(path: &std::path::Path) -> Result<String, HttpError> {
    use transport::secret::{read_private, Place, SecretFileError};
    let text = read_private(path, Place::Disk).map_err(|e| match e {
        SecretFileError::Read { source, .. } => HttpError::Token { path: path.into(), source },
        SecretFileError::Exposed(e) => HttpError::TokenExposed(e),
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(HttpError::EmptyToken(path.into()));
    }
    Ok(token)
}

pub struct HttpServer {
    server: httpd::Server,
    sources: Arc<Sources>,
    started: Instant,
}

impl HttpServer {
    pub fn bind(config: &HttpConfig, sources: Sources) -> Result<HttpServer, HttpError> {
        let token = config.token_file.as_deref().map(read_token).transpose()?;
        // Validation checked the names; a bad one here still refuses to start.
        let hosts = config.hosts().map_err(HttpError::Hosts)?;
        let server = httpd::Server::bind(&config.listen, config.limits(), token)?
            .check_hosts(hosts)
            .public_paths(web::PUBLIC);
        let counters = server.counters();
        let limits = config.limits();
        let truncated = sources.web.truncated.clone();
        sources.registry.register(
            "http",
            Arc::new(move |out: &mut Families| {
                for (name, value, gauge) in counters.snapshot() {
                    let name = format!("http_{}", name.trim_end_matches("_total"));
                    if gauge {
                        out.gauge(
                            &name,
                            "The HTTP endpoint's connections, source addresses, streams and tickets now.",
                            vec![],
                            value,
                        );
                    } else {
                        out.counter(
                            &name,
                            "The HTTP endpoint's connections, requests and refusals.",
                            vec![],
                            value,
                        );
                    }
                }
                out.gauge(
                    "http_max_connections",
                    "HTTP connections open at once, at most.",
                    vec![],
                    limits.max_connections as u64,
                );
                out.gauge(
                    "http_max_streams",
                    "Live streams open at once, at most.",
                    vec![],
                    limits.max_streams as u64,
                );
                out.gauge(
                    "http_max_connections_per_address",
                    "HTTP connections open at once from one source address, at most.",
                    vec![],
                    limits.max_connections_per_address as u64,
                );
                out.gauge(
                    "http_max_tickets",
                    "Live stream tickets outstanding at once, at most.",
                    vec![],
                    limits.max_tickets as u64,
                );
                out.gauge(
                    "http_max_header_bytes",
                    "HTTP request header bytes, at most.",
                    vec![],
                    limits.max_header_bytes as u64,
                );
                out.counter(
                    "http_web_state_truncated",
                    "State changes the web view shows cut (a scope, key or value over its bound).",
                    vec![],
                    truncated.load(std::sync::atomic::Ordering::Relaxed),
                );
                out.gauge(
                    "http_web_shown_bytes",
                    "Bytes of a state change's scope, key or value the web view shows, at most.",
                    vec![],
                    web::SHOWN_BYTES as u64,
                );
                out.gauge(
                    "http_web_state_changes_bytes",
                    "Bytes of all the state changes the web view keeps, at most.",
                    vec![],
                    web::STATE_CHANGES_BYTES as u64,
                );
            }),
        );
        Ok(HttpServer { server, sources: Arc::new(sources), started: Instant::now() })
    }

    /// The bound address (resolves port 0).
    pub fn address(&self) -> String {
        self.server.address().to_string()
    }

    pub fn run(self, shutdown: &ShutdownWatch) -> std::io::Result<()> {
        let (sources, started) = (self.sources, self.started);
        self.server.run(shutdown, move |get: &Get<'_>| route(&sources, started, get))
    }
}

fn route(sources: &Sources, started: Instant, get: &Get<'_>) -> Reply {
    match get.path {
        "/healthz" => {
            Reply::json(200, json!({"status": "ok", "uptime_s": started.elapsed().as_secs_f64()}).to_string())
        }
        "/readyz" => {
            let verdict = ready::assess(&ready::Inputs::gather(sources));
            Reply::json(if verdict.ready { 200 } else { 503 }, verdict.to_json().to_string())
        }
        "/metrics" => Reply::Body {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: sources.registry.prometheus().into_bytes(),
        },
        _ => web::route(sources, get),
    }
}
