//! The agents ingest has heard from, in memory: when each was last seen,
//! what it sent, and its last [`Report`]. For `hub agents`, the web view and
//! the per-agent metrics; bounded by `max_agents` (the least recently seen
//! goes first), and rebuilt as agents report after a restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::ingest::Report;
use serde_json::{json, Value};

use crate::metrics::Families;

#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    wall_ns: i64,
    epoch: u64,
    accepted: u64,
    duplicates: u64,
    newest_sample_wall_ns: Option<i64>,
    report: Option<Report>,
    /// Channels its durable samples came from (bounded).
    channels: BTreeSet<String>,
}

/// Channels remembered per agent, at most.
const CHANNELS: usize = 256;

/// What one batch said about its agent.
#[derive(Clone, Debug, Default)]
pub struct Heard {
    pub epoch: Option<u64>,
    pub accepted: u32,
    pub duplicates: u32,
    pub newest_sample_wall_ns: Option<i64>,
    pub report: Option<Report>,
    pub channels: Vec<String>,
}

pub struct Agents {
    max: usize,
    /// An agent silent this long is shown as `silent`, not `up`.
    silent_after: Duration,
    seen: Mutex<HashMap<String, Seen>>,
    /// How each agent stands with its fleet configuration (when the hub has one).
    config_source: std::sync::OnceLock<ConfigSource>,
}

/// An agent's fleet configuration standing, by id.
pub type ConfigSource = std::sync::Arc<dyn Fn(&str) -> Value + Send + Sync>;

impl Agents {
    pub fn new(max: usize, silent_after: Duration) -> Agents {
        Agents { max: max.max(1), silent_after, seen: Mutex::default(), config_source: Default::default() }
    }

