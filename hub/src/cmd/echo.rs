use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use proto::mdp::worker::WorkerTiming;
use proto::mdp::Dialect;
use transport::{Shutdown, Worker, WorkerOptions};

use super::{client_endpoint, CmdResult, DEFAULT_BROKER};

/// Run an echo worker: it answers every request with the request's own
/// frames. For demos, smoke tests and benchmarks.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "echo-worker",
    example = "hub echo-worker",
    example = "hub echo-worker --service echo2 --dialect rfc18 --stream",
    note = "--stream (not with rfc7) sends each request frame back as a PARTIAL reply before the FINAL one."
)]
pub struct EchoWorkerArgs {
    /// this client's secret certificate, for a hub with security (default: $PLANTD_CERT)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// the hub's public certificate, for a hub with security (default: $PLANTD_SERVER_CERT)
    #[argh(option)]
    server_cert: Option<PathBuf>,
    /// broker endpoint (default tcp://127.0.0.1:9797)
    #[argh(option, default = "DEFAULT_BROKER.to_string()")]
    broker: String,
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
}

pub fn run(args: EchoWorkerArgs) -> CmdResult {
    if args.stream && !args.dialect.supports_partial() {
        return Err(
            "--stream needs a dialect with partial replies: use --dialect rfc18, majortomo or plantd".into(),
        );
    }
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    let timing =
        WorkerTiming { heartbeat_interval: Duration::from_millis(args.heartbeat), ..Default::default() };
    let options = WorkerOptions { dialect: args.dialect, timing, ..WorkerOptions::default() };
    let ctx = zmq::Context::new();
    let worker = Worker::new(
        &ctx,
        client_endpoint(&args.broker, args.cert, args.server_cert)?,
        &args.service,
        options,
    );
    log::info!("echo worker for '{}' on {} ({})", args.service, args.broker, args.dialect);
    let stream = args.stream;
    worker.run(
        &shutdown.watch()?,
        move |body: Vec<zmq::Message>, replier: &mut transport::Replier<'_>| {
            if stream {
                for frame in &body {
                    if let Err(e) = replier.partial([&frame[..]]) {
                        log::warn!("partial reply failed: {e}");
                    }
                }
            }
            body
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
