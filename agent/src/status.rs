//! What the running agent knows about itself, shared by its tasks and
//! reported by `status` (MDP service, local control socket).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use boards::Value;
use proto::breaker::State as BreakerState;
use proto::sample::Quality;
use serde_json::{json, Value as Json};

use crate::clock::{self, Clock};
use crate::outbox::Outbox;
use crate::store::Store;

#[derive(Clone, Debug, Default)]
pub struct ChannelStatus {
    pub last: Option<Value>,
    /// The quality of the last reading: `bad` while the instrument or its
    /// link fails (a Modbus exception or timeout, a 4-20 mA loop out of range).
    pub quality: Option<Quality>,
    pub fault: Option<String>,
    pub samples: u64,
    /// Readings sent on (all of them, unless the channel reports by
    /// exception or keeps only its aggregates).
    pub reported: u64,
    pub faults: u64,
}

/// What the agent knows of its link to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No call has been made yet.
    Unknown,
    /// The hub answered the last call.
    Up,
    /// The last call failed.
    Down,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LinkStatus {
    pub state: LinkState,
    pub breaker: BreakerState,
    pub breaker_opened: u64,
    pub last_ack_wall_ns: Option<i64>,
    pub last_error: Option<String>,
    pub batches_acked: u64,
    pub samples_acked: u64,
    pub events_acked: u64,
}

impl Default for LinkStatus {
    fn default() -> Self {
        LinkStatus {
            state: LinkState::Unknown,
            breaker: BreakerState::Closed,
            breaker_opened: 0,
            last_ack_wall_ns: None,
            last_error: None,
            batches_acked: 0,
            samples_acked: 0,
            events_acked: 0,
        }
    }
}

