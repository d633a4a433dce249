use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use serde_json::{json, Value};
use transport::frames::display_frame;
use transport::gaps::{describe, GapWatch};
use transport::{Shutdown, Subscriber};

use super::{bus_endpoint, client_endpoint, BusSide, CmdResult};

/// Print live messages from a bus, one line each: the topic, then the payload
/// (as JSON when it parses). Runs until interrupted, or until --count messages.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "tap",
    example = "hub tap                                  # everything on the metric bus",
    example = "hub tap --name state org.plantd.State.   # state changes",
    example = "hub tap --bus tcp://10.0.0.5:13001 --json --count 10 org.plantd.Metric.pump1",
    example = "hub tap --durable trend --json org.plantd.Metric.pump1.   # every durable sample, resumes where it stopped",
    note = "Both layouts are understood: a topic frame then a payload frame, or plantd's single frame.",
    note = "The bus is best effort: a subscriber that falls behind misses messages. --durable reads a durable consumer instead (made on the fly if missing; see `hub consumers`): every sample ingest accepted, acknowledged only once printed."
)]
pub struct TapArgs {
    /// this client's secret certificate, for a hub with security (default: $PLANTD_CERT)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// the hub's public certificate, for a hub with security (default: $PLANTD_SERVER_CERT)
    #[argh(option)]
    server_cert: Option<PathBuf>,
    /// bus backend (subscriber) endpoint
    #[argh(option)]
    bus: Option<String>,
    /// bus by name, from the config or the defaults (default metric)
    #[argh(option)]
    name: Option<String>,
    /// config file to look --name up in
    #[argh(option)]
    config: Option<PathBuf>,
    /// print each message as a JSON object {"topic": ..., "payload": ...}
    #[argh(switch)]
    json: bool,
    /// exit after this many messages
    #[argh(option)]
    count: Option<u64>,
    /// read durable consumer NAME through the broker instead of the bus
    #[argh(option)]
    durable: Option<String>,
    /// with --durable: broker endpoint (default tcp://127.0.0.1:9797)
    #[argh(option, default = "super::DEFAULT_BROKER.to_string()")]
    broker: String,
    /// with --durable: milliseconds to wait for each answer (default 5000)
    #[argh(option, default = "5000")]
    timeout: u64,
    /// topic prefixes to subscribe to (default: all)
    #[argh(positional, greedy)]
    prefixes: Vec<String>,
}

pub fn run(args: TapArgs) -> CmdResult {
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    if let Some(name) = args.durable {
        let tap = super::consumers::DurableTap {
            name,
            prefixes: args.prefixes,
            json: args.json,
            count: args.count,
            broker: args.broker,
            cert: args.cert,
            server_cert: args.server_cert,
            timeout: Duration::from_millis(args.timeout),
        };
        return super::consumers::tap(tap, &shutdown);
    }
    let endpoint = bus_endpoint(args.bus, args.name, args.config.as_ref(), BusSide::Backend)?;
    let ctx = zmq::Context::new();
    let prefixes: Vec<&[u8]> = args.prefixes.iter().map(|p| p.as_bytes()).collect();
    let mut subscriber =
        Subscriber::connect(&ctx, client_endpoint(&endpoint, args.cert, args.server_cert)?, &prefixes)?;
    log::info!("tapping {endpoint}");
    let mut seen = 0;
    let mut gaps = MissedReport::new();
    while !shutdown.is_triggered() && args.count.is_none_or(|n| seen < n) {
        gaps.say_when_due();
        let Some(message) = subscriber.recv(Duration::from_millis(250))? else { continue };
        seen += 1;
        let topic = String::from_utf8_lossy(&message.topic);
        let payload = serde_json::from_slice::<Value>(&message.payload).ok();
        if let Some(payload) = &payload {
            gaps.watch.observe_json(payload);
        }
        if args.json {
            let payload = payload.unwrap_or_else(|| json!(display_frame(&message.payload)));
            println!("{}", json!({"topic": topic, "payload": payload}));
        } else {
            let payload = payload.map_or_else(|| display_frame(&message.payload), |v| v.to_string());
            println!("{topic} {payload}");
        }
    }
    gaps.say_total();
    Ok(ExitCode::SUCCESS)
}

/// The bus is best effort: a subscriber too slow for the hub is dropped for.
/// Durable samples carry (agent, epoch, seq), so the tap says on stderr when
/// it missed some: at most once a second, and in all when it stops.
struct MissedReport {
    watch: GapWatch,
}

/// (agent, epoch) pairs the tap follows; past it the least recently heard is forgotten.
const TRACKED_STREAMS: usize = 100_000;

impl MissedReport {
    fn new() -> MissedReport {
        MissedReport { watch: GapWatch::new(TRACKED_STREAMS) }
    }

    fn say_when_due(&mut self) {
        if let Some(missed) = self.watch.report(Instant::now()) {
            eprintln!("hub tap: {} (the bus dropped them for this tap: too slow?)", describe(&missed, 10));
        }
    }

    /// The total (what was not yet reported included).
    fn say_total(&self) {
        let totals = self.watch.totals();
        if totals.missed > 0 {
            eprintln!(
                "hub tap: missed {} durable samples in all, received {} (bus subscribers are served best effort)",
                totals.missed, totals.durable
            );
        } else if totals.durable > 0 {
            log::info!("{} durable samples received, none skipped", totals.durable);
        }
    }
}
