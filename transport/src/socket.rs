//! Every socket the libraries connect is made here, so what applies to all of
//! them is set in one place; and the one bounded wait they share.

use std::time::Instant;

/// A DEALER connected to `endpoint`, for clients and workers. Linger 0: what
/// is unsent when it closes (a request nobody took) is dropped, never waited on.
pub fn dealer(ctx: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

/// Waits until `socket` has a message to read (true) or `deadline` passes
/// (false). A signal interrupting the wait does not cut it short.
pub fn wait_readable(socket: &zmq::Socket, deadline: Instant) -> zmq::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so the wait never ends a hair early and spins.
        let millis = left.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64;
        match socket.poll(zmq::POLLIN, millis) {
            Ok(ready) if ready > 0 => return Ok(true),
            Ok(_) | Err(zmq::Error::EINTR) if left.is_zero() => return Ok(false),
            Ok(_) | Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
