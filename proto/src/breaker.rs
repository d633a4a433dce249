//! A circuit breaker around calls to a peer (the agent's calls to the hub).
//!
//! Closed: calls go through; `threshold` failures in a row open it. Open: no
//! calls until a backoff (exponential, jittered, capped) has passed, then
//! half-open: one trial call. Its success closes the breaker; its failure
//! opens it again for longer. So a dead hub costs one call per backoff period,
//! not a storm of timeouts, and a hub that comes back is found quickly.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    state: State,
    failures: u32,
    threshold: u32,
    backoff: Backoff,
    /// Times the breaker has opened, for status and metrics.
    pub opened: u64,
}

impl Breaker {
    pub fn new(threshold: u32, open_min: Duration, open_max: Duration) -> Self {
        Self::with_backoff(threshold, Backoff::new(open_min, open_max))
    }

    pub fn with_backoff(threshold: u32, backoff: Backoff) -> Self {
        Breaker { state: State::Closed, failures: 0, threshold: threshold.max(1), backoff, opened: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may be made now (moves Open to HalfOpen when its time is up).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed | State::HalfOpen => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } => false,
        }
    }

    /// How long until a call may be made (zero if now).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.state {
            State::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    pub fn success(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.backoff.reset();
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let trip = match self.state {
            State::HalfOpen => true,
            State::Closed => self.failures >= self.threshold,
            State::Open { .. } => false,
        };
        if trip {
            self.state = State::Open { until: now + self.backoff.next_delay() };
            self.opened += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Breaker {
        Breaker::with_backoff(3, Backoff::with_seed(100 * MS, 1000 * MS, 5))
    }

    #[test]
    fn opens_after_threshold_failures_and_probes_after_the_backoff() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..2 {
            b.failure(t0);
            assert_eq!(b.state(), State::Closed);
        }
        b.failure(t0);
        let State::Open { until } = b.state() else { panic!("{:?}", b.state()) };
        assert!(until > t0 && until <= t0 + 100 * MS);
        assert!(!b.allow(t0));
        assert!(b.allow(until));
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn failed_probe_reopens_for_longer_and_success_closes() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(t0);
        }
        let first = b.wait(t0);
        let t1 = t0 + first;
        assert!(b.allow(t1));
        b.failure(t1);
        let second = b.wait(t1);
        assert!(second >= 100 * MS, "the second open period ({second:?}) backs off");
        assert!(b.allow(t1 + second));
        b.success();
        assert_eq!((b.state(), b.wait(t1)), (State::Closed, Duration::ZERO));
        assert_eq!(b.opened, 2);
        // After success the count starts over.
        b.failure(t1);
        assert_eq!(b.state(), State::Closed);
    }
}
