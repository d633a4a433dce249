//! Subscriptions, up from subscribers: checked, counted in the ledger, and
//! applied at the subscriber side. Publishers never see them (see `super`).
//!
//! How a refused subscription is kept from taking effect depends on libzmq:
//!
//! - From 4.3.5 the backend XPUB runs in manual mode: a subscription takes
//!   effect only when the proxy applies it, right after reading it, and a
//!   refused one never does. libzmq pairs each subscription it hands over
//!   with its connection through a queue that a message which is not a
//!   subscription puts out of step, until the socket's queue is empty again
//!   (`xpub.cpp`: every read takes a connection off that queue, but only
//!   subscriptions put one on). A SUB never sends such a message, so its
//!   sender is closed, and until the queue drains the proxy applies nothing:
//!   it closes the subscribers it read meanwhile instead (they reconnect and
//!   subscribe again), rather than risk giving one another's subscription.
//! - Before 4.3.5 manual mode can apply a subscription to a connection that
//!   has already closed (a use-after-free; libzmq commit 2df7ab6), so libzmq
//!   applies every subscription itself and hands each to the proxy (verbose
//!   mode). A refused one closes its subscriber's connection, and libzmq
//!   frees what it applied. Until the proxy reads it, messages matching it
//!   may reach that subscriber, and libzmq holds what it applied: the
//!   backend's receive high-water mark (`max_unread_subscriptions`) bounds
//!   how many subscriptions of one connection can be applied unchecked, and
//!   the proxy reads subscriptions before every batch of messages to keep
//!   that window short. Use libzmq 4.3.5 or later where subscribers are not
//!   trusted.
//!
//! Subscriptions libzmq makes up itself when a connection closes carry no
//! connection and are ignored: the socket monitor reports the close, and
//! the ledger releases what that connection held.

use std::sync::atomic::Ordering::Relaxed;

use proto::bus::Subscription;
use transport::peer::{self, ConnId, Origin};

use super::subscriptions::{Conn, Over};
use super::{permitted, Bus, BusError, BATCH};
use crate::security::Kind;

/// How the backend applies subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// libzmq ≥ 4.3.5, `ZMQ_XPUB_MANUAL`. `unpaired`: a message that was not a
    /// subscription was read since the socket's queue was last empty.
    Manual { unpaired: bool },
    /// libzmq < 4.3.5: libzmq applies every subscription.
    Verbose,
}

impl Mode {
    /// Configures the backend XPUB for this libzmq.
    pub(super) fn set_up(backend: &mut zmq::Socket) -> zmq::Result<Mode> {
        if transport::socket::xpub_manual_is_safe() {
            transport::socket::set_xpub_manual(backend)?;
            return Ok(Mode::Manual { unpaired: false });
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            let (major, minor, patch) = zmq::version();
            log::warn!(
                "libzmq {major}.{minor}.{patch}: refused bus subscriptions close their subscriber, \
                 which may first receive a few messages it was not allowed (libzmq 4.3.5 fixes this)"
            );
        });
        backend.set_xpub_verbose(true)?;
        transport::socket::set_xpub_verboser(backend)?;
        Ok(Mode::Verbose)
    }
}

/// What one message from a subscriber turned out to be.
enum Up {
    /// Nothing waiting.
    Idle,
    /// libzmq's own, for a closed connection (no sender).
    Generated,
    /// From a subscriber's connection: its first frame (origin read) and
    /// whether it was a single frame.
    From { fd: i32, origin: Origin, first: zmq::Message, single: bool },
}

