//! The HTTP endpoint's configuration (`[http]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Checks what serde cannot. `insecure`: the operator chose a hub open to
    /// its network, so an exposed endpoint without a token is allowed.
    pub fn validate(&self, insecure: bool) -> Result<(), crate::Invalid> {
        let invalid = |field: &'static str, problem: &str| Err((field, problem.to_string()));
        let h = self;
        let exposed = h.listen != "off" && !transport::is_local(&format!("tcp://{}", h.listen));
        if exposed && h.token_file.is_none() && !insecure {
            return invalid(
                "http.token_file",
                "the HTTP endpoint listens beyond loopback, and its metrics and web view name every \
                 identity and agent: set token_file (a file with a long random token, e.g. \
                 `openssl rand -hex 32 > /etc/plantd/http.token`), or listen on 127.0.0.1",
            );
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
            return invalid("http.allowed_hosts", &e.to_string());
        }
        if h.max_header_bytes < 1024 {
            return invalid("http.max_header_bytes", "must be at least 1024");
        }
        Ok(())
    }

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
