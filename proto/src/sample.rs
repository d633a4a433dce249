//! Telemetry samples: the value model, and the JSON that subscribers read on
//! the metric bus (`org.plantd.Metric.<agent>.<channel>`).
//!
//! A sample is keyed by (agent, boot epoch, sequence number): the epoch tells
//! one run of an agent from every other, the sequence counts up within it.
//! The hub deduplicates on that key.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

/// Topic prefix of telemetry on the metric bus: `org.plantd.Metric.<agent>.<channel>`.
pub const TOPIC_PREFIX: &str = "org.plantd.Metric.";

/// A sampled value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Number(f64),
    Integer(i64),
    Bool(bool),
    Text(String),
}

impl Value {
    pub fn to_json(&self) -> Json {
        match self {
            // JSON has no NaN or infinity: those become null rather than invalid JSON.
            Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
            Value::Integer(i) => json!(i),
            Value::Bool(b) => json!(b),
            Value::Text(t) => json!(t),
        }
    }
}

/// How much to trust a sample (OPC UA's three classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quality {
    Good,
    Uncertain,
    Bad,
}

impl Quality {
    pub fn name(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

/// One reading of one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub channel: String,
    /// Boot epoch: tells this run of the agent from every other one, so
    /// (agent, epoch, seq) names one sample forever. At most 2^53, so it is
    /// exact in JSON numbers read by JavaScript.
    pub epoch: u64,
    /// Per agent, per epoch, counting from 1.
    pub seq: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch (may jump: Pis have no RTC).
    pub wall_ns: i64,
    /// Monotonic time since the agent started, nanoseconds (never jumps).
    pub mono_ns: u64,
    /// Whether the wall clock was synchronised (NTP) when sampled.
    pub clock_synced: bool,
    pub value: Value,
    pub unit: String,
    pub quality: Quality,
}

impl Sample {
    pub fn topic(&self, agent: &str) -> String {
        format!("{TOPIC_PREFIX}{agent}.{}", self.channel)
    }

    /// Whether `payload` (a sample's JSON, as [`Sample::to_json`] writes it)
    /// is a durable sample: one that ingest acknowledged and journals.
    pub fn is_durable(payload: &[u8]) -> bool {
        const DURABLE: &[u8] = b"\"durable\":true";
        payload.windows(DURABLE.len()).any(|w| w == DURABLE)
    }

    /// The JSON published on the metric bus: live (best-effort) by the agent,
    /// or after ingest (durable) by the hub. Durable and best-effort samples
    /// count their `seq` separately; `durable` says which count a `seq` is in.
    pub fn to_json(&self, agent: &str, durable: bool, historical: bool) -> Json {
        serde_json::to_value(self.as_json(agent, durable, historical)).unwrap_or(Json::Null)
    }

    /// [`Sample::to_json`]'s text, written straight into `out`: the same
    /// bytes, without the tree of values in between (ingest writes one per
    /// sample, and that tree was most of its CPU per sample).
    pub fn write_json(&self, agent: &str, durable: bool, historical: bool, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, and every field serializes.
        let _ = serde_json::to_writer(out, &self.as_json(agent, durable, historical));
    }

    fn as_json<'a>(&'a self, agent: &'a str, durable: bool, historical: bool) -> SampleJson<'a> {
        SampleJson {
            agent,
            channel: &self.channel,
            clock_synced: self.clock_synced,
            durable,
            epoch: self.epoch,
            historical: historical.then_some(true),
            mono_ns: self.mono_ns,
            quality: self.quality.name(),
            seq: self.seq,
            ts: Ts(self.wall_ns),
            unit: &self.unit,
            value: &self.value,
            wall_ns: self.wall_ns,
        }
    }
}

/// A sample's JSON. Keys in alphabetical order: the order these payloads
/// have always had (they were a `serde_json` map), so consumers comparing a
/// repeated sample's bytes still find them equal.
#[derive(Serialize)]
struct SampleJson<'a> {
    agent: &'a str,
    channel: &'a str,
    clock_synced: bool,
    durable: bool,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    historical: Option<bool>,
    mono_ns: u64,
    quality: &'static str,
    seq: u64,
    ts: Ts,
    unit: &'a str,
    #[serde(serialize_with = "value_json")]
    value: &'a Value,
    wall_ns: i64,
}

