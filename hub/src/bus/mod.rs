//! Message buses: one XSUB/XPUB proxy per bus, each a plain poll loop on its
//! own thread.
//!
//! Messages flow down, from publishers to subscribers. Subscriptions stop at
//! the hub: while anyone subscribes at all, the proxy asks every publisher
//! for everything (one subscription to the empty prefix), and libzmq's XPUB
//! filters for each subscriber at the hub, as a broker should. So no
//! subscriber can cost a publisher (an agent) a byte of memory, and with
//! nobody listening, publishers send nothing over their links. What each
//! subscriber may hold at the hub is bounded ([`subscriptions`],
//! [`upstream`]); with security, every message down is checked against its
//! publisher's grants.
//!
//! With a capture endpoint or a recording, the proxy subscribes to everything
//! itself, so the copy is complete even for topics nobody subscribed to.
//!
//! The hub's own views (the web view) subscribe on an in-process tap, an
//! XPUB fed only while something subscribes there; their subscriptions are
//! the proxy's own, and no real subscriber for the ingest gate.

mod claims;
pub mod config;
mod monitor;
pub(crate) mod recorder;
pub mod subscriptions;
mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use proto::bus;
use transport::frames::{recv_frames, send_frames, Received};
use transport::peer::{self, Connections, Origin};
use transport::ShutdownWatch;

use self::config::BusConfig;
use self::monitor::{closed_connections, monitor};
use self::recorder::Recorder;
use self::subscriptions::{Conn, Ledger, Limits};
use self::upstream::Mode;
use crate::security::{Grants, Kind, Security, Sender, SocketRole};

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
    /// Subscription messages read from subscribers.
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
    /// Messages from subscribers that were not a subscription (the sender is
    /// disconnected: a SUB never sends one).
    pub malformed_up: AtomicU64,
    /// Subscriber connections closed by the proxy (refused, malformed, or
    /// asked to subscribe again; see `upstream`).
    pub subscribers_closed: AtomicU64,
    /// Subscriptions applied now, over all subscribers (a gauge).
    pub subscriptions: AtomicU64,
    /// Their prefixes' bytes (a gauge): what libzmq's filter holds grows with them.
    pub subscription_bytes: AtomicU64,
}

impl BusCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 11] {
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
            ("malformed_up", self.malformed_up.load(Relaxed)),
            ("subscribers_closed", self.subscribers_closed.load(Relaxed)),
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
    /// The backend's ZAP domain, for holding identities off it.
    backend_domain: String,
    /// The backend's monitor, reporting closed subscriber connections.
    backend_events: zmq::Socket,
    /// The frontend's monitor: closed publisher connections (and failed handshakes).
    frontend_events: zmq::Socket,
    /// How the backend applies subscriptions (libzmq's version decides).
    mode: Mode,
    /// An XPUB, so the proxy learns who connects (and can close them).
    capture: Option<zmq::Socket>,
    /// The in-process tap, and how many subscriptions it holds.
    tap: zmq::Socket,
    tap_holds: usize,
    /// Whether publishers are asked for everything (someone listens).
    upstream: bool,
    /// When the heap was last given back to the system, and whether a
    /// subscriber has left since (see [`Bus::give_back_memory`]).
    trimmed_at: std::time::Instant,
    left_since_trim: bool,
    /// Connections reported closed while their descriptor was still open
    /// (libzmq reports first), looked at again until they are gone.
    closing: Vec<(transport::peer::ConnId, std::time::Instant)>,
    recorder: Option<Recorder>,
    counters: Arc<BusCounters>,
    security: Option<Arc<Security>>,
    ledger: Ledger,
    /// Grants by identity, read once per identity and reload.
    grants: GrantCache,
    /// The identities on each connection, to close those of revoked ones.
    connections: Connections,
    generation: Option<u64>,
    user_id: String,
}

/// Grants by identity (bounded: only allow-listed identities get in).
#[derive(Default)]
struct GrantCache(HashMap<String, Arc<Grants>>);

impl GrantCache {
    fn get(&mut self, security: &Security, identity: &str) -> &Grants {
        if !self.0.contains_key(identity) {
            self.0.insert(identity.to_string(), security.grants(identity));
        }
        &self.0[identity]
    }
}

