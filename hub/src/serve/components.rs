//! Starting each of the hub's components: a method per component on the
//! [`Hub`] being started, each given the ZeroMQ context and the config and
//! finding the security, the metrics registry and the stores' health on
//! the hub. [`Hub::start`] calls them in order.

use std::collections::HashMap;
use std::sync::Arc;

use transport::Shutdown;

use super::{control, Hub, ServeError};
use crate::broker::BrokerServer;
use crate::bus::subscriptions::Subscribers;
use crate::bus::Bus;
use crate::config::Config;
use crate::http::web::{Feeds, Watcher};
use crate::http::{HttpServer, Sources};
use crate::ingest::IngestService;
use crate::metrics::Families;
use crate::security::zap::ZapHandler;
use crate::state::StateService;
use crate::storage::Live;

/// What the hub's own service reports on, from the components started before it.
pub(super) struct Reports {
    pub(super) bridge: Option<crate::service::BridgeReport>,
    pub(super) pipelines: Option<(crate::service::PipelineReport, Arc<crate::pipeline::dlq::Dlq>)>,
    pub(super) sparkplug: Option<crate::service::BridgeReport>,
}

/// What the buses give the components started after them.
#[derive(Default)]
pub(super) struct Buses {
    /// Each bus's counters, by name, for the web view.
    pub(super) counters: Vec<(String, Arc<crate::bus::BusCounters>)>,
    /// Each bus's real subscribers, by name: ingest's gate.
    pub(super) listeners: HashMap<String, Subscribers>,
}

impl Hub {
    /// The ZAP handler, on its own thread (with security).
    pub(super) fn start_zap(&mut self, ctx: &zmq::Context) -> Result<(), ServeError> {
        let Some(security) = &self.security else { return Ok(()) };
        let zap = ZapHandler::bind(ctx, security.clone()).map_err(ServeError::Zap)?;
        let stop = Shutdown::new();
        let watch = stop.watch().map_err(ServeError::Thread)?;
        // A failing handler stops the hub: without one libzmq would admit any key.
        let hub_shutdown = self.shutdown.clone();
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
        self.zap = Some((stop, thread));
        Ok(())
    }

    /// Each bus's proxy on its own thread.
    pub(super) fn start_buses(&mut self, ctx: &zmq::Context, config: &Config) -> Result<Buses, ServeError> {
        let mut buses = Buses::default();
        for bus_config in &config.buses {
            let bus = Bus::bind(ctx, bus_config, self.security.clone())?;
            let (counters, bounds) = (bus.counters(), bus_config.clone());
            self.registry.register(
                "bus",
                Arc::new(move |out: &mut Families| crate::bus::collect(&bounds, &counters, out)),
            );
            buses.counters.push((bus.name().to_string(), bus.counters()));
            buses.listeners.insert(bus.name().to_string(), bus.subscribers());
            self.spawn(format!("bus-{}", bus_config.name), move |signal| {
                bus.run(&signal).map_err(ServeError::from)
            })?;
        }
        Ok(buses)
    }

    /// The broker, and (with security) the watch counting failed handshakes;
    /// returns the broker's view for the HTTP endpoint.
    pub(super) fn start_broker(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
    ) -> Result<crate::broker::Snapshot, ServeError> {
        let broker = BrokerServer::bind(ctx, &config.broker, self.security.clone(), self.registry.clone())?;
        self.broker_endpoint = broker.endpoint();
        let snapshot = broker.snapshot();
        self.spawn("broker".into(), move |signal| broker.run(&signal).map(|_| ()).map_err(ServeError::from))?;
        if let Some(security) = self.security.clone() {
            // Every CURVE socket is bound: their failed handshakes are counted here.
            let watch = security.take_watch();
            self.spawn("handshakes".into(), move |signal| {
                watch.run(&security, &signal).map_err(ServeError::Zap)
            })?;
        }
        Ok(snapshot)
    }

