//! `agent run`: open the store, draw a boot epoch, start every task, run
//! until SIGINT/SIGTERM, flush.
//!
//! smol runs the many slow concurrent tasks on one thread: a sampler per
//! channel, the uplink, the live publisher, the outbox flusher and the state
//! sync. Whatever may block (driver reads, disk) runs on smol's blocking
//! pool. The Majordomo service and the local control socket are plain poll
//! loops on threads of their own. Every part that can fail is restarted
//! (`supervise`); one task turns a shutdown watch every second, so the
//! systemd watchdog sees the executor run.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::mmi::ReadyRefusal;
use transport::{AsyncClient, ClientOptions, Endpoint, Shutdown};

use crate::clock::{self, Clock};
use crate::config::{Config, ConfigError};
use crate::outbox::Outbox;
use crate::sampler::{self, Sequences, SharedDriver, Sinks};
use crate::service::{self, Channels};
use crate::state::LocalState;
use crate::status::{LinkState, Shared};
use crate::store::Store;
use crate::{control, live, uplink};
use boards::ChannelConfig;
use smol::future::FutureExt;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {source} (choose another with --data-dir)")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Open(#[from] crate::store::OpenError),
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The agent stopped while its store could not write: samples were lost.
    #[error("stopped with the store failing: {0}")]
    StoreFailing(String),
}

/// The exit status of `agent run` that stopped with its store failing (sysexits' EX_IOERR).
pub const EX_IOERR: u8 = 74;

/// Everything `run` builds before it starts the tasks; `agent once` uses the channels alone.
pub fn channels(config: &Config) -> Result<Channels, RunError> {
    let links = boards::modbus::Links::start(&config.modbus)?;
    let by_name = config
        .effective_channels()?
        .into_iter()
        .map(|c| {
            if let Some(became) = c.driver.modbus_reference() {
                log::info!("channel {}: {became}", c.name);
            }
            let driver = Arc::new(Mutex::new(c.driver.build(&config.board_root, &links)));
            (c.name.clone(), (c, driver))
        })
        .collect::<BTreeMap<_, _>>();
    Ok(Channels { by_name, links })
}

