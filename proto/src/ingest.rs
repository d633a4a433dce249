//! The agent → hub ingest protocol (the `org.plantd.Ingest` MDP service).
//!
//! One request frame, an encoded [`Batch`] of durable samples, optionally
//! followed by a frame with the agent's [`Report`] (hubs that predate it
//! ignore it); one reply frame, an encoded [`Reply`]; all in
//! [`codec`](crate::codec)'s versioned postcard. An agent with nothing to
//! send sends an empty batch with its report now and then, so the hub knows
//! it is there. The hub deduplicates on (agent, epoch, seq), so an agent may send
//! a batch again (after a timeout, a restart, a hub restart) without the
//! samples being published twice.
//!
//! Batches in flight. A hub that can take several batches of one agent at
//! once says so in every reply, with a second frame: an [`Echo`] of how
//! many (its window). An agent that has seen it may then send the next
//! batch before the last is answered, with a third request frame, an
//! [`Order`]: an id (echoed back, since Majordomo replies carry none, to
//! tell whose reply it is) and the last sample of the batch it follows. The
//! hub takes a batch only once the one it follows is accepted (it waits a
//! moment for a batch in hand, else answers Retry): accepting it first
//! would raise the watermark past the earlier batch's samples, which would
//! then be dropped as repeats. Hubs that predate this read the first two
//! frames and reply with one, and their agents read the first reply frame:
//! an agent sends one batch at a time until it sees a window. While it has
//! a window it sends to [`ORDERED_SERVICE`], which older hubs lack: a hub
//! replaced by an older one under a running agent (its socket reconnects
//! without a word) never takes batches it cannot order.

use serde::{Deserialize, Serialize};

use crate::alarm::{Active, AlarmEvent};
use crate::codec::{self, WireError};
use crate::sample::Sample;

/// The Majordomo service name of the hub's ingest.
pub const SERVICE: &str = "org.plantd.Ingest";

/// The same service for batches sent while others are in flight. Only hubs
/// that keep their order register it: a hub from before never gets such a
/// batch (it would take it in any order), the request goes unanswered, and
/// the agent goes back to one batch at a time on [`SERVICE`].
pub const ORDERED_SERVICE: &str = "org.plantd.Ingest.Ordered";

/// A sample as sent to the hub, marked historical when it is late.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub sample: Sample,
    pub historical: bool,
}

/// What an agent sends to `org.plantd.Ingest`: samples in sequence order,
/// and (appended with alarms) alarm events in sequence order. An agent sends
/// events in batches of their own, ahead of its samples; a hub counts them
/// in its `Ack`, so an agent can tell a hub that predates them (which
/// decodes the leading fields, ignores the rest and acknowledges nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub agent: String,
    pub samples: Vec<Sent>,
    #[serde(default)]
    pub events: Vec<AlarmEvent>,
}

/// A batch as agents before alarms sent it.
#[derive(Deserialize)]
struct BatchV1 {
    agent: String,
    samples: Vec<Sent>,
}

/// How an agent is doing, as it says with its batches (for `hub agents`
/// and the web view).
///
/// postcard is positional: fields are only ever appended, and an older
/// hub reads a newer report's leading fields and ignores the rest. A newer
/// hub reads an older agent's shorter report through [`Report::decode`],
/// which fills what it lacks with defaults (postcard stops at the end of
/// the input instead of using `#[serde(default)]`, so that is done here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Its boot epoch.
    pub epoch: u64,
    /// Durable samples in its outbox, not yet acknowledged.
    pub backlog: u64,
    /// Age of the oldest of them, in ms: how far behind the hub is.
    pub oldest_age_ms: u64,
    /// Samples its outbox dropped (full, or short of disk space).
    pub dropped: u64,
    /// Whether its store writes.
    pub store_ok: bool,
    pub uptime_s: u64,
    /// The agent's version.
    pub version: String,
    /// Its channels (durable and best-effort), for pickers and listings.
    pub channels: Vec<String>,
    // Added with issue 27: every counter that explains a gap in the durable
    // sequence, kept across the agent's restarts, and the disk's reserve.
    /// Of `dropped`, those dropped because the disk was short of the reserve.
    #[serde(default)]
    pub dropped_for_space: u64,
    /// Samples lost to failed writes (a full disk).
    #[serde(default)]
    pub store_errors: u64,
    /// Damaged stretches of its outbox set aside (each may have held samples).
    #[serde(default)]
    pub quarantined: u64,
    /// Whether the disk is short of the reserve now, so new samples drop the oldest.
    #[serde(default)]
    pub space_low: bool,
    /// Free bytes on the outbox's file system at its last flush, and the reserve.
    #[serde(default)]
    pub free_bytes: u64,
    #[serde(default)]
    pub min_free_bytes: u64,
    // Added with alarms.
    /// Its alarms in force now.
    #[serde(default)]
    pub alarms: Vec<Active>,
}

