//! Durable consumer benchmark: one consumer draining a backlog of durable
//! samples from ingest's journal (fetch, then acknowledge, as
//! `hub tap --durable` does), against a plain bus tap receiving the same
//! samples published straight onto the bus, in the same run. Then the
//! latency of a consumer that keeps up: from ingest's acknowledgement of a
//! sample to the consumer holding it.
//!
//!   cargo bench -p hub --bench consumer [-- --samples 1000000 --max 10000]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{endpoint, send_batch, HubChild};
use proto::bus::Framing;
use proto::consumer::{Fetched, Request, Sample as Delivered};
use proto::ingest::Sent;
use proto::mdp::Dialect;
use proto::sample::{Quality, Sample, Value};
use testkit::bench::{named, Args};

fn sample(seq: u64) -> Sample {
    Sample {
        channel: "temp".into(),
        epoch: 42,
        seq,
        wall_ns: 1_700_000_000_000_000_000 + seq as i64,
        mono_ns: seq,
        clock_synced: true,
        value: Value::Number(seq as f64 / 10.0),
        unit: "degC".into(),
        quality: Quality::Good,
    }
}

/// A hub with the metric bus (no high-water mark: the tap misses nothing)
/// and one durable consumer, `drain`, whose bounds hold the whole backlog.
fn hub(samples: u64) -> (HubChild, String, String, tempfile::TempDir) {
    let (frontend, backend) = (endpoint(), endpoint());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    let text = format!(
        "[[bus]]\nname = \"metric\"\nfrontend = \"{frontend}\"\nbackend = \"{backend}\"\nhwm = 0\n\n[state]\nenabled = false\n\n[http]\nlisten = \"off\"\n\n[broker]\nrequest_expiry_ms = 600000\n\n[[consumer]]\nname = \"drain\"\npolicy = \"block\"\nmax_records = {}\nmax_bytes = {}\n",
        samples * 2,
        samples * 1024
    );
    std::fs::write(&config, text).unwrap();
    (HubChild::start_with(&["--config", config.to_str().unwrap()]), frontend, backend, dir)
}

fn client(endpoint: &str) -> transport::Client {
    let options =
        transport::ClientOptions { timeout: Duration::from_secs(30), retries: 0, ..Default::default() };
    transport::Client::new(&zmq::Context::new(), transport::Endpoint::plain(endpoint), options)
}

/// One request: the answer, and the samples frame of a fetch.
fn ask(client: &mut transport::Client, request: &Request) -> (serde_json::Value, Vec<u8>) {
    let frames = request.encode();
    let reply = client.request(proto::consumer::SERVICE, &[&frames[0], &frames[1]]).expect("an answer");
    let answer: serde_json::Value = serde_json::from_slice(&reply[0]).expect("a JSON answer");
    assert!(answer.get("error").is_none(), "{answer}");
    (answer, reply.get(1).map(|f| f.to_vec()).unwrap_or_default())
}

fn fetch(client: &mut transport::Client, after: u64, max: u32, wait_ms: u64) -> (Fetched, Vec<u8>) {
    // Acknowledges what came before with the same request, as `hub tap --durable` does.
    let ack = (after > 0).then_some(after);
    let (answer, lines) = ask(client, &Request::Fetch { name: "drain".into(), after, max, wait_ms, ack });
    (serde_json::from_value(answer).expect("a fetch answer"), lines)
}

fn ack(client: &mut transport::Client, pos: u64) {
    ask(client, &Request::Ack { name: "drain".into(), pos });
}

