//! The ingest service (`org.plantd.Ingest`): agents send batches of durable
//! samples; the hub publishes each new one on the metric bus (same topic and
//! JSON as live telemetry, plus `"historical": true` for late ones) and
//! acknowledges, and the agent retires them.
//!
//! Order per batch: drop samples at or below the (agent, epoch) watermark,
//! publish the rest in order, persist the watermarks (flushed), acknowledge.
//! So a resent batch is never published twice, and an acknowledged sample
//! was published. The one gap: a hub killed between publishing and the flush
//! publishes that batch again when the agent resends it; every sample
//! carries (agent, epoch, seq) so consumers can drop the repeat.
//!
//! With `require_subscriber` (the default) a batch is accepted only when a
//! real subscriber on the metric bus covers some of its samples' topics (the
//! bus's own subscription for a capture or a recording does not count):
//! while nobody listens (a hub just restarted, its consumers not yet back)
//! data stays in the agent's outbox instead of vanishing from a PUB socket.
//! A batch is not held back for a channel nobody subscribes to while others
//! are watched: the outbox is one ordered queue, and holding the whole agent
//! back for one unwatched channel would fill it.
//!
//! Alarm events come in batches of their own, keyed and deduplicated like
//! samples (an agent numbers them under an epoch of their own), journaled
//! like them, and published on the event bus (`org.plantd.Event.alarm.`),
//! behind the same gate: a real subscriber there, or a journal consumer.
//!
//! Batches of different agents are handled at once, by as many workers as
//! configured; one agent's batches one at a time (a lock per agent, from a
//! fixed set), so two workers never race on one agent's watermarks.
//!
//! An agent may have up to `max_in_flight` batches on the way (every reply
//! says so, in an [`Echo`]); each one after the first names the batch it
//! follows ([`proto::ingest::Order`]), and is taken only once that one is
//! accepted. Two workers can get an agent's consecutive batches at once:
//! the second waits (a moment, on the agent's lock) for the first, and
//! answers Retry if it was not accepted or never comes.

pub mod agents;
pub mod config;
pub mod store;
mod watermarks;

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use proto::bus::Framing;
use proto::ingest::{Batch, Echo, Order, Reply, Report};
use transport::bus::publish_on;
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use self::agents::{Agents, Heard};
use self::config::IngestConfig;
use self::store::IngestStore;
use self::watermarks::WatermarkError;
use crate::broker::BROKER_INPROC;
use crate::bus::subscriptions::Subscribers;
use crate::clock::wall_ns;
use crate::journal::{Entry, Export, ExportConfig, Journal};
use crate::security::{Kind, Security};

/// Locks for agents' batches: an agent hashes to one. Fixed, so a stream of
/// made-up agent ids cannot grow it.
const AGENT_LOCKS: usize = 64;

/// How long a batch waits for the one it follows. That one reached a worker
/// first (an agent's requests come in order on one connection, and the
/// broker hands them out in order), so this is a worker's time for a batch.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A sample's JSON is about this long (260 bytes with a typical agent id and
/// channel): room for it up front, so writing it does not reallocate.
const JSON_BYTES: usize = 320;

/// An agent reports at least every 10 s (`proto::ingest`): after three
/// missed reports it shows as silent.
const SILENT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Ingest counters, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub batches: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    /// Batches answered "retry": no subscriber, or a storage failure.
    pub retries: AtomicU64,
    /// Batches refused: an identity sending for another agent, or a new
    /// agent past `max_agents`.
    pub refused: AtomicU64,
    /// Agents with watermarks (a gauge).
    pub agents: AtomicU64,
    /// Why batches cannot be stored now (the watermark store fails), while it lasts.
    pub failing: Mutex<Option<String>>,
    /// Batches answered "retry" because the export backlog for NATS was full.
    pub export_full: AtomicU64,
    /// Batches answered "retry" because the batch they follow was not accepted (in time).
    pub out_of_order: AtomicU64,
    /// Batches sent while the one before them was in flight (they name it).
    pub pipelined: AtomicU64,
}

