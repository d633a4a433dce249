//! The connections open now, by source address, and who makes room for whom.
//!
//! Two bounds: connections at once, and connections from one source address
//! (an IPv6 source counts by its /64, what one host can hold). A newcomer
//! over either does not simply bounce: the connection of that scope that has
//! been idle longest (nothing asked, a header half sent, or a keep-alive
//! between requests) is closed to make room. So idle and slowloris clients,
//! however many, cannot keep out a health check, which asks at once and is
//! answered at once; they are dropped as soon as someone needs their slot,
//! long before the header timeout. A newcomer is closed at accept only when
//! every connection of the scope is busy answering (a live stream, say).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use smol::channel::{Receiver, Sender};

/// What one connection is doing, shared with its task.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests being answered (their responses not yet sent).
    busy: AtomicU32,
    /// When it last became idle, on the table's clock.
    idle_since: AtomicU64,
    clock: Arc<AtomicU64>,
}

impl Activity {
    /// Marks a request begun, until the guard is dropped (its response sent).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        Busy(self.clone())
    }
}

/// A request being answered; idle again when dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.clock.fetch_add(1, Relaxed), Relaxed);
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

struct Conn {
    source: IpAddr,
    activity: Arc<Activity>,
    /// Dropped to close the connection (its task waits on the other end).
    _close: Sender<()>,
}

/// Which bound a newcomer met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    Total,
    PerAddress,
}

pub(crate) enum Admission {
    /// Let in, as `id`; `evicted` says which bound made an idle one leave for it.
    Open { id: u64, activity: Arc<Activity>, closed: Receiver<()>, evicted: Vec<Bound> },
    /// Closed at accept: the bound's connections are all busy.
    Refused(Bound),
}

#[derive(Default)]
pub(crate) struct Table {
    conns: HashMap<u64, Conn>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
    clock: Arc<AtomicU64>,
}

/// The address a bound counts by: IPv4 (mapped or not) as is, IPv6 by /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        other => other,
    }
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Source addresses with a connection open.
    pub(crate) fn sources(&self) -> usize {
        self.per_source.len()
    }

    /// Lets a connection from `ip` in, making room if a bound is reached.
    pub(crate) fn admit(&mut self, ip: IpAddr, max_total: usize, max_per_source: usize) -> Admission {
        let source = source_of(ip);
        let mut evicted = Vec::new();
        if self.per_source.get(&source).copied().unwrap_or(0) >= max_per_source {
            match self.longest_idle(|c| c.source == source) {
                Some(id) => self.remove(id),
                None => return Admission::Refused(Bound::PerAddress),
            };
            evicted.push(Bound::PerAddress);
        }
        if self.conns.len() >= max_total {
            match self.longest_idle(|_| true) {
                Some(id) => self.remove(id),
                None => return Admission::Refused(Bound::Total),
            };
            evicted.push(Bound::Total);
        }
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.clock.fetch_add(1, Relaxed)),
            clock: self.clock.clone(),
        });
        let (close, closed) = smol::channel::bounded(1);
        self.conns.insert(id, Conn { source, activity: activity.clone(), _close: close });
        *self.per_source.entry(source).or_default() += 1;
        Admission::Open { id, activity, closed, evicted }
    }

    /// Forgets connection `id` (closing it, if its task still runs); false if gone already.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.remove(&id) else { return false };
        if let Some(n) = self.per_source.get_mut(&conn.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&conn.source);
            }
        }
        true
    }

    fn longest_idle(&self, scope: impl Fn(&Conn) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| scope(c) && c.activity.busy.load(Relaxed) == 0)
            .min_by_key(|(_, c)| c.activity.idle_since.load(Relaxed))
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(
        table: &mut Table,
        ip: &str,
        total: usize,
        per: usize,
    ) -> Option<(u64, Arc<Activity>, Vec<Bound>)> {
        match table.admit(ip.parse().unwrap(), total, per) {
            Admission::Open { id, activity, evicted, .. } => Some((id, activity, evicted)),
            Admission::Refused(_) => None,
        }
    }

    #[test]
    fn the_longest_idle_of_a_full_address_makes_room_and_busy_ones_stay() {
        let mut table = Table::default();
        let (a, a_act, _) = open(&mut table, "10.0.0.1", 100, 2).unwrap();
        let (b, _, _) = open(&mut table, "10.0.0.1", 100, 2).unwrap();
        let _busy = a_act.begin();
        // The third from 10.0.0.1 evicts b (a is busy), not a connection of another address.
        let (other, _, evicted) = open(&mut table, "10.0.0.2", 100, 2).unwrap();
        assert!(evicted.is_empty());
        let (c, c_act, evicted) = open(&mut table, "10.0.0.1", 100, 2).unwrap();
        assert_eq!(evicted, [Bound::PerAddress]);
        assert!(!table.remove(b), "b was closed for c");
        assert_eq!((table.len(), table.sources()), (3, 2));
        // Both of 10.0.0.1's busy: a newcomer is refused.
        let _also_busy = c_act.begin();
        assert!(matches!(
            table.admit("10.0.0.1".parse().unwrap(), 100, 2),
            Admission::Refused(Bound::PerAddress)
        ));
        assert!(table.remove(a) && table.remove(c) && table.remove(other));
        assert_eq!((table.len(), table.sources()), (0, 0));
    }

    #[test]
    fn at_the_total_bound_the_longest_idle_anywhere_leaves() {
        let mut table = Table::default();
        let (first, first_act, _) = open(&mut table, "10.0.0.1", 2, 10).unwrap();
        let (second, _, _) = open(&mut table, "10.0.0.2", 2, 10).unwrap();
        // first asks something and is answered: idle again, more recently than second.
        drop(first_act.begin());
        let (_, _, evicted) = open(&mut table, "10.0.0.3", 2, 10).unwrap();
        assert_eq!(evicted, [Bound::Total]);
        assert!(!table.remove(second), "the longest idle went");
        assert!(table.remove(first));
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let mut table = Table::default();
        assert!(open(&mut table, "2001:db8::1", 10, 1).is_some());
        let (_, act, evicted) = open(&mut table, "2001:db8::2", 10, 1).unwrap();
        assert_eq!(evicted, [Bound::PerAddress], "one /64, one host");
        let _busy = act.begin();
        assert!(open(&mut table, "2001:db8:0:1::1", 10, 1).is_some(), "another /64");
        assert!(open(&mut table, "::ffff:10.0.0.1", 10, 1).is_some());
        let (_, _, evicted) = open(&mut table, "10.0.0.1", 10, 1).unwrap();
        assert_eq!(evicted, [Bound::PerAddress]);
    }
}
