//! Acked replay through the hub, and the agent's memory.
//!
//!   cargo bench -p agent --bench replay [-- --backlog 100000 --in-flight 4]
//!
//! A backlog is written into an agent's outbox (with the agent's own outbox
//! code), then the real `hub serve` and `agent run` are started and a
//! subscriber on the metric bus counts until every sample has arrived. The
//! agent's memory is sampled idle and while it drains: RSS, and PSS (shared
//! library pages divided among the processes that map them) from
//! /proc/<pid>/smaps_rollup.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent::outbox::{Outbox, OutboxOptions};
use proto::sample::{Quality, Sample, Value};
use testkit::bench::{rss_kib, Args};
use testkit::{bin, free_endpoint, Proc};

fn prefill(data: &Path, n: u64) {
    // An earlier run's samples: a different epoch from the agent's, so all of these are late.
    let outbox = Outbox::open(&data.join("outbox"), OutboxOptions::unbounded(), "bench").unwrap();
    for seq in 1..=n {
        outbox
            .append(&Sample {
                channel: format!("c{}", seq % 4),
                epoch: 1,
                seq,
                wall_ns: 1_795_000_000_000_000_000 + seq as i64 * 1_000_000,
                mono_ns: seq * 1_000_000,
                clock_synced: true,
                value: Value::Number(seq as f64),
                unit: "u".into(),
                quality: Quality::Good,
            })
            .unwrap();
    }
    outbox.flush().unwrap();
}

/// A process's proportional set size (Pss in smaps_rollup), in KiB; 0 if it is gone.
fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:")?.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args = Args::from_env();
    let backlog = args.get("--backlog", 100_000u64);
    // Batches on the way at once ([uplink] max_in_flight; 1: one at a time).
    let in_flight = args.get("--in-flight", 4u32);
    // Built with this bench's profile, next to the agent.
    let hub = bin("hub");
    let dir = tempfile::tempdir().unwrap();
    let (broker, front, back) = (free_endpoint(), free_endpoint(), free_endpoint());
    let mut cmd = Command::new(&hub);
    cmd.args(["serve", "--broker", &broker, "--http", "off", "--no-state"])
        .args(["--bus", &format!("metric={front},{back}"), "--data-dir"])
        .arg(dir.path().join("hub"));
    let _hub = Proc::spawn("hub", cmd);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(0).unwrap();
    sub.set_subscribe(b"org.plantd.Metric.bench.").unwrap();
    sub.connect(&back).unwrap();

    // Idle: the sim board's default channels, nothing queued.
    let idle_data = dir.path().join("idle");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args([
        "run",
        "--board",
        "sim",
        "--id",
        "idle",
        "--hub-broker",
        &broker,
        "--hub-bus",
        &front,
        "--data-dir",
    ])
    .arg(&idle_data);
    let idle = Proc::spawn("idle agent", cmd);
    // Idle means settled: measured after five seconds of running, not as a synchronisation.
    std::thread::sleep(Duration::from_secs(5));
    let (idle_rss, idle_pss) = (rss_kib(idle.pid()), pss_kib(idle.pid()));
    drop(idle);

    // Replay: a prefilled outbox, one slow channel so the backlog is all there is.
    let data = dir.path().join("agent");
    prefill(&data, backlog);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"bench\"\nboard = \"sim\"\ndata_dir = \"{}\"\n[hub]\nbroker = \"{broker}\"\nbus = \"{front}\"\n[uplink]\nreplay_rate = 10000000\nbatch_records = 1000\nbatch_bytes = 1048576\nmax_in_flight = {in_flight}\n[[channel]]\nname = \"slow\"\nperiod_ms = 3600000\ndriver = {{ kind = \"toggle\" }}\n",
            data.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.arg("run").arg("--config").arg(&config);
    let agent = Proc::spawn("agent", cmd);
    let mut received = 0u64;
    let mut first = None;
    let (mut peak_rss, mut peak_pss) = (0, 0);
    let mut msg = zmq::Message::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received < backlog {
        assert!(Instant::now() < deadline, "replay stalled at {received} of {backlog}");
        if sub.poll(zmq::POLLIN, 100).unwrap() == 0 {
            peak_rss = peak_rss.max(rss_kib(agent.pid()));
            peak_pss = peak_pss.max(pss_kib(agent.pid()));
            continue;
        }
        while sub.recv(&mut msg, zmq::DONTWAIT).is_ok() {
            if !msg.get_more() {
                received += 1;
                first.get_or_insert_with(Instant::now);
            }
        }
        if received % 10_000 < 100 {
            peak_rss = peak_rss.max(rss_kib(agent.pid()));
            peak_pss = peak_pss.max(pss_kib(agent.pid()));
        }
    }
    let first = first.unwrap();
    let replay = first.elapsed();
    let to_first = first - started;
    let outbox_after = dir_bytes(&data.join("outbox"));
    println!("replay benchmark: {backlog} durable samples waiting in the outbox, hub and agent as processes, {in_flight} batch(es) in flight");
    println!();
    println!("  acked replay through the hub      {:>10.0} samples/s ({backlog} in {replay:.2?}; first sample {to_first:.2?} after start)", backlog as f64 / replay.as_secs_f64());
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  agent RSS, idle (sim board)       {:>10.1} MiB (PSS {:.1} MiB)",
        mib(idle_rss),
        mib(idle_pss)
    );
    println!(
        "  agent RSS, draining the backlog   {:>10.1} MiB (PSS {:.1} MiB; peaks sampled)",
        mib(peak_rss),
        mib(peak_pss)
    );
    println!("  outbox on disk after the drain    {:>10.1} MiB", outbox_after as f64 / 1048576.0);
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    e.metadata().map(|m| if m.is_dir() { dir_bytes(&e.path()) } else { m.len() }).unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}
