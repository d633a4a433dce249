//! The Majordomo Protocol, in the four dialects found in the field.
//!
//! | dialect     | headers            | leading `""` | commands | notes                                   |
//! |-------------|--------------------|--------------|----------|-----------------------------------------|
//! | `Rfc7`      | `MDPC01`/`MDPW01`  | yes          | bytes    | REPLY only (zguide, older plantd)       |
//! | `Rfc18`     | `MDPC02`/`MDPW02`  | no           | bytes    | PARTIAL* then FINAL                     |
//! | `Majortomo` | `MDPC02`/`MDPW02`  | yes          | bytes    | client REQUEST is `\x02`, client replies carry no service frame |
//! | `Plantd`    | `MDPC02`/`MDPW02`  | to broker    | words    | no `""` between client and body in worker replies |
//!
//! Frames here are what a DEALER sees: the identity frame a ROUTER adds is not
//! part of them. Decoding borrows from the frames and never allocates, so the
//! broker can move body frames on without copying them.
//!
//! # Credit-based workers (an opt-in extension, every dialect)
//!
//! A worker that can hold several requests at once says how many in its READY,
//! with one more frame after the service name:
//!
//! ```text
//! READY service "credit=N"        N: 1 to 65535, decimal ASCII, no sign, no leading zero
//! RFC 7:      ""  "MDPW01" \x01    "echo" "credit=16"
//! RFC 18:         "MDPW02" \x01    "echo" "credit=16"
//! majortomo:  ""  "MDPW02" \x01    "echo" "credit=16"
//! plantd:     ""  "MDPW02" "READY" "echo" "credit=16"
//! ```
//!
//! A broker that knows the extension keeps up to N requests outstanding at the
//! worker (it may hold fewer: ours at most [`MAX_BROKER_CREDIT`]); nothing
//! else changes on the wire. Each REQUEST carries its own client address (our
//! broker's per-request token), which is how the worker tells them apart, and
//! each reply echoes it, in any order; PARTIALs may interleave between
//! requests. Heartbeats, DISCONNECT and liveness are as before, for the
//! worker as a whole. A READY without the frame is credit 1: a stock worker.
//!
//! Stock brokers read the service frame and ignore the rest of a READY
//! (zguide's `mdbroker`, majortomo 0.2.0, plantd's Go broker: each takes
//! `msg[0]` as the service), so they register the worker and, since they send
//! a worker one request at a time, serve it as credit 1. A strict broker that
//! rejects the extra frame (as ours did before the extension: a READY with
//! trailing frames was dropped as malformed) never accepts the session: it
//! DISCONNECTs the worker's first heartbeat as an unknown worker, or stays
//! silent. [`worker::WorkerCore`] then registers again without the frame, as
//! a credit-1 worker, and alternates between the two forms while sessions end
//! that way, so a refusal for another reason does not lose credit for good.

pub mod client;
mod decode;
mod encode;
pub mod worker;

pub use decode::{decode_from_broker, decode_to_broker, DecodeError};
pub use encode::{
    client_reply, client_request, encode_from_broker, encode_to_broker, heartbeat, worker_disconnect,
    worker_ready, worker_ready_with_credit, worker_reply, worker_request, EncodeError, Envelope,
};

use std::fmt;
use std::str::FromStr;

/// Client protocol header of MDP/0.1 (RFC 7).
pub const MDPC01: &[u8] = b"MDPC01";
/// Worker protocol header of MDP/0.1 (RFC 7).
pub const MDPW01: &[u8] = b"MDPW01";
/// Client protocol header of MDP/0.2 (RFC 18, majortomo, plantd).
pub const MDPC02: &[u8] = b"MDPC02";
/// Worker protocol header of MDP/0.2 (RFC 18, majortomo, plantd).
pub const MDPW02: &[u8] = b"MDPW02";

/// Longest service name accepted. Names are routing keys, not payloads.
pub const MAX_SERVICE_LEN: usize = 255;

/// The largest credit a READY may announce (see the module doc).
pub const MAX_CREDIT: u32 = 65_535;

/// The most requests our broker keeps outstanding at one worker, whatever it
/// announced: it bounds what one registration can hold (and what a dead
/// worker's redelivery moves at once).
pub const MAX_BROKER_CREDIT: u32 = 1024;

/// The credit frame's prefix: `credit=` then the number.
pub const CREDIT_PREFIX: &[u8] = b"credit=";

/// The credit frame of a READY, `credit=N`, decoded: `None` if it is not one
/// (wrong prefix, not a canonical decimal, 0, or over [`MAX_CREDIT`]).
pub fn parse_credit(frame: &[u8]) -> Option<u32> {
    let digits = frame.strip_prefix(CREDIT_PREFIX)?;
    if digits.is_empty() || digits.len() > 5 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    (n <= MAX_CREDIT).then_some(n)
}

