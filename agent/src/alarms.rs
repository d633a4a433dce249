//! The agent's limit alarms. Each channel with an `alarm` table has an
//! [`edge::Alarm`] that decides from its readings; what it decides (a raise,
//! a clear, an operator's acknowledgement) becomes an [`AlarmEvent`] in the
//! events outbox, which the uplink sends to the hub ahead of the samples.
//!
//! The events outbox is apart from the samples' so that a full sample
//! outbox drops telemetry, never an alarm, and so events overtake a
//! telemetry backlog. Its events count under an epoch of their own (drawn
//! at start like the samples'), so the hub deduplicates them apart.
//!
//! Alarm states live in memory: after a restart a channel still beyond its
//! limit raises again (a new event), and one that came back meanwhile does
//! not clear (its raise is acknowledged or cleared at the hub's side).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boards::ChannelConfig;
use edge::alarm::Alarm;
use proto::alarm::{Active, AlarmEvent, Change, Level};
use proto::sample::Sample;
use serde_json::{json, Value as Json};

use crate::clock;
use crate::outbox::{Outbox, OutboxOptions};

/// Events the events outbox holds by default: an alarm's raise, clear and
/// acknowledgement are three, so this is a few thousand alarms.
pub const DEFAULT_MAX_EVENTS: u64 = 10_000;

/// The alarm events' outbox: bounded by `outbox.max_events`, and written
/// into the disk's reserve (that is telemetry's limit: events are few and
/// bounded, and the reserve is what keeps room for them).
pub fn outbox_options(max_events: Option<u64>) -> OutboxOptions {
    let max_records = max_events.unwrap_or(DEFAULT_MAX_EVENTS);
    OutboxOptions {
        max_records,
        // An event's record is about 100 bytes.
        max_bytes: max_records.saturating_mul(512),
        segment_bytes: 256 << 10,
        min_free_bytes: Some(0),
    }
}

struct Channel {
    alarm: Alarm,
    /// What the alarm was made from: a new config with the same keeps its state.
    config: edge::AlarmConfig,
    unit: String,
    /// When the alarm in force was raised (wall clock, ns).
    since_wall_ns: i64,
}

pub struct Alarms {
    channels: Mutex<BTreeMap<String, Channel>>,
    pub outbox: Arc<Outbox<AlarmEvent>>,
    epoch: u64,
    seq: AtomicU64,
    /// Events that could not be appended (a failed write, counted by the outbox too).
    lost: AtomicU64,
}

/// Why an acknowledgement was not made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("channel '{0}' has no alarm (channels with one: {1:?})")]
    NoAlarm(String, Vec<String>),
    #[error("the event could not be stored: {0}")]
    Store(String),
}

