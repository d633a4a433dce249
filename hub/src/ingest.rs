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
//! subscriber on the metric bus covers some of its samples' topics: while
//! nobody listens (a hub just restarted, its consumers not yet back) data
//! stays in the agent's outbox instead of vanishing from a PUB socket. A
//! batch is not held back for a channel nobody subscribes to while others
//! are watched: the outbox is one ordered queue, and holding the whole agent
//! back for one unwatched channel would fill it.
//!
//! Batches are handled one at a time across all ingest workers (a lock), so
//! two workers never race on one agent's watermark.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use proto::bus::{Framing, Subscription};
use proto::ingest::{Batch, Reply};
use transport::bus::publish_on;
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use crate::broker::BROKER_INPROC;
use crate::config::IngestConfig;
use crate::security::{Kind, Security};

/// Ingest counters, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub batches: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    /// Batches answered "retry": no subscriber, or a storage failure.
    pub retries: AtomicU64,
    /// Batches refused: an identity sending for another agent.
    pub refused: AtomicU64,
}

impl IngestCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("batches", self.batches.load(Relaxed)),
            ("samples_accepted", self.accepted.load(Relaxed)),
            ("samples_duplicate", self.duplicates.load(Relaxed)),
            ("batches_malformed", self.malformed.load(Relaxed)),
            ("batches_retried", self.retries.load(Relaxed)),
            ("batches_refused", self.refused.load(Relaxed)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot open the ingest store in {path}: {source} (is another hub using this --data-dir?)")]
    Open { path: std::path::PathBuf, source: sled::Error },
    #[error("ingest worker: {0}")]
    Worker(#[from] WorkerError),
    #[error("ingest worker: {0}")]
    Zmq(#[from] zmq::Error),
}

#[derive(Clone)]
pub struct IngestService {
    db: sled::Db,
    watermarks: sled::Tree,
    counters: Arc<IngestCounters>,
    require_subscriber: bool,
    bus: String,
    worker: WorkerOptions,
    /// Serialises batches across the worker threads.
    one_at_a_time: Arc<Mutex<()>>,
    /// With security, requests start with the caller's identity (the broker
    /// adds it), and an agent may send only its own batches.
    security: Option<Arc<Security>>,
}

/// The watermark key: agent, NUL, epoch (big-endian).
fn key(agent: &str, epoch: u32) -> Vec<u8> {
    let mut k = agent.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

impl IngestService {
    /// Opens the watermark store under `data_dir/ingest`; publishes to `bus`
    /// (the metric bus's in-process frontend).
    pub fn open(
        data_dir: &Path,
        config: &IngestConfig,
        bus: String,
        worker: WorkerOptions,
        security: Option<Arc<Security>>,
    ) -> Result<IngestService, IngestError> {
        let path = data_dir.join("ingest");
        let open = || -> sled::Result<(sled::Db, sled::Tree)> {
            let db = sled::Config::new().path(&path).cache_capacity(4 << 20).flush_every_ms(None).open()?;
            let tree = db.open_tree("watermarks")?;
            Ok((db, tree))
        };
        let (db, watermarks) = open().map_err(|source| IngestError::Open { path: path.clone(), source })?;
        Ok(IngestService {
            db,
            watermarks,
            counters: Arc::default(),
            require_subscriber: config.require_subscriber,
            bus,
            worker,
            one_at_a_time: Arc::default(),
            security,
        })
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    /// One worker: serves batches until shutdown.
    pub fn serve(&self, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), IngestError> {
        // An XPUB (not a PUB) so we hear which topics have subscribers.
        let publisher = ctx.socket(zmq::XPUB)?;
        publisher.set_sndhwm(0)?;
        publisher.connect(&self.bus)?;
        let mut subscriptions = Subscriptions::default();
        let worker = Worker::new(ctx, BROKER_INPROC, proto::ingest::SERVICE, self.worker.clone());
        worker.run(signal, |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
            subscriptions.update(&publisher);
            let frame = |i: usize| body.get(i).map_or(&[][..], |f| &f[..]);
            let (caller, batch) = match self.security {
                Some(_) => (frame(0), frame(1)),
                None => (&[][..], frame(0)),
            };
            let caller = String::from_utf8_lossy(caller);
            let reply = self.handle(&caller, batch, &subscriptions, |topic, json| {
                // XPUB with no HWM never blocks; it only sends where someone subscribed.
                let _ = publish_on(&publisher, Framing::TwoFrame, topic, json);
            });
            vec![zmq::Message::from(reply.encode())]
        })?;
        Ok(())
    }

    /// Handles one batch from `caller` (an identity, or empty for the hub
    /// itself and with security off); `publish(topic, json)` sends on the bus.
    fn handle(
        &self,
        caller: &str,
        body: &[u8],
        subscriptions: &Subscriptions,
        mut publish: impl FnMut(&[u8], &[u8]),
    ) -> Reply {
        let _one_at_a_time = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        c.batches.fetch_add(1, Relaxed);
        let batch = match Batch::decode(body) {
            Ok(batch) if !batch.agent.is_empty() && !batch.agent.contains('\0') => batch,
            Ok(_) => return self.malformed("agent id is empty or contains NUL".into()),
            Err(e) => return self.malformed(e.to_string()),
        };
        if !caller.is_empty() && batch.agent != caller {
            c.refused.fetch_add(1, Relaxed);
            if let Some(security) = &self.security {
                security.denials.record(caller, Kind::Ingest, || {
                    format!("a batch for agent '{}' from identity '{caller}'", batch.agent)
                });
            }
            let reason = format!(
                "identity '{caller}' may send batches only for agent '{caller}', not '{}'",
                batch.agent
            );
            return Reply::Refused { reason };
        }
        let covered = batch.samples.iter().any(|s| subscriptions.covers(&s.sample.topic(&batch.agent)));
        if self.require_subscriber && !batch.samples.is_empty() && !covered {
            c.retries.fetch_add(1, Relaxed);
            let topic = batch.samples[0].sample.topic(&batch.agent);
            return Reply::Retry {
                reason: format!("no subscriber for {topic} on the metric bus"),
                after_ms: 1000,
            };
        }
        // Every watermark this batch touches, read before anything is published,
        // so a storage error cannot leave half a batch published.
        let mut marks: Vec<(u32, u64)> = Vec::new();
        for sent in &batch.samples {
            let epoch = sent.sample.epoch;
            if !marks.iter().any(|m| m.0 == epoch) {
                match self.watermarks.get(key(&batch.agent, epoch)) {
                    Ok(v) => marks.push((
                        epoch,
                        v.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes),
                    )),
                    Err(e) => return self.storage_failure(e),
                }
            }
        }
        let stored = marks.clone();
        let (mut accepted, mut duplicates) = (0u32, 0u32);
        for sent in &batch.samples {
            let s = &sent.sample;
            let Some(mark) = marks.iter_mut().find(|m| m.0 == s.epoch) else { continue };
            if s.seq <= mark.1 {
                duplicates += 1;
                continue;
            }
            let json = s.to_json(&batch.agent, true, sent.historical).to_string();
            publish(s.topic(&batch.agent).as_bytes(), json.as_bytes());
            mark.1 = s.seq;
            accepted += 1;
        }
        // Watermarks only rise: a sample at or below one was a duplicate.
        for (mark, before) in marks.iter().zip(&stored) {
            if mark.1 > before.1 {
                if let Err(e) = self.watermarks.insert(key(&batch.agent, mark.0), &mark.1.to_be_bytes()) {
                    return self.storage_failure(e);
                }
            }
        }
        if accepted > 0 {
            if let Err(e) = self.db.flush() {
                return self.storage_failure(e);
            }
        }
        c.accepted.fetch_add(accepted.into(), Relaxed);
        c.duplicates.fetch_add(duplicates.into(), Relaxed);
        Reply::Ack { accepted, duplicates }
    }

    fn malformed(&self, reason: String) -> Reply {
        self.counters.malformed.fetch_add(1, Relaxed);
        log::warn!("ingest: dropped a malformed batch: {reason}");
        Reply::Malformed { reason }
    }

    fn storage_failure(&self, e: sled::Error) -> Reply {
        self.counters.retries.fetch_add(1, Relaxed);
        log::error!("ingest: watermark store failed: {e}");
        Reply::Retry { reason: format!("hub storage error: {e}"), after_ms: 1000 }
    }
}

/// Topic prefixes subscribed on the bus, as the XPUB reports them.
#[derive(Default)]
struct Subscriptions {
    prefixes: HashSet<Vec<u8>>,
}

impl Subscriptions {
    fn update(&mut self, xpub: &zmq::Socket) {
        while let Ok(message) = xpub.recv_bytes(zmq::DONTWAIT) {
            match Subscription::parse(&message) {
                Some(Subscription::Subscribe(prefix)) => {
                    self.prefixes.insert(prefix.to_vec());
                }
                Some(Subscription::Unsubscribe(prefix)) => {
                    self.prefixes.remove(prefix);
                }
                None => {}
            }
        }
    }

    fn covers(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|p| topic.as_bytes().starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ingest::Sent;
    use proto::sample::{Quality, Sample, Value};

    fn service(require_subscriber: bool) -> (IngestService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig { require_subscriber, ..IngestConfig::default() };
        (
            IngestService::open(dir.path(), &config, String::new(), WorkerOptions::default(), None).unwrap(),
            dir,
        )
    }

    fn batch(agent: &str, epoch: u32, seqs: &[u64]) -> Vec<u8> {
        let samples = seqs
            .iter()
            .map(|&seq| Sent {
                sample: Sample {
                    channel: "t".into(),
                    epoch,
                    seq,
                    wall_ns: 0,
                    mono_ns: 0,
                    clock_synced: false,
                    value: Value::Integer(seq as i64),
                    unit: String::new(),
                    quality: Quality::Good,
                },
                historical: seq % 2 == 0,
            })
            .collect();
        Batch { agent: agent.into(), samples }.encode()
    }

    fn everything() -> Subscriptions {
        Subscriptions { prefixes: [b"".to_vec()].into() }
    }

    fn run(svc: &IngestService, body: &[u8], subs: &Subscriptions) -> (Reply, Vec<serde_json::Value>) {
        let mut published = Vec::new();
        let reply =
            svc.handle("", body, subs, |_, json| published.push(serde_json::from_slice(json).unwrap()));
        (reply, published)
    }

    #[test]
    fn resent_samples_are_published_once() {
        let (svc, _dir) = service(true);
        let (reply, published) = run(&svc, &batch("pi", 1, &[1, 2, 3]), &everything());
        assert_eq!(reply, Reply::Ack { accepted: 3, duplicates: 0 });
        assert_eq!(published.iter().map(|j| j["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(published[1]["historical"], true);
        let (reply, published) = run(&svc, &batch("pi", 1, &[2, 3, 4]), &everything());
        assert_eq!(reply, Reply::Ack { accepted: 1, duplicates: 2 });
        assert_eq!(published.len(), 1);
        // Another epoch or another agent has its own watermark.
        assert_eq!(
            run(&svc, &batch("pi", 2, &[1]), &everything()).0,
            Reply::Ack { accepted: 1, duplicates: 0 }
        );
        assert_eq!(
            run(&svc, &batch("pi2", 1, &[1]), &everything()).0,
            Reply::Ack { accepted: 1, duplicates: 0 }
        );
    }

    #[test]
    fn a_batch_spanning_two_epochs_keeps_both_watermarks() {
        let (svc, _dir) = service(true);
        let mut samples = Batch::decode(&batch("pi", 1, &[1, 2])).unwrap().samples;
        samples.extend(Batch::decode(&batch("pi", 2, &[1])).unwrap().samples);
        let body = Batch { agent: "pi".into(), samples }.encode();
        assert_eq!(run(&svc, &body, &everything()).0, Reply::Ack { accepted: 3, duplicates: 0 });
        assert_eq!(run(&svc, &body, &everything()).0, Reply::Ack { accepted: 0, duplicates: 3 });
    }

    #[test]
    fn watermarks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            IngestService::open(
                dir.path(),
                &IngestConfig::default(),
                String::new(),
                WorkerOptions::default(),
                None,
            )
        };
        let svc = open().unwrap();
        run(&svc, &batch("pi", 1, &[1, 2]), &everything());
        drop(svc);
        let svc = open().unwrap();
        assert_eq!(
            run(&svc, &batch("pi", 1, &[1, 2, 3]), &everything()).0,
            Reply::Ack { accepted: 1, duplicates: 2 }
        );
    }

    #[test]
    fn no_subscriber_means_retry_and_nothing_published() {
        let (svc, _dir) = service(true);
        let only_other = Subscriptions { prefixes: [b"org.plantd.Metric.other.".to_vec()].into() };
        let (reply, published) = run(&svc, &batch("pi", 1, &[1]), &only_other);
        assert!(matches!(reply, Reply::Retry { .. }), "{reply:?}");
        assert!(published.is_empty());
        // One watched channel is enough: the agent's queue is not held back for the others.
        let this_one = Subscriptions { prefixes: [b"org.plantd.Metric.pi.t".to_vec()].into() };
        assert!(matches!(run(&svc, &batch("pi", 1, &[1]), &this_one).0, Reply::Ack { accepted: 1, .. }));
        let (svc, _dir) = service(false);
        assert!(matches!(run(&svc, &batch("pi", 1, &[1]), &Subscriptions::default()).0, Reply::Ack { .. }));
    }

    #[test]
    fn an_identity_sends_batches_only_for_itself() {
        let (svc, _dir) = service(true);
        let mut published = 0;
        // The attack: another agent poisons pump-1's watermark with seq = u64::MAX.
        let poison =
            svc.handle("pump-2", &batch("pump-1", 1, &[u64::MAX]), &everything(), |_, _| published += 1);
        assert!(matches!(poison, Reply::Refused { .. }), "{poison:?}");
        assert_eq!((published, svc.counters.refused.load(Relaxed)), (0, 1));
        let own = svc.handle("pump-1", &batch("pump-1", 1, &[1, 2]), &everything(), |_, _| published += 1);
        assert_eq!(own, Reply::Ack { accepted: 2, duplicates: 0 }, "the victim's samples still count");
    }

    #[test]
    fn garbage_is_malformed_and_counted() {
        let (svc, _dir) = service(true);
        assert!(matches!(run(&svc, b"\x01\xff\xff", &everything()).0, Reply::Malformed { .. }));
        assert!(matches!(run(&svc, b"", &everything()).0, Reply::Malformed { .. }));
        assert!(matches!(run(&svc, &batch("a\0b", 1, &[1]), &everything()).0, Reply::Malformed { .. }));
        assert_eq!(svc.counters.malformed.load(Relaxed), 3);
    }
}
