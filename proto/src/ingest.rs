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

use serde::{Deserialize, Serialize};

use crate::codec::{self, WireError};
use crate::sample::Sample;

/// The Majordomo service name of the hub's ingest.
pub const SERVICE: &str = "org.plantd.Ingest";

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

/// How an agent is doing, as it says with its batches (for `hub agents`
/// and the web view).
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
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Report, WireError> {
        codec::decode(bytes)
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

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
        codec::decode(bytes)
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
    use crate::codec::VERSION;
    use crate::sample::testing::{sample, value};
    use proptest::prelude::*;

    #[test]
    fn versions_are_checked() {
        let mut bytes = Reply::Ack { accepted: 1, duplicates: 0 }.encode();
        bytes[0] = 9;
        assert_eq!(Reply::decode(&bytes), Err(WireError::Version(9)));
        assert_eq!(Batch::decode(&[]), Err(WireError::Empty));
        assert!(matches!(Batch::decode(&[VERSION, 0xff, 0xff]), Err(WireError::Decode(_))));
    }

    proptest! {
        #[test]
        fn batches_round_trip(seqs in prop::collection::vec(any::<u64>(), 0..20), v in value(), historical in any::<bool>()) {
            let samples: Vec<Sent> = seqs.iter().map(|&s| Sent { sample: sample(s, v.clone()), historical }).collect();
            let batch = Batch { agent: "a".into(), samples };
            prop_assert_eq!(Batch::decode(&batch.encode()).unwrap(), batch);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Batch::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