/// Fills the journal with `samples` through ingest, 4 agents (`<fleet>-N`) in batches of 1000.
fn fill(endpoint: &str, fleet: &'static str, samples: u64) {
    let agents = 4;
    let per_agent = samples / agents;
    let senders: Vec<_> = (0..agents)
        .map(|a| {
            let endpoint = endpoint.to_string();
            named("agent", move || {
                let mut client = client(&endpoint);
                let mut seq = 0;
                while seq < per_agent {
                    let batch: Vec<Sent> = (seq + 1..=(seq + 1000).min(per_agent))
                        .map(|s| Sent { sample: sample(s), historical: false })
                        .collect();
                    seq += batch.len() as u64;
                    send_batch(&mut client, &format!("{fleet}-{a}"), batch);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
}

/// The consumer drains `samples`: samples per second. `pipelined`: it asks
/// for the next batch as soon as a batch's header says where it ends, and
/// reads the batch while the hub fetches the next.
fn drain(endpoint: &str, samples: u64, max: u32, pipelined: bool) -> f64 {
    let mut client = client(endpoint);
    let ctx = zmq::Context::new();
    let dealer =
        transport::PipelinedClient::connect(&ctx, transport::Endpoint::plain(endpoint), Dialect::Rfc7)
            .expect("a pipelined client");
    let mut dealer = dealer;
    let (mut got, mut after) = (0u64, 0u64);
    let started = Instant::now();
    let ask_next = |dealer: &transport::PipelinedClient, after: u64| {
        let ack = (after > 0).then_some(after);
        let frames = Request::Fetch { name: "drain".into(), after, max, wait_ms: 1000, ack }.encode();
        dealer.send(proto::consumer::SERVICE.as_bytes(), frames).expect("sent");
    };
    if pipelined {
        ask_next(&dealer, after);
    }
    while got < samples {
        assert!(started.elapsed() < Duration::from_secs(600), "the backlog stopped at {got}");
        let (header, lines) = if pipelined {
            let reply = dealer.recv(Duration::from_secs(30)).expect("an answer").expect("in time");
            let header: Fetched = serde_json::from_slice(&reply.body[0]).expect("a fetch answer");
            if header.next > after {
                ask_next(&dealer, header.next);
            }
            (header, reply.body.get(1).map(|f| f.to_vec()).unwrap_or_default())
        } else {
            fetch(&mut client, after, max, 1000)
        };
        // Read each sample, as a consumer would.
        got += Delivered::parse_all(&lines).expect("samples").len() as u64;
        after = after.max(header.next);
    }
    if pipelined {
        // The last fetch asked (nothing more to come): its empty answer.
        let _ = dealer.recv(Duration::from_secs(5));
    }
    ack(&mut client, after);
    samples as f64 / started.elapsed().as_secs_f64()
}

/// The same samples published straight onto the bus, to a plain tap: samples per second.
fn bus_tap(frontend: &str, backend: &str, samples: u64) -> f64 {
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let backend = backend.to_string();
    named("tap", move || {
        let sub = zmq::Context::new().socket(zmq::SUB).unwrap();
        sub.set_rcvhwm(0).unwrap();
        sub.set_rcvtimeo(10_000).unwrap();
        sub.set_subscribe(b"org.plantd.Metric.").unwrap();
        sub.connect(&backend).unwrap();
        let (mut topic, mut json) = (zmq::Message::new(), zmq::Message::new());
        while sub.recv(&mut topic, 0).is_ok() && sub.recv(&mut json, 0).is_ok() {
            // Read each sample, as a consumer would.
            let _: serde_json::Value = serde_json::from_slice(&json).unwrap();
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_sndhwm(0).unwrap();
    publisher.connect(frontend).unwrap();
    let publish = |topic: &str, json: &str| {
        transport::bus::publish_on(&publisher, Framing::TwoFrame, topic.as_bytes(), json.as_bytes()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the tap never heard a probe");
        publish("org.plantd.Metric.probe.t", "{}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let probes = received.load(Ordering::Relaxed);
    let messages: Vec<(String, String)> = (1..=samples)
        .map(|seq| {
            let agent = format!("pump-{}", seq % 4);
            (sample(seq).topic(&agent), sample(seq).to_json(&agent, true, false).to_string())
        })
        .collect();
    let started = Instant::now();
    for (topic, json) in &messages {
        publish(topic, json);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < probes + messages.len() {
        assert!(Instant::now() < deadline, "the tap stopped short");
        std::thread::sleep(Duration::from_micros(200));
    }
    samples as f64 / started.elapsed().as_secs_f64()
}

/// A consumer keeping up (a fetch waiting at all times): from ingest's
/// acknowledgement of a one-sample batch to the consumer holding it.
fn latency(endpoint: &str, rounds: u64) -> [(Duration, Duration); 2] {
    let mut reader = client(endpoint);
    let (newest, _) = fetch(&mut reader, 0, 1, 0);
    let mut after = newest.next;
    ack(&mut reader, after);
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Instant)>();
    let endpoint_ = endpoint.to_string();
    let writer = named("agent", move || {
        let mut client = client(&endpoint_);
        for seq in 1..=rounds {
            std::thread::sleep(Duration::from_millis(5));
            let sent = Instant::now();
            send_batch(&mut client, "latency", vec![Sent { sample: sample(seq), historical: false }]);
            tx.send((sent, Instant::now())).unwrap();
        }
    });
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    while from_ack.len() < rounds as usize {
        let (header, _) = fetch(&mut reader, after, 1, 5000);
        let arrived = Instant::now();
        if header.count == 0 {
            continue;
        }
        let (sent, acked) = rx.recv_timeout(Duration::from_secs(10)).expect("the batch was acknowledged");
        from_send.push(arrived.saturating_duration_since(sent));
        // The consumer may hold it before the agent has the acknowledgement: no lag then.
        from_ack.push(arrived.saturating_duration_since(acked));
        after = header.next;
        ack(&mut reader, after);
    }
    writer.join().unwrap();
    [from_send, from_ack].map(|mut lags| {
        lags.sort();
        (lags[lags.len() / 2], lags[lags.len() * 99 / 100])
    })
}

fn main() {
    let args = Args::from_env();
    let samples: u64 = args.get("--samples", 1_000_000);
    let max: u32 = args.get("--max", 10_000);
    println!("durable consumer benchmark: a backlog of {samples} samples, fetches of up to {max}, 127.0.0.1");
    let (hub, frontend, backend, _dir) = hub(samples);
    let filling = Instant::now();
    fill(&hub.endpoint, "pump", samples);
    println!("filled the journal through ingest in {:.1} s", filling.elapsed().as_secs_f64());
    let tap = bus_tap(&frontend, &backend, samples);
    let before = hub.cpu();
    let pipelined = drain(&hub.endpoint, samples, max, true);
    let cpu = (hub.cpu() - before).as_secs_f64() * 1e6 / samples as f64;
    // The same backlog again, one request at a time.
    fill(&hub.endpoint, "valve", samples);
    let serial = drain(&hub.endpoint, samples, max, false);
    println!();
    println!("consumer             plain bus tap samples/s   durable consumer samples/s   ratio");
    println!("pipelined (1 ahead)  {tap:>23.0}   {pipelined:>26.0}   {:>5.2}", pipelined / tap);
    println!("one at a time        {tap:>23.0}   {serial:>26.0}   {:>5.2}", serial / tap);
    println!("hub CPU per sample drained: {cpu:.2} us");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let [(send50, send99), (ack50, ack99)] = latency(&hub.endpoint, 200);
    println!();
    println!("a consumer keeping up, 200 one-sample batches: until the consumer holds the sample");
    println!(
        "from the agent sending it (ingest's work included): p50 {:.2} ms, p99 {:.2} ms",
        ms(send50),
        ms(send99)
    );
    println!(
        "from the agent holding ingest's acknowledgement:   p50 {:.2} ms, p99 {:.2} ms",
        ms(ack50),
        ms(ack99)
    );
}