impl Bus {
    /// Reads every waiting subscription: applies the allowed ones within
    /// bounds, passes new prefixes up, closes what must be closed.
    pub(super) fn forward_up(&mut self) -> Result<(), BusError> {
        for _ in 0..BATCH {
            let (fd, origin, first, single) = match self.read_up()? {
                Up::Idle => {
                    // libzmq's pairing queue is empty too: in step again.
                    self.mode = match self.mode {
                        Mode::Manual { .. } => Mode::Manual { unpaired: false },
                        Mode::Verbose => Mode::Verbose,
                    };
                    break;
                }
                Up::Generated => continue,
                Up::From { fd, origin, first, single } => (fd, origin, first, single),
            };
            let subscription = if single { Subscription::parse(&first) } else { None };
            let Some(subscription) = subscription else {
                self.counters.malformed_up.fetch_add(1, Relaxed);
                if let Mode::Manual { .. } = self.mode {
                    self.mode = Mode::Manual { unpaired: true };
                }
                self.deny(Kind::Subscribe, &self.counters.subscribe_denied, || {
                    format!("a message that is not a subscription, on bus {}", self.config.name)
                });
                self.refuse_subscriber(fd, origin);
                continue;
            };
            if self.mode == (Mode::Manual { unpaired: true }) {
                // Applying it could apply it to another connection: have this
                // subscriber start over instead.
                self.close_subscriber(fd);
                continue;
            }
            // The connection on `fd` now: the one that sent this, unless it closed meanwhile.
            let Some(conn) = ConnId::of(fd) else { continue };
            match subscription {
                Subscription::Subscribe(prefix) => self.subscribe(conn, origin, prefix)?,
                Subscription::Unsubscribe(prefix) => {
                    if self.ledger.unsubscribe(Conn::Peer(conn), prefix) {
                        if let Mode::Manual { .. } = self.mode {
                            self.backend.set_unsubscribe(prefix)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads one whole message from the backend (subscribers send one-frame
    /// messages; more frames are read and make the message malformed).
    fn read_up(&mut self) -> Result<Up, BusError> {
        let mut first = zmq::Message::new();
        match self.backend.recv(&mut first, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Ok(Up::Idle),
            Err(e) => return Err(e.into()),
        }
        let mut bytes = first.len();
        let mut more = first.get_more();
        let single = !more;
        // The rest of a multipart message is already here: libzmq delivers it whole.
        while more {
            let mut frame = zmq::Message::new();
            self.backend.recv(&mut frame, 0)?;
            bytes += frame.len();
            more = frame.get_more();
        }
        self.counters.messages_up.fetch_add(1, Relaxed);
        self.counters.bytes_up.fetch_add(bytes as u64, Relaxed);
        let origin = peer::origin(&mut first, &mut self.user_id);
        Ok(match origin.fd {
            Some(fd) => Up::From { fd, origin, first, single },
            None => Up::Generated,
        })
    }

    fn subscribe(&mut self, conn: ConnId, origin: Origin, prefix: &[u8]) -> Result<(), BusError> {
        if let (true, Some(fd)) = (origin.has_user_id, origin.fd) {
            self.connections.note(fd, &self.user_id);
        }
        let bus = &self.config.name;
        let allowed = permitted(self.security.as_deref(), &mut self.grants, origin, &self.user_id, |g| {
            g.may_subscribe(bus, prefix)
        });
        let identity = origin.has_user_id.then_some(self.user_id.as_str());
        let over = match allowed.then(|| self.ledger.subscribe(Conn::Peer(conn), identity, prefix)) {
            Some(Ok(())) => {
                if let Mode::Manual { .. } = self.mode {
                    // This applies it to the connection it came on.
                    self.backend.set_subscribe(prefix)?;
                }
                return Ok(());
            }
            Some(Err(over)) => Some(over),
            None => None,
        };
        self.deny(Kind::Subscribe, &self.counters.subscribe_denied, || match over {
            None => format!("subscribe to '{}' on bus {bus}", String::from_utf8_lossy(prefix)),
            Some(over) => {
                let c = &self.config;
                let limit = match over {
                    Over::Count => format!("{} per connection", c.max_subscriptions),
                    Over::Length => format!("{} bytes per prefix", c.max_subscription_bytes),
                    Over::Total => format!("{} on the bus", c.max_total_subscriptions),
                    Over::TotalBytes => format!("{} prefix bytes on the bus", c.max_total_subscription_bytes),
                    Over::IdentityCount => format!("{} per identity", c.max_subscriptions_per_identity),
                    Over::IdentityBytes => {
                        format!("{} prefix bytes per identity", c.max_subscription_bytes_per_identity)
                    }
                    Over::IdentityConnections => {
                        format!("{} subscribing connections per identity", c.max_connections_per_identity)
                    }
                };
                format!("a subscription on bus {bus} over the bound of {limit}")
            }
        });
        // A connection over its identity's bound is closed at once: it is the excess.
        if over == Some(Over::IdentityConnections) {
            self.refuse_subscriber(conn.fd, origin);
            return Ok(());
        }
        // libzmq applied it already (verbose mode), or keeps a note of it
        // (manual mode) that a stream of refusals would grow without bound.
        if self.mode == Mode::Verbose || self.ledger.refused(conn) {
            self.refuse_subscriber(conn.fd, origin);
        }
        Ok(())
    }

    /// Closes a subscriber that went over its grants or a bound, and holds
    /// its identity off the backend for `subscriber_cooldown_ms`, so that its
    /// socket cannot reconnect and send the same at once (see
    /// `security::holds`). `origin` is the refused message's, with its
    /// identity in `self.user_id`.
    fn refuse_subscriber(&self, fd: i32, origin: Origin) {
        self.close_subscriber(fd);
        if let (Some(security), true) = (&self.security, origin.has_user_id) {
            let until = std::time::Instant::now() + self.config.subscriber_cooldown();
            security.holds.hold_off(&self.user_id, &self.backend_domain, until);
        }
    }

    /// Ends a subscriber's connection; libzmq drops it and its subscriptions.
    fn close_subscriber(&self, fd: i32) {
        if peer::shut(fd) {
            self.counters.subscribers_closed.fetch_add(1, Relaxed);
        }
    }

    /// Notes who is connected to the capture (from their subscriptions), and
    /// closes those no longer allowed there.
    pub(super) fn note_capture(&mut self) -> Result<(), BusError> {
        let Some(capture) = &self.capture else { return Ok(()) };
        for _ in 0..BATCH {
            let mut first = zmq::Message::new();
            match capture.recv(&mut first, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
            let mut more = first.get_more();
            while more {
                let mut frame = zmq::Message::new();
                capture.recv(&mut frame, 0)?;
                more = frame.get_more();
            }
            let origin = peer::origin(&mut first, &mut self.user_id);
            let Some(fd) = origin.fd else { continue };
            if origin.has_user_id {
                self.connections.note(fd, &self.user_id);
            }
            let bus = &self.config.name;
            if !permitted(self.security.as_deref(), &mut self.grants, origin, &self.user_id, |g| {
                g.may_capture(bus)
            }) {
                peer::shut(fd);
            }
        }
        Ok(())
    }

    /// The hub's own views' subscriptions on the tap: the proxy's own (not
    /// real subscribers), released when they unsubscribe.
    pub(super) fn tap_subscriptions(&mut self) -> Result<(), BusError> {
        for _ in 0..BATCH {
            let message = match self.tap.recv_bytes(zmq::DONTWAIT) {
                Ok(message) => message,
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            match Subscription::parse(&message) {
                Some(Subscription::Subscribe(prefix)) => {
                    self.tap_holds += 1;
                    let _ = self.ledger.subscribe(Conn::Local, None, prefix);
                }
                Some(Subscription::Unsubscribe(prefix)) if self.ledger.unsubscribe(Conn::Local, prefix) => {
                    self.tap_holds = self.tap_holds.saturating_sub(1);
                }
                Some(Subscription::Unsubscribe(_)) => {}
                None => {}
            }
        }
        Ok(())
    }
}
