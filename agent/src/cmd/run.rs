use std::process::ExitCode;

use argh::FromArgs;
use transport::Shutdown;

use super::{config_flags, CmdResult};

config_flags! {
    /// Run the agent until SIGINT or SIGTERM: sample every channel, publish
    /// best-effort telemetry live, keep durable samples in the outbox and send
    /// them to the hub, serve org.plantd.Agent.<id> through the hub.
    #[derive(FromArgs)]
    #[argh(
        subcommand,
        name = "run",
        example = "agent run --board sim --id demo",
        example = "agent run --config /etc/plantd/agent.toml",
        example = "agent run --board rpi4 --hub-broker tcp://10.0.0.5:9797 --hub-bus tcp://10.0.0.5:13000",
        note = "Durable samples survive link outages, hub restarts and agent restarts; see `agent status` for the outbox.",
        error_code(74, "it stopped while its store was failing (a full disk, say): samples were lost")
    )]
    pub struct RunArgs {}
}

pub fn run(args: RunArgs) -> CmdResult {
    let config = args.load()?;
    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    match agent::run::run(&config, shutdown) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ agent::run::RunError::StoreFailing(_)) => {
            log::error!("{e}");
            eprintln!("agent: error: {e}");
            Ok(ExitCode::from(agent::run::EX_IOERR))
        }
        Err(e) => Err(e.into()),
    }
}
