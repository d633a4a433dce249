use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

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
    plumbing::set_log_level(Some(&config.log_level));
    let shutdown = Shutdown::new();
    // A second signal's last words flush the stores, once they are open.
    let flush: Arc<OnceLock<Box<dyn Fn() + Send + Sync>>> = Arc::default();
    plumbing::on_termination(&shutdown, {
        let flush = flush.clone();
        move || flush.get().map_or((), |f| f())
    })?;
    let file = args.config.clone();
    plumbing::on_hangup(move || reload(file.as_deref()))?;
    let started = |flusher| {
        let _ = flush.set(flusher);
        if let Err(e) = plumbing::systemd::start_watchdog(&shutdown) {
            log::error!("cannot start the watchdog thread: {e}");
        }
        plumbing::systemd::notify("READY=1");
    };
    match agent::run::run(&config, shutdown.clone(), started) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ agent::run::RunError::StoreFailing(_)) => {
            log::error!("{e}");
            eprintln!("agent: error: {e}");
            Ok(ExitCode::from(agent::run::EX_IOERR))
        }
        Err(e) => Err(e.into()),
    }
}

/// SIGHUP: the log level is what a running agent takes from its config
/// without a restart.
fn reload(file: Option<&std::path::Path>) {
    match file.map(agent::config::Config::load) {
        Some(Ok(config)) => plumbing::set_log_level(Some(&config.log_level)),
        Some(Err(e)) => log::error!("reload: {e}; keeping the running settings"),
        None => log::info!("reload: no --config file to re-read"),
    }
}
