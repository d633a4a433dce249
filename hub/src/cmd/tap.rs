use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use serde_json::{json, Value};
use transport::frames::display_frame;
use transport::gaps::{describe, GapWatch};
use transport::{Shutdown, Subscriber};

use super::{bus_endpoint, BusSide, CmdResult, Connection};

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
    note = "The bus is best effort: a subscriber that falls behind misses messages. --durable reads a durable consumer instead (made on the fly if missing; see `hub consumers`): every sample ingest accepted, acknowledged only once printed.",
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct TapArgs {
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
    /// topic prefixes to subscribe to (default: all)
    #[argh(positional, greedy)]
    prefixes: Vec<String>,
}

pub fn run(args: TapArgs, connection: &Connection) -> CmdResult {
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    if let Some(name) = args.durable {
        let tap = super::consumers::DurableTap {
            name,
            prefixes: args.prefixes,
            json: args.json,
            count: args.count,
        };
        return super::consumers::tap(tap, connection, &shutdown);
    }
    let endpoint = bus_endpoint(args.bus, args.name, args.config.as_ref(), BusSide::Backend)?;
    let ctx = zmq::Context::new();
    let prefixes: Vec<&[u8]> = args.prefixes.iter().map(|p| p.as_bytes()).collect();
    let mut subscriber = Subscriber::connect(&ctx, connection.endpoint(&endpoint)?, &prefixes)?;
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
