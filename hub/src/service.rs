//! The hub's own service, `org.plantd.Hub`: what an operator asks the hub
//! about itself through the broker (so with the same keys and roles as any
//! call). Request: a command frame. Reply: one frame of JSON.
//!
//! | command | reply |
//! | --- | --- |
//! | `agents` | every agent ingest has heard from: link, last seen, backlog and lag as reported, epoch, accepted, duplicates |
//! | `bridge` | the NATS bridge: server, cursor, backlog, acknowledgements, retries, last error |
//!
//! Only the hub provides it (a reserved name); `viewer` and `operator` may call it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use crate::broker::BROKER_INPROC;
use crate::ingest::agents::Agents;

pub const SERVICE: &str = "org.plantd.Hub";

/// The bridge's status as JSON, when a bridge is configured.
pub type BridgeReport = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct HubService {
    pub agents: Option<Arc<Agents>>,
    pub bridge: Option<BridgeReport>,
    pub worker: WorkerOptions,
    /// With security the broker puts the caller's identity first.
    pub secure: bool,
}

impl HubService {
    pub fn serve(&self, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), WorkerError> {
        let worker = Worker::new(ctx, BROKER_INPROC, SERVICE, self.worker.clone());
        worker.run(signal, |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
            let command = body.get(usize::from(self.secure)).map(|f| String::from_utf8_lossy(f).into_owned());
            let reply = match command.as_deref() {
                Some("agents") => match &self.agents {
                    Some(agents) => agents.to_json(Instant::now(), crate::ingest::wall_ns()),
                    None => json!({"error": "this hub runs without ingest: it hears from no agent"}),
                },
                Some("bridge") => match &self.bridge {
                    Some(report) => report(),
                    None => json!({"error": "this hub has no [bridge.nats] in its config"}),
                },
                other => json!({"error": format!("unknown command {other:?}: use agents or bridge")}),
            };
            vec![zmq::Message::from(reply.to_string().as_bytes())]
        })
    }
}
