//! The edge node as a state machine, without I/O: events in (a session
//! began, a sample, a command, a host's STATE, time), messages out. The
//! MQTT shell (`client`) publishes what it returns, in order.
//!
//! The hub is the edge node; each agent a device; each channel a metric.
//! Rules kept here, from Sparkplug B 3.0:
//! - NBIRTH first in every session, `seq` 0, with `bdSeq` (the same value
//!   as the session's will, the NDEATH) and `Node Control/Rebirth`.
//! - `seq` counts every NBIRTH, DBIRTH, DDATA and DDEATH of the session,
//!   0-255 and round again; NDEATH carries none.
//! - A device's DDATA never before its DBIRTH; a channel not in its birth
//!   (or a value of another type) makes a new DBIRTH first.
//! - With aliases, a BIRTH names each metric and gives its alias; DATA
//!   then carries the alias alone. `Node Control/Rebirth` has no alias.

use std::collections::BTreeMap;

use serde_json::Value;

use super::payload::{datatype, Metric, MetricValue, Payload, PropertySet};

/// Something to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

pub const REBIRTH: &str = "Node Control/Rebirth";
pub const BD_SEQ: &str = "bdSeq";

/// One durable sample, as the journal holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub agent: String,
    pub channel: String,
    pub value: Value,
    pub unit: String,
    /// When it was taken, ms since the epoch.
    pub at_ms: u64,
    pub historical: bool,
}

impl Sample {
    /// From a journal entry's payload (the bus JSON); `None` for what is not a sample.
    pub fn from_json(agent: &str, json: &Value, historical: bool) -> Option<Sample> {
        Some(Sample {
            agent: agent.to_string(),
            channel: json["channel"].as_str()?.to_string(),
            value: json["value"].clone(),
            unit: json["unit"].as_str().unwrap_or_default().to_string(),
            at_ms: (json["wall_ns"].as_i64()?.max(0) / 1_000_000) as u64,
            historical: historical || json["historical"] == true,
        })
    }
}

/// A channel as the node knows it, kept across restarts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Known {
    pub agent: String,
    pub channel: String,
    pub alias: u64,
    pub datatype: u32,
    pub unit: String,
}

/// A channel as its device was born with it.
#[derive(Clone, Debug, PartialEq)]
struct Channel {
    alias: u64,
    datatype: u32,
    unit: String,
    /// The last value sent, for the next birth.
    last: Option<MetricValue>,
    last_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct Device {
    channels: BTreeMap<String, Channel>,
    /// Born in this session (a DBIRTH went out since the NBIRTH).
    born: bool,
}

/// Settings from `[sparkplug]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub group_id: String,
    pub edge_node_id: String,
    pub aliases: bool,
    pub data_qos: u8,
}

pub struct Node {
    settings: Settings,
    bd_seq: u64,
    /// The next `seq`; `None` before the session's NBIRTH.
    seq: Option<u8>,
    devices: BTreeMap<String, Device>,
    next_alias: u64,
    /// The devices or their channels changed since [`Node::take_registry`] last said.
    registry_changed: bool,
    /// The node's own metrics for its NBIRTH (name, value), e.g. the hub's health.
    pub health: Vec<(String, MetricValue, u32)>,
}

/// A sample's value as a Sparkplug type and value.
fn typed(value: &Value) -> Option<(u32, MetricValue)> {
    match value {
        Value::Bool(b) => Some((datatype::Boolean, MetricValue::Boolean(*b))),
        Value::Number(n) if n.is_i64() => Some((datatype::Int64, MetricValue::Long(n.as_i64()? as u64))),
        Value::Number(n) if n.is_u64() => Some((datatype::UInt64, MetricValue::Long(n.as_u64()?))),
        Value::Number(n) => Some((datatype::Double, MetricValue::Double(n.as_f64()?))),
        Value::String(s) => Some((datatype::String, MetricValue::String(s.clone()))),
        _ => None,
    }
}

