//! Durable consumers: named cursors on ingest's journal, read through the
//! broker with `hub tap --durable` and any MDP client. Batches go to
//! `org.plantd.Ingest` as an agent sends them, so each test knows exactly
//! which samples were accepted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use proto::consumer::{Fetched, Request, Sample as Delivered, Spec};
use proto::ingest::Reply;
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// A hub with `config` (TOML).
fn start(dir: &Path, config: &str) -> HubProc {
    let path = dir.join("hub.toml");
    std::fs::write(&path, config).unwrap();
    HubProc::start_with(&["--config", path.to_str().unwrap()])
}

fn send_acked(hub: &HubProc, seqs: std::ops::RangeInclusive<u64>) {
    wait_for("the batch to be acknowledged", 10 * SECOND, || {
        match send_ingest(hub.endpoint(&hub.broker), seqs.clone()) {
            Some(Reply::Ack { .. }) => Some(()),
            _ => None,
        }
    });
}

/// A consumer-service client: one request, its answer and samples.
struct Consumer {
    client: transport::Client,
    service: &'static str,
}

impl Consumer {
    fn new(endpoint: transport::Endpoint) -> Consumer {
        Self::on(endpoint, proto::consumer::SERVICE)
    }

    fn on(endpoint: transport::Endpoint, service: &'static str) -> Consumer {
        Self::waiting(endpoint, service, 5 * SECOND)
    }

    fn waiting(endpoint: transport::Endpoint, service: &'static str, timeout: Duration) -> Consumer {
        let options = transport::ClientOptions { timeout, retries: 0, ..Default::default() };
        Consumer { client: transport::Client::new(&zmq::Context::new(), endpoint, options), service }
    }

    fn ask(&mut self, request: &Request) -> Option<(Value, Vec<Delivered>)> {
        let frames = request.encode();
        let reply = self.client.request(self.service, &[&frames[0], &frames[1]]).ok()?;
        let answer: Value = serde_json::from_slice(&reply[0]).unwrap();
        let samples = reply.get(1).map(|f| Delivered::parse_all(f).unwrap()).unwrap_or_default();
        Some((answer, samples))
    }

    /// Fetches and acknowledges until `want` samples came (or the deadline); their seqs.
    fn drain(&mut self, name: &str, want: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        wait_for(&format!("{want} samples from consumer {name}"), 20 * SECOND, || {
            let fetch = Request::Fetch { name: name.into(), after: 0, max: 1000, wait_ms: 200, ack: None };
            let (answer, samples) = self.ask(&fetch).expect("an answer");
            let header: Fetched =
                serde_json::from_value(answer.clone()).unwrap_or_else(|_| panic!("{answer}"));
            seqs.extend(samples.iter().map(|s| s.sample["seq"].as_u64().unwrap()));
            self.ask(&Request::Ack { name: name.into(), pos: header.next }).expect("acknowledged");
            (seqs.len() >= want).then_some(())
        });
        seqs
    }
}

fn consumers_cli(hub: &HubProc, args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["consumers"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--broker", &hub.broker]);
    let out = hub_cli(&all);
    let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), answer, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `hub tap --durable NAME --json` as a process, and its stdout lines.
fn durable_tap(hub: &HubProc, name: &str) -> (Proc, Lines) {
    let mut cmd = std::process::Command::new(bin("hub"));
    cmd.args(["tap", "--durable", name, "--json", "--broker", &hub.broker]);
    let mut proc = Proc::spawn("durable tap", cmd);
    let lines = Lines::new(proc.take_stdout());
    (proc, lines)
}

fn seq_of(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON line: {line}"));
    v["payload"]["seq"].as_u64().unwrap_or_else(|| panic!("a sample: {line}"))
}

/// A durable tap killed with SIGKILL mid-stream resumes at its cursor:
/// every sample ingest accepted is printed, in order, repeats only around the kill.
#[test]
fn a_durable_tap_killed_mid_stream_resumes_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path(), "");
    let (ok, made, err) = consumers_cli(&hub, &["create", "trend", "--prefix", "org.plantd.Metric.pump-1."]);
    assert!(ok, "{err}");
    assert_eq!(made["policy"], "drop-oldest", "made by a client: it may not hold ingest back");
    let (mut tap, lines) = durable_tap(&hub, "trend");
    let mut first = Vec::new();
    for start in (1..=400).step_by(20) {
        send_acked(&hub, start..=start + 19);
        while let Some(line) = lines.next(Duration::from_millis(1)) {
            first.push(seq_of(&line));
        }
        if first.len() >= 100 {
            break;
        }
    }
    tap.signal(libc::SIGKILL);
    tap.wait_exit(10 * SECOND).expect("killed");
    let last_sent = first.iter().max().copied().unwrap_or(0).max(100);
    let rest = last_sent + 1..=last_sent + 100;
    send_acked(&hub, rest.clone());
    let (mut again, lines) = durable_tap(&hub, "trend");
    let mut second = Vec::new();
    wait_for("the restarted tap to reach the newest sample", 20 * SECOND, || {
        while let Some(line) = lines.next(Duration::from_millis(20)) {
            second.push(seq_of(&line));
        }
        (second.last() == Some(rest.end())).then_some(())
    });
    again.kill();
    for run in [&first, &second] {
        assert!(run.windows(2).all(|w| w[0] < w[1]), "in order within a run: {run:?}");
    }
    let seen: BTreeSet<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(seen, (1..=*rest.end()).collect(), "every accepted sample, none missed");
    let repeats = first.len() + second.len() - seen.len();
    assert!(repeats <= 1000, "repeats only of what was not yet acknowledged at the kill: {repeats}");
}

