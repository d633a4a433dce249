//! Process set-up shared by the command-line tools (`hub`, `agent`).

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
