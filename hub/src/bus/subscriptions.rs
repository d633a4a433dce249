//! The bus's ledger of subscriptions, per subscriber connection.
//!
//! The backend XPUB runs in manual mode: libzmq applies a subscription only
//! when the proxy says so, and the proxy says so only for one that is allowed
//! (by the subscriber's grants) and within bounds: at most
//! `max_subscriptions` per connection, `max_subscription_bytes` per prefix,
//! `max_total_subscriptions` per bus. So one subscriber cannot grow the hub's
//! or every publisher's (every agent's) subscription tables without bound.
//!
//! Upstream (to the publishers) each prefix is subscribed once while any
//! applied subscription holds it, and unsubscribed when the last goes, which
//! happens on an unsubscribe or when its connection closes (the proxy learns
//! that from the socket monitor; libzmq's own unsubscriptions for a closed
//! connection name no connection, and would also cover refused prefixes, so
//! the proxy ignores them).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, RwLock};

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
    Tcp(RawFd),
    /// In-process subscribers (the hub's own): not bounded, never closed.
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
    upstream: HashMap<Box<[u8]>, u32>,
    total: usize,
    real: Subscribers,
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            conns: HashMap::new(),
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

    /// A subscriber connection closed: its subscriptions go. Returns the
    /// prefixes now gone upstream.
    pub fn closed(&mut self, fd: RawFd) -> Vec<Box<[u8]>> {
        let Some(subs) = self.conns.remove(&Conn::Tcp(fd)) else { return Vec::new() };
        for (prefix, n) in &subs {
            self.real.change(prefix, -i64::from(*n));
        }
        subs.into_iter().filter(|(prefix, n)| self.release(prefix, *n)).map(|(prefix, _)| prefix).collect()
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

    #[test]
    fn bounds_per_connection_per_prefix_and_per_bus() {
        let mut l = ledger();
        assert_eq!(l.subscribe(Conn::Tcp(7), b"a"), Ok(true));
        assert_eq!(l.subscribe(Conn::Tcp(7), b"a"), Ok(false), "already upstream");
        assert_eq!(l.subscribe(Conn::Tcp(7), b"b"), Ok(true));
        assert_eq!(l.subscribe(Conn::Tcp(7), b"c"), Err(Over::Count));
        assert_eq!(l.subscribe(Conn::Tcp(8), b"123456789"), Err(Over::Length));
        assert_eq!(l.subscribe(Conn::Tcp(8), b"c"), Ok(true));
        assert_eq!(l.subscribe(Conn::Tcp(9), b"d"), Ok(true));
        assert_eq!(l.subscribe(Conn::Tcp(10), b"e"), Err(Over::Total));
        assert_eq!(
            l.subscribe(Conn::Local, b"anything goes here"),
            Ok(true),
            "the hub's own are not bounded"
        );
    }

    #[test]
    fn only_real_subscribers_count_as_listeners() {
        let mut l = Ledger::new(Limits { per_connection: 10, prefix_bytes: 64, total: 10 });
        let real = l.subscribers();
        l.subscribe(Conn::Local, b"").unwrap();
        assert!(!real.covers(b"org.plantd.Metric.pi.t"), "a capture's subscribe-all is nobody listening");
        l.subscribe(Conn::Tcp(4), b"org.plantd.Metric.pi.").unwrap();
        assert!(real.covers(b"org.plantd.Metric.pi.t"));
        l.closed(4);
        assert!(!real.covers(b"org.plantd.Metric.pi.t"));
    }

    #[test]
    fn upstream_follows_the_last_holder() {
        let mut l = ledger();
        l.subscribe(Conn::Tcp(1), b"a").unwrap();
        l.subscribe(Conn::Tcp(2), b"a").unwrap();
        assert_eq!(l.unsubscribe(Conn::Tcp(3), b"a"), None, "never applied there: nothing to undo");
        assert_eq!(l.unsubscribe(Conn::Tcp(1), b"a"), Some(false), "connection 2 still holds it");
        assert_eq!(l.closed(2), vec![Box::from(&b"a"[..])]);
        assert_eq!((l.total(), l.connections()), (0, 0));
    }

    proptest! {
        #[test]
        fn totals_always_match_what_connections_hold(ops in prop::collection::vec((0u8..3, 0i32..4, 0u8..4), 0..200)) {
            let mut l = Ledger::new(Limits { per_connection: 4, prefix_bytes: 8, total: 8 });
            for (op, fd, prefix) in ops {
                let prefix = [b'a' + prefix];
                match op {
                    0 => { let _ = l.subscribe(Conn::Tcp(fd), &prefix); }
                    1 => { let _ = l.unsubscribe(Conn::Tcp(fd), &prefix); }
                    _ => { let _ = l.closed(fd); }
                }
                let held: u32 = l.conns.values().flat_map(|s| s.values()).sum();
                prop_assert_eq!(held as usize, l.total());
                prop_assert_eq!(l.upstream.values().sum::<u32>() as usize, l.total());
                prop_assert!(l.total() <= 8);
            }
        }
    }
}
