//! A Majordomo worker: registers a service, answers requests with a handler,
//! heartbeats both ways and survives broker restarts.
//!
//! The protocol's decisions (heartbeats, when to reconnect and how long to
//! wait first, the credit READY and its fallback) are `proto`'s
//! [`WorkerCore`]; this is the socket around it. Three ways to serve:
//!
//! - [`Worker::run`]: the handler runs on the worker's thread, one request
//!   after another, in arrival order. Heartbeats pause while it runs, so a
//!   handler that takes longer than `interval × liveness` gets the worker
//!   purged by the broker. With [`WorkerOptions::credit`] above 1 the broker
//!   keeps that many requests queued at the worker, so the broker↔worker hop
//!   is batched even though the handler runs one at a time.
//! - [`Worker::run_batched`]: the same thread, but the handler gets every
//!   request that is waiting (up to the credit) at once, and answers them in
//!   order: for services that can do a batch's work more cheaply together.
//! - [`Worker::run_pool`]: handlers on a pool of threads, replies in any
//!   order, the worker's thread free to heartbeat meanwhile (`pool.rs`).

mod pool;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::mdp::worker::{Due, Incoming, WorkerCore, WorkerTiming};
use proto::mdp::{self, Dialect, ReplyKind};

pub use self::pool::PoolOptions;
use crate::frames::{recv_frames, send_frames, Received};
use crate::shutdown::ShutdownWatch;
use crate::socket::{self, Endpoint};

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub dialect: Dialect,
    pub timing: WorkerTiming,
    /// Requests with more frames are dropped unanswered.
    pub max_frames: usize,
    /// How many requests the worker asks the broker to keep outstanding at
    /// once (the credit extension, see `proto::mdp`); 1 is a stock worker.
    pub credit: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { dialect: Dialect::Rfc7, timing: WorkerTiming::default(), max_frames: 1024, credit: 1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("RFC 7 has no partial replies: register with --dialect rfc18 (or majortomo/plantd) to stream")]
    PartialUnsupported,
    #[error("zmq error: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot start a worker thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Lets a handler stream PARTIAL replies before it returns the FINAL one.
pub struct Replier<'a> {
    target: Target<'a>,
    dialect: Dialect,
    client: &'a [u8],
}

/// Where a handler's partials go: straight to the broker, or (from a pool
/// thread) to the worker's thread, which forwards them.
enum Target<'a> {
    Broker(&'a zmq::Socket),
    Relay(pool::Relay<'a>),
}

impl Replier<'_> {
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn partial<B>(&mut self, body: B) -> Result<(), WorkerError>
    where
        B: IntoIterator,
        B::Item: Into<zmq::Message>,
    {
        if !self.dialect.supports_partial() {
            return Err(WorkerError::PartialUnsupported);
        }
        match self.target {
            Target::Broker(socket) => {
                let envelope = mdp::worker_reply(self.dialect, ReplyKind::Partial, self.client)
                    .map_err(|_| WorkerError::PartialUnsupported)?;
                send_frames(socket, envelope.frames(), body, 0)?;
            }
            Target::Relay(ref relay) => relay.send(ReplyKind::Partial, self.client, body)?,
        }
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
    /// The credit the current session's READY announced (1: a plain READY).
    pub credit: AtomicU64,
}

/// Why a session with the broker ended.
enum SessionEnd {
    Shutdown,
    Reconnect,
}

/// What a way of serving does with the requests a session brings.
trait Mode {
    /// A descriptor to wait on beside the broker's socket (a pool's replies).
    fn extra(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }

    /// A new session (numbered) begins: what the last one left is stale.
    fn begin(&mut self, _session: u64) {}

    /// A request, known to the broker by `token`.
    fn request(
        &mut self,
        io: &mut Io<'_>,
        token: zmq::Message,
        body: Vec<zmq::Message>,
    ) -> Result<(), WorkerError>;

    /// Everything waiting on the broker's socket has been read.
    fn drained(&mut self, _io: &mut Io<'_>) -> Result<(), WorkerError> {
        Ok(())
    }

    /// [`Mode::extra`] is readable.
    fn extra_ready(&mut self, _io: &mut Io<'_>) -> Result<(), WorkerError> {
        Ok(())
    }
}

/// The session's socket and protocol state, as a [`Mode`] sees them.
struct Io<'a> {
    socket: &'a zmq::Socket,
    core: &'a mut WorkerCore,
    /// Body buffers to reuse.
    spare: Vec<Vec<zmq::Message>>,
}

