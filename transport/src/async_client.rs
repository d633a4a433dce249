//! The Majordomo client for smol tasks: the same lazy-pirate decisions as
//! [`Client`](crate::Client) (`proto`'s [`ClientCore`]), awaiting instead of
//! blocking. PARTIAL replies are dropped; the final reply is returned.
//!
//! [`AsyncPipeline`] is [`PipelinedClient`](crate::PipelinedClient) for smol
//! tasks: several requests in flight on one socket (so the broker gets them
//! in the order sent), replies handed back as they come.

use std::time::{Duration, Instant};

use proto::mdp::client::{parse_reply, ClientCore, Send, Timeout};
use proto::mdp::{Dialect, ReplyKind};

use crate::async_socket::AsyncSocket;
use crate::client::{ClientError, ClientOptions, Reply, ReplyHead, MAX_REPLY_FRAMES};
use crate::socket::{self, Endpoint};

pub struct AsyncClient {
    ctx: zmq::Context,
    endpoint: Endpoint,
    core: ClientCore,
    socket: Option<AsyncSocket>,
    frames: Vec<zmq::Message>,
}

impl AsyncClient {
    pub fn new(ctx: &zmq::Context, endpoint: impl Into<Endpoint>, options: ClientOptions) -> Self {
        AsyncClient {
            ctx: ctx.clone(),
            endpoint: endpoint.into(),
            core: ClientCore::new(options),
            socket: None,
            frames: Vec::new(),
        }
    }

    /// Sends `body` to `service`; returns the final reply's body frames.
    pub async fn request(&mut self, service: &str, body: &[&[u8]]) -> Result<Vec<zmq::Message>, ClientError> {
        let result = self.exchange(service, body).await;
        if result.is_err() {
            self.core.on_failure();
            self.socket = None;
        }
        result
    }

    async fn exchange(&mut self, service: &str, body: &[&[u8]]) -> Result<Vec<zmq::Message>, ClientError> {
        let mut send = self.core.start(Instant::now(), service.as_bytes());
        loop {
            if send == Send::FreshSocket || self.socket.is_none() {
                // Dropping the old socket drops any late reply with it.
                self.socket = None;
                self.socket = Some(AsyncSocket::new(socket::dealer(&self.ctx, &self.endpoint)?)?);
            }
            let socket = self.socket.as_ref().expect("just made");
            socket.send(self.core.envelope().expect("a request is in flight").frames(), body).await?;
            loop {
                let Some(deadline) = self.core.deadline() else { unreachable!("a request is in flight") };
                if !socket.recv_before(&mut self.frames, MAX_REPLY_FRAMES, deadline).await? {
                    match self.core.on_timeout(Instant::now()) {
                        Timeout::Resend => {
                            log::debug!("no reply from {service}: retrying on a fresh socket");
                            send = Send::FreshSocket;
                            break;
                        }
                        Timeout::GiveUp { attempts } => {
                            let options = self.core.options();
                            return Err(ClientError::timeout(
                                service,
                                &self.endpoint.address,
                                attempts,
                                options,
                            ));
                        }
                    }
                }
                let Some(head) = self.core.on_message(Instant::now(), &self.frames).map(ReplyHead::from)
                else {
                    continue;
                };
                let reply = Reply::take(&mut self.frames, head);
                if reply.kind == ReplyKind::Final {
                    return Ok(reply.body);
                }
            }
        }
    }
}

/// Requests in flight on one socket; the caller matches replies to requests
/// by their content (Majordomo replies carry no request id) and decides
/// when one has waited too long. Dropping it drops every late reply with
/// its socket.
pub struct AsyncPipeline {
    socket: AsyncSocket,
    dialect: Dialect,
    frames: Vec<zmq::Message>,
}

impl AsyncPipeline {
    pub fn connect(ctx: &zmq::Context, endpoint: &Endpoint, dialect: Dialect) -> Result<Self, ClientError> {
        let socket = AsyncSocket::new(socket::dealer(ctx, endpoint)?)?;
        Ok(AsyncPipeline { socket, dialect, frames: Vec::new() })
    }

    /// Sends one request to `service`; never waits for its reply.
    pub async fn send(&self, service: &str, body: &[&[u8]]) -> Result<(), ClientError> {
        let envelope = proto::mdp::client_request(self.dialect, service.as_bytes());
        Ok(self.socket.send(envelope.frames(), body).await?)
    }

    /// The body of the next final reply, or `None` if none came within
    /// `timeout`. Partial replies are passed over.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<zmq::Message>>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.socket.recv_before(&mut self.frames, MAX_REPLY_FRAMES, deadline).await? {
                return Ok(None);
            }
            let Some(head) = parse_reply(&self.frames).map(ReplyHead::from) else { continue };
            let reply = Reply::take(&mut self.frames, head);
            if reply.kind == ReplyKind::Final {
                return Ok(Some(reply.body));
            }
        }
    }
}