/// The report as agents from issue 27 until alarms sent it.
#[derive(Deserialize)]
struct ReportV2 {
    head: ReportV1,
    dropped_for_space: u64,
    store_errors: u64,
    quarantined: u64,
    space_low: bool,
    free_bytes: u64,
    min_free_bytes: u64,
}

impl From<ReportV2> for Report {
    fn from(r: ReportV2) -> Report {
        Report {
            dropped_for_space: r.dropped_for_space,
            store_errors: r.store_errors,
            quarantined: r.quarantined,
            space_low: r.space_low,
            free_bytes: r.free_bytes,
            min_free_bytes: r.min_free_bytes,
            ..Report::from(r.head)
        }
    }
}

/// The report as agents before issue 27 sent it: the same leading fields.
#[derive(Deserialize)]
struct ReportV1 {
    epoch: u64,
    backlog: u64,
    oldest_age_ms: u64,
    dropped: u64,
    store_ok: bool,
    uptime_s: u64,
    version: String,
    channels: Vec<String>,
}

impl From<ReportV1> for Report {
    fn from(r: ReportV1) -> Report {
        Report {
            epoch: r.epoch,
            backlog: r.backlog,
            oldest_age_ms: r.oldest_age_ms,
            dropped: r.dropped,
            store_ok: r.store_ok,
            uptime_s: r.uptime_s,
            version: r.version,
            channels: r.channels,
            ..Report::default()
        }
    }
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A report from an agent of any version so far (an older one's lacks
    /// the later fields: they read as zero).
    pub fn decode(bytes: &[u8]) -> Result<Report, WireError> {
        // postcard nests a struct's fields in place, so V2 reads V1's and then its own.
        codec::decode(bytes)
            .or_else(|e| codec::decode::<ReportV2>(bytes).map(Report::from).map_err(|_| e))
            .or_else(|e| codec::decode::<ReportV1>(bytes).map(Report::from).map_err(|_| e))
    }
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
    /// This sender may not send this batch (with security: batches for
    /// another agent's id). Keep the samples; the operator must act.
    Refused { reason: String },
}

/// The third request frame of a batch sent while others are in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The agent's, for this batch; the hub echoes it.
    pub id: u64,
    /// (epoch, seq) of the last sample of the batch sent before this one,
    /// when that one is not answered yet: take this batch only after it.
    pub follows: Option<(u64, u64)>,
}

/// The second reply frame of a hub that takes batches in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The request's [`Order::id`] (0 without one).
    pub id: u64,
    /// Batches of one agent the hub takes in flight at once.
    pub window: u32,
}

impl Order {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Order, WireError> {
        codec::decode(bytes)
    }
}

