//! What the agent does at the edge, through a real hub: report by exception
//! sends a step signal's changes (and the reading held before each), not its
//! repeats; aggregation sends per-window statistics instead of the readings.

use std::time::Duration;

use serde_json::{json, Value};
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// The durable samples of `channel`, in sequence order, once `n` arrived.
fn wait_samples(collector: &Collector, channel: &str, n: usize) -> Vec<Seen> {
    wait_for(&format!("{n} samples of {channel}"), 60 * SECOND, || {
        let mut seen: Vec<Seen> = collector.durable().into_iter().filter(|s| s.channel == channel).collect();
        seen.sort_by_key(|s| s.seq);
        (seen.len() >= n).then_some(seen)
    })
}

#[test]
fn a_step_signal_with_a_deadband_sends_its_changes_and_the_reading_held_before_each() {
    let hub = HubProc::start();
    let metric = hub.bus("metric");
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.e1.");
    let dir = tempfile::tempdir().unwrap();
    // 0.0 for a second, 0.2 (inside the deadband), 5.0, and round again; a reading every 100 ms.
    let body = "[[channel]]\nname = \"level\"\nperiod_ms = 100\n\
                driver = { kind = \"step\", levels = [0.0, 0.2, 5.0], every_s = 1.0 }\n\
                report = { deadband = 0.5, max_interval_ms = 60000 }\n";
    let config = agent_config(dir.path(), "e1", &hub.broker, &metric.frontend, body);
    let _agent = agent_run(&config);
    let seen = wait_samples(&collector, "level", 9);
    let values: Vec<Value> = seen.iter().map(|s| s.value.clone()).collect();
    // The first reading; then at each change the reading held before it and the change.
    assert_eq!(
        values[..9],
        [
            json!(0.0),
            json!(0.2),
            json!(5.0),
            json!(5.0),
            json!(0.0),
            json!(0.2),
            json!(5.0),
            json!(5.0),
            json!(0.0)
        ],
        "{values:?}"
    );
    // The durable sequence has no gaps: only what was sent was numbered.
    assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{seen:?}");
    let status = agent_status(&dir.path().join("e1-data")).unwrap();
    let (sampled, reported) = (
        status["channels"]["level"]["samples"].as_u64().unwrap(),
        status["channels"]["level"]["reported"].as_u64().unwrap(),
    );
    assert!(reported * 5 < sampled, "{reported} of {sampled} readings sent");
}

#[test]
fn aggregation_sends_a_window_s_statistics_and_with_keep_raw_false_no_readings() {
    let hub = HubProc::start();
    let metric = hub.bus("metric");
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.e2.");
    let dir = tempfile::tempdir().unwrap();
    let body = "[[channel]]\nname = \"flow\"\nperiod_ms = 100\nunit = \"m3/h\"\n\
                driver = { kind = \"step\", levels = [2.0, 4.0], every_s = 0.5 }\n\
                aggregate = { window_ms = 1000, stats = [\"min\", \"max\", \"mean\", \"count\"], keep_raw = false }\n";
    let config = agent_config(dir.path(), "e2", &hub.broker, &metric.frontend, body);
    let _agent = agent_run(&config);
    let counts = wait_samples(&collector, "flow.count", 4);
    // The first window may have begun mid-way; the others hold ten readings
    // (give or take one at an edge, as the clock's ticks fall).
    for c in &counts[1..] {
        let n = c.value.as_i64().unwrap();
        assert!((9..=11).contains(&n), "{n} readings in a window: {counts:?}");
    }
    let min = wait_samples(&collector, "flow.min", 4);
    let max = wait_samples(&collector, "flow.max", 4);
    let mean = wait_samples(&collector, "flow.mean", 4);
    for i in 1..4 {
        assert_eq!((min[i].value.clone(), max[i].value.clone()), (json!(2.0), json!(4.0)));
        let m = mean[i].value.as_f64().unwrap();
        assert!((2.5..=3.5).contains(&m), "mean {m}");
        assert_eq!(mean[i].quality, "good");
    }
    assert!(collector.durable().iter().all(|s| s.channel != "flow"), "keep_raw = false sends no readings");
    let status = agent_status(&dir.path().join("e2-data")).unwrap();
    assert_eq!(status["channels"]["flow"]["reported"], 0);
}

#[test]
fn edge_settings_are_validated_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, field) in [
        ("report = { deadband = 1.0, deadband_pct = 2.0 }", "channel[0] ('x').report.deadband_pct"),
        ("aggregate = { window_ms = 500 }", "channel[0] ('x').aggregate.window_ms"),
        ("aggregate = { window_ms = 60000, stats = [\"min\", \"min\"] }", "channel[0] ('x').aggregate.stats"),
        ("alarm = { hi = 80.0, hihi = 70.0 }", "channel[0] ('x').alarm.hihi"),
        ("alarm = { hysteresis = 1.0 }", "channel[0] ('x').alarm.hi"),
    ] {
        let body = format!("[[channel]]\nname = \"x\"\ndriver = {{ kind = \"sine\" }}\n{setting}\n");
        let config = agent_config(dir.path(), "e3", &free_endpoint(), &free_endpoint(), &body);
        let out = agent_cli(&["check", "--config-only", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "{setting}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{setting}: {err}");
    }
}
