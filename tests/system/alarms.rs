//! Alarms raised at the edge, through a real hub: an alarm raised while the
//! hub is away reaches the event bus after the outage with its own time,
//! ahead of the telemetry backlog, even from an agent whose sample outbox
//! overflowed meanwhile; an operator acknowledges an alarm, a viewer may not.

use std::time::{Duration, Instant};

use proto::mdp::Dialect;
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// Waits for a message `collector` heard that `check` accepts: (when heard, its JSON).
fn wait_event(collector: &Collector, what: &str, check: impl Fn(&Value) -> bool) -> (Instant, Value) {
    wait_for(what, 30 * SECOND, || {
        collector.snapshot().into_iter().find(|s| check(&s.json)).map(|s| (s.at, s.json))
    })
}

/// A tank held above its `hi` limit of 80 from the start, read every 100 ms.
const TANK: &str = "[[channel]]\nname = \"tank\"\nperiod_ms = 100\n\
                    driver = { kind = \"step\", levels = [90.0, 91.0], every_s = 1.0 }\n\
                    alarm = { hi = 80.0, hysteresis = 1.0, delay_ms = 300, priority = \"high\" }\n";

#[test]
fn an_alarm_raised_in_an_outage_arrives_after_it_with_its_time_ahead_of_the_backlog_and_outlives_a_full_outbox(
) {
    // The hub's endpoints are chosen now; the hub starts only after the outage.
    let (ports, broker) = (HubPorts::new(), free_endpoint());
    let (metric, event) = (ports.buses["metric"].clone(), ports.buses["event"].clone());
    let dir = tempfile::tempdir().unwrap();
    // A sample outbox of 30 records: telemetry every 50 ms overflows it within two seconds.
    let body = format!(
        "{TANK}\n[[channel]]\nname = \"flow\"\nperiod_ms = 50\ndriver = {{ kind = \"sine\" }}\n\n\
         [outbox]\nmax_records = 30\n"
    );
    let config = agent_config(dir.path(), "al1", &broker, &metric.frontend, &body);
    let data = dir.path().join("al1-data");
    let _agent = agent_run(&config);
    wait_for_status(&data, "the alarm raised and the outbox overflowing, hub away", 30 * SECOND, |s| {
        let raised =
            s["alarms"]["active"].as_array()?.iter().any(|a| a["channel"] == "tank" && a["state"] == "hi");
        let full = s["outbox"]["dropped"].as_u64()? > 0;
        (raised && full && s["alarms"]["outbox"]["records"].as_u64()? >= 1).then_some(())
    });
    let outage_end =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;

    // The hub comes back with its metric subscriber; its event subscriber
    // returns only after the hub has had to refuse the agent's events once
    // (as when a restarted hub hears from its consumers one by one): the
    // telemetry waits behind the events a while, and the alarm still comes first.
    let samples = Collector::start(metric.backend.as_str(), "org.plantd.Metric.al1.");
    let hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    wait_for("the hub to refuse the events while nobody listens", 30 * SECOND, || {
        (hub.metric("plantd_ingest_batches_retried_total") >= 1).then_some(())
    });
    assert!(samples.durable().is_empty(), "no telemetry yet, while the alarm could not be delivered");
    let events = Collector::start(event.backend.as_str(), "org.plantd.Event.alarm.al1.");
    let (heard, raise) = wait_event(&events, "the raise on the event bus", |j| j["event"] == "raise");
    assert_eq!((raise["channel"].as_str(), raise["state"].as_str()), (Some("tank"), Some("hi")), "{raise}");
    assert_eq!(
        (raise["limit"].as_f64(), raise["acknowledged"].as_bool()),
        (Some(80.0), Some(false)),
        "{raise}"
    );
    assert_eq!((raise["priority"].as_str(), raise["agent"].as_str()), (Some("high"), Some("al1")), "{raise}");
    assert!(raise["wall_ns"].as_i64().unwrap() < outage_end, "stamped when raised, in the outage: {raise}");
    assert!(raise["value"].as_f64().unwrap() >= 90.0, "{raise}");

    // The telemetry backlog comes after the event.
    let first =
        wait_for("the telemetry backlog", 30 * SECOND, || samples.durable().iter().map(|s| s.at).min());
    assert!(heard <= first, "the alarm came {:?} after the first sample of the backlog", heard - first);
    let status = agent_status(&data).unwrap();
    assert!(status["outbox"]["dropped"].as_u64().unwrap() > 0, "telemetry was dropped: {status}");
    assert_eq!(status["alarms"]["outbox"]["dropped"], 0, "no alarm event was: {status}");

    // The hub shows the agent's alarm in force.
    let row = wait_for("hub agents to show the alarm", 30 * SECOND, || {
        let out = hub_cli(&["agents", "--json", "--broker", &hub.broker]);
        let agents: Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = agents.as_array()?.iter().find(|a| a["agent"] == "al1")?.clone();
        (row["alarms"].as_array()?.len() == 1).then_some(row)
    });
    assert_eq!(
        (row["alarms"][0]["channel"].as_str(), row["alarms"][0]["state"].as_str()),
        (Some("tank"), Some("hi"))
    );
    let table = String::from_utf8_lossy(&hub_cli(&["agents", "--broker", &hub.broker]).stdout).into_owned();
    assert!(table.contains("tank hi!"), "{table}");
    assert_eq!(hub.metric_with("plantd_ingest_agent_alarms_active", &[("agent", "al1")]), 1);
}

