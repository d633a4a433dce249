//! Message buses: one XSUB/XPUB proxy per bus, each a plain poll loop on its
//! own thread.
//!
//! Messages flow down (publishers → subscribers) and subscriptions flow up
//! (subscribers → publishers), so publishers only send what someone wants.
//! Each direction is counted. The XPUB drops for a subscriber whose queue is
//! full, so a slow subscriber never stalls the proxy or the others.
//!
//! Subscriptions are the proxy's to apply (the XPUB runs in manual mode):
//! only allowed ones within bounds take effect ([`subscriptions`]). With
//! security, every message down is checked against its publisher's grants.
//!
//! With a capture endpoint or a recording, the proxy subscribes to everything
//! itself, so the copy is complete even for topics nobody subscribed to.

mod recorder;
pub mod subscriptions;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use proto::bus::{self, Subscription};
use transport::frames::{recv_frames, send_frames, Received};
use transport::peer::{self, Connections};
use transport::ShutdownWatch;

use self::recorder::Recorder;
use self::subscriptions::{Conn, Ledger, Limits, Over};
use crate::config::BusConfig;
use crate::security::{Grants, Kind, Security, SocketRole};

/// Messages handled per wake-up before the other direction gets a turn.
const BATCH: usize = 512;
/// Frames in one bus message; both layouts use one or two.
const MAX_FRAMES: usize = 16;

/// Counters of one bus, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages and bytes forwarded from publishers to subscribers.
    pub messages_down: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Subscription messages forwarded from subscribers to publishers.
    pub messages_up: AtomicU64,
    pub bytes_up: AtomicU64,
    /// Messages dropped for having more than 16 frames.
    pub too_many_frames: AtomicU64,
    /// Copies the capture socket could not take.
    pub capture_dropped: AtomicU64,
    /// Messages the recording could not write.
    pub record_errors: AtomicU64,
    /// Messages dropped because the publisher may not publish their topic.
    pub publish_denied: AtomicU64,
    /// Subscriptions not applied: not allowed, or over a bound.
    pub subscribe_denied: AtomicU64,
    /// Subscriptions applied now, over all subscribers (a gauge).
    pub subscriptions: AtomicU64,
}

