//! Message buses: one XSUB/XPUB proxy per bus, each a plain poll loop on its
//! own thread.
//!
//! Messages flow down (publishers → subscribers) and subscriptions flow up
//! (subscribers → publishers), so publishers only send what someone wants.
//! Each direction is counted. The XPUB drops for a subscriber whose queue is
//! full, so a slow subscriber never stalls the proxy or the others.
//!
//! With a capture endpoint or a recording, the proxy subscribes to everything
//! itself, so the copy is complete even for topics nobody subscribed to.

mod recorder;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use transport::frames::{recv_frames, send_frames, Received};
use transport::ShutdownWatch;

use self::recorder::Recorder;
use crate::config::BusConfig;

/// Messages handled per wake-up before the other direction gets a turn.
const BATCH: usize = 512;
/// Frames in one bus message; both layouts use one or two.
const MAX_FRAMES: usize = 16;

/// Counters of one bus, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages and bytes forwarded from publishers to subscribers.
    pub messages_down: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Subscription messages forwarded from subscribers to publishers.
    pub messages_up: AtomicU64,
    pub bytes_up: AtomicU64,
    /// Messages dropped for having more than 16 frames.
    pub too_many_frames: AtomicU64,
    /// Copies the capture socket could not take.
    pub capture_dropped: AtomicU64,
    /// Messages the recording could not write.
    pub record_errors: AtomicU64,
}

impl BusCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        [
            ("messages_down", self.messages_down.load(Relaxed)),
            ("bytes_down", self.bytes_down.load(Relaxed)),
            ("messages_up", self.messages_up.load(Relaxed)),
            ("bytes_up", self.bytes_up.load(Relaxed)),
            ("too_many_frames", self.too_many_frames.load(Relaxed)),
            ("capture_dropped", self.capture_dropped.load(Relaxed)),
            ("record_errors", self.record_errors.load(Relaxed)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus '{bus}': cannot bind {endpoint}: {source} (is another hub running? change the bus endpoints with --bus or [[bus]])")]
    Bind { bus: String, endpoint: String, source: zmq::Error },
    #[error("bus '{bus}': cannot open the recording {path}: {source}")]
    Record { bus: String, path: std::path::PathBuf, source: std::io::Error },
    #[error("bus socket: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A bus with its sockets bound, ready to run.
pub struct Bus {
    config: BusConfig,
    frontend: zmq::Socket,
    backend: zmq::Socket,
    capture: Option<zmq::Socket>,
    recorder: Option<Recorder>,
    counters: Arc<BusCounters>,
}

impl Bus {
    pub fn bind(ctx: &zmq::Context, config: &BusConfig) -> Result<Bus, BusError> {
        let bind = |socket: &zmq::Socket, endpoint: &str| {
            socket.bind(endpoint).map_err(|source| BusError::Bind {
                bus: config.name.clone(),
                endpoint: endpoint.to_string(),
                source,
            })
        };
        let frontend = ctx.socket(zmq::XSUB)?;
        frontend.set_rcvhwm(config.hwm)?;
        frontend.set_maxmsgsize(config.max_message_bytes)?;
        frontend.set_linger(0)?;
        bind(&frontend, &config.frontend)?;
        bind(&frontend, &config.inproc_frontend())?;

        let backend = ctx.socket(zmq::XPUB)?;
        backend.set_sndhwm(config.hwm)?;
        backend.set_linger(0)?;
        bind(&backend, &config.backend)?;

        let capture = match &config.capture {
            Some(endpoint) => {
                let socket = ctx.socket(zmq::PUB)?;
                socket.set_sndhwm(config.hwm)?;
                socket.set_linger(0)?;
                bind(&socket, endpoint)?;
                Some(socket)
            }
            None => None,
        };
        let recorder = match &config.record {
            Some(record) => Some(Recorder::open(record).map_err(|source| BusError::Record {
                bus: config.name.clone(),
                path: record.path.clone(),
                source,
            })?),
            None => None,
        };
        if capture.is_some() || recorder.is_some() {
            // Subscribe to everything so the copy misses nothing.
            frontend.send(&b"\x01"[..], 0)?;
        }
        Ok(Bus { config: config.clone(), frontend, backend, capture, recorder, counters: Arc::default() })
    }

    pub fn counters(&self) -> Arc<BusCounters> {
        self.counters.clone()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Forwards both ways until `shutdown` is set.
    pub fn run(mut self, shutdown: &ShutdownWatch) -> Result<(), BusError> {
        log::info!(
            "bus '{}': publishers → {}, subscribers → {}",
            self.config.name,
            self.config.frontend,
            self.config.backend
        );
        let mut frames = Vec::with_capacity(4);
        while !shutdown.is_set() {
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
                shutdown.poll_item(),
            ];
            // Wake at least once a second to flush the recording.
            match zmq::poll(&mut items, 1000) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let (down, up) = (items[0].is_readable(), items[1].is_readable());
            if down {
                self.forward_down(&mut frames)?;
            }
            if up {
                self.forward_up(&mut frames)?;
            }
            if let Some(recorder) = &mut self.recorder {
                if recorder.flush_if_due().is_err() {
                    self.counters.record_errors.fetch_add(1, Relaxed);
                }
            }
        }
        if let Some(recorder) = &mut self.recorder {
            let _ = recorder.flush();
        }
        Ok(())
    }

    fn forward_down(&mut self, frames: &mut Vec<zmq::Message>) -> Result<(), BusError> {
        let c = &self.counters;
        // Counted per batch: one atomic add per batch, not per message.
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut result = Ok(());
        for _ in 0..BATCH {
            match recv_frames(&self.frontend, frames, MAX_FRAMES, zmq::DONTWAIT) {
                Ok(Received::WouldBlock) => break,
                Ok(Received::TooManyFrames) => {
                    c.too_many_frames.fetch_add(1, Relaxed);
                    continue;
                }
                Ok(Received::Message) => {}
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
            messages += 1;
            bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            if let Some(capture) = &self.capture {
                let copy = frames.iter().map(|f| zmq::Message::from(&f[..]));
                if send_frames(capture, &[], copy, zmq::DONTWAIT).is_err() {
                    c.capture_dropped.fetch_add(1, Relaxed);
                }
            }
            if let Some(recorder) = &mut self.recorder {
                if recorder.record(frames).is_err() {
                    c.record_errors.fetch_add(1, Relaxed);
                }
            }
            // XPUB never blocks: it drops for subscribers whose queue is full.
            let _ = send_frames(&self.backend, &[], frames.drain(..), zmq::DONTWAIT);
        }
        c.messages_down.fetch_add(messages, Relaxed);
        c.bytes_down.fetch_add(bytes, Relaxed);
        result
    }

    fn forward_up(&mut self, frames: &mut Vec<zmq::Message>) -> Result<(), BusError> {
        for _ in 0..BATCH {
            match recv_frames(&self.backend, frames, MAX_FRAMES, zmq::DONTWAIT)? {
                Received::WouldBlock => break,
                Received::TooManyFrames => continue,
                Received::Message => {}
            }
            let bytes: usize = frames.iter().map(|f| f.len()).sum();
            self.counters.messages_up.fetch_add(1, Relaxed);
            self.counters.bytes_up.fetch_add(bytes as u64, Relaxed);
            let _ = send_frames(&self.frontend, &[], frames.drain(..), zmq::DONTWAIT);
        }
        Ok(())
    }
}
