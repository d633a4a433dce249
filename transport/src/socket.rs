//! Every socket the libraries connect is made here, so what applies to all of
//! them (CURVE keys, linger) is set in one place; and the one bounded wait
//! they share.

use std::fmt;
use std::time::Instant;

use crate::curve::{self, ClientKeys};

/// Where a client connects, and with which keys when the server wants CURVE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub curve: Option<ClientKeys>,
}

impl Endpoint {
    pub fn plain(address: &str) -> Endpoint {
        Endpoint { address: address.into(), curve: None }
    }

    pub fn curve(address: &str, keys: ClientKeys) -> Endpoint {
        Endpoint { address: address.into(), curve: Some(keys) }
    }
}

/// Whether a ZeroMQ endpoint can only be reached from this machine:
/// loopback TCP, `ipc://` and `inproc://`.
pub fn is_local(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        // ipc:// and inproc:// never leave the machine.
        return endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://");
    };
    let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl From<&str> for Endpoint {
    fn from(address: &str) -> Self {
        Endpoint::plain(address)
    }
}

impl From<&String> for Endpoint {
    fn from(address: &String) -> Self {
        Endpoint::plain(address)
    }
}

impl From<String> for Endpoint {
    fn from(address: String) -> Self {
        Endpoint { address, curve: None }
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(endpoint: &Endpoint) -> Self {
        endpoint.clone()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// A socket of `kind` connected to `endpoint`, CURVE set up if it has keys.
/// `configure` sets whatever else the caller needs before the connect.
pub fn connect(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &Endpoint,
    configure: impl FnOnce(&zmq::Socket) -> zmq::Result<()>,
) -> zmq::Result<zmq::Socket> {
    let socket = ctx.socket(kind)?;
    if let Some(keys) = &endpoint.curve {
        curve::make_client(&socket, keys)?;
    }
    configure(&socket)?;
    socket.connect(&endpoint.address)?;
    Ok(socket)
}

/// A DEALER connected to `endpoint`, for clients and workers. Linger 0: what
/// is unsent when it closes (a request nobody took) is dropped, never waited on.
pub fn dealer(ctx: &zmq::Context, endpoint: &Endpoint) -> zmq::Result<zmq::Socket> {
    connect(ctx, zmq::DEALER, endpoint, |s| s.set_linger(0))
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

/// Puts an XPUB in manual mode (`ZMQ_XPUB_MANUAL`, which the `zmq` crate does
/// not wrap): a subscription takes effect only when the owner sets it with
/// `set_subscribe` right after receiving it.
pub fn set_xpub_manual(socket: &mut zmq::Socket) -> zmq::Result<()> {
    set_int(socket, zmq_sys::ZMQ_XPUB_MANUAL, 1)
}

/// Makes an XPUB pass on every unsubscription, not just a prefix's last
/// (`ZMQ_XPUB_VERBOSER`, which the `zmq` crate does not wrap).
pub fn set_xpub_verboser(socket: &mut zmq::Socket) -> zmq::Result<()> {
    set_int(socket, zmq_sys::ZMQ_XPUB_VERBOSER, 1)
}

fn set_int(socket: &mut zmq::Socket, option: u32, value: libc::c_int) -> zmq::Result<()> {
    // SAFETY: a valid socket, and an int option passed by pointer and size as
    // zmq_setsockopt(3) documents.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option as libc::c_int,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: reads libzmq's thread-local errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// Whether libzmq's XPUB manual mode is safe to use: before 4.3.5 a
/// subscription can be applied to a connection that already closed (a
/// use-after-free, libzmq commit 2df7ab6).
pub fn xpub_manual_is_safe() -> bool {
    let (major, minor, patch) = zmq::version();
    (major, minor, patch) >= (4, 3, 5)
}
