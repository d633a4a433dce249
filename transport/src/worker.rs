//! A Majordomo worker: registers a service, answers requests with a handler,
//! heartbeats both ways and survives broker restarts.
//!
//! The protocol's decisions (heartbeats, when to reconnect and how long to
//! wait first) are `proto`'s [`WorkerCore`]; this is the socket around it.
//!
//! The handler runs on the worker's thread: heartbeats pause while it runs, so
//! a handler that takes longer than `interval × liveness` gets the worker
//! purged by the broker. Keep handlers short or hand the work off.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::mdp::worker::{Due, Incoming, WorkerCore, WorkerTiming};
use proto::mdp::{self, Dialect, ReplyKind};

use crate::frames::{recv_frames, send_frames, Received};
use crate::shutdown::ShutdownWatch;
use crate::socket::{self, Endpoint};

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub dialect: Dialect,
    pub timing: WorkerTiming,
    /// Requests with more frames are dropped unanswered.
    pub max_frames: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { dialect: Dialect::Rfc7, timing: WorkerTiming::default(), max_frames: 1024 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("RFC 7 has no partial replies: register with --dialect rfc18 (or majortomo/plantd) to stream")]
    PartialUnsupported,
    #[error("zmq error: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Lets a handler stream PARTIAL replies before it returns the FINAL one.
pub struct Replier<'a> {
    socket: &'a zmq::Socket,
    dialect: Dialect,
    client: &'a [u8],
}

impl Replier<'_> {
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn partial<B>(&mut self, body: B) -> Result<(), WorkerError>
    where
        B: IntoIterator,
        B::Item: zmq::Sendable,
    {
        let envelope = mdp::worker_reply(self.dialect, ReplyKind::Partial, self.client)
            .map_err(|_| WorkerError::PartialUnsupported)?;
        send_frames(self.socket, envelope.frames(), body, 0)?;
        Ok(())
    }
}

/// Answers one request: takes the body frames, may stream partials, returns
/// the frames of the final reply.
pub trait Handler {
    fn handle(&mut self, body: Vec<zmq::Message>, replier: &mut Replier<'_>) -> Vec<zmq::Message>;
}

impl<F> Handler for F
where
    F: FnMut(Vec<zmq::Message>, &mut Replier<'_>) -> Vec<zmq::Message>,
{
    fn handle(&mut self, body: Vec<zmq::Message>, replier: &mut Replier<'_>) -> Vec<zmq::Message> {
        self(body, replier)
    }
}

pub struct Worker {
    ctx: zmq::Context,
    endpoint: Endpoint,
    service: String,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
}

/// How a worker's sessions with the broker went, for status output.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// READYs sent (one per session).
    pub sessions: AtomicU64,
    /// Sessions the broker ended with DISCONNECT before anything else: it
    /// refused the registration (a service only one worker may hold, taken).
    pub refused: AtomicU64,
    /// Refusals since the last accepted session.
    pub refused_in_a_row: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
}

/// Why a session with the broker ended.
enum SessionEnd {
    Shutdown,
    Reconnect,
}

impl Worker {
    pub fn new(
        ctx: &zmq::Context,
        endpoint: impl Into<Endpoint>,
        service: &str,
        options: WorkerOptions,
    ) -> Self {
        let stats = Arc::default();
        Worker { ctx: ctx.clone(), endpoint: endpoint.into(), service: service.into(), options, stats }
    }

