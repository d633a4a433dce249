//! What the `hub` and `agent` binaries need from the process they run in:
//! logging (with a level that can change while running), the default
//! SIGPIPE, termination signals turned into a graceful [`Shutdown`], and
//! systemd's notifications ([`systemd`]). Libraries never do this; binaries
//! do it once, first.

pub mod systemd;

use std::process::ExitCode;
use std::sync::{OnceLock, RwLock};

use transport::Shutdown;

/// What a subcommand returns: its exit code, or an error for the user.
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// The exit status of a check that found the configuration invalid
/// (sysexits' EX_CONFIG), so scripts and package hooks can tell it apart.
pub const EX_CONFIG: u8 = 78;

/// Reports an invalid configuration: `NAME: invalid config: ...` on stderr, exit 78.
pub fn config_invalid(name: &str, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {error}");
    ExitCode::from(EX_CONFIG)
}

/// A binary's `main` after parsing its arguments: sets up the process
/// ([`init`]), runs the command, and turns an error into `NAME: error: ...`
/// on stderr and a failing exit code: 78 for a secret file others may read
/// (the configuration is at fault), 1 for anything else.
pub fn main(name: &str, verbose: u8, command: impl FnOnce() -> CmdResult) -> ExitCode {
    init(verbose);
    command().unwrap_or_else(|e| {
        eprintln!("{name}: error: {e}");
        if exposes_a_secret(e.as_ref()) {
            ExitCode::from(EX_CONFIG)
        } else {
            ExitCode::FAILURE
        }
    })
}

/// Whether `error`, or anything in its source chain, is a secret file
/// others may read: however deep the command met it (`serve`, `run`, a
/// client's `--cert`), it exits as a configuration error.
pub fn exposes_a_secret(error: &(dyn std::error::Error + 'static)) -> bool {
    // Bounded: a chain is a few links; 64 is far past any real one.
    std::iter::successors(Some(error), |e| e.source()).take(64).any(|e| e.is::<transport::secret::Exposed>())
}

/// Restores the default SIGPIPE, so `tool | head` ends quietly like any Unix
/// tool. Call it first in `main`, before parsing arguments (`--help` prints too).
pub fn default_sigpipe() {
    // SAFETY: restoring a signal's default disposition, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Restores the default SIGPIPE ([`default_sigpipe`]) and starts logging:
/// `-v` is debug, `-vv` trace, and RUST_LOG overrides both (and any level a
/// config file sets: [`set_log_level`]).
pub fn init(verbose: u8) {
    default_sigpipe();
    let from_flags = match verbose {
        0 => None,
        1 => Some("debug"),
        _ => Some("trace"),
    };
    let fixed = std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()).or(from_flags.map(String::from));
    let logger =
        LOGGER.get_or_init(|| Reloadable { fixed: fixed.is_some(), inner: RwLock::new(build("info")) });
    if let Some(filter) = &fixed {
        logger.replace(filter);
    }
    log::set_max_level(logger.read().filter());
    let _ = log::set_logger(logger);
}

/// Applies a config file's log level (`info`, `debug`, or env_logger
/// directives like `info,hub::broker=debug`), unless RUST_LOG or `-v` chose
/// one; `None` goes back to `info`. Called at start and at every reload.
pub fn set_log_level(level: Option<&str>) {
    let Some(logger) = LOGGER.get() else { return };
    if logger.fixed {
        return;
    }
    let level = level.unwrap_or("info");
    logger.replace(level);
    log::set_max_level(logger.read().filter());
    log::info!("log level: {level}");
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

/// env_logger, swappable: a reload changes the filter of a running process.
struct Reloadable {
    /// RUST_LOG or `-v` set the filter: the config's does not apply.
    fixed: bool,
    inner: RwLock<env_logger::Logger>,
}

impl Reloadable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, env_logger::Logger> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, filter: &str) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = build(filter);
    }
}

fn build(filter: &str) -> env_logger::Logger {
    env_logger::Builder::new().parse_filters(filter).format_timestamp_millis().build()
}

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.read().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.read().log(record)
    }

    fn flush(&self) {
        self.read().flush()
    }
}

/// Triggers `shutdown` on SIGINT or SIGTERM (and tells systemd it is
/// stopping). A second signal runs `last_words` (flush what must not be
/// lost) and exits at once, for an operator whose first Ctrl-C is stuck
/// behind a slow shutdown.
pub fn on_termination(shutdown: &Shutdown, last_words: impl Fn() + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if shutdown.is_triggered() {
                log::warn!("second termination signal: flushing, and exiting now");
                last_words();
                std::process::exit(128 + signal);
            }
            log::info!("termination signal {signal}: shutting down");
            systemd::notify("STOPPING=1");
            shutdown.trigger();
        }
    })?;
    Ok(())
}

/// [`on_termination`] with nothing to flush.
pub fn stop_on_termination_signals(shutdown: &Shutdown) -> std::io::Result<()> {
    on_termination(shutdown, || {})
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
