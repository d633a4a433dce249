//! NATS bridge benchmark: agents' durable samples through ingest, the export
//! journal and the bridge into a JetStream stream, against the baseline
//! measured in the same run: the same messages (payload, deduplication id
//! and headers) published straight into a stream by one async-nats client,
//! acknowledged, with the same number in flight.
//!
//!   cargo bench -p hub --bench bridge [-- --samples 100000 --window 256 --rate 5000]
//!   cargo bench -p hub --bench bridge -- --only export   # the export stage alone (for profiling)
//!
//! `BENCH_VERBOSE=1` also prints how long ingest took to accept each run;
//! `BENCH_JOURNAL_MEMORY=0` makes the bridge read every entry from the store
//! (no hand-over in memory), for comparison.
//!
//! Throughput: samples a second into the stream (every one acknowledged).
//! Latency, at a steady `--rate`: from the agent sending a sample to a
//! JetStream consumer of the stream receiving it (bridge), or from publish
//! to acknowledgement (baseline).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{send_batch, HubChild};
use proto::ingest::Sent;
use proto::sample::{Quality, Sample, Value};
use testkit::bench::{named, Args};
use testkit::{free_port, nats_server_binary, Proc};

const SITE: &str = "bench";

fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Each run sends under an epoch of its own: the stream deduplicates on
/// agent/epoch/seq and would take a second run's samples for repeats.
fn next_epoch() -> u64 {
    static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn sample(seq: u64, epoch: u64) -> Sample {
    Sample {
        channel: "temp".into(),
        epoch,
        seq,
        wall_ns: wall_ns(),
        mono_ns: seq,
        clock_synced: true,
        value: Value::Number(seq as f64 / 10.0),
        unit: "degC".into(),
        quality: Quality::Good,
    }
}

/// nats-server with JetStream on a free port, its store in a temp dir.
struct Nats {
    _proc: Proc,
    url: String,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        Nats::start_on(free_port())
    }

    fn start_on(port: u16) -> Nats {
        let store = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(["-a", "127.0.0.1", "-js", "-p", &port.to_string(), "-sd"]).arg(store.path());
        let proc = Proc::spawn("nats-server", cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { _proc: proc, url: format!("nats://127.0.0.1:{port}"), _store: store }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Percentile `p` (0..1) of sorted `values`, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The baseline: `samples` payloads published with acks, `window` in flight.
/// With `rate`, paced, and each publish-to-ack time recorded.
fn direct(url: &str, samples: u64, window: usize, rate: Option<u64>) -> (f64, Vec<Duration>) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = format!("BASE{}", rate.is_some() as u8);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{}.>", stream.to_lowercase())],
            ..Default::default()
        })
        .await
        .expect("stream");
        let subject = format!("{}.metric.pump-0.temp", stream.to_lowercase());
        let mut pending = std::collections::VecDeque::new();
        let mut latencies = Vec::new();
        let started = Instant::now();
        for seq in 1..=samples {
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let payload = sample(seq, 0).to_json("pump-0", true, false).to_string();
            // The same message the bridge sends: payload, id and headers.
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("{SITE}/pump-0/0/{seq}"))
                .header("Plantd-Site", SITE)
                .header("Plantd-Agent", "pump-0")
                .header("Plantd-Epoch", "0")
                .header("Plantd-Seq", seq.to_string().as_str())
                .header("Plantd-Historical", "false")
                .header("Plantd-Durable", "true");
            let ack = js.send_publish(subject.clone(), message).await.expect("publish");
            pending.push_back((Instant::now(), ack));
            while pending.len() >= window || (rate.is_some() && !pending.is_empty()) {
                let (sent, ack) = pending.pop_front().unwrap();
                ack.await.expect("ack");
                latencies.push(sent.elapsed());
            }
        }
        for (_, ack) in pending {
            ack.await.expect("ack");
        }
        (samples as f64 / started.elapsed().as_secs_f64(), latencies)
    })
}

