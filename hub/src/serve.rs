//! `hub serve`: start every component on its own thread and stop them all
//! together on shutdown.

use std::sync::Arc;
use std::thread::JoinHandle;

use transport::Shutdown;

use crate::broker::{BrokerError, BrokerServer};
use crate::bus::{Bus, BusError};
use crate::config::{Config, ConfigError};
use crate::http::web::{Feeds, Watcher};
use crate::http::{HttpError, HttpServer, Sources};
use crate::ingest::{IngestError, IngestService};
use crate::metrics::{Families, Registry};
use crate::security::zap::ZapHandler;
use crate::security::{Security, SecurityError};
use crate::state::{StateError, StateService};
use crate::storage::{Live, Storage};

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

impl Hub {
    /// Validates the config, binds every endpoint (so errors surface here, not
    /// in a thread) and starts the components. `ctx` must be the one context
    /// all in-process (`inproc://`) peers of the hub use.
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
            security: security.clone(),
            state_store: None,
            registry: Arc::default(),
            zap: None,
            storage: Storage::default(),
            closing: Vec::new(),
        };
        if let Some(security) = &security {
            // Before any CURVE socket binds.
            let zap = ZapHandler::bind(ctx, security.clone()).map_err(ServeError::Zap)?;
            let stop = Shutdown::new();
            let watch = stop.watch().map_err(ServeError::Thread)?;
            // A failing handler stops the hub: without one libzmq would admit any key.
            let hub_shutdown = hub.shutdown.clone();
            let thread = std::thread::Builder::new()
                .name("zap".into())
                .spawn(move || {
                    let failed = |e: &zmq::Error| {
                        log::error!("ZAP handler failed: {e}");
                        hub_shutdown.trigger();
                    };
                    zap.serve(&watch, failed).map_err(ServeError::Zap)
                })
                .map_err(ServeError::Thread)?;
            hub.zap = Some((stop, thread));
        }
        let registry = Arc::new(Registry::default());
        let storage = hub.storage.clone();
        registry.register("stores", Arc::new(move |out: &mut Families| storage.collect(out)));
        if let Some(security) = &security {
            let security = security.clone();
            registry.register("security", Arc::new(move |out: &mut Families| security.collect(out)));
        }
        let mut bus_counters = Vec::new();
        let mut listeners = std::collections::HashMap::new();
        for bus_config in &config.buses {
            let bus = Bus::bind(ctx, bus_config, security.clone())?;
            let (counters, bounds) = (bus.counters(), bus_config.clone());
            registry.register(
                "bus",
                Arc::new(move |out: &mut Families| crate::bus::collect(&bounds, &counters, out)),
            );
            bus_counters.push((bus.name().to_string(), bus.counters()));
            listeners.insert(bus.name().to_string(), bus.subscribers());
            hub.spawn(format!("bus-{}", bus_config.name), move |signal| {
                bus.run(&signal).map_err(ServeError::from)
            })?;
        }

        let broker = BrokerServer::bind(ctx, &config.broker, security.clone(), registry.clone())?;
        hub.broker_endpoint = broker.endpoint();
        let broker_snapshot = broker.snapshot();
        hub.spawn("broker".into(), move |signal| broker.run(&signal).map(|_| ()).map_err(ServeError::from))?;
        if let Some(security) = &security {
            // Every CURVE socket is bound: their failed handshakes are counted here.
            let (security, watch) = (security.clone(), security.take_watch());
            hub.spawn("handshakes".into(), move |signal| {
                watch.run(&security, &signal).map_err(ServeError::Zap)
            })?;
        }

        let mut state_store = None;
        if config.state.enabled {
            let bus = config
                .buses
                .iter()
                .find(|b| b.name == config.state.bus)
                .expect("validated: the state bus exists");
            // No reply may be larger than the broker lets through.
            let mut state_config = config.state.clone();
            let (limits, lowered) = config.state.limits.within(config.broker.max_message_bytes);
            if lowered {
                log::warn!(
                    "state: replies and values lowered to fit broker.max_message_bytes ({}): \
                     max_reply_bytes {}, max_value_bytes {}",
                    config.broker.max_message_bytes,
                    limits.max_reply_bytes,
                    limits.max_value_bytes
                );
            }
            state_config.limits = limits;
            let state = StateService::open(
                &config.data_dir,
                &state_config,
                bus.inproc_frontend(),
                config.broker.worker_options(),
                security.clone(),
            )?;
            state_store = Some(state.store());
            let live = state.store();
            let live: Live = Arc::new(move || (live.failure(), live.reopens()));
            hub.storage.add("state", state.store().recovery(), Some(live));
            hub.state_store = state_store.clone();
            let store = state.store();
            hub.closing.push(Box::new(move || store.close()));
            let (store, bounds) = (state.store(), state_config.clone());
            registry.register(
                "state",
                Arc::new(move |out: &mut Families| crate::state::collect(&bounds, &store, out)),
            );
            for i in 0..config.state.workers {
                let (state, ctx) = (state.clone(), ctx.clone());
                hub.spawn(format!("state-{i}"), move |signal| {
                    state.serve(&ctx, &signal).map_err(ServeError::from)
                })?;
            }
            let store = state.store();
            hub.spawn("state-flush".into(), move |signal| {
                state.flush_loop(&signal).map_err(ServeError::from)
            })?;
            hub.spawn("state-store".into(), move |signal| {
                store.heal(&signal);
                Ok(())
            })?;
        }

        let mut ingest_counters = None;
        let mut export = None;
        if config.ingest.enabled {
            let bus = config
                .buses
                .iter()
                .find(|b| b.name == config.ingest.bus)
                .expect("validated: the ingest bus exists");
            let worker = config.broker.worker_options();
            let names: Vec<&str> = config.buses.iter().map(|b| b.name.as_str()).collect();
            let event_bus = config.ingest.event_bus(&names);
            let outlet = |name: &str| {
                let bus =
                    config.buses.iter().find(|b| b.name == name).expect("validated: the ingest buses exist");
                let listeners = listeners.get(name).cloned().unwrap_or_default();
                crate::ingest::Outlet { frontend: bus.inproc_frontend(), listeners }
            };
            let ingest = IngestService::open(
                &config.data_dir,
                &config.ingest,
                (outlet(&bus.name), outlet(event_bus)),
                worker,
                security.clone(),
                joined_exports(config),
            )?;
            ingest_counters = Some((ingest.counters(), ingest.agents()));
            export = Some(ingest.export());
            let store = ingest.store();
            let (live, failing) = (store.clone(), ingest.counters());
            let live: Live = Arc::new(move || {
                let why = failing.failing.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (why, live.reopens())
            });
            hub.storage.add("ingest", store.recovery(), Some(live));
            let reopens = store.clone();
            registry.register(
                "ingest_store",
                Arc::new(move |out: &mut Families| {
                    let help = "Times ingest's store was opened again after a storage failure.";
                    out.counter("ingest_store_reopens", help, vec![], reopens.reopens());
                }),
            );
            hub.spawn("ingest-store".into(), move |signal| {
                store.heal(&signal);
                Ok(())
            })?;
            hub.start_consumers(ctx, config, ingest.export().journal, &security, &registry)?;
            let (counters, agents, bounds) = (ingest.counters(), ingest.agents(), config.ingest.clone());
            registry.register(
                "ingest",
                Arc::new(move |out: &mut Families| crate::ingest::collect(&bounds, &counters, &agents, out)),
            );
            for i in 0..config.ingest.workers {
                let (ingest, ctx) = (ingest.clone(), ctx.clone());
                hub.spawn(format!("ingest-{i}"), move |signal| {
                    ingest.serve(&ctx, &signal).map_err(ServeError::from)
                })?;
            }
        }

        let pipelines = hub.start_pipelines(ctx, config, export.as_ref(), &registry)?;
        let bridge = match config.bridge_nats() {
            Some(nats) => Some(hub.start_bridge(ctx, config, nats, export.clone(), &security, &registry)?),
            None => None,
        };
        let (pipelines, dlq) = pipelines.unzip();
        if let Some(dlq) = dlq {
            let service = crate::service::DlqService {
                dlq,
                worker: config.broker.worker_options(),
                secure: security.is_some(),
            };
            let ctx = ctx.clone();
            hub.spawn("dlq-service".into(), move |signal| {
                service.serve(&ctx, &signal).map_err(ServeError::Service)
            })?;
        }
        {
            let service = crate::service::HubService {
                agents: ingest_counters.as_ref().map(|(_, agents)| agents.clone()),
                storage: hub.storage.clone(),
                bridge,
                pipelines,
                worker: config.broker.worker_options(),
                secure: security.is_some(),
            };
            let ctx = ctx.clone();
            hub.spawn("hub-service".into(), move |signal| {
                service.serve(&ctx, &signal).map_err(ServeError::Service)
            })?;
        }
        {
            let (security, data_dir) = (security.clone(), config.data_dir.clone());
            let ctx = ctx.clone();
            hub.spawn("control".into(), move |stop| {
                transport::control::serve(&ctx, &data_dir, &stop, |request| {
                    control(security.as_deref(), request)
                })
                .map_err(ServeError::Control)
            })?;
        }

        if config.http.listen != "off" {
            let feeds = Feeds::new(bus_counters);
            let tap_of = |name: &str| config.buses.iter().find(|b| b.name == name).map(|b| b.inproc_tap());
            let watcher = Watcher::new(feeds.clone(), tap_of(&config.state.bus), tap_of(&config.ingest.bus));
            let ctx_for_web = ctx.clone();
            hub.spawn("web-watcher".into(), move |signal| {
                watcher.run(&ctx_for_web, &signal).map_err(|e| ServeError::Web(e.to_string()))
            })?;
            let sources = Sources {
                state_flush: std::time::Duration::from_millis(config.state.flush_interval_ms),
                registry: registry.clone(),
                broker: broker_snapshot,
                shutdown: hub.shutdown.clone(),
                state: state_store,
                ingest: ingest_counters,
                journal: export.as_ref().map(|e| e.journal.clone()),
                storage: hub.storage.clone(),
                security: security.clone(),
                web: feeds,
            };
            let http = HttpServer::bind(&config.http, sources)?;
            hub.http_address = Some(http.address());
            hub.spawn("http".into(), move |signal| {
                http.run(&signal).map_err(|e| ServeError::Web(e.to_string()))
            })?;
        }
        hub.registry = registry;
        Ok(hub)
    }

    /// Starts the NATS bridge on its own thread; returns what `hub bridge
    /// status` shows.
    /// Durable consumers' services over ingest's journal, and their sweeper.
    fn start_consumers(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        journal: Arc<crate::ingest::journal::Journal>,
        security: &Option<Arc<Security>>,
        registry: &Registry,
    ) -> Result<(), ServeError> {
        let service = Arc::new(crate::consumers::ConsumerService {
            journal: journal.clone(),
            config: config.consumers.clone(),
            security: security.clone(),
            bus: config.ingest.bus.clone(),
            max_message_bytes: usize::try_from(config.broker.max_message_bytes).unwrap_or(usize::MAX),
            worker: config.broker.worker_options(),
            acked: Default::default(),
        });
        let bounds = config.consumers.clone();
        registry.register(
            "consumers",
            Arc::new(move |out: &mut Families| crate::consumers::collect(&journal, &bounds, out)),
        );
        for (name, admin) in [("consumers", false), ("consumers-admin", true)] {
            let (service, ctx) = (service.clone(), ctx.clone());
            self.spawn(name.into(), move |signal| {
                let served =
                    if admin { service.serve_admin(&ctx, &signal) } else { service.serve(&ctx, &signal) };
                served.map_err(ServeError::Service)
            })?;
        }
        self.spawn("consumers-sweep".into(), move |signal| {
            service.sweep(&signal);
            Ok(())
        })?;
        Ok(())
    }

    fn start_bridge(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        nats: &crate::bridge::NatsConfig,
        export: Option<crate::ingest::Export>,
        security: &Option<Arc<Security>>,
        registry: &Registry,
    ) -> Result<crate::service::BridgeReport, ServeError> {
        nats.check_files().map_err(crate::bridge::BridgeError::Config)?;
        let status = Arc::new(crate::bridge::BridgeStatus::default());
        let report: crate::service::BridgeReport = {
            let (status, nats, export) = (status.clone(), nats.clone(), export.clone());
            Arc::new(move || status.to_json(&nats, export.as_ref()))
        };
        {
            let (status, export) = (status.clone(), export.clone());
            registry
                .register("bridge", Arc::new(move |out: &mut Families| status.collect(export.as_ref(), out)));
        }
        let bridge = crate::bridge::Bridge {
            config: nats.clone(),
            export,
            status,
            ctx: ctx.clone(),
            taps: config.buses.iter().map(|b| b.inproc_tap()).collect(),
            security: security.clone(),
        };
        self.spawn("bridge".into(), move |signal| bridge.run(&signal).map_err(ServeError::from))?;
        Ok(report)
    }

    /// Starts each configured pipeline's threads; returns what `hub pipeline
    /// status` and `hub dlq` answer with.
    fn start_pipelines(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        export: Option<&crate::ingest::Export>,
        registry: &Registry,
    ) -> Result<Option<(crate::service::PipelineReport, Arc<crate::pipeline::dlq::Dlq>)>, ServeError> {
        if config.pipelines.is_empty() {
            return Ok(None);
        }
        let dlq = Arc::new(crate::pipeline::dlq::Dlq::open(&config.data_dir)?);
        let live = dlq.clone();
        self.storage.add(
            "dead letters",
            dlq.recovery.as_ref(),
            Some(Arc::new(move || (live.failure(), live.reopens()))),
        );
        let closed = dlq.clone();
        self.closing.push(Box::new(move || closed.close()));
        let healed = dlq.clone();
        self.spawn("dlq-store".into(), move |signal| {
            healed.heal(&signal);
            Ok(())
        })?;
        let taps: Vec<(String, String)> =
            config.buses.iter().map(|b| (b.name.clone(), b.inproc_tap())).collect();
        let journal = export.map(|e| e.journal.clone());
        let mut all = Vec::new();
        for p in &config.pipelines {
            let pipeline = crate::pipeline::Pipeline::new(p, journal.clone(), &taps, dlq.clone());
            let stats = pipeline.stats.clone();
            {
                let (stats, dlq, journal) = (stats.clone(), dlq.clone(), journal.clone());
                let collect = move |out: &mut Families| stats.collect(&dlq, journal.as_deref(), out);
                registry.register("pipeline", Arc::new(collect));
            }
            all.push(stats);
            for (name, part) in pipeline.parts(ctx) {
                self.spawn(name, move |signal| part(&signal).map_err(ServeError::Pipeline))?;
            }
        }
        let shown = dlq.clone();
        let report: crate::service::PipelineReport = Arc::new(move || {
            let pipelines: Vec<_> = all.iter().map(|s| s.to_json(&shown, journal.as_deref())).collect();
            serde_json::json!({ "pipelines": pipelines })
        });
        Ok(Some((report, dlq)))
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

/// What ingest keeps in its journal, and for whom: the bridge, the pipelines
/// fed by ingest, and the durable consumers the config declares.
fn joined_exports(config: &Config) -> crate::ingest::ExportConfig {
    let declared = crate::ingest::ExportConfig {
        prefixes: Vec::new(),
        consumers: config.declared_consumers.iter().map(|c| c.spec()).collect(),
    };
    [crate::bridge::export_config(config.bridge_nats()), crate::pipeline::export_config(&config.pipelines)]
        .into_iter()
        .flatten()
        .fold(declared, crate::ingest::ExportConfig::join)
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
