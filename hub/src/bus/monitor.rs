//! A socket's monitor, read by the bus loop: which connections closed (so
//! their subscriptions and identities are forgotten), and failed handshakes
//! (counted on the security).

use std::os::fd::RawFd;

use crate::security::Security;

/// Watches `socket` for closed connections (and failed handshakes), on an
/// in-process pair.
pub(super) fn monitor(ctx: &zmq::Context, socket: &zmq::Socket, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let events = zmq::SocketEvent::DISCONNECTED as i32 | crate::security::handshakes::EVENTS;
    socket.monitor(endpoint, events)?;
    let events = ctx.socket(zmq::PAIR)?;
    events.connect(endpoint)?;
    Ok(events)
}

/// The descriptors of the connections the monitor reports closed; failed
/// handshakes are counted on `security`.
pub(super) fn closed_connections(events: &zmq::Socket, security: Option<&Security>) -> Vec<RawFd> {
    let mut closed = Vec::new();
    let mut note = |(event, value): (u16, u32)| {
        // The value of DISCONNECTED is the descriptor.
        if event == zmq::SocketEvent::DISCONNECTED as u16 {
            closed.push(value as RawFd);
        }
    };
    match security {
        Some(security) => crate::security::handshakes::note_events(events, security, note),
        None => {
            while let Ok(event) = events.recv_multipart(zmq::DONTWAIT) {
                if let Some(v) = event.first().filter(|f| f.len() >= 6) {
                    note((u16::from_le_bytes([v[0], v[1]]), u32::from_le_bytes([v[2], v[3], v[4], v[5]])));
                }
            }
        }
    }
    closed
}
