//! Limit alarms, evaluated at the edge where they still work during a link
//! outage: `hihi`, `hi`, `lo`, `lolo` limits with a hysteresis band (an
//! alarm clears only once the value is back past its limit by the band, so a
//! value that hovers at a limit does not chatter) and an on-delay (a limit
//! must be exceeded for `delay_ms` before the alarm raises, so a spike does
//! not). Raising, clearing and acknowledging each produce an [`Event`].
//!
//! ```toml
//! [[channel]]
//! name = "tank_temp"
//! driver = { kind = "sine" }
//! alarm = { hi = 80.0, hihi = 95.0, lo = 5.0, lolo = 1.0, hysteresis = 1.0, delay_ms = 2000, priority = "high" }
//! ```
//!
//! This is the decision core only; the agent sends the events through an
//! outbox of their own (`agent/src/alarms.rs`), ahead of its samples.

use std::time::Duration;

/// What changed, for the event bus: the agent stamps it into an `AlarmEvent`.
pub use proto::alarm::Change as Event;
pub use proto::alarm::{Kind, Level, Priority};
use proto::sample::{Quality, Value};
use serde::{Deserialize, Serialize};

/// `alarm = { ... }` on a channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hihi: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lolo: Option<f64>,
    /// How far back past its limit a value must come for the alarm to clear.
    #[serde(default)]
    pub hysteresis: f64,
    /// How long a limit must be exceeded before the alarm raises.
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub priority: Priority,
}

impl AlarmConfig {
    /// `(field, problem)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let limits = [("lolo", self.lolo), ("lo", self.lo), ("hi", self.hi), ("hihi", self.hihi)];
        if limits.iter().all(|(_, l)| l.is_none()) {
            return Err(("hi", "an alarm needs at least one of hihi, hi, lo, lolo".into()));
        }
        if let Some((name, _)) = limits.iter().find(|(_, l)| l.is_some_and(|l| !l.is_finite())) {
            return Err((name, "must be a finite number".into()));
        }
        let set: Vec<(&str, f64)> = limits.iter().filter_map(|(n, l)| l.map(|l| (*n, l))).collect();
        for pair in set.windows(2) {
            if pair[0].1 >= pair[1].1 {
                return Err((pair[1].0, format!("must be above {} ({})", pair[0].0, pair[0].1)));
            }
        }
        if !self.hysteresis.is_finite() || self.hysteresis < 0.0 {
            return Err(("hysteresis", "must be a number of 0 or more".into()));
        }
        Ok(())
    }

    fn limit(&self, level: Level) -> Option<f64> {
        match level {
            Level::LoLo => self.lolo,
            Level::Lo => self.lo,
            Level::Normal => None,
            Level::Hi => self.hi,
            Level::HiHi => self.hihi,
        }
    }

    /// The level of `x` against the limits alone.
    fn classify(&self, x: f64) -> Level {
        let at_or_above = |l: Option<f64>| l.is_some_and(|l| x >= l);
        let at_or_below = |l: Option<f64>| l.is_some_and(|l| x <= l);
        if at_or_above(self.hihi) {
            Level::HiHi
        } else if at_or_above(self.hi) {
            Level::Hi
        } else if at_or_below(self.lolo) {
            Level::LoLo
        } else if at_or_below(self.lo) {
            Level::Lo
        } else {
            Level::Normal
        }
    }
}

/// One channel's alarm.
#[derive(Clone, Debug)]
pub struct Alarm {
    config: AlarmConfig,
    state: Level,
    acknowledged: bool,
    /// A more severe level seen, and since when: it raises after the delay.
    pending: Option<(Level, Duration)>,
    last: f64,
}

impl Alarm {
    pub fn new(config: AlarmConfig) -> Self {
        Alarm { config, state: Level::Normal, acknowledged: true, pending: None, last: f64::NAN }
    }

    pub fn state(&self) -> Level {
        self.state
    }

    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    pub fn priority(&self) -> Priority {
        self.config.priority
    }

    /// The last usable reading (NaN before the first).
    pub fn last(&self) -> f64 {
        self.last
    }

    /// The level `x` calls for, the hysteresis band holding the current one.
    fn target(&self, x: f64) -> Level {
        let raw = self.config.classify(x);
        let h = self.config.hysteresis;
        let held = match self.state {
            Level::HiHi => self.config.hihi.is_some_and(|l| x > l - h),
            Level::Hi => raw != Level::HiHi && self.config.hi.is_some_and(|l| x > l - h),
            Level::LoLo => self.config.lolo.is_some_and(|l| x < l + h),
            Level::Lo => raw != Level::LoLo && self.config.lo.is_some_and(|l| x < l + h),
            Level::Normal => false,
        };
        if held {
            self.state
        } else {
            raw
        }
    }

    /// Evaluates a reading taken at `now`. Readings without a usable number
    /// (bad quality, NaN, text) change nothing and cancel a pending raise.
    pub fn offer(&mut self, value: &Value, quality: Quality, now: Duration) -> Option<Event> {
        let x = match value {
            Value::Number(x) if x.is_finite() && quality != Quality::Bad => *x,
            Value::Integer(i) if quality != Quality::Bad => *i as f64,
            _ => {
                self.pending = None;
                return None;
            }
        };
        self.last = x;
        let target = self.target(x);
        if target == self.state {
            self.pending = None;
            return None;
        }
        let raises = target.severity() > self.state.severity()
            || (target != Level::Normal && (target > Level::Normal) != (self.state > Level::Normal));
        if raises {
            let since = match self.pending {
                Some((level, since)) if level == target => since,
                _ => now,
            };
            self.pending = Some((target, since));
            if now.saturating_sub(since) < Duration::from_millis(self.config.delay_ms) {
                return None;
            }
        }
        self.pending = None;
        let from = self.state;
        self.state = target;
        let (kind, limit) = if raises {
            self.acknowledged = false;
            (Kind::Raise, self.config.limit(target))
        } else if target == Level::Normal {
            (Kind::Clear, self.config.limit(from))
        } else {
            // Down a step (hihi to hi): still in alarm, at the lower limit.
            (Kind::Clear, self.config.limit(target))
        };
        Some(self.event(kind, from, limit))
    }

