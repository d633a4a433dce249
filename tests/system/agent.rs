//! The agent and the hub as real processes: durable samples through hub
//! crashes, outages and agent crashes; bounded outbox; damaged records; the
//! field tools; remote control through the hub.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// `n` durable ramp channels sampled every `period_ms`.
fn channels(n: usize, period_ms: u64) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[channel]]\nname = \"c{i}\"\nperiod_ms = {period_ms}\ndriver = {{ kind = \"ramp\" }}\n\n"
            )
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(id: &str, broker: &str, bus: &str, body: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = agent_config(dir.path(), id, broker, bus, body);
        Setup { dir, config }
    }

    fn data(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}-data"))
    }
}

fn seq_of(status: &Value, field: &str) -> Option<(u64, u64)> {
    let v = &status["outbox"][field];
    Some((v[0].as_u64()?, v[1].as_u64()?))
}

/// Waits until the outbox has (almost) drained; returns (epoch, seq) such
/// that every durable sample up to it has been acknowledged.
fn wait_drained(data: &Path, timeout: Duration) -> (u64, u64) {
    wait_for_status(data, "the outbox to drain", timeout, |s| {
        let records = s["outbox"]["records"].as_u64()?;
        let (epoch, last) = seq_of(s, "last_appended")?;
        (s["link"]["state"] == "up" && records <= 20 && last > records).then_some((epoch, last - records))
    })
}

/// Checks that `seen` holds every durable seq 1..=upto of `epoch`, in order
/// per channel; returns the number of repeats (published twice).
fn assert_complete(seen: &[Seen], epoch: u64, upto: u64) -> usize {
    let mut firsts = HashSet::new();
    let mut repeats = 0;
    let mut last_per_channel: BTreeMap<&str, u64> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.durable && s.epoch == epoch) {
        if !firsts.insert(s.seq) {
            repeats += 1;
            continue;
        }
        let last = last_per_channel.entry(&s.channel).or_insert(0);
        assert!(s.seq > *last, "channel {} went back from {} to {}", s.channel, last, s.seq);
        *last = s.seq;
    }
    let missing: Vec<u64> = (1..=upto).filter(|q| !firsts.contains(q)).collect();
    assert!(
        missing.is_empty(),
        "epoch {epoch}: {} of {upto} samples missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    repeats
}

fn wait_complete(collector: &Collector, epoch: u64, upto: u64) {
    wait_for("every acknowledged sample on the bus", 30 * SECOND, || {
        let seen = collector.durable();
        let have: HashSet<u64> = seen.iter().filter(|s| s.epoch == epoch).map(|s| s.seq).collect();
        (1..=upto).all(|q| have.contains(&q)).then_some(())
    });
}

#[test]
fn hub_killed_and_restarted_loses_no_durable_sample() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.k1.");
    let body = format!("[uplink]\nlive_window_ms = 300\nbackoff_max_ms = 500\n\n{}", channels(2, 20));
    let setup = Setup::new("k1", &hub.broker, &metric.frontend, &body);
    let data = setup.data("k1");
    let _agent = agent_run(&setup.config);
    wait_for("live durable samples", 20 * SECOND, || (collector.durable().len() >= 40).then_some(()));

    let (ports, broker) = (hub.ports(), hub.broker.clone());
    let HubProc { mut proc, data: hub_data, .. } = hub;
    proc.signal(libc::SIGKILL);
    proc.wait_exit(10 * SECOND).expect("SIGKILL ends the hub");
    wait_for_status(&data, "the agent to see the hub gone", 20 * SECOND, |s| {
        (s["link"]["state"] == "down").then_some(())
    });
    wait_for_status(&data, "a backlog", 20 * SECOND, |s| {
        (s["outbox"]["records"].as_u64()? >= 60).then_some(())
    });
    let _hub = HubProc::start_with_ports(hub_data, &broker, ports, &[]);

    let (epoch, upto) = wait_drained(&data, 60 * SECOND);
    wait_complete(&collector, epoch, upto);
    let seen = collector.durable();
    let repeats = assert_complete(&seen, epoch, upto);
    // A hub killed between publishing a batch and persisting its watermark
    // publishes that batch again: at most one batch, and usually none.
    assert!(repeats <= 500, "{repeats} samples published twice");
    assert!(seen.iter().any(|s| s.historical), "replayed samples are marked historical");
    assert!(seen.iter().take(20).all(|s| !s.historical), "live samples are not historical");
}

