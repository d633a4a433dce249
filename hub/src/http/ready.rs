//! Readiness: is every component of the hub doing its job? `/readyz` says
//! which is not, and why. A pure judgement over [`Inputs`], gathered from
//! the running hub at each request, so each rule is tested on its own.
//!
//! - every loop (broker, each bus, state and ingest workers, control, HTTP)
//!   has turned within [`STUCK_AFTER`] (they wake at least every second);
//! - the broker published its state within [`STUCK_AFTER`];
//! - the state store takes writes, and no acknowledged write has waited
//!   longer than [`Inputs::durability_bound`] to be flushed;
//! - ingest can store its watermarks;
//! - with security: the allow-list is loaded (a failed reload keeps the
//!   previous one in force, and is shown, but is no reason to stop traffic);
//! - the journal's consumers at their bounds or idle are shown: a consumer
//!   holding ingest back is backpressure working, not a broken hub;
//! - every store (`store:<name>`) writes; one found damaged at start and
//!   salvaged is shown and makes the hub `degraded`, not unready.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Sources;

/// A loop that has not turned for this long is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// What readiness is judged on.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Each loop: (name, time since it last turned).
    pub loops: Vec<(String, Duration)>,
    /// Since the broker last published its state.
    pub broker_age: Duration,
    /// The state store: why it takes no writes, and the oldest unflushed write's wait.
    pub state: Option<(Option<String>, Duration)>,
    pub durability_bound: Duration,
    /// Ingest: why its watermarks cannot be stored, if so.
    pub ingest: Option<Option<String>>,
    /// Security: identities allowed, and why the last reload failed.
    pub security: Option<(usize, Option<String>)>,
    /// The journal's consumers: name, backlog in samples, at its bounds, inactive.
    pub consumers: Option<Vec<(String, u64, bool, bool)>>,
    /// Stores recovered from damage at start: (store, what happened).
    pub recovered: Vec<(String, String)>,
    /// Stores that cannot write now: (store, why).
    pub failing: Vec<(String, String)>,
}

impl Inputs {
    pub fn gather(sources: &Sources) -> Inputs {
        let broker_at = sources.broker.lock().map(|s| s.at).unwrap_or_else(|_| Instant::now());
        let flush = sources.state_flush;
        Inputs {
            loops: sources.shutdown.turns().into_iter().map(|t| (t.name, t.idle)).collect(),
            broker_age: broker_at.elapsed(),
            state: sources.state.as_ref().map(|s| (s.failure(), s.durability_lag())),
            durability_bound: (flush * 10).max(Duration::from_secs(5)),
            ingest: sources
                .ingest
                .as_ref()
                .map(|(c, _)| c.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            security: sources.security.as_ref().map(|s| (s.allow_list().len(), s.last_reload_error())),
            recovered: sources.storage.recovered(),
            failing: sources.storage.failing(),
            consumers: sources.journal.as_ref().map(|j| {
                let field = |c: &Value, k: &str| c[k].as_bool().unwrap_or(false);
                let list = j.list();
                list.iter()
                    .map(|c| {
                        let name = c["name"].as_str().unwrap_or_default().to_string();
                        (
                            name,
                            c["backlog"]["records"].as_u64().unwrap_or(0),
                            field(c, "at_bounds"),
                            field(c, "inactive"),
                        )
                    })
                    .collect()
            }),
        }
    }
}

/// One component's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub component: String,
    pub ok: bool,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub ready: bool,
    /// Working, but with data lost at start (a damaged store): ready, and said so.
    pub degraded: bool,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn to_json(&self) -> Value {
        let components: serde_json::Map<String, Value> = self
            .checks
            .iter()
            .map(|c| (c.component.clone(), json!({"ok": c.ok, "detail": c.detail})))
            .collect();
        json!({"ready": self.ready, "degraded": self.degraded, "components": components})
    }
}

