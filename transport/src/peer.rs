//! Who sent a message, from the properties libzmq attaches to it: the
//! identity the ZAP handler gave the connection (`User-Id`), and the
//! connection's descriptor (`__fd`, libzmq's source for `ZMQ_SRCFD`), which
//! only network connections have.
//!
//! libzmq has no call to drop one peer of a socket, so [`Connections`]
//! remembers which descriptor carries which identity and, when an identity is
//! revoked, shuts those connections down at the TCP level: libzmq sees the
//! connection end, drops the peer (its subscriptions with it), and the peer's
//! reconnect meets the ZAP handler, which refuses it. A descriptor outlives
//! its connection in our tables (libzmq reuses numbers), so what must tell
//! two connections apart ([`ConnId`]) also carries the socket's inode.

use std::collections::HashMap;
use std::os::fd::RawFd;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The connection's descriptor; `None` for in-process peers.
    pub fd: Option<RawFd>,
    /// Whether the connection has a `User-Id` (copied into the caller's buffer).
    pub has_user_id: bool,
}

impl Origin {
    /// Over the network (TCP): in-process messages have no descriptor.
    pub fn remote(&self) -> bool {
        self.fd.is_some()
    }
}

/// Reads `msg`'s origin, copying its `User-Id` into `user_id` (reused, so
/// the hot path does not allocate). On a ROUTER, ask a frame after the
/// routing id: libzmq leaves the routing id without properties when a poll
/// prefetched it.
pub fn origin(msg: &mut zmq::Message, user_id: &mut String) -> Origin {
    let fd = msg.gets("__fd").and_then(|f| f.parse().ok());
    user_id.clear();
    let has_user_id = match msg.gets("User-Id") {
        Some(id) if !id.is_empty() => {
            user_id.push_str(id);
            true
        }
        _ => false,
    };
    Origin { fd, has_user_id }
}

/// The network connections of each identity seen on one socket.
///
/// Each is remembered as its [`ConnId`] (descriptor and socket inode), taken
/// when a descriptor is first seen with an identity, so a revocation shuts
/// only the connection that identity used: never a later one that reused
/// the descriptor number. The socket's monitor reports closed connections
/// ([`Connections::closed`]), so a reused descriptor is noted afresh.
#[derive(Default)]
pub struct Connections {
    by_fd: HashMap<RawFd, (ConnId, String)>,
}

impl Connections {
    /// Remembers that `identity` sends on `fd` (cheap when already known:
    /// the descriptor is looked at only when new or with another identity).
    pub fn note(&mut self, fd: RawFd, identity: &str) {
        if self.by_fd.get(&fd).is_some_and(|(_, known)| known == identity) {
            return;
        }
        if let Some(conn) = ConnId::of(fd) {
            self.by_fd.insert(fd, (conn, identity.to_string()));
        }
    }

    /// A connection on `fd` closed: forgets it, unless the entry is already
    /// a newer connection's (the report came late).
    pub fn closed(&mut self, fd: RawFd) {
        if self.by_fd.get(&fd).is_some_and(|(conn, _)| !conn.is_open()) {
            self.by_fd.remove(&fd);
        }
    }

    /// Shuts down every remembered connection of an identity `revoked`
    /// names that is still open; returns how many.
    pub fn close_if(&mut self, revoked: impl Fn(&str) -> bool) -> usize {
        let mut closed = 0;
        self.by_fd.retain(|&fd, (conn, identity)| {
            if !revoked(identity) {
                return true;
            }
            closed += usize::from(conn.is_open() && shut(fd));
            false
        });
        closed
    }

    pub fn len(&self) -> usize {
        self.by_fd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }
}

/// Ends the connection on `fd` at the TCP (or Unix socket) level; true if
/// it was an open socket. libzmq notices, drops the peer (its subscriptions
/// with it) and closes the descriptor itself.
pub fn shut(fd: RawFd) -> bool {
    // SAFETY: shutdown(2) on a descriptor only ends a connection; on anything
    // but a socket it fails with ENOTSOCK and does nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) == 0 }
}