/// A `block` consumer that stops reading holds ingest back at its bound
/// (Retry, memory flat), and gets everything once it reads again.
#[test]
fn a_stalled_block_consumer_holds_ingest_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path(), "[[consumer]]\nname = \"slow\"\npolicy = \"block\"\nmax_records = 50\n");
    for start in (1..=50).step_by(10) {
        assert!(matches!(send_ingest(hub.endpoint(&hub.broker), start..=start + 9), Some(Reply::Ack { .. })));
    }
    let rss = || testkit::bench::rss_kib(hub.proc.pid());
    let before = rss();
    for _ in 0..200 {
        match send_ingest(hub.endpoint(&hub.broker), 51..=60) {
            Some(Reply::Retry { reason, .. }) => assert!(reason.contains("'slow'"), "{reason}"),
            other => panic!("at its bound the consumer holds ingest back: {other:?}"),
        }
    }
    assert!(rss() < before + 8 * 1024, "hub RSS {before} → {} KiB over 200 refused batches", rss());
    let (ok, shown, _) = consumers_cli(&hub, &["show", "slow"]);
    assert!(ok && shown["at_bounds"] == true && shown["backlog"]["records"] == 50, "{shown}");
    let mut reader = Consumer::new(hub.endpoint(&hub.broker));
    assert_eq!(reader.drain("slow", 50), (1..=50).collect::<Vec<_>>());
    send_acked(&hub, 51..=60);
    assert_eq!(reader.drain("slow", 10), (51..=60).collect::<Vec<_>>());
}

/// A `drop-oldest` consumer that stops reading does not hold ingest back:
/// its cursor skips ahead, counted.
#[test]
fn a_stalled_drop_oldest_consumer_skips_ahead_counted() {
    let dir = tempfile::tempdir().unwrap();
    let hub =
        start(dir.path(), "[[consumer]]\nname = \"lossy\"\npolicy = \"drop-oldest\"\nmax_records = 50\n");
    for start in (1..=100).step_by(10) {
        assert!(matches!(send_ingest(hub.endpoint(&hub.broker), start..=start + 9), Some(Reply::Ack { .. })));
    }
    let (_, shown, _) = consumers_cli(&hub, &["show", "lossy"]);
    assert_eq!(
        (shown["skipped"].as_u64(), shown["backlog"]["records"].as_u64()),
        (Some(50), Some(50)),
        "{shown}"
    );
    let text = http_get(&hub.http, "/metrics").1;
    assert_eq!(prometheus_value(&text, "plantd_consumer_skipped_total{consumer=\"lossy\"}"), Some(50));
    assert_eq!(Consumer::new(hub.endpoint(&hub.broker)).drain("lossy", 50), (51..=100).collect::<Vec<_>>());
}

/// A consumer idle past `inactive_after_s` is reported, and removed when its
/// policy says so: one forgotten consumer cannot hold a plant back unnoticed.
#[test]
fn inactive_consumers_are_reported_then_removed_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(
        dir.path(),
        "[[consumer]]\nname = \"idle\"\ninactive_after_s = 1\n\n[[consumer]]\nname = \"gone\"\ninactive_after_s = 1\nremove_when_inactive = true\n",
    );
    wait_for("the idle consumer to be reported and the other removed", 10 * SECOND, || {
        let (_, list, _) = consumers_cli(&hub, &["list"]);
        let names: Vec<&str> =
            list["consumers"].as_array()?.iter().filter_map(|c| c["name"].as_str()).collect();
        let idle = list["consumers"].as_array()?.iter().find(|c| c["name"] == "idle")?;
        (idle["inactive"] == true && !names.contains(&"gone")).then_some(())
    });
    let text = http_get(&hub.http, "/metrics").1;
    assert_eq!(prometheus_value(&text, "plantd_consumer_inactive{consumer=\"idle\"}"), Some(1));
    assert!(hub.proc.stderr().contains("consumer 'gone' has fetched and acknowledged nothing"));
}

