//! Fleet benchmark: the largest number of agents, each sending 1 durable
//! sample a second, that one hub (release build, its data directory on disk)
//! holds with the p99 ingest latency (a batch sent to its Ack) under 100 ms,
//! and the hub's CPU per sample. The agents are `hub loadgen`'s simulated
//! ones: one connection each, one batch in flight, resent after a timeout,
//! as real agents' outboxes send. A subscriber on the metric bus is the
//! consumer the ingest gate waits for.
//!
//!   cargo bench -p hub --bench fleet                          # the ladder
//!   cargo bench -p hub --bench fleet -- --agents 5000 --rate 1 --seconds 30   # one size
//!
//! Options: `--rate` (samples/s per agent, default 1), `--seconds` per run
//! (default 20, of which the first `--warmup` 10 s, while thousands of
//! connections are made and the hub works off what queued meanwhile, are
//! left out of the latencies), `--p99-ms` (default 100), `--ingest-workers`
//! (the hub's `[ingest] workers`, default 2 as in the hub).
//! `BENCH_VERBOSE=1` shows the load generator's lines, second by second.
//!
//! Baseline, same run: the same agents and batches at the largest size
//! that held, sent through the same broker to as many `hub echo-worker`s as
//! ingest has workers, instead of to ingest: the broker's share of the
//! latency and of the hub's CPU.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ingest::{Batch, Reply, Sent};
use proto::sample::{Quality, Sample, Value};
use serde_json::Value as Json;
use testkit::bench::{named, process_cpu_time, rss_kib, Args};
use testkit::{free_endpoint, run_bounded, Proc};

/// The hub under test, its bus, and a subscriber counting what reaches it.
struct Rig {
    hub: Proc,
    broker: String,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    _data: tempfile::TempDir,
}

