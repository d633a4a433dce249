//! Broker benchmark: our broker against baselines measured in the same run.
//!
//!   cargo bench -p hub --bench broker [-- --clients 2 --workers 2 --window 64 --seconds 3]
//!       [--credit 16 --credit-workers 2 --credit-threads 0]
//!
//! 1. Throughput: N pipelined DEALER clients × M echo workers through the
//!    broker, 64-byte bodies, versus N DEALER clients on a raw ROUTER echo.
//! 2. Latency: one synchronous client's round trip through the broker versus
//!    raw REQ/REP, p50 and p99.
//! 3. The same throughput load through majortomo's Python broker, if the
//!    interop venv exists (scripts/setup.sh makes it).
//! 4. The same throughput load through the hub with `[security]`: CURVE on
//!    every connection, against the plaintext figure of step 1.
//! 5. The same load through the hub to `--credit-workers` workers that each
//!    announce `--credit` (the credit extension): they hold that many
//!    requests at once, so the broker↔worker hop carries batches. Handled on
//!    the worker's thread, or on `--credit-threads` pool threads.
//!    `--only credit` runs raw, stock and credit workers alone.
//!
//! Everything runs on 127.0.0.1 (BENCH_TRANSPORT=ipc: over ipc:// instead). Figures are ratios against the baseline of
//! the same run, so a busy machine skews both sides alike.

use std::process::Command;

mod common;
use common::{endpoint, HubChild, Secure};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use testkit::bench::{named, process_cpu_time, us, Args};
use testkit::Proc;

use proto::mdp::Dialect;
use transport::{
    Client, ClientOptions, Endpoint, PipelinedClient, PoolOptions, Shutdown, Worker, WorkerOptions,
};

const BODY: [u8; 64] = [7; 64];
const SERVICE: &str = "echo";

struct Options {
    clients: usize,
    workers: usize,
    window: usize,
    seconds: f64,
    latency_samples: usize,
    /// Credit workers for part 5: how many, their credit, their pool threads (0: none).
    credit_workers: usize,
    credit: u32,
    credit_threads: usize,
    /// Run one part only: raw, hub, latency, majortomo, curve or credit.
    only: Option<String>,
}

fn options() -> Options {
    let args = Args::from_env();
    Options {
        clients: args.get("--clients", 2),
        workers: args.get("--workers", 2),
        window: args.get("--window", 64),
        seconds: args.get("--seconds", 3.0),
        latency_samples: args.get("--samples", 20_000),
        credit_workers: args.get("--credit-workers", 2),
        credit: args.get("--credit", 16),
        credit_threads: args.get("--credit-threads", 0),
        only: args.text("--only").map(String::from),
    }
}

/// Runs `clients` pipelined clients against `endpoint` for `seconds` after a
/// warm-up; returns completed requests per second in the measured window, and
/// all replies received (warm-up included).
fn pipelined_load(endpoint: impl Into<Endpoint>, dialect: Dialect, o: &Options) -> (f64, u64) {
    let endpoint = endpoint.into();
    let ctx = zmq::Context::new();
    let warmup = Duration::from_millis(500);
    let measure = Duration::from_secs_f64(o.seconds);
    let start = Arc::new(Barrier::new(o.clients));
    let threads: Vec<_> = (0..o.clients)
        .map(|_| {
            let (ctx, endpoint, start, window) = (ctx.clone(), endpoint.clone(), start.clone(), o.window);
            named("client", move || {
                let mut client = PipelinedClient::connect(&ctx, &endpoint, dialect).unwrap();
                start.wait();
                let began = Instant::now();
                let (from, until) = (began + warmup, began + warmup + measure);
                for _ in 0..window {
                    client.send(SERVICE.as_bytes(), [&BODY[..]]).unwrap();
                }
                let (mut done, mut all) = (0u64, 0u64);
                loop {
                    let Some(reply) = client.recv(Duration::from_secs(5)).unwrap() else {
                        panic!("no reply for 5 s: the load stalled");
                    };
                    // An echo, not a refusal (a 403 or 429 would be fast, and wrong).
                    assert_eq!(reply.body.first().map(|f| &f[..]), Some(&BODY[..]), "not an echo");
                    all += 1;
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    if now >= from {
                        done += 1;
                    }
                    client.send(SERVICE.as_bytes(), [&BODY[..]]).unwrap();
                }
                (done, all)
            })
        })
        .collect();
    let (done, all) =
        threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    (done as f64 / measure.as_secs_f64(), all)
}