#[test]
fn a_wiped_data_dir_gets_a_fresh_epoch_and_the_hub_takes_every_new_sample() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.w1.");
    let setup = Setup::new("w1", &hub.broker, &metric.frontend, &channels(1, 20));
    let data = setup.data("w1");
    let mut epochs = Vec::new();
    for _ in 0..2 {
        let mut agent = agent_run(&setup.config);
        let epoch = wait_for_status(&data, "the agent's epoch", 20 * SECOND, |s| s["epoch"].as_u64());
        wait_complete(&collector, epoch, 30);
        agent.signal(libc::SIGTERM);
        agent.wait_exit(20 * SECOND).expect("the agent stops");
        // Everything the agent knew is gone: store, outbox, local state.
        std::fs::remove_dir_all(&data).unwrap();
        epochs.push(epoch);
    }
    assert_ne!(epochs[0], epochs[1], "an epoch came round again");
    // The second run's samples 1..=30 were all taken: none mistaken for repeats.
    let text = http_get(&hub.http, "/metrics").1;
    assert_eq!(prometheus_value(&text, "plantd_ingest_samples_duplicate_total"), Some(0), "{text}");
}

#[test]
fn after_an_outage_the_backlog_is_replayed_in_full_and_paced() {
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    let rate = 400;
    let body = format!(
        "[uplink]\nreplay_rate = {rate}\nbatch_records = 50\nlive_window_ms = 500\nbackoff_max_ms = 300\n\n{}",
        channels(2, 10)
    );
    let setup = Setup::new("k2", &broker, &metric.frontend, &body);
    let data = setup.data("k2");
    let _agent = agent_run(&setup.config);
    let backlog = wait_for_status(&data, "a backlog while the hub is down", 30 * SECOND, |s| {
        let r = s["outbox"]["records"].as_u64()?;
        (r >= 700).then_some(r)
    });
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.k2.");
    let _hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    let (epoch, upto) = wait_drained(&data, 60 * SECOND);
    wait_complete(&collector, epoch, upto);
    let seen = collector.durable();
    assert_eq!(assert_complete(&seen, epoch, upto), 0);
    // Paced: at most one second's burst plus one second of rate (plus a batch)
    // in the first second, although the whole backlog was waiting.
    let first = seen[0].at;
    let in_first_second = seen.iter().filter(|s| s.at < first + SECOND).count() as u64;
    assert!(in_first_second <= 2 * rate + 50, "{in_first_second} samples in the first second of replay");
    let took = seen.iter().map(|s| s.at).max().unwrap() - first;
    assert!(
        took.as_secs_f64() >= (backlog as f64 - rate as f64) / rate as f64 * 0.8,
        "a backlog of {backlog} replayed in {took:?}"
    );
    assert!(seen.iter().filter(|s| s.historical).count() as u64 >= backlog / 2);
}

#[test]
fn a_backlog_drains_with_batches_in_flight_every_sample_once_and_in_order() {
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    let body = format!(
        "[uplink]\nreplay_rate = 1000000\nbatch_records = 100\nlive_window_ms = 500\nbackoff_max_ms = 300\n\n{}",
        channels(6, 10)
    );
    let setup = Setup::new("p1", &broker, &metric.frontend, &body);
    let data = setup.data("p1");
    let _agent = agent_run(&setup.config);
    wait_for_status(&data, "a backlog while the hub is down", 30 * SECOND, |s| {
        (s["outbox"]["records"].as_u64()? >= 2000).then_some(())
    });
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.p1.");
    let hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    let (epoch, upto) = wait_drained(&data, 60 * SECOND);
    wait_complete(&collector, epoch, upto);
    // In order per channel, none missing, none twice: no batch was taken before the one it follows.
    assert_eq!(assert_complete(&collector.durable(), epoch, upto), 0, "samples published twice");
    let text = http_get(&hub.http, "/metrics").1;
    let pipelined = prometheus_value(&text, "plantd_ingest_batches_pipelined_total").unwrap_or(0);
    assert!(pipelined > 0, "the backlog went one batch at a time:\n{text}");
    let out_of_order = prometheus_value(&text, "plantd_ingest_batches_out_of_order_total").unwrap_or(0);
    eprintln!("{pipelined} batches sent while another was in flight, {out_of_order} of them sent again");
}

