//! One module per subcommand. Each has its arguments (whose doc comments are
//! the `--help` text) and a `run` that returns the process exit code.

pub mod agents;
pub mod bridge;
pub mod call;
pub mod check;
pub mod consumers;
pub mod context;
pub mod dlq;
pub mod echo;
pub mod fleet;
pub mod keys;
pub mod loadgen;
pub mod pipeline;
pub mod publish;
pub mod serve;
pub mod sparkplug;
pub mod state;
pub mod tap;

use std::path::PathBuf;
use std::process::ExitCode;

/// The broker endpoint clients and workers use unless told otherwise.
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:9797";

pub use context::Connection;
pub use plumbing::CmdResult;

/// Asks the hub's own service (`org.plantd.Hub`) one `command`; `Ok(None)`
/// when the hub did not answer in time (the caller exits 3), an error when it
/// answered with one.
pub fn ask_hub(
    command: proto::hub::Command,
    connection: &Connection,
) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error>> {
    ask_service(hub::service::SERVICE, command.word(), connection)
}

/// [`ask_hub`], of another of the hub's own services.
pub fn ask_service(
    service: &str,
    command: &str,
    connection: &Connection,
) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error>> {
    let Some(value) = ask_json(service, &[command.as_bytes()], connection)? else { return Ok(None) };
    if let Some(error) = value["error"].as_str() {
        return Err(error.into());
    }
    Ok(Some(value))
}

/// Sends `frames` to `service` and returns its answer's first frame as
/// JSON, an `error` in it included; `None` (said on stderr) when the hub
/// did not answer.
pub fn ask_json(
    service: &str,
    frames: &[&[u8]],
    connection: &Connection,
) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error>> {
    use transport::{Client, ClientError, ClientOptions};
    let ctx = zmq::Context::new();
    let options = ClientOptions { timeout: connection.timeout(2500), retries: 1, ..Default::default() };
    let mut client = Client::new(&ctx, connection.broker_endpoint()?, options);
    let reply = match client.request(service, frames) {
        Ok(reply) => reply,
        Err(e @ ClientError::Timeout { .. }) => {
            no_reply(&e, connection);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let text = reply.first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
    // A broker's refusal is a status code, not JSON.
    if text == "403" {
        return Err(format!(
            "the hub refused: this identity may not call {service} (see `hub keys` and its roles)"
        )
        .into());
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the hub sent no JSON ({e}): {text}"))?;
    Ok(Some(value))
}

pub fn no_reply(e: &dyn std::fmt::Display, connection: &Connection) {
    eprintln!(
        "hub: {e}; used {} (is the hub running there, and does it know this key?)",
        connection.describe()
    );
}

/// Asks the hub for `command` and prints its answer: the JSON as sent with
/// `json`, else what `summary` makes of it. Exit 3 when the hub does not answer.
pub fn show_hub_answer(
    command: proto::hub::Command,
    connection: &Connection,
    json: bool,
    summary: impl Fn(&serde_json::Value) -> String,
) -> CmdResult {
    let Some(answer) = ask_hub(command, connection)? else {
        return Ok(ExitCode::from(3));
    };
    if json {
        print_json(&answer)?;
    } else {
        print!("{}", summary(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as JSON: indented for a person at a terminal, one line for a pipe.
pub fn print_json(value: &serde_json::Value) -> Result<(), serde_json::Error> {
    use std::io::IsTerminal;
    let pretty = std::io::stdout().is_terminal();
    println!("{}", if pretty { serde_json::to_string_pretty(value)? } else { value.to_string() });
    Ok(())
}

/// A hub consumer's backlog as `hub bridge status` and `hub sparkplug status` show it;
/// `none` when the hub keeps none.
pub fn backlog(b: &serde_json::Value, none: &str) -> String {
    match b {
        serde_json::Value::Null => none.to_string(),
        b => format!(
            "{} samples, {} bytes (bounds {} samples, {} bytes)",
            text(&b["records"]),
            text(&b["bytes"]),
            text(&b["max_records"]),
            text(&b["max_bytes"])
        ),
    }
}

/// A JSON value as a summary shows it: text bare, null as "-".
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
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