/// Whether the sender of a message (its `origin`, and `user_id` as read
/// with it) passes `check`. Without security, or for the hub's own
/// in-process peers, anything goes.
fn permitted(
    security: Option<&Security>,
    grants: &mut GrantCache,
    origin: Origin,
    user_id: &str,
    check: impl FnOnce(&Grants) -> bool,
) -> bool {
    let Some(security) = security else { return true };
    match Sender::of(true, origin.has_user_id.then_some(user_id), origin.remote()) {
        Sender::Anyone | Sender::Hub => true,
        Sender::Identity(id) => check(grants.get(security, id)),
        Sender::Unauthenticated => false,
    }
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
        // The frontend's and backend's own monitors report their failed
        // handshakes (a socket has one monitor): the bus reads them, for the
        // connections they close too.
        let secure = |socket: &zmq::Socket, role: SocketRole<'_>| match &security {
            Some(security) => {
                let watch = !matches!(role, SocketRole::BusBackend(_) | SocketRole::BusFrontend(_));
                security.make_server(ctx, socket, role, watch)
            }
            None => Ok(()),
        };
        let name = config.name.as_str();
        let overhead = if security.is_some() { transport::curve::FRAME_OVERHEAD } else { 0 };
        let frontend = ctx.socket(zmq::XSUB)?;
        secure(&frontend, SocketRole::BusFrontend(name))?;
        frontend.set_rcvhwm(config.hwm)?;
        frontend.set_maxmsgsize(config.max_message_bytes + overhead)?;
        frontend.set_linger(0)?;
        let frontend_events = monitor(ctx, &frontend, &format!("inproc://bus.{name}.frontend.events"))?;
        bind(&frontend, &config.frontend)?;
        bind(&frontend, &config.inproc_frontend())?;

        // Subscribers send only subscriptions: a larger message is an attack,
        // and libzmq drops its sender.
        let max_subscription_message = (config.max_subscription_bytes + 1) as i64 + overhead;
        let mut backend = ctx.socket(zmq::XPUB)?;
        secure(&backend, SocketRole::BusBackend(name))?;
        backend.set_sndhwm(config.hwm)?;
        // How many subscriptions libzmq reads off one connection before the
        // proxy has checked them (see `upstream`).
        backend.set_rcvhwm(config.max_unread_subscriptions)?;
        backend.set_maxmsgsize(max_subscription_message)?;
        backend.set_linger(0)?;
        let mode = Mode::set_up(&mut backend)?;
        let backend_events = monitor(ctx, &backend, &format!("inproc://bus.{name}.backend.events"))?;
        bind(&backend, &config.backend)?;

        let capture = match &config.capture {
            Some(endpoint) => {
                let mut socket = ctx.socket(zmq::XPUB)?;
                secure(&socket, SocketRole::Capture(name))?;
                socket.set_sndhwm(config.hwm)?;
                socket.set_rcvhwm(config.max_unread_subscriptions)?;
                socket.set_maxmsgsize(max_subscription_message)?;
                socket.set_linger(0)?;
                // Every subscription comes to the proxy: it notes who is connected.
                socket.set_xpub_verbose(true)?;
                transport::socket::set_xpub_verboser(&mut socket)?;
                bind(&socket, endpoint)?;
                Some(socket)
            }
            None => None,
        };
        let mut tap = ctx.socket(zmq::XPUB)?;
        tap.set_sndhwm(config.hwm)?;
        tap.set_linger(0)?;
        tap.set_xpub_verbose(true)?;
        transport::socket::set_xpub_verboser(&mut tap)?;
        tap.bind(&config.inproc_tap())?;
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
            total_bytes: config.max_total_subscription_bytes,
            per_identity: config.max_subscriptions_per_identity,
            bytes_per_identity: config.max_subscription_bytes_per_identity,
            connections_per_identity: config.max_connections_per_identity,
        };
        let mut ledger = Ledger::new(limits);
        if capture.is_some() || recorder.is_some() {
            // Hold everything so the copy misses nothing.
            let _ = ledger.subscribe(Conn::Local, None, b"");
        }
        Ok(Bus {
            config: config.clone(),
            frontend,
            backend,
            backend_domain: SocketRole::BusBackend(name).domain(),
            backend_events,
            frontend_events,
            mode,
            capture,
            tap,
            tap_holds: 0,
            upstream: false,
            trimmed_at: std::time::Instant::now(),
            left_since_trim: false,
            closing: Vec::new(),
            recorder,
            counters: Arc::default(),
            generation: security.as_ref().map(|s| s.generation()),
            security,
            ledger,
            grants: GrantCache::default(),
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
        self.ledger_changed()?;
        while !shutdown.is_set() {
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
                self.backend_events.as_poll_item(zmq::POLLIN),
                self.frontend_events.as_poll_item(zmq::POLLIN),
                shutdown.poll_item(),
            ];
            // Wake at least once a second to flush the recording and see
            // reloads; soon, while a closing connection is to be looked at again.
            let timeout = if self.closing.is_empty() { 1000 } else { 10 };
            match zmq::poll(&mut items, timeout) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let (down, events) = (items[0].is_readable(), items[2].is_readable());
            if items[3].is_readable() {
                // A publisher's connection closed: a later one may reuse its descriptor.
                for fd in closed_connections(&self.frontend_events, self.security.as_deref()) {
                    self.connections.closed(fd);
                }
            }
            // Who is on the capture first, so a reload closes them all.
            self.note_capture()?;
            self.tap_subscriptions()?;
            self.check_reload();
            if events {
                let now = std::time::Instant::now();
                for fd in closed_connections(&self.backend_events, self.security.as_deref()) {
                    self.closing.extend(self.ledger.closed(fd).map(|id| (id, now)));
                    self.left_since_trim = true;
                }
            }
            // A connection still open 5 s after its close was reported was a new one on the descriptor.
            let ledger = &mut self.ledger;
            self.closing.retain(|(id, since)| {
                !ledger.recheck(*id) && since.elapsed() < std::time::Duration::from_secs(5)
            });
            // Subscriptions always before messages: with libzmq applying them
            // itself (see `upstream`), a refused one is closed before more is sent.
            self.forward_up()?;
            self.ledger_changed()?;
            if down {
                self.forward_down(&mut frames)?;
            }
            if let Some(recorder) = &mut self.recorder {
                if recorder.flush_if_due().is_err() {
                    self.counters.record_errors.fetch_add(1, Relaxed);
                }
            }
            self.give_back_memory();
        }
        if let Some(recorder) = &mut self.recorder {
            let _ = recorder.flush();
        }
        Ok(())
    }

    /// After a reload: forget cached grants, and close the connections of
    /// revoked identities.
    fn check_reload(&mut self) {
        let Some(security) = &self.security else { return };
        let Some(seen) = self.generation.filter(|&g| g != security.generation()) else { return };
        self.generation = Some(security.generation());
        self.grants.0.clear();
        let revoked = security.revoked_since(seen);
        let closed = self.connections.close_if(|id| revoked.contains(id));
        if closed > 0 {
            log::info!("bus '{}': closed {closed} connection(s) of revoked identities", self.config.name);
        }
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
            if let Some(security) = self.security.as_deref() {
                let origin = peer::origin(&mut frames[0], &mut self.user_id);
                if let (Some(fd), true) = (origin.fd, origin.has_user_id) {
                    self.connections.note(fd, &self.user_id);
                }
                let topic = bus::split(frames).map_or(&[][..], |(topic, _)| topic);
                let bus = &self.config.name;
                if !permitted(Some(security), &mut self.grants, origin, &self.user_id, |g| {
                    g.may_publish(bus, topic)
                }) {
                    self.deny(Kind::Publish, &self.counters.publish_denied, || {
                        format!("publish {} on bus {bus}", String::from_utf8_lossy(topic))
                    });
                    continue;
                }
                // An identity's payload may name only itself as its agent.
                if origin.has_user_id {
                    if let Err(refused) = claims::check_message(frames, &self.user_id) {
                        self.deny(Kind::Publish, &self.counters.publish_denied, || match refused {
                            claims::Refused::Agent(agent) => {
                                format!("a payload naming agent '{agent}' on bus {bus}")
                            }
                            claims::Refused::Unreadable => {
                                format!("a payload that is not a readable JSON object on bus {bus}")
                            }
                        });
                        continue;
                    }
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
            if self.tap_holds > 0 {
                // Only while the hub's own views watch: a copy, filtered by the tap.
                let copy = frames.iter().map(|f| zmq::Message::from(&f[..]));
                let _ = send_frames(&self.tap, &[], copy, zmq::DONTWAIT);
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

    /// After the ledger changed: asks publishers for everything while anyone
    /// holds a subscription and for nothing once nobody does, and updates the
    /// gauges.
    fn ledger_changed(&mut self) -> Result<(), BusError> {
        let wanted = self.ledger.total() > 0;
        if wanted != self.upstream {
            self.frontend.send(&[u8::from(wanted)][..], 0)?;
            self.upstream = wanted;
        }
        self.counters.subscriptions.store(self.ledger.total() as u64, Relaxed);
        self.counters.subscription_bytes.store(self.ledger.bytes() as u64, Relaxed);
        Ok(())
    }

    /// Once a second at most, after subscribers left: returns the heap's free
    /// pages to the system. libzmq frees a closed subscriber's filter, but
    /// glibc keeps freed memory for reuse, so a flood of subscriptions would
    /// otherwise leave the hub's resident size at its peak for good.
    fn give_back_memory(&mut self) {
        if !self.left_since_trim || self.trimmed_at.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.left_since_trim = false;
        self.trimmed_at = std::time::Instant::now();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
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

/// A bus's metrics (labelled `bus`) and bounds.
pub fn collect(config: &BusConfig, counters: &BusCounters, out: &mut crate::metrics::Families) {
    let labels = || vec![("bus", config.name.clone())];
    for (name, value) in counters.snapshot() {
        out.counter(&format!("bus_{name}"), "A bus's traffic and refusals.", labels(), value);
    }
    out.gauge(
        "bus_subscriptions",
        "Subscriptions applied now.",
        labels(),
        counters.subscriptions.load(Relaxed),
    );
    out.gauge(
        "bus_subscription_bytes",
        "Bytes of the prefixes of the subscriptions applied now.",
        labels(),
        counters.subscription_bytes.load(Relaxed),
    );
    let c = config;
    let bounds: [(&str, &'static str, u64); 11] = [
        ("max_subscriptions", "Subscriptions per connection, at most.", c.max_subscriptions as u64),
        (
            "max_subscription_bytes",
            "Bytes of one subscription prefix, at most.",
            c.max_subscription_bytes as u64,
        ),
        ("max_total_subscriptions", "Subscriptions on the bus, at most.", c.max_total_subscriptions as u64),
        (
            "max_total_subscription_bytes",
            "Prefix bytes of all subscriptions on the bus, at most.",
            c.max_total_subscription_bytes as u64,
        ),
        (
            "max_subscriptions_per_identity",
            "Subscriptions one identity may hold over all its connections.",
            c.max_subscriptions_per_identity as u64,
        ),
        (
            "max_subscription_bytes_per_identity",
            "Prefix bytes one identity may hold over all its connections.",
            c.max_subscription_bytes_per_identity as u64,
        ),
        (
            "max_connections_per_identity",
            "Subscribing connections one identity may have.",
            c.max_connections_per_identity as u64,
        ),
        (
            "max_unread_subscriptions",
            "Subscriptions read off one connection before the proxy checks them.",
            c.max_unread_subscriptions as u64,
        ),
        (
            "subscriber_cooldown_ms",
            "How long an identity closed for going over its bounds is refused new subscriber connections.",
            c.subscriber_cooldown_ms,
        ),
        ("hwm", "Per-subscriber queue, in messages.", c.hwm as u64),
        ("max_message_bytes", "Largest message.", c.max_message_bytes as u64),
    ];
    for (name, help, value) in bounds {
        out.gauge(&format!("bus_{name}"), help, labels(), value);
    }
}