#[test]
fn agent_killed_mid_load_delivers_everything_it_had_flushed() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.k3.");
    let body = format!("[outbox]\nflush_interval_ms = 100\n\n{}", channels(2, 10));
    let setup = Setup::new("k3", &hub.broker, &metric.frontend, &body);
    let data = setup.data("k3");
    let mut agent = agent_run(&setup.config);
    let (epoch, flushed) = wait_for_status(&data, "200 durable samples on disk", 30 * SECOND, |s| {
        let (e, q) = seq_of(s, "durable")?;
        (q >= 200).then_some((e, q))
    });
    agent.signal(libc::SIGKILL);
    agent.wait_exit(10 * SECOND).expect("SIGKILL ends the agent");
    let _agent = agent_run(&setup.config);
    wait_for_status(&data, "the restarted agent", 20 * SECOND, |s| {
        (s["epoch"].as_u64()? != epoch).then_some(())
    });
    wait_complete(&collector, epoch, flushed);
    assert_eq!(assert_complete(&collector.durable(), epoch, flushed), 0);
    wait_for("samples of the new epoch", 20 * SECOND, || {
        collector.durable().iter().any(|s| s.epoch != epoch).then_some(())
    });
}

#[test]
fn a_full_outbox_drops_the_oldest_with_exact_counts() {
    // No hub at all: nothing leaves the outbox.
    let body = format!("[outbox]\nmax_records = 50\n\n{}", channels(1, 10));
    let setup = Setup::new("k4", &free_endpoint(), &free_endpoint(), &body);
    let data = setup.data("k4");
    let _agent = agent_run(&setup.config);
    let status = wait_for_status(&data, "200 samples", 30 * SECOND, |s| {
        (seq_of(s, "last_appended")?.1 >= 200).then(|| s.clone())
    });
    let (_, appended) = seq_of(&status, "last_appended").unwrap();
    assert_eq!(status["outbox"]["records"], 50);
    assert_eq!(status["outbox"]["dropped"].as_u64().unwrap(), appended - 50);
    assert_eq!(status["link"]["state"], "down");
}

#[test]
fn a_damaged_record_is_quarantined_counted_and_the_rest_delivered() {
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    let setup = Setup::new("k5", &broker, &metric.frontend, &channels(1, 20));
    let data = setup.data("k5");
    let mut agent = agent_run(&setup.config);
    let epoch = wait_for_status(&data, "20 samples", 20 * SECOND, |s| {
        let (epoch, seq) = seq_of(s, "durable")?;
        (seq >= 20).then_some(epoch)
    });
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(10 * SECOND).is_some_and(|s| s.success()));

    // Damage one record's bytes, as bit rot would: the fifth record of the
    // outbox log is seq 5 (one durable channel).
    {
        use agent::outbox::record::{self, Parsed};
        let outbox = data.join("outbox");
        let segment = std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .min()
            .expect("a segment");
        let mut bytes = std::fs::read(&segment).unwrap();
        let mut at = 0;
        for _ in 0..4 {
            let Parsed::Record { len, .. } = record::parse(&bytes[at..]) else { panic!("record at {at}") };
            at += len;
        }
        let Parsed::Record { len, .. } = record::parse(&bytes[at..]) else { panic!("record 5") };
        let sample: proto::sample::Sample = record::decode(&bytes[at + record::HEADER..at + len]).unwrap();
        assert_eq!((sample.epoch, sample.seq), (epoch, 5));
        bytes[at + record::HEADER + 3] ^= 0x55;
        std::fs::write(&segment, bytes).unwrap();
    }
    let config = setup.config.to_str().unwrap();
    let verify = agent_cli(&["store", "--config", config, "verify"]);
    assert_eq!(verify.status.code(), Some(1), "verify fails on damage");
    assert_eq!(serde_json::from_slice::<Value>(&verify.stdout).unwrap()["damaged"], 1);

    let collector = Collector::start(&metric.backend, "org.plantd.Metric.k5.");
    let _hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    let _agent = agent_run(&setup.config);
    let status = wait_for_status(&data, "the damaged record quarantined", 30 * SECOND, |s| {
        (s["outbox"]["quarantined"] == 1 && s["epoch"].as_u64()? != epoch).then(|| s.clone())
    });
    assert_eq!(status["store_errors"], 0);
    wait_for("the intact epoch-1 samples", 30 * SECOND, || {
        let have: HashSet<u64> =
            collector.durable().iter().filter(|s| s.epoch == epoch).map(|s| s.seq).collect();
        (1..=20).filter(|&q| q != 5).all(|q| have.contains(&q)).then_some(have)
    });
    assert!(!collector.durable().iter().any(|s| s.epoch == epoch && s.seq == 5));
}

