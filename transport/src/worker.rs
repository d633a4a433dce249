//! A Majordomo worker: registers a service, answers requests with a handler,
//! heartbeats both ways and survives broker restarts.
//!
//! Reconnection: a DISCONNECT from the broker (sent after a broker restart to
//! workers it does not know) or `liveness` heartbeat intervals of silence
//! makes the worker drop its socket and register again on a fresh one, after
//! an exponential backoff with jitter that resets once the broker talks again.
//!
//! The handler runs on the worker's thread: heartbeats pause while it runs, so
//! a handler that takes longer than `interval × liveness` gets the worker
//! purged by the broker. Keep handlers short or hand the work off.

use std::time::{Duration, Instant};

use proto::backoff::Backoff;
use proto::heartbeat::Heartbeat;
use proto::mdp::{self, Dialect, FromBroker, ReplyKind};

use crate::frames::{recv_frames, send_frames, Received};
use crate::shutdown::Signal;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub dialect: Dialect,
    pub heartbeat_interval: Duration,
    pub heartbeat_liveness: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Requests with more frames are dropped unanswered.
    pub max_frames: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            dialect: Dialect::Rfc7,
            heartbeat_interval: Duration::from_millis(2500),
            heartbeat_liveness: 3,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            max_frames: 1024,
        }
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
    endpoint: String,
    service: String,
    options: WorkerOptions,
}

/// Why a session with the broker ended.
enum SessionEnd {
    Shutdown,
    Reconnect,
}

impl Worker {
    pub fn new(ctx: &zmq::Context, endpoint: &str, service: &str, options: WorkerOptions) -> Self {
        Worker { ctx: ctx.clone(), endpoint: endpoint.into(), service: service.into(), options }
    }

    /// Serves requests until `shutdown` is set; then says DISCONNECT and returns.
    pub fn run(&self, shutdown: &Signal, mut handler: impl Handler) -> Result<(), WorkerError> {
        let o = &self.options;
        let mut backoff = Backoff::new(o.reconnect_min, o.reconnect_max);
        loop {
            match self.session(shutdown, &mut handler, &mut backoff)? {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Reconnect => {
                    let delay = backoff.next_delay();
                    log::info!("{}: reconnecting to {} in {delay:?}", self.service, self.endpoint);
                    if shutdown.sleep(delay) {
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
        shutdown: &Signal,
        handler: &mut impl Handler,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, WorkerError> {
        let o = &self.options;
        let socket = self.ctx.socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        socket.connect(&self.endpoint)?;
        send_frames(&socket, mdp::worker_ready(o.dialect, self.service.as_bytes()).frames(), [""; 0], 0)?;
        log::debug!("{}: READY sent to {} ({})", self.service, self.endpoint, o.dialect);

        let mut heartbeat = Heartbeat::new(Instant::now(), o.heartbeat_interval, o.heartbeat_liveness);
        let mut frames = Vec::new();
        loop {
            let wait = heartbeat.next_deadline().saturating_duration_since(Instant::now());
            let mut items = [socket.as_poll_item(zmq::POLLIN), shutdown.poll_item()];
            match zmq::poll(&mut items, wait.as_millis() as i64 + 1) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if shutdown.is_set() {
                let bye = mdp::worker_disconnect(o.dialect, true);
                let _ = send_frames(&socket, bye.frames(), [""; 0], zmq::DONTWAIT);
                return Ok(SessionEnd::Shutdown);
            }
            while recv_frames(&socket, &mut frames, o.max_frames, zmq::DONTWAIT)? != Received::WouldBlock {
                if frames.is_empty() {
                    log::warn!("{}: dropped a request with more than {} frames", self.service, o.max_frames);
                    continue;
                }
                let (client, body_len) = match mdp::decode_from_broker(&frames) {
                    Ok((_, FromBroker::Request { client, body })) => (client.to_vec(), body.len()),
                    Ok((_, FromBroker::Heartbeat)) => {
                        heartbeat.heard(Instant::now());
                        backoff.reset();
                        continue;
                    }
                    Ok((_, FromBroker::Disconnect)) => {
                        log::info!("{}: broker sent DISCONNECT", self.service);
                        return Ok(SessionEnd::Reconnect);
                    }
                    Ok((_, FromBroker::Reply { .. })) | Err(_) => {
                        log::warn!("{}: dropped a malformed message from the broker", self.service);
                        continue;
                    }
                };
                heartbeat.heard(Instant::now());
                backoff.reset();
                let body = frames.split_off(frames.len() - body_len);
                let mut replier = Replier { socket: &socket, dialect: o.dialect, client: &client };
                let reply = handler.handle(body, &mut replier);
                let envelope = mdp::worker_reply(o.dialect, ReplyKind::Final, &client)
                    .expect("every dialect has FINAL replies");
                send_frames(&socket, envelope.frames(), reply, 0)?;
                heartbeat.sent(Instant::now());
            }
            let now = Instant::now();
            if heartbeat.peer_expired(now) {
                log::warn!(
                    "{}: broker at {} silent for {:?}",
                    self.service,
                    self.endpoint,
                    o.heartbeat_interval * o.heartbeat_liveness
                );
                return Ok(SessionEnd::Reconnect);
            }
            if heartbeat.send_due(now) {
                // Never block on a heartbeat: if the link is that backed up, liveness will tell.
                match send_frames(&socket, mdp::heartbeat(o.dialect, true).frames(), [""; 0], zmq::DONTWAIT) {
                    Ok(()) | Err(zmq::Error::EAGAIN) => heartbeat.sent(now),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