    /// How its sessions went so far (shared: it keeps counting while running).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Serves requests until `stop` is set; then says DISCONNECT and returns.
    pub fn run(&self, stop: &ShutdownWatch, mut handler: impl Handler) -> Result<(), WorkerError> {
        let o = &self.options;
        let mut core = WorkerCore::new(o.dialect, self.service.as_bytes(), o.timing, Instant::now());
        loop {
            match self.session(stop, &mut core, &mut handler)? {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Reconnect => {
                    let delay = core.reconnect_delay();
                    log::info!("{}: reconnecting to {} in {delay:?}", self.service, self.endpoint);
                    if stop.sleep(delay) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One socket's life: READY, then requests and heartbeats until the
    /// broker goes silent, says DISCONNECT, or we shut down.
    fn session(
        &self,
        stop: &ShutdownWatch,
        core: &mut WorkerCore,
        handler: &mut impl Handler,
    ) -> Result<SessionEnd, WorkerError> {
        let o = &self.options;
        let socket = socket::dealer(&self.ctx, &self.endpoint)?;
        send_frames(&socket, core.begin_session(Instant::now()).frames(), [""; 0], 0)?;
        log::debug!("{}: READY sent to {} ({})", self.service, self.endpoint, o.dialect);
        self.stats.sessions.fetch_add(1, Relaxed);
        // Until the broker says anything but DISCONNECT, it may yet refuse us.
        let mut accepted = false;

        let mut frames = Vec::new();
        loop {
            // At least every second, so a watchdog sees this loop turn.
            let wait =
                core.next_deadline().saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            let mut items = [socket.as_poll_item(zmq::POLLIN), stop.poll_item()];
            match zmq::poll(&mut items, wait.as_millis() as i64 + 1) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if stop.is_set() {
                let _ = send_frames(&socket, core.disconnect().frames(), [""; 0], zmq::DONTWAIT);
                return Ok(SessionEnd::Shutdown);
            }
            loop {
                match recv_frames(&socket, &mut frames, o.max_frames, zmq::DONTWAIT)? {
                    Received::WouldBlock => break,
                    Received::TooManyFrames => {
                        log::warn!(
                            "{}: dropped a request with more than {} frames",
                            self.service,
                            o.max_frames
                        );
                        continue;
                    }
                    Received::Message => {}
                }
                let incoming = core.on_message(Instant::now(), &frames);
                if !accepted && matches!(incoming, Incoming::Request { .. } | Incoming::Heartbeat) {
                    accepted = true;
                    self.stats.refused_in_a_row.store(0, Relaxed);
                }
                let (client, body_len) = match incoming {
                    Incoming::Request { client, body } => (client.to_vec(), body.len()),
                    Incoming::Heartbeat => continue,
                    Incoming::Malformed => {
                        log::warn!("{}: dropped a malformed message from the broker", self.service);
                        continue;
                    }
                    Incoming::Reconnect if !accepted => {
                        self.stats.refused.fetch_add(1, Relaxed);
                        let n = self.stats.refused_in_a_row.fetch_add(1, Relaxed) + 1;
                        log::warn!(
                            "{}: the broker refused the registration ({n} time(s) in a row): \
                             another worker may hold a service only one may have",
                            self.service
                        );
                        return Ok(SessionEnd::Reconnect);
                    }
                    Incoming::Reconnect => {
                        log::info!("{}: broker sent DISCONNECT", self.service);
                        return Ok(SessionEnd::Reconnect);
                    }
                };
                self.stats.requests.fetch_add(1, Relaxed);
                let body = frames.split_off(frames.len() - body_len);
                let mut replier = Replier { socket: &socket, dialect: o.dialect, client: &client };
                let reply = handler.handle(body, &mut replier);
                let envelope =
                    core.reply(ReplyKind::Final, &client).expect("every dialect has FINAL replies");
                send_frames(&socket, envelope.frames(), reply, 0)?;
                core.sent(Instant::now());
            }
            match core.on_tick(Instant::now()) {
                Due::Nothing => {}
                Due::Heartbeat => {
                    // Never block on a heartbeat: if the link is that backed up, liveness will tell.
                    match send_frames(&socket, core.heartbeat().frames(), [""; 0], zmq::DONTWAIT) {
                        Ok(()) | Err(zmq::Error::EAGAIN) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Due::Reconnect => {
                    log::warn!(
                        "{}: broker at {} silent for {:?}",
                        self.service,
                        self.endpoint,
                        core.broker_ttl()
                    );
                    return Ok(SessionEnd::Reconnect);
                }
            }
        }
    }
}
