//! Fleet configuration: the desired configuration of each agent, set by
//! operators (`hub config set`), polled by agents (`org.plantd.Fleet`), and
//! how each agent stands with it (`hub config status`, `hub agents`, the
//! web view). The protocol is [`proto::fleet`]'s; the rules a fragment must
//! pass are the agent's own ([`agent::fleet`]), run here before a version
//! is stored, so a bad file never reaches a controller.

pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto::fleet::{self as wire, Poll, PollReply};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use transport::{ShutdownWatch, Worker, WorkerError, WorkerOptions};

use self::store::Store;
use crate::broker::BROKER_INPROC;
use crate::metrics::Families;
use crate::security::{Kind, Security};

/// `[fleet]`: where desired configurations are kept, and their bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub enabled: bool,
    /// Versions kept per target (at least 10).
    pub history: usize,
    /// Targets (agent ids and globs) at most.
    pub max_targets: usize,
    /// Agents whose reports are kept at most (the least recently heard goes first).
    pub max_agents: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { enabled: true, history: 20, max_targets: 1000, max_agents: 10_000 }
    }
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.history < 10 {
            return Err(("fleet.history", "must keep at least 10 versions".into()));
        }
        if self.max_targets == 0 || self.max_agents == 0 {
            return Err(("fleet.max_targets/max_agents", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot open the fleet configurations in {path}: {source}")]
    Open { path: std::path::PathBuf, source: std::io::Error },
}

/// An agent's desired configuration: its targets' fragments laid together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub version: u64,
    pub hash: String,
    pub config: String,
    /// The targets it comes from, the group's first.
    pub targets: Vec<String>,
}

/// What an agent said in its last poll.
struct Reported {
    poll: Poll,
    at: Instant,
}

pub struct Fleet {
    config: FleetConfig,
    store: Mutex<Store>,
    reports: Mutex<HashMap<String, Reported>>,
    security: Option<Arc<Security>>,
    polls: AtomicU64,
    refused: AtomicU64,
    sets: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fleet {
    pub fn open(
        data_dir: &std::path::Path,
        config: &FleetConfig,
        security: Option<Arc<Security>>,
    ) -> Result<Fleet, FleetError> {
        let path = data_dir.join("fleet");
        let store = Store::open(&path, config.history, config.max_targets)
            .map_err(|source| FleetError::Open { path, source })?;
        Ok(Fleet {
            config: config.clone(),
            store: Mutex::new(store),
            reports: Mutex::default(),
            security,
            polls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            sets: AtomicU64::new(0),
        })
    }

    /// `id`'s desired configuration: the most specific matching glob's, with
    /// `id`'s own laid over it section by section; `None` when none is set.
    pub fn desired(&self, id: &str) -> Option<Desired> {
        let store = lock(&self.store);
        let group = store
            .targets()
            .iter()
            .filter(|(t, _)| wire::is_glob(t) && wire::matches(t, id))
            .filter_map(|(t, versions)| Some((t, versions.last()?)))
            .max_by_key(|(t, v)| (wire::specificity(t), v.version));
        let own = store.latest(id).map(|v| (id, v));
        let parts: Vec<(&str, &store::Version)> =
            group.map(|(t, v)| (t.as_str(), v)).into_iter().chain(own).collect();
        let version = parts.iter().map(|(_, v)| v.version).max()?;
        let config = match parts.as_slice() {
            [(_, only)] => only.config.clone(),
            _ => {
                let mut merged = toml::Table::new();
                for (_, v) in &parts {
                    // Stored fragments were parsed when set.
                    merged.extend(v.config.parse::<toml::Table>().unwrap_or_default());
                }
                toml::to_string(&merged).unwrap_or_default()
            }
        };
        let targets = parts.iter().map(|(t, _)| t.to_string()).collect();
        Some(Desired { version, hash: store::hash(&config), config, targets })
    }

    /// Answers an agent's poll and keeps its report. With security the
    /// caller's identity is the agent: it may ask only for itself.
    pub fn poll(&self, caller: Option<&str>, body: &[u8]) -> PollReply {
        self.polls.fetch_add(1, Relaxed);
        let refuse = |why: String| PollReply { error: Some(why), ..PollReply::default() };
        let poll: Poll = match serde_json::from_slice(body) {
            Ok(poll) => poll,
            Err(e) => {
                self.refused.fetch_add(1, Relaxed);
                return refuse(format!("a poll is JSON {{\"agent\", \"applied\", ...}}: {e}"));
            }
        };
        if let (Some(caller), Some(security)) = (caller, &self.security) {
            if caller != poll.agent {
                self.refused.fetch_add(1, Relaxed);
                let why = format!("identity {caller} asked for the configuration of {}", poll.agent);
                security.denials.record(caller, Kind::Fleet, || why.clone());
                return refuse(format!("{caller} may read only its own configuration"));
            }
        }
        if !proto::identity::is_valid(&poll.agent) {
            self.refused.fetch_add(1, Relaxed);
            return refuse(format!("agent id {:?} must be {}", poll.agent, proto::identity::RULE));
        }
        let desired = self.desired(&poll.agent);
        // Sent again when its version is the one applied but its content is
        // not (a version number reused after the newest target file was lost).
        let stale = |d: &Desired| {
            d.version != poll.evaluated || (d.version == poll.applied && d.hash != poll.applied_hash)
        };
        let send = desired.as_ref().is_some_and(stale);
        self.remember(poll);
        match desired {
            None => PollReply::default(),
            Some(d) => {
                PollReply { config: send.then_some(d.config), version: d.version, hash: d.hash, error: None }
            }
        }
    }

    fn remember(&self, poll: Poll) {
        let mut reports = lock(&self.reports);
        if !reports.contains_key(&poll.agent) && reports.len() >= self.config.max_agents {
            let oldest = reports.iter().min_by_key(|(_, r)| r.at).map(|(name, _)| name.clone());
            reports.remove(&oldest.unwrap_or_default());
        }
        reports.insert(poll.agent.clone(), Reported { poll, at: Instant::now() });
    }

    /// How `agent` stands: `{"desired","applied","state","reason","pending","drift"}`,
    /// or null when it never polled.
    pub fn standing(&self, agent: &str) -> Value {
        let desired = self.desired(agent);
        let reports = lock(&self.reports);
        let Some(r) = reports.get(agent) else { return Value::Null };
        standing_json(agent, desired.as_ref(), r)
    }

    /// An operator's command (`proto::fleet`'s table), by `caller`.
    pub fn admin(&self, caller: &str, args: &[String]) -> Value {
        let arg = |i: usize| args.get(i).map(String::as_str);
        let error = |message: String| json!({"error": message});
        match (arg(0).unwrap_or_default(), arg(1), arg(2)) {
            ("set", Some(target), Some(text)) => self.set(caller, target, text.to_string(), None),
            ("rollback", Some(target), Some(version)) => {
                let Ok(version) = version.parse::<u64>() else {
                    return error(format!("rollback: {version:?} is not a version number"));
                };
                let old = lock(&self.store)
                    .history(target)
                    .and_then(|h| h.iter().find(|v| v.version == version).map(|v| v.config.clone()));
                match old {
                    Some(text) => self.set(caller, target, text, Some(version)),
                    None => error(format!(
                        "{target} has no version {version} (see `hub config history {target}`)"
                    )),
                }
            }
            ("show", Some(target), version) => self.show(target, version),
            ("history", Some(target), None) => match lock(&self.store).history(target) {
                Some(versions) => json!({"target": target, "versions": versions.iter().rev().map(|v| json!({
                    "version": v.version, "hash": v.hash, "set_by": v.set_by, "set_at_ns": v.set_at_ns,
                    "bytes": v.config.len(), "rollback_of": v.rollback_of,
                })).collect::<Vec<_>>()}),
                None => error(format!("no configuration was set for {target}")),
            },
            ("status", None, None) => self.status(),
            ("targets", None, None) => {
                let store = lock(&self.store);
                let targets: Vec<Value> = store
                    .targets()
                    .iter()
                    .filter_map(|(t, v)| {
                        v.last().map(|v| json!({"target": t, "version": v.version, "hash": v.hash}))
                    })
                    .collect();
                json!({"targets": targets})
            }
            _ => error(
                "use: set TARGET TOML | show TARGET [VERSION] | history TARGET | rollback TARGET VERSION | \
                 status | targets"
                    .into(),
            ),
        }
    }

    /// Checks `text` as the agents will, then stores it as `target`'s next version.
    fn set(&self, caller: &str, target: &str, text: String, rollback_of: Option<u64>) -> Value {
        if let Err(why) = wire::valid_target(target) {
            return json!({"error": why, "field": "target"});
        }
        if let Err(e) = check(&text, self.security.is_some()) {
            return json!({"error": e.to_string(), "field": e.field});
        }
        let stored = lock(&self.store).put(target, text, caller, crate::clock::wall_ns(), rollback_of);
        match stored {
            Ok(v) => {
                self.sets.fetch_add(1, Relaxed);
                log::info!(
                    "fleet configuration of {target}: version {}{} set{}",
                    v.version,
                    rollback_of.map(|r| format!(" (version {r} again)")).unwrap_or_default(),
                    if caller.is_empty() { String::new() } else { format!(" by {caller}") }
                );
                json!({"target": target, "version": v.version, "hash": v.hash, "rollback_of": rollback_of})
            }
            Err(why) => json!({"error": why}),
        }
    }

    fn show(&self, target: &str, version: Option<&str>) -> Value {
        let store = lock(&self.store);
        let Some(history) = store.history(target) else {
            return json!({"error": format!("no configuration was set for {target}")});
        };
        let found = match version.map(str::parse::<u64>) {
            None => history.last(),
            Some(Ok(n)) => history.iter().find(|v| v.version == n),
            Some(Err(_)) => return json!({"error": "the version is a number"}),
        };
        let Some(v) = found else {
            return json!({"error": format!("{target} has no version {} (kept: the last {})",
                version.unwrap_or_default(), self.config.history)});
        };
        let shown = v.config.parse::<toml::Table>().map(|t| agent::fleet::redacted(&t)).unwrap_or_default();
        json!({
            "target": target, "version": v.version, "hash": v.hash, "config": shown,
            "set_by": v.set_by, "set_at_ns": v.set_at_ns, "rollback_of": v.rollback_of,
        })
    }

    /// Every agent that polled: desired, applied, state.
    fn status(&self) -> Value {
        let names: Vec<String> = lock(&self.reports).keys().cloned().collect();
        let desired: HashMap<String, Option<Desired>> =
            names.iter().map(|n| (n.clone(), self.desired(n))).collect();
        let reports = lock(&self.reports);
        let mut rows: Vec<Value> = reports
            .iter()
            .map(|(name, r)| standing_json(name, desired.get(name).and_then(Option::as_ref), r))
            .collect();
        rows.sort_by(|a, b| a["agent"].as_str().cmp(&b["agent"].as_str()));
        json!({"agents": rows})
    }

    pub fn collect(&self, out: &mut Families) {
        let (targets, damaged) = {
            let store = lock(&self.store);
            (store.targets().len() as u64, store.damaged().len() as u64)
        };
        let names: Vec<String> = lock(&self.reports).keys().cloned().collect();
        let drifting = names.iter().filter(|n| self.standing(n)["drift"] == true).count() as u64;
        out.gauge("fleet_targets", "Targets with a desired configuration.", vec![], targets);
        out.gauge(
            "fleet_max_targets",
            "Targets at most (fleet.max_targets).",
            vec![],
            self.config.max_targets as u64,
        );
        out.gauge(
            "fleet_history",
            "Versions kept per target (fleet.history).",
            vec![],
            self.config.history as u64,
        );
        out.gauge("fleet_agents", "Agents that polled for their configuration.", vec![], names.len() as u64);
        out.gauge(
            "fleet_max_agents",
            "Agents' reports kept at most (fleet.max_agents).",
            vec![],
            self.config.max_agents as u64,
        );
        out.gauge("fleet_agents_drifting", "Agents not running their desired version.", vec![], drifting);
        out.counter("fleet_polls", "Polls from agents.", vec![], self.polls.load(Relaxed));
        out.counter(
            "fleet_polls_refused",
            "Polls refused: malformed, or for another agent.",
            vec![],
            self.refused.load(Relaxed),
        );
        out.counter(
            "fleet_versions_set",
            "Versions set (rollbacks included).",
            vec![],
            self.sets.load(Relaxed),
        );
        out.gauge("fleet_files_damaged", "Target files set aside as damaged at start.", vec![], damaged);
    }

    /// Serves `service` until shutdown: agents' polls ([`wire::SERVICE`]) or
    /// operators' commands ([`wire::ADMIN_SERVICE`]).
    pub fn serve(
        self: &Arc<Self>,
        service: &'static str,
        ctx: &zmq::Context,
        worker: WorkerOptions,
        signal: &ShutdownWatch,
    ) -> Result<(), WorkerError> {
        let secure = self.security.is_some();
        Worker::new(ctx, BROKER_INPROC, service, worker).run(
            signal,
            |body: Vec<zmq::Message>, _: &mut transport::Replier<'_>| {
                // With security the broker puts the caller's identity first.
                let (caller, rest) = match (secure, body.split_first()) {
                    (true, Some((caller, rest))) => {
                        (Some(String::from_utf8_lossy(caller).into_owned()), rest)
                    }
                    _ => (None, &body[..]),
                };
                let reply = if service == wire::ADMIN_SERVICE {
                    let args: Vec<String> =
                        rest.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
                    self.admin(caller.as_deref().unwrap_or_default(), &args).to_string().into_bytes()
                } else {
                    let reply = match (rest.first().map(|f| &f[..]), rest.get(1)) {
                        (Some(b"poll"), Some(poll)) => self.poll(caller.as_deref(), poll),
                        _ => PollReply { error: Some("use: poll JSON".into()), ..PollReply::default() },
                    };
                    serde_json::to_vec(&reply).expect("a reply serialises")
                };
                vec![zmq::Message::from(reply)]
            },
        )
    }
}

fn standing_json(agent: &str, desired: Option<&Desired>, r: &Reported) -> Value {
    let p = &r.poll;
    let desired_version = desired.map_or(0, |d| d.version);
    json!({
        "agent": agent,
        "desired": desired_version,
        "desired_hash": desired.map(|d| d.hash.clone()),
        "targets": desired.map(|d| d.targets.clone()).unwrap_or_default(),
        "applied": p.applied,
        "applied_hash": p.applied_hash,
        "state": p.state,
        "reason": p.reason,
        "pending": p.pending,
        "drift": desired_version != 0 && (desired_version != p.applied || p.state != wire::state::APPLIED),
        "seen_s": r.at.elapsed().as_secs_f64(),
    })
}

/// The checks a fragment passes before it is stored: the agent's own
/// (its sections, then the whole config over a default local file), and
/// no secrets unless every link is CURVE.
pub fn check(text: &str, secure: bool) -> Result<(), agent::fleet::Invalid> {
    let fragment = agent::fleet::parse(text)?;
    if let (false, Some(field)) = (secure, agent::fleet::secrets(&fragment).first()) {
        return Err(agent::fleet::Invalid {
            field: field.clone(),
            problem: "names a secret, and this hub has no [security]: it would reach the agent in clear. \
                      Set it in the controller's local file, or give the hub [security]"
                .into(),
        });
    }
    let base = agent::config::Config { id: Some("fleet-check".into()), ..Default::default() };
    agent::fleet::check(&base, text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> (tempfile::TempDir, Fleet) {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::open(dir.path(), &FleetConfig::default(), None).unwrap();
        (dir, fleet)
    }

    const PERIOD: &str = "[[channel]]\nname = \"a\"\nperiod_ms = 500\ndriver = { kind = \"sine\" }\n";

    #[test]
    fn the_most_specific_group_then_the_agent_s_own_sections() {
        let (_dir, fleet) = fleet();
        for (target, text) in
            [("*", "log_level = \"warn\"\n"), ("pump-*", PERIOD), ("pump-1", "log_level = \"debug\"\n")]
        {
            assert!(fleet.admin("ops", &["set".into(), target.into(), text.into()])["version"].is_u64());
        }
        let d = fleet.desired("pump-1").unwrap();
        assert_eq!((d.version, d.targets.clone()), (3, vec!["pump-*".to_string(), "pump-1".to_string()]));
        assert!(d.config.contains("period_ms = 500") && d.config.contains("debug"), "{}", d.config);
        assert_eq!(fleet.desired("pump-2").unwrap().config, PERIOD, "the group alone, as set");
        assert_eq!(fleet.desired("valve-1").unwrap().targets, ["*"]);
    }

    #[test]
    fn bad_fragments_are_refused_naming_the_field_and_secrets_need_security() {
        let (_dir, fleet) = fleet();
        let set = |text: &str| fleet.admin("", &["set".into(), "p-*".into(), text.into()]);
        assert_eq!(set("id = \"x\"")["field"], "id");
        assert_eq!(
            set("[[channel]]\nname = \"a\"\ndriver = { kind = \"nope\" }\n")["field"],
            "fleet configuration"
        );
        assert_eq!(set("[hub]\nclient_cert = \"/k\"\n")["field"], "hub.client_cert");
        assert!(fleet.desired("p-1").is_none(), "nothing stored");
    }

    #[test]
    fn a_poll_gets_the_config_once_and_reports_drift() {
        let (_dir, fleet) = fleet();
        fleet.admin("", &["set".into(), "p-1".into(), PERIOD.into()]);
        let poll = |evaluated: u64, applied: u64, applied_hash: &str| {
            let state = "applied".into();
            let applied_hash = applied_hash.into();
            let p = Poll { agent: "p-1".into(), evaluated, applied, applied_hash, state, ..Poll::default() };
            fleet.poll(None, &serde_json::to_vec(&p).unwrap())
        };
        let first = poll(0, 0, "");
        assert_eq!((first.version, first.config.as_deref()), (1, Some(PERIOD)));
        assert_eq!(fleet.standing("p-1")["drift"], true);
        assert!(poll(1, 1, &first.hash).config.is_none(), "evaluated: not sent again");
        assert!(poll(1, 1, "another").config.is_some(), "the same version, other content: sent again");
        assert_eq!(fleet.standing("p-1")["drift"], false);
        let rollback = fleet.admin("", &["rollback".into(), "p-1".into(), "1".into()]);
        assert_eq!((rollback["version"].as_u64(), rollback["rollback_of"].as_u64()), (Some(2), Some(1)));
    }
}
