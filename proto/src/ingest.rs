//! Telemetry samples and the agent → hub ingest protocol.
//!
//! A sample is keyed by (agent, boot epoch, sequence number): the epoch is a
//! counter the agent persists and bumps at every start, the sequence counts
//! up within an epoch. The hub deduplicates on that key, so an agent may send
//! a batch again (after a timeout, a restart, a hub restart) without the
//! samples being published twice.
//!
//! On the wire (the `org.plantd.Ingest` MDP service): one request frame,
//! `VERSION` then a postcard-encoded [`Batch`]; one reply frame, `VERSION`
//! then a postcard-encoded [`Reply`]. In the agent's outbox each sample is a
//! [`Record`]: a CRC-32 then the postcard-encoded sample, so a damaged record
//! is detected and set aside rather than decoded into garbage.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

/// The Majordomo service name of the hub's ingest.
pub const SERVICE: &str = "org.plantd.Ingest";

/// First byte of every ingest message; bumped on incompatible changes.
pub const VERSION: u8 = 1;

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

    /// Parses a value written by a person (`agent ... write`): bool, integer, number, else text.
    pub fn parse(text: &str) -> Value {
        match text {
            "true" | "on" => Value::Bool(true),
            "false" | "off" => Value::Bool(false),
            _ => text
                .parse::<i64>()
                .map(Value::Integer)
                .or_else(|_| text.parse::<f64>().map(Value::Number))
                .unwrap_or_else(|_| Value::Text(text.to_string())),
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
    /// Boot epoch: the agent's persisted start counter.
    pub epoch: u32,
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

    /// The JSON published on the metric bus: live (best-effort) by the agent,
    /// or after ingest (durable) by the hub. Durable and best-effort samples
    /// count their `seq` separately; `durable` says which count a `seq` is in.
    pub fn to_json(&self, agent: &str, durable: bool, historical: bool) -> Json {
        let ts = jiff::Timestamp::from_nanosecond(self.wall_ns as i128).map(|t| t.to_string()).ok();
        let mut j = json!({
            "agent": agent,
            "channel": self.channel,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts": ts,
            "wall_ns": self.wall_ns,
            "mono_ns": self.mono_ns,
            "clock_synced": self.clock_synced,
            "value": self.value.to_json(),
            "unit": self.unit,
            "quality": self.quality.name(),
            "durable": durable,
        });
        if historical {
            j["historical"] = json!(true);
        }
        j
    }
}

/// A sample as sent to the hub, marked historical when it is late.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub sample: Sample,
    pub historical: bool,
}

/// What an agent sends to `org.plantd.Ingest`: samples in sequence order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub agent: String,
    pub samples: Vec<Sent>,
}

/// The hub's answer to a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Every sample of the batch is accepted (new ones published, repeats dropped):
    /// the agent may retire them.
    Ack { accepted: u32, duplicates: u32 },
    /// Not accepted; keep the samples and try again later.
    Retry { reason: String, after_ms: u32 },
    /// The batch cannot be decoded; resending it will not help.
    Malformed { reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}, expected {VERSION}")]
    Version(u8),
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("record checksum mismatch")]
    Checksum,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serialising our own plain data types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes plain data"));
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        None => Err(WireError::Empty),
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| WireError::Decode(e.to_string())),
        Some((&other, _)) => Err(WireError::Version(other)),
    }
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
        decode(bytes)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, WireError> {
        decode(bytes)
    }
}

/// The outbox's on-disk form of a sample: CRC-32 (little-endian) of the rest,
/// then `VERSION` and the postcard-encoded sample.
pub struct Record;

impl Record {
    pub fn encode(sample: &Sample) -> Vec<u8> {
        let body = encode(sample);
        let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Sample, WireError> {
        if bytes.len() < 5 {
            return Err(WireError::Empty);
        }
        let (crc, body) = bytes.split_at(4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(WireError::Checksum);
        }
        decode(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(seq: u64, value: Value) -> Sample {
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

    #[test]
    fn records_detect_damage() {
        let bytes = Record::encode(&sample(1, Value::Number(21.5)));
        assert_eq!(Record::decode(&bytes).unwrap(), sample(1, Value::Number(21.5)));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(Record::decode(&damaged).is_err(), "flipping byte {i} went unnoticed");
        }
        assert_eq!(Record::decode(&bytes[..3]), Err(WireError::Empty));
    }

    #[test]
    fn versions_are_checked() {
        let mut bytes = Reply::Ack { accepted: 1, duplicates: 0 }.encode();
        bytes[0] = 9;
        assert_eq!(Reply::decode(&bytes), Err(WireError::Version(9)));
        assert_eq!(Batch::decode(&[]), Err(WireError::Empty));
        assert!(matches!(Batch::decode(&[VERSION, 0xff, 0xff]), Err(WireError::Decode(_))));
    }

    #[test]
    fn json_is_what_subscribers_read() {
        let j = sample(7, Value::Number(21.5)).to_json("pi-1", true, true);
        assert_eq!(j["agent"], "pi-1");
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

    #[test]
    fn values_parse_from_text() {
        assert_eq!(Value::parse("on"), Value::Bool(true));
        assert_eq!(Value::parse("42"), Value::Integer(42));
        assert_eq!(Value::parse("4.5"), Value::Number(4.5));
        assert_eq!(Value::parse("open"), Value::Text("open".into()));
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(Value::Number),
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Bool),
            ".{0,20}".prop_map(Value::Text),
        ]
    }

    proptest! {
        #[test]
        fn batches_and_records_round_trip(seqs in prop::collection::vec(any::<u64>(), 0..20), v in value(), historical in any::<bool>()) {
            let samples: Vec<Sent> = seqs.iter().map(|&s| Sent { sample: sample(s, v.clone()), historical }).collect();
            let batch = Batch { agent: "a".into(), samples };
            prop_assert_eq!(Batch::decode(&batch.encode()).unwrap(), batch.clone());
            for sent in &batch.samples {
                prop_assert_eq!(Record::decode(&Record::encode(&sent.sample)).unwrap(), sent.sample.clone());
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Batch::decode(&bytes);
            let _ = Reply::decode(&bytes);
            let _ = Record::decode(&bytes);
        }
    }
}
