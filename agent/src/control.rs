//! The local control socket (`ipc://<data_dir>/control.sock`): `agent
//! status` asks the running agent here, which works with the hub down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use transport::ShutdownWatch;

use crate::status::Shared;

pub fn endpoint(data_dir: &Path) -> String {
    let path = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("ipc://{}", path.join("control.sock").display())
}

/// Answers "status" requests until shutdown (on its own thread).
pub fn serve(
    ctx: &zmq::Context,
    data_dir: &Path,
    shared: Arc<Shared>,
    signal: &ShutdownWatch,
) -> zmq::Result<()> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket.bind(&endpoint(data_dir))?;
    while !signal.is_set() {
        let mut items = [socket.as_poll_item(zmq::POLLIN), signal.poll_item()];
        match zmq::poll(&mut items, -1) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
        if !items[0].is_readable() {
            continue;
        }
        let request = socket.recv_bytes(0)?;
        let reply = match request.as_slice() {
            b"status" => shared.to_json().to_string(),
            _ => r#"{"error":"unknown request: use status"}"#.to_string(),
        };
        socket.send(reply.as_bytes(), 0)?;
    }
    Ok(())
}

/// Asks the agent running in `data_dir` for its status.
pub fn ask_status(data_dir: &Path, timeout: Duration) -> Result<serde_json::Value, String> {
    let ctx = zmq::Context::new();
    let endpoint = endpoint(data_dir);
    let socket = ctx.socket(zmq::REQ).map_err(|e| e.to_string())?;
    socket.set_linger(0).map_err(|e| e.to_string())?;
    socket.connect(&endpoint).map_err(|e| e.to_string())?;
    socket.send(&b"status"[..], 0).map_err(|e| e.to_string())?;
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64).map_err(|e| e.to_string())? == 0 {
        return Err(format!(
            "no agent answered on {endpoint} within {timeout:?}: is `agent run` running with --data-dir {}?",
            data_dir.display()
        ));
    }
    let reply = socket.recv_bytes(0).map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply).map_err(|e| format!("the agent sent invalid JSON: {e}"))
}