/// Raw baseline: a ROUTER that echoes every message straight back.
fn raw_echo_server(ctx: &zmq::Context, endpoint: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let socket = ctx.socket(zmq::ROUTER).unwrap();
    socket.set_sndhwm(100_000).unwrap();
    socket.set_rcvhwm(100_000).unwrap();
    socket.bind(endpoint).unwrap();
    named("raw-echo", move || {
        let mut frames: Vec<zmq::Message> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if socket.poll(zmq::POLLIN, 100).unwrap() == 0 {
                continue;
            }
            while transport::frames::recv_frames(&socket, &mut frames, 64, zmq::DONTWAIT).unwrap()
                == transport::frames::Received::Message
            {
                transport::frames::send_frames(&socket, &[], frames.drain(..), 0).unwrap();
            }
        }
    })
}

/// Raw baseline for the pipelined clients: each request is [empty, MDPC01,
/// service, body] in MDP, so the raw client sends frames of the same sizes.
fn raw_throughput(o: &Options) -> f64 {
    let ctx = zmq::Context::new();
    let endpoint = endpoint();
    let stop = Arc::new(AtomicBool::new(false));
    let server = raw_echo_server(&ctx, &endpoint, stop.clone());
    // An RFC 7 request is [ "", MDPC01, service, body ]; the ROUTER echoes it,
    // and PipelinedClient reads it back as an RFC 7 reply. Same frames, no broker.
    let (rate, _) = pipelined_load(&endpoint, Dialect::Rfc7, o);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    rate
}

struct Running {
    shutdown: Shutdown,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Running {
    fn stop(self) {
        self.shutdown.trigger();
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// Which echo workers a run starts.
#[derive(Clone, Copy)]
struct Workers {
    count: usize,
    /// 1: stock workers.
    credit: u32,
    /// Pool threads per worker; 0 handles on the worker's thread.
    threads: usize,
}

impl Workers {
    fn stock(count: usize) -> Workers {
        Workers { count, credit: 1, threads: 0 }
    }

    fn credit(o: &Options) -> Workers {
        Workers { count: o.credit_workers, credit: o.credit, threads: o.credit_threads }
    }
}

fn start_workers(
    endpoint: &Endpoint,
    workers: Workers,
    dialect: Dialect,
    shutdown: &Shutdown,
) -> Vec<thread::JoinHandle<()>> {
    let ctx = zmq::Context::new();
    (0..workers.count)
        .map(|_| {
            let stop = shutdown.watch().unwrap();
            let options = WorkerOptions { dialect, credit: workers.credit, ..WorkerOptions::default() };
            let worker = Worker::new(&ctx, endpoint.clone(), SERVICE, options);
            let echo = |body, _: &mut transport::Replier<'_>| body;
            named("worker", move || {
                if workers.threads == 0 {
                    worker.run(&stop, echo).unwrap()
                } else {
                    let pool = PoolOptions { threads: workers.threads, ..PoolOptions::default() };
                    worker.run_pool(&stop, pool, echo).unwrap()
                }
            })
        })
        .collect()
}

/// Our broker under the pipelined load: throughput and its process's CPU per request.
fn hub_throughput(o: &Options, workers: Workers) -> (f64, f64) {
    let hub = HubChild::start();
    let endpoint = Endpoint::plain(&hub.endpoint);
    run_through(&hub, &endpoint, workers, o)
}

/// The same through a hub with `[security]`: every connection CURVE.
fn curve_throughput(o: &Options) -> (f64, f64) {
    // One identity sends all of the load: lift its per-identity bounds.
    let secure = Secure::new(
        "[broker]\nrate_per_identity = 1e9\nburst_per_identity = 1e9\nmax_in_flight_per_identity = 1000000\n",
    );
    let hub = HubChild::start_with(&["--config", secure.config.to_str().unwrap()]);
    run_through(&hub, &secure.endpoint(&hub.endpoint), Workers::stock(o.workers), o)
}

fn run_through(hub: &HubChild, endpoint: &Endpoint, workers: Workers, o: &Options) -> (f64, f64) {
    let shutdown = Shutdown::new();
    let workers = start_workers(endpoint, workers, Dialect::Rfc7, &shutdown);
    wait_for_service(endpoint, Dialect::Rfc7);
    let cpu_before = hub.cpu();
    let (rate, replies) = pipelined_load(endpoint.clone(), Dialect::Rfc7, o);
    let cpu = hub.cpu() - cpu_before;
    Running { shutdown, threads: workers }.stop();
    (rate, us(cpu) / replies.max(1) as f64)
}

fn wait_for_service(endpoint: &Endpoint, dialect: Dialect) {
    let ctx = zmq::Context::new();
    let options = ClientOptions { dialect, timeout: Duration::from_millis(500), retries: 0 };
    for _ in 0..60 {
        let mut client = Client::new(&ctx, endpoint.clone(), options);
        if client.request(SERVICE, &[b"ping"]).is_ok() {
            return;
        }
    }
    panic!("service {SERVICE} never answered at {endpoint}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latencies(samples: usize, mut round_trip: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..samples / 10 {
        round_trip();
    }
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            round_trip();
            t.elapsed()
        })
        .collect();
    times.sort();
    (percentile(&times, 0.50), percentile(&times, 0.99))
}

fn raw_latency(samples: usize) -> (Duration, Duration) {
    // Client and server get a context (an I/O thread) each, as two processes would.
    let (ctx, server_ctx) = (zmq::Context::new(), zmq::Context::new());
    let endpoint = endpoint();
    let rep = server_ctx.socket(zmq::REP).unwrap();
    rep.bind(&endpoint).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            if rep.poll(zmq::POLLIN, 100).unwrap() > 0 {
                let msg = rep.recv_msg(0).unwrap();
                rep.send(msg, 0).unwrap();
            }
        }
    });
    let req = ctx.socket(zmq::REQ).unwrap();
    req.connect(&endpoint).unwrap();
    let result = latencies(samples, || {
        req.send(&BODY[..], 0).unwrap();
        req.recv_msg(0).unwrap();
    });
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    result
}

