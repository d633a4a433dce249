//! The state service (`org.plantd.State`): plantd's key-value state, as MDP
//! workers inside the hub, persisted in sled, announcing every change on the
//! state bus.
//!
//! The workers reach the broker over `inproc://` (no I/O thread, no TCP),
//! and sled is shared between them, so several requests are served at once.

pub mod config;
mod limits;
pub mod ops;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::bus::Framing;
use transport::{Publisher, ShutdownWatch, Worker, WorkerError, WorkerOptions};

use self::config::StateConfig;
use self::store::Store;
use crate::broker::BROKER_INPROC;
use crate::security::{Kind, Security};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state store in {path}: {source} (is another hub using this --data-dir?)")]
    Open { path: std::path::PathBuf, source: store::StoreError },
    #[error("state worker: {0}")]
    Worker(#[from] WorkerError),
    #[error("state worker: {0}")]
    Zmq(#[from] zmq::Error),
}

#[derive(Clone)]
pub struct StateService {
    store: Arc<Store>,
    flush_interval: Duration,
    events: String,
    worker: WorkerOptions,
    /// With security, each request starts with the caller's identity (the
    /// broker adds it), whose grants decide which scopes it may touch.
    security: Option<Arc<Security>>,
}

impl StateService {
    /// Opens the store under `data_dir/state`; change events go to `events` (a
    /// bus frontend); `worker` must heartbeat as the broker expects.
    pub fn open(
        data_dir: &Path,
        config: &StateConfig,
        events: String,
        worker: WorkerOptions,
        security: Option<Arc<Security>>,
    ) -> Result<StateService, StateError> {
        let path = data_dir.join("state");
        let store = Store::open(&path, config.cache_bytes, config.flush_interval_ms == 0, config.limits)
            .map_err(|source| StateError::Open { path, source })?;
        Ok(StateService {
            store: Arc::new(store),
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            events,
            worker: WorkerOptions { credit: config.credit, ..worker },
            security,
        })
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// One worker: serves requests until shutdown. Run several on their own threads.
    ///
    /// With credit above 1 the broker keeps up to that many requests at this
    /// worker; it applies every one waiting, in order, commits their writes
    /// with one flush, and only then answers them, in the order they came.
    pub fn serve(&self, ctx: &zmq::Context, signal: &ShutdownWatch) -> Result<(), StateError> {
        let publisher = Publisher::connect(ctx, &self.events, Framing::TwoFrame)?;
        let worker = Worker::new(ctx, BROKER_INPROC, proto::state::SERVICE, self.worker.clone());
        let mut outcomes = Vec::new();
        worker.run_batched(signal, |batch: &mut [Vec<zmq::Message>]| {
            outcomes.clear();
            outcomes.extend(batch.iter().map(|body| self.apply(body)));
            ops::commit(&self.store, &mut outcomes);
            for (body, outcome) in batch.iter_mut().zip(outcomes.drain(..)) {
                if let Some(event) = &outcome.event {
                    // PUB drops rather than blocks; a lost event never fails the write.
                    let payload = serde_json::to_vec(&event).expect("an event serialises");
                    let _ = publisher.publish(event.topic().as_bytes(), &payload);
                }
                body.clear();
                body.push(zmq::Message::from(ops::encode(&self.store, &outcome)));
            }
        })?;
        Ok(())
    }

    /// Applies one request (not yet durable), counting a refusal as a denial.
    fn apply(&self, body: &[zmq::Message]) -> ops::Outcome {
        let (caller, body) = match (&self.security, body.split_first()) {
            (Some(_), Some((caller, rest))) => (String::from_utf8_lossy(caller).into_owned(), rest),
            _ => (String::new(), body),
        };
        let grants = self.security.as_ref().filter(|_| !caller.is_empty()).map(|s| s.grants(&caller));
        let outcome = ops::apply(&self.store, &ops::Caller { name: &caller, grants }, body);
        if let (Some(why), Some(security)) = (&outcome.refused, &self.security) {
            security.denials.record(&caller, Kind::State, || why.clone());
        }
        outcome
    }

    /// Flushes every interval, bounding how long an acknowledged write can be
    /// lost to a crash; flushes once more on shutdown.
    pub fn flush_loop(&self, signal: &ShutdownWatch) -> Result<(), StateError> {
        if self.flush_interval.is_zero() {
            return Ok(()); // every write is flushed before its reply
        }
        loop {
            let stopping = signal.sleep(self.flush_interval);
            // A failure is logged once and stops writes (see Store::flush).
            let _ = self.store.flush();
            if stopping {
                return Ok(());
            }
        }
    }
}

/// The state store's metrics and bounds.
pub fn collect(config: &StateConfig, store: &Store, out: &mut crate::metrics::Families) {
    out.counter("state_writes", "Writes acknowledged.", vec![], store.writes());
    out.counter("state_durable_writes", "Writes flushed to disk.", vec![], store.durable_writes());
    out.gauge(
        "state_store_available",
        "1 while the store takes writes.",
        vec![],
        store.failure().is_none().into(),
    );
    out.counter(
        "state_store_reopens",
        "Times the store was opened again after a storage failure (a full disk).",
        vec![],
        store.reopens(),
    );
    out.counter(
        "state_lost_writes",
        "Writes acknowledged but never made durable: lost to storage failures.",
        vec![],
        store.lost_writes(),
    );
    out.gauge(
        "state_durability_lag_ms",
        "How long the oldest unflushed write has waited.",
        vec![],
        store.durability_lag().as_millis() as u64,
    );
    out.gauge("state_scopes", "Scopes in the store.", vec![], store.scope_count() as u64);
    out.counter(
        "state_refused",
        "Requests refused for a bound: a key, scope name, value, scope or reply too big, too many keys or scopes.",
        vec![],
        store.refused(),
    );
    out.gauge(
        "state_flush_interval_ms",
        "Writes are flushed at least this often.",
        vec![],
        config.flush_interval_ms,
    );
    out.gauge("state_cache_bytes", "The store's cache.", vec![], config.cache_bytes);
    out.gauge(
        "state_worker_credit",
        "Requests each state worker holds at once.",
        vec![],
        config.credit.into(),
    );
    let l = &config.limits;
    let bounds: [(&str, &'static str, usize); 7] = [
        ("max_value_bytes", "Largest value.", l.max_value_bytes),
        ("max_key_bytes", "Longest key or scope name.", l.max_key_bytes),
        ("max_keys_per_scope", "Keys in one scope, at most.", l.max_keys_per_scope),
        ("max_scope_bytes", "Key and value bytes in one scope, at most.", l.max_scope_bytes),
        ("max_scopes", "Scopes, at most.", l.max_scopes),
        ("max_scopes_per_identity", "Scopes one identity may own.", l.max_scopes_per_identity),
        ("max_reply_bytes", "Largest reply.", l.max_reply_bytes),
    ];
    for (name, help, value) in bounds {
        out.gauge(&format!("state_{name}"), help, vec![], value as u64);
    }
}
