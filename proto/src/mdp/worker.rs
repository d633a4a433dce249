//! The Majordomo worker's decisions, sans-IO.
//!
//! A worker's life is a series of sessions, one per socket: READY, then
//! requests and heartbeats until the broker says DISCONNECT (it does so to
//! workers it does not know, e.g. after a restart) or stays silent for
//! `liveness` heartbeat intervals. Then the worker waits (exponential backoff
//! with jitter, reset whenever the broker is heard) and registers again on a
//! fresh socket.
//!
//! The shell (`transport::Worker`) owns the socket and the clock: it opens a
//! socket and sends [`WorkerCore::begin_session`]'s READY, passes each message
//! to [`WorkerCore::on_message`], calls [`WorkerCore::on_tick`] whenever
//! [`WorkerCore::next_deadline`] passes, and tells [`WorkerCore::sent`] when it
//! sent a reply (any message counts as a heartbeat).
//!
//! A worker made [`WorkerCore::with_credit`] announces its credit in READY
//! (the extension in [`crate::mdp`]'s module doc). A session that ends before
//! the broker accepted it (a DISCONNECT before any request or heartbeat, or
//! silence) makes the next READY take the other form, plain or with credit:
//! a broker that rejects the credit frame gets a stock worker instead.

use std::time::{Duration, Instant};

use super::{decode_from_broker, Dialect, EncodeError, Envelope, FromBroker, ReplyKind};
use crate::backoff::Backoff;
use crate::heartbeat::Heartbeat;
use crate::Frame;