/// Runs the agent until `shutdown`. Once its stores are open and its tasks
/// start, `started` gets a function that flushes the stores (for a second
/// termination signal's last words).
pub fn run(
    local: &Config,
    shutdown: Shutdown,
    started: impl FnOnce(Box<dyn Fn() + Send + Sync>),
) -> Result<(), RunError> {
    local.validate()?;
    // The local file, with the fleet configuration applied before over it.
    let (config, fleet) = crate::fleet::follow::startup(local);
    let config = &config;
    let limits = config.limits()?;
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;
    // Before anything in the directory is touched: one agent per data directory.
    let _lock = crate::lock::lock(data_dir)?;
    let store = Arc::new(Store::open(&data_dir.join("store"), limits.cache_bytes)?);
    let epoch = crate::epoch::boot_epoch().map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot draw a boot epoch from /dev/urandom: {e}"))
    })?;
    // For `agent store status` only: epochs are drawn, never derived from this.
    store.put_u64("epoch", epoch)?;
    let outbox_dir = config.outbox_dir();
    let id = config.agent_id();
    let outbox = Arc::new(Outbox::open(&outbox_dir, config.outbox_options()?, &id).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open the outbox at {}: {e}", outbox_dir.display()))
    })?);
    migrate_legacy_outbox(&store, &outbox);
    let events_dir = config.events_dir();
    let events = Outbox::open(&events_dir, crate::alarms::outbox_options(config.outbox.max_events), &id)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open the alarm events' outbox at {}: {e}", events_dir.display()),
            )
        })?;
    // A sequence of their own, so an epoch of their own.
    let events_epoch = crate::epoch::boot_epoch()?;
    let channels = Arc::new(channels(config)?);
    let configs = channels.by_name.values().map(|(config, _)| config);
    let alarms = crate::alarms::Alarms::new(configs, Arc::new(events), events_epoch);
    let shared = Arc::new(Shared {
        id,
        epoch,
        clock: Clock::new(),
        config_toml: Mutex::new(config.redacted_toml()),
        store,
        outbox,
        alarms,
        link: Default::default(),
        channels: Default::default(),
        live_published: AtomicU64::new(0),
        live_dropped: AtomicU64::new(0),
        local_store: Default::default(),
        tasks: Default::default(),
        service: Default::default(),
        channel_set: Mutex::new(channels.clone()),
        uplink: Mutex::new(config.uplink.clone()),
        uplink_changes: AtomicU64::new(0),
        fleet: Mutex::new(fleet),
    });
    let state = LocalState::new(&shared.store, config.local_state)?;
    let reserve = shared.outbox.stats();
    log::info!(
        "agent {} (epoch {epoch}, board {}): {} channel(s), hub {}, outbox {} records / {} bytes, flush every {} ms, \
         {} bytes kept free on its disk{}",
        shared.id,
        config.board,
        channels.by_name.len(),
        config.hub.broker,
        limits.outbox_records,
        limits.outbox_bytes,
        limits.flush_interval_ms,
        reserve.min_free_bytes,
        if reserve.reserve_sized { " (5 % of it, from 256 KiB to 32 MiB)" } else { " (outbox.min_free_bytes)" }
    );
    if let Some(recovery) = &shared.store.recovery {
        log::error!("the local store was damaged: {}", recovery.describe());
    }

    let (broker, bus) = config.hub_endpoints()?;
    if broker.curve.is_some() {
        log::info!("connecting to the hub with CURVE");
    }
    let ctx = zmq::Context::new();
    let mut threads = Vec::new();
    {
        let (ctx, broker, shared, state) = (ctx.clone(), broker.clone(), shared.clone(), state.clone());
        let signal = shutdown.watch_as("mdp-service")?;
        threads.push(std::thread::Builder::new().name("mdp-service".into()).spawn(move || {
            crate::supervise::on_thread("mdp-service", &shared.tasks, &signal, || {
                service::serve(&ctx, &broker, shared.clone(), state.clone(), &signal)
            });
        })?);
    }
    if config.http.listen != "off" {
        let (http, shared) = (config.http.clone(), shared.clone());
        let signal = shutdown.watch_as("http")?;
        threads.push(std::thread::Builder::new().name("http".into()).spawn(move || {
            crate::supervise::on_thread("http", &shared.tasks, &signal, || {
                crate::http::serve(&http, shared.clone(), &signal)
            });
        })?);
    }
    {
        let (ctx, dir, shared) = (ctx.clone(), data_dir.clone(), shared.clone());
        let signal = shutdown.watch_as("control")?;
        threads.push(std::thread::Builder::new().name("control".into()).spawn(move || {
            crate::supervise::on_thread("control", &shared.tasks, &signal, || {
                control::serve(&ctx, &dir, shared.clone(), &signal)
            });
        })?);
    }

    let stop = smol::Async::new(shutdown.waiter()?)?;
    let executor = shutdown.watch_as("executor")?;
    let flush_every = Duration::from_millis(limits.flush_interval_ms.max(1));
    smol::block_on(async {
        let ex = smol::LocalExecutor::new();
        let (live_tx, live_rx) = smol::channel::bounded(1024);
        let (wake_tx, wake_rx) = smol::channel::bounded(1);
        let sinks = Arc::new(Sinks { live: live_tx, wake_uplink: wake_tx.clone() });
        let seqs = Arc::new(Sequences::default());
        let (changed_tx, changed_rx) = smol::channel::bounded(1);
        if config.fleet.enabled {
            let follower = crate::fleet::follow::Follower {
                shared: shared.clone(),
                local: local.clone(),
                boot: config.clone(),
                running: config.clone(),
                channels_changed: changed_tx,
                wake_uplink: wake_tx,
            };
            ex.spawn(follower.run(ctx.clone(), broker.clone(), config.hub_timeout())).detach();
        }
        ex.spawn({
            let (shared, ctx, bus) = (shared.clone(), ctx.clone(), bus.clone());
            async move {
                let tasks = &shared.tasks;
                crate::supervise::on_executor("live-publisher", tasks, || {
                    live::run(shared.clone(), ctx.clone(), bus.clone(), live_rx.clone())
                })
                .await
            }
        })
        .detach();
        ex.spawn(uplink::run(shared.clone(), ctx.clone(), broker.clone(), config.hub_timeout(), wake_rx))
            .detach();
        ex.spawn(flush_loop(shared.clone(), flush_every)).detach();
        ex.spawn(sync_loop(shared.clone(), ctx.clone(), broker.clone(), state.clone(), config.hub_timeout()))
            .detach();
        ex.spawn(vitals(shared.clone(), executor, ctx.clone(), broker.clone(), config.hub_timeout()))
            .detach();
        started(Box::new({
            let shared = shared.clone();
            move || {
                let _ = shared.alarms.outbox.flush();
                let outbox = shared.outbox.flush();
                let state = shared.store.flush();
                log::info!("flushed the outbox ({outbox:?}) and the local state ({state:?})");
            }
        }));
        // The samplers: one task per channel, following the channel set.
        ex.run(async {
            let mut samplers = Samplers::default();
            loop {
                samplers.follow(&ex, &shared, &seqs, &sinks);
                // A follower that ended (it never does, short of a bug) changes nothing more.
                let changed = async {
                    if changed_rx.recv().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    true
                };
                let stopping = async {
                    let _ = stop.readable().await;
                    false
                };
                if !changed.or(stopping).await {
                    break;
                }
            }
        })
        .await;
    });

    // The service thread may still be writing (a state-set during shutdown):
    // stop it before the last flush.
    for thread in threads {
        let _ = thread.join();
    }
    log::info!("agent stopping: flushing the outbox ({} records)", shared.outbox.stats().records);
    let flushed = shared.alarms.outbox.flush().and(shared.outbox.flush());
    // A store that failed and was not open again yet gets a last chance.
    if let Err(e) = shared.store.heal_now() {
        log::error!("local store: opening it again failed: {e}");
    }
    let state_flushed = shared.store.flush();
    let health =
        if shared.outbox.health().ok() { shared.alarms.outbox.health() } else { shared.outbox.health() };
    match (flushed, state_flushed, health.error) {
        (Ok(()), Ok(()), None) => Ok(()),
        (Err(e), _, _) => Err(RunError::StoreFailing(format!("the outbox's last flush failed: {e}"))),
        (_, Err(e), _) => Err(RunError::StoreFailing(format!("the local state's last flush failed: {e}"))),
        (_, _, Some(e)) => Err(RunError::StoreFailing(e)),
    }
}

