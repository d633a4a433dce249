//! The two ways a request reaches a unit: Modbus TCP (MBAP framing, a
//! transaction id per request so a late reply is never taken for the answer
//! to the next one) and Modbus RTU on a serial port (CRC, the 3.5-character
//! silence between frames, the input flushed after a timeout). Both frame
//! with rmodbus; the I/O and its timing are ours. This module holds what
//! both share: requests and replies, framing, reconnection.

mod rtu;
mod tcp;

use std::time::{Duration, Instant};

use proto::backoff::Backoff;
use rmodbus::client::ModbusRequest;

use super::config::{LinkConfig, Table, Transport};

pub use rtu::{frame_gap, Pacer, Rtu};
pub use tcp::Tcp;

/// What a link asks one unit.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Read { table: Table, address: u16, count: u16 },
    WriteCoil { address: u16, value: bool },
    WriteRegisters { address: u16, values: Vec<u16> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
    Written,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("exception {code:02}: {}", super::codec::exception_name(*code))]
    Exception { code: u8 },
    /// The link itself failed; it reconnects after a backoff.
    #[error("link down: {reason}; retrying in {retry_in:.1?}")]
    Down { reason: String, retry_in: Duration },
    /// A reply that is not one (bad CRC, wrong length): the link is flushed.
    #[error("garbled reply: {0}")]
    Garbled(String),
}

/// Counters a link keeps about its wire, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireCounts {
    pub connects: u64,
    /// TCP replies whose transaction id was not the one awaited, discarded.
    pub late_replies: u64,
}

/// Builds the frame of `request` to `unit` into `buf`.
pub(super) fn encode(req: &mut ModbusRequest, request: &Request, buf: &mut Vec<u8>) -> Result<(), WireError> {
    buf.clear();
    let built = match request {
        Request::Read { table: Table::Coil, address, count } => req.generate_get_coils(*address, *count, buf),
        Request::Read { table: Table::Discrete, address, count } => {
            req.generate_get_discretes(*address, *count, buf)
        }
        Request::Read { table: Table::Holding, address, count } => {
            req.generate_get_holdings(*address, *count, buf)
        }
        Request::Read { table: Table::Input, address, count } => {
            req.generate_get_inputs(*address, *count, buf)
        }
        Request::WriteCoil { address, value } => req.generate_set_coil(*address, *value, buf),
        Request::WriteRegisters { address, values } if values.len() == 1 => {
            req.generate_set_holding(*address, values[0], buf)
        }
        Request::WriteRegisters { address, values } => req.generate_set_holdings_bulk(*address, values, buf),
    };
    built.map_err(|e| WireError::Garbled(format!("cannot build the request: {e}")))
}

/// Reads a complete reply `frame` (`pdu_start`: where unit id and function
/// code begin) as the answer to `req`.
pub(super) fn decode(
    req: &ModbusRequest,
    request: &Request,
    frame: &[u8],
    pdu_start: usize,
) -> Result<Reply, WireError> {
    if pdu_start == 0 {
        // RTU: nothing in a frame counts before its CRC does.
        let body = frame.len().saturating_sub(2);
        if body < 3 || crc16(&frame[..body]) != u16::from_le_bytes([frame[body], frame[body + 1]]) {
            return Err(WireError::Garbled("CRC mismatch".into()));
        }
    }
    if frame.len() >= pdu_start + 3 && frame[pdu_start + 1] == req.func | 0x80 {
        return Err(WireError::Exception { code: frame[pdu_start + 2] });
    }
    let garbled = |e: rmodbus::ErrorKind| WireError::Garbled(format!("{e}").to_lowercase());
    match request {
        Request::Read { table, count, .. } if table.is_bits() => {
            let mut bits = Vec::new();
            req.parse_bool(frame, &mut bits).map_err(garbled)?;
            check_count(bits.len(), *count)?;
            Ok(Reply::Bits(bits))
        }
        Request::Read { count, .. } => {
            let mut regs = Vec::new();
            req.parse_u16(frame, &mut regs).map_err(garbled)?;
            check_count(regs.len(), *count)?;
            Ok(Reply::Registers(regs))
        }
        _ => req.parse_ok(frame).map(|()| Reply::Written).map_err(garbled),
    }
}

/// The RTU frame check (CRC-16/MODBUS). rmodbus has one but keeps it private.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0xFFFF, |crc, &b| {
        (0..8).fold(crc ^ u16::from(b), |c, _| if c & 1 == 1 { (c >> 1) ^ 0xA001 } else { c >> 1 })
    })
}

fn check_count(got: usize, asked: u16) -> Result<(), WireError> {
    if got == usize::from(asked) {
        Ok(())
    } else {
        Err(WireError::Garbled(format!("asked for {asked} values, the reply holds {got}")))
    }
}

/// Reconnection after the link fails: jittered exponential backoff, bounded.
pub(super) struct Reconnect {
    backoff: Backoff,
    retry_at: Option<(Instant, String)>,
}

impl Reconnect {
    pub(super) fn new(config: &LinkConfig) -> Self {
        let ms = Duration::from_millis;
        Reconnect {
            backoff: Backoff::new(ms(config.backoff_min_ms), ms(config.backoff_max_ms)),
            retry_at: None,
        }
    }