/// With security: a viewer may consume what it may subscribe to, and only
/// its own consumers; an agent may not consume; block consumers are an
/// operator's; a stranger gets nothing.
#[test]
fn with_security_consumers_follow_subscribe_grants_and_owners() {
    let site = Site::new();
    let (viewer, other, pump, stranger) =
        (site.identity("grafana"), site.identity("scada"), site.identity("pump-1"), site.stranger("nobody"));
    let trend = site.identity("trend");
    let roles = "\"grafana\" = [\"viewer\"]\n\"scada\" = [\"viewer\"]\n\"pump-*\" = [\"agent\"]\n\"trend\" = [\"pump1-only\"]\n\n[security.roles.pump1-only]\ncall = [\"org.plantd.Consumer\"]\nsubscribe = { metric = [\"org.plantd.Metric.pump-1.\"] }";
    let hub = site.hub(roles, "");
    let mut grafana = Consumer::new(site.endpoint(&viewer, &hub.broker));
    let create = |name: &str, prefixes: &[&str]| {
        Request::Create(Spec {
            name: name.into(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            ..Spec::default()
        })
    };
    let (made, _) = grafana.ask(&create("g", &[])).unwrap();
    assert_eq!(made["owner"], "grafana", "{made}");
    // The agent sends samples; grafana's consumer has them.
    wait_for("a batch acknowledged", 10 * SECOND, || {
        matches!(send_ingest(site.endpoint(&pump, &hub.broker), 1..=5), Some(Reply::Ack { .. })).then_some(())
    });
    assert_eq!(grafana.drain("g", 5), [1, 2, 3, 4, 5]);

    let mut scada = Consumer::new(site.endpoint(&other, &hub.broker));
    for request in [
        Request::Fetch { name: "g".into(), after: 0, max: 10, wait_ms: 0, ack: None },
        Request::Ack { name: "g".into(), pos: 1_000_000 },
        Request::Delete { name: "g".into() },
    ] {
        let (answer, _) = scada.ask(&request).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("is grafana's"), "{answer}");
    }
    let block = Request::Create(Spec {
        policy: Some(proto::consumer::Policy::Block),
        ..Spec { name: "b".into(), ..Spec::default() }
    });
    assert!(grafana.ask(&block).unwrap().0["error"].as_str().unwrap().contains("block"));

    let mut limited = Consumer::new(site.endpoint(&trend, &hub.broker));
    let (refused, _) = limited.ask(&create("t2", &["org.plantd.Metric.pump-2."])).unwrap();
    assert!(refused["error"].as_str().unwrap().contains("may not subscribe"), "{refused}");
    let (allowed, _) = limited.ask(&create("t1", &["org.plantd.Metric.pump-1."])).unwrap();
    assert_eq!(allowed["name"], "t1", "{allowed}");
    assert!(hub.denials("trend", "subscribe") >= 1 && hub.denials("scada", "subscribe") >= 3);

    let mut agent = Consumer::new(site.endpoint(&pump, &hub.broker));
    assert_eq!(agent.client.request(proto::consumer::SERVICE, &[b"list"]).unwrap()[0].to_vec(), b"403");
    let mut nobody =
        Consumer::waiting(site.endpoint(&stranger, &hub.broker), proto::consumer::SERVICE, SECOND / 2);
    assert!(nobody.ask(&Request::List).is_none(), "a stranger gets nothing at all");

    let ops = Identity {
        name: "ops".into(),
        public: site.path().join("keys/ops.key"),
        secret: site.path().join("keys/ops.key_secret"),
    };
    let mut admin = Consumer::on(site.endpoint(&ops, &hub.broker), proto::consumer::ADMIN_SERVICE);
    assert_eq!(admin.ask(&Request::Delete { name: "g".into() }).unwrap().0["deleted"], true);
}

