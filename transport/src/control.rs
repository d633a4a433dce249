//! A local control socket: `ipc://<dir>/control.sock`, readable and writable
//! by the owner only, where command-line tools on the same machine ask a
//! running hub or agent something (`agent status`, `hub keys reload`).
//!
//! One request frame in, one reply frame out. The server answers every
//! request, garbage included, and keeps serving: a REP socket that failed to
//! reply would be stuck, so a reply is always sent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::shutdown::ShutdownWatch;

/// The control socket's endpoint for the process whose data is in `dir`.
pub fn endpoint(dir: &Path) -> String {
    format!("ipc://{}", socket_path(dir).display())
}

fn socket_path(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).join("control.sock")
}

/// Largest request accepted; anything bigger is not a control command.
const MAX_REQUEST: i64 = 4096;

/// Answers requests with `answer` until `stop`.
pub fn serve(
    ctx: &zmq::Context,
    dir: &Path,
    stop: &ShutdownWatch,
    mut answer: impl FnMut(&[u8]) -> Vec<u8>,
) -> zmq::Result<()> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket.set_maxmsgsize(MAX_REQUEST)?;
    socket.bind(&endpoint(dir))?;
    // Owner only: the socket gives what the process knows (and, for the
    // hub, can reload its allow-list).
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket_path(dir), std::fs::Permissions::from_mode(0o600));
    while !stop.is_set() {
        let mut items = [socket.as_poll_item(zmq::POLLIN), stop.poll_item()];
        // Wakes every second, so a watchdog sees this loop turn.
        match zmq::poll(&mut items, 1000) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
        if !items[0].is_readable() {
            continue;
        }
        let mut request = zmq::Message::new();
        if socket.recv(&mut request, zmq::DONTWAIT).is_err() {
            continue;
        }
        // A multipart request: read it all, answer once.
        let mut more = request.get_more();
        while more {
            let mut rest = zmq::Message::new();
            socket.recv(&mut rest, 0)?;
            more = rest.get_more();
        }
        socket.send(answer(&request), 0)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "nothing answered on {endpoint} within {timeout:?}: is it running with this data directory \
         ({dir})? (the socket is its owner's: run as the same user)"
    )]
    NoAnswer { endpoint: String, dir: String, timeout: Duration },
    #[error("control socket: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Sends `request` to the process in `dir` and waits up to `timeout` for the reply.
pub fn ask(dir: &Path, request: &[u8], timeout: Duration) -> Result<Vec<u8>, AskError> {
    let ctx = zmq::Context::new();
    let endpoint = endpoint(dir);
    let socket = ctx.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.connect(&endpoint)?;
    socket.send(request, 0)?;
    if !crate::socket::wait_readable(&socket, Instant::now() + timeout)? {
        return Err(AskError::NoAnswer { endpoint, dir: dir.display().to_string(), timeout });
    }
    Ok(socket.recv_bytes(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shutdown;

    #[test]
    fn answers_every_request_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = Shutdown::new();
        let watch = shutdown.watch().unwrap();
        let path = dir.path().to_path_buf();
        let server = std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            serve(&ctx, &path, &watch, |r| if r == b"ping" { b"pong".to_vec() } else { b"?".to_vec() })
        });
        let second = Duration::from_secs(5);
        // Asked before the server binds: the request waits for it.
        assert_eq!(ask(dir.path(), b"ping", second).unwrap(), b"pong");
        // Garbage, and a multipart request, get answers; the server goes on.
        let ctx = zmq::Context::new();
        let raw = ctx.socket(zmq::REQ).unwrap();
        raw.connect(&endpoint(dir.path())).unwrap();
        raw.send_multipart([&b"a"[..], b"b"], 0).unwrap();
        assert_eq!(raw.poll(zmq::POLLIN, 5000).unwrap(), 1);
        assert_eq!(raw.recv_bytes(0).unwrap(), b"?");
        assert_eq!(ask(dir.path(), b"ping", second).unwrap(), b"pong");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("control.sock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        shutdown.trigger();
        server.join().unwrap().unwrap();
    }
}
