//! Alarm events: what an agent's limit alarms (the `edge` crate decides
//! them) send to the hub, and the JSON the hub publishes on the event bus
//! (`org.plantd.Event.alarm.<agent>.<channel>`).
//!
//! An event is keyed like a sample, by (agent, epoch, seq), but in a
//! sequence of its own: the agent's events outbox counts under an epoch of
//! its own, so the hub's watermarks deduplicate events and samples apart.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

/// Topic prefix of alarm events on the event bus: `org.plantd.Event.alarm.<agent>.<channel>`.
pub const TOPIC_PREFIX: &str = "org.plantd.Event.alarm.";

/// How urgent an alarm is, as the channel's config says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// Where a value stands against the limits, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    LoLo,
    Lo,
    Normal,
    Hi,
    HiHi,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::LoLo => "lolo",
            Level::Lo => "lo",
            Level::Normal => "normal",
            Level::Hi => "hi",
            Level::HiHi => "hihi",
        }
    }

    /// 0 for normal, 1 for hi and lo, 2 for hihi and lolo.
    pub fn severity(self) -> u8 {
        match self {
            Level::Normal => 0,
            Level::Hi | Level::Lo => 1,
            Level::HiHi | Level::LoLo => 2,
        }
    }
}

/// What happened to the alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Into a level, or up to a more severe one.
    Raise,
    /// Back to normal, or down a step (hihi to hi).
    Clear,
    /// An operator acknowledged it.
    Acknowledge,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Raise => "raise",
            Kind::Clear => "clear",
            Kind::Acknowledge => "acknowledge",
        }
    }
}

/// What an alarm decided (the `edge` crate's alarm returns it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    /// The level entered (for an acknowledgement: the level acknowledged).
    pub state: Level,
    pub from: Level,
    /// The reading that caused it (for an acknowledgement: the last one).
    pub value: f64,
    /// The limit of the level entered, or of the level left when clearing.
    pub limit: Option<f64>,
    pub acknowledged: bool,
    pub priority: Priority,
}

/// One alarm event of one channel, as it travels from the agent's events
/// outbox to the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub channel: String,
    /// The epoch of the agent's events outbox (not of its samples).
    pub epoch: u64,
    /// Per agent, per epoch, counting from 1.
    pub seq: u64,
    /// When it happened: wall-clock ns since the Unix epoch, monotonic ns since the agent started.
    pub wall_ns: i64,
    pub mono_ns: u64,
    pub clock_synced: bool,
    pub unit: String,
    pub change: Change,
}

impl AlarmEvent {
    pub fn topic(&self, agent: &str) -> String {
        format!("{TOPIC_PREFIX}{agent}.{}", self.channel)
    }

    /// The JSON published on the event bus.
    pub fn to_json(&self, agent: &str) -> Json {
        let number = |x: f64| serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number);
        let ts = jiff::Timestamp::from_nanosecond(self.wall_ns as i128).map(|t| t.to_string()).ok();
        let c = &self.change;
        json!({
            "agent": agent,
            "channel": self.channel,
            "event": c.kind.name(),
            "state": c.state.name(),
            "from": c.from.name(),
            "value": number(c.value),
            "limit": c.limit.map(number),
            "unit": self.unit,
            "acknowledged": c.acknowledged,
            "priority": c.priority.name(),
            "ts": ts,
            "wall_ns": self.wall_ns,
            "mono_ns": self.mono_ns,
            "clock_synced": self.clock_synced,
            "epoch": self.epoch,
            "seq": self.seq,
        })
    }
}

/// An alarm in force now, as the agent reports it (for `hub agents` and the web view).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub channel: String,
    pub state: Level,
    pub priority: Priority,
    pub acknowledged: bool,
    /// The reading that raised it, and when (wall-clock ns).
    pub value: f64,
    pub since_wall_ns: i64,
}

impl Active {
    pub fn to_json(&self) -> Json {
        json!({
            "channel": self.channel,
            "state": self.state.name(),
            "priority": self.priority.name(),
            "acknowledged": self.acknowledged,
            "value": serde_json::Number::from_f64(self.value).map_or(Json::Null, Json::Number),
            "since_wall_ns": self.since_wall_ns,
        })
    }
}

/// Events for tests, here and in the crates that store and send them.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    pub fn event(seq: u64, kind: Kind, state: Level) -> AlarmEvent {
        AlarmEvent {
            channel: "tank".into(),
            epoch: 11,
            seq,
            wall_ns: 1_790_000_000_000_000_000,
            mono_ns: 42,
            clock_synced: true,
            unit: "degC".into(),
            change: Change {
                kind,
                state,
                from: Level::Normal,
                value: 85.5,
                limit: Some(80.0),
                acknowledged: false,
                priority: Priority::High,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::event;
    use super::*;

    #[test]
    fn json_is_what_event_subscribers_read() {
        let e = event(3, Kind::Raise, Level::Hi);
        assert_eq!(e.topic("pi-1"), "org.plantd.Event.alarm.pi-1.tank");
        let j = e.to_json("pi-1");
        assert_eq!(
            (j["event"].as_str(), j["state"].as_str(), j["from"].as_str()),
            (Some("raise"), Some("hi"), Some("normal"))
        );
        assert_eq!((j["value"].as_f64(), j["limit"].as_f64()), (Some(85.5), Some(80.0)));
        assert_eq!((j["acknowledged"].as_bool(), j["priority"].as_str()), (Some(false), Some("high")));
        assert!(j["ts"].as_str().unwrap().starts_with("2026-"));
        let none = AlarmEvent { change: Change { limit: None, value: f64::NAN, ..e.change.clone() }, ..e };
        assert_eq!(
            (none.to_json("a")["limit"].clone(), none.to_json("a")["value"].clone()),
            (Json::Null, Json::Null)
        );
    }
}
