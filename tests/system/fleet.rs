//! `hub loadgen` against a real hub: a fleet of simulated agents whose every
//! durable sample is acknowledged, counted the same by the hub; and `hub tap`
//! saying when the bus dropped samples for it, and only then.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// `hub loadgen ARGS --json` against `hub`'s broker, to completion; its summary.
fn loadgen(hub: &HubProc, args: &[&str]) -> Value {
    let mut cmd = Command::new(bin("hub"));
    cmd.args(["loadgen", "--durable", "--json", "--broker", &hub.broker]).args(args);
    let out = run_bounded("hub loadgen", &mut cmd, 60 * SECOND);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hub loadgen failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}): {stderr}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn loadgen_has_every_sample_of_fifty_agents_acknowledged_and_the_hub_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    // No consumer in this test: the gate would hold every batch back.
    std::fs::write(&config, "[ingest]\nrequire_subscriber = false\n").unwrap();
    let hub = HubProc::start_with(&["--config", config.to_str().unwrap()]);
    let s = loadgen(&hub, &["--agents", "50", "--rate", "10", "--seconds", "3"]);

    assert!(n(&s["samples"]) >= 50 * 25, "50 agents at 10/s for 3 s: {s}");
    assert_eq!(s["acknowledged"], s["samples"], "{s}");
    assert_eq!((n(&s["in_flight"]), n(&s["backlog"]), n(&s["dropped"])), (0, 0, 0), "{s}");
    assert_eq!((n(&s["duplicates"]), n(&s["rejected"])), (0, 0), "{s}");
    let latency = &s["latency_ms"];
    let (p50, p99) = (latency["p50"].as_f64().unwrap(), latency["p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= latency["max"].as_f64().unwrap(), "{latency}");
    assert!(n(&latency["batches"]) >= n(&s["samples"]) / 500, "every batch's latency: {latency}");

    let agents = s["per_agent"].as_array().unwrap();
    assert_eq!(agents.len(), 50);
    let mut epochs = std::collections::HashSet::new();
    let mut accepted_by_the_hub = 0;
    for (i, a) in agents.iter().enumerate() {
        let id = format!("loadgen-{i}");
        assert_eq!(a["agent"], id.as_str());
        let samples = n(&a["samples"]);
        assert!((25..=31).contains(&samples), "{id} made {samples} samples at 10/s in 3 s: {a}");
        // Seqs count from 1 and every one came back: acknowledged through the last.
        assert_eq!((n(&a["acknowledged"]), n(&a["acked_through"])), (samples, samples), "{a}");
        let epoch = n(&a["epoch"]);
        assert!(epoch > 0 && epoch < 1 << 53 && epochs.insert(epoch), "a fresh epoch per agent: {a}");
        let accepted = hub.metric_with("plantd_ingest_agent_accepted_total", &[("agent", &id)]);
        assert_eq!(accepted, samples, "the hub accepted what {id} made");
        accepted_by_the_hub += accepted;
    }
    assert_eq!(accepted_by_the_hub, n(&s["samples"]));
}

/// `hub tap` as a child, its stdout counted as it comes.
struct Tap {
    proc: Proc,
    lines: Lines,
    /// Lines of the load generator's samples; whether a probe and the end marker came.
    samples: u64,
    probed: bool,
    marker: bool,
}

const PROBE: &str = "org.plantd.Metric.probe.x";
const MARKER: &str = "org.plantd.Metric.end-of-test.marker";

impl Tap {
    fn start(name: &str, backend: &str) -> Tap {
        let mut cmd = Command::new(bin("hub"));
        cmd.args(["tap", "--bus", backend, "org.plantd.Metric."]);
        let mut proc = Proc::spawn(name, cmd);
        let lines = Lines::new(proc.take_stdout());
        Tap { proc, lines, samples: 0, probed: false, marker: false }
    }

    /// Counts what the tap printed since the last look.
    fn pump(&mut self) -> &mut Tap {
        while let Some(line) = self.lines.next(Duration::ZERO) {
            if line.starts_with("org.plantd.Metric.loadgen-") {
                self.samples += 1;
            }
            self.probed |= line.starts_with(PROBE);
            self.marker |= line.starts_with(MARKER);
        }
        self
    }

    /// Stops it with SIGINT; what it said on stderr.
    fn stop(mut self) -> String {
        self.proc.signal(libc::SIGINT);
        assert!(
            self.proc.wait_exit(10 * SECOND).is_some_and(|s| s.success()),
            "{} exits on SIGINT",
            self.proc.name
        );
        self.proc.stderr()
    }
}

/// Publishes `topic` until every tap has printed it.
fn publish_until_seen(frontend: &str, taps: &mut [&mut Tap], seen: impl Fn(&Tap) -> bool, topic: &str) {
    let ctx = zmq::Context::new();
    let publisher = transport::Publisher::connect(&ctx, frontend, proto::bus::Framing::TwoFrame).unwrap();
    wait_for(&format!("the taps to print {topic}"), 20 * SECOND, || {
        publisher.publish(topic.as_bytes(), b"{}").unwrap();
        taps.iter_mut().all(|t| seen(t.pump())).then_some(())
    });
}

/// The count in the tap's closing "missed N durable samples in all, received M" line.
fn missed_in_all(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("durable samples in all"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |w: &str| {
        words.iter().position(|x| *x == w).and_then(|i| words.get(i + 1)?.trim_end_matches(',').parse().ok())
    };
    Some((after("missed")?, after("received")?))
}

#[test]
fn a_stalled_tap_reports_the_samples_it_missed_and_a_keeping_up_tap_reports_none() {
    let dir = tempfile::tempdir().unwrap();
    let (frontend, backend) = (free_endpoint(), free_endpoint());
    // A queue of 1000 per subscriber at the hub: a tap stopped for 30 000 samples loses most of them.
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nhwm = 1000\n\n[state]\nenabled = false\n"),
    )
    .unwrap();
    let hub = HubProc::start_with_ports(
        tempfile::tempdir().unwrap(),
        &free_endpoint(),
        HubPorts::http_only(),
        &["--config", config.to_str().unwrap()],
    );
    let (mut keeping_up, mut stalled) =
        (Tap::start("keeping-up tap", &backend), Tap::start("stalled tap", &backend));
    // Both subscribed before the first sample: each sees every agent's seq 1.
    publish_until_seen(&frontend, &mut [&mut keeping_up, &mut stalled], |t| t.probed, PROBE);

    let mut cmd = Command::new(bin("hub"));
    cmd.args(["loadgen", "--durable", "--json", "--broker", &hub.broker]).args([
        "--agents",
        "50",
        "--rate",
        "200",
        "--seconds",
        "5",
    ]);
    let mut generator = Proc::spawn("hub loadgen", cmd);
    let summary = Lines::new(generator.take_stdout());
    // The keeping-up tap is the clock: the other stops for 30 000 samples.
    wait_for("2 000 samples", 20 * SECOND, || (keeping_up.pump().samples >= 2_000).then_some(()));
    stalled.proc.signal(libc::SIGSTOP);
    wait_for("32 000 samples", 30 * SECOND, || (keeping_up.pump().samples >= 32_000).then_some(()));
    stalled.proc.signal(libc::SIGCONT);

    let summary = summary.next(60 * SECOND).expect("the load generator's summary");
    assert!(generator.wait_exit(10 * SECOND).is_some_and(|s| s.success()), "loadgen: {}", generator.stderr());
    let summary: Value = serde_json::from_str(&summary).unwrap();
    let acknowledged = n(&summary["acknowledged"]);
    assert_eq!(acknowledged, n(&summary["samples"]), "{summary}");
    wait_for("the keeping-up tap to print every sample", 20 * SECOND, || {
        (keeping_up.pump().samples >= acknowledged).then_some(())
    });
    // Published after every sample reached the bus: a tap that printed it has
    // read (or missed) all of them.
    publish_until_seen(&frontend, &mut [&mut keeping_up, &mut stalled], |t| t.marker, MARKER);

    let (received, fine) = (stalled.samples, keeping_up.samples);
    let (lossy, fine_stderr) = (stalled.stop(), keeping_up.stop());
    assert_eq!(fine, acknowledged, "the keeping-up tap printed each sample once");
    assert!(!fine_stderr.contains("missed"), "a tap with no gaps says nothing of missing: {fine_stderr}");
    assert!(received < acknowledged, "the stalled tap lost samples: {received} of {acknowledged}");
    let periodic = lossy.lines().find(|l| l.contains("missed") && l.contains("loadgen-"));
    assert!(periodic.is_some(), "a line naming the agents as it happened: {lossy}");
    let (missed, total) = missed_in_all(&lossy).unwrap_or_else(|| panic!("a total at the end: {lossy}"));
    assert_eq!((missed, total), (acknowledged - received, received), "every missed sample counted: {lossy}");
}