/// A hub with ingest and the bridge to `url`; no bus subscriber (the bridge is the consumer).
fn hub(url: &str, window: usize) -> (HubChild, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    let (frontend, backend) = (common::endpoint(), common::endpoint());
    let text = format!(
        "[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\n\n[state]\nenabled = false\n\n\
         [http]\nlisten = \"off\"\n\n[bridge.nats]\nservers = [\"{url}\"]\nsite = \"{SITE}\"\nexport = [\"org.plantd.Metric.\"]\n\
         max_in_flight = {window}\nmax_rate = 100000000\n"
    );
    // `BENCH_JOURNAL_MEMORY=0`: the bridge reads every entry back from the store (for comparison).
    let text = match std::env::var("BENCH_JOURNAL_MEMORY") {
        Ok(bytes) => format!("{text}\n[ingest]\njournal_memory_bytes = {bytes}\n"),
        Err(_) => text,
    };
    std::fs::write(&config, text).unwrap();
    (HubChild::start_with(&["--config", config.to_str().unwrap()]), dir)
}

/// The export stage alone: `samples` accepted by ingest while NATS is not
/// there yet (they wait in the journal), then NATS started; samples a second
/// from the first acknowledgement to the last.
fn export_only(samples: u64, window: usize) -> f64 {
    let port = free_port();
    let (hub, _config) = hub(&format!("nats://127.0.0.1:{port}"), window);
    let ctx = zmq::Context::new();
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(30), retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(&hub.endpoint), options);
    let epoch = next_epoch();
    let mut seq = 0;
    while seq < samples {
        let last = (seq + 200).min(samples);
        let samples =
            (seq + 1..=last).map(|s| Sent { sample: sample(s, epoch), historical: false }).collect();
        send_batch(&mut client, "pump-0", samples);
        seq = last;
    }
    let _nats = Nats::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let done = acked(&mut client);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= samples {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge did not export {samples} samples in 10 minutes");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (at, from) = first.unwrap();
    (samples - from) as f64 / at.elapsed().as_secs_f64()
}

fn acked(client: &mut transport::Client) -> u64 {
    let reply = client.request(hub::service::SERVICE, &[b"bridge"]).expect("org.plantd.Hub answers");
    let status: serde_json::Value = serde_json::from_slice(&reply[0]).unwrap();
    status["acked"].as_u64().unwrap_or(0)
}

