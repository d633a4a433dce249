//! Ingest benchmark: agents' buffered samples through `org.plantd.Ingest`
//! (an MDP request per batch, watermarks checked and flushed) to a
//! subscriber on the metric bus, against the bare publish path measured in
//! the same run: the same messages published straight onto the bus. Each
//! agent sends one batch at a time (as agents did, and do with an older
//! hub), then with `--in-flight` batches on the way, each naming the one it
//! follows, as the agent's uplink does while a backlog drains.
//!
//!   cargo bench -p hub --bench ingest [-- --samples 200000 --batch 200 --in-flight 4]
//!   cargo bench -p hub --bench ingest -- --storm [--agents 100 --backlog 10000 --batch 500 --in-flight 4]
//!
//! The figure is samples per second delivered to the subscriber. `--storm`
//! is the replay storm after a site-wide outage: every agent reconnects at
//! once with its backlog, and the figure is the time until all of it is
//! delivered, against the same samples published bare.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{endpoint, HubChild};
use proto::bus::Framing;
use proto::ingest::{Batch, Echo, Order, Reply, Sent};
use proto::sample::{Quality, Sample, Value};
use testkit::bench::{named, us, Args};

fn sample(channel: &str, epoch: u64, seq: u64) -> Sample {
    Sample {
        channel: channel.into(),
        epoch,
        seq,
        wall_ns: 1_700_000_000_000_000_000 + seq as i64,
        mono_ns: seq,
        clock_synced: true,
        value: Value::Number(seq as f64 / 10.0),
        unit: "degC".into(),
        quality: Quality::Good,
    }
}

/// Warm-up messages and batches come from this agent; they are not counted.
const PROBE: &str = "probe";

