//! The bus's ledger of subscriptions, per subscriber connection and per
//! identity.
//!
//! A subscription counts only if it is allowed (by the subscriber's grants)
//! and within every bound: per connection (`max_subscriptions`), per prefix
//! (`max_subscription_bytes`), per identity across all its connections
//! (`max_subscriptions_per_identity`, `max_subscription_bytes_per_identity`,
//! `max_connections_per_identity`) and per bus (`max_total_subscriptions`,
//! `max_total_subscription_bytes`). What libzmq keeps for a subscription
//! grows with its prefix (a trie node per byte), so bytes are bounded as
//! well as counts. (How a refused one is kept from taking effect depends on
//! libzmq's version: see `super::upstream`.)
//!
//! Publishers never see these subscriptions: the proxy asks them for
//! everything while anyone subscribes at all, and filters at its subscriber
//! side (see `super`). So the ledger only tells the proxy whether anything
//! is held, never what.
//!
//! A connection's subscriptions go when it unsubscribes or closes (the proxy
//! learns of a close from the socket monitor; libzmq's own unsubscriptions
//! for a closed connection name no connection, and would also cover refused
//! prefixes, so the proxy ignores them).

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
    /// The proxy's own subscriptions, for a capture, a recording or the
    /// hub's own views: not bounded, never closed.
    Local,
}

/// Which bound a refused subscription is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The connection holds `max_subscriptions` already.
    Count,
    /// The prefix is longer than `max_subscription_bytes`.
    Length,
    /// The bus holds `max_total_subscriptions` already.
    Total,
    /// The bus's subscriptions would pass `max_total_subscription_bytes`.
    TotalBytes,
    /// The identity holds `max_subscriptions_per_identity` already.
    IdentityCount,
    /// The identity's subscriptions would pass `max_subscription_bytes_per_identity`.
    IdentityBytes,
    /// A new connection of an identity that has `max_connections_per_identity`
    /// subscribing already: the connection itself is over, and is closed.
    IdentityConnections,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_connection: usize,
    pub prefix_bytes: usize,
    pub total: usize,
    pub total_bytes: usize,
    pub per_identity: usize,
    pub bytes_per_identity: usize,
    pub connections_per_identity: usize,
}

impl Limits {
    /// No bound at all (for tests of other rules).
    #[cfg(test)]
    pub fn unbounded() -> Limits {
        Limits {
            per_connection: usize::MAX,
            prefix_bytes: usize::MAX,
            total: usize::MAX,
            total_bytes: usize::MAX,
            per_identity: usize::MAX,
            bytes_per_identity: usize::MAX,
            connections_per_identity: usize::MAX,
        }
    }
}

/// What one connection holds.
#[derive(Default)]
struct Held {
    /// Its identity (with security); per-identity bounds apply only to these.
    identity: Option<Arc<str>>,
    prefixes: HashMap<Box<[u8]>, u32>,
    count: usize,
    bytes: usize,
}

/// What one identity holds over all its connections.
#[derive(Default, Debug, PartialEq, Eq)]
struct Usage {
    connections: usize,
    subscriptions: usize,
    bytes: usize,
}

