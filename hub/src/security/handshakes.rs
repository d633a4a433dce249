//! Failed handshakes on the hub's CURVE sockets, counted by kind and logged
//! at the denials' rate limit.
//!
//! The ZAP handler sees only peers that got as far as asking it: a key not
//! in the allow-list is refused (and counted) there. A peer that speaks
//! plaintext, or that has the wrong server key (the hub cannot decrypt its
//! HELLO), or that never completes a handshake at all, fails before ZAP is
//! asked; libzmq reports those only to a socket monitor. So every CURVE
//! socket's monitor reports them here ([`Watch`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::denials::UNKNOWN;
use super::{Kind, Security};

/// What went wrong in a handshake. A plaintext peer that hangs up before
/// the hub has seen its greeting cannot be told from a broken one: it is
/// counted as a bad handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer does not speak CURVE (a plaintext ZeroMQ peer).
    Plaintext,
    /// The peer's key is not in the allow-list (ZAP refused it).
    UnknownKey,
    /// Anything else: the wrong server key, a broken or abandoned handshake.
    BadHandshake,
}

impl Failure {
    pub const ALL: [Failure; 3] = [Failure::Plaintext, Failure::UnknownKey, Failure::BadHandshake];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Plaintext => "plaintext",
            Failure::UnknownKey => "unknown_key",
            Failure::BadHandshake => "bad_handshake",
        }
    }
}

/// The monitor events that report a handshake failing before ZAP answers
/// (one ZAP refused is `HANDSHAKE_FAILED_AUTH`, counted by the ZAP handler).
pub const EVENTS: i32 =
    zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32 | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32;

/// libzmq's `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`: the peer offered
/// another security mechanism (NULL, a plaintext peer).
const MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// Classifies one monitor event by its first frame (the event number and
/// its value, little-endian); `None` if it is not a failed handshake.
pub fn classify(event: &[u8]) -> Option<Failure> {
    let number = u16::from_le_bytes(event.get(..2)?.try_into().ok()?);
    let value = u32::from_le_bytes(event.get(2..6)?.try_into().ok()?);
    if number == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16 && value == MECHANISM_MISMATCH {
        Some(Failure::Plaintext)
    } else if number as i32 & EVENTS != 0 {
        Some(Failure::BadHandshake)
    } else {
        None
    }
}

/// Counts per kind.
#[derive(Debug, Default)]
pub struct Handshakes([AtomicU64; 3]);

impl Handshakes {
    pub fn count(&self, failure: Failure) -> u64 {
        self.0[failure as usize].load(Relaxed)
    }

    fn add(&self, failure: Failure) {
        self.0[failure as usize].fetch_add(1, Relaxed);
    }
}

impl Security {
    /// Counts a failed handshake, and logs it (as a connect denial of
    /// nobody in particular: rate-limited). `place` says where, e.g. the
    /// socket's endpoint.
    pub fn handshake_failed(&self, failure: Failure, place: impl FnOnce() -> String) {
        self.handshakes.add(failure);
        self.denials.record(UNKNOWN, Kind::Connect, || {
            let what = match failure {
                Failure::Plaintext => "a peer without CURVE (plaintext)",
                Failure::UnknownKey => "a key not in the allow-list",
                Failure::BadHandshake => "a failed CURVE handshake (wrong server key, or a broken peer)",
            };
            format!("{what}: {}", place())
        });
    }
}

impl Security {
    /// Makes `socket` a CURVE server for `role` (call before it binds): ZAP
    /// asks about every peer, a handshake not done within
    /// `handshake_timeout_ms` is dropped, and failures are counted (on the
    /// `handshakes` thread; pass `watch: false` for a socket whose own
    /// monitor reports them, with [`note_events`]).
    pub fn make_server(
        &self,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        role: super::SocketRole<'_>,
        watch: bool,
    ) -> zmq::Result<()> {
        transport::curve::make_server(socket, &self.server, &role.domain())?;
        socket.set_handshake_ivl(self.handshake_timeout.as_millis().try_into().unwrap_or(i32::MAX))?;
        if watch {
            self.watch_handshakes(ctx, socket, &role.domain())?;
        }
        Ok(())
    }