#[test]
fn an_operator_acknowledges_an_alarm_and_a_viewer_may_not() {
    let site = Site::new();
    let (pump, viewer, ops) =
        (site.identity("pump-1"), site.identity("grafana"), site.identity("shift-lead"));
    let hub =
        site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]\n\"shift-lead\" = [\"operator\"]", "");
    let (metric, event) = (hub.bus("metric").clone(), hub.bus("event").clone());
    let events = Collector::start(site.endpoint(&viewer, &event.backend), "org.plantd.Event.alarm.pump-1.");
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n{TANK}", site.agent_keys(&pump));
    let config = agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, &body);
    let _agent = agent_run(&config);
    wait_event(&events, "the raise", |j| j["event"] == "raise" && j["acknowledged"] == false);

    let service = "org.plantd.Agent.pump-1";
    let ack =
        |who| call(site.endpoint(who, &hub.broker), Dialect::Rfc7, service, &["ack", "tank"], 5 * SECOND);
    assert_eq!(ack(&viewer).expect("the broker answers"), ["403"], "a viewer may not acknowledge");
    let status = agent_status(&dir.path().join("pump-1-data")).unwrap();
    assert_eq!(status["alarms"]["active"][0]["acknowledged"], false, "{status}");

    let reply = ack(&ops).expect("the agent answers");
    let reply: Value = serde_json::from_str(&reply[0]).unwrap();
    assert_eq!(
        (reply["acknowledged"].as_bool(), reply["changed"].as_bool()),
        (Some(true), Some(true)),
        "{reply}"
    );
    let (_, acknowledged) = wait_event(&events, "the acknowledgement", |j| j["event"] == "acknowledge");
    assert_eq!(
        (acknowledged["state"].as_str(), acknowledged["acknowledged"].as_bool()),
        (Some("hi"), Some(true))
    );
    let status = agent_status(&dir.path().join("pump-1-data")).unwrap();
    assert_eq!(status["alarms"]["active"][0]["acknowledged"], true, "{status}");
    // Again: nothing left to acknowledge; a channel without an alarm is named.
    let again: Value = serde_json::from_str(&ack(&ops).unwrap()[0]).unwrap();
    assert_eq!(again["changed"], false, "{again}");
    let none =
        call(site.endpoint(&ops, &hub.broker), Dialect::Rfc7, service, &["ack", "flow"], 5 * SECOND).unwrap();
    assert!(none[0].contains("has no alarm"), "{none:?}");
}