    /// Err while the backoff after a failure lasts.
    pub(super) fn may_try(&self, now: Instant) -> Result<(), WireError> {
        match &self.retry_at {
            Some((at, reason)) if *at > now => {
                Err(WireError::Down { reason: reason.clone(), retry_in: *at - now })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn failed(&mut self, reason: String) -> WireError {
        let retry_in = self.backoff.next_delay();
        self.retry_at = Some((Instant::now() + retry_in, reason.clone()));
        WireError::Down { reason, retry_in }
    }

    pub(super) fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
    }
}

/// A link's wire: one request, one reply (or none) at a time.
pub trait Wire: Send {
    fn transact(&mut self, unit: u8, request: &Request) -> Result<Reply, WireError>;
    fn counts(&self) -> WireCounts;
}

pub fn open(config: &LinkConfig) -> Box<dyn Wire> {
    match config.transport {
        Transport::Tcp => Box::new(Tcp::new(config)),
        Transport::Rtu => Box::new(Rtu::new(config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rmodbus::ModbusProto;

    proptest! {
        /// Whatever a device (or an attacker on the wire) sends back, the
        /// reply is an answer, an exception or garbled: never a panic.
        #[test]
        fn any_reply_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            kind in 0..6usize,
            rtu in any::<bool>(),
        ) {
            let request = match kind {
                0 => Request::Read { table: Table::Coil, address: 1, count: 10 },
                1 => Request::Read { table: Table::Discrete, address: 1, count: 3 },
                2 => Request::Read { table: Table::Holding, address: 1, count: 2 },
                3 => Request::Read { table: Table::Input, address: 1, count: 125 },
                4 => Request::WriteCoil { address: 1, value: true },
                _ => Request::WriteRegisters { address: 1, values: vec![1, 2] },
            };
            let (mut req, start) = if rtu {
                (ModbusRequest::new(1, ModbusProto::Rtu), 0)
            } else {
                (ModbusRequest::new_tcp_udp(1, 7), 6)
            };
            let mut frame = Vec::new();
            encode(&mut req, &request, &mut frame).unwrap();
            let _ = decode(&req, &request, &bytes, start);
            if bytes.len() >= 3 {
                let _ = rmodbus::guess_response_frame_len(&bytes, ModbusProto::Rtu);
            }
        }
    }

    #[test]
    fn the_inter_frame_gap_is_three_and_a_half_characters_up_to_19200_baud() {
        // 9600 baud, 8N1 (10 bits): a character is 1.0417 ms, the gap 3.646 ms.
        assert_eq!(frame_gap(9600, 10), Duration::from_micros(3645));
        // 19200 baud, 8E1 (11 bits): 2.005 ms.
        assert_eq!(frame_gap(19200, 11), Duration::from_micros(2005));
        // Faster: fixed at 1.75 ms.
        assert_eq!(frame_gap(38400, 11), Duration::from_micros(1750));
        assert_eq!(frame_gap(115200, 10), Duration::from_micros(1750));
    }

    #[test]
    fn the_pacer_keeps_the_bus_quiet_between_frames() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(frame_gap(9600, 10), Duration::ZERO);
        assert_eq!(pacer.wait(t0), Duration::ZERO, "an idle bus: send at once");
        pacer.busy_until(t0);
        assert_eq!(pacer.wait(t0), Duration::from_micros(3645));
        assert_eq!(pacer.wait(t0 + ms(1)), Duration::from_micros(2645));
        assert_eq!(pacer.wait(t0 + ms(4)), Duration::ZERO);
        // A configured pause longer than the gap wins.
        let mut slow = Pacer::new(frame_gap(115200, 10), ms(20));
        slow.busy_until(t0);
        assert_eq!(slow.wait(t0 + ms(5)), ms(15));
    }

    #[test]
    fn frames_and_replies_round_trip_through_rmodbus() {
        let mut req = ModbusRequest::new(7, ModbusProto::Rtu);
        let mut frame = Vec::new();
        let read = Request::Read { table: Table::Holding, address: 100, count: 2 };
        encode(&mut req, &read, &mut frame).unwrap();
        assert_eq!(&frame[..6], &[7, 3, 0, 100, 0, 2]);
        // A reply built by hand: unit 7, FC03, 4 bytes, CRC.
        let mut reply = vec![7, 3, 4, 0x3F, 0xC0, 0, 0];
        let crc = crc16(&reply);
        reply.extend(crc.to_le_bytes());
        assert_eq!(decode(&req, &read, &reply, 0).unwrap(), Reply::Registers(vec![0x3FC0, 0]));
        assert_eq!(
            rmodbus::guess_response_frame_len(&reply, ModbusProto::Rtu).unwrap() as usize,
            reply.len()
        );
        let mut exception = vec![7, 0x83, 2];
        let crc = crc16(&exception);
        exception.extend(crc.to_le_bytes());
        let err = decode(&req, &read, &exception, 0).unwrap_err();
        assert_eq!(err.to_string(), "exception 02: illegal data address");
        let last = reply.len() - 1;
        reply[last] ^= 1;
        assert!(matches!(decode(&req, &read, &reply, 0), Err(WireError::Garbled(_))));
    }
}