impl Io<'_> {
    /// Sends a reply part to the broker.
    fn reply<B>(&mut self, kind: ReplyKind, token: &[u8], body: B) -> Result<(), WorkerError>
    where
        B: IntoIterator,
        B::Item: zmq::Sendable,
    {
        let envelope = self.core.reply(kind, token).map_err(|_| WorkerError::PartialUnsupported)?;
        send_frames(self.socket, envelope.frames(), body, 0)?;
        self.core.sent(Instant::now());
        Ok(())
    }

    /// Sends a FINAL reply made of `body`, keeping the buffer for reuse.
    fn final_reply(&mut self, token: &[u8], mut body: Vec<zmq::Message>) -> Result<(), WorkerError> {
        self.reply(ReplyKind::Final, token, body.drain(..))?;
        if self.spare.len() < 64 {
            self.spare.push(body);
        }
        Ok(())
    }
}

/// [`Worker::run`]: each request handled as it is read.
struct Inline<H> {
    handler: H,
}

impl<H: Handler> Mode for Inline<H> {
    fn request(
        &mut self,
        io: &mut Io<'_>,
        token: zmq::Message,
        body: Vec<zmq::Message>,
    ) -> Result<(), WorkerError> {
        let dialect = io.core.dialect();
        let mut replier = Replier { target: Target::Broker(io.socket), dialect, client: &token };
        let reply = self.handler.handle(body, &mut replier);
        io.final_reply(&token, reply)
    }
}

/// [`Worker::run_batched`]: requests gathered until the socket is drained.
struct Batched<H> {
    handler: H,
    tokens: Vec<zmq::Message>,
    bodies: Vec<Vec<zmq::Message>>,
}

impl<H: FnMut(&mut [Vec<zmq::Message>])> Mode for Batched<H> {
    fn request(
        &mut self,
        _io: &mut Io<'_>,
        token: zmq::Message,
        body: Vec<zmq::Message>,
    ) -> Result<(), WorkerError> {
        self.tokens.push(token);
        self.bodies.push(body);
        Ok(())
    }

    fn drained(&mut self, io: &mut Io<'_>) -> Result<(), WorkerError> {
        if self.bodies.is_empty() {
            return Ok(());
        }
        (self.handler)(&mut self.bodies);
        for (token, body) in self.tokens.drain(..).zip(self.bodies.drain(..)) {
            io.final_reply(&token, body)?;
        }
        Ok(())
    }
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

    /// Serves requests until `stop` is set, each handled on this thread as
    /// it arrives; then says DISCONNECT and returns.
    pub fn run(&self, stop: &ShutdownWatch, handler: impl Handler) -> Result<(), WorkerError> {
        self.serve(stop, &mut Inline { handler })
    }

    /// Serves requests until `stop` is set, in batches: `handler` gets the
    /// bodies of every request waiting (at most the credit) and replaces
    /// each with its reply, which goes back in the same order.
    pub fn run_batched(
        &self,
        stop: &ShutdownWatch,
        handler: impl FnMut(&mut [Vec<zmq::Message>]),
    ) -> Result<(), WorkerError> {
        let credit = self.options.credit.max(1) as usize;
        let mut mode =
            Batched { handler, tokens: Vec::with_capacity(credit), bodies: Vec::with_capacity(credit) };
        self.serve(stop, &mut mode)
    }