impl Rig {
    fn start(ingest_workers: usize) -> Rig {
        // On disk (the target directory), not a tmpfs /tmp: ingest flushes per batch.
        let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let (broker, frontend, backend) = (free_endpoint(), free_endpoint(), free_endpoint());
        let config = data.path().join("hub.toml");
        let text = format!(
            "[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\n\n[state]\nenabled = false\n\n[http]\nlisten = \"off\"\n\n[ingest]\nworkers = {ingest_workers}\n"
        );
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
        cmd.args(["serve", "--broker", &broker, "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data.path().join("hub"));
        let hub = Proc::spawn("hub", cmd);
        let (delivered, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, done) = (delivered.clone(), stop.clone());
        named("subscriber", move || {
            let ctx = zmq::Context::new();
            let sub = ctx.socket(zmq::SUB).unwrap();
            sub.set_rcvtimeo(200).unwrap();
            sub.set_subscribe(proto::sample::TOPIC_PREFIX.as_bytes()).unwrap();
            sub.connect(&backend).unwrap();
            let mut frame = zmq::Message::new();
            while !done.load(Relaxed) {
                if sub.recv(&mut frame, 0).is_ok() && !frame.get_more() {
                    count.fetch_add(1, Relaxed);
                }
            }
        });
        let rig = Rig { hub, broker, delivered, stop, _data: data };
        rig.wait_for_the_gate();
        rig
    }

    /// Until the subscriber is known to the hub, ingest answers Retry: a
    /// probe agent sends until it is acknowledged.
    fn wait_for_the_gate(&self) {
        let ctx = zmq::Context::new();
        let options =
            transport::ClientOptions { timeout: Duration::from_secs(2), retries: 0, ..Default::default() };
        let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(&self.broker), options);
        let deadline = Instant::now() + Duration::from_secs(30);
        let sample = Sample {
            channel: "probe".into(),
            epoch: 1,
            seq: 1,
            wall_ns: 0,
            mono_ns: 0,
            clock_synced: true,
            value: Value::Bool(true),
            unit: String::new(),
            quality: Quality::Good,
        };
        let batch = Batch {
            agent: "probe".into(),
            samples: vec![Sent { sample, historical: false }],
            events: Vec::new(),
        }
        .encode();
        loop {
            assert!(Instant::now() < deadline, "the hub's ingest never took a batch in 30 s");
            if let Ok(reply) = client.request(proto::ingest::SERVICE, &[&batch]) {
                if matches!(Reply::decode(&reply[0]), Ok(Reply::Ack { .. })) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// One run's figures.
struct Run {
    agents: usize,
    p50_ms: f64,
    p99_ms: f64,
    samples: u64,
    all_acknowledged: bool,
    timeouts: u64,
    retries: u64,
    hub_cpu_per_sample_us: f64,
    hub_cores: f64,
    hub_rss_mib: f64,
    loadgen_cpu_per_sample_us: f64,
    loadgen_cores: f64,
    /// The hub's CPU per sample by thread (worker threads of a kind together).
    by_thread: Vec<(String, f64)>,
}

struct Options {
    rate: f64,
    seconds: f64,
    warmup: f64,
    p99_ms: f64,
    ingest_workers: usize,
}

/// `agents` simulated agents against a fresh hub: through ingest, or with
/// `echo` through the broker to as many echo workers as ingest has.
fn run(agents: usize, o: &Options, echo: bool) -> Run {
    let rig = Rig::start(o.ingest_workers);
    let _workers: Vec<Proc> = if echo {
        (0..o.ingest_workers)
            .map(|_| {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
                cmd.args(["echo-worker", "--broker", &rig.broker, "--service", "echo"]);
                Proc::spawn("echo-worker", cmd)
            })
            .collect()
    } else {
        Vec::new()
    };
    if echo {
        wait_for_echo(&rig.broker);
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
    cmd.args(["loadgen", "--durable", "--json", "--broker", &rig.broker])
        .args(["--agents", &agents.to_string(), "--rate", &o.rate.to_string()])
        .args(["--seconds", &o.seconds.to_string(), "--warmup-seconds", &o.warmup.to_string()]);
    if echo {
        cmd.args(["--service", "echo"]);
    }
    let cpu_before = process_cpu_time(rig.hub.pid());
    let threads_before = thread_cpu(rig.hub.pid());
    let started = Instant::now();
    let limit = Duration::from_secs_f64(o.seconds + 60.0);
    let out = run_bounded("hub loadgen", &mut cmd, limit);
    let elapsed = started.elapsed().as_secs_f64();
    let hub_cpu = (process_cpu_time(rig.hub.pid()) - cpu_before).as_secs_f64();
    let hub_rss_mib = rss_kib(rig.hub.pid()) as f64 / 1024.0;
    let threads_after = thread_cpu(rig.hub.pid());
    let summary: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("hub loadgen printed no summary ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let n = |v: &Json| v.as_u64().unwrap_or(0);
    let samples = n(&summary["samples"]);
    let latency = &summary["latency_ms"];
    if !echo {
        // Everything acknowledged reached the bus: the subscriber is not behind.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig.delivered.load(Relaxed) < n(&summary["acknowledged"]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Run {
        agents,
        p50_ms: latency["p50"].as_f64().unwrap_or(f64::INFINITY),
        p99_ms: latency["p99"].as_f64().unwrap_or(f64::INFINITY),
        samples,
        all_acknowledged: samples > 0 && n(&summary["acknowledged"]) == samples,
        timeouts: n(&summary["timeouts"]),
        retries: n(&summary["retries"]),
        hub_cpu_per_sample_us: hub_cpu * 1e6 / samples.max(1) as f64,
        hub_cores: hub_cpu / elapsed,
        hub_rss_mib,
        loadgen_cpu_per_sample_us: summary["cpu"]["per_sample_us"].as_f64().unwrap_or(0.0),
        loadgen_cores: summary["cpu"]["of_one_core"].as_f64().unwrap_or(0.0),
        by_thread: threads_after
            .into_iter()
            .map(|(name, after)| {
                let spent = after - threads_before.get(&name).copied().unwrap_or_default();
                (name, spent.as_secs_f64() * 1e6 / samples.max(1) as f64)
            })
            .filter(|(_, us)| *us >= 0.5)
            .collect(),
    }
    .checked(o)
}

impl Run {
    fn held(&self, o: &Options) -> bool {
        self.all_acknowledged && self.p99_ms < o.p99_ms
    }

    fn checked(self, o: &Options) -> Run {
        println!(
            "{:>7}  {:>9}  {:>7.1}  {:>7.1}  {:>6}  {:>8}  {:>7}  {:>9.1} us  {:>5.2}  {:>6.0}  {:>9.1} us  {:>5.2}  {}",
            self.agents,
            self.samples,
            self.p50_ms,
            self.p99_ms,
            if self.all_acknowledged { "yes" } else { "NO" },
            self.timeouts,
            self.retries,
            self.hub_cpu_per_sample_us,
            self.hub_cores,
            self.hub_rss_mib,
            self.loadgen_cpu_per_sample_us,
            self.loadgen_cores,
            if self.held(o) { "held" } else { "over" }
        );
        self
    }
}

fn header() {
    println!(
        " agents    samples  p50 ms   p99 ms   all ack  timeouts  Retry   hub CPU/sample  cores  RSS MiB  loadgen CPU/sample  cores"
    );
}

/// CPU time per thread of `pid`, threads of one kind (`ingest-0`, `ingest-1`) together.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, Duration> {
    let mut by_kind = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_kind };
    for task in tasks.flatten() {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap_or(0);
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let kind = name.trim().trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches(['-', '/']);
        let kind = if tid == pid { "main" } else { kind };
        *by_kind.entry(kind.to_string()).or_default() += thread_cpu_time(pid, tid);
    }
    by_kind
}

/// User + system CPU of one thread, from /proc/<pid>/task/<tid>/stat (as
/// testkit's process_cpu_time reads a process's: /proc/<tid>/stat would give
/// the whole process's).
fn thread_cpu_time(pid: u32, tid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn by_thread(run: &Run) -> String {
    let parts: Vec<String> = run.by_thread.iter().map(|(name, us)| format!("{name} {us:.1}")).collect();
    parts.join(", ")
}

fn wait_for_echo(broker: &str) {
    let ctx = zmq::Context::new();
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(1), retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(broker), options);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .request("mmi.service", &[b"echo"])
        .is_ok_and(|r| r.first().is_some_and(|f| &f[..] == b"200"))
    {
        assert!(Instant::now() < deadline, "the echo workers never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Raises this process's descriptor limit (the hub and loadgen inherit it):
/// each agent costs the hub one descriptor and the load generator two.
fn allow_descriptors() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on this process, with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

fn main() {
    let args = Args::from_env();
    let o = Options {
        rate: args.get("--rate", 1.0),
        seconds: args.get("--seconds", 20.0),
        warmup: args.get("--warmup", 10.0),
        p99_ms: args.get("--p99-ms", 100.0),
        ingest_workers: args.get("--ingest-workers", hub::config::IngestConfig::default().workers),
    };
    let fds = allow_descriptors();
    println!(
        "fleet benchmark: agents at {} sample(s)/s each, {} s a run ({} s warm-up left out of the latencies), \
         p99 under {} ms, {} ingest workers; descriptors allowed: {fds}",
        o.rate, o.seconds, o.warmup, o.p99_ms, o.ingest_workers
    );
    println!();
    header();
    let ladder: Vec<usize> = match args.get("--agents", 0usize) {
        0 => vec![1000, 2000, 4000, 5000, 6000, 7000, 8000, 10_000, 12_000],
        n => vec![n],
    };
    let mut held: Option<Run> = None;
    let mut over: Option<usize> = None;
    for &agents in &ladder {
        if 2 * agents as u64 + 100 > fds {
            println!(
                "{agents} agents need about {} descriptors: `ulimit -Hn` allows {fds}",
                2 * agents + 100
            );
            break;
        }
        let r = run(agents, &o, false);
        if !r.held(&o) {
            over = Some(agents);
            break;
        }
        held = Some(r);
    }
    // Halve the last step once, for a closer figure.
    if let (Some(low), Some(high)) = (held.as_ref().map(|r| r.agents), over) {
        let middle = (low + high) / 2;
        if middle > low && ladder.len() > 1 {
            let r = run(middle, &o, false);
            if r.held(&o) {
                held = Some(r);
            }
        }
    }
    let Some(best) = held else {
        println!("\nnot even {} agents held", ladder[0]);
        return;
    };
    println!(
        "\nbaseline: the same agents and batches through the broker to {} echo workers",
        o.ingest_workers
    );
    header();
    let echo = run(best.agents, &o, true);
    println!();
    println!(
        "largest fleet held: {} agents, p99 {:.1} ms (echo path {:.1} ms, {:.1}x), hub CPU {:.1} us per sample \
         (echo path {:.1} us, {:.1}x); the load generator used {:.1} us per sample",
        best.agents,
        best.p99_ms,
        echo.p99_ms,
        best.p99_ms / echo.p99_ms,
        best.hub_cpu_per_sample_us,
        echo.hub_cpu_per_sample_us,
        best.hub_cpu_per_sample_us / echo.hub_cpu_per_sample_us,
        best.loadgen_cpu_per_sample_us
    );
    println!("hub CPU per sample by thread, us: ingest path: {}", by_thread(&best));
    println!("                                  echo path:   {}", by_thread(&echo));
}
