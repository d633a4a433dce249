//! Majordomo heartbeating, one side of one link. Both sides send a heartbeat
//! every `interval` unless they sent something else, and declare the peer dead
//! after `liveness` intervals of silence (RFC 7: 2500 ms × 3).

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    interval: Duration,
    liveness: u32,
    last_heard: Instant,
    next_send: Instant,
}

impl Heartbeat {
    pub fn new(now: Instant, interval: Duration, liveness: u32) -> Self {
        Heartbeat { interval, liveness: liveness.max(1), last_heard: now, next_send: now + interval }
    }

    /// Anything from the peer proves it alive.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Anything we sent counts as our heartbeat.
    pub fn sent(&mut self, now: Instant) {
        self.next_send = now + self.interval;
    }

    pub fn send_due(&self, now: Instant) -> bool {
        now >= self.next_send
    }

    /// When the peer is declared dead if nothing arrives before.
    pub fn expiry(&self) -> Instant {
        self.last_heard + self.interval * self.liveness
    }

    pub fn peer_expired(&self, now: Instant) -> bool {
        now >= self.expiry()
    }

    /// The next instant at which `send_due` or `peer_expired` can change.
    pub fn next_deadline(&self) -> Instant {
        self.next_send.min(self.expiry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peer_expires_after_liveness_intervals_of_silence() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 100 * MS, 3);
        assert!(!hb.peer_expired(t0 + 299 * MS));
        assert!(hb.peer_expired(t0 + 300 * MS));
        hb.heard(t0 + 250 * MS);
        assert!(!hb.peer_expired(t0 + 549 * MS));
        assert!(hb.peer_expired(t0 + 550 * MS));
    }

    #[test]
    fn sending_anything_postpones_the_heartbeat() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 100 * MS, 3);
        assert!(!hb.send_due(t0 + 99 * MS));
        assert!(hb.send_due(t0 + 100 * MS));
        hb.sent(t0 + 100 * MS);
        assert!(!hb.send_due(t0 + 150 * MS));
        assert_eq!(hb.next_deadline(), t0 + 200 * MS);
    }
}
