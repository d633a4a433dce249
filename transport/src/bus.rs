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
    /// Gaps in durable samples' seqs, when watched ([`Subscriber::watch_gaps`]).
    gaps: Option<crate::gaps::GapWatch>,
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
        Ok(Subscriber { socket, frames: Vec::new(), gaps: None })
    }

    /// Watches the durable samples received for gaps in their seqs (the bus
    /// is best effort: PUB/SUB drops for a subscriber that falls behind),
    /// following at most `max_streams` (agent, epoch) pairs; logs a warning
    /// at most once a second when some were missed. [`Subscriber::gaps`]
    /// has the counts.
    pub fn watch_gaps(mut self, max_streams: usize) -> Subscriber {
        self.gaps = Some(crate::gaps::GapWatch::new(max_streams));
        self
    }

    /// What the gap watch counted, if on.
    pub fn gaps(&self) -> Option<&crate::gaps::GapWatch> {
        self.gaps.as_ref()
    }

    /// The next message, or `None` if none arrived within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> zmq::Result<Option<BusMessage>> {
        let deadline = Instant::now() + timeout;
        loop {
            if recv_frames(&self.socket, &mut self.frames, MAX_FRAMES, zmq::DONTWAIT)? == Received::Message {
                if let Some((topic, payload)) = bus::split(&self.frames) {
                    if let Some(gaps) = &mut self.gaps {
                        gaps.observe(payload);
                        if let Some(missed) = gaps.report(Instant::now()) {
                            log::warn!("bus subscriber: {}", crate::gaps::describe(&missed, 5));
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber watching gaps counts the durable samples it never got.
    #[test]
    fn a_subscriber_watching_gaps_counts_what_it_missed() {
        let ctx = zmq::Context::new();
        let publisher = ctx.socket(zmq::PUB).unwrap();
        publisher.bind("inproc://gaps-test").unwrap();
        let mut sub = Subscriber::connect(&ctx, "inproc://gaps-test", &[]).unwrap().watch_gaps(10);
        let payload = |seq: u64| format!(r#"{{"agent":"pump-1","epoch":7,"seq":{seq},"durable":true}}"#);
        // Until the subscription is in place, inproc PUB drops: publish seq 1 until heard.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            publish_on(&publisher, Framing::TwoFrame, b"org.plantd.Metric.pump-1.t", payload(1).as_bytes())
                .unwrap();
            if sub.recv(Duration::from_millis(20)).unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the subscription never arrived");
        }
        for seq in [2, 5, 6] {
            publish_on(&publisher, Framing::TwoFrame, b"org.plantd.Metric.pump-1.t", payload(seq).as_bytes())
                .unwrap();
        }
        for _ in 0..3 {
            assert!(sub.recv(Duration::from_secs(5)).unwrap().is_some());
        }
        assert_eq!(sub.gaps().unwrap().totals().missed, 2, "seqs 3 and 4");
    }
}
