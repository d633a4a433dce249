//! `hub`: the plantd-edge hub and the operator's tools to talk to it.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

/// mimalloc for the hub's own allocations: ingest and the bridge make many
/// small ones per sample on several threads, and glibc's allocator was a
/// third of their time (docs/performance.md). libzmq keeps glibc's, so the
/// bus's `malloc_trim` still returns what subscribers' queues held. The
/// agent keeps glibc's too: there, resident memory matters more than speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The plantd-edge hub: a Majordomo broker for plant controllers, and the
/// operator's tools to talk to it.
#[derive(FromArgs)]
#[argh(
    example = "hub serve                      # broker on tcp://127.0.0.1:9797, data in ./data/hub",
    example = "hub echo-worker &              # a demo service called \"echo\"",
    example = "hub call echo hello            # prints: hello",
    example = "hub call mmi.services          # what is registered",
    example = "hub state --scope plant set mode auto",
    example = "hub agents                     # every agent: link, last seen, backlog, lag",
    example = "hub config set 'pump-*' pumps.toml   # channels for every pump-* agent, applied within seconds",
    example = "hub pipeline status            # per stage: in, out, failed, retried, dead-lettered, queued",
    example = "hub tap --name state               # watch state changes",
    example = "hub tap --durable historian --json # every durable sample, acknowledged once printed",
    example = "hub keygen hub --dir /etc/plantd/keys   # the hub's key pair, for [security]",
    example = "hub --broker tcp://10.0.0.5:9797 agents   # connection options before the command, or after it",
    example = "hub context add site-a --broker tcp://10.0.0.5:9797 --cert op.key_secret --server-cert hub.key",
    note = "Client commands connect as the options say, else $PLANTD_BROKER, $PLANTD_CERT, $PLANTD_SERVER_CERT, $PLANTD_TIMEOUT_MS, else the current context (see `hub context --help`).",
    note = "Logging: -v for debug, -vv for trace; RUST_LOG (e.g. RUST_LOG=hub=debug) overrides both."
)]
struct Args {
    /// more logging: -v debug, -vv trace
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// client commands: the broker endpoint (default: the context's, else tcp://127.0.0.1:9797)
    #[argh(option)]
    broker: Option<String>,
    /// client commands: this client's secret certificate, for a hub with security
    #[argh(option)]
    cert: Option<PathBuf>,
    /// client commands: the hub's public certificate, for a hub with security
    #[argh(option)]
    server_cert: Option<PathBuf>,
    /// client commands: milliseconds to wait for replies (default: each command's)
    #[argh(option)]
    timeout: Option<u64>,
    /// client commands: connect as the named context says (see `hub context`)
    #[argh(option)]
    context: Option<String>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(cmd::serve::ServeArgs),
    CheckConfig(cmd::check::CheckConfigArgs),
    Call(cmd::call::CallArgs),
    Agents(cmd::agents::AgentsArgs),
    Bridge(cmd::bridge::BridgeArgs),
    Sparkplug(cmd::sparkplug::SparkplugArgs),
    Pipeline(cmd::pipeline::PipelineArgs),
    Dlq(cmd::dlq::DlqArgs),
    Consumers(cmd::consumers::ConsumersArgs),
    Config(cmd::fleet::ConfigArgs),
    State(cmd::state::StateArgs),
    Tap(cmd::tap::TapArgs),
    Publish(cmd::publish::PublishArgs),
    Loadgen(cmd::loadgen::LoadgenArgs),
    EchoWorker(cmd::echo::EchoWorkerArgs),
    Keygen(cmd::keys::KeygenArgs),
    Keys(cmd::keys::KeysArgs),
    Context(cmd::context::ContextArgs),
}

fn main() -> ExitCode {
    plumbing::default_sigpipe();
    let args = parse();
    let flags = cmd::context::Flags {
        broker: args.broker,
        cert: args.cert,
        server_cert: args.server_cert,
        timeout: args.timeout,
        context: args.context,
    };
    // Resolved only for the commands that connect: a bad contexts file
    // must not stop `hub serve`.
    let connection = || cmd::context::Connection::resolve(flags.clone());
    plumbing::main("hub", args.verbose, || match args.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::CheckConfig(a) => cmd::check::run(a),
        Command::Call(a) => cmd::call::run(a, &connection()?),
        Command::Agents(a) => cmd::agents::run(a, &connection()?),
        Command::Bridge(a) => cmd::bridge::run(a, &connection()?),
        Command::Sparkplug(a) => cmd::sparkplug::run(a, &connection()?),
        Command::Pipeline(a) => cmd::pipeline::run(a, &connection()?),
        Command::Dlq(a) => cmd::dlq::run(a, &connection()?),
        Command::Consumers(a) => cmd::consumers::run(a, &connection()?),
        Command::Config(a) => cmd::fleet::run(a, &connection()?),
        Command::State(a) => cmd::state::run(a, &connection()?),
        Command::Tap(a) => cmd::tap::run(a, &connection()?),
        Command::Publish(a) => cmd::publish::run(a, &connection()?),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::EchoWorker(a) => cmd::echo::run(a, &connection()?),
        Command::Keygen(a) => cmd::keys::keygen(a),
        Command::Keys(a) => cmd::keys::keys(a),
        Command::Context(a) => cmd::context::run(a, flags.clone()),
    })
}

/// The command line, with the connection options a client command was
/// given after its name moved before it (see [`cmd::context::lift`]), parsed
/// as `argh::from_env` does.
fn parse() -> Args {
    let strings: Vec<String> =
        std::env::args_os().map(|s| s.into_string()).collect::<Result<Vec<_>, _>>().unwrap_or_else(|arg| {
            eprintln!("hub: an argument is not UTF-8: {}", arg.to_string_lossy());
            std::process::exit(1)
        });
    let strings = cmd::context::lift(strings);
    let name =
        strings.first().map(std::path::Path::new).and_then(|p| p.file_name()?.to_str()).unwrap_or("hub");
    let strs: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    Args::from_args(&[name], &strs).unwrap_or_else(|early_exit| {
        std::process::exit(match early_exit.status {
            Ok(()) => {
                println!("{}", early_exit.output);
                0
            }
            Err(()) => {
                eprintln!("{}\nRun {name} --help for more information.", early_exit.output);
                1
            }
        })
    })
}
