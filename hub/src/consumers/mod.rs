//! Durable consumers: `org.plantd.Consumer` (and `.Admin`), the hub's own
//! MDP services over ingest's journal (the protocol: `proto::consumer`).
//!
//! Through the broker, so CURVE, the allow-list and roles apply. With
//! security a caller may read (fetch, acknowledge, show) a consumer when it
//! may subscribe, on ingest's bus, to each of the consumer's prefixes, and
//! the consumer is its own (it made it, or the config names it as its
//! `identity`) or has no owner. On `org.plantd.Consumer` it may make
//! consumers of its own (`drop-oldest` only, within `[consumers]`' bounds)
//! and remove or reset them; `org.plantd.Consumer.Admin` (operators) may do
//! anything, `block` consumers included. Without security anyone may do
//! anything, as everywhere else on such a hub.

pub mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::consumer::{self, Fetched, Policy, Request, Spec as Asked};
use serde_json::{json, Value};
use transport::worker::PoolOptions;
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use self::config::ConsumersConfig;
use crate::broker::BROKER_INPROC;
use crate::journal::consumers::{Origin, Spec};
use crate::journal::{ConsumerError, Journal};
use crate::security::{Kind, Security};

/// Bytes a fetch answer leaves for the broker's envelope and framing.
const ENVELOPE_ROOM: usize = 4096;

pub struct ConsumerService {
    pub journal: Arc<Journal>,
    pub config: ConsumersConfig,
    pub security: Option<Arc<Security>>,
    /// Ingest's bus: consuming a topic needs the right to subscribe to it there.
    pub bus: String,
    /// The broker's largest message: no answer may be longer.
    pub max_message_bytes: usize,
    pub worker: WorkerOptions,
    /// An acknowledgement since the sweeper last flushed the store.
    pub acked: std::sync::atomic::AtomicBool,
}

/// Which of the two services a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    Consumer,
    Admin,
}

impl ConsumerService {
    /// Serves `org.plantd.Consumer` until `signal`, on a pool of threads
    /// (fetches wait for their first sample without holding up others).
    pub fn serve(self: &Arc<Self>, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), WorkerError> {
        self.serve_door(ctx, signal, Door::Consumer, self.config.threads)
    }

    /// Serves `org.plantd.Consumer.Admin` until `signal`.
    pub fn serve_admin(
        self: &Arc<Self>,
        ctx: &zmq::Context,
        signal: &ShutdownWatch,
    ) -> Result<(), WorkerError> {
        self.serve_door(ctx, signal, Door::Admin, 2)
    }

