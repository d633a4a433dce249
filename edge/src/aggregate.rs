//! Aggregation windows: a channel's readings become, per window, derived
//! channels `<channel>.min`, `.max`, `.mean`, `.last`, `.count`, so a link
//! paid by the byte carries a minute's summary instead of sixty readings.
//! Windows lie on multiples of their length in wall-clock time while the
//! clock is synchronised (so every agent's minutes line up), and on the
//! agent's monotonic clock when it is not (those windows are flagged).
//!
//! ```toml
//! [[channel]]
//! name = "power"
//! driver = { kind = "sine" }
//! aggregate = { window_ms = 60000, stats = ["min", "max", "mean", "last", "count"], keep_raw = false }
//! ```

use proto::sample::{Quality, Value};
use serde::{Deserialize, Serialize};

/// `aggregate = { ... }` on a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub window_ms: u64,
    #[serde(default = "every_stat")]
    pub stats: Vec<Stat>,
    /// Whether the raw readings are sent too; `false` sends the aggregates alone.
    #[serde(default = "yes")]
    pub keep_raw: bool,
}

fn every_stat() -> Vec<Stat> {
    vec![Stat::Min, Stat::Max, Stat::Mean, Stat::Last, Stat::Count]
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    Min,
    Max,
    Mean,
    Last,
    Count,
}

impl Stat {
    pub fn name(self) -> &'static str {
        match self {
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Mean => "mean",
            Stat::Last => "last",
            Stat::Count => "count",
        }
    }
}

impl AggregateConfig {
    /// `(field, problem)` of the first problem; `period_ms` is the channel's.
    pub fn validate(&self, period_ms: u64) -> Result<(), (&'static str, String)> {
        if self.window_ms < period_ms.max(1000) {
            return Err((
                "window_ms",
                format!("must be at least 1000 and the channel's period ({period_ms} ms)"),
            ));
        }
        if self.stats.is_empty() {
            return Err(("stats", "name at least one of min, max, mean, last, count".into()));
        }
        if (1..self.stats.len()).any(|i| self.stats[..i].contains(&self.stats[i])) {
            return Err(("stats", "names a statistic twice".into()));
        }
        Ok(())
    }
}

/// Which window a reading falls in: its number, and whether it counts in
/// wall-clock time (else the agent's monotonic clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    index: i64,
    wall: bool,
}

/// A window that ended, and its statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed {
    /// The window's end, in its own time base (wall-clock or monotonic ns).
    pub end_ns: i64,
    /// Whether the window lay on the wall clock; `false` flags one on the
    /// monotonic clock (the wall clock was not synchronised).
    pub on_wall_clock: bool,
    /// Each configured statistic that has a value: min, max and mean of
    /// numbers, last of any reading, count of usable readings.
    pub stats: Vec<(Stat, Value)>,
    /// `good` if every reading was; `uncertain` if some were left out as
    /// bad or uncertain; `bad` if none was usable.
    pub quality: Quality,
}

#[derive(Clone, Debug, Default)]
struct Sums {
    count: u64,
    left_out: u64,
    uncertain: u64,
    numbers: u64,
    min: f64,
    max: f64,
    sum: f64,
    last: Option<Value>,
}

/// One channel's windows.
#[derive(Clone, Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    window: Option<Window>,
    sums: Sums,
}

impl Aggregator {
    pub fn new(config: AggregateConfig) -> Self {
        Aggregator { config, window: None, sums: Sums::default() }
    }

    pub fn keep_raw(&self) -> bool {
        self.config.keep_raw
    }

    fn window_of(&self, wall_ns: i64, mono_ns: u64, synced: bool) -> Window {
        let length = self.config.window_ms as i64 * 1_000_000;
        if synced {
            Window { index: wall_ns.div_euclid(length), wall: true }
        } else {
            Window { index: (mono_ns / length as u64) as i64, wall: false }
        }
    }

    /// Closes the current window if the time given lies past it.
    pub fn tick(&mut self, wall_ns: i64, mono_ns: u64, synced: bool) -> Option<Closed> {
        let now = self.window_of(wall_ns, mono_ns, synced);
        match self.window {
            Some(w) if w != now => self.close(),
            _ => None,
        }
    }

