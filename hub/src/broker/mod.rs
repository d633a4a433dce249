//! The Majordomo broker: a sans-IO routing core ([`core`]) and this thin shell
//! that feeds it from one ROUTER socket.
//!
//! The shell is a plain poll loop on one thread: receive whole messages into
//! reused `zmq::Message` frames, hand them to the core, send what it says.
//! Steady-state routing allocates nothing beyond what libzmq needs.

pub mod config;
pub mod core;
pub mod counters;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use transport::frames::{recv_frames, send_frames, Received};
use transport::peer::{self, Connections};
use transport::ShutdownWatch;

use self::config::BrokerConfig;
pub use self::core::{Broker, Census, Origin, OwnedFrame, ServiceRow, Transmit};
pub use self::counters::BrokerCounters;
use crate::metrics::{Families, Registry};
use crate::security::{Security, SocketRole};

/// Messages handled per poll wake-up before timers get a look in.
const BATCH: usize = 256;

/// Where the hub's own services (state, ingest) reach the broker: in-process,
/// no I/O thread, no TCP.
pub const BROKER_INPROC: &str = "inproc://hub.broker";

/// How often the metrics snapshot for the HTTP endpoint is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// The longest the routing loop sleeps, so it sees a reload within this.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The broker's metrics and live state, as last published by its thread.
#[derive(Clone, Debug)]
pub struct BrokerSnapshot {
    pub families: Families,
    pub census: Census,
    pub services: Vec<ServiceRow>,
    /// When the routing loop published it: a stale one means a stuck loop.
    pub at: Instant,
}

pub type Snapshot = Arc<Mutex<BrokerSnapshot>>;

/// Every configured bound, as gauges.
fn collect_bounds(b: &BrokerConfig, out: &mut Families) {
    let bounds: [(&str, &'static str, u64); 15] = [
        ("queue_limit", "Requests queued per service, at most.", b.queue_limit as u64),
        ("max_queued_bytes", "Request bytes queued in all, at most.", b.max_queued_bytes as u64),
        (
            "max_queued_bytes_per_service",
            "Request bytes queued per service, at most.",
            b.max_queued_bytes_per_service as u64,
        ),
        (
            "max_queued_bytes_per_identity",
            "Request bytes one identity may have queued.",
            b.max_queued_bytes_per_identity as u64,
        ),
        (
            "max_in_flight_per_identity",
            "Requests one identity may have open.",
            b.max_in_flight_per_identity.into(),
        ),
        ("rate_per_identity", "Requests per second per identity (token bucket).", b.rate_per_identity as u64),
        ("burst_per_identity", "The per-identity token bucket's size.", b.burst_per_identity as u64),
        ("request_expiry_ms", "Queued requests older than this are dropped.", b.request_expiry_ms),
        ("max_message_bytes", "Largest frame accepted.", b.max_message_bytes as u64),
        ("max_frames", "Frames per message, at most.", b.max_frames as u64),
        ("max_services", "Services with workers known at once, at most.", b.max_services as u64),
        (
            "max_requested_services",
            "Services known only from requests, at most.",
            b.max_requested_services as u64,
        ),
        (
            "max_requested_services_per_identity",
            "Services known only from requests one identity may name.",
            b.max_requested_services_per_identity as u64,
        ),
        ("max_workers", "Workers registered at once, at most.", b.max_workers as u64),
        ("hwm", "Per-peer high-water mark, in messages.", b.hwm as u64),
    ];
    for (name, help, value) in bounds {
        out.gauge(&format!("broker_{name}"), help, vec![], value);
    }
}

impl OwnedFrame for zmq::Message {
    fn copy_from(bytes: &[u8]) -> Self {
        zmq::Message::from(bytes)
    }
}

/// Sends on the ROUTER without ever blocking the routing thread.
struct RouterTransmit<'a> {
    socket: &'a zmq::Socket,
    /// The whole hub's metrics, for `mmi.metrics`.
    registry: &'a Registry,
}

