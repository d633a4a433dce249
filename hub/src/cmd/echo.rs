use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use proto::mdp::worker::WorkerTiming;
use proto::mdp::Dialect;
use transport::{PoolOptions, Shutdown, Worker, WorkerOptions};

use super::{CmdResult, Connection};

/// Run an echo worker: it answers every request with the request's own
/// frames. For demos, smoke tests and benchmarks.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "echo-worker",
    example = "hub echo-worker",
    example = "hub echo-worker --service echo2 --dialect rfc18 --stream",
    example = "hub echo-worker --credit 16",
    note = "--stream (not with rfc7) sends each request frame back as a PARTIAL reply before the FINAL one.",
    note = "--credit N asks the broker to keep up to N requests at this worker at once (a READY with credit=N; a broker without the extension serves it one at a time). They are handled on N threads (--threads), replies in any order; --threads 0 handles them one after another on the worker's thread.",
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct EchoWorkerArgs {
    /// service to register (default echo)
    #[argh(option, default = "String::from(\"echo\")")]
    service: String,
    /// protocol dialect: rfc7 (default), rfc18, majortomo or plantd
    #[argh(option, default = "Dialect::Rfc7")]
    dialect: Dialect,
    /// stream each frame back as a partial reply first
    #[argh(switch)]
    stream: bool,
    /// heartbeat interval in milliseconds (default 2500)
    #[argh(option, default = "2500")]
    heartbeat: u64,
    /// requests held at once (default 1: a stock worker)
    #[argh(option, default = "1")]
    credit: u32,
    /// handler threads when credit is above 1 (default: the credit; 0: the worker's own thread)
    #[argh(option)]
    threads: Option<usize>,
    /// wait this long before each answer, as a slow handler would (default 0)
    #[argh(option, default = "0")]
    delay_ms: u64,
}

/// Most handler threads an echo worker starts.
const MAX_THREADS: usize = 256;

pub fn run(args: EchoWorkerArgs, connection: &Connection) -> CmdResult {
    if args.stream && !args.dialect.supports_partial() {
        return Err(
            "--stream needs a dialect with partial replies: use --dialect rfc18, majortomo or plantd".into(),
        );
    }
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    let timing =
        WorkerTiming { heartbeat_interval: Duration::from_millis(args.heartbeat), ..Default::default() };
    if args.credit == 0 || args.credit > proto::mdp::MAX_CREDIT {
        return Err(format!("--credit must be 1 to {}", proto::mdp::MAX_CREDIT).into());
    }
    let options =
        WorkerOptions { dialect: args.dialect, timing, credit: args.credit, ..WorkerOptions::default() };
    let ctx = zmq::Context::new();
    let worker = Worker::new(&ctx, connection.broker_endpoint()?, &args.service, options);
    let threads = match args.threads {
        _ if args.credit == 1 => 0,
        Some(n) => n.min(MAX_THREADS),
        None => (args.credit as usize).min(MAX_THREADS),
    };
    log::info!(
        "echo worker for '{}' on {} ({}, credit {}, {threads} handler thread(s))",
        args.service,
        connection.broker(),
        args.dialect,
        args.credit
    );
    let (stream, delay) = (args.stream, Duration::from_millis(args.delay_ms));
    let echo = move |body: Vec<zmq::Message>, replier: &mut transport::Replier<'_>| {
        if stream {
            for frame in &body {
                if let Err(e) = replier.partial([&frame[..]]) {
                    log::warn!("partial reply failed: {e}");
                }
            }
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        body
    };
    let stop = shutdown.watch()?;
    if threads == 0 {
        worker.run(&stop, echo)?;
    } else {
        // An echo handler needs little stack.
        let pool =
            PoolOptions { threads, stack_size: 64 << 10, name: "echo".into(), ..PoolOptions::default() };
        worker.run_pool(&stop, pool, echo)?;
    }
    Ok(ExitCode::SUCCESS)
}
