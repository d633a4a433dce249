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
}

impl Agents {
    pub fn new(max: usize, silent_after: Duration) -> Agents {
        Agents { max: max.max(1), silent_after, seen: Mutex::default() }
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

    pub fn len(&self) -> usize {
        self.seen().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every agent, by name: `{"agent", "link", "last_seen_s", ...}`.
    pub fn to_json(&self, now: Instant, wall_ns: i64) -> Value {
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
                "dropped": r.map(|r| r.dropped),
                "store_ok": r.map(|r| r.store_ok),
                "uptime_s": r.map(|r| r.uptime_s),
                "version": r.map(|r| r.version.clone()),
                "channels": s.channels,
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
}
