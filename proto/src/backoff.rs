//! Exponential backoff with jitter, capped: the delay doubles per attempt from
//! `min` up to `max`, and each delay is drawn uniformly from its upper half so
//! that many agents restarting together do not reconnect in lockstep.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, fastrand::Rng::new())
    }

    /// Deterministic jitter, for tests and simulations.
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        Self::with_rng(min, max, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Backoff { min, max: max.max(min), attempt: 0, rng }
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(self.rng.u64(0..=spread))
    }

    /// Success: the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let mut b = Backoff::with_seed(100 * MS, 1000 * MS, 7);
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
        for c in ceilings {
            let d = b.next_delay();
            assert!(d >= c * MS / 2 && d <= c * MS, "delay {d:?} outside [{}, {c}] ms", c / 2);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(100 * MS, 10_000 * MS, 1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            seen.insert(Backoff::with_seed(100 * MS, 1000 * MS, seed).next_delay());
        }
        assert!(seen.len() > 10, "jitter produced only {} distinct delays", seen.len());
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(MS, 50 * MS, 3);
        for _ in 0..200 {
            assert!(b.next_delay() <= 50 * MS);
        }
    }
}
