//! Modbus TCP: MBAP framing, a transaction id per request, replies to
//! earlier (timed-out) requests discarded and counted.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rmodbus::client::ModbusRequest;

use super::{decode, encode, Reconnect, Reply, Request, Wire, WireCounts, WireError};
use crate::modbus::config::LinkConfig;

/// Modbus TCP to one device or gateway.
pub struct Tcp {
    address: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    next_tid: u16,
    reconnect: Reconnect,
    counts: WireCounts,
    buf: Vec<u8>,
}

/// How a read against a deadline ended.
enum Fill {
    Done,
    /// Nothing of the frame arrived: the stream is still in step.
    Nothing,
    /// Part of a frame arrived: the stream is out of step.
    Partial,
}

fn fill(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<Fill> {
    let mut got = 0;
    while got < buf.len() {
        let now = Instant::now();
        if now >= deadline {
            return Ok(if got == 0 { Fill::Nothing } else { Fill::Partial });
        }
        stream.set_read_timeout(Some(deadline - now))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the device closed the connection",
                ))
            }
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Fill::Done)
}

impl Tcp {
    pub fn new(config: &LinkConfig) -> Self {
        Tcp {
            address: config.tcp_address(),
            timeout: config.timeout(),
            stream: None,
            next_tid: 1,
            reconnect: Reconnect::new(config),
            counts: WireCounts::default(),
            buf: Vec::with_capacity(260),
        }
    }

    fn connect(&mut self) -> Result<&mut TcpStream, WireError> {
        if self.stream.is_none() {
            self.reconnect.may_try(Instant::now())?;
            let connected = self
                .address
                .to_socket_addrs()
                .and_then(|mut addrs| {
                    addrs.next().ok_or_else(|| std::io::Error::other("the name resolves to no address"))
                })
                .and_then(|addr| TcpStream::connect_timeout(&addr, self.timeout));
            match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    self.counts.connects += 1;
                    self.reconnect.succeeded();
                    self.stream = Some(stream);
                }
                Err(e) => {
                    return Err(self.reconnect.failed(format!("cannot connect to {}: {e}", self.address)))
                }
            }
        }
        Ok(self.stream.as_mut().expect("connected above"))
    }

    fn broken(&mut self, e: std::io::Error) -> WireError {
        self.stream = None;
        self.reconnect.failed(format!("{}: {e}", self.address))
    }
}

impl Wire for Tcp {
    fn transact(&mut self, unit: u8, request: &Request) -> Result<Reply, WireError> {
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        let mut req = ModbusRequest::new_tcp_udp(unit, tid);
        let mut frame = std::mem::take(&mut self.buf);
        encode(&mut req, request, &mut frame)?;
        let timeout = self.timeout;
        let stream = self.connect()?;
        if let Err(e) = stream.write_all(&frame) {
            self.buf = frame;
            return Err(self.broken(e));
        }
        let deadline = Instant::now() + timeout;
        let result = loop {
            let mut header = [0u8; 7];
            let stream = self.stream.as_mut().expect("connected");
            match fill(stream, &mut header, deadline) {
                Ok(Fill::Done) => {}
                Ok(Fill::Nothing) => break Err(WireError::Timeout(timeout)),
                Ok(Fill::Partial) => {
                    self.stream = None;
                    break Err(WireError::Timeout(timeout));
                }
                Err(e) => break Err(self.broken(e)),
            }
            let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if header[2..4] != [0, 0] || !(2..=254).contains(&length) {
                // Not Modbus TCP, or a stream out of step: start afresh.
                self.stream = None;
                break Err(WireError::Garbled(format!(
                    "a header of protocol {:?}, length {length}",
                    &header[2..4]
                )));
            }
            frame.clear();
            frame.extend_from_slice(&header);
            frame.resize(6 + length, 0);
            match fill(stream, &mut frame[7..], deadline) {
                Ok(Fill::Done) => {}
                Ok(_) => {
                    self.stream = None;
                    break Err(WireError::Timeout(timeout));
                }
                Err(e) => break Err(self.broken(e)),
            }
            if u16::from_be_bytes([header[0], header[1]]) != tid {
                // The answer to a request that timed out earlier: not ours.
                self.counts.late_replies += 1;
                continue;
            }
            break decode(&req, request, &frame, 6);
        };
        self.buf = frame;
        result
    }

    fn counts(&self) -> WireCounts {
        self.counts
    }
}
