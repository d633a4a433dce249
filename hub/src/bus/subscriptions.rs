//! The bus's ledger of subscriptions, per subscriber connection.
//!
//! A subscription counts only if it is allowed (by the subscriber's grants)
//! and within bounds: at most `max_subscriptions` per connection,
//! `max_subscription_bytes` per prefix, `max_total_subscriptions` per bus.
//! So one subscriber cannot grow the hub's or every publisher's (every
//! agent's) subscription tables without bound. (How a refused one is kept
//! from taking effect depends on libzmq's version: see `super::upstream`.)
//!
//! Upstream (to the publishers) each prefix is subscribed once while any
//! counted subscription holds it, and unsubscribed when the last goes, which
//! happens on an unsubscribe or when its connection closes (the proxy learns
//! that from the socket monitor; libzmq's own unsubscriptions for a closed
//! connection name no connection, and would also cover refused prefixes, so
//! the proxy ignores them).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, RwLock};

use transport::peer::ConnId;

/// The prefixes real subscribers hold, readable from other threads: the
/// ingest service accepts a batch only when someone is there to hear it.
/// The proxy's own subscription (for a capture or a recording) and those of
/// the hub's in-process components do not count.
#[derive(Clone, Default)]
pub struct Subscribers(Arc<RwLock<HashMap<Box<[u8]>, u32>>>);

impl Subscribers {
    /// Whether some real subscriber's prefix covers `topic`.
    pub fn covers(&self, topic: &[u8]) -> bool {
        let held = self.0.read().unwrap_or_else(|e| e.into_inner());
        held.keys().any(|prefix| topic.starts_with(prefix))
    }

    fn change(&self, prefix: &[u8], by: i64) {
        let mut held = self.0.write().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(prefix.into()).or_default();
        *count = (*count as i64 + by).max(0) as u32;
        if *count == 0 {
            held.remove(prefix);
        }
    }
}

/// Which subscriber connection a subscription came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conn {
    /// A subscriber's connection (TCP or IPC).
    Peer(ConnId),
    /// The proxy's own subscription, for a capture or a recording: not
    /// bounded, never closed.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The connection holds `max_subscriptions` already.
    Count,
    /// The prefix is longer than `max_subscription_bytes`.
    Length,
    /// The bus holds `max_total_subscriptions` already.
    Total,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_connection: usize,
    pub prefix_bytes: usize,
    pub total: usize,
}