/// `samples` from `agents` agents in batches of `batch` through the hub into
/// the stream; with `rate`, paced (one agent), and each sample's latency to
/// a consumer of the stream recorded.
fn through_bridge(
    url: &str,
    samples: u64,
    agents: usize,
    batch: u64,
    window: usize,
    rate: Option<u64>,
) -> (f64, Vec<Duration>) {
    let (hub, _config) = hub(url, window);
    let ctx = zmq::Context::new();
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(30), retries: 0, ..Default::default() };
    let mut status = transport::Client::new(&ctx, transport::Endpoint::plain(&hub.endpoint), options);
    // The hub is up and its bridge connected once it answers and the stream exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quick = transport::Client::new(
        &ctx,
        transport::Endpoint::plain(&hub.endpoint),
        transport::ClientOptions { timeout: Duration::from_millis(300), retries: 0, ..Default::default() },
    );
    while quick
        .request(hub::service::SERVICE, &[b"bridge"])
        .map_or(true, |r| !String::from_utf8_lossy(&r[0]).contains("\"connected\":true"))
    {
        assert!(Instant::now() < deadline, "the hub's bridge did not connect within 30 s");
    }
    let (latencies_tx, latencies_rx) = std::sync::mpsc::channel();
    let listening = Arc::new(std::sync::Barrier::new(2));
    if rate.is_some() {
        let (url, ready, expected) = (url.to_string(), listening.clone(), samples as usize);
        named("subscriber", move || {
            runtime().block_on(async {
                use async_nats::jetstream::consumer::{pull, DeliverPolicy};
                use smol::stream::StreamExt;
                let client = async_nats::connect(&url).await.expect("connect");
                let js = async_nats::jetstream::new(client);
                let stream = js.get_stream("PLANTD").await.expect("the bridge made its stream");
                let config = pull::OrderedConfig { deliver_policy: DeliverPolicy::New, ..Default::default() };
                let consumer = stream.create_consumer(config).await.expect("a consumer");
                let mut messages = consumer.messages().await.expect("messages");
                ready.wait();
                let mut latencies = Vec::with_capacity(expected);
                while latencies.len() < expected {
                    let next = tokio::time::timeout(Duration::from_secs(30), messages.next()).await;
                    let Ok(Some(Ok(message))) = next else { break };
                    let json: serde_json::Value =
                        serde_json::from_slice(&message.payload).unwrap_or_default();
                    let sent = json["wall_ns"].as_i64().unwrap_or(0);
                    latencies.push(Duration::from_nanos((wall_ns() - sent).max(0) as u64));
                }
                latencies_tx.send(latencies).unwrap();
            })
        });
        listening.wait();
    }
    let started = Instant::now();
    let per_agent = samples / agents as u64;
    let epoch = next_epoch();
    let senders: Vec<_> = (0..agents)
        .map(|a| {
            let endpoint = hub.endpoint.clone();
            named("agent", move || {
                let ctx = zmq::Context::new();
                let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(&endpoint), options);
                let agent = format!("pump-{a}");
                let mut seq = 0;
                while seq < per_agent {
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let last = (seq + batch).min(per_agent);
                    let samples = (seq + 1..=last)
                        .map(|s| Sent { sample: sample(s, epoch), historical: false })
                        .collect();
                    seq = last;
                    send_batch(&mut client, &agent, samples);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let accepted = started.elapsed();
    let total = per_agent * agents as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked(&mut status) < total {
        assert!(Instant::now() < deadline, "the bridge did not export {total} samples in 10 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate_out = total as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("ingest accepted {total} in {accepted:?}, exported all in {:?}", started.elapsed());
    }
    let latencies = if rate.is_some() {
        latencies_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default()
    } else {
        Vec::new()
    };
    (rate_out, latencies)
}

fn main() {
    let args = Args::from_env();
    let samples: u64 = args.get("--samples", 100_000);
    let window: usize = args.get("--window", 256);
    let rate: u64 = args.get("--rate", 5_000);
    if args.text("--only") == Some("export") {
        // For profiling the export stage alone.
        println!("export stage: {:.0} samples/s", export_only(samples, window));
        return;
    }
    let nats = Nats::start();
    println!(
        "bridge benchmark: {samples} samples, {window} in flight, nats-server with JetStream on 127.0.0.1"
    );
    println!();
    println!("throughput into JetStream          direct samples/s   through the hub samples/s   ratio");
    let (base, _) = direct(&nats.url, samples, window, None);
    let export = export_only(samples, window);
    println!("export stage (journal to stream)  {base:>16.0}   {export:>25.0}   {:>5.2}", export / base);
    for agents in [1, 4] {
        let (bridge, _) = through_bridge(&nats.url, samples, agents, 200, window, None);
        println!(
            "end to end, {agents} agent(s), batch 200 {base:>16.0}   {bridge:>25.0}   {:>5.2}",
            bridge / base
        );
    }
    println!();
    let steady = (rate * 3).min(samples);
    let (_, mut base) = direct(&nats.url, steady, window, Some(rate));
    let (_, mut bridge) = through_bridge(&nats.url, steady, 1, (rate / 100).max(1), window, Some(rate));
    base.sort();
    bridge.sort();
    println!("latency at {rate} samples/s   p50 ms   p99 ms");
    println!(
        "direct publish to ack       {:>6.2}   {:>6.2}",
        percentile(&base, 0.5),
        percentile(&base, 0.99)
    );
    println!(
        "agent send to stream consumer {:>6.2}   {:>6.2}  ({} samples, batches every 10 ms)",
        percentile(&bridge, 0.5),
        percentile(&bridge, 0.99),
        bridge.len()
    );
}
