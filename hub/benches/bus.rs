//! Bus benchmark: one publisher through the hub's bus proxy to one and to
//! four subscribers, 64-byte messages, against a direct PUB→SUB connection
//! and against libzmq's own proxy (`zmq_proxy_steerable`, XSUB→XPUB, in C)
//! measured in the same run.
//!
//!   cargo bench -p hub --bench bus [-- --messages 2000000]
//!
//! High-water marks are unlimited on both paths so nothing is dropped and the
//! figure is delivered messages per second at the slowest subscriber.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{endpoint, HubChild, Secure};
use testkit::bench::{named, us, Args};
use transport::Endpoint;

const MESSAGE: [u8; 64] = *b"bench.topic.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Publishes `n` messages on `publish_to` (bound if `bind`, else connected)
/// and waits until every subscriber on `subscribe_at` has them all. Returns
/// messages per second delivered to the slowest subscriber.
fn run(publish_to: &Endpoint, bind: bool, subscribe_at: &Endpoint, subscribers: usize, n: usize) -> f64 {
    run_with(publish_to, bind.then_some(None), subscribe_at, subscribers, n)
}

/// [`run`]; `bind`: Some to bind the publisher, a CURVE server with these keys if given.
fn run_with(
    publish_to: &Endpoint,
    bind: Option<Option<&transport::curve::ServerKeys>>,
    subscribe_at: &Endpoint,
    subscribers: usize,
    n: usize,
) -> f64 {
    let ctx = zmq::Context::new();
    let publisher = if let Some(server) = bind {
        let socket = ctx.socket(zmq::PUB).unwrap();
        socket.set_sndhwm(0).unwrap();
        if let Some(keys) = server {
            transport::curve::make_server(&socket, keys, "bench").unwrap();
        }
        socket.bind(&publish_to.address).unwrap();
        socket
    } else {
        transport::socket::connect(&ctx, zmq::PUB, publish_to, |s| s.set_sndhwm(0)).unwrap()
    };
    let warmed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..subscribers)
        .map(|_| {
            let (ctx, endpoint, warmed) = (zmq::Context::new(), subscribe_at.clone(), warmed.clone());
            named("subscriber", move || {
                let sub = transport::socket::connect(&ctx, zmq::SUB, &endpoint, |s| {
                    s.set_rcvhwm(0)?;
                    s.set_subscribe(b"")
                })
                .unwrap();
                let mut msg = zmq::Message::new();
                // Warm-up messages until the path is wired, then the measured ones.
                loop {
                    sub.recv(&mut msg, 0).unwrap();
                    if msg.starts_with(b"warm") {
                        warmed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                let mut got = 0;
                while got < n {
                    sub.recv(&mut msg, 0).unwrap();
                    if msg.starts_with(b"bench") {
                        got += 1;
                    }
                }
                Instant::now()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while warmed.load(Ordering::SeqCst) < subscribers {
        assert!(Instant::now() < deadline, "subscribers never heard the warm-up");
        publisher.send(&b"warm"[..], 0).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    for _ in 0..n {
        publisher.send(&MESSAGE[..], 0).unwrap();
    }
    let finished = threads.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    n as f64 / finished.duration_since(started).as_secs_f64()
}

fn direct(subscribers: usize, n: usize) -> f64 {
    let endpoint = Endpoint::plain(&endpoint());
    run(&endpoint, true, &endpoint, subscribers, n)
}

/// Direct PUB→SUB with CURVE on the connection: what the encryption alone costs.
fn direct_curve(n: usize) -> f64 {
    let secure = Secure::new("");
    let address = endpoint();
    run_with(&Endpoint::plain(&address), Some(Some(&secure.server)), &secure.endpoint(&address), 1, n)
}

/// Through libzmq's own proxy (XSUB→XPUB, high-water marks unlimited) on a
/// thread of this process: the C proxy loop, the baseline for the hub's.
fn through_c_proxy(subscribers: usize, n: usize) -> f64 {
    const CONTROL: &str = "inproc://bench-proxy-control";
    let (frontend, backend) = (endpoint(), endpoint());
    let ctx = zmq::Context::new();
    let (proxy_ctx, front, back) = (ctx.clone(), frontend.clone(), backend.clone());
    let proxy = named("c-proxy", move || {
        let xsub = proxy_ctx.socket(zmq::XSUB).unwrap();
        xsub.set_rcvhwm(0).unwrap();
        xsub.bind(&front).unwrap();
        let xpub = proxy_ctx.socket(zmq::XPUB).unwrap();
        xpub.set_sndhwm(0).unwrap();
        xpub.bind(&back).unwrap();
        let control = proxy_ctx.socket(zmq::PAIR).unwrap();
        control.bind(CONTROL).unwrap();
        let (mut xsub, mut xpub, mut control) = (xsub, xpub, control);
        let _ = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut control);
    });
    let rate = run(&Endpoint::plain(&frontend), false, &Endpoint::plain(&backend), subscribers, n);
    let stop = ctx.socket(zmq::PAIR).unwrap();
    stop.connect(CONTROL).unwrap();
    stop.send(&b"TERMINATE"[..], 0).unwrap();
    proxy.join().unwrap();
    rate
}

/// Through `hub serve`'s bus, with CURVE on every connection when `curve`;
/// returns the rate and the hub process's CPU per delivered message.
fn through_hub(subscribers: usize, n: usize, curve: bool) -> (f64, f64) {
    let (frontend, backend) = (endpoint(), endpoint());
    let bus = format!(
        "[[bus]]\nname = \"bench\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nhwm = 0\n\n[state]\nenabled = false\n\n[ingest]\nenabled = false\n\n[http]\nlisten = \"off\"\n"
    );
    let secure = Secure::new(&bus);
    if !curve {
        std::fs::write(&secure.config, &bus).unwrap();
    }
    let hub = HubChild::start_with(&["--config", secure.config.to_str().unwrap()]);
    let at = |address: &str| if curve { secure.endpoint(address) } else { Endpoint::plain(address) };
    let before = hub.cpu();
    let rate = run(&at(&frontend), false, &at(&backend), subscribers, n);
    let cpu = hub.cpu() - before;
    (rate, us(cpu) / (n * subscribers) as f64)
}

fn main() {
    let n = Args::from_env().get("--messages", 2_000_000);
    println!("bus benchmark: 1 publisher, {n} messages of {} bytes, 127.0.0.1", MESSAGE.len());
    println!();
    println!(
        "subscribers   direct PUB->SUB msg/s   libzmq proxy msg/s   through hub msg/s   hub/direct   hub/libzmq proxy   hub CPU per delivery"
    );
    let mut plain_one = 0.0;
    for subscribers in [1, 4] {
        let direct = direct(subscribers, n);
        let c_proxy = through_c_proxy(subscribers, n);
        let (hub, cpu) = through_hub(subscribers, n, false);
        plain_one = if subscribers == 1 { hub } else { plain_one };
        println!(
            "{subscribers:>11}   {direct:>21.0}   {c_proxy:>18.0}   {hub:>17.0}   {:>10.2}   {:>16.2}   {cpu:>8.3} us",
            hub / direct,
            hub / c_proxy
        );
    }
    let direct_curve = direct_curve(n);
    let (curve, cpu) = through_hub(1, n, true);
    println!();
    println!("with [security], CURVE on the publisher's and the subscriber's connections, 1 subscriber:");
    println!(
        "  {curve:.0} msg/s, {:.2} of plaintext through the hub, {cpu:.3} us hub CPU per delivery",
        curve / plain_one
    );
    println!(
        "  direct PUB->SUB with CURVE: {direct_curve:.0} msg/s; the hub with security at {:.2} of it \
         (it decrypts and encrypts once each, and checks every message's publish grant)",
        curve / direct_curve
    );
}
