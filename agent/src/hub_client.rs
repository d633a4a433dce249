//! An async Majordomo client for the agent's calls to the hub (ingest,
//! state). Lazy pirate: after a timeout the socket is thrown away, so a late
//! reply can never be taken for the answer to the next request.

use std::time::Duration;

use proto::mdp::{self, Dialect, FromBroker, ReplyKind};
use transport::async_socket::AsyncSocket;
use transport::frames::Received;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

pub struct HubClient {
    ctx: zmq::Context,
    endpoint: String,
    socket: Option<AsyncSocket>,
    frames: Vec<zmq::Message>,
}

impl HubClient {
    pub fn new(ctx: &zmq::Context, endpoint: &str) -> HubClient {
        HubClient { ctx: ctx.clone(), endpoint: endpoint.into(), socket: None, frames: Vec::new() }
    }

    /// Sends `body` to `service`; returns the final reply's body frames.
    /// After any failure the socket is dropped, so a reply that comes late
    /// can never be read as the answer to the next request.
    pub async fn request(
        &mut self,
        service: &str,
        body: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<zmq::Message>, CallError> {
        let result = self.try_request(service, body, timeout).await;
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    async fn try_request(
        &mut self,
        service: &str,
        body: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<zmq::Message>, CallError> {
        if self.socket.is_none() {
            let socket = self.ctx.socket(zmq::DEALER)?;
            socket.set_linger(0)?;
            socket.connect(&self.endpoint)?;
            self.socket = Some(AsyncSocket::new(socket)?);
        }
        let socket = self.socket.as_ref().expect("just created");
        socket.send(mdp::client_request(Dialect::Rfc7, service.as_bytes()).frames(), body).await?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero()
                || socket.recv_timeout(&mut self.frames, 64, left).await? == Received::WouldBlock
            {
                return Err(CallError::Timeout(timeout));
            }
            if let Ok((_, FromBroker::Reply { kind: ReplyKind::Final, service: s, body })) =
                mdp::decode_from_broker(&self.frames)
            {
                if s.is_none_or(|s| s == service.as_bytes()) {
                    let at = self.frames.len() - body.len();
                    return Ok(self.frames.split_off(at));
                }
            }
        }
    }
}