/// How a worker heartbeats and reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerTiming {
    pub heartbeat_interval: Duration,
    pub heartbeat_liveness: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for WorkerTiming {
    fn default() -> Self {
        // RFC 7's heartbeat: 2500 ms, 3 intervals.
        WorkerTiming {
            heartbeat_interval: Duration::from_millis(2500),
            heartbeat_liveness: 3,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// What a message from the broker asks of the worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a, F> {
    /// Handle `body` for `client`, then send [`WorkerCore::reply`] with the answer.
    Request { client: &'a [u8], body: &'a [F] },
    /// A heartbeat: nothing to do.
    Heartbeat,
    /// Not a message a worker can act on; drop it.
    Malformed,
    /// The broker said DISCONNECT: end the session and reconnect.
    Reconnect,
    /// The broker said DISCONNECT before it sent anything else: it refused
    /// the registration (a service only one worker may hold, or a READY form
    /// it does not take). End the session and reconnect.
    Refused,
}

/// What the passing of time asks of the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send [`WorkerCore::heartbeat`] (never blocking on it).
    Heartbeat,
    /// The broker has been silent for `liveness` intervals: end the session and reconnect.
    Reconnect,
}

pub struct WorkerCore {
    dialect: Dialect,
    service: Box<[u8]>,
    timing: WorkerTiming,
    heartbeat: Heartbeat,
    backoff: Backoff,
    credit: u32,
    /// Whether the next READY carries the credit frame.
    announce: bool,
    /// Whether this session's READY carried it.
    announced: bool,
    /// Whether the broker has sent this session anything but DISCONNECT.
    accepted: bool,
    credit_buf: [u8; 12],
}

impl WorkerCore {
    pub fn new(dialect: Dialect, service: &[u8], timing: WorkerTiming, now: Instant) -> Self {
        WorkerCore {
            dialect,
            service: service.into(),
            timing,
            heartbeat: Heartbeat::new(now, timing.heartbeat_interval, timing.heartbeat_liveness),
            backoff: Backoff::new(timing.reconnect_min, timing.reconnect_max),
            credit: 1,
            announce: false,
            announced: false,
            accepted: false,
            credit_buf: [0; 12],
        }
    }

    /// A worker that holds up to `credit` requests at once (1 to
    /// [`super::MAX_CREDIT`]; 1 is a stock worker).
    pub fn with_credit(mut self, credit: u32) -> Self {
        self.credit = credit.clamp(1, super::MAX_CREDIT);
        self.announce = self.credit > 1;
        self
    }

    /// The credit this worker was made with.
    pub fn credit(&self) -> u32 {
        self.credit
    }

    /// The credit this session's READY announced: 1 when it was a plain READY.
    pub fn announced_credit(&self) -> u32 {
        if self.announced {
            self.credit
        } else {
            1
        }
    }

    /// Whether the broker has accepted this session (sent a request or a heartbeat).
    pub fn accepted(&self) -> bool {
        self.accepted
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn service(&self) -> &[u8] {
        &self.service
    }

    /// A new socket is connected: send this READY on it.
    pub fn begin_session(&mut self, now: Instant) -> Envelope<'_> {
        let t = &self.timing;
        self.heartbeat = Heartbeat::new(now, t.heartbeat_interval, t.heartbeat_liveness);
        self.accepted = false;
        self.announced = self.announce;
        let credit = if self.announced { self.credit } else { 1 };
        super::worker_ready_with_credit(self.dialect, &self.service, credit, &mut self.credit_buf)
    }

    pub fn on_message<'a, F: Frame>(&mut self, now: Instant, frames: &'a [F]) -> Incoming<'a, F> {
        let incoming = match decode_from_broker(frames) {
            Ok((_, FromBroker::Request { client, body })) => Incoming::Request { client, body },
            Ok((_, FromBroker::Heartbeat)) => Incoming::Heartbeat,
            Ok((_, FromBroker::Disconnect)) => {
                let accepted = self.accepted;
                self.session_end();
                return if accepted { Incoming::Reconnect } else { Incoming::Refused };
            }
            Ok((_, FromBroker::Reply { .. })) | Err(_) => return Incoming::Malformed,
        };
        self.accepted = true;
        self.heartbeat.heard(now);
        self.backoff.reset();
        incoming
    }

    /// A session ended. Before the broker accepted it, the next READY takes
    /// the other form (see the module doc); after, the next broker (perhaps a
    /// newer one) is offered the credit again.
    fn session_end(&mut self) {
        // Refused after announcing: try plain next. Otherwise (accepted, or
        // refused when plain): offer the credit again.
        let refused_with_credit = self.announced && !self.accepted;
        self.announce = self.credit > 1 && !refused_with_credit;
        self.accepted = false;
    }

    /// What is due now. A due heartbeat counts as sent.
    pub fn on_tick(&mut self, now: Instant) -> Due {
        if self.heartbeat.peer_expired(now) {
            self.session_end();
            return Due::Reconnect;
        }
        if self.heartbeat.send_due(now) {
            self.heartbeat.sent(now);
            return Due::Heartbeat;
        }
        Due::Nothing
    }

    /// The worker sent something (a reply): that is its heartbeat for now.
    pub fn sent(&mut self, now: Instant) {
        self.heartbeat.sent(now);
    }

    /// When [`WorkerCore::on_tick`] next has something to say.
    pub fn next_deadline(&self) -> Instant {
        self.heartbeat.next_deadline()
    }

    /// How long to wait before the next session, after one ended.
    pub fn reconnect_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// How long the broker may stay silent before the worker reconnects.
    pub fn broker_ttl(&self) -> Duration {
        self.timing.heartbeat_interval * self.timing.heartbeat_liveness
    }

    /// The envelope of a reply part to `client`.
    pub fn reply<'a>(&self, kind: ReplyKind, client: &'a [u8]) -> Result<Envelope<'a>, EncodeError> {
        super::worker_reply(self.dialect, kind, client)
    }

    pub fn heartbeat(&self) -> Envelope<'static> {
        super::heartbeat(self.dialect, true)
    }

    pub fn disconnect(&self) -> Envelope<'static> {
        super::worker_disconnect(self.dialect, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdp::{encode_from_broker, FromBroker};

    const MS: Duration = Duration::from_millis(1);

    fn core(t0: Instant) -> WorkerCore {
        let timing = WorkerTiming {
            heartbeat_interval: 100 * MS,
            heartbeat_liveness: 3,
            reconnect_min: 10 * MS,
            reconnect_max: 1000 * MS,
        };
        WorkerCore::new(Dialect::Rfc7, b"echo", timing, t0)
    }

    fn from_broker(msg: FromBroker<'_, Vec<u8>>) -> Vec<Vec<u8>> {
        encode_from_broker(Dialect::Rfc7, &msg).unwrap()
    }

    #[test]
    fn a_session_starts_with_ready_and_serves_requests() {
        let t0 = Instant::now();
        let mut w = core(t0);
        assert_eq!(w.begin_session(t0).frames(), [&b""[..], b"MDPW01", b"\x01", b"echo"]);
        let body = [b"hi".to_vec()];
        let frames = from_broker(FromBroker::Request { client: b"c1", body: &body });
        assert_eq!(w.on_message(t0, &frames), Incoming::Request { client: &b"c1"[..], body: &body[..] });
        let reply = w.reply(ReplyKind::Final, b"c1").unwrap();
        assert_eq!(reply.frames(), [&b""[..], b"MDPW01", b"\x03", b"c1", b""]);
    }

    #[test]
    fn heartbeats_are_sent_when_quiet_and_silence_means_reconnect() {
        let t0 = Instant::now();
        let mut w = core(t0);
        w.begin_session(t0);
        assert_eq!(w.on_tick(t0 + 50 * MS), Due::Nothing);
        assert_eq!(w.on_tick(t0 + 100 * MS), Due::Heartbeat);
        assert_eq!(w.on_tick(t0 + 150 * MS), Due::Nothing, "the heartbeat counted as sent");
        w.sent(t0 + 190 * MS);
        assert_eq!(w.next_deadline(), t0 + 290 * MS);
        let heartbeat = from_broker(FromBroker::Heartbeat);
        assert_eq!(w.on_message(t0 + 250 * MS, &heartbeat), Incoming::Heartbeat);
        assert_eq!(w.on_tick(t0 + 549 * MS), Due::Heartbeat);
        assert_eq!(w.on_tick(t0 + 550 * MS), Due::Reconnect);
    }

    #[test]
    fn disconnect_and_garbage() {
        let t0 = Instant::now();
        let mut w = core(t0);
        w.begin_session(t0);
        assert_eq!(w.on_message(t0, &[b"junk".to_vec()]), Incoming::Malformed);
        assert_eq!(w.on_message(t0, &from_broker(FromBroker::Disconnect)), Incoming::Refused);
        w.begin_session(t0);
        assert_eq!(w.on_message(t0, &from_broker(FromBroker::Heartbeat)), Incoming::Heartbeat);
        assert!(w.accepted());
        assert_eq!(w.on_message(t0, &from_broker(FromBroker::Disconnect)), Incoming::Reconnect);
    }

    fn ready_frames(w: &mut WorkerCore, t: Instant) -> Vec<Vec<u8>> {
        w.begin_session(t).frames().iter().map(|f| f.to_vec()).collect()
    }

    #[test]
    fn a_credit_worker_announces_its_credit_and_falls_back_when_refused() {
        let t0 = Instant::now();
        let mut w = core(t0).with_credit(16);
        let with_credit: Vec<Vec<u8>> =
            [&b""[..], b"MDPW01", b"\x01", b"echo", b"credit=16"].iter().map(|f| f.to_vec()).collect();
        let plain = with_credit[..4].to_vec();
        assert_eq!(ready_frames(&mut w, t0), with_credit);
        assert_eq!(w.announced_credit(), 16);
        // A strict broker drops that READY, then DISCONNECTs the unknown worker's heartbeat.
        assert_eq!(w.on_message(t0, &from_broker(FromBroker::Disconnect)), Incoming::Refused);
        assert_eq!(ready_frames(&mut w, t0), plain, "falls back to a stock READY");
        assert_eq!(w.announced_credit(), 1);
        // Refused again (for another reason): the next one tries credit again.
        assert_eq!(w.on_message(t0, &from_broker(FromBroker::Disconnect)), Incoming::Refused);
        assert_eq!(ready_frames(&mut w, t0), with_credit);
        // A broker that stays silent is a refusal too.
        assert_eq!(w.on_tick(t0 + 300 * MS), Due::Reconnect);
        assert_eq!(ready_frames(&mut w, t0 + 300 * MS), plain);
        // Accepted plain; after that session the next broker (a restarted,
        // perhaps newer one) is offered the credit again.
        w.on_message(t0 + 300 * MS, &from_broker(FromBroker::Heartbeat));
        assert_eq!(w.on_message(t0 + 300 * MS, &from_broker(FromBroker::Disconnect)), Incoming::Reconnect);
        assert_eq!(ready_frames(&mut w, t0 + 300 * MS), with_credit);
    }

    #[test]
    fn a_stock_worker_never_sends_the_credit_frame() {
        let t0 = Instant::now();
        let mut w = core(t0).with_credit(1);
        for _ in 0..3 {
            assert_eq!(ready_frames(&mut w, t0).len(), 4);
            w.on_message(t0, &from_broker(FromBroker::Disconnect));
        }
    }

    #[test]
    fn reconnect_delays_back_off_until_the_broker_is_heard() {
        let t0 = Instant::now();
        let mut w = core(t0);
        let delays: Vec<Duration> = (0..5).map(|_| w.reconnect_delay()).collect();
        assert!(delays[4] > 40 * MS, "backing off: {delays:?}");
        w.on_message(t0, &from_broker(FromBroker::Heartbeat));
        assert!(w.reconnect_delay() <= 10 * MS, "heard the broker: starts over");
    }
}