impl Transmit<zmq::Message> for RouterTransmit<'_> {
    fn send<B: Iterator<Item = zmq::Message>>(
        &mut self,
        to: &[u8],
        head: &[&[u8]],
        body: B,
    ) -> Result<(), B> {
        // With ROUTER_MANDATORY the routing frame is where libzmq says no
        // (EHOSTUNREACH: peer gone; EAGAIN: its queue is full), before any
        // part of the message is queued. After it, the rest cannot fail.
        if self.socket.send(to, zmq::SNDMORE | zmq::DONTWAIT).is_err() {
            return Err(body);
        }
        let _ = send_frames(self.socket, head, body, zmq::DONTWAIT);
        Ok(())
    }

    fn metrics(&mut self, broker: Families) -> Families {
        self.registry.collect_with("broker", &broker)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind the broker to {endpoint}: {source} (is another hub running? pick another endpoint with --broker)")]
    Bind { endpoint: String, source: zmq::Error },
    #[error("broker socket: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A bound broker, ready to run.
pub struct BrokerServer {
    socket: zmq::Socket,
    config: BrokerConfig,
    snapshot: Snapshot,
    security: Option<Arc<Security>>,
    registry: Arc<Registry>,
}

impl BrokerServer {
    /// Binds the ROUTER socket with the configured limits; a CURVE server
    /// when `security` is given (in-process peers need no handshake).
    pub fn bind(
        ctx: &zmq::Context,
        config: &BrokerConfig,
        security: Option<Arc<Security>>,
        registry: Arc<Registry>,
    ) -> Result<Self, BrokerError> {
        let socket = ctx.socket(zmq::ROUTER)?;
        if let Some(security) = &security {
            security.make_server(ctx, &socket, SocketRole::Broker, true)?;
        }
        socket.set_router_mandatory(true)?;
        let overhead = if security.is_some() { transport::curve::FRAME_OVERHEAD } else { 0 };
        socket.set_maxmsgsize(config.max_message_bytes + overhead)?;
        socket.set_sndhwm(config.hwm)?;
        socket.set_rcvhwm(config.hwm)?;
        // On shutdown, give the DISCONNECTs a moment to leave, but never hang.
        socket.set_linger(500)?;
        for endpoint in [config.endpoint.as_str(), BROKER_INPROC] {
            socket
                .bind(endpoint)
                .map_err(|source| BrokerError::Bind { endpoint: endpoint.into(), source })?;
        }
        let snapshot = Arc::new(Mutex::new(BrokerSnapshot {
            families: Families::default(),
            census: Census::default(),
            services: Vec::new(),
            at: Instant::now(),
        }));
        let published = snapshot.clone();
        registry.register(
            "broker",
            Arc::new(move |out: &mut Families| {
                out.extend(&published.lock().unwrap_or_else(|e| e.into_inner()).families)
            }),
        );
        let bounds = config.clone();
        registry.register("broker_bounds", Arc::new(move |out: &mut Families| collect_bounds(&bounds, out)));
        Ok(BrokerServer { socket, config: config.clone(), snapshot, security, registry })
    }

    /// Counters for the metrics endpoint, refreshed by the running broker.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.clone()
    }

    /// The endpoint actually bound (resolves `tcp://127.0.0.1:*`).
    pub fn endpoint(&self) -> String {
        self.socket
            .get_last_endpoint()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| self.config.endpoint.clone())
    }

    /// Routes until `shutdown` is set, then tells workers to go. Returns the final counters.
    pub fn run(self, shutdown: &ShutdownWatch) -> Result<BrokerCounters, BrokerError> {
        let mut core = Broker::new(&self.config, self.security.clone(), Instant::now());
        let mut out = RouterTransmit { socket: &self.socket, registry: &self.registry };
        let mut frames = Vec::with_capacity(16);
        let mut user_id = String::new();
        let mut connections = Connections::default();
        let mut generation = self.security.as_ref().map(|s| s.generation());
        log::info!("broker routing on {}", self.endpoint());
        let mut next_snapshot = Instant::now();
        while !shutdown.is_set() {
            let now = Instant::now();
            core.tick(now, &mut out);
            if let Some(security) = &self.security {
                if let Some(seen) = generation.filter(|&g| g != security.generation()) {
                    generation = Some(security.generation());
                    let revoked = security.revoked_since(seen);
                    let closed = connections.close_if(|id| revoked.contains(id));
                    if closed > 0 {
                        log::info!("broker: closed {closed} connection(s) of revoked identities");
                    }
                }
            }
            if now >= next_snapshot {
                let mut families = Families::default();
                core.collect(&mut families);
                if let Ok(mut snapshot) = self.snapshot.lock() {
                    *snapshot = BrokerSnapshot {
                        families,
                        census: core.census(),
                        services: core.services(),
                        at: now,
                    };
                }
                next_snapshot = now + SNAPSHOT_EVERY;
            }
            // Wake at least every second, so a reload is acted on promptly.
            let wait =
                core.next_deadline().min(next_snapshot).saturating_duration_since(now).min(RELOAD_CHECK);
            // Round up so we never wake a hair early and spin.
            let timeout = wait.as_millis() as i64 + 1;
            let mut items = [self.socket.as_poll_item(zmq::POLLIN), shutdown.poll_item()];
            match zmq::poll(&mut items, timeout) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if !items[0].is_readable() {
                continue;
            }
            let now = Instant::now();
            for _ in 0..BATCH {
                match recv_frames(&self.socket, &mut frames, self.config.max_frames, zmq::DONTWAIT) {
                    Ok(Received::Message) => {
                        // The routing id frame has no properties after a poll; the next one does.
                        let Some(first) = frames.get_mut(1) else { continue };
                        let from = peer::origin(first, &mut user_id);
                        let user_id = from.has_user_id.then_some(user_id.as_str());
                        if let (Some(fd), Some(id)) = (from.fd, user_id) {
                            connections.note(fd, id);
                        }
                        core.handle(now, Origin { user_id, remote: from.remote() }, &mut frames, &mut out)
                    }
                    Ok(Received::TooManyFrames) => core.counters_mut().too_many_frames += 1,
                    Ok(Received::WouldBlock) | Err(zmq::Error::EINTR) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        log::info!("broker stopping: telling {} worker(s) to reconnect", core.census().workers);
        core.shutdown(&mut out);
        Ok(core.counters().clone())
    }
}

#[cfg(test)]
mod core_tests;
