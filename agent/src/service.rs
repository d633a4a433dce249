//! The agent's Majordomo service, `org.plantd.Agent.<id>`, for remote status
//! and control through the hub. Request: a command frame, then arguments.
//!
//! | command | arguments | reply |
//! | --- | --- | --- |
//! | `status` | | the status JSON |
//! | `read` | channel | `{"channel","value","unit"}` read now |
//! | `write` | channel, value | `{"channel","value","written":true}` (outputs only) |
//! | `config` | | `{"config": "<TOML>"}`, secrets redacted |
//! | `state-get` | key | `{"key","value"}` from the local state |
//! | `state-set` | key, value | `{"key","value","status":"set"}`; synced to the hub later |
//!
//! Errors: `{"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use boards::{ChannelConfig, Value};
use serde_json::{json, Value as Json};
use transport::{Signal, Worker, WorkerOptions};

use crate::sampler::SharedDriver;
use crate::state::LocalState;
use crate::status::Shared;

pub struct Channels {
    pub by_name: BTreeMap<String, (ChannelConfig, SharedDriver)>,
}

pub fn service_name(id: &str) -> String {
    format!("org.plantd.Agent.{id}")
}

pub fn handle(shared: &Shared, channels: &Channels, state: &LocalState, body: &[zmq::Message]) -> Json {
    let text = |i: usize| body.get(i).map(|f| String::from_utf8_lossy(f).into_owned());
    let error = |message: String| json!({"error": message});
    let command = text(0).unwrap_or_default();
    match command.as_str() {
        "status" => shared.to_json(),
        "config" => json!({"config": shared.config_toml}),
        "read" | "write" => {
            let Some(name) = text(1) else { return error(format!("{command} needs a channel name")) };
            let Some((config, driver)) = channels.by_name.get(&name) else {
                let known: Vec<&String> = channels.by_name.keys().collect();
                return error(format!("no channel '{name}' (channels: {known:?})"));
            };
            let mut driver = driver.lock().unwrap_or_else(|e| e.into_inner());
            if command == "read" {
                return match driver.read(shared.clock.elapsed()) {
                    Ok(v) => json!({"channel": name, "value": v.to_json(), "unit": config.unit()}),
                    Err(e) => error(format!("channel {name}: {e}")),
                };
            }
            let Some(raw) = text(2) else { return error("write needs a channel and a value".into()) };
            if !driver.writable() {
                return error(format!("channel {name} is an input; only outputs can be written"));
            }
            let value = Value::parse(&raw);
            match driver.write(&value) {
                Ok(()) => {
                    log::info!("channel {name} set to {raw} over MDP");
                    json!({"channel": name, "value": value.to_json(), "written": true})
                }
                Err(e) => error(format!("channel {name}: {e}")),
            }
        }
        "state-get" => match text(1) {
            Some(key) => match state.get(&key) {
                Ok(value) => json!({"key": key, "value": value}),
                Err(e) => error(format!("local state: {e}")),
            },
            None => error("state-get needs a key".into()),
        },
        "state-set" => match (text(1), text(2)) {
            (Some(key), Some(raw)) => {
                let value = serde_json::from_str(&raw).unwrap_or(Json::String(raw));
                match state.set(&key, &value) {
                    Ok(()) => json!({"key": key, "value": value, "status": "set"}),
                    Err(e) => error(format!("local state: {e}")),
                }
            }
            _ => error("state-set needs a key and a value".into()),
        },
        other => error(format!(
            "unknown command '{other}': use status, read, write, config, state-get or state-set"
        )),
    }
}

/// Serves the agent's service through the hub until shutdown (on its own thread).
pub fn serve(
    ctx: &zmq::Context,
    broker: &str,
    shared: Arc<Shared>,
    channels: Arc<Channels>,
    state: LocalState,
    signal: &Signal,
) -> Result<(), transport::WorkerError> {
    let worker = Worker::new(ctx, broker, &service_name(&shared.id), WorkerOptions::default());
    worker.run(signal, move |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
        let reply = handle(&shared, &channels, &state, &body);
        vec![zmq::Message::from(reply.to_string().as_bytes())]
    })
}
