//! Health (`GET /healthz`) and Prometheus metrics (`GET /metrics`) over HTTP.
//! Every counter the hub keeps and every bound it enforces shows up here.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use transport::ShutdownWatch;

use crate::broker::Snapshot;
use crate::bus::BusCounters;
use crate::config::Config;
use crate::ingest::IngestCounters;
use crate::security::Security;
use crate::state::store::Store;

/// What the endpoint reports on.
pub struct Sources {
    pub config: Config,
    pub broker: Snapshot,
    pub buses: Vec<(String, Arc<BusCounters>)>,
    pub state: Option<Arc<Store>>,
    pub ingest: Option<Arc<IngestCounters>>,
    pub security: Option<Arc<Security>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {listen}: {message} (set [http] listen = \"host:port\" or \"off\")")]
pub struct HttpError {
    listen: String,
    message: String,
}

pub struct HttpServer {
    server: tiny_http::Server,
    sources: Sources,
}

impl HttpServer {
    pub fn bind(listen: &str, sources: Sources) -> Result<HttpServer, HttpError> {
        let server = tiny_http::Server::http(listen)
            .map_err(|e| HttpError { listen: listen.into(), message: e.to_string() })?;
        Ok(HttpServer { server, sources })
    }

    /// The bound address (resolves port 0).
    pub fn address(&self) -> String {
        self.server.server_addr().to_string()
    }

