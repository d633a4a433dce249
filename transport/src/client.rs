//! Majordomo clients: socket shells around `proto`'s [`ClientCore`], which
//! makes every decision (timeouts, retries, when a socket is replaced).
//!
//! [`Client`] blocks; [`AsyncClient`](crate::AsyncClient)
//! (feature `async`) is the same client for smol tasks. Both are lazy pirate,
//! one request at a time. [`PipelinedClient`] keeps many requests in flight on
//! one socket and hands replies back as they arrive; MDP replies carry no
//! request id, so its caller correlates them by content (load generators,
//! benchmarks).

use std::time::{Duration, Instant};

use proto::mdp::client::{parse_reply, ClientCore, ReplyPart, Send, Timeout};
use proto::mdp::{self, Dialect, ReplyKind};

pub use proto::mdp::client::ClientOptions;

use crate::frames::{recv_frames, send_frames, Received};
use crate::socket::{self, Endpoint};

/// Frames in one reply part; more would be a broken or hostile broker.
pub(crate) const MAX_REPLY_FRAMES: usize = 1024;

/// One reply part from the broker.
#[derive(Debug)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The service that answered; `None` from majortomo, which does not say.
    pub service: Option<Vec<u8>>,
    pub body: Vec<zmq::Message>,
}

/// What a decoded reply part borrowed from its frames, owned, so the
/// frames can then be taken apart.
pub(crate) struct ReplyHead {
    kind: ReplyKind,
    service: Option<Vec<u8>>,
    body_len: usize,
}

impl From<ReplyPart<'_, zmq::Message>> for ReplyHead {
    fn from(part: ReplyPart<'_, zmq::Message>) -> Self {
        ReplyHead { kind: part.kind, service: part.service.map(<[u8]>::to_vec), body_len: part.body.len() }
    }
}

impl Reply {
    /// Moves the reply part described by `head` out of `frames` (the body
    /// frames are moved, not copied).
    pub(crate) fn take(frames: &mut Vec<zmq::Message>, head: ReplyHead) -> Reply {
        let body = frames.split_off(frames.len() - head.body_len);
        Reply { kind: head.kind, service: head.service, body }
    }
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
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    pub(crate) fn timeout(service: &str, endpoint: &str, attempts: u32, options: &ClientOptions) -> Self {
        ClientError::Timeout {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            attempts,
            timeout: options.timeout,
        }
    }
}

/// Synchronous lazy-pirate client.
pub struct Client {
    ctx: zmq::Context,
    endpoint: Endpoint,
    core: ClientCore,
    socket: Option<zmq::Socket>,
    frames: Vec<zmq::Message>,
}

impl Client {
    pub fn new(ctx: &zmq::Context, endpoint: impl Into<Endpoint>, options: ClientOptions) -> Self {
        Client {
            ctx: ctx.clone(),
            endpoint: endpoint.into(),
            core: ClientCore::new(options),
            socket: None,
            frames: Vec::new(),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        self.core.options()
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
        let result = self.exchange(service, body, &mut on_partial);
        if result.is_err() {
            self.core.on_failure();
        }
        result
    }

    fn exchange(
        &mut self,
        service: &str,
        body: &[&[u8]],
        on_partial: &mut impl FnMut(Reply),
    ) -> Result<Vec<zmq::Message>, ClientError> {
        let mut send = self.core.start(Instant::now(), service.as_bytes());
        loop {
            if send == Send::FreshSocket || self.socket.is_none() {
                // Dropping the old socket drops any late reply with it.
                self.socket = None;
                self.socket = Some(socket::dealer(&self.ctx, &self.endpoint)?);
            }
            let socket = self.socket.as_ref().expect("just made");
            let envelope = self.core.envelope().expect("a request is in flight");
            send_frames(socket, envelope.frames(), body.iter().copied(), 0)?;
            loop {
                let Some(deadline) = self.core.deadline() else { unreachable!("a request is in flight") };
                if !socket::wait_readable(socket, deadline)? {
                    match self.core.on_timeout(Instant::now()) {
                        Timeout::Resend => {
                            log::debug!("no reply from {service}: retrying on a fresh socket");
                            send = Send::FreshSocket;
                            break;
                        }
                        Timeout::GiveUp { attempts } => {
                            self.socket = None;
                            return Err(ClientError::timeout(
                                service,
                                &self.endpoint.address,
                                attempts,
                                self.core.options(),
                            ));
                        }
                    }
                }
                if recv_frames(socket, &mut self.frames, MAX_REPLY_FRAMES, zmq::DONTWAIT)?
                    != Received::Message
                {
                    continue;
                }
                let Some(head) = self.core.on_message(Instant::now(), &self.frames).map(ReplyHead::from)
                else {
                    continue;
                };
                let reply = Reply::take(&mut self.frames, head);
                match reply.kind {
                    ReplyKind::Final => return Ok(reply.body),
                    ReplyKind::Partial => on_partial(reply),
                }
            }
        }
    }
}

/// Many requests in flight on one socket, for load generators.
pub struct PipelinedClient {
    socket: zmq::Socket,
    dialect: Dialect,
    frames: Vec<zmq::Message>,
}

impl PipelinedClient {
    pub fn connect(ctx: &zmq::Context, endpoint: impl Into<Endpoint>, dialect: Dialect) -> zmq::Result<Self> {
        let socket = socket::dealer(ctx, &endpoint.into())?;
        Ok(PipelinedClient { socket, dialect, frames: Vec::new() })
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
            if recv_frames(&self.socket, &mut self.frames, MAX_REPLY_FRAMES, zmq::DONTWAIT)?
                == Received::Message
            {
                if let Some(head) = parse_reply(&self.frames).map(ReplyHead::from) {
                    return Ok(Some(Reply::take(&mut self.frames, head)));
                }
                continue;
            }
            if !socket::wait_readable(&self.socket, deadline)? {
                return Ok(None);
            }
        }
    }

    /// The underlying socket, to poll it together with others.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }
}