pub struct Shared {
    pub id: String,
    pub epoch: u64,
    pub clock: Clock,
    /// The config in force, as TOML with its secrets redacted (`config`).
    pub config_toml: Mutex<String>,
    pub store: Arc<Store>,
    pub outbox: Arc<Outbox>,
    /// The channels' limit alarms and their events outbox.
    pub alarms: crate::alarms::Alarms,
    pub link: Mutex<LinkStatus>,
    pub channels: Mutex<BTreeMap<String, ChannelStatus>>,
    pub live_published: AtomicU64,
    /// Best-effort samples the live queue could not take.
    pub live_dropped: AtomicU64,
    /// The local state's store (sled): the last flush error, if the last flush failed.
    pub local_store: Mutex<crate::outbox::Health>,
    /// The parts that are restarted when they fail, and how often they were.
    pub tasks: crate::supervise::Tasks,
    /// The Majordomo service's sessions with the hub (its current worker's).
    pub service: Mutex<Option<Arc<transport::WorkerStats>>>,
    /// The channels sampled now, their drivers and Modbus links (a fleet
    /// configuration replaces them while the agent runs).
    pub channel_set: Mutex<Arc<crate::service::Channels>>,
    /// The uplink's settings in force, and how many times they changed.
    pub uplink: Mutex<crate::config::UplinkConfig>,
    pub uplink_changes: AtomicU64,
    /// How this agent stands with the configuration the hub wants it to run.
    pub fleet: Mutex<crate::fleet::follow::FleetStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn link(&self) -> std::sync::MutexGuard<'_, LinkStatus> {
        lock(&self.link)
    }

    pub fn channels(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ChannelStatus>> {
        lock(&self.channels)
    }

    /// The channels sampled now.
    pub fn channel_set(&self) -> Arc<crate::service::Channels> {
        lock(&self.channel_set).clone()
    }

    /// The uplink's settings in force.
    pub fn uplink(&self) -> crate::config::UplinkConfig {
        lock(&self.uplink).clone()
    }

    pub fn fleet(&self) -> std::sync::MutexGuard<'_, crate::fleet::follow::FleetStatus> {
        lock(&self.fleet)
    }

    pub fn config_toml(&self) -> String {
        lock(&self.config_toml).clone()
    }

    /// Records the outcome of a flush of the local state's store.
    pub fn note_local_store(&self, error: Option<String>) {
        let mut h = lock(&self.local_store);
        match error {
            Some(e) => {
                if h.error.is_none() {
                    log::error!("local state flush failed: {e}");
                    h.since_wall_ns = Some(clock::wall_ns());
                }
                h.errors += 1;
                h.error = Some(e);
            }
            None => {
                if h.error.take().is_some() {
                    log::info!("local state flushes work again");
                }
                h.since_wall_ns = None;
            }
        }
    }

    /// Shows `stats` as the service's (a restarted service has a new worker).
    pub fn set_service(&self, stats: Arc<transport::WorkerStats>) {
        *lock(&self.service) = Some(stats);
    }

    /// The service's sessions: whether the hub keeps refusing it.
    pub fn service_json(&self) -> Json {
        let Some(stats) = lock(&self.service).clone() else { return Json::Null };
        json!({
            "sessions": stats.sessions.load(Relaxed),
            "requests": stats.requests.load(Relaxed),
            "refused": stats.refused.load(Relaxed),
            "refused_in_a_row": stats.refused_in_a_row.load(Relaxed),
        })
    }

    /// Whether both stores write: the outbox and the local state.
    pub fn store_ok(&self) -> bool {
        self.outbox.health().ok()
            && self.alarms.outbox.health().ok()
            && lock(&self.local_store).ok()
            && !self.store.is_broken()
    }

    /// The store's health: the outbox's and the local state's, the first error shown.
    pub fn store_json(&self) -> Json {
        let outbox = self.outbox.health();
        let local = lock(&self.local_store).clone();
        let failing = if outbox.ok() { &local } else { &outbox };
        let since = failing.since_wall_ns.and_then(|ns| jiff::Timestamp::from_nanosecond(ns.into()).ok());
        json!({
            "ok": self.store_ok(),
            "error": failing.error,
            "since": since.map(|t| t.to_string()),
            "errors": outbox.errors + local.errors,
            // The local state's own health (its failure is shown above only
            // while the outbox works).
            "local": {"ok": local.ok() && !self.store.is_broken(), "errors": local.errors},
            // Times the local store was opened again after failing to write.
            "reopens": self.store.reopens(),
        })
    }

    /// What the operator should know about the storage now, one sentence
    /// each, with what to do: said for as long as it holds, not once.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(warning) = self.outbox.space_warning() {
            out.push(warning);
        }
        if !self.store_ok() {
            let error = self.store_json()["error"].as_str().unwrap_or("a write failed").to_string();
            out.push(format!(
                "the store cannot write ({error}): new samples are lost and counted in store_errors until \
                 it can; free space on {} if the disk is full",
                self.outbox.dir().display()
            ));
        }
        let made_as = self.outbox.made_as();
        for (i, (first, id)) in made_as.iter().enumerate() {
            if **id != *self.id {
                let through =
                    made_as.get(i + 1).map_or("on".to_string(), |(next, _)| format!("to {}", next - 1));
                out.push(format!(
                    "outbox records {first} {through} were made as '{id}', before this agent's id became '{}': \
                     they are sent as '{id}'",
                    self.id
                ));
            }
        }
        if let Some(recovery) = &self.store.recovery {
            out.push(format!("the local store was damaged at this start: {}", recovery.describe()));
        }
        out
    }

    /// Each Modbus link's counters and the units it skips now.
    fn modbus_json(&self) -> Json {
        let links: serde_json::Map<String, Json> = self
            .channel_set()
            .links
            .iter()
            .map(|(name, link)| {
                let s = link.status();
                (
                    name.clone(),
                    json!({
                        "requests": s.requests,
                        "timeouts": s.timeouts,
                        "exceptions": s.exceptions,
                        "garbled": s.garbled,
                        "skipped": s.skipped,
                        "late_replies": s.late_replies,
                        "connects": s.connects,
                        "degraded_units": s.degraded_units,
                        "last_error": s.last_error,
                    }),
                )
            })
            .collect();
        Json::Object(links)
    }

    pub fn to_json(&self) -> Json {
        let now = clock::wall_ns();
        let outbox = self.outbox.stats();
        let oldest_age_s = self.outbox.oldest_wall_ns().map(|w| (now - w) as f64 / 1e9);
        let link = self.link().clone();
        let channels: serde_json::Map<String, Json> = self
            .channels()
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    json!({
                        "last": c.last.as_ref().map(Value::to_json),
                        "quality": c.quality.map(Quality::name),
                        "fault": c.fault,
                        "samples": c.samples,
                        "reported": c.reported,
                        "faults": c.faults,
                    }),
                )
            })
            .collect();
        json!({
            "id": self.id,
            "epoch": self.epoch,
            "uptime_s": self.clock.elapsed().as_secs_f64(),
            "link": {
                "state": link.state.name(),
                "breaker": link.breaker.name(),
                "breaker_opened": link.breaker_opened,
                "last_ack_age_s": link.last_ack_wall_ns.map(|w| (now - w) as f64 / 1e9),
                "last_error": link.last_error,
                "batches_acked": link.batches_acked,
                "samples_acked": link.samples_acked,
                "events_acked": link.events_acked,
            },
            "modbus": self.modbus_json(),
            "alarms": self.alarms.to_json(),
            "fleet": self.fleet().to_json(),
            "outbox": {
                "records": outbox.records,
                "bytes": outbox.bytes,
                "max_records": outbox.max_records,
                "max_bytes": outbox.max_bytes,
                "oldest_age_s": oldest_age_s,
                "dropped": outbox.dropped,
                "dropped_for_space": outbox.dropped_for_space,
                "quarantined": outbox.quarantined,
                "quarantined_bytes": outbox.quarantined_bytes,
                "last_appended": outbox.last_appended,
                "durable": outbox.durable,
                "segments": outbox.segments,
                "disk_bytes": outbox.disk_bytes,
                "free_bytes": outbox.free_bytes,
                "fs_bytes": outbox.fs_bytes,
                "min_free_bytes": outbox.min_free_bytes,
                "reserve": if outbox.reserve_sized { "sized from the file system" } else { "outbox.min_free_bytes" },
                "space_low": outbox.space_low,
                "made_as": self.outbox.made_as().iter().map(|(first, id)| json!({"from": first, "id": &**id})).collect::<Vec<_>>(),
            },
            "warnings": self.warnings(),
            "store": self.store_json(),
            "store_recovered_from": self.store.recovered_from,
            "store_recovery": self.store.recovery.as_ref().map(|r| r.describe()),
            "store_disk_bytes": self.store.disk_bytes(),
            // Samples lost to failed outbox writes (kept across restarts, as every loss counter is).
            "store_errors": outbox.store_errors,
            "live": {
                "published": self.live_published.load(Relaxed),
                "dropped": self.live_dropped.load(Relaxed),
            },
            "clock": {"synced": clock::synced(), "wall_ns": now},
            "service": self.service_json(),
            "tasks": self.tasks.to_json(),
            "channels": channels,
        })
    }

    /// The agent's metrics, from its live state (`plantd_agent_*`).
    pub fn collect(&self, out: &mut httpd::metrics::Families) {
        let o = self.outbox.stats();
        let gauges: [(&str, &'static str, u64); 10] = [
            ("outbox_records", "Durable samples waiting for the hub's acknowledgement.", o.records),
            ("outbox_bytes", "Bytes of them.", o.bytes),
            ("outbox_max_records", "Records the outbox holds at most.", o.max_records),
            ("outbox_max_bytes", "Bytes the outbox holds at most.", o.max_bytes),
            ("outbox_disk_bytes", "The outbox's files.", o.disk_bytes),
            ("outbox_free_bytes", "Free space where the outbox is (0: unknown).", o.free_bytes.unwrap_or(0)),
            ("outbox_min_free_bytes", "Free space the outbox leaves.", o.min_free_bytes),
            ("outbox_segments", "The outbox's segment files.", o.segments),
            ("store_ok", "1 while the stores write.", self.store_ok().into()),
            (
                "outbox_space_low",
                "1 while the disk is short of the reserve: new samples drop the oldest.",
                o.space_low.into(),
            ),
        ];
        for (name, help, value) in gauges {
            out.gauge(&format!("agent_{name}"), help, vec![], value);
        }
        let counters: [(&str, &'static str, u64); 6] = [
            ("outbox_dropped", "Samples dropped: the outbox was full.", o.dropped),
            (
                "outbox_dropped_for_space",
                "Samples dropped: the disk was short of space.",
                o.dropped_for_space,
            ),
            ("outbox_quarantined", "Stretches of damaged outbox records set aside.", o.quarantined),
            ("store_errors", "Samples lost to failed writes.", o.store_errors),
            (
                "store_reopens",
                "Times the local store was opened again after failing to write.",
                self.store.reopens(),
            ),
            (
                "live_dropped",
                "Best-effort samples the live queue could not take.",
                self.live_dropped.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            out.counter(&format!("agent_{name}"), help, vec![], value);
        }
        out.counter(
            "agent_live_published",
            "Best-effort samples published.",
            vec![],
            self.live_published.load(Relaxed),
        );
        let link = self.link().clone();
        out.gauge(
            "agent_link_up",
            "1 while the hub answered the last call.",
            vec![],
            (link.state == LinkState::Up).into(),
        );
        out.gauge(
            "agent_breaker_open",
            "1 while the circuit breaker is open.",
            vec![],
            (link.breaker != BreakerState::Closed).into(),
        );
        out.counter("agent_breaker_opened", "Times the circuit breaker opened.", vec![], link.breaker_opened);
        out.counter("agent_batches_acked", "Batches the hub acknowledged.", vec![], link.batches_acked);
        out.counter("agent_samples_acked", "Samples the hub acknowledged.", vec![], link.samples_acked);
        out.counter("agent_events_acked", "Alarm events the hub acknowledged.", vec![], link.events_acked);
        let events = self.alarms.outbox.stats();
        out.gauge("agent_alarm_events_records", "Alarm events waiting for the hub.", vec![], events.records);
        out.gauge(
            "agent_alarm_events_max_records",
            "Alarm events the events outbox holds at most.",
            vec![],
            events.max_records,
        );
        out.counter(
            "agent_alarm_events_dropped",
            "Alarm events dropped: the events outbox was full.",
            vec![],
            events.dropped,
        );
        let active = self.alarms.active();
        out.gauge("agent_alarms_active", "Alarms in force.", vec![], active.len() as u64);
        out.gauge(
            "agent_alarms_unacknowledged",
            "Alarms in force that no operator acknowledged.",
            vec![],
            active.iter().filter(|a| !a.acknowledged).count() as u64,
        );
        for (name, c) in self.channels().iter() {
            let labels = || vec![("channel", name.clone())];
            out.counter("agent_channel_samples", "Readings of a channel.", labels(), c.samples);
            out.counter("agent_channel_faults", "Failed readings of a channel.", labels(), c.faults);
            out.counter(
                "agent_channel_reported",
                "Readings of a channel sent on (report by exception and aggregation send fewer).",
                labels(),
                c.reported,
            );
            let bad = c.quality == Some(Quality::Bad);
            out.gauge("agent_channel_bad", "1 while a channel's last reading was bad.", labels(), bad.into());
        }
        for (name, link) in self.channel_set().links.iter() {
            let s = link.status();
            let labels = || vec![("link", name.clone())];
            out.counter("agent_modbus_requests", "Requests a Modbus link sent.", labels(), s.requests);
            out.counter("agent_modbus_timeouts", "Requests no unit answered in time.", labels(), s.timeouts);
            out.counter("agent_modbus_exceptions", "Modbus exception replies.", labels(), s.exceptions);
            out.counter("agent_modbus_garbled", "Replies with a bad CRC or length.", labels(), s.garbled);
            out.counter(
                "agent_modbus_skipped",
                "Reads not sent: their unit is skipped.",
                labels(),
                s.skipped,
            );
            out.counter(
                "agent_modbus_late_replies",
                "Replies to earlier, timed-out requests, discarded.",
                labels(),
                s.late_replies,
            );
            out.counter(
                "agent_modbus_connects",
                "Connections (TCP) or port opens (RTU).",
                labels(),
                s.connects,
            );
            out.gauge(
                "agent_modbus_degraded_units",
                "Units skipped after repeated timeouts.",
                labels(),
                s.degraded_units.len() as u64,
            );
        }
    }
}
