//! `agent`: the plantd-edge agent and its field diagnostics.

mod cmd;

use std::process::ExitCode;

use argh::FromArgs;

/// The plantd-edge agent: samples a plant controller's channels, publishes
/// live telemetry, and keeps every durable sample through link outages until
/// the hub has acknowledged it.
#[derive(FromArgs)]
#[argh(
    example = "agent run --board sim --id demo                  # simulated board, hub on 127.0.0.1",
    example = "agent run --config /etc/plantd/agent.toml",
    example = "agent check                                      # before trusting a new install",
    example = "agent once --board linux                         # sample every channel once, print",
    example = "agent status                                     # ask the running agent",
    example = "agent modbus read --tcp 10.0.0.20:502 holding 100 2 --as f32   # find a register's word order",
    note = "Logging: -v for debug, -vv for trace; RUST_LOG (e.g. RUST_LOG=agent=debug) overrides both."
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
    Run(cmd::run::RunArgs),
    Check(cmd::check::CheckArgs),
    Once(cmd::once::OnceArgs),
    Status(cmd::status::StatusArgs),
    Store(cmd::store::StoreArgs),
    Keygen(cmd::keygen::KeygenArgs),
    Modbus(cmd::modbus::ModbusArgs),
}

fn main() -> ExitCode {
    plumbing::default_sigpipe();
    few_malloc_arenas();
    let args: Args = argh::from_env();
    plumbing::main("agent", args.verbose, || match args.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Once(a) => cmd::once::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Store(a) => cmd::store::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Modbus(a) => cmd::modbus::run(a),
    })
}

/// glibc gives each thread that allocates an arena of its own (up to eight
/// per core), each keeping the memory freed in it; the agent runs about
/// twenty threads (sled's seven I/O threads among them) that allocate
/// little. Two arenas hold the same work: measured idle on the sim board,
/// about 0.3 MB less PSS (docs/performance.md).
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
