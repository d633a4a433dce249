//! Modbus RTU on a serial port: the inter-frame gap, CRC, the input flushed
//! after a timeout, the kernel's RS-485 mode where the port has one.

use std::io::Write as _;
use std::time::{Duration, Instant};

use rmodbus::client::ModbusRequest;
use rmodbus::ModbusProto;

use super::{decode, encode, Reconnect, Reply, Request, Wire, WireCounts, WireError};
use crate::modbus::config::{LinkConfig, Parity};

/// The silence that ends an RTU frame: 3.5 characters, or 1.75 ms above
/// 19200 baud (the specification fixes it there, where a character time
/// would be too short for most UARTs to time).
pub fn frame_gap(baud: u32, bits_per_char: u32) -> Duration {
    if baud > 19200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_nanos(3_500_000_000 * u64::from(bits_per_char) / 1000 / u64::from(baud) * 1000)
    }
}

/// When the next RTU request may go: after the inter-frame gap (and the
/// configured pause) since the bus was last busy. Time comes in as an
/// argument, so it is tested with a fake clock.
#[derive(Clone, Debug)]
pub struct Pacer {
    quiet: Duration,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(gap: Duration, pause: Duration) -> Self {
        Pacer { quiet: gap.max(pause), last: None }
    }

    /// How long to wait at `now` before sending.
    pub fn wait(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |last| (last + self.quiet).saturating_duration_since(now))
    }

    /// The bus was busy until `now` (a frame sent or received).
    pub fn busy_until(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// Modbus RTU on a serial port shared by every unit of its bus.
pub struct Rtu {
    config: LinkConfig,
    port: Option<serial2::SerialPort>,
    pacer: Pacer,
    reconnect: Reconnect,
    counts: WireCounts,
}

impl Rtu {
    pub fn new(config: &LinkConfig) -> Self {
        let gap = frame_gap(config.baud, config.bits_per_char());
        Rtu {
            config: config.clone(),
            port: None,
            pacer: Pacer::new(gap, Duration::from_millis(config.pause_ms)),
            reconnect: Reconnect::new(config),
            counts: WireCounts::default(),
        }
    }

    fn open_port(&self) -> std::io::Result<serial2::SerialPort> {
        let c = &self.config;
        let device = c.device.clone().unwrap_or_default();
        let port = serial2::SerialPort::open(&device, |mut s: serial2::Settings| {
            s.set_raw();
            s.set_baud_rate(c.baud)?;
            s.set_char_size(if c.data_bits == 7 {
                serial2::CharSize::Bits7
            } else {
                serial2::CharSize::Bits8
            });
            s.set_stop_bits(if c.stop_bits == 2 { serial2::StopBits::Two } else { serial2::StopBits::One });
            s.set_parity(match c.parity {
                Parity::None => serial2::Parity::None,
                Parity::Even => serial2::Parity::Even,
                Parity::Odd => serial2::Parity::Odd,
            });
            s.set_flow_control(serial2::FlowControl::None);
            Ok(s)
        })?;
        if c.rs485 {
            let mode = serial2::rs4xx::TransceiverMode::Rs485(serial2::rs4xx::Rs485Config::new());
            match port.set_rs4xx_mode(mode) {
                Ok(()) => log::info!("modbus link {}: {device} in the kernel's RS-485 mode", c.name),
                // A pty, or a USB adapter that switches direction itself.
                Err(e) => {
                    log::info!("modbus link {}: {device} has no RS-485 mode ({e}); used as it is", c.name)
                }
            }
        }
        let _ = port.discard_buffers();
        Ok(port)
    }

    fn port(&mut self) -> Result<&mut serial2::SerialPort, WireError> {
        if self.port.is_none() {
            self.reconnect.may_try(Instant::now())?;
            match self.open_port() {
                Ok(port) => {
                    self.counts.connects += 1;
                    self.reconnect.succeeded();
                    self.port = Some(port);
                }
                Err(e) => {
                    let device = self.config.device.clone().unwrap_or_default();
                    return Err(self.reconnect.failed(format!("cannot open {device}: {e}")));
                }
            }
        }
        Ok(self.port.as_mut().expect("opened above"))
    }

    fn broken(&mut self, e: std::io::Error) -> WireError {
        self.port = None;
        let device = self.config.device.clone().unwrap_or_default();
        self.reconnect.failed(format!("{device}: {e}"))
    }

    /// After a timeout or a garbled frame: drop what is in the input and
    /// let the bus fall silent, so a late answer is not read as the next.
    fn flush(&mut self) {
        if let Some(port) = &self.port {
            let _ = port.discard_input_buffer();
        }
        self.pacer.busy_until(Instant::now());
    }

    /// Reads one reply frame, its length told by its function code.
    fn receive(&mut self, deadline: Instant) -> Result<Result<Vec<u8>, WireError>, std::io::Error> {
        let timeout = self.config.timeout();
        let port = self.port.as_mut().expect("open");
        let mut frame = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        let mut expected = None::<usize>;
        loop {
            if expected.is_some_and(|n| frame.len() >= n) {
                return Ok(Ok(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Err(WireError::Timeout(timeout)));
            }
            port.set_read_timeout(deadline - now)?;
            let want = expected.map_or(3, |n| n - frame.len()).min(chunk.len());
            match port.read(&mut chunk[..want]) {
                Ok(0) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the port closed"))
                }
                Ok(n) => frame.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if expected.is_none() && frame.len() >= 3 {
                expected = Some(match rmodbus::guess_response_frame_len(&frame, ModbusProto::Rtu) {
                    Ok(n) => usize::from(n),
                    Err(e) => return Ok(Err(WireError::Garbled(format!("{e}").to_lowercase()))),
                });
            }
        }
    }
}

impl Wire for Rtu {
    fn transact(&mut self, unit: u8, request: &Request) -> Result<Reply, WireError> {
        let mut req = ModbusRequest::new(unit, ModbusProto::Rtu);
        let mut frame = Vec::with_capacity(260);
        encode(&mut req, request, &mut frame)?;
        self.port()?;
        std::thread::sleep(self.pacer.wait(Instant::now()));
        let port = self.port.as_mut().expect("open");
        // Written and drained: the reply's deadline starts when the last byte is out.
        if let Err(e) = port.write_all(&frame).and_then(|()| port.flush()) {
            return Err(self.broken(e));
        }
        self.pacer.busy_until(Instant::now());
        let deadline = Instant::now() + self.config.timeout();
        let reply = match self.receive(deadline) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.flush();
                return Err(e);
            }
            Err(e) => return Err(self.broken(e)),
        };
        self.pacer.busy_until(Instant::now());
        if reply.first() != Some(&unit) {
            self.flush();
            return Err(WireError::Garbled(format!("an answer from unit {}, not {unit}", reply[0])));
        }
        decode(&req, request, &reply, 0).inspect_err(|e| {
            if matches!(e, WireError::Garbled(_)) {
                self.flush();
            }
        })
    }

    fn counts(&self) -> WireCounts {
        self.counts
    }
}
