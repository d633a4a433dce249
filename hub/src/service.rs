//! The hub's own service, `org.plantd.Hub`: what an operator asks the hub
//! about itself through the broker (so with the same keys and roles as any
//! call). Request: a command frame. Reply: one frame of JSON.
//!
//! | command | reply |
//! | --- | --- |
//! | `agents` | every agent ingest has heard from: link, last seen, backlog and lag as reported, epoch, accepted, duplicates |
//! | `stores` | the hub's stores: each one writing or why not, damage found at start, times opened again |
//! | `bridge` | the NATS bridge: server, cursor, backlog, acknowledgements, retries, last error |
//! | `pipeline` | each pipeline: its source and, per stage, in, out, failed, retried, dead-lettered, queue depth |
//! | `sparkplug` | the Sparkplug B edge node: connected, bdSeq, seq, devices born, backlog, commands |
//!
//! The pipelines' dead letters (`dlq list`, `dlq show ID`, `dlq replay
//! ID|--all`, `dlq purge [SECONDS]`) are answered on [`DLQ_SERVICE`] instead:
//! replaying and purging change data, so only `operator` (which may call any
//! service) reaches them, not `viewer`.
//!
//! Only the hub provides it (a reserved name); `viewer` and `operator` may call it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use crate::broker::BROKER_INPROC;
use crate::ingest::agents::Agents;

use proto::hub::{Command, DlqCommand};
/// The names live in `proto`, so the broker can reserve them without this module.
pub use proto::hub::{DLQ_SERVICE, SERVICE};

/// The bridge's status as JSON, when a bridge is configured.
pub type BridgeReport = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Each pipeline's status, when pipelines are configured.
pub type PipelineReport = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The dead-letter service: `dlq …` commands only ([`DlqCommand`]).
pub struct DlqService {
    pub dlq: Arc<crate::pipeline::dlq::Dlq>,
    pub worker: WorkerOptions,
    pub secure: bool,
}

impl DlqService {
    pub fn serve(&self, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), WorkerError> {
        answer(ctx, signal, DLQ_SERVICE, &self.worker, self.secure, |command| {
            match DlqCommand::parse(command.unwrap_or_default()) {
                Ok(command) => self.dlq.command(command, crate::clock::wall_ns()),
                Err(usage) => json!({"error": usage}),
            }
        })
    }
}

/// Serves `service`: each request is a command frame (after the caller's
/// identity, with security), each reply `reply(command)` as one frame of JSON.
fn answer(
    ctx: &zmq::Context,
    signal: &ShutdownWatch,
    service: &str,
    options: &WorkerOptions,
    secure: bool,
    reply: impl Fn(Option<&str>) -> serde_json::Value,
) -> Result<(), WorkerError> {
    let worker = Worker::new(ctx, BROKER_INPROC, service, options.clone());
    worker.run(signal, |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
        let command = body.get(usize::from(secure)).map(|f| String::from_utf8_lossy(f).into_owned());
        vec![zmq::Message::from(reply(command.as_deref()).to_string().as_bytes())]
    })
}

pub struct HubService {
    pub agents: Option<Arc<Agents>>,
    pub storage: crate::storage::Storage,
    pub bridge: Option<BridgeReport>,
    pub pipelines: Option<PipelineReport>,
    pub sparkplug: Option<BridgeReport>,
    pub worker: WorkerOptions,
    /// With security the broker puts the caller's identity first.
    pub secure: bool,
}

impl HubService {
    pub fn serve(&self, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), WorkerError> {
        answer(ctx, signal, SERVICE, &self.worker, self.secure, |command| {
            match Command::parse(command.unwrap_or_default()) {
                Ok(Command::Agents) => match &self.agents {
                    Some(agents) => agents.to_json(Instant::now(), crate::clock::wall_ns()),
                    None => json!({"error": "this hub runs without ingest: it hears from no agent"}),
                },
                Ok(Command::Stores) => self.storage.report(),
                Ok(Command::Bridge) => match &self.bridge {
                    Some(report) => report(),
                    None => json!({"error": "this hub has no [bridge.nats] in its config"}),
                },
                Ok(Command::Pipeline) => match &self.pipelines {
                    Some(report) => report(),
                    None => json!({"error": "this hub has no [[pipeline]] in its config"}),
                },
                Ok(Command::Sparkplug) => match &self.sparkplug {
                    Some(report) => report(),
                    None => json!({"error": "this hub has no [sparkplug] in its config"}),
                },
                Err(unknown) => json!({"error": unknown}),
            }
        })
    }
}
