//! State service benchmark: pipelined `state-set` / `state-get` through the
//! broker to the hub's state service, against the bare store (sled, the same
//! operations called directly) measured in the same run.
//!
//!   cargo bench -p hub --bench state [-- --clients 4 --window 32 --workers 2 --credit 64 --flush-ms 100 --seconds 3]
//!
//! Requests alternate set and get over 1000 keys; values are short strings.

use std::time::{Duration, Instant};

use hub::state::ops::Caller;
use hub::state::store::{Limits, Store};
use proto::mdp::Dialect;
use serde_json::json;
use transport::PipelinedClient;

mod common;
use common::{endpoint, HubChild};
use testkit::bench::{named, us, Args};

struct Options {
    clients: usize,
    window: usize,
    workers: usize,
    credit: u32,
    flush_ms: u64,
    seconds: f64,
}

fn options() -> Options {
    let args = Args::from_env();
    Options {
        clients: args.get("--clients", 4),
        window: args.get("--window", 32),
        workers: args.get("--workers", 2),
        credit: args.get("--credit", 64),
        flush_ms: args.get("--flush-ms", 100),
        seconds: args.get("--seconds", 3.0),
    }
}

/// The i-th request: even ones set, odd ones get.
fn request(i: usize) -> (&'static str, String) {
    let key = format!("k{}", i % 1000);
    if i % 2 == 0 {
        ("state-set", json!({"service": "bench", "key": key, "value": format!("v{i}")}).to_string())
    } else {
        ("state-get", json!({"service": "bench", "key": key}).to_string())
    }
}

/// The same operations on the store directly, one thread, for `seconds`.
fn bare_store(o: &Options) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 16 << 20, o.flush_ms == 0, Limits::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let started = Instant::now();
    let mut done = 0;
    while Instant::now() < deadline {
        let (op, body) = request(done);
        let frames = [op.as_bytes().to_vec(), body.into_bytes()];
        let outcome = hub::state::ops::handle(&store, &Caller::TRUSTED, &frames);
        assert_eq!(outcome.reply["success"], true);
        done += 1;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn through_broker(o: &Options) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    let text = format!(
        "[[bus]]\nname = \"state\"\nfrontend = \"{}\"\nbackend = \"{}\"\n\n[state]\nworkers = {}\ncredit = {}\nflush_interval_ms = {}\n\n[ingest]\nenabled = false\n\n[http]\nlisten = \"off\"\n",
        endpoint(),
        endpoint(),
        o.workers,
        o.credit,
        o.flush_ms
    );
    std::fs::write(&config, text).unwrap();
    let hub = HubChild::start_with(&["--config", config.to_str().unwrap()]);
    let ctx = zmq::Context::new();
    // Wait for the service to answer, creating the scope: a get must not
    // race the set that would create it on another worker.
    let mut probe = PipelinedClient::connect(&ctx, &hub.endpoint, Dialect::Rfc7).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (op, body) = request(0);
    loop {
        probe.send(b"org.plantd.State", [op.as_bytes(), body.as_bytes()]).unwrap();
        if probe.recv(Duration::from_millis(200)).unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the state service never answered");
    }

    let warmup = Duration::from_millis(500);
    let measure = Duration::from_secs_f64(o.seconds);
    let cpu_before = hub.cpu();
    let threads: Vec<_> = (0..o.clients)
        .map(|c| {
            let (ctx, endpoint, window) = (ctx.clone(), hub.endpoint.clone(), o.window);
            named("client", move || {
                let mut client = PipelinedClient::connect(&ctx, &endpoint, Dialect::Rfc7).unwrap();
                let send = |client: &PipelinedClient, i: usize| {
                    let (op, body) = request(c * 1_000_000 + i);
                    client.send(b"org.plantd.State", [op.as_bytes(), body.as_bytes()]).unwrap();
                };
                let began = Instant::now();
                let (from, until) = (began + warmup, began + warmup + measure);
                for i in 0..window {
                    send(&client, i);
                }
                let (mut i, mut done, mut all) = (window, 0u64, 0u64);
                loop {
                    let reply = client.recv(Duration::from_secs(5)).unwrap().expect("the load stalled");
                    assert!(reply.body[0].starts_with(b"{\"data\""), "{:?}", reply.body[0].as_str());
                    all += 1;
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    if now >= from {
                        done += 1;
                    }
                    send(&client, i);
                    i += 1;
                }
                (done, all)
            })
        })
        .collect();
    let (done, all) =
        threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let cpu = hub.cpu() - cpu_before;
    (done as f64 / measure.as_secs_f64(), us(cpu) / all as f64)
}

fn main() {
    let o = options();
    println!(
        "state benchmark: {} pipelined clients (window {}), {} state workers of credit {}, durability window {} ms, {} s",
        o.clients, o.window, o.workers, o.credit, o.flush_ms, o.seconds
    );
    let bare = bare_store(&o);
    let (ours, cpu) = through_broker(&o);
    println!();
    println!("                                       ops/s    ratio");
    println!("  bare store, same ops, one thread {bare:>10.0}     1.00 (baseline)");
    println!("  through the broker               {ours:>10.0}     {:.2}", ours / bare);
    println!("  hub process CPU per operation    {cpu:>10.1} us");
}
