//! `hub serve`: start every component on its own thread and stop them all
//! together on shutdown.

use std::sync::Arc;
use std::thread::JoinHandle;

use transport::Shutdown;

use crate::broker::BrokerError;
use crate::bus::BusError;
use crate::config::{Config, ConfigError};
use crate::http::HttpError;
use crate::ingest::IngestError;
use crate::metrics::{Families, Registry};
use crate::security::{Security, SecurityError};
use crate::state::StateError;
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {path}: {source} (choose another with --data-dir)")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("sparkplug: {0}")]
    Sparkplug(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("cannot start the ZAP handler: {0}")]
    Zap(zmq::Error),
    #[error("control socket: {0} (is another hub using this --data-dir?)")]
    Control(zmq::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("web view: {0}")]
    Web(String),
    #[error("the hub's own service: {0}")]
    Service(#[from] transport::WorkerError),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error(transparent)]
    Dlq(#[from] crate::pipeline::dlq::DlqError),
    #[error("pipeline {0}")]
    Pipeline(String),
    #[error("{0} thread panicked")]
    Panicked(String),
}

/// A running hub. Dropping it does not stop it: call [`Hub::stop`] or
/// trigger the shutdown it was started with.
pub struct Hub {
    shutdown: Shutdown,
    broker_endpoint: String,
    http_address: Option<String>,
    threads: Vec<(String, JoinHandle<Result<(), ServeError>>)>,
    security: Option<Arc<Security>>,
    /// The state store, flushed by [`Hub::flush`].
    state_store: Option<Arc<crate::state::store::Store>>,
    /// Every component's metrics.
    registry: Arc<Registry>,
    /// The ZAP handler, stopped only after every other component: libzmq
    /// admits anyone while no handler is bound.
    zap: Option<(Shutdown, JoinHandle<Result<(), ServeError>>)>,
    /// Every store: damage found at start (the hub runs degraded), health now.
    storage: Storage,
    /// Closes each store cleanly once every thread has stopped (other
    /// holders, such as the signal thread's flusher, outlive [`Hub::wait`]).
    closing: Vec<Box<dyn Fn() + Send>>,
}

mod components;

impl Hub {
    /// Validates the config, binds every endpoint (so errors surface here, not
    /// in a thread) and starts the components, in order: each starter below
    /// takes the ZeroMQ context and the config, and finds the security, the
    /// metrics registry and the stores' health on the hub it adds itself to.
    /// `ctx` must be the one context all in-process (`inproc://`) peers of the hub use.
    pub fn start(ctx: &zmq::Context, config: &Config, shutdown: Shutdown) -> Result<Hub, ServeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServeError::DataDir { path: config.data_dir.clone(), source })?;

        if config.insecure && config.security.is_none() {
            log::warn!(
                "running INSECURE: no [security], so anyone who can reach {} may do anything",
                config.exposed_endpoints().join(", ")
            );
        }
        let security = match &config.security {
            Some(settings) => Some(Arc::new(Security::load(settings)?)),
            None => None,
        };
        let mut hub = Hub {
            shutdown,
            broker_endpoint: String::new(),
            http_address: None,
            threads: Vec::new(),
            security,
            state_store: None,
            registry: Arc::default(),
            zap: None,
            storage: Storage::default(),
            closing: Vec::new(),
        };
        // Before any CURVE socket binds.
        hub.start_zap(ctx)?;
        let storage = hub.storage.clone();
        hub.registry.register("stores", Arc::new(move |out: &mut Families| storage.collect(out)));
        if let Some(security) = hub.security.clone() {
            hub.registry.register("security", Arc::new(move |out: &mut Families| security.collect(out)));
        }
        let buses = hub.start_buses(ctx, config)?;
        let broker = hub.start_broker(ctx, config)?;
        hub.start_state(ctx, config)?;
        let ingest = hub.start_ingest(ctx, config, &buses.listeners)?;
        let export = ingest.as_ref().map(|i| i.export());
        if let Some(export) = &export {
            hub.start_consumers(ctx, config, export.journal.clone())?;
        }
        let pipelines = hub.start_pipelines(ctx, config, export.as_ref())?;
        let bridge = match config.bridge_nats() {
            Some(nats) => Some(hub.start_bridge(ctx, config, nats, export.clone())?),
            None => None,
        };
        let agents = ingest.as_ref().map(|i| i.agents());
        if let (Some(fleet), Some(agents)) = (hub.start_fleet(ctx, config)?, &agents) {
            agents.set_config_source(Arc::new(move |agent: &str| fleet.standing(agent)));
        }
        let sparkplug = match export.clone() {
            Some(export) => hub.start_sparkplug(ctx, config, export, agents.clone())?,
            None => None,
        };
        hub.start_services(ctx, config, agents, components::Reports { bridge, pipelines, sparkplug })?;
        if config.http.listen != "off" {
            let ingest = ingest.as_ref().map(|i| (i.counters(), i.agents()));
            hub.start_http(ctx, config, buses.counters, broker, ingest, export)?;
        }
        Ok(hub)
    }

    /// The HTTP health/metrics address, if enabled.
    pub fn http_address(&self) -> Option<&str> {
        self.http_address.as_deref()
    }

    /// Runs `component` on its own thread with its own shutdown signal. A
    /// component that fails stops the whole hub: half a hub is worse than none.
    fn spawn<F>(&mut self, name: String, component: F) -> Result<(), ServeError>
    where
        F: FnOnce(transport::ShutdownWatch) -> Result<(), ServeError> + Send + 'static,
    {
        let signal = self.shutdown.watch_as(&name).map_err(ServeError::Thread)?;
        let shutdown = self.shutdown.clone();
        let thread_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let name = thread_name;
                // A panic stops the hub like an error does, instead of leaving the rest running headless.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| component(signal)))
                    .unwrap_or_else(|_| Err(ServeError::Panicked(name.clone())));
                if let Err(e) = &result {
                    log::error!("{name} failed: {e}");
                    shutdown.trigger();
                }
                result
            })
            .map_err(ServeError::Thread)?;
        self.threads.push((name, thread));
        Ok(())
    }

    /// The broker's bound endpoint.
    pub fn broker_endpoint(&self) -> &str {
        &self.broker_endpoint
    }

    /// Makes what the stores took durable now (the last thing done when a
    /// second termination signal cuts a graceful stop short). Ingest
    /// watermarks are durable before every acknowledgement already.
    pub fn flusher(&self) -> impl Fn() + Send + 'static {
        let store = self.state_store.clone();
        move || {
            if let Some(store) = &store {
                match store.flush() {
                    Ok(()) => log::info!("state store flushed"),
                    Err(e) => log::error!("state store flush failed: {e}"),
                }
            }
        }
    }

    /// The security context, when `[security]` is configured.
    pub fn security(&self) -> Option<&Arc<Security>> {
        self.security.as_ref()
    }

    /// Waits for every component to stop (after shutdown is triggered); the
    /// first error wins. The ZAP handler stops last.
    pub fn wait(self) -> Result<(), ServeError> {
        let mut result = Ok(());
        let zap = self.zap.map(|(stop, thread)| ("zap".to_string(), thread, stop));
        for (name, thread) in self.threads {
            let outcome = thread.join().unwrap_or(Err(ServeError::Panicked(name)));
            if let Err(e) = outcome {
                self.shutdown.trigger();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        if let Some((name, thread, stop)) = zap {
            stop.trigger();
            if let Err(e) = thread.join().unwrap_or(Err(ServeError::Panicked(name))) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        for close in &self.closing {
            close();
        }
        result
    }

    pub fn stop(self) -> Result<(), ServeError> {
        self.shutdown.trigger();
        self.wait()
    }
}

/// Answers a request on the hub's control socket (`hub keys reload`).
fn control(security: Option<&Security>, request: &[u8]) -> Vec<u8> {
    let reply = match (request, security) {
        (b"reload", Some(security)) => match security.reload() {
            Ok(report) => serde_json::json!({"reloaded": report}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        (b"reload", None) => {
            serde_json::json!({"error": "this hub runs without [security]: there is no allow-list"})
        }
        (b"ping", _) => serde_json::json!({"pong": true}),
        _ => serde_json::json!({"error": "unknown request: use reload or ping"}),
    };
    reply.to_string().into_bytes()
}