impl Node {
    /// A node whose sessions use `bd_seq` (the caller stores it, one more per connect).
    pub fn new(settings: Settings, bd_seq: u64) -> Node {
        Node {
            settings,
            bd_seq,
            seq: None,
            devices: BTreeMap::new(),
            next_alias: 1,
            registry_changed: false,
            health: Vec::new(),
        }
    }

    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// The next session's bdSeq (after a reconnect); the caller stores it first.
    pub fn set_bd_seq(&mut self, bd_seq: u64) {
        self.bd_seq = bd_seq;
    }

    /// The `seq` the next message will carry (status).
    pub fn seq(&self) -> Option<u8> {
        self.seq
    }

    pub fn devices_born(&self) -> usize {
        self.devices.values().filter(|d| d.born).count()
    }

    fn topic(&self, kind: &str, device: Option<&str>) -> String {
        let s = &self.settings;
        match device {
            Some(d) => format!("spBv1.0/{}/{kind}/{}/{d}", s.group_id, s.edge_node_id),
            None => format!("spBv1.0/{}/{kind}/{}", s.group_id, s.edge_node_id),
        }
    }

    /// Every device's channels (their aliases, types and units), when they
    /// changed since the last call: what the shell stores, so that after a
    /// restart the first DBIRTH names every channel with the same aliases.
    pub fn take_registry(&mut self) -> Option<Vec<Known>> {
        if !std::mem::take(&mut self.registry_changed) {
            return None;
        }
        let each = self.devices.iter().flat_map(|(agent, d)| {
            d.channels.iter().map(|(name, c)| Known {
                agent: agent.clone(),
                channel: name.clone(),
                alias: c.alias,
                datatype: c.datatype,
                unit: c.unit.clone(),
            })
        });
        Some(each.collect())
    }

    /// Devices and channels known from an earlier run: born with null values until they read.
    pub fn restore(&mut self, known: Vec<Known>) {
        for k in known {
            self.next_alias = self.next_alias.max(k.alias + 1);
            let channel =
                Channel { alias: k.alias, datatype: k.datatype, unit: k.unit, last: None, last_ms: 0 };
            self.devices.entry(k.agent).or_default().channels.insert(k.channel, channel);
        }
    }