/// A READY's credit frame for `credit` (clamped to 1..=[`MAX_CREDIT`]), in a
/// caller's buffer so the envelope can borrow it.
pub fn credit_frame(credit: u32, buf: &mut [u8; 12]) -> &[u8] {
    let n = credit.clamp(1, MAX_CREDIT);
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut rest = n;
    while rest > 0 {
        digits[len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
    }
    buf[..CREDIT_PREFIX.len()].copy_from_slice(CREDIT_PREFIX);
    for i in 0..len {
        buf[CREDIT_PREFIX.len() + i] = digits[len - 1 - i];
    }
    &buf[..CREDIT_PREFIX.len() + len]
}

/// Which Majordomo variant a peer speaks. The broker answers every peer in the
/// dialect it spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// RFC 7, MDP/0.1.
    Rfc7,
    /// RFC 18, MDP/0.2, exactly as written.
    Rfc18,
    /// RFC 18 as the `majortomo` Python package speaks it.
    Majortomo,
    /// plantd's Go implementation: MDP/0.2 headers with ASCII word commands.
    Plantd,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [Dialect::Rfc7, Dialect::Rfc18, Dialect::Majortomo, Dialect::Plantd];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Rfc7 => "rfc7",
            Dialect::Rfc18 => "rfc18",
            Dialect::Majortomo => "majortomo",
            Dialect::Plantd => "plantd",
        }
    }

    /// RFC 7 has a single REPLY; every later dialect streams PARTIALs before a FINAL.
    pub fn supports_partial(self) -> bool {
        self != Dialect::Rfc7
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown dialect '{s}': expected one of rfc7, rfc18, majortomo, plantd"))
    }
}

/// A reply part: RFC 7's REPLY is a `Final`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    Partial,
    Final,
}

/// A message a client or worker sends to the broker.
#[derive(Debug, PartialEq, Eq)]
pub enum ToBroker<'a, F> {
    /// Client asks `service` to handle `body`.
    Request { service: &'a [u8], body: &'a [F] },
    /// Worker registers for `service`, holding up to `credit` requests at
    /// once (1 for a stock worker; see the module doc).
    Ready { service: &'a [u8], credit: u32 },
    /// Worker answers the request of `client`.
    Reply { kind: ReplyKind, client: &'a [u8], body: &'a [F] },
    /// Worker is alive.
    Heartbeat,
    /// Worker is leaving.
    Disconnect,
}

/// A message the broker sends to a client or worker.
#[derive(Debug, PartialEq, Eq)]
pub enum FromBroker<'a, F> {
    /// To a client. `service` is `None` only in the majortomo dialect, which omits it.
    Reply { kind: ReplyKind, service: Option<&'a [u8]>, body: &'a [F] },
    /// To a worker: handle `body` for `client`.
    Request { client: &'a [u8], body: &'a [F] },
    /// Broker is alive.
    Heartbeat,
    /// Worker must reconnect on a fresh socket and register again.
    Disconnect,
}

impl<F> ToBroker<'_, F> {
    /// Body frames carried by the message (empty for commands without a body).
    pub fn body(&self) -> &[F] {
        match self {
            ToBroker::Request { body, .. } | ToBroker::Reply { body, .. } => body,
            _ => &[],
        }
    }
}

impl<F> FromBroker<'_, F> {
    /// Body frames carried by the message (empty for commands without a body).
    pub fn body(&self) -> &[F] {
        match self {
            FromBroker::Reply { body, .. } | FromBroker::Request { body, .. } => body,
            _ => &[],
        }
    }
}

/// Byte and word commands, shared by the decoder and the encoder so the two
/// cannot disagree.
pub(crate) mod cmd {
    // RFC 7 worker commands.
    pub const W1_READY: &[u8] = b"\x01";
    pub const W1_REQUEST: &[u8] = b"\x02";
    pub const W1_REPLY: &[u8] = b"\x03";
    pub const W1_HEARTBEAT: &[u8] = b"\x04";
    pub const W1_DISCONNECT: &[u8] = b"\x05";

    // RFC 18 client commands.
    pub const C2_REQUEST: &[u8] = b"\x01";
    pub const C2_PARTIAL: &[u8] = b"\x02";
    pub const C2_FINAL: &[u8] = b"\x03";

    // majortomo client commands (it reuses the worker numbering).
    pub const MT_REQUEST: &[u8] = b"\x02";
    pub const MT_PARTIAL: &[u8] = b"\x03";
    pub const MT_FINAL: &[u8] = b"\x04";

    // RFC 18 (and majortomo) worker commands.
    pub const W2_READY: &[u8] = b"\x01";
    pub const W2_REQUEST: &[u8] = b"\x02";
    pub const W2_PARTIAL: &[u8] = b"\x03";
    pub const W2_FINAL: &[u8] = b"\x04";
    pub const W2_HEARTBEAT: &[u8] = b"\x05";
    pub const W2_DISCONNECT: &[u8] = b"\x06";

    // plantd word commands.
    pub const READY: &[u8] = b"READY";
    pub const REQUEST: &[u8] = b"REQUEST";
    pub const PARTIAL: &[u8] = b"PARTIAL";
    pub const FINAL: &[u8] = b"FINAL";
    pub const HEARTBEAT: &[u8] = b"HEARTBEAT";
    pub const DISCONNECT: &[u8] = b"DISCONNECT";
}

#[cfg(test)]
mod tests;
