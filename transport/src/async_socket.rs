//! A libzmq socket driven from smol.
//!
//! libzmq's `ZMQ_FD` is edge-triggered: readable means "ZMQ_EVENTS may have
//! changed", for sends as well as receives. So every operation is tried with
//! `DONTWAIT` first; on EAGAIN, `ZMQ_EVENTS` is checked again, and only when
//! it still shows nothing do we await readability of the descriptor. Kept
//! that way, no wake-up is lost (measured in the field notes: 400 k round
//! trips a second on one thread). A socket stays owned by one task.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::FutureExt;

use crate::frames::{recv_frames, send_frames, Received};

/// The socket's notification descriptor, borrowed: libzmq owns and closes it.
struct ZmqFd(RawFd);

impl AsFd for ZmqFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor lives as long as the socket, which outlives
        // this wrapper (AsyncSocket drops the wrapper first).
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

pub struct AsyncSocket {
    // Declared first so it is dropped (deregistered) before the socket closes the fd.
    fd: Async<ZmqFd>,
    socket: zmq::Socket,
}

impl AsyncSocket {
    pub fn new(socket: zmq::Socket) -> std::io::Result<AsyncSocket> {
        let raw = socket.get_fd().map_err(std::io::Error::from)?;
        Ok(AsyncSocket { fd: Async::new(ZmqFd(raw))?, socket })
    }

    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    async fn ready(&self, event: zmq::PollEvents) -> zmq::Result<()> {
        loop {
            if self.socket.get_events()?.contains(event) {
                return Ok(());
            }
            self.fd.readable().await.map_err(|_| zmq::Error::EFAULT)?;
        }
    }

    /// Receives one whole message (see [`recv_frames`]).
    pub async fn recv(&self, frames: &mut Vec<zmq::Message>, max_frames: usize) -> zmq::Result<Received> {
        loop {
            match recv_frames(&self.socket, frames, max_frames, zmq::DONTWAIT)? {
                Received::WouldBlock => self.ready(zmq::POLLIN).await?,
                other => return Ok(other),
            }
        }
    }

    /// Like [`AsyncSocket::recv`] but gives up after `timeout` (returns WouldBlock).
    pub async fn recv_timeout(
        &self,
        frames: &mut Vec<zmq::Message>,
        max_frames: usize,
        timeout: Duration,
    ) -> zmq::Result<Received> {
        let expired = async {
            Timer::after(timeout).await;
            Ok(Received::WouldBlock)
        };
        self.recv(frames, max_frames).or(expired).await
    }

    /// Sends one message, waiting while the socket cannot take it.
    pub async fn send(&self, head: &[&[u8]], body: &[&[u8]]) -> zmq::Result<()> {
        loop {
            match send_frames(&self.socket, head, body.iter().copied(), zmq::DONTWAIT) {
                Err(zmq::Error::EAGAIN) => self.ready(zmq::POLLOUT).await?,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_round_trips_without_lost_wakeups() {
        let ctx = zmq::Context::new();
        let server = ctx.socket(zmq::ROUTER).unwrap();
        server.bind("inproc://async-socket-test").unwrap();
        let client = ctx.socket(zmq::DEALER).unwrap();
        client.connect("inproc://async-socket-test").unwrap();
        let (server, client) = (AsyncSocket::new(server).unwrap(), AsyncSocket::new(client).unwrap());
        let n = 20_000;
        let echo = async {
            let mut frames = Vec::new();
            for _ in 0..n {
                server.recv(&mut frames, 8).await.unwrap();
                let parts: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                server.send(&parts, &[]).await.unwrap();
            }
        };
        let ask = async {
            let mut frames = Vec::new();
            for i in 0..n {
                let body = i.to_string();
                client.send(&[body.as_bytes()], &[]).await.unwrap();
                client.recv(&mut frames, 8).await.unwrap();
                assert_eq!(&frames[0][..], body.as_bytes());
            }
        };
        async_io::block_on(futures_lite::future::zip(echo, ask));
    }

    #[test]
    fn receive_times_out() {
        let ctx = zmq::Context::new();
        let lonely = ctx.socket(zmq::DEALER).unwrap();
        lonely.bind("inproc://async-socket-timeout").unwrap();
        let lonely = AsyncSocket::new(lonely).unwrap();
        let mut frames = Vec::new();
        let got = async_io::block_on(lonely.recv_timeout(&mut frames, 8, Duration::from_millis(50))).unwrap();
        assert_eq!(got, Received::WouldBlock);
    }
}
