//! The journal's consumers: who reads it, from where, within which bounds.
//!
//! Three kinds, all with a persistent cursor that moves only on their
//! acknowledgement:
//! - the hub's own (the NATS bridge, pipelines fed by ingest), from its
//!   config: they hold the journal at their bounds (`block`);
//! - durable consumers declared in the config (`[[consumer]]`);
//! - durable consumers made on the fly by a client (`hub tap --durable`).
//!
//! A consumer's backlog is what lies after its cursor: records by key
//! (keys are contiguous), bytes by the cumulative offset every entry
//! carries. At its bounds a `block` consumer makes ingest answer Retry; a
//! `drop-oldest` one has its cursor skip ahead, counted.

use std::time::{Duration, Instant};

use proto::consumer::Policy;
use serde::{Deserialize, Serialize};

/// Where a consumer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The bridge or a pipeline: made from the config at every start, never persisted.
    Hub,
    /// `[[consumer]]` in the config.
    Declared,
    /// Made by a client.
    Made,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Hub => "hub",
            Origin::Declared => "config",
            Origin::Made => "client",
        }
    }
}

/// A consumer's definition (persisted for durable consumers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    /// Topic prefixes it reads; none: every topic.
    pub prefixes: Vec<String>,
    pub policy: Policy,
    pub max_records: u64,
    pub max_bytes: u64,
    /// The identity that may read and acknowledge it (with security); `None`:
    /// only the hub's own, or anyone when security is off.
    pub owner: Option<String>,
    pub origin: Origin,
    /// Idle (no fetch, no acknowledgement) this long, it is reported ...
    pub inactive_after_ms: Option<u64>,
    /// ... and then removed.
    pub remove_when_inactive: bool,
}

impl Spec {
    /// Whether it reads `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| topic.starts_with(p.as_str()))
    }

    /// A hub component's consumer (the bridge, a pipeline): every topic, `block`.
    pub fn hub(name: &str, max_records: u64, max_bytes: u64) -> Spec {
        Spec {
            name: name.into(),
            prefixes: Vec::new(),
            policy: Policy::Block,
            max_records,
            max_bytes,
            owner: None,
            origin: Origin::Hub,
            inactive_after_ms: None,
            remove_when_inactive: false,
        }
    }
}

/// A consumer and where it is.
pub struct Consumer {
    pub spec: Spec,
    /// The last key it is done with.
    pub cursor: u64,
    /// Bytes appended up to and including `cursor` (the journal's cumulative offset).
    pub cursor_cum: u64,
    /// Samples its cursor skipped at its bounds (`drop-oldest`), since the hub started.
    pub skipped: u64,
    /// Samples fetched by it, since the hub started.
    pub delivered: u64,
    pub last_active: Instant,
    /// Reported as inactive (once, until it is active again).
    pub inactive: bool,
}

impl Consumer {
    pub fn new(spec: Spec, cursor: u64, cursor_cum: u64, now: Instant) -> Consumer {
        Consumer { spec, cursor, cursor_cum, skipped: 0, delivered: 0, last_active: now, inactive: false }
    }

    /// Its backlog: (records, bytes) after its cursor, with the journal at
    /// `newest` key and `cum` bytes.
    pub fn backlog(&self, newest: u64, cum: u64) -> (u64, u64) {
        (newest.saturating_sub(self.cursor), cum.saturating_sub(self.cursor_cum))
    }

    /// Whether `records` more of `bytes` stay within its bounds. A consumer
    /// that has read everything takes any one batch, however large: a batch
    /// bigger than the bounds would otherwise be refused for ever.
    pub fn fits(&self, newest: u64, cum: u64, records: u64, bytes: u64) -> bool {
        let (held, held_bytes) = self.backlog(newest, cum);
        held == 0 || (held + records <= self.spec.max_records && held_bytes + bytes <= self.spec.max_bytes)
    }

    /// Whether it has been idle past its `inactive_after_ms` at `now`.
    pub fn idle_past(&self, now: Instant) -> bool {
        self.spec
            .inactive_after_ms
            .is_some_and(|ms| now.saturating_duration_since(self.last_active) >= Duration::from_millis(ms))
    }

    /// What `hub consumers list` and `show` print.
    pub fn to_json(&self, newest: u64, cum: u64, now: Instant) -> serde_json::Value {
        let (records, bytes) = self.backlog(newest, cum);
        serde_json::json!({
            "name": self.spec.name,
            "prefixes": self.spec.prefixes,
            "policy": self.spec.policy.name(),
            "origin": self.spec.origin.name(),
            "owner": self.spec.owner,
            "cursor": self.cursor,
            "backlog": {"records": records, "bytes": bytes},
            "bounds": {"records": self.spec.max_records, "bytes": self.spec.max_bytes},
            "at_bounds": !self.fits(newest, cum, 1, 0),
            "skipped": self.skipped,
            "delivered": self.delivered,
            "idle_s": now.saturating_duration_since(self.last_active).as_secs_f64(),
            "inactive": self.inactive,
            "inactive_after_s": self.spec.inactive_after_ms.map(|ms| ms as f64 / 1000.0),
            "remove_when_inactive": self.spec.remove_when_inactive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(max_records: u64, max_bytes: u64) -> Consumer {
        let spec = Spec { policy: Policy::DropOldest, ..Spec::hub("c", max_records, max_bytes) };
        Consumer::new(spec, 10, 1000, Instant::now())
    }

    #[test]
    fn backlog_and_bounds() {
        let c = consumer(5, 500);
        assert_eq!(c.backlog(13, 1300), (3, 300));
        assert!(c.fits(13, 1300, 2, 200));
        assert!(!c.fits(13, 1300, 3, 0), "records");
        assert!(!c.fits(13, 1300, 1, 201), "bytes");
        assert!(c.fits(10, 1000, 99, 99_999), "a consumer with nothing waiting takes any one batch");
    }

    #[test]
    fn covers_its_prefixes_or_everything() {
        let mut spec = Spec::hub("c", 1, 1);
        assert!(spec.covers("org.plantd.Metric.pump-1.t"));
        spec.prefixes = vec!["org.plantd.Metric.pump-2.".into()];
        assert!(!spec.covers("org.plantd.Metric.pump-1.t") && spec.covers("org.plantd.Metric.pump-2.t"));
    }

    #[test]
    fn idle_past_its_inactivity_bound() {
        let mut c = consumer(1, 1);
        let now = c.last_active;
        assert!(!c.idle_past(now + Duration::from_secs(3600)), "no bound: never");
        c.spec.inactive_after_ms = Some(1000);
        assert!(!c.idle_past(now + Duration::from_millis(999)));
        assert!(c.idle_past(now + Duration::from_millis(1000)));
    }
}