    /// Adds a reading; returns the window it closed, if it fell in a new one.
    pub fn offer(
        &mut self,
        value: &Value,
        quality: Quality,
        wall_ns: i64,
        mono_ns: u64,
        synced: bool,
    ) -> Option<Closed> {
        let closed = self.tick(wall_ns, mono_ns, synced);
        self.window = Some(self.window_of(wall_ns, mono_ns, synced));
        let s = &mut self.sums;
        if quality == Quality::Bad {
            s.left_out += 1;
            return closed;
        }
        s.uncertain += u64::from(quality == Quality::Uncertain);
        s.count += 1;
        let number = match value {
            Value::Number(x) if x.is_finite() => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        if let Some(x) = number {
            if s.numbers == 0 {
                (s.min, s.max) = (x, x);
            }
            s.numbers += 1;
            s.min = s.min.min(x);
            s.max = s.max.max(x);
            s.sum += x;
        }
        s.last = Some(value.clone());
        closed
    }

    fn close(&mut self) -> Option<Closed> {
        let window = self.window.take()?;
        let s = std::mem::take(&mut self.sums);
        let length = self.config.window_ms as i64 * 1_000_000;
        let stats = self
            .config
            .stats
            .iter()
            .filter_map(|&stat| {
                let value = match stat {
                    Stat::Count => Value::Integer(s.count as i64),
                    Stat::Last => s.last.clone()?,
                    _ if s.numbers == 0 => return None,
                    Stat::Min => Value::Number(s.min),
                    Stat::Max => Value::Number(s.max),
                    Stat::Mean => Value::Number(s.sum / s.numbers as f64),
                };
                Some((stat, value))
            })
            .collect();
        let quality = match (s.count, s.left_out + s.uncertain) {
            (0, _) => Quality::Bad,
            (_, 0) => Quality::Good,
            _ => Quality::Uncertain,
        };
        Some(Closed { end_ns: (window.index + 1) * length, on_wall_clock: window.wall, stats, quality })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    fn minute(stats: Vec<Stat>) -> Aggregator {
        Aggregator::new(AggregateConfig { window_ms: 60_000, stats, keep_raw: true })
    }

    #[test]
    fn windows_on_the_wall_clock_close_with_their_statistics() {
        let mut a = minute(every_stat());
        let t0 = 1_700_000_080 * S; // 40 s into a minute
        let good = Quality::Good;
        assert_eq!(a.offer(&Value::Number(3.0), good, t0, 0, true), None);
        assert_eq!(a.offer(&Value::Number(1.0), good, t0 + 10 * S, 10 * S as u64, true), None);
        assert_eq!(a.offer(&Value::Number(8.0), Quality::Bad, t0 + 15 * S, 15 * S as u64, true), None);
        // The next minute begins at +20 s.
        assert_eq!(a.tick(t0 + 19 * S, 19 * S as u64, true), None);
        let closed = a.tick(t0 + 21 * S, 21 * S as u64, true).unwrap();
        assert_eq!(closed.end_ns, 1_700_000_100 * S);
        assert!(closed.on_wall_clock);
        assert_eq!(closed.quality, Quality::Uncertain, "a bad reading was left out");
        assert_eq!(
            closed.stats,
            vec![
                (Stat::Min, Value::Number(1.0)),
                (Stat::Max, Value::Number(3.0)),
                (Stat::Mean, Value::Number(2.0)),
                (Stat::Last, Value::Number(1.0)),
                (Stat::Count, Value::Integer(2)),
            ]
        );
        assert_eq!(a.tick(t0 + 200 * S, 200 * S as u64, true), None, "an empty window sends nothing");
    }

    #[test]
    fn an_unsynchronised_clock_counts_windows_on_the_monotonic_one_and_flags_them() {
        let mut a = minute(vec![Stat::Count, Stat::Mean]);
        a.offer(&Value::Text("x".into()), Quality::Good, 5, 59 * S as u64, false);
        let closed = a.offer(&Value::Integer(4), Quality::Good, 6, 61 * S as u64, false).unwrap();
        assert!(!closed.on_wall_clock);
        assert_eq!(closed.end_ns, 60 * S);
        assert_eq!(closed.stats, vec![(Stat::Count, Value::Integer(1))], "no mean of text");
        let bad = a.offer(&Value::Integer(4), Quality::Bad, 7, 121 * S as u64, false).unwrap();
        assert_eq!(bad.stats, vec![(Stat::Count, Value::Integer(1)), (Stat::Mean, Value::Number(4.0))]);
        let none = a.tick(8, 181 * S as u64, false).unwrap();
        assert_eq!((none.quality, none.stats), (Quality::Bad, vec![(Stat::Count, Value::Integer(0))]));
    }

    #[test]
    fn configs_name_the_field() {
        let parsed: AggregateConfig = toml::from_str("window_ms = 60000").unwrap();
        assert_eq!((parsed.stats.len(), parsed.keep_raw), (5, true));
        assert_eq!(parsed.validate(120_000).unwrap_err().0, "window_ms");
        let twice = AggregateConfig { window_ms: 60_000, stats: vec![Stat::Min, Stat::Min], keep_raw: true };
        assert_eq!(twice.validate(1000).unwrap_err().0, "stats");
        assert!(toml::from_str::<AggregateConfig>("window_ms = 1000\nstats = [\"median\"]").is_err());
    }

    proptest! {
        /// Every usable reading is counted in exactly one window, and each
        /// window's min <= mean <= max.
        #[test]
        fn every_reading_lands_in_one_window(
            readings in proptest::collection::vec((-1e6f64..1e6, 0u64..5_000), 1..200),
        ) {
            let mut a = Aggregator::new(AggregateConfig { window_ms: 10_000, stats: every_stat(), keep_raw: true });
            let mut t = 0u64;
            let mut counted = 0;
            let mut check = |c: Closed| -> Result<(), TestCaseError> {
                let get = |s: Stat| c.stats.iter().find(|(k, _)| *k == s).map(|(_, v)| v.clone());
                if let Some(Value::Integer(n)) = get(Stat::Count) { counted += n; }
                if let (Some(Value::Number(lo)), Some(Value::Number(m)), Some(Value::Number(hi))) =
                    (get(Stat::Min), get(Stat::Mean), get(Stat::Max)) {
                    prop_assert!(lo <= m + 1e-6 && m <= hi + 1e-6);
                }
                Ok(())
            };
            for &(x, step) in &readings {
                t += step * 1_000_000;
                if let Some(c) = a.offer(&Value::Number(x), Quality::Good, 0, t, false) { check(c)?; }
            }
            if let Some(c) = a.tick(0, t + 20_000_000_000, false) { check(c)?; }
            prop_assert_eq!(counted, readings.len() as i64);
        }
    }
}
