//! Bus publisher and subscriber. A bus is an XSUB/XPUB proxy in the hub:
//! publishers connect to its frontend, subscribers to its backend.

use std::time::{Duration, Instant};

use proto::bus::{self, Framing, Subscription};

use crate::frames::{recv_frames, Received};
use crate::socket::{self, Endpoint};

/// Frames in one bus message; the layouts we read use one or two.
const MAX_FRAMES: usize = 16;

/// One message from a bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Publishes on a bus frontend. Like any PUB socket it never blocks: messages
/// nobody subscribed to, or that a full queue cannot take, are dropped.
pub struct Publisher {
    socket: zmq::Socket,
    framing: Framing,
}

impl Publisher {
    pub fn connect(ctx: &zmq::Context, frontend: impl Into<Endpoint>, framing: Framing) -> zmq::Result<Self> {
        let socket = socket::connect(ctx, zmq::PUB, &frontend.into(), |s| s.set_linger(1000))?;
        Ok(Publisher { socket, framing })
    }

    pub fn publish(&self, topic: &[u8], payload: &[u8]) -> zmq::Result<()> {
        publish_on(&self.socket, self.framing, topic, payload)
    }
}

/// Sends one bus message on any publishing socket (PUB, XPUB), in `framing`'s
/// layout, never blocking: where it cannot be queued it is dropped (EAGAIN).
/// Every publisher in the workspace sends through here.
pub fn publish_on(socket: &zmq::Socket, framing: Framing, topic: &[u8], payload: &[u8]) -> zmq::Result<()> {
    match framing {
        Framing::TwoFrame => {
            socket.send(topic, zmq::SNDMORE | zmq::DONTWAIT)?;
            socket.send(payload, zmq::DONTWAIT)
        }
        Framing::OneFrame => socket.send(bus::encode(framing, topic, payload).remove(0), zmq::DONTWAIT),
    }
}

/// Publishes one message from a short-lived process (`hub publish`). A fresh
/// PUB drops what it sends before the bus has told it about subscribers, so
/// this uses an XPUB, waits up to `wait` for a subscription that covers
/// `topic`, then sends. Returns whether a subscriber was known to be there.
pub fn publish_once(
    ctx: &zmq::Context,
    frontend: impl Into<Endpoint>,
    framing: Framing,
    topic: &[u8],
    payload: &[u8],
    wait: Duration,
) -> zmq::Result<bool> {
    let socket = socket::connect(ctx, zmq::XPUB, &frontend.into(), |s| s.set_linger(2000))?;
    let deadline = Instant::now() + wait;
    let mut covered = false;
    while !covered {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? == 0 {
            break;
        }
        let sub = socket.recv_bytes(0)?;
        covered =
            matches!(Subscription::parse(&sub), Some(Subscription::Subscribe(p)) if topic.starts_with(p));
    }
    publish_on(&socket, framing, topic, payload)?;
    Ok(covered)
}

/// Subscribes on a bus backend and yields (topic, payload), whichever layout
/// the publisher used.
pub struct Subscriber {
    socket: zmq::Socket,
    frames: Vec<zmq::Message>,
}

impl Subscriber {
    /// Subscribes to every topic starting with one of `prefixes` (all topics if none).
    pub fn connect(
        ctx: &zmq::Context,
        backend: impl Into<Endpoint>,
        prefixes: &[&[u8]],
    ) -> zmq::Result<Self> {
        let socket = socket::connect(ctx, zmq::SUB, &backend.into(), |s| {
            s.set_linger(0)?;
            if prefixes.is_empty() {
                s.set_subscribe(b"")?;
            }
            prefixes.iter().try_for_each(|prefix| s.set_subscribe(prefix))
        })?;
        Ok(Subscriber { socket, frames: Vec::new() })
    }

    /// The next message, or `None` if none arrived within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> zmq::Result<Option<BusMessage>> {
        let deadline = Instant::now() + timeout;
        loop {
            if recv_frames(&self.socket, &mut self.frames, MAX_FRAMES, zmq::DONTWAIT)? == Received::Message {
                if let Some((topic, payload)) = bus::split(&self.frames) {
                    return Ok(Some(BusMessage { topic: topic.to_vec(), payload: payload.to_vec() }));
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.socket.poll(zmq::POLLIN, left.as_millis().max(1) as i64) {
                _ if left.is_zero() => return Ok(None),
                Ok(0) | Err(zmq::Error::EINTR) => return Ok(None), // a signal: let the caller look
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }
}
