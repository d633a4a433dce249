//! The agent's outbox across a change of the agent's id: issue 27 found 508
//! samples made as `pump-old` delivered as `pump-new` (a hostname change
//! does the same to the default id). The outbox records which id made its
//! records, and the backlog goes out under that id, never relabelled.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn an_id_change_with_a_backlog_puts_no_sample_under_the_wrong_id() {
    let (broker, ports) = (free_endpoint(), HubPorts::new());
    let metric = ports.buses["metric"].clone();
    let dir = tempfile::tempdir().unwrap();
    let body = "[uplink]\nbackoff_max_ms = 300\n\n[[channel]]\nname = \"t\"\nperiod_ms = 10\ndriver = { kind = \"ramp\" }\n";
    let old_config = agent_config(dir.path(), "pump-old", &broker, &metric.frontend, body);
    let data = dir.path().join("pump-old-data");

    // A backlog made as pump-old while the hub is down.
    let mut agent = agent_run(&old_config);
    let (old_epoch, made) = wait_for_status(&data, "a backlog made as pump-old", 30 * SECOND, |s| {
        let durable = s["outbox"]["durable"][1].as_u64()?;
        (durable >= 300).then(|| (s["epoch"].as_u64().unwrap(), durable))
    });
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(20 * SECOND).is_some_and(|s| s.success()), "{}", agent.stderr());
    let stopped = agent_cli(&["store", "--config", old_config.to_str().unwrap(), "status"]);
    let stopped: Value = serde_json::from_slice(&stopped.stdout).unwrap();
    let backlog = stopped["outbox"]["records"].as_u64().unwrap();
    assert!(backlog >= made, "{stopped}");

    // The same data directory, the id now pump-new; the hub back.
    let text =
        std::fs::read_to_string(&old_config).unwrap().replace("id = \"pump-old\"", "id = \"pump-new\"");
    let new_config = dir.path().join("pump-new.toml");
    std::fs::write(&new_config, text).unwrap();
    let as_old = Collector::start(&metric.backend, "org.plantd.Metric.pump-old.");
    let as_new = Collector::start(&metric.backend, "org.plantd.Metric.pump-new.");
    let hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    let mut agent = agent_run(&new_config);
    let status = wait_for_status(&data, "pump-new to say where its backlog goes", 20 * SECOND, |s| {
        (s["id"] == "pump-new").then(|| s.clone())
    });
    let new_epoch = status["epoch"].as_u64().unwrap();
    let said = status["warnings"].to_string();
    assert!(
        said.contains("made as 'pump-old'") || status["outbox"]["records"].as_u64() < Some(backlog),
        "the backlog's id is said while it is there: {status}"
    );

    // Every sample pump-old made reaches the hub as pump-old's, then new ones as pump-new's.
    wait_for("pump-old's backlog and pump-new's own samples at the hub", 30 * SECOND, || {
        let old: HashSet<u64> =
            as_old.durable().iter().filter(|s| s.epoch == old_epoch).map(|s| s.seq).collect();
        let new = as_new.durable().iter().filter(|s| s.epoch == new_epoch).count();
        ((1..=made).all(|seq| old.contains(&seq)) && new >= 100).then_some(())
    });
    let misplaced_old: Vec<_> = as_old.durable().into_iter().filter(|s| s.epoch != old_epoch).collect();
    let misplaced_new: Vec<_> = as_new.durable().into_iter().filter(|s| s.epoch != new_epoch).collect();
    assert!(misplaced_old.is_empty(), "pump-new's samples under pump-old: {:?}", &misplaced_old[..1]);
    assert!(misplaced_new.is_empty(), "pump-old's samples relabelled pump-new: {:?}", &misplaced_new[..1]);

    // The hub lists both, each with its own samples.
    let out = hub_cli(&["agents", "--json", "--broker", &hub.broker]);
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |id: &str| agents.as_array().unwrap().iter().find(|a| a["agent"] == id).cloned();
    assert!(row("pump-old").and_then(|r| r["accepted"].as_u64()).unwrap_or(0) >= made, "{agents}");
    assert_eq!(row("pump-new").and_then(|r| r["epoch"].as_u64()), Some(new_epoch), "{agents}");
    wait_for_status(&data, "the old id to be forgotten once its records are gone", 20 * SECOND, |s| {
        (s["warnings"] == Value::Array(vec![])).then_some(())
    });
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(20 * SECOND).is_some_and(|s| s.success()), "{}", agent.stderr());
    assert!(agent.stderr().contains("sent as 'pump-old', never relabelled"), "{}", agent.stderr());
}
