use std::process::ExitCode;

use argh::FromArgs;
use serde_json::json;

use super::{config_flags, CmdResult};

config_flags! {
    /// Sample every channel once and print the readings, one JSON object per
    /// line. Publishes nothing and leaves the store alone.
    #[derive(FromArgs)]
    #[argh(
        subcommand,
        name = "once",
        example = "agent once --board linux",
        example = "agent once --config /etc/plantd/agent.toml",
        error_code(1, "a channel could not be read (its error is printed)")
    )]
    pub struct OnceArgs {}
}

pub fn run(args: OnceArgs) -> CmdResult {
    let config = args.load()?;
    config.validate()?;
    let channels = agent::run::channels(&config)?;
    let mut failed = false;
    for (name, (channel, driver)) in &channels.by_name {
        let reading = driver.lock().unwrap_or_else(|e| e.into_inner()).read(std::time::Duration::ZERO);
        let line = match reading {
            Ok(value) => {
                json!({"channel": name, "value": value.to_json(), "unit": channel.unit(), "delivery": channel.delivery})
            }
            Err(e) => {
                failed = true;
                json!({"channel": name, "error": e.to_string()})
            }
        };
        println!("{line}");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