impl IngestCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 9] {
        [
            ("batches", self.batches.load(Relaxed)),
            ("samples_accepted", self.accepted.load(Relaxed)),
            ("samples_duplicate", self.duplicates.load(Relaxed)),
            ("batches_malformed", self.malformed.load(Relaxed)),
            ("batches_retried", self.retries.load(Relaxed)),
            ("batches_refused", self.refused.load(Relaxed)),
            ("batches_export_full", self.export_full.load(Relaxed)),
            ("batches_out_of_order", self.out_of_order.load(Relaxed)),
            ("batches_pipelined", self.pipelined.load(Relaxed)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest store: {0}")]
    Open(#[from] stores::OpenError),
    #[error("ingest worker: {0}")]
    Worker(#[from] WorkerError),
    #[error("ingest worker: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A bus ingest publishes on: its in-process frontend, and its real
/// subscribers (the gate).
#[derive(Clone, Default)]
pub struct Outlet {
    pub frontend: String,
    pub listeners: Subscribers,
}

#[derive(Clone)]
pub struct IngestService {
    store: Arc<IngestStore>,
    counters: Arc<IngestCounters>,
    config: IngestConfig,
    /// Where samples go (the metric bus), and alarm events (the event bus).
    samples: Outlet,
    events: Outlet,
    worker: WorkerOptions,
    locks: Arc<Vec<AgentLock>>,
    /// With security, requests start with the caller's identity (the broker
    /// adds it), and an agent may send only its own batches.
    security: Option<Arc<Security>>,
    agents: Arc<Agents>,
    /// Every accepted sample also goes here, durably, for those who must have it.
    export: Export,
    /// The bus publishers all workers share (see `connect_publishers`): samples', events'.
    publishers: Arc<Mutex<Option<[zmq::Socket; 2]>>>,
}

impl IngestService {
    /// Opens the watermark store under `data_dir/ingest`; publishes samples
    /// through `samples` (the metric bus) and alarm events through `events`.
    pub fn open(
        data_dir: &Path,
        config: &IngestConfig,
        (samples, events): (Outlet, Outlet),
        worker: WorkerOptions,
        security: Option<Arc<Security>>,
        export: ExportConfig,
    ) -> Result<IngestService, IngestError> {
        let path = data_dir.join("ingest");
        let store = IngestStore::open(&path, export.consumers)?;
        store.journal.keep_in_memory(config.journal_memory_bytes);
        let export = Export { journal: store.journal.clone(), prefixes: export.prefixes };
        let counters = IngestCounters::default();
        counters.agents.store(store.watermarks.agents() as u64, Relaxed);
        Ok(IngestService {
            store: Arc::new(store),
            counters: Arc::new(counters),
            config: config.clone(),
            samples,
            events,
            worker,
            locks: Arc::new((0..AGENT_LOCKS).map(|_| AgentLock::default()).collect()),
            security,
            agents: Arc::new(Agents::new(config.max_agents, SILENT_AFTER)),
            export,
            publishers: Arc::default(),
        })
    }

    /// The store (watermarks and journal), for its healing and its health.
    pub fn store(&self) -> Arc<IngestStore> {
        self.store.clone()
    }

    /// The journal and the hub's own consumers' prefixes.
    pub fn export(&self) -> Export {
        self.export.clone()
    }

    /// The agents heard from, for `hub agents`, the web view and metrics.
    pub fn agents(&self) -> Arc<Agents> {
        self.agents.clone()
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    /// One worker of `service` ([`proto::ingest::SERVICE`] or its ordered
    /// twin): serves batches until shutdown. Run several for several agents at once.
    pub fn serve(
        &self,
        ctx: &zmq::Context,
        signal: &ShutdownWatch,
        service: &str,
    ) -> Result<(), IngestError> {
        self.connect_publishers(ctx)?;
        let worker = Worker::new(ctx, BROKER_INPROC, service, self.worker.clone());
        worker.run(signal, |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
            let frame = |i: usize| body.get(i).map(|f| &f[..]);
            // [caller (with security)], batch, [report (may be empty), [order]]
            let first = usize::from(self.security.is_some());
            let caller = if first == 1 { frame(0).unwrap_or_default() } else { &[] };
            let (batch, report) = (frame(first).unwrap_or_default(), frame(first + 1));
            let caller = String::from_utf8_lossy(caller);
            let report = report.and_then(|r| Report::decode(r).ok());
            let order = frame(first + 2).and_then(|o| Order::decode(o).ok());
            let reply = self.handle(
                &caller,
                batch,
                (report, order.and_then(|o| o.follows)),
                |topic| self.outlet(topic).listeners.covers(topic),
                |topic, json| {
                    if let Some(publishers) =
                        self.publishers.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
                    {
                        let publisher = &publishers[usize::from(is_event(topic))];
                        let _ = publish_on(publisher, Framing::TwoFrame, topic, json);
                    }
                },
            );
            // An identity whose role may not call the ordered service is told to send one at a time.
            let ordered = |s: &Arc<Security>| {
                s.grants(&caller).may_call(proto::ingest::ORDERED_SERVICE.as_bytes(), None)
            };
            let window = match &self.security {
                Some(security) if !ordered(security) => 1,
                _ => self.config.max_in_flight,
            };
            let echo = Echo { id: order.map_or(0, |o| o.id), window };
            vec![zmq::Message::from(reply.encode()), zmq::Message::from(echo.encode())]
        })?;
        Ok(())
    }

    /// One PUB socket per bus for every worker: the bus proxy reads its
    /// publishers fairly, not in order, so samples one agent sent in two
    /// batches that two workers handled would otherwise reach subscribers out of order.
    fn connect_publishers(&self, ctx: &zmq::Context) -> zmq::Result<()> {
        let mut shared = self.publishers.lock().unwrap_or_else(|e| e.into_inner());
        if shared.is_none() {
            let connect = |outlet: &Outlet| -> zmq::Result<zmq::Socket> {
                let publisher = ctx.socket(zmq::PUB)?;
                // In process, to the bus proxy: never drop an accepted sample here.
                publisher.set_sndhwm(0)?;
                publisher.connect(&outlet.frontend)?;
                Ok(publisher)
            };
            *shared = Some([connect(&self.samples)?, connect(&self.events)?]);
        }
        Ok(())
    }

    /// The bus a topic is published on.
    fn outlet(&self, topic: &[u8]) -> &Outlet {
        if is_event(topic) {
            &self.events
        } else {
            &self.samples
        }
    }

    /// Handles one batch from `caller` (an identity, or empty for the hub
    /// itself and with security off), with the agent's report and the
    /// (epoch, seq) ending the batch it follows. `heard(topic)` says whether
    /// a real subscriber covers a topic; `publish(topic, json)` sends on the bus.
    fn handle(
        &self,
        caller: &str,
        body: &[u8],
        (report, follows): (Option<Report>, Option<(u64, u64)>),
        heard: impl Fn(&[u8]) -> bool,
        mut publish: impl FnMut(&[u8], &[u8]),
    ) -> Reply {
        let c = &self.counters;
        c.batches.fetch_add(1, Relaxed);
        let batch = match Batch::decode(body) {
            Ok(batch) if !batch.agent.is_empty() && !batch.agent.contains('\0') => batch,
            Ok(_) => return self.malformed("agent id is empty or contains NUL".into()),
            Err(e) => return self.malformed(e.to_string()),
        };
        let agent = batch.agent.as_str();
        if !caller.is_empty() && agent != caller {
            c.refused.fetch_add(1, Relaxed);
            if let Some(security) = &self.security {
                security.denials.record(caller, Kind::Ingest, || {
                    format!("a batch for agent '{agent}' from identity '{caller}'")
                });
            }
            let reason =
                format!("identity '{caller}' may send batches only for agent '{caller}', not '{agent}'");
            return Reply::Refused { reason };
        }
        // Topics are per channel: check each channel once, not each sample.
        let mut channels: Vec<&str> = batch.samples.iter().map(|s| s.sample.channel.as_str()).collect();
        channels.sort_unstable();
        channels.dedup();
        let mut topics: Vec<String> =
            channels.iter().map(|ch| format!("{}{agent}.{ch}", proto::sample::TOPIC_PREFIX)).collect();
        let mut alarmed: Vec<&str> = batch.events.iter().map(|e| e.channel.as_str()).collect();
        alarmed.sort_unstable();
        alarmed.dedup();
        topics.extend(alarmed.iter().map(|ch| format!("{}{agent}.{ch}", proto::alarm::TOPIC_PREFIX)));
        let now = (std::time::Instant::now(), wall_ns());
        // The journal's consumers are listeners in their own right: what they take is heard.
        let e = &self.export;
        let exported = |t: &str| e.prefixes.iter().any(|p| t.starts_with(p)) || e.journal.covers(t);
        if self.config.require_subscriber
            && !topics.is_empty()
            && !topics.iter().any(|t| heard(t.as_bytes()) || exported(t))
        {
            self.agents.record(agent, Heard { report, ..Heard::default() }, now.0, now.1);
            c.retries.fetch_add(1, Relaxed);
            let bus = if is_event(topics[0].as_bytes()) { "event" } else { "metric" };
            return Reply::Retry {
                reason: format!("no subscriber for {} on the {bus} bus", topics[0]),
                after_ms: 1000,
            };
        }

        if self.store.is_broken() {
            self.agents.record(agent, Heard { report, ..Heard::default() }, now.0, now.1);
            return self.store_broken();
        }
        let mut turn = self.turn(agent);
        let mut marks = match self.store.watermarks.get(agent) {
            Ok(marks) => marks,
            Err(e) => return self.storage_failure(e),
        };
        if let Some((epoch, seq)) = follows {
            c.pipelined.fetch_add(1, Relaxed);
            // The batch it follows is in another worker's hand: wait for it
            // (releasing the lock), unless a batch of this lock ends unaccepted.
            let (deadline, unaccepted) = (std::time::Instant::now() + FOLLOW_WAIT, turn.unaccepted());
            while marks.of(epoch) < seq {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || turn.unaccepted() != unaccepted {
                    c.out_of_order.fetch_add(1, Relaxed);
                    let reason = format!(
                        "the batch this one follows (through epoch {epoch} seq {seq}) was not accepted: send from there again"
                    );
                    return Reply::Retry { reason, after_ms: 0 };
                }
                turn.wait(left);
                marks = match self.store.watermarks.get(agent) {
                    Ok(marks) => marks,
                    Err(e) => return self.storage_failure(e),
                };
            }
            // The one before may have raised the watermark and then failed to flush it.
            if self.store.is_broken() {
                return self.store_broken();
            }
        }
        if marks.0.is_empty() && c.agents.load(Relaxed) >= self.config.max_agents as u64 {
            c.refused.fetch_add(1, Relaxed);
            return Reply::Refused {
                reason: format!(
                    "the hub keeps watermarks for {} agents, its max_agents",
                    self.config.max_agents
                ),
            };
        }
        let new_agent = marks.0.is_empty();
        let before = marks.clone();
        let (mut accepted, mut duplicates) = (0u32, 0u32);
        let newest = batch.samples.iter().map(|s| s.sample.wall_ns).max();
        let epoch = batch.samples.last().map(|s| s.sample.epoch);
        // Samples come in epoch runs: look the watermark up once per run.
        let mut current: Option<(u64, u64)> = None;
        let epochs_kept = self.config.epochs_kept;
        let mut is_new = |epoch: u64, seq: u64| {
            let mark = match current {
                Some((e, mark)) if e == epoch => mark,
                _ => marks.of(epoch),
            };
            if seq <= mark {
                duplicates += 1;
                current = Some((epoch, mark));
                return false;
            }
            marks.raise(epoch, seq, epochs_kept);
            current = Some((epoch, seq));
            accepted += 1;
            true
        };
        let mut fresh = Vec::new();
        for sent in &batch.samples {
            let s = &sent.sample;
            if is_new(s.epoch, s.seq) {
                let mut payload = Vec::with_capacity(JSON_BYTES);
                s.write_json(agent, true, sent.historical, &mut payload);
                fresh.push(Entry {
                    topic: s.topic(agent),
                    payload,
                    agent: agent.to_string(),
                    epoch: s.epoch,
                    seq: s.seq,
                    historical: sent.historical,
                });
            }
        }
        for e in &batch.events {
            if is_new(e.epoch, e.seq) {
                fresh.push(Entry {
                    topic: e.topic(agent),
                    payload: e.to_json(agent).to_string().into_bytes(),
                    agent: agent.to_string(),
                    epoch: e.epoch,
                    seq: e.seq,
                    historical: false,
                });
            }
        }
        if let Err(full) = self.export.journal.make_room(fresh.len() as u64, Journal::size_of(&fresh)) {
            // Before anything is published: the agent keeps the batch, and sends it again.
            c.export_full.fetch_add(1, Relaxed);
            self.agents.record(agent, Heard { report, ..Heard::default() }, now.0, now.1);
            return Reply::Retry {
                reason: format!(
                    "the hub's journal is full for consumer '{}' ({} samples, {} bytes waiting): NATS unreachable, a \
                     pipeline stuck, or a consumer not reading? (hub consumers list, hub bridge status, hub pipeline status)",
                    full.consumer, full.records, full.bytes
                ),
                after_ms: 2000,
            };
        }
        // Stored first, published after: a batch refused for a storage failure
        // (the agent sends it again) never reaches the bus twice.
        if let Err(e) = self.export.journal.append(&fresh) {
            self.agents.record(agent, Heard { report, ..Heard::default() }, now.0, now.1);
            return self.storage_failure(WatermarkError::Storage(e));
        }
        if marks != before {
            let stored = self.store.watermarks.put(agent, &marks);
            if let Err(e) = stored.and_then(|_| self.store.flush().map_err(WatermarkError::from)) {
                self.agents.record(agent, Heard { report, ..Heard::default() }, now.0, now.1);
                return self.storage_failure(e);
            }
            if let Some(why) = c.failing.lock().unwrap_or_else(|e| e.into_inner()).take() {
                log::info!("ingest: storing watermarks works again (it failed: {why})");
            }
            if new_agent {
                c.agents.fetch_add(1, Relaxed);
            }
        }
        for entry in &fresh {
            publish(entry.topic.as_bytes(), &entry.payload);
        }
        c.accepted.fetch_add(accepted.into(), Relaxed);
        c.duplicates.fetch_add(duplicates.into(), Relaxed);
        let channels = channels.iter().map(|c| c.to_string()).collect();
        let heard = Heard { epoch, accepted, duplicates, newest_sample_wall_ns: newest, report, channels };
        self.agents.record(agent, heard, now.0, now.1);
        turn.accepted = true;
        Reply::Ack { accepted, duplicates }
    }

    /// `agent`'s turn: its lock held until the turn is dropped.
    fn turn(&self, agent: &str) -> Turn<'_> {
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        agent.hash(&mut hash);
        let lock = &self.locks[hash.finish() as usize % self.locks.len()];
        Turn { guard: Some(lock.turns.lock().unwrap_or_else(|e| e.into_inner())), lock, accepted: false }
    }

    fn malformed(&self, reason: String) -> Reply {
        self.counters.malformed.fetch_add(1, Relaxed);
        log::warn!("ingest: dropped a malformed batch: {reason}");
        Reply::Malformed { reason }
    }

    /// The answer while the store cannot write: the agent keeps the batch.
    fn store_broken(&self) -> Reply {
        self.counters.retries.fetch_add(1, Relaxed);
        Reply::Retry {
            reason:
                "the hub's ingest store failed to write (a full disk?): it takes batches again once it is \
                     opened again, within seconds of space returning"
                    .into(),
            after_ms: 1000,
        }
    }

    fn storage_failure(&self, e: WatermarkError) -> Reply {
        self.counters.retries.fetch_add(1, Relaxed);
        if let WatermarkError::Storage(e) = &e {
            self.store.failed(e);
        }
        log::error!("ingest: {e}");
        *self.counters.failing.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        Reply::Retry { reason: format!("hub storage error: {e}"), after_ms: 1000 }
    }
}

/// The lock of the agents that hash to it, and a wake-up for batches
/// waiting there for the batch they follow.
#[derive(Default)]
struct AgentLock {
    turns: Mutex<Turns>,
    ended: std::sync::Condvar,
}

/// What the batches of an [`AgentLock`] came to.
#[derive(Default)]
struct Turns {
    /// Batches that ended without being accepted: one waiting for such a
    /// batch answers Retry at once instead of waiting out its time.
    unaccepted: u64,
}

/// A batch's hold on its agent's lock. Dropping it wakes the batches
/// waiting there, and counts the batch if it was not accepted.
struct Turn<'a> {
    guard: Option<std::sync::MutexGuard<'a, Turns>>,
    lock: &'a AgentLock,
    accepted: bool,
}

impl Turn<'_> {
    fn unaccepted(&self) -> u64 {
        self.guard.as_ref().map_or(0, |g| g.unaccepted)
    }

    /// Lets go of the lock until another batch's turn ends, or `left` passes.
    fn wait(&mut self, left: std::time::Duration) {
        if let Some(guard) = self.guard.take() {
            let (guard, _) = self.lock.ended.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner());
            self.guard = Some(guard);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(guard) = &mut self.guard {
            if !self.accepted {
                guard.unaccepted += 1;
            }
        }
        self.lock.ended.notify_all();
    }
}

/// Whether a topic is an alarm event's (published on the event bus).
fn is_event(topic: &[u8]) -> bool {
    topic.starts_with(proto::alarm::TOPIC_PREFIX.as_bytes())
}

/// Ingest's metrics: totals, each agent's, and the bounds.
pub fn collect(
    config: &IngestConfig,
    counters: &IngestCounters,
    agents: &Agents,
    out: &mut crate::metrics::Families,
) {
    for (name, value) in counters.snapshot() {
        out.counter(&format!("ingest_{name}"), "Ingest's batches and samples.", vec![], value);
    }
    out.gauge("ingest_agents", "Agents with watermarks.", vec![], counters.agents.load(Relaxed));
    let failing = counters.failing.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    out.gauge("ingest_store_available", "1 while watermarks can be stored.", vec![], (!failing).into());
    out.gauge("ingest_max_agents", "Agents with watermarks, at most.", vec![], config.max_agents as u64);
    let help = "Batches of one agent taken in flight at once.";
    out.gauge("ingest_max_in_flight", help, vec![], config.max_in_flight.into());
    out.gauge("ingest_epochs_kept", "Boot epochs kept per agent.", vec![], config.epochs_kept as u64);
    agents.collect(std::time::Instant::now(), out);
}

#[cfg(test)]
mod tests;
