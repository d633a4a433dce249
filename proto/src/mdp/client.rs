//! The Majordomo client's decisions, sans-IO: one request at a time, retried
//! in the lazy-pirate style (zguide, chapter 4).
//!
//! The shell (blocking or async, in `transport`) owns the socket and the
//! clock. It calls [`ClientCore::start`] and sends the request as the returned
//! [`Send`] says, waits for a message until [`ClientCore::deadline`], hands
//! each message to [`ClientCore::on_message`] and a passed deadline to
//! [`ClientCore::on_timeout`]:
//!
//! - each reply part must arrive within `timeout` of the previous one, so a
//!   long stream of PARTIALs is not cut off;
//! - after a timeout the socket is thrown away (so a late reply can never be
//!   taken for the answer to the next request) and the request is sent again
//!   on a fresh one, up to `retries` times. A retried request may run twice on
//!   the service side: retry only what is safe to repeat;
//! - any other failure of the shell's (a send error, say) also costs the
//!   socket: [`ClientCore::on_failure`].

use std::time::{Duration, Instant};

use super::{decode_from_broker, Dialect, Envelope, FromBroker, ReplyKind};
use crate::Frame;

/// How a client speaks, waits and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    pub dialect: Dialect,
    /// How long to wait for each reply part.
    pub timeout: Duration,
    /// How many times to resend, on a fresh socket, after a timeout.
    pub retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        // plantd's client default timeout.
        ClientOptions { dialect: Dialect::Rfc7, timeout: Duration::from_millis(2500), retries: 2 }
    }
}

/// Where the shell sends the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Send {
    /// On the socket it already has.
    SameSocket,
    /// On a new socket: close the old one first, if any.
    FreshSocket,
}

/// What a timeout means for the request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Send the request again, on a fresh socket.
    Resend,
    /// No attempt was answered: give up after this many.
    GiveUp { attempts: u32 },
}

/// One reply part for the request in flight.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyPart<'a, F> {
    pub kind: ReplyKind,
    /// The service that answered; `None` from majortomo, which does not say.
    pub service: Option<&'a [u8]>,
    pub body: &'a [F],
}

/// A message from the broker as a reply part to a client; `None` for
/// anything else (malformed, or a worker command).
pub fn parse_reply<F: Frame>(frames: &[F]) -> Option<ReplyPart<'_, F>> {
    match decode_from_broker(frames) {
        Ok((_, FromBroker::Reply { kind, service, body })) => Some(ReplyPart { kind, service, body }),
        _ => None,
    }
}

struct Call {
    service: Box<[u8]>,
    attempt: u32,
    deadline: Instant,
}

/// One client's request state and socket decisions.
pub struct ClientCore {
    options: ClientOptions,
    /// Whether the shell's socket may be used again.
    socket_usable: bool,
    call: Option<Call>,
}

