//! The agent's Majordomo service, `org.plantd.Agent.<id>`, for remote status
//! and control through the hub. Request: a command frame, then arguments.
//!
//! | command | arguments | reply |
//! | --- | --- | --- |
//! | `status` | | the status JSON |
//! | `read` | channel | `{"channel","value","unit"}` read now |
//! | `write` | channel, value | `{"channel","value","written":true}` (outputs only) |
//! | `ack` | channel | `{"channel","state","acknowledged":true,"changed"}`: acknowledges its alarm |
//! | `config` | | `{"config": "<TOML>"}`, secrets redacted |
//! | `state-get` | key | `{"key","value"}` from the local state |
//! | `state-set` | key, value | `{"key","value","status":"set"}`; synced to the hub later |
//!
//! Errors: `{"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use boards::{ChannelConfig, Value};
use serde_json::{json, Value as Json};
use transport::{Endpoint, PoolOptions, ShutdownWatch, Worker, WorkerOptions};

use crate::sampler::SharedDriver;
use crate::state::LocalState;
use crate::status::Shared;

/// The channels an agent samples: each one's config and driver.
pub struct Channels {
    pub by_name: BTreeMap<String, (ChannelConfig, SharedDriver)>,
    /// The Modbus links the channels' drivers read through.
    pub links: boards::modbus::Links,
}

pub fn service_name(id: &str) -> String {
    format!("org.plantd.Agent.{id}")
}

/// The service's commands (the first request frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    Config,
    Read,
    Write,
    Ack,
    StateGet,
    StateSet,
}

impl Command {
    pub const ALL: [Command; 7] = [
        Command::Status,
        Command::Config,
        Command::Read,
        Command::Write,
        Command::Ack,
        Command::StateGet,
        Command::StateSet,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Config => "config",
            Command::Read => "read",
            Command::Write => "write",
            Command::Ack => "ack",
            Command::StateGet => "state-get",
            Command::StateSet => "state-set",
        }
    }

    pub fn parse(word: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.word() == word)
    }
}

pub fn handle(shared: &Shared, state: &LocalState, body: &[zmq::Message]) -> Json {
    let text = |i: usize| body.get(i).map(|f| String::from_utf8_lossy(f).into_owned());
    let error = |message: String| json!({"error": message});
    let word = text(0).unwrap_or_default();
    let Some(command) = Command::parse(&word) else {
        return error(format!(
            "unknown command '{word}': use status, read, write, ack, config, state-get or state-set"
        ));
    };
    match command {
        Command::Status => shared.to_json(),
        Command::Config => json!({"config": shared.config_toml()}),
        Command::Ack => {
            let Some(name) = text(1) else { return error("ack needs a channel name".into()) };
            match shared.alarms.acknowledge(&name, shared.clock.mono_ns()) {
                Ok(event) => {
                    let active = shared.alarms.active().into_iter().find(|a| a.channel == name);
                    let state = active.map_or("normal", |a| a.state.name());
                    json!({"channel": name, "state": state, "acknowledged": true, "changed": event.is_some()})
                }
                Err(e) => error(e.to_string()),
            }
        }
        Command::Read | Command::Write => {
            let Some(name) = text(1) else { return error(format!("{word} needs a channel name")) };
            let channels = shared.channel_set();
            let Some((config, driver)) = channels.by_name.get(&name) else {
                let known: Vec<&String> = channels.by_name.keys().collect();
                return error(format!("no channel '{name}' (channels: {known:?})"));
            };
            let mut driver = driver.lock().unwrap_or_else(|e| e.into_inner());
            if command == Command::Read {
                return match driver.read(shared.clock.elapsed()) {
                    Ok(v) => json!({"channel": name, "value": v.to_json(), "unit": config.unit()}),
                    Err(e) => error(format!("channel {name}: {e}")),
                };
            }
            let Some(raw) = text(2) else { return error("write needs a channel and a value".into()) };
            if !driver.writable() {
                return error(format!("channel {name} is an input; only outputs can be written"));
            }
            let value = parse_value(&raw);
            match driver.write(&value) {
                Ok(()) => {
                    log::info!("channel {name} set to {raw} over MDP");
                    json!({"channel": name, "value": value.to_json(), "written": true})
                }
                Err(e) => error(format!("channel {name}: {e}")),
            }
        }
        Command::StateGet => match text(1) {
            Some(key) => match state.get(&key) {
                Ok(value) => json!({"key": key, "value": value}),
                Err(e) => error(format!("local state: {e}")),
            },
            None => error("state-get needs a key".into()),
        },
        Command::StateSet => match (text(1), text(2)) {
            (Some(key), Some(raw)) => {
                let value = serde_json::from_str(&raw).unwrap_or(Json::String(raw));
                match state.set(&key, &value) {
                    Ok(()) => json!({"key": key, "value": value, "status": "set"}),
                    Err(e) => error(format!("local state: {e}")),
                }
            }
            _ => error("state-set needs a key and a value".into()),
        },
    }
}

/// A value as a person writes it in a `write` command: `true`/`on`,
/// `false`/`off`, an integer, a number, else text.
pub fn parse_value(text: &str) -> Value {
    match text {
        "true" | "on" => Value::Bool(true),
        "false" | "off" => Value::Bool(false),
        _ => text
            .parse::<i64>()
            .map(Value::Integer)
            .or_else(|_| text.parse::<f64>().map(Value::Number))
            .unwrap_or_else(|_| Value::Text(text.to_string())),
    }
}

/// Requests the service holds at once, each on its own handler thread: a
/// slow driver read (a DS18B20 blocks ~750 ms) no longer holds up `status`
/// or a read of another channel. Reads of one channel still take turns, on
/// its driver's lock.
const SERVICE_CREDIT: u32 = 4;

/// Serves the agent's service through the hub until shutdown (on its own
/// thread, with [`SERVICE_CREDIT`] handler threads; a hub without the credit
/// extension is served one request at a time).
pub fn serve(
    ctx: &zmq::Context,
    broker: &Endpoint,
    shared: Arc<Shared>,
    state: LocalState,
    signal: &ShutdownWatch,
) -> Result<(), transport::WorkerError> {
    let options = WorkerOptions { credit: SERVICE_CREDIT, ..WorkerOptions::default() };
    let worker = Worker::new(ctx, broker, &service_name(&shared.id), options);
    shared.set_service(worker.stats());
    // Handlers format JSON and call drivers: 256 KiB of stack each is ample,
    // and only the pages they touch count against a small Pi's memory.
    let pool = PoolOptions {
        threads: SERVICE_CREDIT as usize,
        stack_size: 256 << 10,
        name: "agent-service".into(),
        ..PoolOptions::default()
    };
    worker.run_pool(signal, pool, move |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
        let reply = handle(&shared, &state, &body);
        vec![zmq::Message::from(reply.to_string().as_bytes())]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_from_text() {
        assert_eq!(parse_value("on"), Value::Bool(true));
        assert_eq!(parse_value("42"), Value::Integer(42));
        assert_eq!(parse_value("4.5"), Value::Number(4.5));
        assert_eq!(parse_value("open"), Value::Text("open".into()));
    }
}