    /// Serves requests until `stop` is set with `handler` on a pool of
    /// threads: up to the credit at once, replies in any order, while this
    /// thread keeps heartbeating.
    pub fn run_pool<H>(&self, stop: &ShutdownWatch, pool: PoolOptions, handler: H) -> Result<(), WorkerError>
    where
        H: Fn(Vec<zmq::Message>, &mut Replier<'_>) -> Vec<zmq::Message> + Send + Sync + 'static,
    {
        pool::run(self, stop, pool, handler)
    }

    fn serve(&self, stop: &ShutdownWatch, mode: &mut impl Mode) -> Result<(), WorkerError> {
        let o = &self.options;
        let mut core = WorkerCore::new(o.dialect, self.service.as_bytes(), o.timing, Instant::now())
            .with_credit(o.credit);
        let mut session = 0;
        loop {
            session += 1;
            mode.begin(session);
            match self.session(stop, &mut core, mode)? {
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
        mode: &mut impl Mode,
    ) -> Result<SessionEnd, WorkerError> {
        let o = &self.options;
        let socket = socket::dealer(&self.ctx, &self.endpoint)?;
        send_frames(&socket, core.begin_session(Instant::now()).frames(), [""; 0], 0)?;
        let credit = core.announced_credit();
        log::debug!("{}: READY sent to {} ({}, credit {credit})", self.service, self.endpoint, o.dialect);
        self.stats.sessions.fetch_add(1, Relaxed);
        self.stats.credit.store(credit.into(), Relaxed);

        let mut io = Io { socket: &socket, core, spare: Vec::new() };
        let mut frames = Vec::new();
        loop {
            // At least every second, so a watchdog sees this loop turn.
            let wait =
                io.core.next_deadline().saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            let timeout = wait.as_millis() as i64 + 1;
            let extra_ready = match mode.extra() {
                Some(fd) => {
                    let mut items = [
                        socket.as_poll_item(zmq::POLLIN),
                        stop.poll_item(),
                        zmq::PollItem::from_fd(fd, zmq::POLLIN),
                    ];
                    poll(&mut items, timeout)?;
                    items[2].is_readable()
                }
                None => {
                    let mut items = [socket.as_poll_item(zmq::POLLIN), stop.poll_item()];
                    poll(&mut items, timeout)?;
                    false
                }
            };
            if stop.is_set() {
                let _ = send_frames(&socket, io.core.disconnect().frames(), [""; 0], zmq::DONTWAIT);
                return Ok(SessionEnd::Shutdown);
            }
            if extra_ready {
                mode.extra_ready(&mut io)?;
            }
            // Bounded, so that under a steady stream (a credit worker's next
            // request arrives as it answers the last) stop and the heartbeat
            // timers are still looked at.
            for _ in 0..MAX_DRAIN {
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
                let body_len = match io.core.on_message(Instant::now(), &frames) {
                    Incoming::Request { body, .. } => body.len(),
                    Incoming::Heartbeat => {
                        self.stats.refused_in_a_row.store(0, Relaxed);
                        continue;
                    }
                    Incoming::Malformed => {
                        log::warn!("{}: dropped a malformed message from the broker", self.service);
                        continue;
                    }
                    Incoming::Refused => {
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
                self.stats.refused_in_a_row.store(0, Relaxed);
                self.stats.requests.fetch_add(1, Relaxed);
                // A request is `... client "" body...`: take the body, then the client.
                let mut body = io.spare.pop().unwrap_or_default();
                body.extend(frames.drain(frames.len() - body_len..));
                frames.pop();
                let Some(token) = frames.pop() else { continue };
                mode.request(&mut io, token, body)?;
            }
            mode.drained(&mut io)?;
            match io.core.on_tick(Instant::now()) {
                Due::Nothing => {}
                Due::Heartbeat => {
                    // Never block on a heartbeat: if the link is that backed up, liveness will tell.
                    match send_frames(&socket, io.core.heartbeat().frames(), [""; 0], zmq::DONTWAIT) {
                        Ok(()) | Err(zmq::Error::EAGAIN) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Due::Reconnect => {
                    log::warn!(
                        "{}: broker at {} silent for {:?}",
                        self.service,
                        self.endpoint,
                        io.core.broker_ttl()
                    );
                    return Ok(SessionEnd::Reconnect);
                }
            }
        }
    }
}

/// Most messages read from the broker between two looks at stop and the timers.
const MAX_DRAIN: usize = 1024;

fn poll(items: &mut [zmq::PollItem<'_>], timeout: i64) -> Result<(), WorkerError> {
    match zmq::poll(items, timeout) {
        Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