impl ClientCore {
    pub fn new(options: ClientOptions) -> Self {
        ClientCore { options, socket_usable: false, call: None }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Begins a request to `service` (abandoning any unfinished one, whose
    /// socket is then not reused).
    pub fn start(&mut self, now: Instant, service: &[u8]) -> Send {
        if self.call.take().is_some() {
            self.socket_usable = false;
        }
        self.call = Some(Call { service: service.into(), attempt: 1, deadline: now + self.options.timeout });
        self.send()
    }

    fn send(&mut self) -> Send {
        if std::mem::replace(&mut self.socket_usable, true) {
            Send::SameSocket
        } else {
            Send::FreshSocket
        }
    }

    /// The request envelope for the call in flight, or `None` if there is none.
    pub fn envelope(&self) -> Option<Envelope<'_>> {
        let call = self.call.as_ref()?;
        Some(super::client_request(self.options.dialect, &call.service))
    }

    /// Until when the shell waits for the next reply part.
    pub fn deadline(&self) -> Option<Instant> {
        self.call.as_ref().map(|c| c.deadline)
    }

    /// Which attempt is in flight (1 for the first send).
    pub fn attempt(&self) -> u32 {
        self.call.as_ref().map_or(0, |c| c.attempt)
    }

    /// A message from the broker. `Some` when it is a reply part for the
    /// request in flight; a FINAL ends the request. Anything else (malformed,
    /// another service's reply, a worker command) is ignored.
    pub fn on_message<'a, F: Frame>(&mut self, now: Instant, frames: &'a [F]) -> Option<ReplyPart<'a, F>> {
        let call = self.call.as_mut()?;
        let part = parse_reply(frames)?;
        if part.service.is_some_and(|s| s != &call.service[..]) {
            return None;
        }
        match part.kind {
            ReplyKind::Partial => call.deadline = now + self.options.timeout,
            ReplyKind::Final => self.call = None,
        }
        Some(part)
    }

    /// The deadline passed with no reply part: resend or give up. Either way
    /// the socket is not used again.
    pub fn on_timeout(&mut self, now: Instant) -> Timeout {
        self.socket_usable = false;
        let Some(call) = self.call.as_mut() else { return Timeout::GiveUp { attempts: 0 } };
        if call.attempt > self.options.retries {
            let attempts = call.attempt;
            self.call = None;
            return Timeout::GiveUp { attempts };
        }
        call.attempt += 1;
        call.deadline = now + self.options.timeout;
        Timeout::Resend
    }

    /// The shell failed to send or receive: the request is abandoned and the
    /// socket not used again.
    pub fn on_failure(&mut self) {
        self.socket_usable = false;
        self.call = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdp::{client_reply, encode_from_broker};

    const MS: Duration = Duration::from_millis(1);

    fn core(retries: u32) -> ClientCore {
        ClientCore::new(ClientOptions { dialect: Dialect::Rfc18, timeout: 100 * MS, retries })
    }

    fn reply(kind: ReplyKind, service: &[u8], body: &[u8]) -> Vec<Vec<u8>> {
        client_reply(Dialect::Rfc18, kind, Some(service)).unwrap().with_body(&[body])
    }

    #[test]
    fn a_final_reply_ends_the_call_and_keeps_the_socket() {
        let t0 = Instant::now();
        let mut c = core(2);
        assert_eq!(c.start(t0, b"echo"), Send::FreshSocket);
        assert_eq!(c.envelope().unwrap().frames(), [&b"MDPC02"[..], b"\x01", b"echo"]);
        let frames = reply(ReplyKind::Final, b"echo", b"hi");
        let part = c.on_message(t0, &frames).expect("a reply");
        assert_eq!((part.kind, part.body.len()), (ReplyKind::Final, 1));
        assert_eq!(c.deadline(), None);
        assert_eq!(c.start(t0, b"echo"), Send::SameSocket);
    }

    #[test]
    fn partials_extend_the_deadline() {
        let t0 = Instant::now();
        let mut c = core(0);
        c.start(t0, b"s");
        let partial = reply(ReplyKind::Partial, b"s", b"1");
        assert_eq!(c.on_message(t0 + 90 * MS, &partial).unwrap().kind, ReplyKind::Partial);
        assert_eq!(c.deadline(), Some(t0 + 190 * MS));
    }

    #[test]
    fn timeouts_resend_on_fresh_sockets_then_give_up() {
        let t0 = Instant::now();
        let mut c = core(2);
        c.start(t0, b"s");
        for attempt in 2..=3 {
            assert_eq!(c.on_timeout(t0), Timeout::Resend);
            assert_eq!(c.attempt(), attempt);
            assert_eq!(c.send(), Send::FreshSocket);
        }
        assert_eq!(c.on_timeout(t0), Timeout::GiveUp { attempts: 3 });
        assert_eq!(c.start(t0, b"s"), Send::FreshSocket, "a timed-out socket is never reused");
    }

    #[test]
    fn other_messages_are_ignored() {
        let t0 = Instant::now();
        let mut c = core(0);
        assert!(c.on_message(t0, &reply(ReplyKind::Final, b"s", b"x")).is_none(), "nothing in flight");
        c.start(t0, b"s");
        assert!(c.on_message(t0, &reply(ReplyKind::Final, b"other", b"x")).is_none());
        assert!(c.on_message(t0, &[b"garbage".to_vec()]).is_none());
        let heartbeat = encode_from_broker::<Vec<u8>>(Dialect::Rfc18, &FromBroker::Heartbeat).unwrap();
        assert!(c.on_message(t0, &heartbeat).is_none());
        assert!(c.deadline().is_some(), "still waiting");
    }

    #[test]
    fn a_failure_abandons_the_call_and_the_socket() {
        let t0 = Instant::now();
        let mut c = core(2);
        c.start(t0, b"s");
        c.on_failure();
        assert_eq!(c.deadline(), None);
        assert_eq!(c.start(t0, b"s"), Send::FreshSocket);
    }
}
