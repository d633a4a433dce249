//! Pipelines over libzmq: a [`Source`] (a sender), stages with N parallel
//! workers ([`stage::run`]) and sinks (a stage with nothing downstream).
//!
//! Each hop is the credit protocol of `proto::pipeline`: the sender binds a
//! ROUTER and holds every message until a receiver acknowledges it; receivers
//! connect a DEALER each and grant credit up to their window. So a slow sink
//! makes its stage's window fill, the stage stops granting credit upstream,
//! and the source waits: every queue on the way is bounded by a window.
//! libzmq's own high-water marks are off (0) on these sockets on purpose: a
//! ROUTER at its HWM drops silently, which would strand a held message;
//! credit bounds what is queued instead.
//!
//! Any transport works (tcp, ipc, inproc); a receiver silent for
//! `peer_timeout` (killed) is forgotten and what it held goes to another.

pub mod stage;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proto::pipeline::{self as wire, Dispatcher, Wire};

use crate::frames::{recv_frames, send_frames, Received};

/// One hop's bounds and timing.
#[derive(Clone, Debug)]
pub struct HopOptions {
    /// Messages a receiver takes before acknowledging any (its high-water mark).
    pub window: u32,
    /// A receiver silent this long is taken for dead: what it held is sent again.
    pub peer_timeout: Duration,
    /// Receivers ping this often while idle (well under `peer_timeout`).
    pub ping_every: Duration,
    /// Receivers one sender serves, at most (bounds what it holds: window × peers).
    pub max_peers: usize,
    /// Largest message accepted (ZMQ_MAXMSGSIZE): a peer sending more is disconnected.
    pub max_message_bytes: i64,
}

impl Default for HopOptions {
    fn default() -> Self {
        HopOptions {
            window: 64,
            peer_timeout: Duration::from_secs(3),
            ping_every: Duration::from_millis(500),
            max_peers: 64,
            max_message_bytes: 1 << 20,
        }
    }
}

/// A message a receiver took: its id on this hop, how many stages it skips, its body.
pub struct Delivery {
    pub id: u64,
    pub skip: u8,
    pub body: Vec<u8>,
}

/// A sender's end of a hop. Holds what it sent until acknowledged, and
/// sends it again when its receiver is lost.
pub struct Source {
    socket: zmq::Socket,
    /// Receivers by number (so nothing is allocated per message for their routing ids).
    dispatch: Dispatcher<u32>,
    numbers: HashMap<Vec<u8>, u32>,
    routes: HashMap<u32, Vec<u8>>,
    next_number: u32,
    /// Bodies of the messages receivers hold, for sending again.
    held: HashMap<u64, (u8, Vec<u8>)>,
    /// Held messages whose receiver was lost, to send before anything new.
    again: VecDeque<u64>,
    options: HopOptions,
    started: Instant,
    frames: Vec<zmq::Message>,
    /// Peers that sent something before granting credit: told to reset.
    resets: u64,
    malformed: u64,
}

impl Source {
    /// Binds `endpoint` (tcp, ipc or inproc).
    pub fn bind(ctx: &zmq::Context, endpoint: &str, options: HopOptions) -> zmq::Result<Source> {
        let socket = ctx.socket(zmq::ROUTER)?;
        socket.set_router_mandatory(true)?;
        socket.set_sndhwm(0)?;
        socket.set_rcvhwm(0)?;
        socket.set_maxmsgsize(options.max_message_bytes)?;
        socket.set_linger(0)?;
        socket.bind(endpoint)?;
        Ok(Source {
            socket,
            dispatch: Dispatcher::new(options.window, options.max_peers),
            numbers: HashMap::new(),
            routes: HashMap::new(),
            next_number: 0,
            held: HashMap::new(),
            again: VecDeque::new(),
            options,
            started: Instant::now(),
            frames: Vec::with_capacity(3),
            resets: 0,
            malformed: 0,
        })
    }

    /// The bound endpoint (with the port chosen for `tcp://…:*`).
    pub fn endpoint(&self) -> zmq::Result<String> {
        Ok(self.socket.get_last_endpoint()?.unwrap_or_default())
    }

    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a new message would go out now.
    pub fn ready(&self) -> bool {
        self.again.is_empty() && self.dispatch.has_credit()
    }