/// Wall-clock nanoseconds as RFC 3339 text, or null out of range.
struct Ts(i64);

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match jiff::Timestamp::from_nanosecond(self.0 as i128) {
            Ok(t) => s.collect_str(&t),
            Err(_) => s.serialize_none(),
        }
    }
}

fn value_json<S: serde::Serializer>(value: &&Value, s: S) -> Result<S::Ok, S::Error> {
    match value {
        // JSON has no NaN or infinity: those become null rather than invalid JSON.
        Value::Number(n) if n.is_finite() => s.serialize_f64(*n),
        Value::Number(_) => s.serialize_none(),
        Value::Integer(i) => s.serialize_i64(*i),
        Value::Bool(b) => s.serialize_bool(*b),
        Value::Text(t) => s.serialize_str(t),
    }
}

/// Samples for tests, here and in the crates that store and send them.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;
    use proptest::prelude::*;

    pub fn sample(seq: u64, value: Value) -> Sample {
        Sample {
            channel: "temp".into(),
            epoch: 3,
            seq,
            wall_ns: 1_790_000_000_000_000_000,
            mono_ns: 42,
            clock_synced: true,
            value,
            unit: "degC".into(),
            quality: Quality::Good,
        }
    }

    /// Any value that equals itself (no NaN).
    pub fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(Value::Number),
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Bool),
            ".{0,20}".prop_map(Value::Text),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::sample;
    use super::*;

    #[test]
    fn json_is_what_subscribers_read() {
        let j = sample(7, Value::Number(21.5)).to_json("pi-1", true, true);
        assert_eq!(j["agent"], "pi-1");
        let compact =
            |durable| sample(7, Value::Number(21.5)).to_json("pi-1", durable, false).to_string().into_bytes();
        assert!(Sample::is_durable(&compact(true)) && !Sample::is_durable(&compact(false)));
        assert_eq!(j["seq"], 7);
        assert_eq!(j["value"], 21.5);
        assert_eq!(j["quality"], "good");
        assert_eq!(j["historical"], true);
        assert!(j["ts"].as_str().unwrap().starts_with("2026-"));
        assert!(sample(1, Value::Bool(true)).to_json("a", false, false).get("historical").is_none());
        assert_eq!(j["durable"], true);
        assert_eq!(sample(1, Value::Number(f64::NAN)).to_json("a", false, false)["value"], Json::Null);
        assert_eq!(sample(1, Value::Integer(3)).topic("pi-1"), "org.plantd.Metric.pi-1.temp");
    }

    /// The JSON as it was built before `write_json`: a `serde_json` map.
    fn as_map(s: &Sample, agent: &str, durable: bool, historical: bool) -> String {
        let ts = jiff::Timestamp::from_nanosecond(s.wall_ns as i128).map(|t| t.to_string()).ok();
        let mut j = json!({
            "agent": agent, "channel": s.channel, "epoch": s.epoch, "seq": s.seq, "ts": ts,
            "wall_ns": s.wall_ns, "mono_ns": s.mono_ns, "clock_synced": s.clock_synced,
            "value": s.value.to_json(), "unit": s.unit, "quality": s.quality.name(), "durable": durable,
        });
        if historical {
            j["historical"] = json!(true);
        }
        j.to_string()
    }

    proptest::proptest! {
        #[test]
        fn written_json_is_byte_for_byte_the_map_it_replaced(
            value in super::testing::value(),
            wall_ns in proptest::prelude::any::<i64>(),
            seq in proptest::prelude::any::<u64>(),
            durable in proptest::prelude::any::<bool>(),
            historical in proptest::prelude::any::<bool>(),
            agent in "[a-z\\-\"]{0,8}",
        ) {
            let s = Sample { wall_ns, seq, ..sample(1, value) };
            let mut out = Vec::new();
            s.write_json(&agent, durable, historical, &mut out);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), as_map(&s, &agent, durable, historical));
        }
    }

    #[test]
    fn infinities_and_nan_are_null_in_written_json() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = Vec::new();
            sample(1, Value::Number(n)).write_json("a", true, false, &mut out);
            assert_eq!(out, as_map(&sample(1, Value::Number(n)), "a", true, false).into_bytes());
            assert!(String::from_utf8(out).unwrap().contains("\"value\":null"));
        }
    }
}
