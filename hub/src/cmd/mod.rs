//! One module per subcommand. Each has its arguments (whose doc comments are
//! the `--help` text) and a `run` that returns the process exit code.

pub mod call;
pub mod echo;
pub mod serve;

/// The broker endpoint clients and workers use unless told otherwise.
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:9797";

pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;
