//! Fleet configuration through a real hub and real agents: a group of
//! agents takes a new period and a new channel within 5 s without losing or
//! renumbering a durable sample; an agent that was away applies the change
//! when it comes back, and restarts on it with the hub down; a config whose
//! driver cannot open is rolled back while sampling goes on; with security a
//! viewer cannot set configurations and one agent cannot read another's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use proto::mdp::Dialect;
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);
const FLOW: &str = "[[channel]]\nname = \"flow\"\nperiod_ms = 200\ndriver = { kind = \"sine\" }\n";

/// `hub config <args>` against `broker`.
fn config_cli(broker: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--broker", broker, "config"];
    all.extend_from_slice(args);
    hub_cli(&all)
}

/// `hub config status --json`'s rows, by agent.
fn fleet_status(broker: &str) -> BTreeMap<String, Value> {
    let out = config_cli(broker, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let rows = status["agents"].as_array().cloned().unwrap_or_default();
    rows.into_iter().map(|r| (r["agent"].as_str().unwrap_or_default().to_string(), r)).collect()
}

/// Writes `text` as a fragment file in `dir`.
fn fragment(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The durable seqs `collector` saw from `agent`'s `epoch` are 1..=n without a hole.
fn assert_gapless(collector: &Collector, agent: &str) {
    let mut by_epoch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for s in collector.durable().into_iter().filter(|s| s.json["agent"] == agent) {
        by_epoch.entry(s.epoch).or_default().insert(s.seq);
    }
    assert!(!by_epoch.is_empty(), "no durable sample of {agent}");
    for (epoch, seqs) in by_epoch {
        let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
        assert_eq!(first, 1, "{agent} epoch {epoch}: from the first sample");
        assert_eq!(seqs.len() as u64, last, "{agent} epoch {epoch}: seqs 1..={last} without a hole");
    }
}

#[test]
fn a_group_takes_a_new_period_and_a_new_channel_within_5_s_with_gapless_durable_seqs() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(metric.backend.as_str(), "org.plantd.Metric.");
    let dir = tempfile::tempdir().unwrap();
    let ids = ["pump-1", "pump-2", "pump-3"];
    let _agents: Vec<Proc> = ids
        .iter()
        .map(|id| agent_run(&agent_config(dir.path(), id, &hub.broker, &metric.frontend, FLOW)))
        .collect();
    // Each agent has asked for its configuration (there is none yet) and sends samples.
    wait_for("the three agents polling, on their local files", 30 * SECOND, || {
        let status = fleet_status(&hub.broker);
        ids.iter().all(|id| status.get(*id).is_some_and(|r| r["state"] == "local")).then_some(())
    });
    wait_for("samples of flow from each agent", 30 * SECOND, || {
        let seen = collector.durable();
        ids.iter().all(|id| seen.iter().any(|s| s.json["agent"] == *id && s.channel == "flow")).then_some(())
    });

    let file = fragment(
        dir.path(),
        "pumps.toml",
        "[[channel]]\nname = \"flow\"\nperiod_ms = 50\ndriver = { kind = \"sine\" }\n\n\
         [[channel]]\nname = \"level\"\nperiod_ms = 100\ndriver = { kind = \"ramp\" }\nunit = \"m\"\n",
    );
    let set_at = Instant::now();
    let out = config_cli(&hub.broker, &["set", "pump-*", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let version: u64 =
        said.split("version ").nth(1).and_then(|v| v.split(' ').next()?.parse().ok()).expect(&said);
    wait_for("all three to report the version applied", 10 * SECOND, || {
        let status = fleet_status(&hub.broker);
        ids.iter()
            .all(|id| status.get(*id).is_some_and(|r| r["state"] == "applied" && r["applied"] == version))
            .then_some(())
    });
    let took = set_at.elapsed();
    eprintln!("fleet: version {version} applied by all three agents {took:?} after `hub config set` began");
    assert!(took < 5 * SECOND, "applied by all three {took:?} after it was set");

    // The new channel's samples arrive, and flow now comes every 50 ms.
    wait_for("level samples from each agent", 30 * SECOND, || {
        let seen = collector.durable();
        ids.iter().all(|id| seen.iter().any(|s| s.json["agent"] == *id && s.channel == "level")).then_some(())
    });
    let flow_of = |id: &str| {
        collector.durable().iter().filter(|s| s.json["agent"] == id && s.channel == "flow").count()
    };
    let before = flow_of("pump-1");
    let counted = Instant::now();
    wait_for("flow at its new period", 30 * SECOND, || (flow_of("pump-1") >= before + 20).then_some(()));
    assert!(counted.elapsed() < 3 * SECOND, "20 samples took {:?}: not every 50 ms", counted.elapsed());

    // Nothing lost or renumbered across the change.
    let status = agent_status(&dir.path().join("pump-2-data")).unwrap();
    assert_eq!(status["fleet"]["applied"], version, "{status}");
    wait_for("the outboxes drained", 30 * SECOND, || {
        ids.iter()
            .all(|id| {
                agent_status(&dir.path().join(format!("{id}-data")))
                    .is_some_and(|s| s["outbox"]["records"] == 0)
            })
            .then_some(())
    });
    for id in ids {
        assert_gapless(&collector, id);
    }
    // `hub agents` shows each on its version, no drift.
    let table = String::from_utf8_lossy(&hub_cli(&["agents", "--broker", &hub.broker]).stdout).into_owned();
    assert!(table.lines().filter(|l| l.contains(&format!("v{version} "))).count() >= 3, "{table}");
}

#[test]
fn an_agent_away_applies_its_change_on_return_and_restarts_on_it_with_the_hub_down() {
    let hub = HubProc::start();
    let (broker, metric) = (hub.broker.clone(), hub.bus("metric").clone());
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), "away-1", &broker, &metric.frontend, FLOW);
    let data = dir.path().join("away-1-data");
    let mut agent = agent_run(&config);
    wait_for_status(&data, "the agent polling", 30 * SECOND, |s| {
        (s["fleet"]["state"] == "local").then_some(())
    });
    agent.kill();

    // Changed while the agent is away.
    let file = fragment(
        dir.path(),
        "away.toml",
        &format!("{FLOW}\n[[channel]]\nname = \"valve\"\nperiod_ms = 100\ndriver = {{ kind = \"toggle\", every_s = 1.0 }}\n"),
    );
    assert!(config_cli(&broker, &["set", "away-1", &file]).status.success());
    let _agent = agent_run(&config);
    let applied = wait_for_status(&data, "the change applied on return", 30 * SECOND, |s| {
        (s["fleet"]["state"] == "applied" && s["channels"]["valve"]["samples"].as_u64()? > 0)
            .then(|| s["fleet"]["applied"].as_u64())
            .flatten()
    });
    drop(_agent);

    // The hub goes; the agent is killed and started again: it comes up on the
    // version it applied, with no hub to ask.
    drop(hub);
    let mut again = agent_run(&config);
    let status = wait_for_status(&data, "sampling valve again, hub down", 30 * SECOND, |s| {
        (s["channels"]["valve"]["samples"].as_u64()? > 0 && s["link"]["state"] == "down").then(|| s.clone())
    });
    assert_eq!(status["fleet"]["applied"].as_u64(), Some(applied), "{status}");
    assert_eq!(status["fleet"]["state"], "applied", "{status}");
    again.kill();
}

#[test]
fn a_config_whose_driver_cannot_open_is_rolled_back_and_sampling_goes_on() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(metric.backend.as_str(), "org.plantd.Metric.rb-1.");
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), "rb-1", &hub.broker, &metric.frontend, FLOW);
    let data = dir.path().join("rb-1-data");
    let _agent = agent_run(&config);
    wait_for_status(&data, "the agent polling", 30 * SECOND, |s| {
        (s["fleet"]["state"] == "local").then_some(())
    });

    // An unknown driver never reaches the agent: the hub refuses it, naming the field.
    let bad =
        fragment(dir.path(), "bad.toml", "[[channel]]\nname = \"x\"\ndriver = { kind = \"warp-drive\" }\n");
    let out = config_cli(&hub.broker, &["set", "rb-1", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("warp-drive"), "{stderr}");
    let history = config_cli(&hub.broker, &["history", "rb-1"]);
    assert!(!history.status.success(), "nothing was stored");

    // A GPIO line that cannot be opened: the agent goes back to what it ran.
    let gpio = fragment(
        dir.path(),
        "gpio.toml",
        &format!("{FLOW}\n[[channel]]\nname = \"relay\"\ndriver = {{ kind = \"gpio-out\", chip = \"gpiochip77\", line = 3 }}\n"),
    );
    assert!(config_cli(&hub.broker, &["set", "rb-1", &gpio]).status.success());
    let status = wait_for_status(&data, "the version rolled back", 15 * SECOND, |s| {
        (s["fleet"]["state"] == "rolled-back").then(|| s.clone())
    });
    let reason = status["fleet"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("channel[1] ('relay').driver") && reason.contains("gpiochip77"), "{status}");
    assert_eq!(status["fleet"]["applied"], 0, "still on the local file: {status}");
    assert!(status["channels"].get("relay").is_none(), "{status}");
    let row = wait_for("the hub to see the rollback", 10 * SECOND, || {
        fleet_status(&hub.broker).remove("rb-1").filter(|r| r["state"] == "rolled-back")
    });
    assert_eq!(row["drift"], true, "{row}");
    assert!(row["reason"].as_str().unwrap_or_default().contains("gpiochip77"), "{row}");
    let table = String::from_utf8_lossy(&hub_cli(&["agents", "--broker", &hub.broker]).stdout).into_owned();
    assert!(table.contains("v0->v1 rolled-back"), "{table}");

    // The operator fixes it: version 2 drops the relay. `diff` shows what
    // changed, `history` keeps both, and a rollback to 1 is a new version
    // the agent refuses as it did the first time.
    assert!(config_cli(&hub.broker, &["set", "rb-1", &fragment(dir.path(), "fixed.toml", FLOW)])
        .status
        .success());
    wait_for_status(&data, "version 2 applied", 15 * SECOND, |s| {
        (s["fleet"]["applied"] == 2 && s["fleet"]["state"] == "applied").then_some(())
    });
    let diff = String::from_utf8_lossy(&config_cli(&hub.broker, &["diff", "rb-1"]).stdout).into_owned();
    assert!(diff.contains("-name = \"relay\"") && diff.contains("rb-1 version 1"), "{diff}");
    let history = String::from_utf8_lossy(&config_cli(&hub.broker, &["history", "rb-1"]).stdout).into_owned();
    assert_eq!(history.lines().count(), 3, "a header and two versions: {history}");
    assert!(config_cli(&hub.broker, &["rollback", "rb-1", "1"]).status.success());
    wait_for_status(&data, "version 3 (version 1 again) rolled back", 15 * SECOND, |s| {
        (s["fleet"]["desired"] == 3 && s["fleet"]["state"] == "rolled-back" && s["fleet"]["applied"] == 2)
            .then_some(())
    });

    // Sampling went on throughout, every durable sample accounted for.
    let before = collector.durable().len();
    wait_for("flow samples after the rollback", 30 * SECOND, || {
        (collector.durable().len() >= before + 10).then_some(())
    });
    wait_for_status(&data, "the outbox drained", 30 * SECOND, |s| {
        (s["outbox"]["records"] == 0).then_some(())
    });
    assert_gapless(&collector, "rb-1");
}

