//! A token bucket: `rate` tokens a second, holding at most `burst`. Time is
//! passed in, so it is exact under test.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let (rate, burst) = (rate.max(f64::MIN_POSITIVE), burst.max(1.0));
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many; otherwise takes none.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if need be; returns how long to
    /// wait until the debt is paid (zero if there was no debt).
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert!((0..5).all(|_| b.try_take(1.0, t0)));
        assert!(!b.try_take(1.0, t0), "the burst is spent");
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(99)));
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn taking_into_debt_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 1000.0, t0);
        assert_eq!(b.take(1000.0, t0), Duration::ZERO);
        let wait = b.take(500.0, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.take(0.0, t0 + wait), Duration::ZERO, "after the wait the debt is paid");
        // Over a long run the rate holds: 10 000 tokens take about 10 s.
        let mut b = TokenBucket::new(1000.0, 1000.0, t0);
        let mut t = t0;
        for _ in 0..100 {
            t += b.take(100.0, t);
        }
        assert!((t - t0).as_secs_f64() > 8.9 && (t - t0).as_secs_f64() < 9.1, "{:?}", t - t0);
    }
}
