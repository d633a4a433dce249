//! `hub loadgen`: a fleet of simulated agents in one process, speaking the
//! real protocols, for capacity planning and for the tests and benchmarks.

mod agent;
mod fleet;
mod report;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;
use transport::{Endpoint, Shutdown};

use self::agent::Rules;
use self::fleet::{AgentSummary, Plan, Spec, AGENTS_PER_THREAD};
use self::report::{cpu_time, human, report_until_done, summary};
use self::stats::{Counters, Totals};
use super::{bus_endpoint, print_json, BusSide, CmdResult, DEFAULT_BROKER};

/// Simulate a fleet of agents: N agents in one process, each with its own id,
/// boot epoch, sequence numbers and socket. Durable samples go to the hub's
/// ingest as a real agent's outbox sends them (kept until acknowledged, one
/// batch in flight, resent after a timeout or Retry); best-effort samples are
/// published on the metric bus. Reports every second on stderr, and a summary.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "loadgen",
    example = "hub loadgen --agents 1000 --rate 1 --durable --seconds 60",
    example = "hub loadgen --agents 50 --rate 10 --durable --seconds 3 --json",
    example = "hub loadgen --agents 300 --rate 20                   # live telemetry on the metric bus",
    note = "For hubs without [security]: with it, each agent needs a key of its own and may send only its own id's batches.",
    note = "Each agent holds a socket and a connection: two descriptors here and one in the hub. The limit is raised to the hard limit at start; `ulimit -n` (or LimitNOFILE=) raises that.",
    note = "Exit status: 0 when every sample made was acknowledged (durable) by the end, 1 otherwise."
)]
pub struct LoadgenArgs {
    /// simulated agents (default 100)
    #[argh(option, default = "100")]
    agents: usize,
    /// samples a second, per agent (default 1)
    #[argh(option, default = "1.0")]
    rate: f64,
    /// durable samples, to the hub's ingest (default: best-effort ones, on the metric bus)
    #[argh(switch)]
    durable: bool,
    /// make samples this long, then wait for the last acknowledgements (default: until interrupted)
    #[argh(option)]
    seconds: Option<f64>,
    /// after --seconds, wait this long at most for acknowledgements (default 10)
    #[argh(option, default = "10.0")]
    drain_seconds: f64,
    /// leave batches sent in the first SECONDS (connections being made) out of the latencies (default 0)
    #[argh(option, default = "0.0")]
    warmup_seconds: f64,
    /// broker endpoint, for --durable (default tcp://127.0.0.1:9797)
    #[argh(option, default = "DEFAULT_BROKER.to_string()")]
    broker: String,
    /// bus frontend (publisher) endpoint, without --durable (default: the metric bus's)
    #[argh(option)]
    bus: Option<String>,
    /// agent ids are PREFIX-0, PREFIX-1, ... (default loadgen)
    #[argh(option, default = "String::from(\"loadgen\")")]
    prefix: String,
    /// most samples in one batch (default 500, as the agent)
    #[argh(option, default = "500")]
    batch: usize,
    /// unacknowledged samples each agent keeps; past it the oldest is dropped, counted (default 10000)
    #[argh(option, default = "10000")]
    max_backlog: usize,
    /// milliseconds to wait for an answer before resending on a fresh connection (default 2500)
    #[argh(option, default = "2500")]
    timeout_ms: u64,
    /// send the batches to this service instead of org.plantd.Ingest, taking any answer as an Ack
    /// (a baseline for benchmarks, e.g. against `hub echo-worker`)
    #[argh(option)]
    service: Option<String>,
    /// print the summary as JSON, with each agent's counts
    #[argh(switch)]
    json: bool,
}

/// More simulated agents than this is a typo, not a plan.
const MAX_AGENTS: usize = 100_000;
/// Samples a second one simulated agent may make.
const MAX_RATE: f64 = 100_000.0;
/// A batch within the broker's default 1 MiB message (a sample is under 100 bytes).
const MAX_BATCH: usize = 5000;
/// Epochs are below 2^53, exact in JSON numbers (proto::sample).
const EPOCH_LIMIT: u64 = 1 << 53;
/// Descriptors beyond two per agent: contexts, their threads' wake-ups, epoll sets, stdio.
const SPARE_FDS: u64 = 64;