    /// Where `to_json` finds each agent's fleet configuration standing.
    pub fn set_config_source(&self, source: ConfigSource) {
        let _ = self.config_source.set(source);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, agent: &str, heard: Heard, now: Instant, wall_ns: i64) {
        let mut seen = self.seen();
        if !seen.contains_key(agent) && seen.len() >= self.max {
            let oldest = seen.iter().min_by_key(|(_, s)| s.at).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(agent.to_string()).or_insert(Seen {
            at: now,
            wall_ns,
            epoch: 0,
            accepted: 0,
            duplicates: 0,
            newest_sample_wall_ns: None,
            report: None,
            channels: BTreeSet::new(),
        });
        entry.at = now;
        entry.wall_ns = wall_ns;
        if let Some(epoch) = heard.epoch.or(heard.report.as_ref().map(|r| r.epoch)) {
            entry.epoch = epoch;
        }
        entry.accepted += u64::from(heard.accepted);
        entry.duplicates += u64::from(heard.duplicates);
        if heard.newest_sample_wall_ns > entry.newest_sample_wall_ns {
            entry.newest_sample_wall_ns = heard.newest_sample_wall_ns;
        }
        let reported = heard.report.iter().flat_map(|r| r.channels.clone());
        let channels: Vec<String> = heard.channels.into_iter().chain(reported).collect();
        if heard.report.is_some() {
            entry.report = heard.report;
        }
        for channel in channels {
            if entry.channels.len() < CHANNELS {
                entry.channels.insert(channel);
            }
        }
    }

    /// How long `agent` has been silent; `None` if ingest never heard from it.
    pub fn silent_for(&self, agent: &str) -> Option<Duration> {
        self.seen().get(agent).map(|s| s.at.elapsed())
    }

    pub fn len(&self) -> usize {
        self.seen().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every agent, by name: `{"agent", "link", "last_seen_s", ...}`.
    pub fn to_json(&self, now: Instant, wall_ns: i64) -> Value {
        let names: Vec<String> = self.seen().keys().cloned().collect();
        let configs: HashMap<String, Value> = match self.config_source.get() {
            Some(source) => names.iter().map(|n| (n.clone(), source(n))).collect(),
            None => HashMap::new(),
        };
        let seen = self.seen();
        let mut names: Vec<&String> = seen.keys().collect();
        names.sort();
        let rows = names.into_iter().map(|name| {
            let s = &seen[name];
            let since = now.saturating_duration_since(s.at);
            let r = s.report.as_ref();
            json!({
                "agent": name,
                "link": if since > self.silent_after { "silent" } else { "up" },
                "last_seen_s": since.as_secs_f64(),
                "last_seen_wall_ns": s.wall_ns,
                "epoch": s.epoch,
                "accepted": s.accepted,
                "duplicates": s.duplicates,
                "last_sample_age_s": s.newest_sample_wall_ns.map(|w| (wall_ns - w) as f64 / 1e9),
                "backlog": r.map(|r| r.backlog),
                "lag_s": r.map(|r| r.oldest_age_ms as f64 / 1e3),
                // Loss counters as the agent keeps them (across its restarts).
                "dropped": r.map(|r| r.dropped),
                "dropped_for_space": r.map(|r| r.dropped_for_space),
                "store_errors": r.map(|r| r.store_errors),
                "quarantined": r.map(|r| r.quarantined),
                "space_low": r.map(|r| r.space_low),
                "free_bytes": r.map(|r| r.free_bytes),
                "min_free_bytes": r.map(|r| r.min_free_bytes),
                "warnings": r.map(warnings).unwrap_or_default(),
                // Its alarms in force, as it last said.
                "alarms": r.map(|r| r.alarms.iter().map(proto::alarm::Active::to_json).collect::<Vec<_>>()).unwrap_or_default(),
                "store_ok": r.map(|r| r.store_ok),
                "uptime_s": r.map(|r| r.uptime_s),
                "version": r.map(|r| r.version.clone()),
                "channels": s.channels,
                // Its fleet configuration: desired and applied versions, state, drift.
                "config": configs.get(name.as_str()).cloned().unwrap_or(Value::Null),
            })
        });
        Value::Array(rows.collect())
    }

    pub fn collect(&self, now: Instant, out: &mut Families) {
        for (name, s) in self.seen().iter() {
            let labels = || vec![("agent", name.clone())];
            let since = now.saturating_duration_since(s.at).as_secs();
            out.counter("ingest_agent_accepted", "Samples accepted from an agent.", labels(), s.accepted);
            out.counter(
                "ingest_agent_duplicates",
                "Repeated samples dropped from an agent.",
                labels(),
                s.duplicates,
            );
            out.gauge(
                "ingest_agent_last_seen_seconds",
                "Seconds since an agent's last batch.",
                labels(),
                since,
            );
            if let Some(r) = &s.report {
                let lost = [
                    ("full", r.dropped.saturating_sub(r.dropped_for_space)),
                    ("space", r.dropped_for_space),
                    ("store_error", r.store_errors),
                ];
                for (reason, value) in lost {
                    out.gauge(
                        "ingest_agent_samples_lost",
                        "Samples an agent lost, by why, as it last said (kept across its restarts): its outbox \
                         full, its disk short of the reserve, failed writes.",
                        vec![("agent", name.clone()), ("reason", reason.to_string())],
                        value,
                    );
                }
                out.gauge(
                    "ingest_agent_quarantined",
                    "Damaged stretches of an agent's outbox set aside, as it last said.",
                    labels(),
                    r.quarantined,
                );
                out.gauge(
                    "ingest_agent_space_low",
                    "1 while an agent's disk is short of its reserve (each new sample drops the oldest), as it last said.",
                    labels(),
                    r.space_low.into(),
                );
                out.gauge(
                    "ingest_agent_store_ok",
                    "1 while an agent's stores write, as it last said.",
                    labels(),
                    r.store_ok.into(),
                );
                out.gauge(
                    "ingest_agent_alarms_active",
                    "Alarms in force at an agent, as it last said.",
                    labels(),
                    r.alarms.len() as u64,
                );
                out.gauge(
                    "ingest_agent_backlog",
                    "Samples in an agent's outbox, as it last said.",
                    labels(),
                    r.backlog,
                );
                out.gauge(
                    "ingest_agent_lag_seconds",
                    "Age of the oldest sample in an agent's outbox, as it last said.",
                    labels(),
                    r.oldest_age_ms / 1000,
                );
            }
        }
    }
}

/// What an agent's last report says the operator should act on.
fn warnings(r: &Report) -> Vec<String> {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let mut out = Vec::new();
    if r.space_low {
        out.push(format!(
            "its disk has {} free, under its reserve of {}: each new sample drops the oldest ({} so far); free \
             space there, or lower its outbox.min_free_bytes",
            mib(r.free_bytes),
            mib(r.min_free_bytes),
            r.dropped_for_space
        ));
    }
    if !r.store_ok {
        out.push(format!(
            "its store cannot write (a full disk?): new samples are lost ({} so far); see `agent status` there",
            r.store_errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_listed_with_their_last_report_and_bounded() {
        let agents = Agents::new(2, Duration::from_secs(30));
        let t0 = Instant::now();
        let report =
            Report { epoch: 7, backlog: 120, oldest_age_ms: 4500, store_ok: true, ..Report::default() };
        agents.record("pump-1", Heard { report: Some(report), ..Heard::default() }, t0, 1_000);
        let batch = Heard {
            epoch: Some(7),
            accepted: 10,
            duplicates: 2,
            newest_sample_wall_ns: Some(900),
            channels: vec!["temp".into()],
            ..Heard::default()
        };
        agents.record("pump-1", batch, t0, 1_000);
        let rows = agents.to_json(t0 + Duration::from_secs(31), 2_000);
        assert_eq!(rows[0]["link"], "silent");
        assert_eq!((rows[0]["accepted"].as_u64(), rows[0]["backlog"].as_u64()), (Some(10), Some(120)));
        assert_eq!(rows[0]["lag_s"], 4.5);
        agents.record("pump-2", Heard::default(), t0 + Duration::from_secs(1), 0);
        agents.record("pump-3", Heard::default(), t0 + Duration::from_secs(2), 0);
        assert_eq!(agents.len(), 2, "bounded: the least recently seen went");
        let rows = agents.to_json(t0 + Duration::from_secs(3), 0);
        assert_eq!((rows[0]["agent"].as_str(), rows[1]["agent"].as_str()), (Some("pump-2"), Some("pump-3")));
        let mut out = Families::default();
        agents.collect(t0 + Duration::from_secs(3), &mut out);
        assert!(out.0.iter().any(|f| f.name == "plantd_ingest_agent_last_seen_seconds"));
    }

    #[test]
    fn an_agents_losses_and_a_short_disk_are_shown_and_counted() {
        let agents = Agents::new(10, Duration::from_secs(30));
        let t0 = Instant::now();
        let report = Report {
            dropped: 7,
            dropped_for_space: 5,
            store_errors: 3,
            quarantined: 1,
            space_low: true,
            free_bytes: 512 << 10,
            min_free_bytes: 1 << 20,
            store_ok: true,
            ..Report::default()
        };
        agents.record("pump-1", Heard { report: Some(report), ..Heard::default() }, t0, 0);
        let row = &agents.to_json(t0, 0)[0];
        assert_eq!((row["dropped"].as_u64(), row["store_errors"].as_u64()), (Some(7), Some(3)));
        assert_eq!(row["space_low"], true);
        let said = row["warnings"][0].as_str().unwrap();
        assert!(said.contains("0.5 MiB free, under its reserve of 1.0 MiB"), "{said}");
        assert_eq!(row["warnings"].as_array().unwrap().len(), 1, "its store writes");
        let mut out = Families::default();
        agents.collect(t0, &mut out);
        let lost = out.0.iter().find(|f| f.name == "plantd_ingest_agent_samples_lost").unwrap();
        let by_reason: Vec<(String, u64)> = lost.samples.iter().map(|(l, v)| (l[1].1.clone(), *v)).collect();
        assert_eq!(by_reason, [("full".into(), 2), ("space".into(), 5), ("store_error".into(), 3)]);
        // An agent from before these counters: nothing to warn of.
        agents.record(
            "pump-2",
            Heard { report: Some(Report { store_ok: true, ..Report::default() }), ..Heard::default() },
            t0,
            0,
        );
        assert_eq!(agents.to_json(t0, 0)[1]["warnings"], serde_json::json!([]));
    }
}