/// A hub with the metric bus and ingest only, and a subscriber counting the
/// samples (not the probe's) that reach the bus.
struct Rig {
    hub: HubChild,
    frontend: String,
    /// Samples, and the probe's messages, that reached the subscriber.
    received: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    _config: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let (frontend, backend) = (endpoint(), endpoint());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("hub.toml");
        let text = format!(
            "[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nhwm = 0\n\n[state]\nenabled = false\n\n[http]\nlisten = \"off\"\n"
        );
        std::fs::write(&config, text).unwrap();
        let hub = HubChild::start_with(&["--config", config.to_str().unwrap()]);
        let (received, probes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, count_probes) = (received.clone(), probes.clone());
        named("subscriber", move || {
            let ctx = zmq::Context::new();
            let sub = ctx.socket(zmq::SUB).unwrap();
            sub.set_rcvhwm(0).unwrap();
            // Done when nothing came for 10 s (the run is over).
            sub.set_rcvtimeo(10_000).unwrap();
            sub.set_subscribe(proto::sample::TOPIC_PREFIX.as_bytes()).unwrap();
            sub.connect(&backend).unwrap();
            let probe = format!("{}{PROBE}.", proto::sample::TOPIC_PREFIX);
            let (mut topic, mut json) = (zmq::Message::new(), zmq::Message::new());
            // Two frames per sample: topic, then JSON.
            while sub.recv(&mut topic, 0).is_ok() && sub.recv(&mut json, 0).is_ok() {
                let counter = if topic.starts_with(probe.as_bytes()) { &count_probes } else { &count };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Rig { hub, frontend, received, probes, _config: dir }
    }
}

/// Waits until `received` reaches `target`; the time it happened.
fn delivered(received: &AtomicUsize, target: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "only {} of {target} samples arrived",
            received.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}

/// One agent's samples in batches of `batch`, up to `window` on the way,
/// each after the first naming the last sample of the one before it; the
/// run fails unless every batch is acknowledged.
fn send_pipelined(endpoint: &str, agent: &str, per_agent: u64, batch: usize, window: usize) {
    let ctx = zmq::Context::new();
    let mut client = transport::PipelinedClient::connect(
        &ctx,
        transport::Endpoint::plain(endpoint),
        proto::mdp::Dialect::Rfc7,
    )
    .expect("connect");
    let (mut seq, mut next_id) = (0, 1u64);
    // (id, last seq) of each batch on the way, oldest first.
    let mut flights: std::collections::VecDeque<(u64, u64)> = Default::default();
    while seq < per_agent || !flights.is_empty() {
        if seq < per_agent && flights.len() < window {
            let samples = (seq + 1..=(seq + batch as u64).min(per_agent))
                .map(|s| Sent { sample: sample("temp", 42, s), historical: false })
                .collect::<Vec<_>>();
            seq += samples.len() as u64;
            let body = Batch { agent: agent.into(), samples, events: Vec::new() }.encode();
            let order = Order { id: next_id, follows: flights.back().map(|&(_, last)| (42, last)) }.encode();
            // As the uplink does: in flight, to the service that keeps the order.
            let service = if window > 1 { proto::ingest::ORDERED_SERVICE } else { proto::ingest::SERVICE };
            client.send(service.as_bytes(), [&body[..], &[], &order]).expect("send");
            flights.push_back((next_id, seq));
            next_id += 1;
            continue;
        }
        let reply = client.recv(Duration::from_secs(30)).expect("recv").expect("ingest answers within 30 s");
        let answer = Reply::decode(&reply.body[0]);
        assert!(matches!(answer, Ok(Reply::Ack { .. })), "{answer:?}");
        let echo = Echo::decode(&reply.body[1]).expect("an echo");
        // An Ack covers the batches before it, whose own replies may come after it.
        if let Some(at) = flights.iter().position(|&(id, _)| id == echo.id) {
            flights.drain(..=at);
        }
    }
}

/// `agents` agents, each sending `per_agent` samples in batches of `batch`,
/// `window` batches in flight each. Returns samples/s delivered and hub CPU per sample.
fn through_ingest(agents: usize, per_agent: u64, batch: usize, window: usize) -> (f64, f64) {
    let rig = Rig::start();
    let (hub, received) = (&rig.hub, &rig.received);
    // Until a real subscriber is there, ingest answers Retry: wait for an Ack.
    let ctx = zmq::Context::new();
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(10), retries: 0, ..Default::default() };
    let mut probe = transport::Client::new(&ctx, transport::Endpoint::plain(&hub.endpoint), options);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = vec![Sent { sample: sample("t", 1, 1), historical: false }];
        let body = Batch { agent: PROBE.into(), samples, events: Vec::new() };
        let reply = probe.request(proto::ingest::SERVICE, &[&body.encode()]).expect("ingest answers");
        if matches!(Reply::decode(&reply[0]), Ok(Reply::Ack { .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "ingest never saw the subscriber");
    }
    let before = hub.cpu();
    let started = Instant::now();
    let senders: Vec<_> = (0..agents)
        .map(|a| {
            let endpoint = hub.endpoint.clone();
            named("agent", move || send_pipelined(&endpoint, &format!("pump-{a}"), per_agent, batch, window))
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let total = agents * per_agent as usize;
    let finished = delivered(received, total);
    let cpu = hub.cpu() - before;
    (total as f64 / finished.duration_since(started).as_secs_f64(), us(cpu) / total as f64)
}

/// The same messages ingest would publish, published straight onto the bus.
fn bare(agents: usize, per_agent: u64) -> f64 {
    let rig = Rig::start();
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_sndhwm(0).unwrap();
    publisher.connect(&rig.frontend).unwrap();
    let publish = |topic: &str, json: &str| {
        transport::bus::publish_on(&publisher, Framing::TwoFrame, topic.as_bytes(), json.as_bytes()).unwrap()
    };
    // Probes until the path is wired (the subscriber counts them apart).
    let probe = sample("t", 1, 1).topic(PROBE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.probes.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the subscriber never heard a probe");
        publish(&probe, "{}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let messages: Vec<(String, String)> = (0..agents)
        .flat_map(|a| {
            let agent = format!("pump-{a}");
            (1..=per_agent).map(move |seq| {
                let s = sample("temp", 42, seq);
                (s.topic(&agent), s.to_json(&agent, true, false).to_string())
            })
        })
        .collect();
    let started = Instant::now();
    for (topic, json) in &messages {
        publish(topic, json);
    }
    let finished = delivered(&rig.received, messages.len());
    messages.len() as f64 / finished.duration_since(started).as_secs_f64()
}

/// The replay storm: `agents` agents with `backlog` samples each, all at once.
fn storm(args: &Args) {
    let agents: usize = args.get("--agents", 100);
    let backlog: u64 = args.get("--backlog", 10_000);
    // The agent's own default batch (uplink.batch_records).
    let batch: usize = args.get("--batch", 500);
    let window: usize = args.get("--in-flight", 4);
    let total = agents as u64 * backlog;
    println!("replay storm: {agents} agents reconnecting at once, {backlog} samples each ({total} in all), batches of {batch}, 127.0.0.1");
    let bare_rate = bare(agents, backlog);
    let bare_s = total as f64 / bare_rate;
    println!();
    println!("drained bare in {bare_s:.2} s ({bare_rate:.0} samples/s)");
    for window in [1, window] {
        let (ingest_rate, cpu) = through_ingest(agents, backlog, batch, window);
        let ingest_s = total as f64 / ingest_rate;
        println!(
            "drained through ingest, {window} in flight per agent, in {ingest_s:.2} s ({ingest_rate:.0} samples/s, hub CPU {cpu:.2} us per sample): ratio (bare time / ingest time) {:.2}",
            bare_s / ingest_s
        );
    }
}

fn main() {
    let args = Args::from_env();
    if std::env::args().any(|a| a == "--storm") {
        return storm(&args);
    }
    let samples: u64 = args.get("--samples", 200_000);
    let batch: usize = args.get("--batch", 200);
    let window: usize = args.get("--in-flight", 4);
    let workers = hub::config::IngestConfig::default().workers;
    println!(
        "ingest benchmark: {samples} samples in batches of {batch}, 127.0.0.1, ingest.workers = {workers}"
    );
    println!();
    println!(
        "agents   in flight   bare publish samples/s   through ingest samples/s   ratio   hub CPU per sample"
    );
    for agents in [1, 4, 16] {
        let per_agent = samples / agents as u64;
        let bare = bare(agents, per_agent);
        for window in [1, window] {
            let (ingest, cpu) = through_ingest(agents, per_agent, batch, window);
            println!(
                "{agents:>6}   {window:>9}   {bare:>22.0}   {ingest:>24.0}   {:>5.2}   {cpu:>9.2} us",
                ingest / bare
            );
        }
    }
}