/// A pipeline taking ingest's journal and the metric bus records each
/// durable sample once (from the journal), not twice.
#[test]
fn a_pipeline_on_the_journal_and_the_bus_records_each_durable_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.jsonl");
    let hub = start(
        dir.path(),
        &format!(
            "[[pipeline]]\nname = \"all\"\ningest = true\nbus = [{{ name = \"metric\", prefixes = [\"org.plantd.Metric.\"] }}]\n[pipeline.record]\npath = \"{}\"\n",
            out.display()
        ),
    );
    let recorded = || -> Vec<Value> {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // The pipeline's bus subscription must be in place: a best-effort sample is heard.
    let ctx = zmq::Context::new();
    let live = transport::Publisher::connect(
        &ctx,
        hub.bus("metric").frontend.as_str(),
        proto::bus::Framing::TwoFrame,
    )
    .unwrap();
    let best_effort =
        ingest_samples("temp", [1]).remove(0).sample.to_json("pump-1", false, false).to_string();
    wait_for("a best-effort sample recorded from the bus", 10 * SECOND, || {
        live.publish(b"org.plantd.Metric.pump-1.temp", best_effort.as_bytes()).unwrap();
        recorded().iter().any(|l| l["durable"] == false).then_some(())
    });
    for start in (1..=14).step_by(7) {
        send_acked(&hub, start..=start + 6);
    }
    let durable = wait_for("the 14 durable samples recorded", 10 * SECOND, || {
        let durable: Vec<u64> =
            recorded().iter().filter(|l| l["durable"] == true).map(|l| l["seq"].as_u64().unwrap()).collect();
        (durable.len() >= 14).then_some(durable)
    });
    // Give a duplicate from the bus the time it would take to arrive, then count again.
    send_acked(&hub, 15..=15);
    wait_for("the marker recorded", 10 * SECOND, || {
        recorded().iter().any(|l| l["durable"] == true && l["seq"] == 15).then_some(())
    });
    let durable_now: Vec<u64> =
        recorded().iter().filter(|l| l["durable"] == true).map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(durable_now, (1..=15).collect::<Vec<_>>(), "each durable sample once: {durable:?}");
}

/// The documentation's pyzmq historian writer (tests/interop/historian.py,
/// quoted verbatim in docs/protocols.md) writes every durable sample once, and resumes.
#[test]
fn the_readme_historian_writes_every_sample_and_resumes() {
    let script = workspace_root().join("tests/interop/historian.py");
    let readme = std::fs::read_to_string(workspace_root().join("docs/protocols.md")).unwrap();
    let code = std::fs::read_to_string(&script).unwrap();
    assert!(readme.contains(&code), "docs/protocols.md quotes tests/interop/historian.py as it is");
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path(), "");
    let csv = dir.path().join("history.csv");
    let run = |count: &str| {
        let mut cmd = std::process::Command::new(python());
        cmd.arg(&script).args([hub.broker.as_str(), "historian", csv.to_str().unwrap(), count]);
        let out = output(&mut cmd);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let written = || -> Vec<u64> {
        let text = std::fs::read_to_string(&csv).unwrap_or_default();
        text.lines().map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect()
    };
    // The first run makes the consumer; until then ingest has nobody to keep samples for.
    let (ok, _, err) = consumers_cli(&hub, &["create", "historian", "--prefix", "org.plantd.Metric."]);
    assert!(ok, "{err}");
    send_acked(&hub, 1..=30);
    run("30");
    assert_eq!(written(), (1..=30).collect::<Vec<_>>());
    send_acked(&hub, 31..=40);
    run("10");
    assert_eq!(written(), (1..=40).collect::<Vec<_>>(), "resumed at its cursor");
}