pub fn run(args: LoadgenArgs) -> CmdResult {
    check(&args)?;
    let fds = raise_descriptor_limit();
    let needed = 2 * args.agents as u64 + SPARE_FDS;
    if fds < needed {
        return Err(format!(
            "{} agents need about {needed} file descriptors (two per agent's socket) and this process may \
             open {fds}: raise the hard limit (`ulimit -Hn`, LimitNOFILE=) or run fewer --agents",
            args.agents
        )
        .into());
    }
    let endpoint = if args.durable {
        Endpoint::plain(&args.broker)
    } else {
        Endpoint::plain(&bus_endpoint(args.bus.clone(), None, None, BusSide::Frontend)?)
    };
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let produce_until = args.seconds.map(|s| started + Duration::from_secs_f64(s));
    let service = args.service.clone().unwrap_or_else(|| proto::ingest::SERVICE.to_string());
    let plan = Arc::new(Plan {
        endpoint: endpoint.clone(),
        period,
        started,
        produce_until,
        drain_until: produce_until.map(|t| t + Duration::from_secs_f64(args.drain_seconds)),
        rules: Rules {
            any_answer_acks: service != proto::ingest::SERVICE,
            service,
            batch: args.batch,
            max_backlog: args.max_backlog,
            timeout: Duration::from_millis(args.timeout_ms),
            // The agent's defaults (uplink backoff_min_ms, backoff_max_ms).
            backoff: (Duration::from_millis(100), Duration::from_millis(5000)),
            measure_from: started + Duration::from_secs_f64(args.warmup_seconds),
        },
    });
    let what = if args.durable { "durable samples to ingest" } else { "best-effort samples on the bus" };
    eprintln!("loadgen: {} agents, {} samples/s each, {what} at {endpoint}", args.agents, args.rate);
    let specs = specs(&args.prefix, args.agents, started, period);
    let (results, threads) = spawn(specs, &plan, args.durable, &shutdown)?;
    let summaries = report_until_done(&results, &threads, args.durable, started);
    let (agents, failure) = collect(summaries);
    let elapsed = started.elapsed();
    let totals = Totals::gather(&threads, false);
    let summary = summary(&args, &totals, &agents, elapsed, cpu_time());
    if args.json {
        print_json(&summary)?;
    } else {
        print!("{}", human(&summary));
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    let unacknowledged = totals.samples - totals.acknowledged - totals.dropped;
    if args.durable && (unacknowledged > 0 || totals.dropped > 0) {
        eprintln!(
            "loadgen: {unacknowledged} samples were not acknowledged by the end and {} were dropped from full \
             outboxes (see the hub's log, `hub agents`, and --drain-seconds)",
            totals.dropped
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &LoadgenArgs) -> Result<(), String> {
    if args.agents == 0 || args.agents > MAX_AGENTS {
        return Err(format!("--agents must be 1 to {MAX_AGENTS}"));
    }
    if !(args.rate > 0.0 && args.rate <= MAX_RATE) {
        return Err(format!("--rate must be above 0 and at most {MAX_RATE} samples a second"));
    }
    if args.batch == 0 || args.batch > MAX_BATCH {
        return Err(format!("--batch must be 1 to {MAX_BATCH}"));
    }
    if args.max_backlog == 0 {
        return Err("--max-backlog must be at least 1".into());
    }
    if !(100..=600_000).contains(&args.timeout_ms) {
        return Err("--timeout-ms must be 100 to 600000".into());
    }
    let seconds = [args.seconds.unwrap_or(1.0), args.drain_seconds, args.warmup_seconds];
    if seconds.iter().any(|s| !(s.is_finite() && *s >= 0.0 && *s <= 1e7)) {
        return Err("--seconds, --drain-seconds and --warmup-seconds take a number of seconds".into());
    }
    if args.prefix.is_empty() || args.prefix.contains(['\0', '.']) {
        return Err("--prefix must be a non-empty id without '.' (it is part of the topic)".into());
    }
    Ok(())
}

/// Sets the descriptor limit to its hard limit; returns the limit now.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on this process, with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// The agents: ids, a random boot epoch each (as a real agent draws at every
/// start), first samples spread over one period.
fn specs(prefix: &str, n: usize, started: Instant, period: Duration) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            id: format!("{prefix}-{i}"),
            epoch: fastrand::u64(1..EPOCH_LIMIT),
            first: started + period.mul_f64(fastrand::f64()),
        })
        .collect()
}

pub(super) type Results = std::sync::mpsc::Receiver<Result<Vec<AgentSummary>, String>>;

/// One driver thread per [`AGENTS_PER_THREAD`] agents.
fn spawn(
    specs: Vec<Spec>,
    plan: &Arc<Plan>,
    durable: bool,
    shutdown: &Shutdown,
) -> std::io::Result<(Results, Vec<Arc<Counters>>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut counters = Vec::new();
    for (n, shard) in specs.chunks(AGENTS_PER_THREAD).enumerate() {
        let (shard, plan, shutdown, tx) = (shard.to_vec(), plan.clone(), shutdown.clone(), tx.clone());
        let mine = Arc::new(Counters::default());
        counters.push(mine.clone());
        std::thread::Builder::new().name(format!("loadgen-{n}")).spawn(move || {
            let result = if durable {
                fleet::run_durable(shard, plan, mine, shutdown.clone())
            } else {
                fleet::run_live(shard, plan, mine, shutdown.clone())
            };
            if result.is_err() {
                // One shard failing stops the run: its figures would be wrong.
                shutdown.trigger();
            }
            let _ = tx.send(result);
        })?;
    }
    Ok((rx, counters))
}

/// Every agent's summary, by agent order; the first driver error if any.
fn collect(results: Vec<Result<Vec<AgentSummary>, String>>) -> (Vec<AgentSummary>, Option<String>) {
    let mut agents = Vec::new();
    let mut failure = None;
    for result in results {
        match result {
            Ok(mut shard) => agents.append(&mut shard),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let number = |id: &str| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    agents.sort_by_key(|a| number(&a.id));
    (agents, failure)
}
