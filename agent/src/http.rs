//! The agent's own `/healthz` and `/metrics` (`[http] listen`, off by
//! default), on the same bounded server as the hub's: for a plant's
//! Prometheus to scrape each controller directly (outbox, breaker, link,
//! drops), with the hub down or not.

use std::sync::Arc;

use httpd::metrics::{Families, Registry};
use httpd::{Get, Reply};
use serde_json::json;
use transport::ShutdownWatch;

use crate::config::HttpConfig;
use crate::status::Shared;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Bind(#[from] httpd::BindError),
    #[error("http.token_file {path}: {source}")]
    Token { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `stop` (on the calling thread).
pub fn serve(config: &HttpConfig, shared: Arc<Shared>, stop: &ShutdownWatch) -> Result<(), HttpError> {
    let token = match &config.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| HttpError::Token { path: path.clone(), source })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    // A controller is scraped, not browsed: a handful of connections, no streams.
    let limits =
        httpd::Limits { max_connections: config.max_connections, max_streams: 1, ..httpd::Limits::default() };
    let server = httpd::Server::bind(&config.listen, limits, token)?;
    log::info!("agent metrics on http://{}/metrics", server.address());
    let registry = Registry::default();
    let counters = server.counters();
    let status = shared.clone();
    registry.register("agent", Arc::new(move |out: &mut Families| status.collect(out)));
    registry.register(
        "http",
        Arc::new(move |out: &mut Families| {
            out.counter(
                "agent_http_requests",
                "HTTP requests answered.",
                vec![],
                counters.requests.load(std::sync::atomic::Ordering::Relaxed),
            );
        }),
    );
    server.run(stop, move |get: &Get<'_>| match get.path {
        "/healthz" => Reply::json(
            200,
            json!({"status": "ok", "agent": shared.id, "link": shared.link().state.name(), "store_ok": shared.store_ok()})
                .to_string(),
        ),
        "/metrics" => Reply::Body {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: registry.prometheus().into_bytes(),
        },
        _ => Reply::text(404, "not found: try /healthz or /metrics\n".into()),
    })?;
    Ok(())
}
