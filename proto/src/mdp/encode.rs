//! Typed message out, frames in. The builders return only the envelope (the
//! frames before the body) so a caller can send body frames it already owns
//! without copying them.

use super::cmd::*;
use super::{Dialect, FromBroker, ReplyKind, ToBroker, MDPC01, MDPC02, MDPW01, MDPW02};
use crate::Frame;

/// The header frames of one message, in order, before its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    parts: [&'a [u8]; 5],
    len: usize,
}

impl<'a> Envelope<'a> {
    fn new(dialect: Dialect, to_broker: bool, header: &'a [u8]) -> Self {
        let delimited = match dialect {
            Dialect::Rfc7 | Dialect::Majortomo => true,
            Dialect::Rfc18 => false,
            Dialect::Plantd => to_broker,
        };
        let env = Envelope { parts: [&[]; 5], len: 0 };
        if delimited {
            env.push(b"").push(header)
        } else {
            env.push(header)
        }
    }

    fn push(mut self, part: &'a [u8]) -> Self {
        self.parts[self.len] = part;
        self.len += 1;
        self
    }

    pub fn frames(&self) -> &[&'a [u8]] {
        &self.parts[..self.len]
    }

    /// The whole message as owned frames: envelope then `body`.
    pub fn with_body<F: Frame>(&self, body: &[F]) -> Vec<Vec<u8>> {
        let head = self.frames().iter().map(|f| f.to_vec());
        head.chain(body.iter().map(|f| f.bytes().to_vec())).collect()
    }
}

/// A message that has no encoding in the requested dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("RFC 7 has no PARTIAL replies")]
    PartialInRfc7,
    #[error("this dialect needs a service frame in replies to clients")]
    MissingService,
}

fn worker_header(dialect: Dialect) -> &'static [u8] {
    if dialect == Dialect::Rfc7 {
        MDPW01
    } else {
        MDPW02
    }
}

fn client_header(dialect: Dialect) -> &'static [u8] {
    if dialect == Dialect::Rfc7 {
        MDPC01
    } else {
        MDPC02
    }
}

/// Client → broker: REQUEST for `service`.
pub fn client_request(dialect: Dialect, service: &[u8]) -> Envelope<'_> {
    let env = Envelope::new(dialect, true, client_header(dialect));
    match dialect {
        Dialect::Rfc7 => env.push(service),
        Dialect::Rfc18 => env.push(C2_REQUEST).push(service),
        Dialect::Majortomo => env.push(MT_REQUEST).push(service),
        Dialect::Plantd => env.push(REQUEST).push(service),
    }
}

/// Broker → client: a reply part. `service` is dropped in majortomo, which has no frame for it.
pub fn client_reply(
    dialect: Dialect,
    kind: ReplyKind,
    service: Option<&[u8]>,
) -> Result<Envelope<'_>, EncodeError> {
    let env = Envelope::new(dialect, false, client_header(dialect));
    let command = match (dialect, kind) {
        (Dialect::Rfc7, ReplyKind::Partial) => return Err(EncodeError::PartialInRfc7),
        (Dialect::Rfc7, ReplyKind::Final) => None,
        (Dialect::Rfc18, ReplyKind::Partial) => Some(C2_PARTIAL),
        (Dialect::Rfc18, ReplyKind::Final) => Some(C2_FINAL),
        (Dialect::Majortomo, ReplyKind::Partial) => return Ok(env.push(MT_PARTIAL)),
        (Dialect::Majortomo, ReplyKind::Final) => return Ok(env.push(MT_FINAL)),
        (Dialect::Plantd, ReplyKind::Partial) => Some(PARTIAL),
        (Dialect::Plantd, ReplyKind::Final) => Some(FINAL),
    };
    let service = service.ok_or(EncodeError::MissingService)?;
    Ok(match command {
        Some(command) => env.push(command).push(service),
        None => env.push(service),
    })
}

/// Worker → broker: READY for `service` (a stock worker: credit 1).
pub fn worker_ready(dialect: Dialect, service: &[u8]) -> Envelope<'_> {
    let command = match dialect {
        Dialect::Rfc7 => W1_READY,
        Dialect::Rfc18 | Dialect::Majortomo => W2_READY,
        Dialect::Plantd => READY,
    };
    Envelope::new(dialect, true, worker_header(dialect)).push(command).push(service)
}