fn broker_latency(samples: usize) -> (Duration, Duration) {
    let hub = HubChild::start();
    let shutdown = Shutdown::new();
    let endpoint = Endpoint::plain(&hub.endpoint);
    let worker = start_workers(&endpoint, Workers::stock(1), Dialect::Rfc7, &shutdown);
    wait_for_service(&endpoint, Dialect::Rfc7);
    let ctx = zmq::Context::new();
    let options = ClientOptions { timeout: Duration::from_secs(5), retries: 0, ..ClientOptions::default() };
    let mut client = Client::new(&ctx, &hub.endpoint, options);
    let result = latencies(samples, || {
        client.request(SERVICE, &[&BODY[..]]).unwrap();
    });
    Running { shutdown, threads: worker }.stop();
    result
}

/// majortomo's broker as a child process, if the interop venv is there.
/// Returns its throughput and its CPU time per request.
fn majortomo_throughput(o: &Options) -> Option<(f64, f64)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    let python = std::env::var_os("PLANTD_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/interop-venv/bin/python"));
    if !python.exists() {
        eprintln!("(majortomo comparison skipped: no {}; run scripts/setup.sh)", python.display());
        return None;
    }
    let endpoint = endpoint();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "majortomo.broker", "--bind-url", &endpoint]);
    let child = Proc::spawn("majortomo broker", cmd);
    let shutdown = Shutdown::new();
    let endpoint = Endpoint::plain(&endpoint);
    let workers = start_workers(&endpoint, Workers::stock(o.workers), Dialect::Majortomo, &shutdown);
    wait_for_service(&endpoint, Dialect::Majortomo);
    let cpu_before = process_cpu_time(child.pid());
    let (rate, replies) = pipelined_load(endpoint, Dialect::Majortomo, o);
    let cpu = process_cpu_time(child.pid()) - cpu_before;
    Running { shutdown, threads: workers }.stop();
    drop(child);
    Some((rate, us(cpu) / replies.max(1) as f64))
}

