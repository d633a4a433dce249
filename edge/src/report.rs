//! Report by exception: a reading is sent only when it moved past the
//! deadband since the last one sent, when its quality changed, or when the
//! heartbeat is due, so a meter that repeats itself costs a sample per
//! heartbeat instead of one per period. As historians do (AVEVA PI's
//! exception reporting), when a change ends a flat run the reading held just
//! before it is sent too, so a trend drawn through the sent points is right.
//!
//! ```toml
//! [[channel]]
//! name = "flow"
//! driver = { kind = "sine" }
//! report = { deadband = 0.5, min_interval_ms = 1000, max_interval_ms = 60000 }
//! ```

use std::time::Duration;

use proto::sample::{Quality, Value};
use serde::{Deserialize, Serialize};

/// `report = { ... }` on a channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// A number is sent when it moved more than this since the last one sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
    /// Or more than this percentage of the last value sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband_pct: Option<f64>,
    /// Never more often than this (a change of quality excepted).
    #[serde(default)]
    pub min_interval_ms: u64,
    /// Always at least this often: the heartbeat that tells a flat signal
    /// from a dead sensor.
    #[serde(default = "default_max_interval_ms")]
    pub max_interval_ms: u64,
}

fn default_max_interval_ms() -> u64 {
    600_000
}

impl ReportConfig {
    /// `(field, problem)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (self.deadband, self.deadband_pct) {
            (Some(_), Some(_)) => {
                return Err(("deadband_pct", "give `deadband` (absolute) or `deadband_pct`, not both".into()))
            }
            (Some(d), _) if !d.is_finite() || d < 0.0 => {
                return Err(("deadband", "must be a number of 0 or more".into()))
            }
            (_, Some(p)) if !p.is_finite() || !(0.0..=100.0).contains(&p) => {
                return Err(("deadband_pct", "must be from 0 to 100".into()))
            }
            _ => {}
        }
        if self.max_interval_ms == 0 || self.max_interval_ms < self.min_interval_ms {
            return Err(("max_interval_ms", "must be at least 1 and at least min_interval_ms".into()));
        }
        Ok(())
    }
}

/// What to do with a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it back (the caller holds it: it may be sent with the next change).
    Hold,
    /// Send it.
    Send,
    /// Send the reading held back before it, then it.
    SendHeldThenThis,
}

/// One channel's filter.
#[derive(Clone, Debug)]
pub struct ReportFilter {
    config: ReportConfig,
    /// The last reading sent: its value, quality and time.
    last: Option<(Value, Quality, Duration)>,
    /// Whether the reading before this one was held back.
    holding: bool,
}

impl ReportFilter {
    pub fn new(config: ReportConfig) -> Self {
        ReportFilter { config, last: None, holding: false }
    }

    /// Decides on a reading taken at `now` (any monotonic time base).
    pub fn offer(&mut self, value: &Value, quality: Quality, now: Duration) -> Verdict {
        let verdict = match &self.last {
            None => Verdict::Send,
            Some((last, last_quality, at)) => {
                let since = now.saturating_sub(*at);
                let changed = quality != *last_quality;
                let moved = self.moved(last, value);
                if changed || (moved && since >= Duration::from_millis(self.config.min_interval_ms)) {
                    if self.holding {
                        Verdict::SendHeldThenThis
                    } else {
                        Verdict::Send
                    }
                } else if since >= Duration::from_millis(self.config.max_interval_ms) {
                    // The heartbeat: the held reading is within the deadband, so this one alone.
                    Verdict::Send
                } else {
                    Verdict::Hold
                }
            }
        };
        match verdict {
            Verdict::Hold => self.holding = true,
            Verdict::Send | Verdict::SendHeldThenThis => {
                self.last = Some((value.clone(), quality, now));
                self.holding = false;
            }
        }
        verdict
    }