#[test]
fn bad_config_is_a_clear_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let out = agent_cli(&["run", "--config", path.to_str().unwrap()]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run("[uplink]\nbatch_record = 5\n").contains("batch_record"));
    assert!(run("id = \"x\"\nboard = \"rpi9\"\n").contains("`board` 'rpi9' is not a board profile"));
    let err = run("id = \"x\"\n[[channel]]\nname = \"c0\"\nperiod_ms = 1\ndriver = { kind = \"ramp\" }\n");
    assert!(err.contains("channel[0] ('c0').period_ms"), "{err}");
    let err = run("id = \"x\"\n[[channel]]\nname = \"c0\"\ndriver = { kind = \"laser\" }\n");
    assert!(err.contains("laser"), "{err}");
}

#[test]
fn agent_check_passes_against_a_hub_and_fails_without_one() {
    let hub = HubProc::start();
    let setup = Setup::new("k7", &hub.broker, &hub.bus("metric").frontend, "");
    let check = |config: &Path| {
        let out = agent_cli(&["check", "--json", "--config", config.to_str().unwrap()]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let by_name: BTreeMap<String, String> = list
            .iter()
            .map(|c| (c["check"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
            .collect();
        (out.status.code(), by_name, list)
    };
    let (code, checks, list) = check(&setup.config);
    assert_eq!(code, Some(0), "{list:?}");
    for name in ["config", "data dir", "store", "hub tcp", "hub mdp", "bus", "clock order"] {
        assert_eq!(checks[name], "ok", "{name}: {list:?}");
    }
    assert!(
        list.iter().find(|c| c["check"] == "hub mdp").unwrap()["ms"].as_f64().is_some(),
        "round trip is timed"
    );

    let away = Setup::new("k7b", &free_endpoint(), &free_endpoint(), "");
    let (code, checks, _) = check(&away.config);
    assert_eq!(code, Some(1));
    assert_eq!((checks["hub tcp"].as_str(), checks["bus"].as_str()), ("fail", "fail"));
    let text = agent_cli(&["check", "--config", away.config.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).lines().any(|l| l.starts_with("FAIL  hub tcp")));
}

#[test]
fn agent_once_prints_every_channel_and_reports_faults() {
    let root = tempfile::tempdir().unwrap();
    let zone = root.path().join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("temp"), "41500\n").unwrap();
    let top = format!("board = \"linux\"\nboard_root = \"{}\"\n", root.path().display());
    let channels = "[[channel]]\nname = \"cpu\"\ndriver = { kind = \"thermal-zone\" }\n\n[[channel]]\nname = \"gone\"\ndriver = { kind = \"ds18b20\" }\n";
    // agent_config writes board = "sim" and a [hub] table: top-level keys first, channels last.
    let setup = Setup::new("k8", &free_endpoint(), &free_endpoint(), "");
    let text = std::fs::read_to_string(&setup.config).unwrap().replace("board = \"sim\"\n", "");
    std::fs::write(&setup.config, format!("{top}{text}\n{channels}")).unwrap();
    let out = agent_cli(&["once", "--config", setup.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a faulty channel fails `once`");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"channel": "cpu", "value": 41.5, "unit": "degC", "delivery": "durable"}));
    assert!(lines[1]["error"].as_str().unwrap().contains("w1"), "{}", lines[1]);

    // Running, the fault shows in status and clears when the file is fixed.
    let data = setup.data("k8");
    let _agent = agent_run(&setup.config);
    wait_for_status(&data, "the fault in status", 20 * SECOND, |s| {
        s["channels"]["gone"]["fault"].as_str().map(|_| ())
    });
    let sensor = root.path().join("sys/bus/w1/devices/28-0001");
    std::fs::create_dir_all(&sensor).unwrap();
    std::fs::write(sensor.join("w1_slave"), "aa : crc=aa YES\naa t=19250\n").unwrap();
    wait_for_status(&data, "the fault to clear", 20 * SECOND, |s| {
        (s["channels"]["gone"]["fault"].is_null() && s["channels"]["gone"]["last"] == json!(19.25))
            .then_some(())
    });
}

#[test]
fn the_agent_is_controlled_through_the_hub_and_syncs_its_state() {
    let hub = HubProc::start();
    let setup = Setup::new("k9", &hub.broker, &hub.bus("metric").frontend, "");
    let data = setup.data("k9");
    let _agent = agent_run(&setup.config);
    hub.wait_for_service("org.plantd.Agent.k9");
    let call = |frames: &[&str]| -> Value {
        let reply = hub.try_call("org.plantd.Agent.k9", frames, 5 * SECOND).expect("the agent answers");
        serde_json::from_str(&reply[0]).unwrap()
    };
    let status = call(&["status"]);
    assert_eq!(status["id"], "k9");
    assert!(status["outbox"]["max_records"].as_u64().unwrap() > 0);
    assert!(call(&["read", "temperature"])["value"].as_f64().is_some());
    assert_eq!(
        call(&["write", "valve", "true"]),
        json!({"channel": "valve", "value": true, "written": true})
    );
    assert_eq!(call(&["read", "valve"])["value"], true);
    assert!(call(&["write", "pressure", "2"])["error"].as_str().unwrap().contains("input"));
    assert!(call(&["read", "nope"])["error"].as_str().unwrap().contains("no channel 'nope'"));
    assert!(call(&["config"])["config"].as_str().unwrap().contains("id = \"k9\""));
    assert!(call(&["frobnicate"])["error"].as_str().unwrap().contains("unknown command"));

    // Local state, synced write-behind to the hub's state service under the agent's scope.
    assert_eq!(call(&["state-set", "mode", "auto"])["status"], "set");
    assert_eq!(call(&["state-get", "mode"])["value"], "auto");
    wait_for("the agent's state on the hub", 20 * SECOND, || {
        let out = hub_cli(&["state", "--broker", &hub.broker, "--scope", "k9", "get", "mode"]);
        let reply: Value = serde_json::from_slice(&out.stdout).ok()?;
        (reply["data"]["value"] == "auto").then_some(())
    });
    // `agent status` reads the same status over the local control socket.
    let out = agent_cli(&["status", "--config", setup.config.to_str().unwrap()]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["id"], "k9");
    drop(data);
}

/// The agent's service holds several requests at once: `status` is answered
/// while a slow sensor's read is still under way.
#[test]
fn a_slow_read_through_the_hub_does_not_hold_up_status() {
    let hub = HubProc::start();
    let slow =
        "[[channel]]\nname = \"slow\"\nperiod_ms = 3600000\ndriver = { kind = \"slow\", read_ms = 4000 }\n";
    let setup = Setup::new("s1", &hub.broker, &hub.bus("metric").frontend, slow);
    let _agent = agent_run(&setup.config);
    let service = "org.plantd.Agent.s1";
    hub.wait_for_service(service);
    let broker = hub.broker.clone();
    let read = std::thread::spawn(move || {
        call(&broker, proto::mdp::Dialect::Rfc7, service, &["read", "slow"], 30 * SECOND)
    });
    wait_for("the slow read to reach the agent", 10 * SECOND, || {
        let workers = hub.try_call("mmi.workers", &[], 2 * SECOND)?;
        let workers: Value = serde_json::from_str(&workers[0]).ok()?;
        (workers[service]["in_flight"] == 1).then_some(())
    });
    let status = hub.try_call(service, &["status"], 3 * SECOND).expect("status while the read runs");
    assert_eq!(serde_json::from_str::<Value>(&status[0]).unwrap()["id"], "s1");
    assert!(!read.is_finished(), "status came back before the slow read");
    let reply = read.join().unwrap().expect("the slow read answers");
    assert!(serde_json::from_str::<Value>(&reply[0]).unwrap()["value"].as_f64().is_some(), "{reply:?}");
}

/// `agent run` as a process that cannot override file permissions: the
/// tests run as root on CI, and root reads a chmod 000 directory anyway, so
/// there the capabilities that allow it are dropped first (setpriv, util-linux).
fn agent_run_without_dac_override(config: &Path) -> std::process::Output {
    let agent = system_tests::bin("agent");
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--bounding-set", "-dac_override,-dac_read_search"]).arg(agent);
        cmd
    } else {
        std::process::Command::new(agent)
    };
    cmd.arg("run").arg("--config").arg(config);
    output(&mut cmd)
}

fn set_aside_copies(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store.damaged-"))
        .collect()
}

#[test]
fn a_store_the_agent_may_not_read_stops_it_and_is_left_in_place() {
    let setup = Setup::new("k10", &free_endpoint(), &free_endpoint(), &channels(1, 100));
    let data = setup.data("k10");
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = agent::store::Store::open(&data.join("store"), 1 << 20).unwrap();
        store.put_u64("kept", 7).unwrap();
        store.flush().unwrap();
    }
    let store = data.join("store");
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let out = agent_run_without_dac_override(&setup.config);
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must not start: {stderr}");
    assert!(stderr.contains("permission denied") && stderr.contains("left in place"), "{stderr}");
    assert!(set_aside_copies(&data).is_empty(), "a store it may not read is not damaged");
    let store = agent::store::Store::open_as_is(&store, 1 << 20).unwrap();
    assert_eq!(store.get_u64("kept").unwrap(), Some(7), "the store is untouched");
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused_with_the_first_ones_pid() {
    let setup = Setup::new("k11", &free_endpoint(), &free_endpoint(), &channels(1, 100));
    let data = setup.data("k11");
    let first = agent_run(&setup.config);
    wait_for_status(&data, "the first agent", 20 * SECOND, |s| (s["id"] == "k11").then_some(()));
    let second = agent_cli(&["run", "--config", setup.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("another agent is running") && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
    assert!(agent_status(&data).is_some(), "the first agent is unharmed");
}

#[test]
fn a_corrupt_store_is_set_aside_and_the_agent_starts_afresh() {
    let setup = Setup::new("k12", &free_endpoint(), &free_endpoint(), &channels(1, 100));
    let data = setup.data("k12");
    let mut agent = agent_run(&setup.config);
    wait_for_status(&data, "the agent", 20 * SECOND, |s| (s["id"] == "k12").then_some(()));
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(10 * SECOND).is_some_and(|s| s.success()));
    for entry in std::fs::read_dir(data.join("store")).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::write(entry.path(), b"\xde\xad\xbe\xef garbage, as after a bad power cut").unwrap();
        }
    }
    let _agent = agent_run(&setup.config);
    let status = wait_for_status(&data, "the agent on a fresh store", 20 * SECOND, |s| {
        s["store_recovered_from"].as_str().map(|_| s.clone())
    });
    assert!(status["store_recovered_from"].as_str().unwrap().contains("store.damaged-1-"), "{status}");
    assert_eq!(set_aside_copies(&data).len(), 1);
}

#[test]
fn the_store_tools_read_and_repair_the_outbox_log_of_a_stopped_agent() {
    let setup = Setup::new("k13", &free_endpoint(), &free_endpoint(), &channels(1, 10));
    let data = setup.data("k13");
    let config = setup.config.to_str().unwrap();
    let mut agent = agent_run(&setup.config);
    let epoch = wait_for_status(&data, "50 durable samples", 20 * SECOND, |s| {
        let (epoch, seq) = seq_of(s, "durable")?;
        (seq >= 50).then_some(epoch)
    });
    let busy = agent_cli(&["store", "--config", config, "status"]);
    assert!(!busy.status.success(), "the running agent holds the data directory");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("another agent is running"));
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(10 * SECOND).is_some_and(|s| s.success()));

    let json = |args: &[&str]| {
        let out = agent_cli(&[&["store", "--config", config][..], args].concat());
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    let (code, status) = json(&["status"]);
    assert_eq!(code, Some(0));
    let records = status["outbox"]["records"].as_u64().unwrap();
    assert!(records >= 50, "{status}");
    assert_eq!(status["last_epoch"], epoch);
    let dump = agent_cli(&["store", "--config", config, "dump", "--limit", "3"]);
    let seqs: Vec<u64> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    // Damage the tenth record: verify reports it and changes nothing, repair sets it aside.
    let segment = std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..9 {
        let agent::outbox::record::Parsed::Record { len, .. } = agent::outbox::record::parse(&bytes[at..])
        else {
            panic!("a record at {at}")
        };
        at += len;
    }
    bytes[at + agent::outbox::record::HEADER + 1] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let (code, verified) = json(&["verify"]);
    assert_eq!((code, verified["damaged"].as_u64()), (Some(1), Some(1)), "{verified}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "verify changes nothing");
    let (code, repaired) = json(&["repair"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (repaired["quarantined_now"].as_u64(), repaired["quarantined_total"].as_u64()),
        (Some(1), Some(1))
    );
    let (code, verified) = json(&["verify"]);
    assert_eq!(
        (code, verified["damaged"].as_u64(), verified["intact"].as_u64()),
        (Some(0), Some(0), Some(records - 1))
    );
    assert!(data.join("outbox/quarantine").exists());
}
