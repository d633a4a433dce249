//! The CURVE handshake probe: connects a throwaway socket and reports how
//! the handshake with a server went, so `agent check` can say which key is
//! wrong (the server only drops a connection it cannot decrypt).

use crate::curve::make_client;
use crate::socket::wait_readable;

/// How a CURVE handshake with a server went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Succeeded,
    /// The server could not decrypt us, or we it (it drops the connection
    /// without a word): the server key we hold is not its key.
    WrongServerKey,
    /// The server's ZAP handler refused our key (its status code, 400 usually).
    Refused(u32),
    /// One side speaks CURVE and the other does not.
    MechanismMismatch,
    /// Failed for another reason (the protocol error code).
    Failed(u32),
    /// Nothing happened within the wait (no server, or a silent one).
    NoAnswer,
}

/// Connects a throwaway socket to `endpoint` and reports how the CURVE
/// handshake went (`agent check` uses it to say which key is wrong).
pub fn probe(
    ctx: &zmq::Context,
    endpoint: &crate::Endpoint,
    timeout: std::time::Duration,
) -> zmq::Result<Handshake> {
    use zmq::SocketEvent::*;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let monitor = format!("inproc://curve-probe-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    let events = HANDSHAKE_SUCCEEDED as i32
        | HANDSHAKE_FAILED_NO_DETAIL as i32
        | HANDSHAKE_FAILED_PROTOCOL as i32
        | HANDSHAKE_FAILED_AUTH as i32;
    socket.monitor(&monitor, events)?;
    let watch = ctx.socket(zmq::PAIR)?;
    watch.connect(&monitor)?;
    if let Some(keys) = &endpoint.curve {
        make_client(&socket, keys)?;
    }
    socket.connect(&endpoint.address)?;
    if !wait_readable(&watch, std::time::Instant::now() + timeout)? {
        return Ok(Handshake::NoAnswer);
    }
    let event = watch.recv_multipart(0)?;
    let Some(head) = event.first().filter(|h| h.len() >= 6) else { return Ok(Handshake::NoAnswer) };
    let kind = u16::from_le_bytes([head[0], head[1]]);
    let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    Ok(match kind {
        k if k == HANDSHAKE_SUCCEEDED as u16 => Handshake::Succeeded,
        k if k == HANDSHAKE_FAILED_AUTH as u16 => Handshake::Refused(value),
        // A CURVE server that cannot decrypt our HELLO (we used the wrong
        // server key) just drops the connection: no detail, a broken pipe.
        k if k == HANDSHAKE_FAILED_NO_DETAIL as u16 => Handshake::WrongServerKey,
        _ if value == zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
            || value == zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE =>
        {
            Handshake::WrongServerKey
        }
        _ if value == zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH => Handshake::MechanismMismatch,
        _ => Handshake::Failed(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::{generate, make_server, ClientKeys};

    #[test]
    fn the_probe_tells_a_wrong_server_key_from_a_right_one() {
        let ctx = zmq::Context::new();
        let server_keys = generate().unwrap();
        let server = ctx.socket(zmq::ROUTER).unwrap();
        make_server(&server, &server_keys, "test").unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let address = server.get_last_endpoint().unwrap().unwrap();
        let mine = generate().unwrap();
        let endpoint = |server| {
            crate::Endpoint::curve(&address, ClientKeys { public: mine.public, secret: mine.secret, server })
        };
        let wait = std::time::Duration::from_secs(5);
        assert_eq!(probe(&ctx, &endpoint(server_keys.public), wait).unwrap(), Handshake::Succeeded);
        assert_eq!(
            probe(&ctx, &endpoint(generate().unwrap().public), wait).unwrap(),
            Handshake::WrongServerKey
        );
        let plain = ctx.socket(zmq::ROUTER).unwrap();
        plain.bind("tcp://127.0.0.1:*").unwrap();
        let plain_address = plain.get_last_endpoint().unwrap().unwrap();
        let keys = ClientKeys { public: mine.public, secret: mine.secret, server: server_keys.public };
        let mismatch = probe(&ctx, &crate::Endpoint::curve(&plain_address, keys), wait).unwrap();
        assert_eq!(mismatch, Handshake::MechanismMismatch);
    }
}
