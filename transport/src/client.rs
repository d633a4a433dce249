//! Majordomo clients.
//!
//! [`Client`] is synchronous and reliable in the lazy-pirate style: it waits
//! `timeout` for each reply part, and after a timeout it throws the socket
//! away (so a late reply cannot be mistaken for the next one) and resends on
//! a fresh one, up to `retries` times. A retried request may run twice on the
//! service side: retry only requests that are safe to repeat.
//!
//! [`AsyncClient`] keeps many requests outstanding on one socket and hands
//! replies back as they arrive (replies carry no request id in MDP, so the
//! caller correlates them by content).

use std::time::{Duration, Instant};

use proto::mdp::{self, Dialect, FromBroker, ReplyKind};

use crate::frames::{recv_frames, send_frames, Received};

/// Frames in one reply part; more would be a broken or hostile broker.
const MAX_REPLY_FRAMES: usize = 1024;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub dialect: Dialect,
    /// How long to wait for each reply part.
    pub timeout: Duration,
    /// How many times to resend, on a fresh socket, after a timeout.
    pub retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        // plantd's client default timeout.
        ClientOptions { dialect: Dialect::Rfc7, timeout: Duration::from_millis(2500), retries: 2 }
    }
}

/// One reply part from the broker.
#[derive(Debug)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The service that answered; `None` from majortomo, which does not say.
    pub service: Option<Vec<u8>>,
    pub body: Vec<zmq::Message>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no reply from service '{service}' at {endpoint} after {attempts} attempt(s) of {timeout:?}: \
         check that the broker is running there and that the service has a worker \
         (`hub call mmi.service {service}` answers 200 when it does)"
    )]
    Timeout { service: String, endpoint: String, attempts: u32, timeout: Duration },
    #[error("zmq error: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Decodes a message from the broker as a reply part; anything else (a
/// malformed or worker-protocol message) is `None`.
fn parse_reply(frames: &mut Vec<zmq::Message>) -> Option<Reply> {
    let (kind, service, body_len) = match mdp::decode_from_broker(frames) {
        Ok((_, FromBroker::Reply { kind, service, body })) => (kind, service.map(<[u8]>::to_vec), body.len()),
        Ok(_) => return None,
        Err(e) => {
            log::debug!("dropping malformed reply: {e}");
            return None;
        }
    };
    let body = frames.split_off(frames.len() - body_len);
    Some(Reply { kind, service, body })
}

fn dealer(ctx: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

/// Synchronous lazy-pirate client.
pub struct Client {
    ctx: zmq::Context,
    endpoint: String,
    options: ClientOptions,
    socket: Option<zmq::Socket>,
    frames: Vec<zmq::Message>,
}

impl Client {
    pub fn new(ctx: &zmq::Context, endpoint: &str, options: ClientOptions) -> Self {
        Client { ctx: ctx.clone(), endpoint: endpoint.to_string(), options, socket: None, frames: Vec::new() }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Sends `body` to `service` and returns the frames of the final reply.
    /// PARTIAL parts, if any, are dropped: use [`Client::request_streaming`] to see them.
    pub fn request(&mut self, service: &str, body: &[&[u8]]) -> Result<Vec<zmq::Message>, ClientError> {
        self.request_streaming(service, body, |_| {})
    }

    /// Like [`Client::request`], calling `on_partial` with each PARTIAL part as it arrives.
    pub fn request_streaming(
        &mut self,
        service: &str,
        body: &[&[u8]],
        mut on_partial: impl FnMut(Reply),
    ) -> Result<Vec<zmq::Message>, ClientError> {
        let attempts = self.options.retries + 1;
        for attempt in 1..=attempts {
            if attempt > 1 {
                log::debug!("no reply from {service}: retrying on a fresh socket ({attempt}/{attempts})");
            }
            let socket = match self.socket.take() {
                Some(socket) => socket,
                None => dealer(&self.ctx, &self.endpoint)?,
            };
            let envelope = mdp::client_request(self.options.dialect, service.as_bytes());
            send_frames(&socket, envelope.frames(), body.iter().copied(), 0)?;
            if let Some(reply) = self.await_final(&socket, service, &mut on_partial)? {
                self.socket = Some(socket);
                return Ok(reply);
            }
            // Timed out: the socket is dropped here, and any late reply with it.
        }
        Err(ClientError::Timeout {
            service: service.to_string(),
            endpoint: self.endpoint.clone(),
            attempts,
            timeout: self.options.timeout,
        })
    }

    fn await_final(
        &mut self,
        socket: &zmq::Socket,
        service: &str,
        on_partial: &mut impl FnMut(Reply),
    ) -> Result<Option<Vec<zmq::Message>>, ClientError> {
        let mut deadline = Instant::now() + self.options.timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match socket.poll(zmq::POLLIN, wait.as_millis() as i64) {
                Ok(0) => return Ok(None),
                Err(zmq::Error::EINTR) if !wait.is_zero() => continue, // a signal: keep waiting
                Err(zmq::Error::EINTR) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            if recv_frames(socket, &mut self.frames, MAX_REPLY_FRAMES, 0)? != Received::Message {
                continue;
            }
            let Some(reply) = parse_reply(&mut self.frames) else { continue };
            if reply.service.as_deref().is_some_and(|s| s != service.as_bytes()) {
                log::debug!("ignoring a reply from another service");
                continue;
            }
            match reply.kind {
                ReplyKind::Final => return Ok(Some(reply.body)),
                ReplyKind::Partial => {
                    on_partial(reply);
                    // The timeout applies to each part, so a long stream is not cut off.
                    deadline = Instant::now() + self.options.timeout;
                }
            }
        }
    }
}

/// Many requests in flight on one socket.
pub struct AsyncClient {
    socket: zmq::Socket,
    dialect: Dialect,
    frames: Vec<zmq::Message>,
}

impl AsyncClient {
    pub fn connect(ctx: &zmq::Context, endpoint: &str, dialect: Dialect) -> zmq::Result<Self> {
        Ok(AsyncClient { socket: dealer(ctx, endpoint)?, dialect, frames: Vec::new() })
    }

    /// Queues one request; never waits for a reply.
    pub fn send<B>(&self, service: &[u8], body: B) -> zmq::Result<()>
    where
        B: IntoIterator,
        B::Item: zmq::Sendable,
    {
        send_frames(&self.socket, mdp::client_request(self.dialect, service).frames(), body, 0)
    }

    /// The next reply part, or `None` if none arrived within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Reply>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Received::Message =
                recv_frames(&self.socket, &mut self.frames, MAX_REPLY_FRAMES, zmq::DONTWAIT)?
            {
                if let Some(reply) = parse_reply(&mut self.frames) {
                    return Ok(Some(reply));
                }
                continue;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.socket.poll(zmq::POLLIN, wait.as_millis().max(1) as i64) {
                _ if wait.is_zero() => return Ok(None),
                Ok(0) | Err(zmq::Error::EINTR) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The underlying socket, to poll it together with others.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }
}