    /// Sends `body` as `id` to a receiver with credit, or gives it back when
    /// none has any (the caller keeps it and waits: that is the backpressure).
    pub fn try_send(&mut self, id: u64, skip: u8, body: Vec<u8>) -> zmq::Result<Result<(), Vec<u8>>> {
        if !self.again.is_empty() {
            return Ok(Err(body));
        }
        let Some(peer) = self.dispatch.next_peer() else { return Ok(Err(body)) };
        self.held.insert(id, (skip, body));
        self.send_held(peer, id)?;
        Ok(Ok(()))
    }

    /// Sends held message `id` to receiver `peer`; one whose connection is gone is forgotten.
    fn send_held(&mut self, peer: u32, id: u64) -> zmq::Result<()> {
        let (Some((skip, body)), Some(route)) = (self.held.get(&id), self.routes.get(&peer)) else {
            return Ok(());
        };
        let head = wire::data_header(id, *skip);
        match send_frames(&self.socket, &[route, &head], [&body[..]], zmq::DONTWAIT) {
            Ok(()) => {
                self.dispatch.sent(&peer, id);
                Ok(())
            }
            Err(zmq::Error::EHOSTUNREACH) | Err(zmq::Error::EAGAIN) => {
                let ids = self.dispatch.forget(&[peer]);
                self.prune();
                self.again.push_front(id);
                self.again.extend(ids);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads what receivers sent (credit, acks, pings) without blocking,
    /// calls `acked(id)` for each acknowledged message, drops silent
    /// receivers and sends their messages again.
    pub fn service(&mut self, mut acked: impl FnMut(u64)) -> zmq::Result<()> {
        loop {
            match recv_frames(&self.socket, &mut self.frames, 3, zmq::DONTWAIT)? {
                Received::WouldBlock => break,
                Received::TooManyFrames => self.malformed += 1,
                Received::Message => self.handle(&mut acked)?,
            }
        }
        let now = self.now_ms();
        let lost = self.dispatch.expire(now, self.options.peer_timeout.as_millis() as u64);
        if !lost.is_empty() {
            log::warn!(
                "pipeline: a receiver went silent holding {} messages: sending them again",
                lost.len()
            );
            self.again.extend(lost);
        }
        self.prune();
        while let Some(&id) = self.again.front() {
            if !self.held.contains_key(&id) {
                self.again.pop_front();
                continue;
            }
            let Some(peer) = self.dispatch.next_peer() else { break };
            self.again.pop_front();
            self.send_held(peer, id)?;
        }
        Ok(())
    }

    fn handle(&mut self, acked: &mut impl FnMut(u64)) -> zmq::Result<()> {
        let frames = std::mem::take(&mut self.frames);
        let result = self.handle_frames(&frames, acked);
        self.frames = frames;
        result
    }

    fn handle_frames(&mut self, frames: &[zmq::Message], acked: &mut impl FnMut(u64)) -> zmq::Result<()> {
        let Some((route, rest)) = frames.split_first() else { return Ok(()) };
        let now = self.now_ms();
        let known = self.numbers.get(&route[..]).copied();
        match (Wire::decode(rest), known) {
            (Ok(Wire::Credit(n)), Some(peer)) => {
                self.dispatch.heard(&peer, now);
                self.dispatch.credit(&peer, n);
            }
            (Ok(Wire::Credit(n)), None) => {
                let peer = self.next_number;
                if self.dispatch.heard(&peer, now) == wire::Heard::New {
                    self.next_number = self.next_number.wrapping_add(1);
                    self.numbers.insert(route.to_vec(), peer);
                    self.routes.insert(peer, route.to_vec());
                    self.dispatch.credit(&peer, n);
                }
            }
            (Ok(_), None) => {
                // A receiver of a previous run of this sender: it grants its window again.
                self.resets += 1;
                match self.socket.send_multipart([&route[..], wire::RESET], zmq::DONTWAIT) {
                    Ok(()) | Err(zmq::Error::EHOSTUNREACH) | Err(zmq::Error::EAGAIN) => {}
                    Err(e) => return Err(e),
                }
            }
            (Ok(Wire::Ack(ids)), Some(peer)) => {
                self.dispatch.heard(&peer, now);
                for id in wire::acked_ids(ids) {
                    if self.dispatch.acked(&peer, id) {
                        self.held.remove(&id);
                        acked(id);
                    }
                }
            }
            (Ok(Wire::Ping), Some(peer)) => {
                self.dispatch.heard(&peer, now);
            }
            (Ok(Wire::Data { .. }) | Ok(Wire::Reset), Some(_)) | (Err(_), _) => self.malformed += 1,
        }
        Ok(())
    }

    /// Forgets the routing ids of receivers the dispatcher no longer knows.
    fn prune(&mut self) {
        if self.routes.len() > self.dispatch.peers() {
            let dispatch = &self.dispatch;
            self.routes.retain(|n, _| dispatch.knows(n));
            self.numbers.retain(|_, n| dispatch.knows(n));
        }
    }

    /// Messages held by receivers or waiting to be sent again.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Receivers connected (that granted credit).
    pub fn receivers(&self) -> usize {
        self.dispatch.peers()
    }

    /// Malformed messages from receivers (counted, dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// A receiver's end of a hop: grants credit, takes messages, acknowledges them.
pub struct Inlet {
    socket: zmq::Socket,
    window: u32,
    ping_every: Duration,
    last_sent: Instant,
    acks: Vec<u8>,
    frames: Vec<zmq::Message>,
    malformed: u64,
}

impl Inlet {
    /// Connects to a [`Source`] (or a stage's outlet) at `endpoint` and grants `window`.
    pub fn connect(ctx: &zmq::Context, endpoint: &str, options: &HopOptions) -> zmq::Result<Inlet> {
        let socket = ctx.socket(zmq::DEALER)?;
        socket.set_sndhwm(0)?;
        socket.set_rcvhwm(0)?;
        socket.set_maxmsgsize(options.max_message_bytes)?;
        socket.set_linger(0)?;
        socket.connect(endpoint)?;
        socket.send(&wire::credit_frame(options.window)[..], 0)?;
        let mut acks = Vec::with_capacity(1 + 8 * 64);
        wire::ack_start(&mut acks);
        Ok(Inlet {
            socket,
            window: options.window,
            ping_every: options.ping_every,
            last_sent: Instant::now(),
            acks,
            frames: Vec::with_capacity(2),
            malformed: 0,
        })
    }

    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The next message, if one is waiting. A reset (the sender restarted)
    /// grants the window again.
    pub fn recv(&mut self) -> zmq::Result<Option<Delivery>> {
        loop {
            match recv_frames(&self.socket, &mut self.frames, 2, zmq::DONTWAIT)? {
                Received::WouldBlock => return Ok(None),
                Received::TooManyFrames => self.malformed += 1,
                Received::Message => match Wire::decode(&self.frames) {
                    Ok(Wire::Data { id, skip, body }) => {
                        return Ok(Some(Delivery { id, skip, body: body.to_vec() }));
                    }
                    Ok(Wire::Reset) => {
                        log::info!("pipeline: the sender restarted: granting the window again");
                        wire::ack_start(&mut self.acks);
                        self.send(&wire::credit_frame(self.window))?;
                    }
                    _ => self.malformed += 1,
                },
            }
        }
    }

    /// Acknowledges `id` (sent with others at the next [`Inlet::flush`], or now when the frame is full).
    pub fn ack(&mut self, id: u64) -> zmq::Result<()> {
        wire::ack_push(&mut self.acks, id);
        if wire::ack_len(&self.acks) >= wire::MAX_ACKS_PER_FRAME {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends pending acks, or a ping when nothing was sent for a while.
    pub fn flush(&mut self) -> zmq::Result<()> {
        if wire::ack_len(&self.acks) > 0 {
            let acks = std::mem::take(&mut self.acks);
            let sent = self.send(&acks);
            self.acks = acks;
            wire::ack_start(&mut self.acks);
            sent
        } else if self.last_sent.elapsed() >= self.ping_every {
            self.send(wire::PING)
        } else {
            Ok(())
        }
    }

    fn send(&mut self, frame: &[u8]) -> zmq::Result<()> {
        self.last_sent = Instant::now();
        match self.socket.send(frame, zmq::DONTWAIT) {
            // Not connected yet: the sender learns of us from the next ping.
            Ok(()) | Err(zmq::Error::EAGAIN) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Malformed messages from the sender (counted, dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