pub fn assess(inputs: &Inputs) -> Verdict {
    let mut checks = Vec::new();
    let mut check = |component: &str, problem: Option<String>, detail: Option<String>| {
        checks.push(Check { component: component.into(), ok: problem.is_none(), detail: problem.or(detail) });
    };
    let mut loops = inputs.loops.clone();
    loops.sort();
    for (name, idle) in &loops {
        let stuck = (*idle > STUCK_AFTER).then(|| format!("has not turned for {:.0} s", idle.as_secs_f64()));
        check(&format!("loop:{name}"), stuck, None);
    }
    let broker = (inputs.broker_age > STUCK_AFTER).then(|| {
        format!("the routing loop last published its state {:.0} s ago", inputs.broker_age.as_secs_f64())
    });
    check("broker", broker, None);
    if let Some((failure, lag)) = &inputs.state {
        let problem = match failure {
            Some(why) => Some(format!("takes no writes: {why}")),
            None if *lag > inputs.durability_bound => Some(format!(
                "an acknowledged write has waited {:.1} s to be flushed (bound {:.1} s)",
                lag.as_secs_f64(),
                inputs.durability_bound.as_secs_f64()
            )),
            None => None,
        };
        check("state", problem, None);
    }
    if let Some(failing) = &inputs.ingest {
        check("ingest", failing.as_ref().map(|why| format!("cannot store watermarks: {why}")), None);
    }
    if let Some((identities, reload_error)) = &inputs.security {
        let detail = Some(match reload_error {
            Some(why) => {
                format!("{identities} identities; the last reload failed ({why}), the list before it stands")
            }
            None => format!("{identities} identities"),
        });
        check("allow-list", None, detail);
    }
    if let Some(consumers) = &inputs.consumers {
        let notes: Vec<String> = consumers
            .iter()
            .filter(|(_, _, at_bounds, inactive)| *at_bounds || *inactive)
            .map(|(name, backlog, at_bounds, inactive)| {
                let why = match (at_bounds, inactive) {
                    (true, true) => "at its bounds and idle",
                    (true, false) => "at its bounds",
                    _ => "idle",
                };
                format!("{name}: {why} ({backlog} samples waiting)")
            })
            .collect();
        let detail = if notes.is_empty() {
            format!("{} consumers, none at its bounds or idle", consumers.len())
        } else {
            notes.join("; ")
        };
        check("journal", None, Some(detail));
    }
    let mut stores: Vec<&String> = inputs.recovered.iter().chain(&inputs.failing).map(|(s, _)| s).collect();
    stores.sort();
    stores.dedup();
    for store in stores {
        let find = |list: &[(String, String)]| list.iter().find(|(s, _)| s == store).map(|(_, w)| w.clone());
        let problem = find(&inputs.failing).map(|why| format!("takes no writes: {why}"));
        check(
            &format!("store:{store}"),
            problem,
            find(&inputs.recovered).map(|what| format!("degraded: {what}")),
        );
    }
    Verdict { ready: checks.iter().all(|c| c.ok), degraded: !inputs.recovered.is_empty(), checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        Inputs {
            loops: vec![("broker".into(), Duration::from_millis(200)), ("bus-metric".into(), Duration::ZERO)],
            broker_age: Duration::from_millis(300),
            state: Some((None, Duration::from_millis(50))),
            durability_bound: Duration::from_secs(5),
            ingest: Some(None),
            security: Some((3, None)),
            consumers: Some(vec![("bridge".into(), 10, false, false)]),
            recovered: Vec::new(),
            failing: Vec::new(),
        }
    }

    fn failing(verdict: &Verdict) -> Vec<&str> {
        verdict.checks.iter().filter(|c| !c.ok).map(|c| c.component.as_str()).collect()
    }

    #[test]
    fn a_healthy_hub_is_ready() {
        let verdict = assess(&healthy());
        assert!(verdict.ready, "{verdict:?}");
        assert_eq!(verdict.to_json()["components"]["allow-list"]["detail"], "3 identities");
        assert_eq!(
            verdict.to_json()["components"]["journal"]["detail"],
            "1 consumers, none at its bounds or idle"
        );
    }

    #[test]
    fn a_store_recovered_at_start_is_degraded_not_silent() {
        let mut recovered = healthy();
        recovered.recovered =
            vec![("ingest".into(), "damaged (x); set aside as y; 3 entries salvaged".into())];
        let verdict = assess(&recovered);
        assert!(verdict.ready && verdict.degraded, "the hub works, and says what it lost");
        let json = verdict.to_json();
        assert_eq!(json["degraded"], true);
        assert!(json["components"]["store:ingest"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("degraded: damaged"));
        assert_eq!(assess(&healthy()).to_json()["degraded"], false);

        // Failing now as well: not ready, and the failure is what is shown.
        recovered.failing = vec![("ingest".into(), "No space left on device".into())];
        let verdict = assess(&recovered);
        assert!(!verdict.ready && verdict.degraded);
        let shown = &verdict.to_json()["components"]["store:ingest"];
        assert_eq!(shown["ok"], false);
        assert_eq!(shown["detail"], "takes no writes: No space left on device");
    }

    #[test]
    fn a_consumer_at_its_bounds_is_shown_not_failed() {
        let mut held = healthy();
        held.consumers = Some(vec![("historian".into(), 1000, true, true)]);
        let verdict = assess(&held);
        assert!(verdict.ready, "backpressure is the design working");
        let detail = &verdict.to_json()["components"]["journal"]["detail"];
        assert_eq!(detail, "historian: at its bounds and idle (1000 samples waiting)");
    }

    #[test]
    fn each_broken_component_is_named_with_why() {
        let mut stuck_bus = healthy();
        stuck_bus.loops[1].1 = Duration::from_secs(30);
        assert_eq!(failing(&assess(&stuck_bus)), ["loop:bus-metric"]);

        let mut stuck_broker = healthy();
        stuck_broker.broker_age = Duration::from_secs(11);
        assert_eq!(failing(&assess(&stuck_broker)), ["broker"]);

        let mut full_disk = healthy();
        full_disk.state = Some((Some("No space left on device".into()), Duration::from_secs(1)));
        let verdict = assess(&full_disk);
        assert_eq!(failing(&verdict), ["state"]);
        assert!(verdict.to_json()["components"]["state"]["detail"].as_str().unwrap().contains("No space"));

        let mut slow_flush = healthy();
        slow_flush.state = Some((None, Duration::from_secs(6)));
        assert_eq!(failing(&assess(&slow_flush)), ["state"]);

        let mut ingest = healthy();
        ingest.ingest = Some(Some("sled: I/O error".into()));
        assert_eq!(failing(&assess(&ingest)), ["ingest"]);

        let mut reload = healthy();
        reload.security = Some((3, Some("clients_dir: permission denied".into())));
        let verdict = assess(&reload);
        assert!(verdict.ready, "the previous allow-list stands");
        assert!(verdict.to_json()["components"]["allow-list"]["detail"]
            .as_str()
            .unwrap()
            .contains("last reload failed"));
    }
}