pub struct Ledger {
    limits: Limits,
    conns: HashMap<Conn, Held>,
    /// Bounded: only allow-listed identities get through the ZAP handler.
    identities: HashMap<Arc<str>, Usage>,
    /// Subscriptions refused per connection (libzmq may keep even those).
    refusals: HashMap<ConnId, usize>,
    total: usize,
    bytes: usize,
    real: Subscribers,
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            conns: HashMap::new(),
            identities: HashMap::new(),
            refusals: HashMap::new(),
            total: 0,
            bytes: 0,
            real: Subscribers::default(),
        }
    }

    /// What real subscribers hold, shared.
    pub fn subscribers(&self) -> Subscribers {
        self.real.clone()
    }

    /// Records an allowed subscription of `identity` (with security) if it
    /// is within every bound.
    pub fn subscribe(&mut self, conn: Conn, identity: Option<&str>, prefix: &[u8]) -> Result<(), Over> {
        if conn != Conn::Local {
            self.check(conn, identity, prefix)?;
        }
        let held = self.conns.entry(conn).or_default();
        if held.count == 0 {
            if let Some(name) = identity.filter(|_| conn != Conn::Local) {
                let name: Arc<str> = match self.identities.get_key_value(name) {
                    Some((name, _)) => name.clone(),
                    None => name.into(),
                };
                self.identities.entry(name.clone()).or_default().connections += 1;
                held.identity = Some(name);
            }
        }
        *held.prefixes.entry(prefix.into()).or_default() += 1;
        held.count += 1;
        held.bytes += prefix.len();
        if let Some(usage) = held.identity.as_ref().and_then(|name| self.identities.get_mut(name)) {
            usage.subscriptions += 1;
            usage.bytes += prefix.len();
        }
        self.total += 1;
        self.bytes += prefix.len();
        if conn != Conn::Local {
            self.real.change(prefix, 1);
        }
        Ok(())
    }

    /// Which bound, if any, `prefix` on `conn` would pass.
    fn check(&self, conn: Conn, identity: Option<&str>, prefix: &[u8]) -> Result<(), Over> {
        let l = &self.limits;
        let held = self.conns.get(&conn).map_or(0, |h| h.count);
        if prefix.len() > l.prefix_bytes {
            return Err(Over::Length);
        }
        if let Some(usage) = identity.and_then(|name| self.identities.get(name)) {
            if held == 0 && usage.connections >= l.connections_per_identity {
                return Err(Over::IdentityConnections);
            }
            if usage.subscriptions >= l.per_identity {
                return Err(Over::IdentityCount);
            }
            if usage.bytes + prefix.len() > l.bytes_per_identity {
                return Err(Over::IdentityBytes);
            }
        } else if identity.is_some() && prefix.len() > l.bytes_per_identity {
            return Err(Over::IdentityBytes);
        }
        if held >= l.per_connection {
            return Err(Over::Count);
        }
        if self.total >= l.total {
            return Err(Over::Total);
        }
        if self.bytes + prefix.len() > l.total_bytes {
            return Err(Over::TotalBytes);
        }
        Ok(())
    }

    /// Records an unsubscription; false if the connection never had that
    /// subscription applied (nothing to undo).
    pub fn unsubscribe(&mut self, conn: Conn, prefix: &[u8]) -> bool {
        let Some(held) = self.conns.get_mut(&conn) else { return false };
        let Some(count) = held.prefixes.get_mut(prefix) else { return false };
        *count -= 1;
        if *count == 0 {
            held.prefixes.remove(prefix);
        }
        self.release(conn, prefix, 1);
        true
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
    /// the same descriptor keeps its own). libzmq reports a close just before
    /// it closes the descriptor, and subscriptions it read before may still
    /// come: the connection on `fd` while still open is returned, to be
    /// looked at again ([`Ledger::recheck`]) until it is gone.
    pub fn closed(&mut self, fd: RawFd) -> Option<ConnId> {
        self.refusals.retain(|c, _| c.fd != fd || c.is_open());
        let on_fd: Vec<ConnId> = (self.conns.keys())
            .filter_map(|c| match c {
                Conn::Peer(id) if id.fd == fd => Some(*id),
                _ => None,
            })
            .collect();
        for id in on_fd {
            self.recheck(id);
        }
        ConnId::of(fd)
    }

    /// Whether connection `id` is gone; if so, its subscriptions go too.
    pub fn recheck(&mut self, id: ConnId) -> bool {
        if id.is_open() {
            return false;
        }
        let conn = Conn::Peer(id);
        let prefixes = self.conns.get_mut(&conn).map(|h| std::mem::take(&mut h.prefixes));
        for (prefix, n) in prefixes.into_iter().flatten() {
            self.release(conn, &prefix, n as usize);
        }
        true
    }

    /// Drops `n` holds on `prefix` by `conn`, and the connection's entry
    /// (and its count against its identity) once it holds nothing.
    fn release(&mut self, conn: Conn, prefix: &[u8], n: usize) {
        let Some(held) = self.conns.get_mut(&conn) else { return };
        held.count -= n;
        held.bytes -= n * prefix.len();
        let emptied = held.count == 0;
        let identity = held.identity.clone();
        if emptied {
            self.conns.remove(&conn);
        }
        if let Some(name) = identity {
            if let Some(usage) = self.identities.get_mut(&name) {
                usage.subscriptions -= n;
                usage.bytes -= n * prefix.len();
                usage.connections -= usize::from(emptied);
                if usage.connections == 0 {
                    self.identities.remove(&name);
                }
            }
        }
        self.total -= n;
        self.bytes -= n * prefix.len();
        if conn != Conn::Local {
            self.real.change(prefix, -(n as i64));
        }
    }

    /// Subscriptions applied, over all connections.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Prefix bytes of the subscriptions applied, over all connections.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            per_connection: 3,
            prefix_bytes: 8,
            total: 5,
            total_bytes: 1000,
            per_identity: 1000,
            bytes_per_identity: 1000,
            connections_per_identity: 1000,
        }
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

    fn id_of(conn: Conn) -> ConnId {
        let Conn::Peer(id) = conn else { unreachable!() };
        id
    }

    /// libzmq reports a close before it closes the descriptor: the
    /// connection is looked at again until it is gone.
    #[test]
    fn a_close_reported_before_the_descriptor_goes_is_looked_at_again() {
        let mut s = Sockets::new(1);
        let mut l = Ledger::new(Limits::unbounded());
        l.subscribe(s.conn(0), Some("grafana"), b"x").unwrap();
        let id = id_of(s.conn(0));
        assert_eq!(l.closed(id.fd), Some(id), "still open when reported");
        assert_eq!(l.total(), 1);
        assert!(!l.recheck(id));
        s.reconnect(0);
        assert!(l.recheck(id), "gone now: released");
        assert_eq!((l.total(), l.connections()), (0, 0));
        assert!(l.identities.is_empty());
    }

    #[test]
    fn bounds_per_connection_per_prefix_and_per_bus() {
        let s = Sockets::new(4);
        let mut l = Ledger::new(limits());
        assert_eq!(l.subscribe(s.conn(0), None, b"a"), Ok(()));
        assert_eq!(l.subscribe(s.conn(0), None, b"a"), Ok(()), "the same prefix twice counts twice");
        assert_eq!(l.subscribe(s.conn(0), None, b"b"), Ok(()));
        assert_eq!(l.subscribe(s.conn(0), None, b"c"), Err(Over::Count));
        assert_eq!(l.subscribe(s.conn(1), None, b"123456789"), Err(Over::Length));
        assert_eq!(l.subscribe(s.conn(1), None, b"c"), Ok(()));
        assert_eq!(l.subscribe(s.conn(2), None, b"d"), Ok(()));
        assert_eq!(l.subscribe(s.conn(3), None, b"e"), Err(Over::Total));
        assert_eq!(
            l.subscribe(Conn::Local, None, b"anything goes here"),
            Ok(()),
            "the hub's own are not bounded"
        );
        let Conn::Peer(id) = s.conn(3) else { unreachable!() };
        assert!(!l.refused(id) && !l.refused(id) && !l.refused(id));
        assert!(l.refused(id), "a fourth refusal is one more than max_subscriptions");
    }

    #[test]
    fn bounds_bytes_on_the_bus() {
        let s = Sockets::new(3);
        let mut l = Ledger::new(Limits { total_bytes: 10, ..Limits::unbounded() });
        l.subscribe(s.conn(0), None, b"abcd").unwrap();
        l.subscribe(s.conn(1), None, b"efgh").unwrap();
        assert_eq!(l.subscribe(s.conn(2), None, b"ijk"), Err(Over::TotalBytes));
        assert_eq!(l.subscribe(s.conn(2), None, b"ij"), Ok(()), "exactly at the bound");
        assert_eq!(l.bytes(), 10);
        assert!(l.unsubscribe(s.conn(0), b"abcd"));
        assert_eq!(l.subscribe(s.conn(2), None, b"ijk"), Ok(()), "room again once released");
    }

    #[test]
    fn bounds_each_identity_over_all_its_connections() {
        let mut s = Sockets::new(5);
        let limits = Limits {
            per_identity: 4,
            bytes_per_identity: 12,
            connections_per_identity: 2,
            ..Limits::unbounded()
        };
        let mut l = Ledger::new(limits);
        let viewer = Some("grafana");
        l.subscribe(s.conn(0), viewer, b"aaa").unwrap();
        l.subscribe(s.conn(1), viewer, b"bbb").unwrap();
        assert_eq!(l.subscribe(s.conn(2), viewer, b"c"), Err(Over::IdentityConnections));
        l.subscribe(s.conn(0), viewer, b"ccc").unwrap();
        assert_eq!(l.subscribe(s.conn(1), viewer, b"dddd"), Err(Over::IdentityBytes), "9 + 4 > 12");
        l.subscribe(s.conn(1), viewer, b"ddd").unwrap();
        assert_eq!(l.subscribe(s.conn(0), viewer, b""), Err(Over::IdentityCount));
        // Another identity, and subscribers without one, are not charged for grafana's.
        l.subscribe(s.conn(3), Some("scada"), b"aaaaaaaaaaaa").unwrap();
        l.subscribe(s.conn(4), None, b"x").unwrap();
        // A closed connection gives back its share, and its place.
        let fd = s.reconnect(1);
        l.closed(fd);
        assert_eq!(l.identities["grafana"], Usage { connections: 1, subscriptions: 2, bytes: 6 });
        l.subscribe(s.conn(1), viewer, b"eeeeee").unwrap();
        assert_eq!(l.identities["grafana"], Usage { connections: 2, subscriptions: 3, bytes: 12 });
        assert!(l.unsubscribe(s.conn(1), b"eeeeee"));
        assert_eq!(l.identities["grafana"].connections, 1, "a connection holding nothing does not count");
    }

    #[test]
    fn only_real_subscribers_count_as_listeners() {
        let mut s = Sockets::new(1);
        let mut l = Ledger::new(Limits::unbounded());
        let real = l.subscribers();
        l.subscribe(Conn::Local, None, b"").unwrap();
        assert!(!real.covers(b"org.plantd.Metric.pi.t"), "a capture's subscribe-all is nobody listening");
        l.subscribe(s.conn(0), None, b"org.plantd.Metric.pi.").unwrap();
        assert!(real.covers(b"org.plantd.Metric.pi.t"));
        let fd = s.reconnect(0);
        l.closed(fd);
        assert!(!real.covers(b"org.plantd.Metric.pi.t"));
    }

    #[test]
    fn releases_follow_the_holders() {
        let mut s = Sockets::new(3);
        let mut l = Ledger::new(limits());
        l.subscribe(s.conn(0), None, b"a").unwrap();
        l.subscribe(s.conn(1), None, b"a").unwrap();
        assert!(!l.unsubscribe(s.conn(2), b"a"), "never applied there: nothing to undo");
        assert!(l.unsubscribe(s.conn(0), b"a"));
        assert_eq!(l.total(), 1, "connection 1 still holds it");
        let fd = s.reconnect(1);
        l.closed(fd);
        assert_eq!((l.total(), l.bytes(), l.connections()), (0, 0, 0));
    }

    #[test]
    fn a_newer_connection_on_the_same_descriptor_keeps_its_subscriptions() {
        let mut s = Sockets::new(1);
        let mut l = Ledger::new(limits());
        l.subscribe(s.conn(0), None, b"old").unwrap();
        let fd = s.reconnect(0);
        // The new connection's subscription is read before the old one's close.
        l.subscribe(s.conn(0), None, b"new").unwrap();
        assert_eq!(l.closed(fd), Some(id_of(s.conn(0))), "the newer one is open: looked at again later");
        assert_eq!(l.bytes(), 3, "the old one's went");
        assert!(l.subscribers().covers(b"new.topic"));
        assert_eq!(l.total(), 1);
    }

    proptest! {
        #[test]
        fn totals_always_match_what_connections_hold(ops in prop::collection::vec((0u8..3, 0usize..4, 0u8..4), 0..200)) {
            let mut s = Sockets::new(4);
            let limits = Limits {
                per_connection: 4,
                prefix_bytes: 8,
                total: 8,
                total_bytes: 20,
                per_identity: 5,
                bytes_per_identity: 12,
                connections_per_identity: 2,
            };
            let mut l = Ledger::new(limits);
            for (op, i, prefix) in ops {
                // Two identities, two connections each, prefixes of 1 to 4 bytes.
                let identity = ["a", "b"][i % 2];
                let prefix = vec![b'p'; 1 + prefix as usize];
                match op {
                    0 => { let _ = l.subscribe(s.conn(i), Some(identity), &prefix); }
                    1 => { let _ = l.unsubscribe(s.conn(i), &prefix); }
                    _ => { let fd = s.reconnect(i); let _ = l.closed(fd); }
                }
                let held: u32 = l.conns.values().flat_map(|h| h.prefixes.values()).sum();
                prop_assert_eq!(held as usize, l.total());
                let bytes: usize = l.conns.values().flat_map(|h| h.prefixes.iter()).map(|(p, n)| p.len() * *n as usize).sum();
                prop_assert_eq!(bytes, l.bytes());
                prop_assert!(l.total() <= 8 && l.bytes() <= 20);
                for (name, usage) in &l.identities {
                    let mine: Vec<&Held> = l.conns.values().filter(|h| h.identity.as_deref() == Some(&**name)).collect();
                    prop_assert_eq!(usage.connections, mine.len());
                    prop_assert_eq!(usage.subscriptions, mine.iter().map(|h| h.count).sum::<usize>());
                    prop_assert_eq!(usage.bytes, mine.iter().map(|h| h.bytes).sum::<usize>());
                    prop_assert!(usage.subscriptions <= 5 && usage.bytes <= 12 && usage.connections <= 2);
                }
                prop_assert!(l.connections() <= 4, "closed connections leave the ledger");
            }
        }
    }
}
