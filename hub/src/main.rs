//! `hub`: the plantd-edge hub and the operator's tools to talk to it.

mod cmd;

use std::process::ExitCode;

use argh::FromArgs;

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
    example = "hub pipeline status            # per stage: in, out, failed, retried, dead-lettered, queued",
    example = "hub tap --name state               # watch state changes",
    example = "hub tap --durable historian --json # every durable sample, acknowledged once printed",
    example = "hub keygen hub --dir /etc/plantd/keys   # the hub's key pair, for [security]",
    note = "Logging: -v for debug, -vv for trace; RUST_LOG (e.g. RUST_LOG=hub=debug) overrides both."
)]
struct Args {
    /// more logging: -v debug, -vv trace
    #[argh(switch, short = 'v')]
    verbose: u8,
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
    Pipeline(cmd::pipeline::PipelineArgs),
    Dlq(cmd::dlq::DlqArgs),
    Consumers(cmd::consumers::ConsumersArgs),
    State(cmd::state::StateArgs),
    Tap(cmd::tap::TapArgs),
    Publish(cmd::publish::PublishArgs),
    Loadgen(cmd::loadgen::LoadgenArgs),
    EchoWorker(cmd::echo::EchoWorkerArgs),
    Keygen(cmd::keys::KeygenArgs),
    Keys(cmd::keys::KeysArgs),
}

fn main() -> ExitCode {
    plumbing::default_sigpipe();
    let args: Args = argh::from_env();
    plumbing::main("hub", args.verbose, || match args.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::CheckConfig(a) => cmd::check::run(a),
        Command::Call(a) => cmd::call::run(a),
        Command::Agents(a) => cmd::agents::run(a),
        Command::Bridge(a) => cmd::bridge::run(a),
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Dlq(a) => cmd::dlq::run(a),
        Command::Consumers(a) => cmd::consumers::run(a),
        Command::State(a) => cmd::state::run(a),
        Command::Tap(a) => cmd::tap::run(a),
        Command::Publish(a) => cmd::publish::run(a),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::EchoWorker(a) => cmd::echo::run(a),
        Command::Keygen(a) => cmd::keys::keygen(a),
        Command::Keys(a) => cmd::keys::keys(a),
    })
}