fn main() {
    let o = options();
    println!(
        "broker benchmark: {} pipelined clients (window {}) x {} echo workers, {}-byte bodies, {} s per run",
        o.clients,
        o.window,
        o.workers,
        BODY.len(),
        o.seconds
    );

    if let Some(part) = o.only.as_deref() {
        // Profiling one part: run it alone and print its figures.
        match part {
            "raw" => println!("raw: {:.0} req/s", raw_throughput(&o)),
            "hub" => {
                println!("hub: {:?} (req/s, us CPU/request)", hub_throughput(&o, Workers::stock(o.workers)))
            }
            "majortomo" => println!("majortomo: {:?} (req/s, us CPU/request)", majortomo_throughput(&o)),
            "latency" => println!("hub p50/p99: {:?}, raw: {:?}", broker_latency(1000), raw_latency(1000)),
            "curve" => {
                println!(
                    "plain: {:?}, curve: {:?}",
                    hub_throughput(&o, Workers::stock(o.workers)),
                    curve_throughput(&o)
                )
            }
            "credit" => {
                let raw = raw_throughput(&o);
                let stock = hub_throughput(&o, Workers::stock(o.workers));
                let credit = hub_throughput(&o, Workers::credit(&o));
                print_credit(&o, raw, stock, credit);
            }
            other => println!("unknown part {other}: use raw, hub, majortomo, latency, curve or credit"),
        }
        return;
    }
    let raw = raw_throughput(&o);
    let (ours, cpu_per_request) = hub_throughput(&o, Workers::stock(o.workers));
    let credit = hub_throughput(&o, Workers::credit(&o));
    let (broker_p50, broker_p99) = broker_latency(o.latency_samples);
    let (raw_p50, raw_p99) = raw_latency(o.latency_samples);
    let majortomo = majortomo_throughput(&o);
    let (curve, curve_cpu) = curve_throughput(&o);

    println!();
    println!("throughput                          req/s      ratio");
    println!("  raw DEALER<->ROUTER echo   {raw:>12.0}      1.00 (baseline)");
    println!("  hub broker, {} workers      {ours:>12.0}      {:.2} of raw", o.workers, ours / raw);
    if let Some((mt, _)) = majortomo {
        println!("  majortomo broker (Python)  {mt:>12.0}      hub is {:.1}x majortomo", ours / mt);
    }
    print_credit(&o, raw, (ours, cpu_per_request), credit);
    println!();
    println!(
        "broker process CPU per request (routing and its libzmq I/O thread; clients and workers excluded)"
    );
    println!(
        "  hub serve process          {cpu_per_request:>9.2} us   one core routes {:.0} req/s",
        1e6 / cpu_per_request
    );
    if let Some((_, mt_cpu)) = majortomo {
        println!(
            "  majortomo broker process  {mt_cpu:>9.2} us   hub is {:.1}x more efficient",
            mt_cpu / cpu_per_request
        );
    }
    println!();
    println!("security: the same load with [security], CURVE on every connection");
    println!("  plaintext                  {ours:>12.0} req/s  {cpu_per_request:>7.2} us CPU/request");
    println!("  CURVE                      {curve:>12.0} req/s  {curve_cpu:>7.2} us CPU/request   {:.2} of plaintext", curve / ours);
    println!();
    println!("latency, 1 sync client            p50          p99");
    println!("  raw REQ/REP               {:>9.1} us {:>9.1} us", us(raw_p50), us(raw_p99));
    println!("  hub broker                {:>9.1} us {:>9.1} us", us(broker_p50), us(broker_p99));
    println!(
        "  ratio                     {:>9.2}x   {:>9.2}x",
        us(broker_p50) / us(raw_p50),
        us(broker_p99) / us(raw_p99)
    );
}

/// Part 5's figures: credit workers against stock ones and raw, same run.
fn print_credit(o: &Options, raw: f64, (stock, stock_cpu): (f64, f64), (credit, credit_cpu): (f64, f64)) {
    let threads = match o.credit_threads {
        0 => "handled on the worker's thread".to_string(),
        n => format!("{n} pool threads each"),
    };
    println!();
    println!(
        "credit workers: {} worker(s) announcing credit {} ({threads}), against {} stock workers",
        o.credit_workers, o.credit, o.workers
    );
    println!("                                    req/s  of raw   us CPU/request (hub process)");
    println!("  raw DEALER<->ROUTER echo   {raw:>12.0}    1.00");
    println!(
        "  hub, {:>3} stock workers    {stock:>12.0}    {:.2}   {stock_cpu:>7.2}",
        o.workers,
        stock / raw
    );
    println!(
        "  hub, {:>3} x credit {:<5}   {credit:>12.0}    {:.2}   {credit_cpu:>7.2}   {:.2}x stock",
        o.credit_workers,
        o.credit,
        credit / raw,
        credit / stock
    );
}
