//! What the `hub` and `agent` binaries need from the process they run in:
//! logging, the default SIGPIPE, and turning termination signals into a
//! graceful [`Shutdown`]. Libraries never do this; binaries do it once, first.

use std::process::ExitCode;

use transport::Shutdown;

/// What a subcommand returns: its exit code, or an error for the user.
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// A binary's `main` after parsing its arguments: sets up the process
/// ([`init`]), runs the command, and turns an error into `NAME: error: ...`
/// on stderr and a failing exit code.
pub fn main(name: &str, verbose: u8, command: impl FnOnce() -> CmdResult) -> ExitCode {
    init(verbose);
    command().unwrap_or_else(|e| {
        eprintln!("{name}: error: {e}");
        ExitCode::FAILURE
    })
}

/// Restores the default SIGPIPE (so `tool | head` ends quietly, like any
/// Unix tool) and starts logging: `-v` is debug, `-vv` trace, and RUST_LOG
/// overrides both.
pub fn init(verbose: u8) {
    // SAFETY: restoring a signal's default disposition, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

/// Triggers `shutdown` on SIGINT or SIGTERM; a second signal exits at once,
/// for an operator whose first Ctrl-C is stuck behind a slow shutdown.
pub fn stop_on_termination_signals(shutdown: &Shutdown) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if shutdown.is_triggered() {
                log::warn!("second termination signal: exiting now");
                std::process::exit(128 + signal);
            }
            log::info!("termination signal {signal}: shutting down");
            shutdown.trigger();
        }
    })?;
    Ok(())
}

/// Runs `reload` on its own thread at every SIGHUP (the Unix convention for
/// "re-read your configuration"), instead of letting the signal end the process.
pub fn on_hangup(mut reload: impl FnMut() + Send + 'static) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new().name("sighup".into()).spawn(move || {
        for _ in signals.forever() {
            log::info!("SIGHUP: reloading");
            reload();
        }
    })?;
    Ok(())
}
