//! What the load generator counts, shared between its driver threads and the
//! reporter: counters, and batch latencies in a histogram of bounded size.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// One driver thread's counters (the reporter sums them over threads).
#[derive(Debug, Default)]
pub struct Counters {
    /// Samples the simulated agents made.
    pub samples: AtomicU64,
    /// Samples put on the wire (a resent one counts again), or published.
    pub sent: AtomicU64,
    pub batches: AtomicU64,
    /// Samples the hub acknowledged (each once).
    pub acknowledged: AtomicU64,
    /// Samples the hub said it had already (resends of a batch it took).
    pub duplicates: AtomicU64,
    /// Batches the hub answered with Retry.
    pub retries: AtomicU64,
    /// Batches with no answer in time (resent on a fresh socket, after backoff).
    pub timeouts: AtomicU64,
    /// Batches refused or called malformed.
    pub rejected: AtomicU64,
    /// Samples dropped: a full outbox (durable), a full socket (best effort).
    pub dropped: AtomicU64,
    /// Gauges, rewritten every tick: batches awaiting an answer, samples not yet acknowledged.
    pub in_flight: AtomicU64,
    pub backlog: AtomicU64,
    /// Ingest latency (a batch sent to its Ack): since the last report, and in all.
    pub latency: Mutex<(Histogram, Histogram)>,
}

impl Counters {
    pub fn record_latency(&self, latency: Duration) {
        let mut both = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        both.0.record(latency);
        both.1.record(latency);
    }
}

/// The counters of all threads, summed, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub samples: u64,
    pub sent: u64,
    pub batches: u64,
    pub acknowledged: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub in_flight: u64,
    pub backlog: u64,
    /// Since the last [`Totals::gather`] with `take_interval`.
    pub interval: Histogram,
    pub all: Histogram,
}

impl Totals {
    /// Sums `threads`; with `take_interval`, starts the next interval's latencies afresh.
    pub fn gather(threads: &[std::sync::Arc<Counters>], take_interval: bool) -> Totals {
        let mut t = Totals::default();
        for c in threads {
            t.samples += c.samples.load(Relaxed);
            t.sent += c.sent.load(Relaxed);
            t.batches += c.batches.load(Relaxed);
            t.acknowledged += c.acknowledged.load(Relaxed);
            t.duplicates += c.duplicates.load(Relaxed);
            t.retries += c.retries.load(Relaxed);
            t.timeouts += c.timeouts.load(Relaxed);
            t.rejected += c.rejected.load(Relaxed);
            t.dropped += c.dropped.load(Relaxed);
            t.in_flight += c.in_flight.load(Relaxed);
            t.backlog += c.backlog.load(Relaxed);
            let mut latency = c.latency.lock().unwrap_or_else(|e| e.into_inner());
            t.interval.merge(&latency.0);
            t.all.merge(&latency.1);
            if take_interval {
                latency.0 = Histogram::default();
            }
        }
        t
    }
}

/// Sub-buckets per power of two: values are kept within 1/64 (1.6 %).
const SUB: usize = 64;
/// Powers of two above the exact range: microseconds up to 2^(6+42), far past any timeout.
const BUCKETS: usize = SUB * 43;

/// Latencies in microseconds, log-linear buckets: a fixed 22 KiB however
/// many are recorded, percentiles within 1.6 %.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, max_us: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `p`th percentile (0 to 100), in milliseconds; `None` when empty.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                // The bucket's middle, but never past the largest value recorded.
                let (low, high) = bounds(b);
                return Some((low + high) as f64 / 2.0 / 1000.0)
                    .map(|ms| ms.min(self.max_us as f64 / 1000.0));
            }
        }
        Some(self.max_us as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        (self.total > 0).then_some(self.max_us as f64 / 1000.0)
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let shift = 63 - us.leading_zeros() as usize - 6; // us >> shift is in [64, 128)
    ((shift + 1) * SUB + (us >> shift) as usize - SUB).min(BUCKETS - 1)
}

/// The values bucket `b` holds, inclusive.
fn bounds(b: usize) -> (u64, u64) {
    if b < SUB {
        return (b as u64, b as u64);
    }
    let shift = b / SUB - 1;
    let low = ((b % SUB + SUB) as u64) << shift;
    (low, low + (1 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous = 0;
        for us in (0..200_000).chain([u32::MAX as u64, 1 << 47]) {
            let b = bucket(us);
            assert!(b >= previous, "buckets grow with the value ({us})");
            let (low, high) = bounds(b);
            assert!(low <= us && us <= high, "{us} outside its bucket {b}: {low}..={high}");
            assert!((high - low) as f64 <= low as f64 / SUB as f64, "bucket {b} too wide");
            previous = b;
        }
    }

    #[test]
    fn percentiles_are_within_the_bucket_precision() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let close = |got: f64, want: f64| (got - want).abs() <= want / SUB as f64;
        assert!(close(h.percentile_ms(50.0).unwrap(), 500.0), "{:?}", h.percentile_ms(50.0));
        assert!(close(h.percentile_ms(99.0).unwrap(), 990.0), "{:?}", h.percentile_ms(99.0));
        assert_eq!(h.max_ms(), Some(1000.0));
        assert_eq!(Histogram::default().percentile_ms(50.0), None);
        let mut merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.count(), 2000);
        assert!(close(merged.percentile_ms(50.0).unwrap(), 500.0));
    }
}