impl BusCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 9] {
        [
            ("messages_down", self.messages_down.load(Relaxed)),
            ("bytes_down", self.bytes_down.load(Relaxed)),
            ("messages_up", self.messages_up.load(Relaxed)),
            ("bytes_up", self.bytes_up.load(Relaxed)),
            ("too_many_frames", self.too_many_frames.load(Relaxed)),
            ("capture_dropped", self.capture_dropped.load(Relaxed)),
            ("record_errors", self.record_errors.load(Relaxed)),
            ("publish_denied", self.publish_denied.load(Relaxed)),
            ("subscribe_denied", self.subscribe_denied.load(Relaxed)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus '{bus}': cannot bind {endpoint}: {source} (is another hub running? change the bus endpoints with --bus or [[bus]])")]
    Bind { bus: String, endpoint: String, source: zmq::Error },
    #[error("bus '{bus}': cannot open the recording {path}: {source}")]
    Record { bus: String, path: std::path::PathBuf, source: std::io::Error },
    #[error("bus socket: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A bus with its sockets bound, ready to run.
pub struct Bus {
    config: BusConfig,
    frontend: zmq::Socket,
    backend: zmq::Socket,
    /// Socket monitors reporting closed publisher and subscriber connections.
    frontend_events: zmq::Socket,
    backend_events: zmq::Socket,
    capture: Option<zmq::Socket>,
    recorder: Option<Recorder>,
    counters: Arc<BusCounters>,
    security: Option<Arc<Security>>,
    ledger: Ledger,
    /// Publishers' grants by connection, read once per connection.
    publishers: HashMap<RawFd, Option<Arc<Grants>>>,
    /// The identities on each connection, to close those of revoked ones.
    connections: Connections,
    generation: Option<u64>,
    user_id: String,
}

impl Bus {
    pub fn bind(
        ctx: &zmq::Context,
        config: &BusConfig,
        security: Option<Arc<Security>>,
    ) -> Result<Bus, BusError> {
        let bind = |socket: &zmq::Socket, endpoint: &str| {
            socket.bind(endpoint).map_err(|source| BusError::Bind {
                bus: config.name.clone(),
                endpoint: endpoint.to_string(),
                source,
            })
        };
        let secure = |socket: &zmq::Socket, role: SocketRole<'_>| match &security {
            Some(security) => transport::curve::make_server(socket, &security.server, &role.domain()),
            None => Ok(()),
        };
        let name = config.name.as_str();
        let overhead = if security.is_some() { transport::curve::FRAME_OVERHEAD } else { 0 };
        let max_message_bytes = config.max_message_bytes + overhead;
        let frontend = ctx.socket(zmq::XSUB)?;
        secure(&frontend, SocketRole::BusFrontend(name))?;
        frontend.set_rcvhwm(config.hwm)?;
        frontend.set_maxmsgsize(max_message_bytes)?;
        frontend.set_linger(0)?;
        let frontend_events = monitor(ctx, &frontend, &format!("inproc://bus.{name}.frontend.events"))?;
        bind(&frontend, &config.frontend)?;
        bind(&frontend, &config.inproc_frontend())?;

        let mut backend = ctx.socket(zmq::XPUB)?;
        secure(&backend, SocketRole::BusBackend(name))?;
        backend.set_sndhwm(config.hwm)?;
        // Subscribers send only subscriptions: they are never large.
        backend.set_maxmsgsize(max_message_bytes)?;
        backend.set_linger(0)?;
        transport::socket::set_xpub_manual(&mut backend)?;
        let backend_events = monitor(ctx, &backend, &format!("inproc://bus.{name}.backend.events"))?;
        bind(&backend, &config.backend)?;

        let capture = match &config.capture {
            Some(endpoint) => {
                let socket = ctx.socket(zmq::PUB)?;
                secure(&socket, SocketRole::Capture(name))?;
                socket.set_sndhwm(config.hwm)?;
                socket.set_maxmsgsize(max_message_bytes)?;
                socket.set_linger(0)?;
                bind(&socket, endpoint)?;
                Some(socket)
            }
            None => None,
        };
        let recorder = match &config.record {
            Some(record) => Some(Recorder::open(record).map_err(|source| BusError::Record {
                bus: config.name.clone(),
                path: record.path.clone(),
                source,
            })?),
            None => None,
        };
        let limits = Limits {
            per_connection: config.max_subscriptions,
            prefix_bytes: config.max_subscription_bytes,
            total: config.max_total_subscriptions,
        };
        let mut ledger = Ledger::new(limits);
        if (capture.is_some() || recorder.is_some()) && ledger.subscribe(Conn::Local, b"") == Ok(true) {
            // Subscribe to everything so the copy misses nothing.
            frontend.send(&b"\x01"[..], 0)?;
        }
        Ok(Bus {
            config: config.clone(),
            frontend,
            backend,
            frontend_events,
            backend_events,
            capture,
            recorder,
            counters: Arc::default(),
            generation: security.as_ref().map(|s| s.generation()),
            security,
            ledger,
            publishers: HashMap::new(),
            connections: Connections::default(),
            user_id: String::new(),
        })
    }

    pub fn counters(&self) -> Arc<BusCounters> {
        self.counters.clone()
    }

    /// Who really listens on this bus (the ingest service's gate).
    pub fn subscribers(&self) -> subscriptions::Subscribers {
        self.ledger.subscribers()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Forwards both ways until `shutdown` is set.
    pub fn run(mut self, shutdown: &ShutdownWatch) -> Result<(), BusError> {
        log::info!(
            "bus '{}': publishers → {}, subscribers → {}",
            self.config.name,
            self.config.frontend,
            self.config.backend
        );
        let mut frames = Vec::with_capacity(4);
        while !shutdown.is_set() {
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
                self.frontend_events.as_poll_item(zmq::POLLIN),
                self.backend_events.as_poll_item(zmq::POLLIN),
                shutdown.poll_item(),
            ];
            // Wake at least once a second to flush the recording and see reloads.
            match zmq::poll(&mut items, 1000) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = items.iter().take(4).map(|i| i.is_readable()).collect();
            self.check_reload();
            if ready[2] {
                for fd in closed_connections(&self.frontend_events)? {
                    self.publishers.remove(&fd);
                }
            }
            if ready[3] {
                for fd in closed_connections(&self.backend_events)? {
                    for prefix in self.ledger.closed(fd) {
                        self.send_up(false, &prefix)?;
                    }
                }
                self.counters.subscriptions.store(self.ledger.total() as u64, Relaxed);
            }
            if ready[0] {
                self.forward_down(&mut frames)?;
            }
            if ready[1] {
                self.forward_up(&mut frames)?;
            }
            if let Some(recorder) = &mut self.recorder {
                if recorder.flush_if_due().is_err() {
                    self.counters.record_errors.fetch_add(1, Relaxed);
                }
            }
        }
        if let Some(recorder) = &mut self.recorder {
            let _ = recorder.flush();
        }
        Ok(())
    }

    /// After a reload: forget cached grants, and close the connections of
    /// identities no longer allowed.
    fn check_reload(&mut self) {
        let Some(security) = &self.security else { return };
        if self.generation == Some(security.generation()) {
            return;
        }
        self.generation = Some(security.generation());
        self.publishers.clear();
        let allow = security.allow_list();
        let closed = self.connections.close_unless(|id| allow.contains_identity(id));
        if closed > 0 {
            log::info!("bus '{}': closed {closed} connection(s) of removed identities", self.config.name);
        }
    }

    /// The grants of whoever sent `first` (a frame of a message from the
    /// frontend or backend); `None` means anything goes (security off, or
    /// the hub itself), `Some(None)` that the sender has no identity.
    fn sender_grants(&mut self, first: &mut zmq::Message) -> Option<Option<Arc<Grants>>> {
        let security = self.security.as_ref()?;
        let origin = peer::origin(first, &mut self.user_id);
        let fd = origin.fd?;
        if let Some(cached) = self.publishers.get(&fd) {
            return Some(cached.clone());
        }
        let grants = origin.has_user_id.then(|| {
            self.connections.note(fd, &self.user_id);
            security.grants(&self.user_id)
        });
        self.publishers.insert(fd, grants.clone());
        Some(grants)
    }

    fn forward_down(&mut self, frames: &mut Vec<zmq::Message>) -> Result<(), BusError> {
        // Counted per batch: one atomic add per batch, not per message.
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut result = Ok(());
        for _ in 0..BATCH {
            match recv_frames(&self.frontend, frames, MAX_FRAMES, zmq::DONTWAIT) {
                Ok(Received::WouldBlock) => break,
                Ok(Received::TooManyFrames) => {
                    self.counters.too_many_frames.fetch_add(1, Relaxed);
                    continue;
                }
                Ok(Received::Message) => {}
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
            if let Some(grants) = self.sender_grants(&mut frames[0]) {
                let topic = bus::split(frames).map_or(&[][..], |(topic, _)| topic);
                if !grants.as_ref().is_some_and(|g| g.may_publish(&self.config.name, topic)) {
                    self.deny(Kind::Publish, &self.counters.publish_denied, || {
                        format!("publish {} on bus {}", String::from_utf8_lossy(topic), self.config.name)
                    });
                    continue;
                }
            }
            messages += 1;
            bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            if let Some(capture) = &self.capture {
                let copy = frames.iter().map(|f| zmq::Message::from(&f[..]));
                if send_frames(capture, &[], copy, zmq::DONTWAIT).is_err() {
                    self.counters.capture_dropped.fetch_add(1, Relaxed);
                }
            }
            if let Some(recorder) = &mut self.recorder {
                if recorder.record(frames).is_err() {
                    self.counters.record_errors.fetch_add(1, Relaxed);
                }
            }
            // XPUB never blocks: it drops for subscribers whose queue is full.
            let _ = send_frames(&self.backend, &[], frames.drain(..), zmq::DONTWAIT);
        }
        self.counters.messages_down.fetch_add(messages, Relaxed);
        self.counters.bytes_down.fetch_add(bytes, Relaxed);
        result
    }

    /// Subscriptions from subscribers: applied (manual mode) and passed up to
    /// the publishers only when allowed and within bounds.
    fn forward_up(&mut self, frames: &mut Vec<zmq::Message>) -> Result<(), BusError> {
        for _ in 0..BATCH {
            match recv_frames(&self.backend, frames, MAX_FRAMES, zmq::DONTWAIT)? {
                Received::WouldBlock => break,
                Received::TooManyFrames => continue,
                Received::Message => {}
            }
            let bytes: usize = frames.iter().map(|f| f.len()).sum();
            self.counters.messages_up.fetch_add(1, Relaxed);
            self.counters.bytes_up.fetch_add(bytes as u64, Relaxed);
            let Some(subscription) = Subscription::parse(&frames[0]).map(owned) else { continue };
            let origin = peer::origin(&mut frames[0], &mut self.user_id);
            let conn = origin.fd.map_or(Conn::Local, Conn::Tcp);
            match subscription {
                (true, prefix) => self.subscribe(conn, &mut frames[0], &prefix)?,
                (false, prefix) => {
                    // Unsubscriptions libzmq makes for a closed connection
                    // come from no connection: the monitor handles those.
                    if let Some(gone_upstream) = self.ledger.unsubscribe(conn, &prefix) {
                        self.backend.set_unsubscribe(&prefix)?;
                        if gone_upstream {
                            self.send_up(false, &prefix)?;
                        }
                    }
                }
            }
        }
        self.counters.subscriptions.store(self.ledger.total() as u64, Relaxed);
        Ok(())
    }

    fn subscribe(&mut self, conn: Conn, first: &mut zmq::Message, prefix: &[u8]) -> Result<(), BusError> {
        if conn != Conn::Local {
            if let Some(grants) = self.sender_grants(first) {
                if !grants.as_ref().is_some_and(|g| g.may_subscribe(&self.config.name, prefix)) {
                    self.deny(Kind::Subscribe, &self.counters.subscribe_denied, || {
                        format!(
                            "subscribe to '{}' on bus {}",
                            String::from_utf8_lossy(prefix),
                            self.config.name
                        )
                    });
                    return Ok(());
                }
            }
        }
        match self.ledger.subscribe(conn, prefix) {
            Ok(new_upstream) => {
                // Manual mode: this applies it to the connection it came on.
                self.backend.set_subscribe(prefix)?;
                if new_upstream {
                    self.send_up(true, prefix)?;
                }
            }
            Err(over) => {
                let (bus, limit) = (
                    &self.config.name,
                    match over {
                        Over::Count => format!("{} per connection", self.config.max_subscriptions),
                        Over::Length => format!("{} bytes per prefix", self.config.max_subscription_bytes),
                        Over::Total => format!("{} on the bus", self.config.max_total_subscriptions),
                    },
                );
                self.deny(Kind::Subscribe, &self.counters.subscribe_denied, || {
                    format!("a subscription on bus {bus} over the bound of {limit}")
                });
            }
        }
        Ok(())
    }

    /// Sends a subscription (or unsubscription) up to the publishers.
    fn send_up(&self, subscribe: bool, prefix: &[u8]) -> Result<(), BusError> {
        let mut message = Vec::with_capacity(prefix.len() + 1);
        message.push(u8::from(subscribe));
        message.extend_from_slice(prefix);
        self.frontend.send(message, 0)?;
        Ok(())
    }

    /// Counts a refusal on `counter` and, with security, per identity.
    fn deny(&self, kind: Kind, counter: &AtomicU64, detail: impl FnOnce() -> String) {
        counter.fetch_add(1, Relaxed);
        if let Some(security) = &self.security {
            let who = if self.user_id.is_empty() { crate::security::denials::UNKNOWN } else { &self.user_id };
            security.denials.record(who, kind, detail);
        }
    }
}

fn owned(subscription: Subscription<'_>) -> (bool, Vec<u8>) {
    match subscription {
        Subscription::Subscribe(prefix) => (true, prefix.to_vec()),
        Subscription::Unsubscribe(prefix) => (false, prefix.to_vec()),
    }
}

/// Watches `socket` for closed connections, on an in-process pair.
fn monitor(ctx: &zmq::Context, socket: &zmq::Socket, endpoint: &str) -> zmq::Result<zmq::Socket> {
    socket.monitor(endpoint, zmq::SocketEvent::DISCONNECTED as i32)?;
    let events = ctx.socket(zmq::PAIR)?;
    events.connect(endpoint)?;
    Ok(events)
}

/// The descriptors of the connections the monitor reports closed.
fn closed_connections(events: &zmq::Socket) -> Result<Vec<RawFd>, BusError> {
    let mut closed = Vec::new();
    while let Ok(event) = events.recv_multipart(zmq::DONTWAIT) {
        // Frame 1: the event (u16) and its value (u32, here the descriptor), little-endian.
        if let Some(value) = event.first().and_then(|f| f.get(2..6)) {
            closed.push(i32::from_le_bytes(value.try_into().expect("4 bytes")));
        }
    }
    Ok(closed)
}