/// Issue 20's storm: 300 simulated agents (`hub loadgen`), the hub killed
/// with SIGKILL mid-stream and started again, every agent reconnecting and
/// replaying at once. A durable consumer gets every acknowledged sample, in
/// per-agent order; a plain `hub tap` beside it says `missed` exactly when
/// (and as much as) it has gaps.
#[test]
fn a_reconnect_storm_after_a_hub_kill_loses_nothing_for_a_durable_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "[[consumer]]\nname = \"storm\"\nmax_records = 10000000\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let hub = HubProc::start_with(&args);
    let (mut durable, durable_lines) = durable_tap(&hub, "storm");
    let mut plain = {
        let mut cmd = std::process::Command::new(bin("hub"));
        cmd.args(["tap", "--json", "--bus", &hub.bus("metric").backend, "org.plantd.Metric."]);
        Proc::spawn("plain tap", cmd)
    };
    let plain_lines = Lines::new(plain.take_stdout());
    let mut generator = {
        let mut cmd = std::process::Command::new(bin("hub"));
        cmd.args(["loadgen", "--durable", "--json", "--broker", &hub.broker]);
        cmd.args([
            "--agents",
            "300",
            "--rate",
            "20",
            "--seconds",
            "6",
            "--drain-seconds",
            "40",
            "--timeout-ms",
            "1000",
        ]);
        Proc::spawn("loadgen", cmd)
    };
    let summary = Lines::new(generator.take_stdout());

    // Per agent, the seqs each tap printed, in the order printed.
    let mut by_durable: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut by_plain: std::collections::HashMap<(String, u64), Vec<u64>> = Default::default();
    let mut pump = |by_durable: &mut std::collections::HashMap<String, Vec<u64>>| {
        while let Some(line) = durable_lines.next(Duration::ZERO) {
            let v: Value = serde_json::from_str(&line).unwrap();
            let agent = v["payload"]["agent"].as_str().unwrap().to_string();
            by_durable.entry(agent).or_default().push(v["payload"]["seq"].as_u64().unwrap());
        }
        while let Some(line) = plain_lines.next(Duration::ZERO) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            let p = &v["payload"];
            if p["durable"] == true {
                let key = (p["agent"].as_str().unwrap().to_string(), p["epoch"].as_u64().unwrap());
                by_plain.entry(key).or_default().push(p["seq"].as_u64().unwrap());
            }
        }
    };
    wait_for("the fleet to be under way", 20 * SECOND, || {
        pump(&mut by_durable);
        (by_durable.values().map(Vec::len).sum::<usize>() >= 3000).then_some(())
    });
    // SIGKILL, and the hub back on the same endpoints and data a second later.
    let (ports, broker) = (hub.ports(), hub.broker.clone());
    let HubProc { proc: mut killed, data, .. } = hub;
    killed.signal(libc::SIGKILL);
    killed.wait_exit(5 * SECOND).expect("the hub dies on SIGKILL");
    let started = std::time::Instant::now();
    while started.elapsed() < SECOND {
        pump(&mut by_durable);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _hub = HubProc::start_with_ports(data, &broker, ports, &args);

    let status = generator.wait_exit(90 * SECOND).expect("loadgen ends");
    let summary: Value = serde_json::from_str(&summary.next(SECOND).expect("a summary")).unwrap();
    assert!(status.success(), "every sample acknowledged: {}", generator.stderr());
    let made: Vec<(String, u64)> = summary["per_agent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["agent"].as_str().unwrap().to_string(), a["samples"].as_u64().unwrap()))
        .collect();
    assert_eq!(made.len(), 300);
    let total: u64 = made.iter().map(|(_, n)| n).sum();
    wait_for("the durable consumer to have every acknowledged sample", 60 * SECOND, || {
        pump(&mut by_durable);
        let held = made.iter().filter(|(a, n)| by_durable.get(a).is_some_and(|s| s.iter().max() == Some(n)));
        (held.count() == made.len()).then_some(())
    });
    durable.kill();
    for (agent, n) in &made {
        let seqs = &by_durable[agent];
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(distinct, (1..=*n).collect(), "{agent}: every sample, none missing");
        // In per-agent order: repeats (what was not acknowledged at the kill) only go back once.
        let mut highest = 0;
        let mut back = 0;
        for &seq in seqs {
            if seq <= highest {
                back += 1;
            }
            highest = highest.max(seq);
        }
        assert!(back <= seqs.len() - distinct.len(), "{agent}: out of order beyond repeats: {seqs:?}");
    }

    // The plain tap: its total of missed samples is what it really lacks.
    plain.signal(libc::SIGINT);
    assert!(plain.wait_exit(10 * SECOND).is_some_and(|s| s.success()));
    pump(&mut by_durable);
    let gaps: u64 = by_plain
        .values()
        .map(|seqs| {
            let seen: BTreeSet<u64> = seqs.iter().copied().collect();
            let (first, last) = (*seen.first().unwrap(), *seen.last().unwrap());
            last - first + 1 - seen.len() as u64
        })
        .sum();
    let stderr = plain.stderr();
    let reported = stderr
        .lines()
        .find(|l| l.contains("durable samples in all"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "missed").nth(1)?.parse::<u64>().ok());
    match gaps {
        0 => assert!(!stderr.contains("missed"), "no gaps, nothing said: {stderr}"),
        n => assert_eq!(reported, Some(n), "the tap reports its gaps exactly: {stderr}"),
    }
    eprintln!("storm: {total} samples from 300 agents; the plain tap missed {gaps}");
}