/// One sampler task per channel of the set in force, by name. Dropping a
/// task stops it at its next wait, never between a sample's sequence
/// number and its append, so the durable sequence stays gapless.
#[derive(Default)]
struct Samplers {
    running: BTreeMap<String, (ChannelConfig, SharedDriver, smol::Task<()>)>,
}

impl Samplers {
    /// Stops the tasks of channels gone or changed (a new config or driver),
    /// starts those of new and changed ones, and forgets the status of channels gone.
    fn follow(
        &mut self,
        ex: &smol::LocalExecutor<'_>,
        shared: &Arc<Shared>,
        seqs: &Arc<Sequences>,
        sinks: &Arc<Sinks>,
    ) {
        let set = shared.channel_set();
        self.running.retain(|name, (config, driver, _)| {
            set.by_name.get(name).is_some_and(|(c, d)| c == config && Arc::ptr_eq(d, driver))
        });
        // After the old tasks stopped: none of them can record a removed channel again.
        shared.channels().retain(|name, _| set.by_name.contains_key(name));
        for (name, (config, driver)) in &set.by_name {
            if !self.running.contains_key(name) {
                let task = ex.spawn(sampler::run(
                    shared.clone(),
                    config.clone(),
                    driver.clone(),
                    seqs.clone(),
                    sinks.clone(),
                ));
                self.running.insert(name.clone(), (config.clone(), driver.clone(), task));
            }
        }
    }
}

