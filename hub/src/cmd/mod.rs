//! One module per subcommand. Each has its arguments (whose doc comments are
//! the `--help` text) and a `run` that returns the process exit code.

pub mod agents;
pub mod call;
pub mod check;
pub mod echo;
pub mod keys;
pub mod publish;
pub mod serve;
pub mod state;
pub mod tap;

use std::path::PathBuf;

/// The broker endpoint clients and workers use unless told otherwise.
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:9797";

pub use plumbing::CmdResult;

/// Where a client command connects: `address`, as a CURVE client when
/// certificates are given (flags, else `PLANTD_CERT` and `PLANTD_SERVER_CERT`).
pub fn client_endpoint(
    address: &str,
    cert: Option<PathBuf>,
    server_cert: Option<PathBuf>,
) -> Result<transport::Endpoint, Box<dyn std::error::Error>> {
    let from_env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cert = cert.or_else(|| from_env("PLANTD_CERT"));
    let server_cert = server_cert.or_else(|| from_env("PLANTD_SERVER_CERT"));
    match (cert, server_cert) {
        (None, None) => Ok(transport::Endpoint::plain(address)),
        (Some(cert), Some(server)) => {
            let keys = transport::curve::read_client_keys(&cert, &server)?;
            Ok(transport::Endpoint::curve(address, keys))
        }
        _ => Err("a hub with security needs both --cert (this client's NAME.key_secret) and \
                  --server-cert (the hub's public .key), or PLANTD_CERT and PLANTD_SERVER_CERT"
            .into()),
    }
}

/// Which end of a bus a command talks to.
pub enum BusSide {
    /// Where publishers connect.
    Frontend,
    /// Where subscribers connect.
    Backend,
}

/// The endpoint from `--bus`, or the named bus (default `metric`) in the
/// config or the defaults. A bus bound on a wildcard (`tcp://*:N`) is reached
/// on loopback.
pub fn bus_endpoint(
    bus: Option<String>,
    name: Option<String>,
    config: Option<&PathBuf>,
    side: BusSide,
) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(endpoint) = bus {
        return Ok(endpoint);
    }
    let name = name.unwrap_or_else(|| "metric".into());
    let config = serve::effective_config(config, None, &[])?;
    let Some(found) = config.buses.iter().find(|b| b.name == name) else {
        let known: Vec<&str> = config.buses.iter().map(|b| b.name.as_str()).collect();
        return Err(
            format!("no bus named '{name}' (known: {}); or give --bus ENDPOINT", known.join(", ")).into()
        );
    };
    let endpoint = match side {
        BusSide::Frontend => &found.frontend,
        BusSide::Backend => &found.backend,
    };
    Ok(endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:"))
}