#[test]
fn a_viewer_cannot_set_configuration_and_one_agent_cannot_read_another_s() {
    let site = Site::new();
    let (pump1, pump2, viewer, ops) = (
        site.identity("pump-1"),
        site.identity("pump-2"),
        site.identity("grafana"),
        site.identity("shift-lead"),
    );
    let hub =
        site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]\n\"shift-lead\" = [\"operator\"]", "");
    let admin = |who, body: &[&str]| {
        call(site.endpoint(who, &hub.broker), Dialect::Rfc7, proto::fleet::ADMIN_SERVICE, body, 5 * SECOND)
            .expect("the broker answers")
    };
    let fragment_text = "log_level = \"debug\"\n";
    assert_eq!(admin(&viewer, &["set", "pump-1", fragment_text]), ["403"], "a viewer may not set");
    assert_eq!(admin(&pump2, &["show", "pump-1"]), ["403"], "an agent may not use the admin service");
    let set: Value = serde_json::from_str(&admin(&ops, &["set", "pump-1", fragment_text])[0]).unwrap();
    assert_eq!(set["version"], 1, "{set}");

    // pump-2 asks for pump-1's configuration in its own poll: refused, counted.
    let poll = serde_json::json!({"agent": "pump-1", "applied": 0, "applied_hash": "", "evaluated": 0, "state": "local"});
    let reply = call(
        site.endpoint(&pump2, &hub.broker),
        Dialect::Rfc7,
        proto::fleet::SERVICE,
        &["poll", &poll.to_string()],
        5 * SECOND,
    )
    .expect("the hub answers");
    let reply: Value = serde_json::from_str(&reply[0]).unwrap();
    assert!(reply["config"].is_null() && reply["error"].as_str().unwrap().contains("its own"), "{reply}");
    hub.wait_denied("pump-2", "fleet");

    // pump-1, over CURVE, applies its own. A later version naming key files it
    // does not have is stored (every link is CURVE), shown redacted, and
    // rejected by the agent, which keeps sampling on the version before.
    let dir = tempfile::tempdir().unwrap();
    let metric = hub.bus("metric").clone();
    let body = format!("{}\n{FLOW}", site.agent_keys(&pump1));
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, &body);
    let data = dir.path().join("pump-1-data");
    let _agent = agent_run(&config);
    wait_for_status(&data, "version 1 applied over CURVE", 30 * SECOND, |s| {
        (s["fleet"]["applied"] == 1 && s["fleet"]["state"] == "applied").then_some(())
    });
    let keys =
        "[hub]\nserver_cert = \"/nonexistent/hub.key\"\nclient_cert = \"/nonexistent/pump-1.key_secret\"\n";
    let set: Value = serde_json::from_str(&admin(&ops, &["set", "pump-1", keys])[0]).unwrap();
    assert_eq!(set["version"], 2, "{set}");
    let shown: Value = serde_json::from_str(&admin(&ops, &["show", "pump-1"])[0]).unwrap();
    let shown = shown["config"].as_str().unwrap();
    assert!(!shown.contains("/nonexistent") && shown.contains("<redacted>"), "{shown}");
    let status = wait_for_status(&data, "version 2 rejected", 15 * SECOND, |s| {
        (s["fleet"]["state"] == "rejected").then(|| s.clone())
    });
    assert!(status["fleet"]["reason"].as_str().unwrap().contains("/nonexistent"), "{status}");
    assert_eq!(status["fleet"]["applied"], 1, "{status}");
    let samples = status["channels"]["flow"]["samples"].as_u64().unwrap();
    wait_for_status(&data, "sampling on", 15 * SECOND, |s| {
        (s["channels"]["flow"]["samples"].as_u64()? > samples + 5 && s["link"]["state"] == "up").then_some(())
    });
}