    /// An operator's acknowledgement; `None` when there is nothing to acknowledge.
    pub fn acknowledge(&mut self) -> Option<Event> {
        if self.acknowledged {
            return None;
        }
        self.acknowledged = true;
        Some(self.event(Kind::Acknowledge, self.state, self.config.limit(self.state)))
    }

    fn event(&self, kind: Kind, from: Level, limit: Option<f64>) -> Event {
        Event {
            kind,
            state: self.state,
            from,
            value: self.last,
            limit,
            acknowledged: self.acknowledged,
            priority: self.config.priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn tank() -> AlarmConfig {
        AlarmConfig {
            hihi: Some(95.0),
            hi: Some(80.0),
            lo: Some(5.0),
            lolo: Some(1.0),
            hysteresis: 1.0,
            delay_ms: 2000,
            priority: Priority::High,
        }
    }

    fn n(x: f64) -> Value {
        Value::Number(x)
    }

    #[test]
    fn a_limit_exceeded_past_the_delay_raises_and_clears_past_the_band() {
        let mut a = Alarm::new(tank());
        let good = Quality::Good;
        assert_eq!(a.offer(&n(50.0), good, Duration::ZERO), None);
        assert_eq!(a.offer(&n(85.0), good, 1000 * MS), None, "on-delay");
        assert_eq!(a.offer(&n(50.0), good, 2000 * MS), None, "a spike shorter than the delay");
        assert_eq!(a.offer(&n(85.0), good, 3000 * MS), None);
        let raised = a.offer(&n(86.0), good, 5000 * MS).unwrap();
        assert_eq!(
            (raised.kind, raised.from, raised.state, raised.limit),
            (Kind::Raise, Level::Normal, Level::Hi, Some(80.0))
        );
        assert!(!raised.acknowledged);
        assert_eq!(a.offer(&n(79.5), good, 6000 * MS), None, "inside the band: still hi");
        let ack = a.acknowledge().unwrap();
        assert!(ack.acknowledged && ack.state == Level::Hi);
        assert_eq!(a.acknowledge(), None, "nothing left to acknowledge");
        let cleared = a.offer(&n(78.9), good, 7000 * MS).unwrap();
        assert_eq!((cleared.kind, cleared.state, cleared.limit), (Kind::Clear, Level::Normal, Some(80.0)));
        assert!(cleared.acknowledged);
    }

    #[test]
    fn escalation_the_low_side_and_unusable_readings() {
        let mut a = Alarm::new(AlarmConfig { delay_ms: 0, ..tank() });
        let good = Quality::Good;
        assert_eq!(a.offer(&n(96.0), good, Duration::ZERO).unwrap().state, Level::HiHi);
        let down = a.offer(&n(90.0), good, MS).unwrap();
        assert_eq!((down.kind, down.state, down.limit), (Kind::Clear, Level::Hi, Some(80.0)));
        assert_eq!(a.offer(&n(0.5), good, 2 * MS).unwrap().state, Level::LoLo, "across to the low side");
        assert_eq!(a.offer(&n(f64::NAN), good, 3 * MS), None);
        assert_eq!(a.offer(&n(50.0), Quality::Bad, 4 * MS), None, "bad readings change nothing");
        assert_eq!(a.state(), Level::LoLo);
        assert_eq!(a.offer(&n(1.5), good, 5 * MS), None, "within lolo's band");
        assert_eq!(a.offer(&n(2.5), good, 6 * MS).unwrap().state, Level::Lo);
        assert_eq!(a.offer(&n(6.5), good, 7 * MS).unwrap().state, Level::Normal);
    }

    #[test]
    fn limits_must_be_in_order() {
        assert_eq!(AlarmConfig::default().validate().unwrap_err().0, "hi");
        let crossed = AlarmConfig { hi: Some(80.0), hihi: Some(70.0), ..Default::default() };
        assert_eq!(crossed.validate().unwrap_err().0, "hihi");
        let low = AlarmConfig { lo: Some(5.0), hi: Some(4.0), ..Default::default() };
        assert_eq!(low.validate().unwrap_err().0, "hi");
        assert!(tank().validate().is_ok());
    }

    proptest! {
        /// An alarm never clears until the value came back past its limit by
        /// the band, and never raises before the limit was exceeded for the
        /// whole delay.
        #[test]
        fn no_chatter_and_no_early_raise(
            series in proptest::collection::vec(60.0f64..100.0, 1..400),
            hysteresis in 0.0f64..5.0,
            delay_steps in 0u64..5,
        ) {
            let step = 100 * MS;
            let config = AlarmConfig { hi: Some(80.0), hysteresis, delay_ms: delay_steps * 100, ..Default::default() };
            let mut a = Alarm::new(config);
            for (i, &x) in series.iter().enumerate() {
                let Some(e) = a.offer(&n(x), Quality::Good, step * i as u32) else { continue };
                match e.kind {
                    Kind::Raise => {
                        let from = i.saturating_sub(delay_steps as usize);
                        prop_assert!(series[from..=i].iter().all(|&v| v >= 80.0), "raised early at {}", i);
                    }
                    Kind::Clear => prop_assert!(x <= 80.0 - hysteresis, "cleared at {} inside the band", x),
                    Kind::Acknowledge => unreachable!(),
                }
            }
        }
    }
}