/// Worker → broker: READY for `service` announcing `credit` (the
/// `credit=N` frame, in `buf`; none for credit 1, which is a stock READY).
pub fn worker_ready_with_credit<'a>(
    dialect: Dialect,
    service: &'a [u8],
    credit: u32,
    buf: &'a mut [u8; 12],
) -> Envelope<'a> {
    let env = worker_ready(dialect, service);
    if credit <= 1 {
        env
    } else {
        env.push(super::credit_frame(credit, buf))
    }
}

/// Worker → broker: a reply part for `client`.
pub fn worker_reply(dialect: Dialect, kind: ReplyKind, client: &[u8]) -> Result<Envelope<'_>, EncodeError> {
    let command = match (dialect, kind) {
        (Dialect::Rfc7, ReplyKind::Partial) => return Err(EncodeError::PartialInRfc7),
        (Dialect::Rfc7, ReplyKind::Final) => W1_REPLY,
        (Dialect::Rfc18 | Dialect::Majortomo, ReplyKind::Partial) => W2_PARTIAL,
        (Dialect::Rfc18 | Dialect::Majortomo, ReplyKind::Final) => W2_FINAL,
        (Dialect::Plantd, ReplyKind::Partial) => PARTIAL,
        (Dialect::Plantd, ReplyKind::Final) => FINAL,
    };
    let env = Envelope::new(dialect, true, worker_header(dialect)).push(command).push(client);
    // plantd puts the body right after the client address.
    Ok(if dialect == Dialect::Plantd { env } else { env.push(b"") })
}

/// Broker → worker: REQUEST from `client`.
pub fn worker_request(dialect: Dialect, client: &[u8]) -> Envelope<'_> {
    let command = match dialect {
        Dialect::Rfc7 => W1_REQUEST,
        Dialect::Rfc18 | Dialect::Majortomo => W2_REQUEST,
        Dialect::Plantd => REQUEST,
    };
    Envelope::new(dialect, false, worker_header(dialect)).push(command).push(client).push(b"")
}

/// HEARTBEAT between worker and broker, either way.
pub fn heartbeat(dialect: Dialect, to_broker: bool) -> Envelope<'static> {
    let command = match dialect {
        Dialect::Rfc7 => W1_HEARTBEAT,
        Dialect::Rfc18 | Dialect::Majortomo => W2_HEARTBEAT,
        Dialect::Plantd => HEARTBEAT,
    };
    Envelope::new(dialect, to_broker, worker_header(dialect)).push(command)
}

/// DISCONNECT between worker and broker, either way.
pub fn worker_disconnect(dialect: Dialect, to_broker: bool) -> Envelope<'static> {
    let command = match dialect {
        Dialect::Rfc7 => W1_DISCONNECT,
        Dialect::Rfc18 | Dialect::Majortomo => W2_DISCONNECT,
        Dialect::Plantd => DISCONNECT,
    };
    Envelope::new(dialect, to_broker, worker_header(dialect)).push(command)
}

/// Encodes a whole message to the broker as owned frames.
pub fn encode_to_broker<F: Frame>(
    dialect: Dialect,
    msg: &ToBroker<'_, F>,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut buf = [0; 12];
    let env = match *msg {
        ToBroker::Request { service, .. } => client_request(dialect, service),
        ToBroker::Ready { service, credit } => worker_ready_with_credit(dialect, service, credit, &mut buf),
        ToBroker::Reply { kind, client, .. } => worker_reply(dialect, kind, client)?,
        ToBroker::Heartbeat => heartbeat(dialect, true),
        ToBroker::Disconnect => worker_disconnect(dialect, true),
    };
    Ok(env.with_body(msg.body()))
}

/// Encodes a whole message from the broker as owned frames.
pub fn encode_from_broker<F: Frame>(
    dialect: Dialect,
    msg: &FromBroker<'_, F>,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let env = match *msg {
        FromBroker::Reply { kind, service, .. } => client_reply(dialect, kind, service)?,
        FromBroker::Request { client, .. } => worker_request(dialect, client),
        FromBroker::Heartbeat => heartbeat(dialect, false),
        FromBroker::Disconnect => worker_disconnect(dialect, false),
    };
    Ok(env.with_body(msg.body()))
}