    pub fn run(self, shutdown: &ShutdownWatch) {
        while !shutdown.is_set() {
            let request = match self.server.recv_timeout(Duration::from_millis(250)) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("http: {e}");
                    continue;
                }
            };
            let (status, content_type, body) = match request.url() {
                "/healthz" => (200, "application/json", self.health()),
                "/metrics" => (200, "text/plain; version=0.0.4", self.metrics()),
                _ => (404, "text/plain", "not found: try /healthz or /metrics\n".to_string()),
            };
            let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                .expect("static header is valid");
            let response =
                tiny_http::Response::from_string(body).with_status_code(status).with_header(header);
            if let Err(e) = request.respond(response) {
                log::debug!("http: responding failed: {e}");
            }
        }
    }

    fn health(&self) -> String {
        let census = self.sources.broker.lock().map(|s| s.1).unwrap_or_default();
        let state = self.sources.state.as_ref().map(
            |s| json!({"writes": s.writes(), "durable_writes": s.durable_writes(), "error": s.failure()}),
        );
        let degraded = self.sources.state.as_ref().is_some_and(|s| s.failure().is_some());
        json!({
            "status": if degraded { "degraded" } else { "ok" },
            "broker": {"endpoint": self.sources.config.broker.endpoint, "workers": census.workers, "services": census.services, "queued": census.queued},
            "buses": self.sources.buses.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "state": state,
        })
        .to_string()
    }

    fn metrics(&self) -> String {
        let mut out = Exposition::default();
        let (metrics, census) = self.sources.broker.lock().map(|s| s.clone()).unwrap_or_default();
        let b = &self.sources.config.broker;
        for (name, value) in metrics.to_json().as_object().into_iter().flatten() {
            match value.as_u64() {
                // Sums are left to the query language.
                Some(_) if name.ends_with("_total") => {}
                Some(v) => out.counter(&format!("plantd_broker_{name}_total"), "", v),
                None if name == "malformed" => {
                    for (reason, v) in value.as_object().into_iter().flatten() {
                        out.counter(
                            "plantd_broker_malformed_total",
                            &format!("reason=\"{reason}\""),
                            v.as_u64().unwrap_or(0),
                        );
                    }
                }
                None => {}
            }
        }
        out.gauge("plantd_broker_workers", "", census.workers as u64);
        out.gauge("plantd_broker_idle_workers", "", census.idle as u64);
        out.gauge("plantd_broker_queued_requests", "", census.queued as u64);
        out.gauge("plantd_broker_queued_bytes", "", census.queued_bytes as u64);
        out.gauge("plantd_broker_max_queued_bytes", "", b.max_queued_bytes as u64);
        out.gauge("plantd_broker_max_queued_bytes_per_service", "", b.max_queued_bytes_per_service as u64);
        out.gauge("plantd_broker_max_queued_bytes_per_identity", "", b.max_queued_bytes_per_identity as u64);
        out.gauge("plantd_broker_max_in_flight_per_identity", "", b.max_in_flight_per_identity.into());
        out.gauge("plantd_broker_rate_per_identity", "", b.rate_per_identity as u64);
        out.gauge("plantd_broker_burst_per_identity", "", b.burst_per_identity as u64);
        out.gauge("plantd_broker_services", "", census.services as u64);
        out.gauge("plantd_broker_queue_limit", "", b.queue_limit as u64);
        out.gauge("plantd_broker_max_message_bytes", "", b.max_message_bytes as u64);
        out.gauge("plantd_broker_max_frames", "", b.max_frames as u64);
        out.gauge("plantd_broker_max_services", "", b.max_services as u64);
        out.gauge("plantd_broker_max_workers", "", b.max_workers as u64);
        out.gauge("plantd_broker_hwm", "", b.hwm as u64);

        for (name, counters) in &self.sources.buses {
            for (what, value) in counters.snapshot() {
                out.counter(&format!("plantd_bus_{what}_total"), &format!("bus=\"{name}\""), value);
            }
            let labels = format!("bus=\"{name}\"");
            out.gauge(
                "plantd_bus_subscriptions",
                &labels,
                counters.subscriptions.load(std::sync::atomic::Ordering::Relaxed),
            );
            if let Some(bus) = self.sources.config.buses.iter().find(|b| &b.name == name) {
                out.gauge("plantd_bus_max_subscriptions", &labels, bus.max_subscriptions as u64);
                out.gauge("plantd_bus_max_subscription_bytes", &labels, bus.max_subscription_bytes as u64);
                out.gauge("plantd_bus_max_total_subscriptions", &labels, bus.max_total_subscriptions as u64);
                out.gauge("plantd_bus_hwm", &format!("bus=\"{name}\""), bus.hwm as u64);
                out.gauge(
                    "plantd_bus_max_message_bytes",
                    &format!("bus=\"{name}\""),
                    bus.max_message_bytes as u64,
                );
            }
        }
        if let Some(store) = &self.sources.state {
            out.counter("plantd_state_writes_total", "", store.writes());
            out.counter("plantd_state_durable_writes_total", "", store.durable_writes());
            out.gauge("plantd_state_store_available", "", store.failure().is_none().into());
            out.gauge("plantd_state_flush_interval_ms", "", self.sources.config.state.flush_interval_ms);
            out.gauge("plantd_state_cache_bytes", "", self.sources.config.state.cache_bytes);
            let l = &self.sources.config.state.limits;
            out.gauge("plantd_state_max_value_bytes", "", l.max_value_bytes as u64);
            out.gauge("plantd_state_max_keys_per_scope", "", l.max_keys_per_scope as u64);
            out.gauge("plantd_state_max_scope_bytes", "", l.max_scope_bytes as u64);
            out.gauge("plantd_state_max_scopes", "", l.max_scopes as u64);
            out.gauge("plantd_state_max_scopes_per_identity", "", l.max_scopes_per_identity as u64);
        }
        if let Some(ingest) = &self.sources.ingest {
            for (what, value) in ingest.snapshot() {
                out.counter(&format!("plantd_ingest_{what}_total"), "", value);
            }
        }
        if let Some(security) = &self.sources.security {
            out.gauge("plantd_security_identities", "", security.allow_list().len() as u64);
            for (identity, kind, n) in security.denials.snapshot() {
                let identity = identity.replace('\\', "\\\\").replace('"', "\\\"");
                out.counter(
                    "plantd_denials_total",
                    &format!("identity=\"{identity}\",kind=\"{}\"", kind.name()),
                    n,
                );
            }
        }
        out.text
    }
}

/// Prometheus text exposition, one `# TYPE` line per metric name.
#[derive(Default)]
struct Exposition {
    text: String,
    typed: std::collections::HashSet<String>,
}

impl Exposition {
    fn counter(&mut self, name: &str, labels: &str, value: u64) {
        self.sample("counter", name, labels, value);
    }

    fn gauge(&mut self, name: &str, labels: &str, value: u64) {
        self.sample("gauge", name, labels, value);
    }

    fn sample(&mut self, kind: &str, name: &str, labels: &str, value: u64) {
        if self.typed.insert(name.to_string()) {
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }
}