/// One connection, told apart from a later one that reuses its descriptor by
/// its socket's inode number (unique among open sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub fd: RawFd,
    inode: u64,
}

impl ConnId {
    /// The connection open on `fd` now, if `fd` is a socket.
    pub fn of(fd: RawFd) -> Option<ConnId> {
        // SAFETY: fstat writes into the struct we own; a closed descriptor fails.
        let stat = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut stat) != 0 {
                return None;
            }
            stat
        };
        (stat.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(ConnId { fd, inode: stat.st_ino as u64 })
    }

    /// Whether this connection is still the one open on its descriptor.
    pub fn is_open(&self) -> bool {
        ConnId::of(self.fd) == Some(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_messages_name_their_connection_and_a_revoked_one_is_shut() {
        let ctx = zmq::Context::new();
        let server = ctx.socket(zmq::ROUTER).unwrap();
        server.monitor("inproc://peer-test-monitor", zmq::SocketEvent::DISCONNECTED as i32).unwrap();
        let events = ctx.socket(zmq::PAIR).unwrap();
        events.connect("inproc://peer-test-monitor").unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = server.get_last_endpoint().unwrap().unwrap();
        server.bind("inproc://peer-test").unwrap();
        let remote = ctx.socket(zmq::DEALER).unwrap();
        remote.connect(&endpoint).unwrap();
        let local = ctx.socket(zmq::DEALER).unwrap();
        local.connect("inproc://peer-test").unwrap();
        remote.send("r", 0).unwrap();
        local.send("l", 0).unwrap();
        let mut user_id = String::new();
        let mut seen = Vec::new();
        for _ in 0..2 {
            assert_eq!(server.poll(zmq::POLLIN, 5000).unwrap(), 1);
            // A ROUTER's routing-id frame carries no properties when it was
            // prefetched by a poll: the frames after it always do.
            let _routing_id = server.recv_bytes(0).unwrap();
            let mut body = zmq::Message::new();
            server.recv(&mut body, 0).unwrap();
            let origin = origin(&mut body, &mut user_id);
            seen.push((body.to_vec(), origin));
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(seen[0].1.fd.is_none(), "inproc has no descriptor: {seen:?}");
        let fd = seen[1].1.fd.expect("tcp has a descriptor");
        assert!(!seen[1].1.has_user_id, "no ZAP handler, no identity");

        let conn = ConnId::of(fd).expect("a socket");
        assert!(conn.is_open());
        let mut connections = Connections::default();
        connections.note(fd, "pump-1");
        connections.note(fd, "pump-1");
        assert_eq!(connections.len(), 1);
        connections.closed(fd);
        assert_eq!(connections.len(), 1, "a late report of a closed connection keeps the open one");
        assert_eq!(connections.close_if(|id| id == "pump-2"), 0);
        assert_eq!(connections.close_if(|id| id == "pump-1"), 1);
        assert!(connections.is_empty());
        // libzmq notices: the monitor reports the disconnection.
        assert_eq!(events.poll(zmq::POLLIN, 5000).unwrap(), 1, "the connection was dropped");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while conn.is_open() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!conn.is_open(), "libzmq closed the descriptor: the connection is told apart");
    }

    #[test]
    fn a_descriptor_reused_by_another_connection_is_never_shut_for_the_old_one() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let (old, _old_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let number = old.as_raw_fd();
        let mut connections = Connections::default();
        connections.note(number, "revoked");
        // The old connection goes; another connection takes its descriptor number.
        let (new, mut new_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: dup2 onto a descriptor this test owns (`old`, which it no longer uses).
        assert_eq!(unsafe { libc::dup2(new.as_raw_fd(), number) }, number);
        assert_eq!(connections.close_if(|id| id == "revoked"), 0, "the newer connection is left alone");
        assert!(connections.is_empty(), "and the old one forgotten");
        // Still open: what is written on the reused descriptor arrives.
        let mut reused = &old;
        reused.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        new_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        drop(new);
    }
}
