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
    /// allow binding non-loopback endpoints without [security] (anyone who can
    /// reach the hub may then do anything; a warning is logged)
    #[argh(switch)]
    insecure: bool,
}

/// Printed after the config when it has no `[security]`, to show the shape.
const SECURITY_EXAMPLE: &str = r#"
# No [security]: the hub binds loopback only (or everything, with insecure = true).
# To expose it, give it a key pair and an allow-list (see "Secure a site" in the README):
#
# [security]
# server_cert = "/etc/plantd/keys/hub.key_secret"   # from `hub keygen hub --dir /etc/plantd/keys`
# clients_dir = "/etc/plantd/clients"               # peers' NAME.key files; NAME is the identity
# log_interval_ms = 10000                           # denials are logged at most this often per identity
# handshake_timeout_ms = 5000                       # a connection still without a CURVE handshake is closed then
#
# [security.identities]          # identity, or a prefix ending in *, -> roles
# "pump-*" = ["agent"]           # built in: provides org.plantd.Agent.<id>, sends its own ingest, publishes its metrics
# "grafana" = ["viewer"]         # built in: mmi.*, state reads, agent status/read, subscribes to everything
# "ops-*" = ["operator"]         # built in: calls anything, agent write/ack/config, state writes, capture
#
# [security.roles.recipes]       # a role of your own ({id} is the identity's name)
# provide = ["org.plantd.Recipes"]
# call = ["org.plantd.State"]
# agent_ops = []                 # status, read, write, ack, config, state-get, state-set
# publish = { event = ["org.plantd.Recipes."] }
# subscribe = { metric = ["org.plantd.Metric."] }
# capture = []                   # buses whose capture endpoint it may use
# state_read = ["recipes"]
# state_write = ["recipes"]
"#;

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

/// SIGHUP: what a running hub can take from its config without a restart,
/// the log level, and the allow-list.
fn reload(file: Option<&std::path::Path>, security: Option<&hub::security::Security>) {
    if let Some(path) = file {
        match Config::load(path) {
            Ok(config) => plumbing::set_log_level(Some(&config.log_level)),
            Err(e) => log::error!("reload: {e}; keeping the running settings"),
        }
    }
    if let Some(security) = security {
        if let Err(e) = security.reload() {
            log::error!("reload failed, keeping the previous allow-list: {e}");
        }
    }
    log::info!("reloaded the log level and the allow-list; other settings take a restart");
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
    config.insecure |= args.insecure;
    config.validate()?;
    if args.print_config {
        print!("{}", config.to_toml());
        if config.security.is_none() {
            print!("{SECURITY_EXAMPLE}");
        }
        return Ok(ExitCode::SUCCESS);
    }

    plumbing::set_log_level(Some(&config.log_level));
    let shutdown = Shutdown::new();
    let ctx = zmq::Context::new();
    let hub = Hub::start(&ctx, &config, shutdown.clone())?;
    plumbing::on_termination(&shutdown, hub.flusher())?;
    let (security, file) = (hub.security().cloned(), args.config.clone());
    plumbing::on_hangup(move || reload(file.as_deref(), security.as_deref()))?;
    plumbing::systemd::start_watchdog(&shutdown)?;
    plumbing::systemd::notify("READY=1");
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