    /// The NDEATH to leave as the session's will.
    pub fn will(&self, now_ms: u64) -> Publish {
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics: vec![Metric::named(BD_SEQ, datatype::Int64, Some(MetricValue::Long(self.bd_seq)))],
            ..Payload::default()
        };
        Publish { topic: self.topic("NDEATH", None), payload: payload.encode_vec(), qos: 1, retain: false }
    }

    /// Subscriptions the node needs in every session (commands to it and its devices).
    pub fn command_topics(&self) -> [String; 2] {
        let s = &self.settings;
        [
            format!("spBv1.0/{}/NCMD/{}", s.group_id, s.edge_node_id),
            format!("spBv1.0/{}/DCMD/{}/+", s.group_id, s.edge_node_id),
        ]
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq.unwrap_or(0);
        self.seq = Some(seq.wrapping_add(1));
        u64::from(seq)
    }

    fn message(
        &mut self,
        kind: &str,
        device: Option<&str>,
        metrics: Vec<Metric>,
        now_ms: u64,
        qos: u8,
    ) -> Publish {
        let payload =
            Payload { timestamp: Some(now_ms), metrics, seq: Some(self.next_seq()), ..Payload::default() };
        Publish { topic: self.topic(kind, device), payload: payload.encode_vec(), qos, retain: false }
    }

    /// A session began (connected, and the primary host is online): NBIRTH,
    /// then a DBIRTH for every device known. Also what a rebirth sends.
    pub fn birth(&mut self, now_ms: u64) -> Vec<Publish> {
        self.seq = Some(0);
        let mut metrics = vec![
            Metric::named(BD_SEQ, datatype::Int64, Some(MetricValue::Long(self.bd_seq))),
            Metric::named(REBIRTH, datatype::Boolean, Some(MetricValue::Boolean(false))),
        ];
        for (name, value, kind) in &self.health {
            metrics.push(Metric::named(name, *kind, Some(value.clone())));
        }
        let mut out = vec![self.message("NBIRTH", None, metrics, now_ms, 0)];
        let agents: Vec<String> = self.devices.keys().cloned().collect();
        for agent in agents {
            out.push(self.device_birth(&agent, now_ms));
        }
        out
    }

    /// The session ended: nothing is born any more.
    pub fn ended(&mut self) {
        self.seq = None;
        self.devices.values_mut().for_each(|d| d.born = false);
    }

    pub fn in_session(&self) -> bool {
        self.seq.is_some()
    }

    fn device_birth(&mut self, agent: &str, now_ms: u64) -> Publish {
        let device = self.devices.get_mut(agent).expect("known device");
        device.born = true;
        let metrics = device
            .channels
            .iter()
            .map(|(name, c)| {
                let mut m = Metric::named(name, c.datatype, c.last.clone());
                m.alias = self.settings.aliases.then_some(c.alias);
                m.timestamp = (c.last_ms > 0).then_some(c.last_ms);
                if !c.unit.is_empty() {
                    m.properties = Some(PropertySet::strings(&[("engUnit", &c.unit)]));
                }
                m
            })
            .collect();
        self.message("DBIRTH", Some(agent), metrics, now_ms, 0)
    }

    /// A durable sample: its DDATA, after a DBIRTH when the device or the
    /// channel (or its type) is new. Nothing before the session's NBIRTH,
    /// and nothing for a value Sparkplug has no type for (`None`).
    pub fn sample(&mut self, s: &Sample, now_ms: u64) -> Option<Vec<Publish>> {
        let (kind, value) = typed(&s.value)?;
        let mut out = Vec::new();
        let next_alias = &mut self.next_alias;
        let device = self.devices.entry(s.agent.clone()).or_default();
        let changed = match device.channels.get_mut(&s.channel) {
            Some(c) if c.datatype == kind && c.unit == s.unit => {
                c.last = Some(value.clone());
                c.last_ms = s.at_ms;
                false
            }
            existing => {
                let alias = existing.as_ref().map(|c| c.alias).unwrap_or_else(|| {
                    *next_alias += 1;
                    *next_alias - 1
                });
                let channel = Channel {
                    alias,
                    datatype: kind,
                    unit: s.unit.clone(),
                    last: Some(value.clone()),
                    last_ms: s.at_ms,
                };
                device.channels.insert(s.channel.clone(), channel);
                self.registry_changed = true;
                true
            }
        };
        let (born, alias) = (device.born, device.channels[&s.channel].alias);
        if !self.in_session() {
            return Some(out);
        }
        if changed || !born {
            // The birth carries this value too, but at QoS 0: its DDATA is what
            // the broker acknowledges (a host stores the same time and value once).
            out.push(self.device_birth(&s.agent, now_ms));
        }
        let mut m = Metric::named(&s.channel, kind, Some(value));
        if self.settings.aliases {
            m.name = None;
            m.alias = Some(alias);
        }
        // DATA names its type in the birth only.
        m.datatype = None;
        m.timestamp = Some(s.at_ms);
        m.is_historical = s.historical.then_some(true);
        let qos = self.settings.data_qos;
        out.push(self.message("DDATA", Some(&s.agent), vec![m], now_ms, qos));
        Some(out)
    }

    /// A device gone (its agent silent too long): DDEATH, and it is born
    /// again with its next sample.
    pub fn device_gone(&mut self, agent: &str, now_ms: u64) -> Option<Publish> {
        let device = self.devices.get_mut(agent).filter(|d| d.born)?;
        device.born = false;
        if !self.in_session() {
            return None;
        }
        Some(self.message("DDEATH", Some(agent), Vec::new(), now_ms, 0))
    }

    /// Devices born now.
    pub fn born(&self) -> Vec<String> {
        self.devices.iter().filter(|(_, d)| d.born).map(|(a, _)| a.clone()).collect()
    }

    /// Whether an NCMD asks for a rebirth.
    pub fn is_rebirth(payload: &Payload) -> bool {
        payload.metrics.iter().any(|m| {
            m.name.as_deref() == Some(REBIRTH) && matches!(m.value, Some(MetricValue::Boolean(true)))
        })
    }

    /// A DCMD's writes: (channel, value as text) for each metric, named or by alias.
    pub fn writes(&self, agent: &str, payload: &Payload) -> Vec<(String, Option<String>)> {
        let device = self.devices.get(agent);
        payload
            .metrics
            .iter()
            .map(|m| {
                let name = m.name.clone().or_else(|| {
                    let alias = m.alias?;
                    device?.channels.iter().find(|(_, c)| c.alias == alias).map(|(n, _)| n.clone())
                });
                // The command's type, else the birth's: signed types are two's complement on the wire.
                let kind = m.datatype.or_else(|| Some(device?.channels.get(name.as_deref()?)?.datatype));
                let signed = matches!(kind, Some(datatype::Int8 | datatype::Int16 | datatype::Int32));
                let value = match &m.value {
                    Some(MetricValue::Boolean(b)) => Some(b.to_string()),
                    Some(MetricValue::Int(i)) if signed => Some((*i as i32).to_string()),
                    Some(MetricValue::Int(i)) => Some(i.to_string()),
                    Some(MetricValue::Long(l))
                        if matches!(kind, Some(datatype::Int64 | datatype::DateTime)) =>
                    {
                        Some((*l as i64).to_string())
                    }
                    Some(MetricValue::Long(l)) => Some(l.to_string()),
                    Some(MetricValue::Float(f)) => Some(f.to_string()),
                    Some(MetricValue::Double(d)) => Some(d.to_string()),
                    Some(MetricValue::String(s)) => Some(s.clone()),
                    _ => None,
                };
                (name.unwrap_or_default(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(aliases: bool) -> Node {
        let settings =
            Settings { group_id: "plant-a".into(), edge_node_id: "hub-1".into(), aliases, data_qos: 1 };
        Node::new(settings, 7)
    }

    fn sample(agent: &str, channel: &str, value: Value) -> Sample {
        Sample {
            agent: agent.into(),
            channel: channel.into(),
            value,
            unit: "degC".into(),
            at_ms: 5,
            historical: false,
        }
    }

    fn decode(p: &Publish) -> Payload {
        Payload::decode_slice(&p.payload).unwrap()
    }

    #[test]
    fn births_come_first_and_seq_counts_every_message() {
        let mut n = node(true);
        assert_eq!(n.sample(&sample("p1", "t", Value::from(1.5)), 0), Some(vec![]), "no session: nothing");
        let out = n.birth(10);
        assert_eq!(
            out.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(),
            ["spBv1.0/plant-a/NBIRTH/hub-1", "spBv1.0/plant-a/DBIRTH/hub-1/p1"]
        );
        let nbirth = decode(&out[0]);
        assert_eq!(nbirth.seq, Some(0));
        assert_eq!(nbirth.metrics[0].value, Some(MetricValue::Long(7)));
        assert_eq!((nbirth.metrics[1].name.as_deref(), nbirth.metrics[1].alias), (Some(REBIRTH), None));
        let dbirth = decode(&out[1]);
        assert_eq!((dbirth.seq, dbirth.metrics[0].alias), (Some(1), Some(1)));
        let data = n.sample(&sample("p1", "t", Value::from(2.5)), 11).unwrap();
        let ddata = decode(&data[0]);
        assert_eq!(
            (ddata.seq, ddata.metrics[0].name.clone(), ddata.metrics[0].alias),
            (Some(2), None, Some(1))
        );
        // A new channel: DBIRTH again before its data.
        let data = n.sample(&sample("p1", "flow", Value::from(3)), 12).unwrap();
        assert_eq!(data[0].topic, "spBv1.0/plant-a/DBIRTH/hub-1/p1");
        assert_eq!(decode(&data[0]).metrics.len(), 2);
        assert_eq!(
            data[1].topic, "spBv1.0/plant-a/DDATA/hub-1/p1",
            "and the sample's DDATA, to be acknowledged"
        );
        for _ in 0..300 {
            n.sample(&sample("p1", "t", Value::from(2.5)), 13).unwrap();
        }
        assert_eq!(n.seq(), Some(((5 + 300) % 256) as u8), "wraps at 256");
    }

    #[test]
    fn a_restored_registry_births_every_channel_with_its_alias() {
        let mut n = node(true);
        n.birth(0);
        n.sample(&sample("p1", "t", Value::from(1.5)), 1).unwrap();
        n.sample(&sample("p1", "v", Value::from(true)), 2).unwrap();
        let known = n.take_registry().expect("changed");
        assert!(n.take_registry().is_none(), "said once");
        let mut after = node(true);
        after.restore(known);
        let out = after.birth(3);
        let dbirth = decode(&out[1]);
        assert_eq!(dbirth.metrics.len(), 2, "both channels, before any sample");
        assert_eq!((dbirth.metrics[0].alias, dbirth.metrics[0].is_null), (Some(1), Some(true)));
        let next = after.sample(&sample("p1", "w", Value::from(3)), 4).unwrap();
        assert_eq!(decode(&next[0]).metrics[2].alias, Some(3), "new aliases after the restored ones");
    }

    #[test]
    fn the_will_carries_the_bd_seq_and_no_seq() {
        let n = node(false);
        let will = decode(&n.will(1));
        assert_eq!((will.seq, will.metrics[0].name.as_deref()), (None, Some(BD_SEQ)));
        assert_eq!(will.metrics[0].value, Some(MetricValue::Long(7)));
    }

    #[test]
    fn a_rebirth_starts_seq_again_and_keeps_the_bd_seq() {
        let mut n = node(false);
        n.birth(0);
        n.sample(&sample("p1", "t", Value::from(true)), 1).unwrap();
        n.sample(&sample("p1", "t", Value::from(false)), 2).unwrap();
        let again = n.birth(3);
        assert_eq!(decode(&again[0]).seq, Some(0));
        assert_eq!(decode(&again[0]).metrics[0].value, Some(MetricValue::Long(7)));
        assert_eq!(decode(&again[1]).metrics[0].value, Some(MetricValue::Boolean(false)), "the last value");
        assert_eq!(n.device_gone("p1", 4).map(|p| p.topic), Some("spBv1.0/plant-a/DDEATH/hub-1/p1".into()));
        assert_eq!(
            n.sample(&sample("p1", "t", Value::from(true)), 5).unwrap()[0].topic,
            "spBv1.0/plant-a/DBIRTH/hub-1/p1"
        );
    }

    #[test]
    fn historical_samples_say_so_and_commands_are_read() {
        let mut n = node(true);
        n.birth(0);
        n.sample(&sample("p1", "valve", Value::from(false)), 1).unwrap();
        let mut late = sample("p1", "valve", Value::from(true));
        late.historical = true;
        let out = n.sample(&late, 2).unwrap();
        assert_eq!(decode(&out[0]).metrics[0].is_historical, Some(true));
        let mut by_alias = Metric::named("x", datatype::Boolean, Some(MetricValue::Boolean(true)));
        by_alias.name = None;
        by_alias.alias = Some(1);
        let cmd = Payload { metrics: vec![by_alias], ..Payload::default() };
        assert_eq!(n.writes("p1", &cmd), [("valve".to_string(), Some("true".to_string()))]);
        let negative = Metric::named("setpoint", datatype::Int32, Some(MetricValue::Int(-5i32 as u32)));
        let cmd = Payload { metrics: vec![negative], ..Payload::default() };
        assert_eq!(n.writes("p1", &cmd), [("setpoint".to_string(), Some("-5".to_string()))]);
        let rebirth = Payload {
            metrics: vec![Metric::named(REBIRTH, datatype::Boolean, Some(MetricValue::Boolean(true)))],
            ..Payload::default()
        };
        assert!(Node::is_rebirth(&rebirth));
    }
}
