use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use hub::config::{BusConfig, Config};
use hub::serve::Hub;
use transport::Shutdown;

use super::CmdResult;

/// Run the hub until SIGINT or SIGTERM: the Majordomo broker, the message
/// buses, the state service and the health/metrics endpoint. Every setting
/// has an embedded default; a TOML file (--config) overrides those, and
/// flags override both.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "serve",
    example = "hub serve",
    example = "hub serve --config /etc/plantd/hub.toml",
    example = "hub serve --broker tcp://0.0.0.0:9797 --data-dir /var/lib/plantd-hub",
    example = "hub serve --bus metric=tcp://*:11000,tcp://*:11001,tcp://*:11002 --no-state",
    example = "hub serve --print-config > hub.toml   # start a config file from the defaults",
    note = "Default buses (plantd's): state 11000/11001, event 12000/12001, metric 13000/13001 on 127.0.0.1; any --bus replaces them all.",
    note = "Health and Prometheus metrics: http://127.0.0.1:8081/healthz and /metrics (--http off disables)."
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
    /// a bus as NAME=FRONTEND,BACKEND[,CAPTURE]; repeatable, replaces the configured buses
    #[argh(option)]
    bus: Vec<String>,
    /// do not run the state service (org.plantd.State)
    #[argh(switch)]
    no_state: bool,
    /// health/metrics listen address host:port, or "off" (default 127.0.0.1:8081)
    #[argh(option)]
    http: Option<String>,
    /// print the effective configuration as TOML and exit
    #[argh(switch)]
    print_config: bool,
}

/// The config `serve` would run with: file (or defaults), then flags.
pub fn effective_config(
    file: Option<&PathBuf>,
    broker: Option<String>,
    buses: &[String],
) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = match file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(endpoint) = broker {
        config.broker.endpoint = endpoint;
    }
    if !buses.is_empty() {
        config.buses = buses.iter().map(|b| BusConfig::parse_flag(b)).collect::<Result<_, _>>()?;
    }
    Ok(config)
}

pub fn run(args: ServeArgs) -> CmdResult {
    let mut config = effective_config(args.config.as_ref(), args.broker, &args.bus)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.no_state {
        config.state.enabled = false;
    }
    if let Some(listen) = args.http {
        config.http.listen = listen;
    }
    config.validate()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }

    let shutdown = Shutdown::new();
    plumbing::stop_on_termination_signals(&shutdown)?;
    let ctx = zmq::Context::new();
    let hub = Hub::start(&ctx, &config, shutdown)?;
    log::info!(
        "hub up: broker {}, {} bus(es), state service {}, http {}, data in {}",
        hub.broker_endpoint(),
        config.buses.len(),
        if config.state.enabled { "on" } else { "off" },
        hub.http_address().unwrap_or("off"),
        config.data_dir.display()
    );
    hub.wait()?;
    log::info!("hub stopped");
    Ok(ExitCode::SUCCESS)
}