    fn serve_door(
        self: &Arc<Self>,
        ctx: &zmq::Context,
        signal: &ShutdownWatch,
        door: Door,
        threads: usize,
    ) -> Result<(), WorkerError> {
        let (service, name) = match door {
            Door::Consumer => (consumer::SERVICE, "consumers"),
            Door::Admin => (consumer::ADMIN_SERVICE, "consumers-admin"),
        };
        let options = WorkerOptions { credit: threads as u32, ..self.worker.clone() };
        let worker = Worker::new(ctx, BROKER_INPROC, service, options);
        let pool = PoolOptions { threads, name: name.into(), ..PoolOptions::default() };
        let me = self.clone();
        worker.run_pool(signal, pool, move |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
            // With security the broker names the caller first.
            let secure = me.security.is_some();
            let caller =
                if secure { body.first().map(|f| String::from_utf8_lossy(f).into_owned()) } else { None };
            let frames = &body[usize::from(secure).min(body.len())..];
            let reply = match Request::parse(frames) {
                Ok(request) => me.handle(caller.as_deref(), door, request),
                Err(e) => vec![error(e.to_string())],
            };
            reply.into_iter().map(zmq::Message::from).collect()
        })
    }

    /// Every second until `signal`: flushes acknowledged cursors, reports
    /// consumers idle past their bound, and removes those whose policy says so.
    pub fn sweep(&self, signal: &ShutdownWatch) {
        while !signal.sleep(Duration::from_secs(1)) {
            if self.acked.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = self.journal.flush() {
                    log::error!("consumers: flushing their cursors: {e}");
                }
            }
            for (name, removed) in self.journal.sweep_inactive(Instant::now()) {
                let action = if removed { "removed" } else { "reported (its backlog holds the journal)" };
                log::warn!("consumer '{name}' has fetched and acknowledged nothing past its inactive_after: {action}");
            }
        }
    }

    /// Answers one request of `caller` (an identity, with security).
    fn handle(&self, caller: Option<&str>, door: Door, request: Request) -> Vec<Vec<u8>> {
        let result = match &request {
            Request::List => Ok(json!({"consumers": self.journal.list()})),
            Request::Create(asked) => self.create(caller, door, asked),
            Request::Fetch { name, after, max, wait_ms, ack } => {
                let fetched = self.may_read(caller, door, name).and_then(|()| {
                    if let Some(pos) = ack {
                        self.ack(name, *pos)?;
                    }
                    self.fetch(name, *after, *max, *wait_ms)
                });
                return fetched.unwrap_or_else(|e| vec![error(e)]);
            }
            Request::Ack { name, pos } => self
                .may_read(caller, door, name)
                .and_then(|()| self.ack(name, *pos))
                .map(|cursor| json!({"name": name, "cursor": cursor})),
            Request::Show { name } => self.may_read(caller, door, name).and_then(|()| {
                self.journal.show(name).ok_or_else(|| ConsumerError::Unknown(name.clone()).to_string())
            }),
            Request::Delete { name } => self.may_manage(caller, door, name).and_then(|()| {
                self.journal.delete(name).map_err(|e| e.to_string())?;
                let _ = self.journal.flush();
                Ok(json!({"name": name, "deleted": true}))
            }),
            Request::Reset { name, to } => self
                .may_manage(caller, door, name)
                .and_then(|()| self.journal.reset(name, *to).map_err(|e| e.to_string())),
        };
        vec![result.unwrap_or_else(|e| json!({"error": e})).to_string().into_bytes()]
    }

    fn create(&self, caller: Option<&str>, door: Door, asked: &Asked) -> Result<Value, String> {
        config::check_name(&asked.name)?;
        let c = &self.config;
        let policy = asked.policy.unwrap_or(match door {
            Door::Admin => Policy::Block,
            Door::Consumer => Policy::DropOldest,
        });
        if door == Door::Consumer && policy == Policy::Block {
            return Err(format!(
                "a consumer that may hold the journal back (block) is made on {} (operators), or declared in \
                 the hub's config ([[consumer]]); ask for drop-oldest",
                consumer::ADMIN_SERVICE
            ));
        }
        let spec = Spec {
            name: asked.name.clone(),
            prefixes: asked.prefixes.clone(),
            policy,
            max_records: asked.max_records.unwrap_or(c.max_records).min(c.max_records).max(1),
            max_bytes: asked.max_bytes.unwrap_or(c.max_bytes).min(c.max_bytes).max(1),
            owner: caller.map(str::to_string),
            origin: Origin::Made,
            inactive_after_ms: Some(c.inactive_after_s.saturating_mul(1000)),
            remove_when_inactive: true,
        };
        self.may_subscribe(caller, &spec)?;
        self.journal.create(spec, c.max_consumers, c.max_consumers_per_identity).map_err(|e| e.to_string())
    }

    /// Whether `caller` may fetch, acknowledge and see consumer `name`.
    fn may_read(&self, caller: Option<&str>, door: Door, name: &str) -> Result<(), String> {
        let spec =
            self.journal.spec_of(name).ok_or_else(|| ConsumerError::Unknown(name.into()).to_string())?;
        if door == Door::Admin {
            return Ok(());
        }
        self.may_subscribe(caller, &spec)?;
        self.owns(caller, &spec, "read")
    }

    /// Whether `caller` may remove or reset consumer `name`.
    fn may_manage(&self, caller: Option<&str>, door: Door, name: &str) -> Result<(), String> {
        let spec =
            self.journal.spec_of(name).ok_or_else(|| ConsumerError::Unknown(name.into()).to_string())?;
        match (door, spec.origin) {
            (Door::Admin, _) => Ok(()),
            (Door::Consumer, Origin::Made) => self.owns(caller, &spec, "manage"),
            (Door::Consumer, _) => Err(format!(
                "'{name}' comes from the hub's config: change it there, or ask {}",
                consumer::ADMIN_SERVICE
            )),
        }
    }

    /// With security: a consumer with an owner is its owner's alone.
    fn owns(&self, caller: Option<&str>, spec: &Spec, what: &str) -> Result<(), String> {
        match (&self.security, caller, &spec.owner) {
            (Some(security), Some(caller), Some(owner)) if caller != owner => {
                security.denials.record(caller, Kind::Subscribe, || {
                    format!("{what} consumer '{}', which is {owner}'s", spec.name)
                });
                Err(format!("consumer '{}' is {owner}'s: {caller} may not {what} it", spec.name))
            }
            _ => Ok(()),
        }
    }

    /// With security: `caller` may subscribe, on ingest's bus, to every prefix `spec` reads.
    fn may_subscribe(&self, caller: Option<&str>, spec: &Spec) -> Result<(), String> {
        let Some(security) = &self.security else { return Ok(()) };
        let Some(caller) = caller else { return Err("no identity".into()) };
        let grants = security.grants(caller);
        let all = [String::new()];
        let prefixes = if spec.prefixes.is_empty() { &all[..] } else { &spec.prefixes[..] };
        match prefixes.iter().find(|p| !grants.may_subscribe(&self.bus, p.as_bytes())) {
            None => Ok(()),
            Some(p) => {
                security.denials.record(caller, Kind::Subscribe, || {
                    format!("consume '{p}' (consumer '{}') on bus {}", spec.name, self.bus)
                });
                Err(format!("{caller} may not subscribe to '{p}' on bus {}, so may not consume it", self.bus))
            }
        }
    }

    /// Moves `name`'s cursor to `pos`. Durable at the store's next flush
    /// (ingest flushes every batch, the sweeper every second): a crash before
    /// it means repeats, never loss.
    fn ack(&self, name: &str, pos: u64) -> Result<u64, String> {
        // A client is given durable positions only (see `Journal::fetch`):
        // one past them (kept from before a crash) must not skip what is there now.
        let pos = pos.min(self.journal.durable());
        let cursor = self.journal.acked_by(name, pos).map_err(|e| e.to_string())?;
        self.acked.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(cursor)
    }

    /// Up to `max` samples after `after` (or the cursor), waiting up to
    /// `wait_ms` for the first: a header frame, then one frame of JSON lines.
    fn fetch(&self, name: &str, after: u64, max: u32, wait_ms: u64) -> Result<Vec<Vec<u8>>, String> {
        let max = max.clamp(1, self.config.max_fetch) as usize;
        // Each line adds its position and framing to its topic and payload: a tenth is room enough.
        let budget = self.max_message_bytes.saturating_sub(ENVELOPE_ROOM).max(1024) / 10 * 9;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        // Looking past other topics is bounded too, so a fetch never reads the whole journal.
        let scan = max.saturating_mul(8).max(1024);
        let mut from = after;
        let mut lines = Vec::new();
        loop {
            let take = |pos, topic: &str, payload: &[u8]| {
                consumer::write_sample(&mut lines, pos, topic, payload);
                lines.push(b'\n');
            };
            let fetched =
                self.journal.fetch(name, from, (max, scan, budget), take).map_err(|e| e.to_string())?;
            if fetched.undecodable > 0 {
                log::error!(
                    "consumer '{name}': {} journal entries could not be read: passed over",
                    fetched.undecodable
                );
            }
            if fetched.count == 0 && Instant::now() < deadline {
                from = fetched.next;
                self.journal.wait_after(from, deadline);
                continue;
            }
            let backlog = self.journal.newest().saturating_sub(fetched.next);
            let header =
                Fetched { name: name.to_string(), count: fetched.count as u32, next: fetched.next, backlog };
            return Ok(vec![serde_json::to_vec(&header).expect("a header is JSON"), lines]);
        }
    }
}

fn error(message: impl std::fmt::Display) -> Vec<u8> {
    json!({"error": message.to_string()}).to_string().into_bytes()
}

/// Durable consumers' metrics (the journal's consumers, the hub's own among them).
pub fn collect(journal: &Journal, config: &ConsumersConfig, out: &mut crate::metrics::Families) {
    journal.collect(out);
    out.gauge("consumers_max", "Durable consumers at once, at most.", vec![], config.max_consumers as u64);
    out.gauge(
        "consumers_max_per_identity",
        "Consumers one identity may make, at most.",
        vec![],
        config.max_consumers_per_identity as u64,
    );
}
