//! Pipeline benchmark, in one process over in-process endpoints:
//!
//! 1. A CPU-bound stage (about 50 µs of hashing per message) with 2 workers
//!    against 1: the ratio says how well the workers use a second core.
//! 2. Source → pass-through stage → sink (credit, acks, the worker channel)
//!    against a bare PUSH → PULL/PUSH relay → PULL chain with the same hops,
//!    100-byte messages, measured in the same run.
//!
//!   cargo bench -p hub --bench pipeline [-- --messages 200000 --cpu-messages 20000 --rounds 2000 --window 256]

use std::time::{Duration, Instant};

use testkit::bench::{named, Args};
use transport::pipeline::stage::{self, StageOptions, StageStats, Wiring};
use transport::pipeline::{HopOptions, Source};
use transport::Shutdown;

const BODY: [u8; 100] = [b'x'; 100];

/// Work the optimiser cannot remove: `rounds` × 16 FNV steps (2 000 rounds: about 50 µs here).
fn burn(body: &[u8], rounds: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        for &b in body.iter().take(16) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Sends `n` messages through source → stage (`workers`, `handler`) → sink;
/// messages per second from the first send to the last acknowledgement.
fn pipeline(n: u64, workers: usize, window: u32, rounds: u32, tag: &str) -> f64 {
    let ctx = zmq::Context::new();
    let hop = HopOptions { window, ..HopOptions::default() };
    let (src, mid) = (format!("inproc://bench-{tag}-src"), format!("inproc://bench-{tag}-mid"));
    let mut source = Source::bind(&ctx, &src, hop.clone()).unwrap();
    let shutdown = Shutdown::new();
    let mut threads = Vec::new();
    for (name, up, down, workers) in
        [("stage", src.clone(), Some(mid.clone()), workers), ("sink", mid, None, 1)]
    {
        let (ctx, stop, hop) = (ctx.clone(), shutdown.watch().unwrap(), hop.clone());
        threads.push(named(name, move || {
            let options = StageOptions { name: name.into(), workers, hop, ..StageOptions::default() };
            let upstream = [up];
            let wiring = Wiring { upstream: &upstream, downstream: down.as_deref() };
            let stats = StageStats::default();
            let handler = |b: &[u8]| {
                if rounds > 0 && name == "stage" {
                    let h = burn(b, rounds);
                    Ok(Some(h.to_be_bytes().to_vec()))
                } else if name == "stage" {
                    Ok(Some(b.to_vec()))
                } else {
                    Ok(None)
                }
            };
            stage::run(&ctx, wiring, &options, handler, |_| Ok(()), &stats, &stop).unwrap();
        }));
    }
    // Wait until both hops are wired (the stage has granted credit).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !source.ready() {
        assert!(Instant::now() < deadline, "the stage never connected");
        source.service(|_| {}).unwrap();
        std::thread::yield_now();
    }
    let start = Instant::now();
    let (mut next, mut acked) = (0u64, 0u64);
    while acked < n {
        source.service(|_| acked += 1).unwrap();
        while next < n && source.try_send(next, 0, BODY.to_vec()).unwrap().is_ok() {
            next += 1;
        }
        let mut items = [source.socket().as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 5).unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    shutdown.trigger();
    for t in threads {
        t.join().unwrap();
    }
    rate
}

/// The same work on `threads` plain threads, no pipeline: what the machine's cores give.
fn bare_threads(n: u64, threads: u64, rounds: u32) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| named("burn", move || (0..n / threads).fold(0u64, |acc, _| acc ^ burn(&BODY, rounds))))
        .collect();
    let x = handles.into_iter().fold(0, |acc, h| acc ^ h.join().unwrap());
    std::hint::black_box(x);
    n as f64 / start.elapsed().as_secs_f64()
}

/// PUSH → PULL/PUSH relay → PULL, HWMs unlimited: the same hops with no credit or acks.
fn bare_chain(n: u64, tag: &str) -> f64 {
    let ctx = zmq::Context::new();
    let (src, mid) = (format!("inproc://bare-{tag}-src"), format!("inproc://bare-{tag}-mid"));
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_sndhwm(0).unwrap();
    push.bind(&src).unwrap();
    let relay_out = ctx.socket(zmq::PUSH).unwrap();
    relay_out.set_sndhwm(0).unwrap();
    relay_out.bind(&mid).unwrap();
    let relay_ctx = ctx.clone();
    let relay = named("relay", move || {
        let pull = relay_ctx.socket(zmq::PULL).unwrap();
        pull.set_rcvhwm(0).unwrap();
        pull.connect(&src).unwrap();
        let mut msg = zmq::Message::new();
        for _ in 0..n {
            pull.recv(&mut msg, 0).unwrap();
            relay_out.send(&msg[..], 0).unwrap();
        }
    });
    let sink_ctx = ctx.clone();
    let sink = named("sink", move || {
        let pull = sink_ctx.socket(zmq::PULL).unwrap();
        pull.set_rcvhwm(0).unwrap();
        pull.connect(&mid).unwrap();
        let mut msg = zmq::Message::new();
        pull.recv(&mut msg, 0).unwrap();
        let start = Instant::now();
        for _ in 1..n {
            pull.recv(&mut msg, 0).unwrap();
        }
        start
    });
    let start = Instant::now();
    for _ in 0..n {
        push.send(&BODY[..], 0).unwrap();
    }
    relay.join().unwrap();
    let _first = sink.join().unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::from_env();
    let messages: u64 = args.get("--messages", 200_000);
    let cpu_messages: u64 = args.get("--cpu-messages", 20_000);
    let window: u32 = args.get("--window", 256);
    let rounds: u32 = args.get("--rounds", 2_000);
    println!(
        "pipeline benchmark: {} cores, window {window}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Interleaved with the baseline, so a machine whose load changes meanwhile skews both alike.
    let bare_one = bare_threads(cpu_messages, 1, rounds);
    let one = pipeline(cpu_messages, 1, window, rounds, "cpu1");
    let bare_two = bare_threads(cpu_messages, 2, rounds);
    let two = pipeline(cpu_messages, 2, window, rounds, "cpu2");
    println!(
        "CPU-bound stage ({rounds} rounds: {:.0} µs a message on 1 worker), {cpu_messages} messages:",
        1e6 / one
    );
    println!("  1 worker   {one:>10.0} msg/s");
    println!("  2 workers  {two:>10.0} msg/s   ratio {:.2}", two / one);
    println!(
        "  baseline, the same work on plain threads: 1 {bare_one:.0}/s, 2 {bare_two:.0}/s, ratio {:.2}",
        bare_two / bare_one
    );

    let piped = pipeline(messages, 1, window, 0, "pass");
    let bare = bare_chain(messages, "pass");
    println!("throughput, 100-byte messages, {messages} messages, two hops:");
    println!("  bare PUSH→PULL chain        {bare:>10.0} msg/s");
    println!("  pipeline (credit and acks)  {piped:>10.0} msg/s   ratio {:.2}", piped / bare);
}
