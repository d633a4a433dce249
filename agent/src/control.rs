//! The agent's local control socket (`ipc://<data_dir>/control.sock`):
//! `agent status` asks the running agent here, which works with the hub down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use transport::ShutdownWatch;

use crate::status::Shared;

/// Answers "status" until shutdown (on its own thread); anything else gets an error, never silence.
pub fn serve(
    ctx: &zmq::Context,
    data_dir: &Path,
    shared: Arc<Shared>,
    stop: &ShutdownWatch,
) -> zmq::Result<()> {
    transport::control::serve(ctx, data_dir, stop, |request| match request {
        b"status" => shared.to_json().to_string().into_bytes(),
        _ => br#"{"error":"unknown request: use status"}"#.to_vec(),
    })
}

/// Asks the agent running in `data_dir` for its status.
pub fn ask_status(data_dir: &Path, timeout: Duration) -> Result<serde_json::Value, String> {
    let reply = transport::control::ask(data_dir, b"status", timeout).map_err(|e| match e {
        transport::control::AskError::NoAnswer { .. } => format!(
            "no agent answered within {timeout:?}: is `agent run` running with --data-dir {}?",
            data_dir.display()
        ),
        other => other.to_string(),
    })?;
    serde_json::from_slice(&reply).map_err(|e| format!("the agent sent invalid JSON: {e}"))
}