pub struct Ledger {
    limits: Limits,
    conns: HashMap<Conn, HashMap<Box<[u8]>, u32>>,
    /// Subscriptions refused per connection (libzmq may keep even those).
    refusals: HashMap<ConnId, usize>,
    upstream: HashMap<Box<[u8]>, u32>,
    total: usize,
    real: Subscribers,
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            conns: HashMap::new(),
            refusals: HashMap::new(),
            upstream: HashMap::new(),
            total: 0,
            real: Subscribers::default(),
        }
    }

    /// What real subscribers hold, shared.
    pub fn subscribers(&self) -> Subscribers {
        self.real.clone()
    }

    /// Records an allowed subscription if it is within bounds. `Ok(true)`
    /// when the prefix is new upstream (send the subscription on).
    pub fn subscribe(&mut self, conn: Conn, prefix: &[u8]) -> Result<bool, Over> {
        let held = self.conns.get(&conn).map_or(0, |subs| subs.values().map(|&n| n as usize).sum());
        if conn != Conn::Local {
            if prefix.len() > self.limits.prefix_bytes {
                return Err(Over::Length);
            }
            if held >= self.limits.per_connection {
                return Err(Over::Count);
            }
            if self.total >= self.limits.total {
                return Err(Over::Total);
            }
        }
        *self.conns.entry(conn).or_default().entry(prefix.into()).or_default() += 1;
        self.total += 1;
        if conn != Conn::Local {
            self.real.change(prefix, 1);
        }
        let upstream = self.upstream.entry(prefix.into()).or_default();
        *upstream += 1;
        Ok(*upstream == 1)
    }

    /// Records an unsubscription. `None` if the connection never had that
    /// subscription applied (nothing to undo); `Some(true)` when the prefix
    /// is gone upstream too (send the unsubscription on).
    pub fn unsubscribe(&mut self, conn: Conn, prefix: &[u8]) -> Option<bool> {
        let subs = self.conns.get_mut(&conn)?;
        let count = subs.get_mut(prefix)?;
        *count -= 1;
        if *count == 0 {
            subs.remove(prefix);
        }
        if subs.is_empty() {
            self.conns.remove(&conn);
        }
        if conn != Conn::Local {
            self.real.change(prefix, -1);
        }
        Some(self.release(prefix, 1))
    }

    /// Counts a refused subscription; true when the connection has had more
    /// than `max_subscriptions` refused (and should be closed).
    pub fn refused(&mut self, conn: ConnId) -> bool {
        let n = self.refusals.entry(conn).or_default();
        *n += 1;
        *n > self.limits.per_connection
    }

    /// The monitor saw a connection on `fd` close: the subscriptions of
    /// connections on `fd` that are no longer open go (a newer connection on
    /// the same descriptor keeps its own). Returns the prefixes now gone upstream.
    pub fn closed(&mut self, fd: RawFd) -> Vec<Box<[u8]>> {
        self.refusals.retain(|c, _| c.fd != fd || c.is_open());
        let gone: Vec<Conn> = (self.conns.keys())
            .filter(|c| matches!(c, Conn::Peer(id) if id.fd == fd && !id.is_open()))
            .copied()
            .collect();
        let mut released = Vec::new();
        for conn in gone {
            let Some(subs) = self.conns.remove(&conn) else { continue };
            for (prefix, n) in subs {
                self.real.change(&prefix, -i64::from(n));
                if self.release(&prefix, n) {
                    released.push(prefix);
                }
            }
        }
        released
    }

    /// Drops `n` holds on `prefix` upstream; true if none is left.
    fn release(&mut self, prefix: &[u8], n: u32) -> bool {
        self.total -= n as usize;
        let Some(count) = self.upstream.get_mut(prefix) else { return false };
        *count -= n;
        if *count == 0 {
            self.upstream.remove(prefix);
            return true;
        }
        false
    }

    /// Subscriptions applied, over all connections.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ledger() -> Ledger {
        Ledger::new(Limits { per_connection: 3, prefix_bytes: 8, total: 5 })
    }

    /// Connections the ledger can tell apart and check: real sockets, kept
    /// open (or closed) by the test.
    struct Sockets(Vec<std::os::unix::net::UnixStream>);

    fn socket() -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::pair().unwrap().0
    }

    impl Sockets {
        fn new(n: usize) -> Sockets {
            Sockets((0..n).map(|_| socket()).collect())
        }

        fn conn(&self, i: usize) -> Conn {
            use std::os::fd::AsRawFd;
            Conn::Peer(ConnId::of(self.0[i].as_raw_fd()).unwrap())
        }

        /// Closes socket `i` and opens another on the same descriptor, as
        /// libzmq does when it accepts a connection after one closed.
        /// Returns the descriptor, for `Ledger::closed`.
        fn reconnect(&mut self, i: usize) -> RawFd {
            use std::os::fd::{AsRawFd, FromRawFd};
            let fd = self.0[i].as_raw_fd();
            let next = socket();
            // SAFETY: dup2 onto a descriptor the old stream owns; the old stream
            // is then forgotten, so the descriptor has one owner again.
            unsafe {
                assert_eq!(libc::dup2(next.as_raw_fd(), fd), fd);
                let old = std::mem::replace(&mut self.0[i], std::os::unix::net::UnixStream::from_raw_fd(fd));
                std::mem::forget(old);
            }
            fd
        }
    }

    #[test]
    fn bounds_per_connection_per_prefix_and_per_bus() {
        let s = Sockets::new(4);
        let mut l = ledger();
        assert_eq!(l.subscribe(s.conn(0), b"a"), Ok(true));
        assert_eq!(l.subscribe(s.conn(0), b"a"), Ok(false), "already upstream");
        assert_eq!(l.subscribe(s.conn(0), b"b"), Ok(true));
        assert_eq!(l.subscribe(s.conn(0), b"c"), Err(Over::Count));
        assert_eq!(l.subscribe(s.conn(1), b"123456789"), Err(Over::Length));
        assert_eq!(l.subscribe(s.conn(1), b"c"), Ok(true));
        assert_eq!(l.subscribe(s.conn(2), b"d"), Ok(true));
        assert_eq!(l.subscribe(s.conn(3), b"e"), Err(Over::Total));
        assert_eq!(
            l.subscribe(Conn::Local, b"anything goes here"),
            Ok(true),
            "the hub's own are not bounded"
        );
        let Conn::Peer(id) = s.conn(3) else { unreachable!() };
        assert!(!l.refused(id) && !l.refused(id) && !l.refused(id));
        assert!(l.refused(id), "a fourth refusal is one more than max_subscriptions");
    }

    #[test]
    fn only_real_subscribers_count_as_listeners() {
        let mut s = Sockets::new(1);
        let mut l = Ledger::new(Limits { per_connection: 10, prefix_bytes: 64, total: 10 });
        let real = l.subscribers();
        l.subscribe(Conn::Local, b"").unwrap();
        assert!(!real.covers(b"org.plantd.Metric.pi.t"), "a capture's subscribe-all is nobody listening");
        l.subscribe(s.conn(0), b"org.plantd.Metric.pi.").unwrap();
        assert!(real.covers(b"org.plantd.Metric.pi.t"));
        let fd = s.reconnect(0);
        l.closed(fd);
        assert!(!real.covers(b"org.plantd.Metric.pi.t"));
    }

    #[test]
    fn upstream_follows_the_last_holder() {
        let mut s = Sockets::new(3);
        let mut l = ledger();
        l.subscribe(s.conn(0), b"a").unwrap();
        l.subscribe(s.conn(1), b"a").unwrap();
        assert_eq!(l.unsubscribe(s.conn(2), b"a"), None, "never applied there: nothing to undo");
        assert_eq!(l.unsubscribe(s.conn(0), b"a"), Some(false), "connection 1 still holds it");
        let fd = s.reconnect(1);
        assert_eq!(l.closed(fd), vec![Box::from(&b"a"[..])]);
        assert_eq!((l.total(), l.connections()), (0, 0));
    }

    #[test]
    fn a_newer_connection_on_the_same_descriptor_keeps_its_subscriptions() {
        let mut s = Sockets::new(1);
        let mut l = ledger();
        l.subscribe(s.conn(0), b"old").unwrap();
        let fd = s.reconnect(0);
        // The new connection's subscription is read before the old one's close.
        l.subscribe(s.conn(0), b"new").unwrap();
        assert_eq!(l.closed(fd), vec![Box::from(&b"old"[..])]);
        assert!(l.subscribers().covers(b"new.topic"));
        assert_eq!(l.total(), 1);
    }

    proptest! {
        #[test]
        fn totals_always_match_what_connections_hold(ops in prop::collection::vec((0u8..3, 0usize..4, 0u8..4), 0..200)) {
            let mut s = Sockets::new(4);
            let mut l = Ledger::new(Limits { per_connection: 4, prefix_bytes: 8, total: 8 });
            for (op, i, prefix) in ops {
                let prefix = [b'a' + prefix];
                match op {
                    0 => { let _ = l.subscribe(s.conn(i), &prefix); }
                    1 => { let _ = l.unsubscribe(s.conn(i), &prefix); }
                    _ => { let fd = s.reconnect(i); let _ = l.closed(fd); }
                }
                let held: u32 = l.conns.values().flat_map(|s| s.values()).sum();
                prop_assert_eq!(held as usize, l.total());
                prop_assert_eq!(l.upstream.values().sum::<u32>() as usize, l.total());
                prop_assert!(l.total() <= 8);
                prop_assert!(l.connections() <= 4, "closed connections leave the ledger");
            }
        }
    }
}
