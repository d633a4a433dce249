use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use super::{config_flags, CmdResult};

config_flags! {
    /// Ask the running agent (through its local control socket, so this works
    /// with the hub down) and print its status: link and breaker state,
    /// outbox records, bytes and oldest age, drops, quarantine, clock.
    #[derive(FromArgs)]
    #[argh(subcommand, name = "status", example = "agent status", example = "agent status --data-dir /var/lib/plantd-agent")]
    pub struct StatusArgs {}
}

pub fn run(args: StatusArgs) -> CmdResult {
    let config = args.load()?;
    let status = agent::control::ask_status(&config.data_dir, Duration::from_secs(3))?;
    if std::io::stdout().is_terminal() {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}
