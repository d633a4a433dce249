use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use hub::config::Config;
use hub::serve::Hub;
use transport::Shutdown;

use super::CmdResult;

/// Run the hub until SIGINT or SIGTERM. Every setting has an embedded
/// default; a TOML file (--config) overrides those, and flags override both.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "serve",
    example = "hub serve",
    example = "hub serve --config /etc/plantd/hub.toml",
    example = "hub serve --broker tcp://0.0.0.0:9797 --data-dir /var/lib/plantd-hub",
    example = "hub serve --print-config > hub.toml   # start a config file from the defaults"
)]
pub struct ServeArgs {
    /// TOML config file
    #[argh(option)]
    config: Option<PathBuf>,
    /// broker ROUTER endpoint (default tcp://127.0.0.1:9797)
    #[argh(option)]
    broker: Option<String>,
    /// data directory (default ./data/hub)
    #[argh(option)]
    data_dir: Option<PathBuf>,
    /// print the effective configuration as TOML and exit
    #[argh(switch)]
    print_config: bool,
}

pub fn run(args: ServeArgs) -> CmdResult {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(endpoint) = args.broker {
        config.broker.endpoint = endpoint;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }

    let shutdown = Shutdown::new();
    shutdown.on_termination_signals()?;
    let ctx = zmq::Context::new();
    let hub = Hub::start(&ctx, &config, shutdown)?;
    log::info!("hub up: broker {}, data in {}", hub.broker_endpoint(), config.data_dir.display());
    hub.wait()?;
    log::info!("hub stopped");
    Ok(ExitCode::SUCCESS)
}
