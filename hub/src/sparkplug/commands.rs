//! DCMD writes: one worker makes them through the agents' services, in the
//! order they came, behind a bounded queue.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use transport::{Client, ClientOptions, Endpoint};

use super::Status;
use crate::broker::BROKER_INPROC;

/// DCMD writes waiting for the agents, at most; more are refused and counted.
pub(super) const COMMAND_QUEUE: usize = 64;

/// A DCMD write for an agent's service.
pub struct Write {
    pub(super) service: String,
    pub(super) channel: String,
    pub(super) value: String,
}

/// Makes DCMD writes one at a time, in the order they came, until the node stops.
pub(super) fn write_commands(ctx: &zmq::Context, status: &Status, writes: std::sync::mpsc::Receiver<Write>) {
    let options = ClientOptions { timeout: Duration::from_secs(5), retries: 0, ..ClientOptions::default() };
    let mut client = Client::new(ctx, Endpoint::plain(BROKER_INPROC), options);
    for Write { service, channel, value } in writes {
        let frames: [&[u8]; 3] = [b"write", channel.as_bytes(), value.as_bytes()];
        match client.request(&service, &frames) {
            Ok(reply) if reply.first().is_some_and(|f| f.windows(9).any(|w| w == b"\"written\"")) => {
                log::info!("sparkplug: DCMD wrote {value} to {service} {channel}");
                status.commands_written.fetch_add(1, Relaxed);
            }
            other => {
                let why = match other {
                    Ok(reply) => {
                        reply.first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default()
                    }
                    Err(e) => {
                        // A fresh connection for the next write: no late reply is taken for its answer.
                        client = Client::new(ctx, Endpoint::plain(BROKER_INPROC), options);
                        e.to_string()
                    }
                };
                status.commands_failed.fetch_add(1, Relaxed);
                log::warn!("sparkplug: DCMD to {service} {channel} failed: {why}");
            }
        }
    }
}
