//! Pipelines in the hub, fed by ingest: the transform by config, recorder
//! rotation and retention, retries then dead letters and their replay, a
//! stuck sink pushing back to ingest with memory bounded, and a hub killed
//! mid-stream losing nothing. Batches go to `org.plantd.Ingest` as an
//! agent sends them, so each test knows exactly which samples were accepted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::ingest::{Reply, Sent};
use proto::sample::{Quality, Value as Reading};
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// A hub with `[[pipeline]]` tables `pipelines` (TOML).
fn start(dir: &Path, pipelines: &str) -> HubProc {
    let config = dir.join("hub.toml");
    std::fs::write(&config, pipelines).unwrap();
    HubProc::start_with(&["--config", config.to_str().unwrap()])
}

/// Sends until acknowledged (ingest may answer Retry while a pipeline is behind).
fn send_acked(hub: &HubProc, samples: Vec<Sent>) {
    wait_for("the batch to be acknowledged", 10 * SECOND, || {
        match send_batch(hub.endpoint(&hub.broker), samples.clone()) {
            Some(Reply::Ack { .. }) => Some(()),
            _ => None,
        }
    });
}

/// Every JSON line of the recorder at `path` and its rotated files.
fn recorded(path: &Path) -> Vec<Value> {
    let mut files = vec![path.to_path_buf()];
    files.extend((1..100).map(|n| rotated(path, n)).take_while(|p| p.exists()));
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            // A line being written as we read has no newline yet: not counted until it has.
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            complete.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).expect("every recorded line is JSON"))
        .collect()
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

fn seqs(lines: &[Value]) -> BTreeSet<u64> {
    lines.iter().filter_map(|l| l["seq"].as_u64()).collect()
}

/// A recorder path whose directory is a file: every write fails until that file is removed.
/// (The file, the recorder's path.)
fn blocked_recorder(dir: &Path) -> (PathBuf, PathBuf) {
    let blocked = dir.join("blocked");
    std::fs::write(&blocked, "not a directory").unwrap();
    let out = blocked.join("out.jsonl");
    (blocked, out)
}

/// `hub pipeline status`'s JSON for pipeline `name`.
fn status(hub: &HubProc, name: &str) -> Value {
    let reply = hub.try_call("org.plantd.Hub", &["pipeline"], 2 * SECOND).expect("org.plantd.Hub answers");
    let all: Value = serde_json::from_str(&reply[0]).unwrap();
    let found = all["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name);
    found.cloned().unwrap_or_else(|| panic!("no pipeline {name} in {all}"))
}

fn stage<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["stages"].as_array().unwrap().iter().find(|s| s["stage"] == name).expect("the stage is listed")
}