    /// The state service's workers, its flusher and its store's healer.
    pub(super) fn start_state(&mut self, ctx: &zmq::Context, config: &Config) -> Result<(), ServeError> {
        if !config.state.enabled {
            return Ok(());
        }
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
            self.security.clone(),
        )?;
        let live = state.store();
        let live: Live = Arc::new(move || (live.failure(), live.reopens()));
        self.storage.add("state", state.store().recovery(), Some(live));
        self.state_store = Some(state.store());
        let store = state.store();
        self.closing.push(Box::new(move || store.close()));
        let (store, bounds) = (state.store(), state_config.clone());
        self.registry.register(
            "state",
            Arc::new(move |out: &mut Families| crate::state::collect(&bounds, &store, out)),
        );
        for i in 0..config.state.workers {
            let (state, ctx) = (state.clone(), ctx.clone());
            self.spawn(format!("state-{i}"), move |signal| {
                state.serve(&ctx, &signal).map_err(ServeError::from)
            })?;
        }
        let store = state.store();
        self.spawn("state-flush".into(), move |signal| state.flush_loop(&signal).map_err(ServeError::from))?;
        self.spawn("state-store".into(), move |signal| {
            store.heal(&signal);
            Ok(())
        })?;
        Ok(())
    }

    /// Ingest's workers and its store's healer; returns the service (for
    /// its journal, counters and agents) when ingest is enabled.
    pub(super) fn start_ingest(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        listeners: &HashMap<String, Subscribers>,
    ) -> Result<Option<IngestService>, ServeError> {
        if !config.ingest.enabled {
            return Ok(None);
        }
        let names: Vec<&str> = config.buses.iter().map(|b| b.name.as_str()).collect();
        let outlet = |name: &str| {
            let bus =
                config.buses.iter().find(|b| b.name == name).expect("validated: the ingest buses exist");
            let listeners = listeners.get(name).cloned().unwrap_or_default();
            crate::ingest::Outlet { frontend: bus.inproc_frontend(), listeners }
        };
        let outlets = (outlet(&config.ingest.bus), outlet(config.ingest.event_bus(&names)));
        let worker = config.broker.worker_options();
        let ingest = IngestService::open(
            &config.data_dir,
            &config.ingest,
            outlets,
            worker,
            self.security.clone(),
            joined_exports(config),
        )?;
        let store = ingest.store();
        let (live, failing) = (store.clone(), ingest.counters());
        let live: Live = Arc::new(move || {
            let why = failing.failing.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (why, live.reopens())
        });
        self.storage.add("ingest", store.recovery(), Some(live));
        let reopens = store.clone();
        self.registry.register(
            "ingest_store",
            Arc::new(move |out: &mut Families| {
                let help = "Times ingest's store was opened again after a storage failure.";
                out.counter("ingest_store_reopens", help, vec![], reopens.reopens());
            }),
        );
        self.spawn("ingest-store".into(), move |signal| {
            store.heal(&signal);
            Ok(())
        })?;
        let (counters, agents, bounds) = (ingest.counters(), ingest.agents(), config.ingest.clone());
        self.registry.register(
            "ingest",
            Arc::new(move |out: &mut Families| crate::ingest::collect(&bounds, &counters, &agents, out)),
        );
        // As many for batches sent in flight (their own service: see proto::ingest::ORDERED_SERVICE).
        for i in 0..config.ingest.workers {
            for (name, service) in
                [("ingest", proto::ingest::SERVICE), ("ingest-ordered", proto::ingest::ORDERED_SERVICE)]
            {
                let (ingest, ctx) = (ingest.clone(), ctx.clone());
                self.spawn(format!("{name}-{i}"), move |signal| {
                    ingest.serve(&ctx, &signal, service).map_err(ServeError::from)
                })?;
            }
        }
        Ok(Some(ingest))
    }

    /// The fleet configuration services (agents' polls, operators' commands).
    pub(super) fn start_fleet(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
    ) -> Result<Option<Arc<crate::fleet::Fleet>>, ServeError> {
        if !config.fleet.enabled {
            return Ok(None);
        }
        let fleet =
            Arc::new(crate::fleet::Fleet::open(&config.data_dir, &config.fleet, self.security.clone())?);
        let metrics = fleet.clone();
        self.registry.register("fleet", Arc::new(move |out: &mut Families| metrics.collect(out)));
        for (name, service) in
            [("fleet", proto::fleet::SERVICE), ("fleet-admin", proto::fleet::ADMIN_SERVICE)]
        {
            let (fleet, ctx, worker) = (fleet.clone(), ctx.clone(), config.broker.worker_options());
            self.spawn(name.into(), move |signal| {
                fleet.serve(service, &ctx, worker, &signal).map_err(ServeError::Service)
            })?;
        }
        Ok(Some(fleet))
    }

    /// The hub's own services: `org.plantd.Hub`, the dead letters' (with
    /// pipelines), and the local control socket.
    pub(super) fn start_services(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        agents: Option<Arc<crate::ingest::agents::Agents>>,
        reports: Reports,
    ) -> Result<(), ServeError> {
        let Reports { bridge, pipelines, sparkplug } = reports;
        let secure = self.security.is_some();
        let (pipelines, dlq) = pipelines.unzip();
        if let Some(dlq) = dlq {
            let service = crate::service::DlqService { dlq, worker: config.broker.worker_options(), secure };
            let ctx = ctx.clone();
            self.spawn("dlq-service".into(), move |signal| {
                service.serve(&ctx, &signal).map_err(ServeError::Service)
            })?;
        }
        let service = crate::service::HubService {
            agents,
            storage: self.storage.clone(),
            bridge,
            pipelines,
            sparkplug,
            worker: config.broker.worker_options(),
            secure,
        };
        let ctx2 = ctx.clone();
        self.spawn("hub-service".into(), move |signal| {
            service.serve(&ctx2, &signal).map_err(ServeError::Service)
        })?;
        let (security, data_dir, ctx) = (self.security.clone(), config.data_dir.clone(), ctx.clone());
        self.spawn("control".into(), move |stop| {
            transport::control::serve(&ctx, &data_dir, &stop, |request| control(security.as_deref(), request))
                .map_err(ServeError::Control)
        })
    }

    /// The HTTP endpoint (health, metrics, the web view) and the watcher
    /// that feeds the web view's live panes.
    pub(super) fn start_http(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        bus_counters: Vec<(String, Arc<crate::bus::BusCounters>)>,
        broker: crate::broker::Snapshot,
        ingest: Option<(Arc<crate::ingest::IngestCounters>, Arc<crate::ingest::agents::Agents>)>,
        export: Option<crate::journal::Export>,
    ) -> Result<(), ServeError> {
        let feeds = Feeds::new(bus_counters);
        let tap_of = |name: &str| config.buses.iter().find(|b| b.name == name).map(|b| b.inproc_tap());
        let watcher = Watcher::new(feeds.clone(), tap_of(&config.state.bus), tap_of(&config.ingest.bus));
        let ctx = ctx.clone();
        self.spawn("web-watcher".into(), move |signal| {
            watcher.run(&ctx, &signal).map_err(|e| ServeError::Web(e.to_string()))
        })?;
        let sources = Sources {
            state_flush: std::time::Duration::from_millis(config.state.flush_interval_ms),
            registry: self.registry.clone(),
            broker,
            shutdown: self.shutdown.clone(),
            state: self.state_store.clone(),
            ingest,
            journal: export.map(|e| e.journal),
            storage: self.storage.clone(),
            security: self.security.clone(),
            web: feeds,
        };
        let http = HttpServer::bind(&config.http, sources)?;
        self.http_address = Some(http.address());
        self.spawn("http".into(), move |signal| http.run(&signal).map_err(|e| ServeError::Web(e.to_string())))
    }

    /// Starts the NATS bridge on its own thread; returns what `hub bridge
    /// status` shows.
    /// Durable consumers' services over ingest's journal, and their sweeper.
    pub(super) fn start_consumers(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        journal: Arc<crate::journal::Journal>,
    ) -> Result<(), ServeError> {
        let service = Arc::new(crate::consumers::ConsumerService {
            journal: journal.clone(),
            config: config.consumers.clone(),
            security: self.security.clone(),
            bus: config.ingest.bus.clone(),
            max_message_bytes: usize::try_from(config.broker.max_message_bytes).unwrap_or(usize::MAX),
            worker: config.broker.worker_options(),
            acked: Default::default(),
        });
        let bounds = config.consumers.clone();
        self.registry.register(
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

    pub(super) fn start_bridge(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        nats: &crate::bridge::NatsConfig,
        export: Option<crate::journal::Export>,
    ) -> Result<crate::service::BridgeReport, ServeError> {
        nats.check_files().map_err(crate::bridge::BridgeError::Config)?;
        let status = Arc::new(crate::bridge::BridgeStatus::default());
        let report: crate::service::BridgeReport = {
            let (status, nats, export) = (status.clone(), nats.clone(), export.clone());
            Arc::new(move || status.to_json(&nats, export.as_ref()))
        };
        {
            let (status, export) = (status.clone(), export.clone());
            self.registry
                .register("bridge", Arc::new(move |out: &mut Families| status.collect(export.as_ref(), out)));
        }
        let bridge = crate::bridge::Bridge {
            config: nats.clone(),
            export,
            status,
            ctx: ctx.clone(),
            taps: config.buses.iter().map(|b| b.inproc_tap()).collect(),
            security: self.security.clone(),
        };
        self.spawn("bridge".into(), move |signal| bridge.run(&signal).map_err(ServeError::from))?;
        Ok(report)
    }

    /// The Sparkplug B edge node, on its own thread; returns what `hub sparkplug status` answers.
    pub(super) fn start_sparkplug(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        export: crate::journal::Export,
        agents: Option<Arc<crate::ingest::agents::Agents>>,
    ) -> Result<Option<crate::service::BridgeReport>, ServeError> {
        let Some(sparkplug) = &config.sparkplug else { return Ok(None) };
        sparkplug.check_files().map_err(ServeError::Sparkplug)?;
        let status = Arc::new(crate::sparkplug::Status::default());
        let report: crate::service::BridgeReport = {
            let (status, sparkplug, export) = (status.clone(), sparkplug.clone(), export.clone());
            Arc::new(move || status.to_json(&sparkplug, Some(&export)))
        };
        {
            let (status, export) = (status.clone(), export.clone());
            self.registry.register(
                "sparkplug",
                Arc::new(move |out: &mut Families| status.collect(Some(&export), out)),
            );
        }
        let node = crate::sparkplug::client::Sparkplug {
            config: sparkplug.clone(),
            export,
            status,
            ctx: ctx.clone(),
            security: self.security.clone(),
            agents,
            data_dir: config.data_dir.clone(),
            tap: config
                .buses
                .iter()
                .find(|b| b.name == config.ingest.bus)
                .expect("validated: ingest's bus exists")
                .inproc_tap(),
            started: std::time::Instant::now(),
            writes: None,
        };
        self.spawn("sparkplug".into(), move |signal| node.run(&signal).map_err(ServeError::Sparkplug))?;
        Ok(Some(report))
    }

    /// Starts each configured pipeline's threads; returns what `hub pipeline
    /// status` and `hub dlq` answer with.
    pub(super) fn start_pipelines(
        &mut self,
        ctx: &zmq::Context,
        config: &Config,
        export: Option<&crate::journal::Export>,
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
                self.registry.register("pipeline", Arc::new(collect));
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
}

/// What ingest keeps in its journal, and for whom: the bridge, the pipelines
/// fed by ingest, and the durable consumers the config declares.
fn joined_exports(config: &Config) -> crate::journal::ExportConfig {
    let declared = crate::journal::ExportConfig {
        prefixes: Vec::new(),
        consumers: config.declared_consumers.iter().map(|c| c.spec()).collect(),
    };
    [
        crate::bridge::export_config(config.bridge_nats()),
        crate::pipeline::export_config(&config.pipelines),
        crate::sparkplug::export_config(config.sparkplug.as_ref()),
    ]
    .into_iter()
    .flatten()
    .fold(declared, crate::journal::ExportConfig::join)
}