impl Alarms {
    /// The alarms of `channels` (those with an `alarm` table), sending
    /// through `outbox` under `epoch`.
    pub fn new<'a>(
        channels: impl IntoIterator<Item = &'a ChannelConfig>,
        outbox: Arc<Outbox<AlarmEvent>>,
        epoch: u64,
    ) -> Alarms {
        let channels = channels.into_iter().filter_map(Self::channel).collect();
        Alarms {
            channels: Mutex::new(channels),
            outbox,
            epoch,
            seq: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    fn channel(c: &ChannelConfig) -> Option<(String, Channel)> {
        let config = c.alarm.clone()?;
        let channel = Channel {
            alarm: Alarm::new(config.clone()),
            config,
            unit: c.unit().to_string(),
            since_wall_ns: 0,
        };
        Some((c.name.clone(), channel))
    }

    /// The alarms of a new set of channels (a fleet configuration): a
    /// channel whose alarm and unit are unchanged keeps its state (an alarm
    /// in force stays in force); a changed one starts normal.
    pub fn reconfigure<'a>(&self, channels: impl IntoIterator<Item = &'a ChannelConfig>) {
        let mut held = self.lock();
        let mut old = std::mem::take(&mut *held);
        let new =
            channels.into_iter().filter_map(Self::channel).map(|(name, fresh)| match old.remove(&name) {
                Some(kept) if kept.config == fresh.config && kept.unit == fresh.unit => (name, kept),
                _ => (name, fresh),
            });
        *held = new.collect();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evaluates a reading of its channel; true when that stored an event.
    pub fn offer(&self, sample: &Sample) -> bool {
        let mut channels = self.lock();
        let Some(c) = channels.get_mut(&sample.channel) else { return false };
        let now = Duration::from_nanos(sample.mono_ns);
        let Some(event) = c.alarm.offer(&sample.value, sample.quality, now) else { return false };
        if event.kind == proto::alarm::Kind::Raise {
            c.since_wall_ns = sample.wall_ns;
        }
        let when = (sample.wall_ns, sample.mono_ns, sample.clock_synced);
        let event = self.stamp(&sample.channel, &c.unit, event, when);
        // Under the channels' lock: events are numbered in the order they are appended.
        self.store(event).is_ok()
    }

    /// An operator's acknowledgement of `channel`'s alarm: `Ok(None)` when
    /// there was nothing to acknowledge, else the event stored.
    pub fn acknowledge(&self, channel: &str, mono_ns: u64) -> Result<Option<AlarmEvent>, AckError> {
        let mut channels = self.lock();
        let Some(c) = channels.get_mut(channel) else {
            return Err(AckError::NoAlarm(channel.to_string(), channels.keys().cloned().collect()));
        };
        let before = c.alarm.clone();
        let Some(event) = c.alarm.acknowledge() else { return Ok(None) };
        let event = self.stamp(channel, &c.unit, event, (clock::wall_ns(), mono_ns, clock::synced()));
        let event = self.store(event).map_err(|e| {
            // Not acknowledged after all: the hub would never hear of it.
            c.alarm = before;
            AckError::Store(e.to_string())
        })?;
        log::info!("alarm of channel {channel} ({}) acknowledged", event.change.state.name());
        Ok(Some(event))
    }

    fn stamp(&self, channel: &str, unit: &str, change: Change, when: (i64, u64, bool)) -> AlarmEvent {
        let (wall_ns, mono_ns, clock_synced) = when;
        let (channel, unit) = (channel.to_string(), unit.to_string());
        AlarmEvent { channel, epoch: self.epoch, seq: 0, wall_ns, mono_ns, clock_synced, unit, change }
    }

    /// Appends an event, numbered next (the caller holds the channels'
    /// lock, so numbers rise in the order of the outbox). A failed append
    /// uses no number: the hub sees no gap for it.
    fn store(&self, event: AlarmEvent) -> std::io::Result<AlarmEvent> {
        let event = AlarmEvent { seq: self.seq.load(Relaxed) + 1, ..event };
        match self.outbox.append(&event) {
            Ok(()) => {
                self.seq.fetch_add(1, Relaxed);
                let (channel, state, from) =
                    (&event.channel, event.change.state.name(), event.change.from.name());
                log::warn!(
                    "alarm {}: channel {channel} {state} (from {from}) at {}",
                    event.change.kind.name(),
                    event.change.value
                );
                Ok(event)
            }
            Err(e) => {
                self.lost.fetch_add(1, Relaxed);
                log::error!("alarm event of channel {} lost: {e}", event.channel);
                Err(e)
            }
        }
    }

    /// The alarms in force now (not normal), for status and the hub.
    pub fn active(&self) -> Vec<Active> {
        self.lock()
            .iter()
            .filter(|(_, c)| c.alarm.state() != Level::Normal)
            .map(|(name, c)| Active {
                channel: name.clone(),
                state: c.alarm.state(),
                priority: c.alarm.priority(),
                acknowledged: c.alarm.acknowledged(),
                value: c.alarm.last(),
                since_wall_ns: c.since_wall_ns,
            })
            .collect()
    }

    /// For `status`: the active alarms and the events outbox.
    pub fn to_json(&self) -> Json {
        let o = self.outbox.stats();
        json!({
            "active": self.active().iter().map(Active::to_json).collect::<Vec<_>>(),
            "channels": self.lock().len(),
            "epoch": self.epoch,
            "events": self.seq.load(Relaxed),
            "outbox": {"records": o.records, "max_records": o.max_records, "dropped": o.dropped, "lost": self.lost.load(Relaxed)},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::alarm::Kind;
    use proto::sample::{Quality, Value};

    fn reading(value: f64, mono_ms: u64) -> Sample {
        Sample {
            channel: "tank".into(),
            epoch: 1,
            seq: 0,
            wall_ns: 1_000 + mono_ms as i64,
            mono_ns: mono_ms * 1_000_000,
            clock_synced: true,
            value: Value::Number(value),
            unit: "degC".into(),
            quality: Quality::Good,
        }
    }

    #[test]
    fn raises_and_acknowledgements_are_numbered_events_in_their_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path(), OutboxOptions::unbounded(), "pi").unwrap());
        let tank: ChannelConfig = toml::from_str(
            "name = \"tank\"\nunit = \"degC\"\ndriver = { kind = \"sine\" }\nalarm = { hi = 80.0 }",
        )
        .unwrap();
        let plain: ChannelConfig = toml::from_str("name = \"flow\"\ndriver = { kind = \"sine\" }").unwrap();
        let alarms = Alarms::new([&tank, &plain], outbox.clone(), 77);
        assert!(!alarms.offer(&reading(50.0, 0)));
        assert!(alarms.offer(&reading(85.0, 100)), "raised");
        assert!(!alarms.offer(&Sample { channel: "flow".into(), ..reading(99.0, 200) }), "no alarm on flow");
        assert_eq!(alarms.active().len(), 1);
        let ack = alarms.acknowledge("tank", 300).unwrap().unwrap();
        assert_eq!((ack.change.kind, ack.seq, ack.epoch), (Kind::Acknowledge, 2, 77));
        assert_eq!(alarms.acknowledge("tank", 400), Ok(None), "nothing left to acknowledge");
        assert!(matches!(alarms.acknowledge("flow", 500), Err(AckError::NoAlarm(..))));
        let events: Vec<AlarmEvent> =
            outbox.peek(10, 1 << 20).unwrap().records.into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            events.iter().map(|e| (e.change.kind, e.seq)).collect::<Vec<_>>(),
            [(Kind::Raise, 1), (Kind::Acknowledge, 2)]
        );
        assert_eq!(
            (events[0].wall_ns, events[0].change.value, events[0].unit.as_str()),
            (1_100, 85.0, "degC")
        );
        assert!(alarms.offer(&reading(70.0, 600)), "cleared");
        assert!(alarms.active().is_empty());
    }
}
