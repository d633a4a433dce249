use std::path::PathBuf;
use std::time::Duration;

use proto::sample::Value;

/// Reads one value, and for outputs writes one.
pub trait Driver: Send {
    /// The current value; `t` is the time since the agent started (the
    /// simulated signals are functions of it).
    fn read(&mut self, t: Duration) -> Result<Value, DriverError>;

    /// Sets an output. Inputs refuse.
    fn write(&mut self, _value: &Value) -> Result<(), DriverError> {
        Err(DriverError::ReadOnly)
    }

    fn writable(&self) -> bool {
        false
    }
}

/// Why a driver could not read or write. Each names what to check.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot parse {content:?}: {reason}")]
    Parse { path: PathBuf, content: String, reason: String },
    #[error("{what} not found{hint}")]
    NotFound { what: String, hint: String },
    #[error("this channel is an input; only outputs can be written")]
    ReadOnly,
    #[error("{0}")]
    Invalid(String),
    #[error("GPIO {chip} line {line}: {message}")]
    Gpio { chip: String, line: u32, message: String },
    /// The instrument or its link failed (a Modbus exception or timeout, a
    /// 4-20 mA loop outside NAMUR NE 43's range): the channel's quality is
    /// `bad`. `value` is what was read, when something was.
    #[error("{reason}")]
    Bad { value: Option<Value>, reason: String },
}

/// Reads a small sysfs/procfs file as text.
pub(crate) fn read_text(path: PathBuf) -> Result<(PathBuf, String), DriverError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(DriverError::Io { path, source }),
    }
}

pub(crate) fn parse_error(path: PathBuf, content: &str, reason: impl Into<String>) -> DriverError {
    DriverError::Parse { path, content: content.trim().chars().take(80).collect(), reason: reason.into() }
}