    /// Reports `socket`'s failed handshakes (call before it binds), on the
    /// thread that runs [`Security::take_watch`]'s monitors.
    pub fn watch_handshakes(&self, ctx: &zmq::Context, socket: &zmq::Socket, name: &str) -> zmq::Result<()> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner()).add(ctx, socket, name)
    }

    /// The monitors added so far, to run.
    pub fn take_watch(&self) -> Watch {
        std::mem::take(&mut self.watch.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Monitors of CURVE sockets, read on a thread of their own.
#[derive(Default)]
pub struct Watch {
    monitors: Vec<zmq::Socket>,
}

impl Watch {
    /// Reports `socket`'s failed handshakes; call before it binds. `name`
    /// tells the monitor's in-process endpoint apart (one per socket).
    pub fn add(&mut self, ctx: &zmq::Context, socket: &zmq::Socket, name: &str) -> zmq::Result<()> {
        let endpoint = format!("inproc://handshakes.{name}");
        socket.monitor(&endpoint, EVENTS)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect(&endpoint)?;
        self.monitors.push(monitor);
        Ok(())
    }

    /// Counts failures until `stop`.
    pub fn run(self, security: &Security, stop: &transport::ShutdownWatch) -> zmq::Result<()> {
        while !stop.is_set() {
            let mut items: Vec<zmq::PollItem<'_>> =
                self.monitors.iter().map(|m| m.as_poll_item(zmq::POLLIN)).collect();
            items.push(stop.poll_item());
            match zmq::poll(&mut items, 1000) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e),
            }
            for monitor in &self.monitors {
                note_events(monitor, security, |_| {});
            }
        }
        Ok(())
    }
}

/// Reads every waiting event on `monitor`: failed handshakes are counted on
/// `security`; each other event (its number and value) goes to `other`.
pub fn note_events(monitor: &zmq::Socket, security: &Security, mut other: impl FnMut((u16, u32))) {
    while let Ok(event) = monitor.recv_multipart(zmq::DONTWAIT) {
        let Some(first) = event.first() else { continue };
        let endpoint = || event.get(1).map(|e| String::from_utf8_lossy(e).into_owned()).unwrap_or_default();
        match classify(first) {
            Some(failure) => security.handshake_failed(failure, endpoint),
            None => {
                if let (Some(n), Some(v)) = (first.get(..2), first.get(2..6)) {
                    let number = u16::from_le_bytes([n[0], n[1]]);
                    other((number, u32::from_le_bytes([v[0], v[1], v[2], v[3]])));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::security;

    /// A CURVE server with a monitor, and what each kind of bad peer makes
    /// libzmq report.
    #[test]
    fn plaintext_and_wrong_server_keys_are_told_apart() {
        let ctx = zmq::Context::new();
        let security = security(&["pump-1"], &[("pump-*", "agent")]);
        let server = ctx.socket(zmq::ROUTER).unwrap();
        transport::curve::make_server(&server, &security.server, "plantd.broker").unwrap();
        let mut watch = Watch::default();
        watch.add(&ctx, &server, "test").unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = server.get_last_endpoint().unwrap().unwrap();

        let plain = ctx.socket(zmq::DEALER).unwrap();
        plain.connect(&endpoint).unwrap();
        let wrong = ctx.socket(zmq::DEALER).unwrap();
        let other_server = transport::curve::generate().unwrap();
        let client = transport::curve::generate().unwrap();
        let keys = transport::curve::ClientKeys {
            public: client.public,
            secret: client.secret,
            server: other_server.public,
        };
        transport::curve::make_client(&wrong, &keys).unwrap();
        wrong.connect(&endpoint).unwrap();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = |f| security.handshakes.count(f) > 0;
        while !(seen(Failure::Plaintext) && seen(Failure::BadHandshake)) {
            assert!(std::time::Instant::now() < deadline, "both failures reported");
            watch.monitors[0].poll(zmq::POLLIN, 100).unwrap();
            note_events(&watch.monitors[0], &security, |_| {});
        }
        assert!(security.denials.count(UNKNOWN, Kind::Connect) >= 2, "and counted as denials");
        assert_eq!(classify(&[0x01, 0x00, 0, 0, 0, 0]), None, "CONNECTED is not a failure");
    }
}