/// `hub dlq ARGS` against `hub`, its JSON output.
fn dlq(hub: &HubProc, args: &[&str]) -> Value {
    let mut all = vec!["dlq"];
    all.extend(args);
    all.extend(["--broker", &hub.broker]);
    let out = hub_cli(&all);
    assert!(out.status.success(), "hub {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("hub dlq prints JSON")
}

#[test]
fn transform_by_config_and_recorder_rotation_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/samples.jsonl");
    let hub = start(
        dir.path(),
        &format!(
            r#"
[[pipeline]]
name = "archive"
ingest = true
workers = 2
[pipeline.transform]
keep = [{{ field = "channel", any = ["temp*"] }}]
drop = [{{ field = "quality", any = ["bad"] }}]
convert = [{{ from = "degC", to = "degF" }}]
rename = {{ value = "v" }}
[pipeline.record]
path = "{}"
max_bytes = 4096
keep = 2
"#,
            out.display()
        ),
    );
    let mut batch = ingest_samples("temp", 1..=3);
    batch.push(ingest_sample("flow", 4, Reading::Number(1.0), "L/min", Quality::Good));
    batch.push(ingest_sample("temp", 5, Reading::Number(5.0), "degC", Quality::Bad));
    send_acked(&hub, batch);
    let lines = wait_for("three transformed lines", 10 * SECOND, || {
        let lines = recorded(&out);
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(seqs(&lines), BTreeSet::from([1, 2, 3]), "flow and the bad sample are filtered out");
    let first = lines.iter().find(|l| l["seq"] == 1).unwrap();
    assert_eq!((first["v"].as_f64(), first["unit"].as_str()), (Some(33.8), Some("degF")), "{first}");
    assert!(first.get("value").is_none(), "renamed");
    wait_for("the status to count the filtered", 5 * SECOND, || {
        let s = status(&hub, "archive");
        (stage(&s, "transform")["filtered"] == 2 && stage(&s, "record")["out"] == 3).then_some(())
    });

    let table = hub_cli(&["pipeline", "status", "--broker", &hub.broker]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("archive: sent 3, acked 3") || table.starts_with("archive: sent 5, acked 5"),
        "{table}"
    );
    assert!(table.contains("\n  transform 2 ") && table.contains("\n  record "), "{table}");

    // Rotation by size, retention by count: ~150 bytes a line, 4 KiB a file, two rotated files kept.
    for chunk in (10..400u64).collect::<Vec<_>>().chunks(130) {
        send_acked(&hub, ingest_samples("temp", chunk.iter().copied()));
    }
    wait_for("every line recorded", 10 * SECOND, || seqs(&recorded(&out)).contains(&399).then_some(()));
    assert!(rotated(&out, 1).exists() && rotated(&out, 2).exists(), "rotated by size");
    assert!(!rotated(&out, 3).exists(), "keep = 2");
    for f in [out.clone(), rotated(&out, 1), rotated(&out, 2)] {
        assert!(std::fs::metadata(&f).unwrap().len() <= 4096 + 400, "{} stays near max_bytes", f.display());
    }
    let kept = seqs(&recorded(&out));
    assert!(kept.contains(&399) && !kept.contains(&1), "the newest kept, the oldest rotated away");
}

#[test]
fn recorder_rotates_by_time_and_removes_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timed.jsonl");
    let hub = start(
        dir.path(),
        &format!(
            "[[pipeline]]\nname = \"timed\"\ningest = true\n[pipeline.record]\npath = \"{}\"\nrotate_s = 1\nkeep = 50\nretain_s = 1\n",
            out.display()
        ),
    );
    // A sample every 100 ms for 4 s: four rotations by time; rotated files older than 1 s go.
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < 4 * SECOND {
        seq += 1;
        send_acked(&hub, ingest_samples("temp", [seq]));
        wait_for("the sample recorded", 5 * SECOND, || seqs(&recorded(&out)).contains(&seq).then_some(()));
        // Pacing, not synchronisation: rotation by time needs time to pass.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rotated(&out, 1).exists(), "rotated by time");
    let files = (1..50).take_while(|&n| rotated(&out, n).exists()).count();
    assert!(files <= 2, "rotated files older than retain_s are removed: {files} kept");
    assert!(seqs(&recorded(&out)).contains(&seq));
}

#[test]
fn failures_retry_then_dead_letter_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (blocked, out) = blocked_recorder(dir.path());
    let hub = start(
        dir.path(),
        &format!(
            r#"
[[pipeline]]
name = "strict"
ingest = true
max_attempts = 3
retry_min_ms = 10
retry_max_ms = 20
[pipeline.transform]
convert = [{{ from = "degC", to = "degF" }}]
rename = {{ value = "v" }}
[pipeline.record]
path = "{}"
"#,
            out.display()
        ),
    );
    // A number the transform converts (then the recorder fails), and text it cannot convert.
    send_acked(&hub, vec![ingest_sample("temp", 1, Reading::Number(100.0), "degC", Quality::Good)]);
    send_acked(&hub, vec![ingest_sample("temp", 2, Reading::Text("hot".into()), "degC", Quality::Good)]);
    let letters = wait_for("two dead letters", 10 * SECOND, || {
        let list = dlq(&hub, &["list"]);
        let letters = list["letters"].as_array().cloned().unwrap_or_default();
        (letters.len() == 2).then_some(letters)
    });
    let by_stage =
        |s: &str| letters.iter().find(|l| l["stage"] == s).unwrap_or_else(|| panic!("{letters:?}"));
    assert_eq!(by_stage("transform")["attempts"], 3);
    assert!(by_stage("transform")["failure"].as_str().unwrap().contains("not a number"));
    assert_eq!(by_stage("record")["attempts"], 3);
    let id = by_stage("record")["id"].as_u64().unwrap().to_string();
    assert_eq!(dlq(&hub, &["show", &id])["body"]["v"], 212.0, "kept as the failing stage got it");
    let s = status(&hub, "strict");
    assert_eq!(
        (stage(&s, "transform")["failed"].as_u64(), stage(&s, "transform")["retried"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(stage(&s, "record")["dead_lettered"], 1);
    assert_eq!(s["dead_letters"], 2);
    let metrics = http_get(&hub.http, "/metrics").1;
    let series = "plantd_pipeline_dead_lettered_total{pipeline=\"strict\",stage=\"record\"}";
    assert_eq!(prometheus_value(&metrics, series), Some(1), "{metrics}");

    // Fixed: replay both. The recorded one re-enters at the recorder (not converted twice);
    // the text fails the transform again and becomes a new letter.
    std::fs::remove_file(&blocked).unwrap();
    assert_eq!(dlq(&hub, &["replay", "--all"])["replaying"], 2);
    let lines = wait_for("the replayed sample recorded", 10 * SECOND, || {
        let lines = recorded(&out);
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["seq"].as_u64(), lines[0]["v"].as_f64()), (Some(1), Some(212.0)));
    let left = wait_for("the replayed letters to leave the store", 10 * SECOND, || {
        let left = dlq(&hub, &["list"])["letters"].as_array().cloned().unwrap_or_default();
        (left.len() == 1 && left[0]["replay"] == false).then_some(left)
    });
    assert_eq!(left[0]["stage"], "transform", "failed again: a new letter");
    assert_eq!(dlq(&hub, &["purge", "--older-than", "1h"])["purged"], 0);
    assert_eq!(dlq(&hub, &["purge"])["purged"], 1);
}

#[test]
fn a_stuck_sink_pushes_back_to_ingest_with_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (blocked, out) = blocked_recorder(dir.path());
    let hub = start(
        dir.path(),
        &format!(
            "[[pipeline]]\nname = \"slow\"\ningest = true\nwindow = 8\nmax_attempts = 1000000\nretry_min_ms = 50\nretry_max_ms = 100\nmax_backlog_records = 200\n[pipeline.record]\npath = \"{}\"\n",
            out.display()
        ),
    );
    // The sink cannot write: it holds its window, the source waits, the journal fills, ingest says Retry.
    let (mut accepted, mut seq) = (0u64, 0u64);
    let refused = wait_for("ingest to answer Retry", 20 * SECOND, || {
        match send_batch(hub.endpoint(&hub.broker), ingest_samples("temp", seq + 1..=seq + 50)) {
            Some(Reply::Ack { accepted: n, .. }) => {
                accepted += u64::from(n);
                seq += 50;
                None
            }
            Some(Reply::Retry { reason, .. }) => Some(reason),
            _ => None,
        }
    });
    assert!(refused.contains("journal is full for consumer 'pipeline.slow'"), "{refused}");
    assert!(accepted <= 200 + 50, "the journal's bound: {accepted} accepted");
    let s = status(&hub, "slow");
    assert!(stage(&s, "record")["queued"].as_u64().unwrap() <= 8, "{s}");
    assert!(s["source"]["in_flight"].as_u64().unwrap() <= 8, "{s}");
    assert!(s["source"]["waited"].as_u64().unwrap() > 0, "the source waited: {s}");
    let metrics = http_get(&hub.http, "/metrics").1;
    let gauge =
        |series: &str| prometheus_value(&metrics, series).unwrap_or_else(|| panic!("{series} in {metrics}"));
    assert_eq!(gauge("plantd_pipeline_max_backlog_records{pipeline=\"slow\"}"), 200, "the bound, visible");
    assert!(gauge("plantd_pipeline_journal_backlog{pipeline=\"slow\"}") >= 200 - 8);
    assert!(gauge("plantd_pipeline_queue_depth{pipeline=\"slow\",stage=\"record\"}") <= 8);
    // Keep pushing: nothing more is taken, and the hub's memory stays put.
    let rss = testkit::bench::rss_kib(hub.proc.pid());
    for _ in 0..100 {
        seq += 50;
        assert!(matches!(
            send_batch(hub.endpoint(&hub.broker), ingest_samples("temp", seq - 49..=seq)),
            Some(Reply::Retry { .. })
        ));
    }
    let grown = testkit::bench::rss_kib(hub.proc.pid()).saturating_sub(rss);
    assert!(grown < 8 * 1024, "the hub grew {grown} KiB while refusing 5000 samples");

    // Unblocked: everything accepted reaches the file, nothing lost.
    std::fs::remove_file(&blocked).unwrap();
    let lines = wait_for("every accepted sample recorded", 20 * SECOND, || {
        let lines = recorded(&out);
        (seqs(&lines).len() as u64 >= accepted).then_some(lines)
    });
    assert_eq!(seqs(&lines), (1..=accepted).collect::<BTreeSet<_>>());
}

/// SIGKILL, then a restart on the same data directory and ports.
fn crash_and_restart(hub: HubProc, args: &[&str]) -> HubProc {
    let (ports, broker) = (hub.ports(), hub.broker.clone());
    let HubProc { mut proc, data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(5 * SECOND).expect("the hub dies on SIGKILL");
    HubProc::start_with_ports(data, &broker, ports, args)
}

#[test]
fn a_hub_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (blocked, out) = blocked_recorder(dir.path());
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[pipeline]]\nname = \"kept\"\ningest = true\nworkers = 2\nmax_attempts = 1000000\nretry_min_ms = 20\nretry_max_ms = 50\n[pipeline.transform]\nconvert = [{{ from = \"degC\", to = \"K\" }}]\n[pipeline.record]\npath = \"{}\"\n",
            out.display()
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut hub = HubProc::start_with(&args);

    // Killed for certain with messages in the stages' hands: the recorder cannot write yet.
    for from in (1..=1000).step_by(100) {
        send_acked(&hub, ingest_samples("temp", from..from + 100));
    }
    wait_for("the stages to hold messages", 5 * SECOND, || {
        let s = status(&hub, "kept");
        (s["source"]["in_flight"].as_u64() > Some(0)).then_some(())
    });
    hub = crash_and_restart(hub, &args);
    std::fs::remove_file(&blocked).unwrap();

    // Killed again while lines are being written, right after ingest accepted a batch.
    let total = 5000u64;
    let mut sent = 1000u64;
    let mut killed = false;
    while sent < total {
        match send_batch(hub.endpoint(&hub.broker), ingest_samples("temp", sent + 1..=sent + 500)) {
            Some(Reply::Ack { .. }) => sent += 500,
            _ => continue,
        }
        if !killed && sent >= 3000 {
            killed = true;
            hub = crash_and_restart(hub, &args);
        }
    }
    let lines = wait_for("every accepted sample recorded", 20 * SECOND, || {
        let lines = recorded(&out);
        (seqs(&lines).len() as u64 == total).then_some(lines)
    });
    assert_eq!(seqs(&lines), (1..=total).collect::<BTreeSet<_>>(), "nothing lost");
    assert!(
        lines.len() as u64 >= total,
        "at-least-once: a repeat is allowed, told apart by (agent, epoch, seq)"
    );
    assert!(lines.iter().all(|l| l["unit"] == "K"), "each converted once");
    drop(hub);
}

#[test]
fn check_config_names_the_bad_pipeline_field() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        hub_cli(&["check-config", path.to_str().unwrap()])
    };
    let good = "[[pipeline]]\nname = \"a\"\ningest = true\n[pipeline.record]\npath = \"/tmp/a.jsonl\"\n";
    let out = check(good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 pipeline(s)"));
    let bad = [
        (good.replace("ingest = true", "ingest = true\nwindow = 0"), "pipeline.window"),
        (
            good.replace(
                "ingest = true",
                "ingest = true\n[[pipeline.transform.convert]]\nfrom = \"degC\"\nto = \"furlong\"",
            ),
            "pipeline.transform.convert",
        ),
        (good.replace("ingest = true", "bus = [{ name = \"nope\" }]"), "pipeline.bus.name"),
        (good.replace("ingest = true", "ingest = true\nworkrs = 2"), "workrs"),
    ];
    for (text, field) in bad {
        let out = check(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {stderr}");
        assert!(stderr.contains(field), "names {field}: {stderr}");
    }
}

#[test]
fn bus_messages_feed_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let hub = start(
        dir.path(),
        &format!(
            "[[pipeline]]\nname = \"events\"\nbus = [{{ name = \"event\", prefixes = [\"org.plantd.Event.\"] }}]\n[pipeline.record]\npath = \"{}\"\n",
            out.display()
        ),
    );
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.connect(&hub.bus("event").frontend).unwrap();
    // PUB/SUB: publish until the pipeline's subscription has reached the bus (the bus is best effort).
    let lines = wait_for("an event recorded", 10 * SECOND, || {
        publisher.send_multipart([&b"org.plantd.Event.door"[..], br#"{"open":true}"#], 0).unwrap();
        publisher.send_multipart([&b"org.plantd.Other.x"[..], br#"{"skip":true}"#], 0).unwrap();
        let lines = recorded(&out);
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(lines[0], serde_json::json!({"open": true}));
    assert!(lines.iter().all(|l| l.get("skip").is_none()), "only the prefixes taken");
}

#[test]
fn with_security_only_an_operator_manages_dead_letters() {
    let site = Site::new();
    let viewer = site.identity("grafana");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = format!(
        "[[pipeline]]\nname = \"p\"\ningest = true\n[pipeline.record]\npath = \"{}\"\n",
        out.display()
    );
    let hub = site.hub("\"grafana\" = [\"viewer\"]", &pipeline);
    let as_viewer = |service: &str, command: &str| {
        call(site.endpoint(&viewer, &hub.broker), proto::mdp::Dialect::Rfc7, service, &[command], 2 * SECOND)
    };
    let status = as_viewer("org.plantd.Hub", "pipeline").expect("the hub answers a viewer");
    assert!(status[0].contains("\"name\":\"p\""), "a viewer sees the status: {status:?}");
    assert_eq!(
        as_viewer("org.plantd.Hub.Dlq", "dlq purge").unwrap(),
        ["403"],
        "nor purge nor replay for a viewer"
    );
    let reply = hub
        .try_call("org.plantd.Hub.Dlq", &["dlq list"], 2 * SECOND)
        .expect("an operator's call is answered");
    assert_eq!(reply[0], r#"{"letters":[]}"#);
}