impl Echo {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Echo, WireError> {
        codec::decode(bytes)
    }
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A batch from an agent of any version so far (an older one's has no events).
    pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
        codec::decode(bytes).or_else(|e| {
            let old = codec::decode::<BatchV1>(bytes).map_err(|_| e)?;
            Ok(Batch { agent: old.agent, samples: old.samples, events: Vec::new() })
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, WireError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::testing::event;
    use crate::alarm::{Kind, Level, Priority};
    use crate::codec::VERSION;
    use crate::sample::testing::{sample, value};
    use crate::sample::Value;
    use proptest::prelude::*;

    #[test]
    fn versions_are_checked() {
        let mut bytes = Reply::Ack { accepted: 1, duplicates: 0 }.encode();
        bytes[0] = 9;
        assert_eq!(Reply::decode(&bytes), Err(WireError::Version(9)));
        assert_eq!(Batch::decode(&[]), Err(WireError::Empty));
        assert!(matches!(Batch::decode(&[VERSION, 0xff, 0xff]), Err(WireError::Decode(_))));
    }

    fn report() -> Report {
        Report {
            epoch: 7,
            backlog: 120,
            oldest_age_ms: 4500,
            dropped: 9,
            store_ok: true,
            uptime_s: 60,
            version: "0.1.0".into(),
            channels: vec!["temp".into()],
            dropped_for_space: 4,
            store_errors: 3,
            quarantined: 1,
            space_low: true,
            free_bytes: 1 << 19,
            min_free_bytes: 1 << 20,
            alarms: vec![Active {
                channel: "temp".into(),
                state: Level::Hi,
                priority: Priority::High,
                acknowledged: false,
                value: 85.5,
                since_wall_ns: 1,
            }],
        }
    }

    #[test]
    fn reports_from_issue_27_until_alarms_keep_their_fields() {
        let new = report();
        let mut v2 = Report { alarms: Vec::new(), ..new.clone() }.encode();
        v2.pop(); // The empty list of alarms: the one byte a V2 report lacks.
        assert_eq!(Report::decode(&v2).unwrap(), Report { alarms: Vec::new(), ..new });
    }

    #[test]
    fn batches_with_events_and_batches_of_older_agents_are_read() {
        let events = vec![event(1, Kind::Raise, Level::Hi), event(2, Kind::Acknowledge, Level::Hi)];
        let batch = Batch { agent: "a".into(), samples: Vec::new(), events };
        assert_eq!(Batch::decode(&batch.encode()).unwrap(), batch);
        #[derive(Serialize)]
        struct Old<'a>(&'a str, Vec<Sent>);
        let sent = Sent { sample: sample(4, Value::Integer(1)), historical: false };
        let old = Batch::decode(&codec::encode(&Old("a", vec![sent.clone()]))).unwrap();
        assert_eq!(old, Batch { agent: "a".into(), samples: vec![sent], events: Vec::new() });
        // A hub before alarms reads the leading fields of a batch of events: no samples to take.
        #[derive(Deserialize)]
        struct OldHub(#[allow(dead_code)] String, Vec<Sent>);
        let seen: OldHub = codec::decode(&batch.encode()).unwrap();
        assert!(seen.1.is_empty());
    }

    #[test]
    fn reports_of_older_and_newer_agents_are_read_both_ways() {
        let new = report();
        assert_eq!(Report::decode(&new.encode()).unwrap(), new);
        // An older agent's report: the leading fields only.
        #[derive(Serialize)]
        struct Old<'a>(u64, u64, u64, u64, bool, u64, &'a str, &'a [String]);
        let old = codec::encode(&Old(7, 120, 4500, 9, true, 60, "0.0.9", &new.channels));
        let read = Report::decode(&old).unwrap();
        assert_eq!((read.epoch, read.backlog, read.dropped, read.version.as_str()), (7, 120, 9, "0.0.9"));
        assert_eq!((read.store_errors, read.space_low, read.min_free_bytes), (0, false, 0), "absent: zero");
        // An older hub decodes a newer agent's report as its own shorter type.
        #[derive(Deserialize, Debug, PartialEq)]
        struct OldHub(u64, u64, u64, u64, bool, u64, String, Vec<String>);
        let seen: OldHub = codec::decode(&new.encode()).unwrap();
        assert_eq!(seen, OldHub(7, 120, 4500, 9, true, 60, "0.1.0".into(), vec!["temp".into()]));
        assert!(Report::decode(&old[..old.len() - 1]).is_err(), "cut short inside the old fields");
    }

    proptest! {
        #[test]
        fn batches_round_trip(seqs in prop::collection::vec(any::<u64>(), 0..20), v in value(), historical in any::<bool>()) {
            let samples: Vec<Sent> = seqs.iter().map(|&s| Sent { sample: sample(s, v.clone()), historical }).collect();
            let batch = Batch { agent: "a".into(), samples, events: Vec::new() };
            prop_assert_eq!(Batch::decode(&batch.encode()).unwrap(), batch);
        }

        #[test]
        fn orders_and_echoes_round_trip(id in any::<u64>(), follows in any::<Option<(u64, u64)>>(), window in any::<u32>()) {
            let order = Order { id, follows };
            prop_assert_eq!(Order::decode(&order.encode()).unwrap(), order);
            let echo = Echo { id, window };
            prop_assert_eq!(Echo::decode(&echo.encode()).unwrap(), echo);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Batch::decode(&bytes);
            let _ = Order::decode(&bytes);
            let _ = Echo::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