    /// Whether `value` moved past the deadband from `last`. Numbers have a
    /// deadband; booleans, integers and text report any change.
    fn moved(&self, last: &Value, value: &Value) -> bool {
        match (last, value) {
            (Value::Number(a), Value::Number(b)) => {
                if a.is_nan() || b.is_nan() {
                    return a.is_nan() != b.is_nan();
                }
                let band = match (self.config.deadband, self.config.deadband_pct) {
                    (Some(d), _) => d,
                    (None, Some(pct)) => a.abs() * pct / 100.0,
                    (None, None) => 0.0,
                };
                (b - a).abs() > band
            }
            (a, b) => a != b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn filter(deadband: f64, min_ms: u64, max_ms: u64) -> ReportFilter {
        ReportFilter::new(ReportConfig {
            deadband: Some(deadband),
            deadband_pct: None,
            min_interval_ms: min_ms,
            max_interval_ms: max_ms,
        })
    }

    fn n(x: f64) -> Value {
        Value::Number(x)
    }

    #[test]
    fn a_flat_run_is_held_and_the_value_before_a_change_sent_with_it() {
        let mut f = filter(0.5, 0, 60_000);
        let good = Quality::Good;
        assert_eq!(f.offer(&n(10.0), good, Duration::ZERO), Verdict::Send);
        assert_eq!(f.offer(&n(10.2), good, 1000 * MS), Verdict::Hold);
        assert_eq!(f.offer(&n(10.4), good, 2000 * MS), Verdict::Hold);
        assert_eq!(f.offer(&n(11.0), good, 3000 * MS), Verdict::SendHeldThenThis);
        // Right after a send nothing is held: a change is sent alone.
        assert_eq!(f.offer(&n(12.0), good, 4000 * MS), Verdict::Send);
        // Exactly the deadband is not a move (OPC UA: more than the deadband).
        assert_eq!(f.offer(&n(12.5), good, 5000 * MS), Verdict::Hold);
    }

    #[test]
    fn quality_heartbeat_min_interval_and_percentages() {
        let mut f = filter(1.0, 2000, 10_000);
        let good = Quality::Good;
        assert_eq!(f.offer(&n(0.0), good, Duration::ZERO), Verdict::Send);
        assert_eq!(f.offer(&n(5.0), good, 1000 * MS), Verdict::Hold, "within min_interval");
        assert_eq!(f.offer(&n(5.0), Quality::Bad, 1500 * MS), Verdict::SendHeldThenThis, "quality always");
        assert_eq!(f.offer(&n(5.0), Quality::Bad, 5000 * MS), Verdict::Hold);
        assert_eq!(f.offer(&n(5.0), Quality::Bad, 11_500 * MS), Verdict::Send, "the heartbeat");
        let mut pct = ReportFilter::new(ReportConfig { deadband_pct: Some(1.0), ..ReportConfig::default() });
        pct.max_interval_ms_for_tests(600_000);
        assert_eq!(pct.offer(&n(200.0), good, Duration::ZERO), Verdict::Send);
        assert_eq!(pct.offer(&n(201.9), good, MS), Verdict::Hold);
        assert_eq!(pct.offer(&n(202.1), good, 2 * MS), Verdict::SendHeldThenThis);
        // Integers and booleans: any change.
        let mut ints = filter(100.0, 0, 60_000);
        assert_eq!(ints.offer(&Value::Integer(1), good, Duration::ZERO), Verdict::Send);
        assert_eq!(ints.offer(&Value::Integer(2), good, MS), Verdict::Send);
        assert_eq!(ints.offer(&Value::Bool(true), good, 2 * MS), Verdict::Send);
        assert_eq!(ints.offer(&Value::Bool(true), good, 3 * MS), Verdict::Hold);
        // NaN is a change from a number and back, not from another NaN.
        let mut nan = filter(1.0, 0, 60_000);
        assert_eq!(nan.offer(&n(1.0), good, Duration::ZERO), Verdict::Send);
        assert_eq!(nan.offer(&n(f64::NAN), good, MS), Verdict::Send);
        assert_eq!(nan.offer(&n(f64::NAN), good, 2 * MS), Verdict::Hold);
        assert_eq!(nan.offer(&n(1.0), good, 3 * MS), Verdict::SendHeldThenThis);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let both = ReportConfig { deadband: Some(1.0), deadband_pct: Some(1.0), ..Default::default() };
        assert_eq!(both.validate().unwrap_err().0, "deadband_pct");
        let negative = ReportConfig { deadband: Some(-1.0), max_interval_ms: 1000, ..Default::default() };
        assert_eq!(negative.validate().unwrap_err().0, "deadband");
        let short = ReportConfig { min_interval_ms: 5000, max_interval_ms: 1000, ..Default::default() };
        assert_eq!(short.validate().unwrap_err().0, "max_interval_ms");
        let parsed: ReportConfig = toml::from_str("deadband = 0.5").unwrap();
        assert_eq!((parsed.max_interval_ms, parsed.min_interval_ms), (600_000, 0));
        assert!(toml::from_str::<ReportConfig>("deadbnd = 0.5").is_err());
    }

    impl ReportFilter {
        fn max_interval_ms_for_tests(&mut self, ms: u64) {
            self.config.max_interval_ms = ms;
        }
    }

    /// Replays `series` (a reading every `period`) through `f`, returning
    /// what was sent, in order, as (index into the series).
    fn sent(f: &mut ReportFilter, series: &[(f64, bool)], period: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, &(x, good)) in series.iter().enumerate() {
            let quality = if good { Quality::Good } else { Quality::Bad };
            match f.offer(&n(x), quality, period * i as u32) {
                Verdict::Hold => {}
                Verdict::Send => out.push(i),
                Verdict::SendHeldThenThis => out.extend([i - 1, i]),
            }
        }
        out
    }

    proptest! {
        /// Between two sent readings, every reading held back is within the
        /// deadband of the last one sent; the heartbeat is never missed; a
        /// change of quality is always sent; nothing is sent twice.
        #[test]
        fn the_sent_series_follows_the_sampled_one(
            series in proptest::collection::vec((-100.0f64..100.0, proptest::bool::weighted(0.95)), 1..300),
            deadband in 0.0f64..20.0,
            max_periods in 1u32..50,
        ) {
            let period = 100 * MS;
            let max = period * max_periods;
            let mut f = filter(deadband, 0, max.as_millis() as u64);
            let sent = sent(&mut f, &series, period);
            prop_assert_eq!(sent[0], 0);
            prop_assert!(sent.windows(2).all(|w| w[0] < w[1]), "in order, once each: {:?}", sent);
            let mut last_sent = 0;
            for (i, &(x, good)) in series.iter().enumerate() {
                if sent.contains(&i) {
                    if i > 0 {
                        prop_assert!(period * (i - last_sent) as u32 <= max + period, "heartbeat at {}", i);
                    }
                    last_sent = i;
                    continue;
                }
                let (y, was_good) = series[last_sent];
                prop_assert!((x - y).abs() <= deadband, "{} held at {} though {} was sent", x, i, y);
                prop_assert_eq!(good, was_good, "a quality change at {} was held", i);
                prop_assert!(period * (i - last_sent) as u32 <= max, "heartbeat missed at {}", i);
            }
        }
    }
}