/// Moves a backlog an earlier agent kept in sled into the outbox log, once.
fn migrate_legacy_outbox(store: &Store, outbox: &Outbox) {
    match store.take_legacy_outbox(|sample| outbox.append(sample)) {
        Ok((0, 0)) => {}
        Ok((moved, damaged)) => {
            log::info!("moved {moved} sample(s) from the old sled outbox to the outbox log ({damaged} damaged, dropped)");
            if let Err(e) = outbox.flush() {
                log::error!("flushing the moved samples failed: {e}");
            }
        }
        Err(e) => log::error!("cannot move the old sled outbox to the outbox log: {e} (left in sled)"),
    }
}

/// Flushes the outbox (the durability window of appended samples) and the
/// local state every interval. Failures are counted and shown in status by
/// the outbox itself; the next tick tries again. A local store that failed
/// to write is opened again here once the disk has room.
async fn flush_loop(shared: Arc<Shared>, every: Duration) {
    loop {
        smol::Timer::after(every).await;
        let s = shared.clone();
        smol::unblock(move || {
            let _ = s.alarms.outbox.flush();
            let _ = s.outbox.flush();
            if let Err(e) = s.store.heal() {
                log::error!("local store: opening it again failed: {e}");
            }
            let state =
                s.store.put_u64("last_wall_ns", clock::wall_ns().max(0) as u64).and_then(|_| s.store.flush());
            s.note_local_store(state.err().map(|e| e.to_string()));
        })
        .await;
    }
}

/// Every second: turns the executor's watch (the systemd watchdog's sign
/// that the executor runs), and says why when the hub keeps refusing this
/// agent's service (it answers every refusal with the same DISCONNECT, so
/// the agent asks it, with `mmi.refusal`).
async fn vitals(
    shared: Arc<Shared>,
    executor: transport::ShutdownWatch,
    ctx: zmq::Context,
    broker: Endpoint,
    timeout: Duration,
) {
    let mut warned = false;
    loop {
        executor.is_set();
        let refused = shared
            .service
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .map_or(0, |s| s.refused_in_a_row.load(std::sync::atomic::Ordering::Relaxed));
        if refused >= 3 && !warned {
            let service = service::service_name(&shared.id);
            let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
            let mut client = AsyncClient::new(&ctx, &broker, options);
            let answer = client.request("mmi.refusal", &[service.as_bytes()]).await;
            let why = answer.ok().and_then(|reply| reply.first().and_then(|f| ReadyRefusal::parse(f)));
            log::error!("the hub refuses {service} to this agent: {}", refusal_advice(why, &shared.id));
        }
        warned = refused >= 3;
        smol::Timer::after(Duration::from_secs(1)).await;
    }
}

/// What to do about the hub refusing this agent's service, by the reason it gave.
fn refusal_advice(why: Option<ReadyRefusal>, id: &str) -> String {
    match why {
        Some(ReadyRefusal::Duplicate) => format!(
            "another controller is serving it. Two controllers share the id '{id}' (an SD card image \
             cloned after setting `id`?): give each its own id"
        ),
        Some(ReadyRefusal::Forbidden | ReadyRefusal::Reserved) => format!(
            "this agent's key may not provide it: give the identity '{id}' the agent role in the \
             hub's [security.identities] (and check that this controller uses the key named '{id}')"
        ),
        Some(ReadyRefusal::WorkersFull) => {
            "the hub has as many workers as broker.max_workers allows: raise it, or find what \
             registers so many"
                .to_string()
        }
        Some(ReadyRefusal::ServicesFull) => {
            "the hub has as many services as broker.max_services allows: raise it, or find what \
             registers so many"
                .to_string()
        }
        None => "the hub did not say why (an older hub?): see its log and plantd_denials_total".to_string(),
    }
}

/// Pushes local state changes to the hub's state service when they exist.
async fn sync_loop(
    shared: Arc<Shared>,
    ctx: zmq::Context,
    broker: Endpoint,
    state: LocalState,
    timeout: Duration,
) {
    let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
    let mut client = AsyncClient::new(&ctx, &broker, options);
    loop {
        smol::Timer::after(Duration::from_secs(1)).await;
        if state.pending() == 0 || shared.link().state == LinkState::Down {
            continue;
        }
        match state.sync(&mut client, &shared.id).await {
            Ok(n) => log::debug!("synced {n} state key(s) to the hub"),
            Err(e) => log::debug!("state sync deferred: {e}"),
        }
    }
}
