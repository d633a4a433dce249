//! Frames in, typed message and dialect out. Every malformed input is a typed
//! error; nothing here indexes without checking, so nothing here panics.

use super::cmd::*;
use super::{Dialect, FromBroker, ReplyKind, ToBroker, MAX_SERVICE_LEN, MDPC01, MDPC02, MDPW01, MDPW02};
use crate::Frame;

/// Why a message was rejected. The broker counts drops per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no frames")]
    Empty,
    #[error("missing protocol header frame")]
    MissingHeader,
    #[error("unknown protocol header (expected MDPC01, MDPW01, MDPC02 or MDPW02)")]
    UnknownHeader,
    #[error("MDP/0.1 message without its leading empty frame")]
    MissingEmptyFrame,
    #[error("missing command frame")]
    MissingCommand,
    #[error("unknown command")]
    UnknownCommand,
    #[error("command is not valid in this direction")]
    WrongDirection,
    #[error("missing service frame")]
    MissingService,
    #[error("empty service name")]
    EmptyService,
    #[error("service name longer than 255 bytes")]
    ServiceTooLong,
    #[error("missing client address frame")]
    MissingAddress,
    #[error("empty client address")]
    EmptyAddress,
    #[error("missing empty delimiter frame after the client address")]
    MissingDelimiter,
    #[error("unexpected frames after the command")]
    TrailingFrames,
    #[error("a READY's credit frame is not credit=N with N from 1 to 65535")]
    BadCredit,
}

impl DecodeError {
    pub const ALL: [DecodeError; 15] = [
        DecodeError::Empty,
        DecodeError::MissingHeader,
        DecodeError::UnknownHeader,
        DecodeError::MissingEmptyFrame,
        DecodeError::MissingCommand,
        DecodeError::UnknownCommand,
        DecodeError::WrongDirection,
        DecodeError::MissingService,
        DecodeError::EmptyService,
        DecodeError::ServiceTooLong,
        DecodeError::MissingAddress,
        DecodeError::EmptyAddress,
        DecodeError::MissingDelimiter,
        DecodeError::TrailingFrames,
        DecodeError::BadCredit,
    ];

    /// Stable snake_case name, used as a metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::MissingHeader => "missing_header",
            DecodeError::UnknownHeader => "unknown_header",
            DecodeError::MissingEmptyFrame => "missing_empty_frame",
            DecodeError::MissingCommand => "missing_command",
            DecodeError::UnknownCommand => "unknown_command",
            DecodeError::WrongDirection => "wrong_direction",
            DecodeError::MissingService => "missing_service",
            DecodeError::EmptyService => "empty_service",
            DecodeError::ServiceTooLong => "service_too_long",
            DecodeError::MissingAddress => "missing_address",
            DecodeError::EmptyAddress => "empty_address",
            DecodeError::MissingDelimiter => "missing_delimiter",
            DecodeError::TrailingFrames => "trailing_frames",
            DecodeError::BadCredit => "bad_credit",
        }
    }

    /// Position in [`DecodeError::ALL`], for counting in a fixed array.
    pub fn index(self) -> usize {
        self as usize
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes a message a client or worker sent to the broker.
pub fn decode_to_broker<F: Frame>(frames: &[F]) -> Result<(Dialect, ToBroker<'_, F>)> {
    let (delimited, header, rest) = split_header(frames)?;
    match header {
        MDPC01 | MDPW01 if !delimited => Err(DecodeError::MissingEmptyFrame),
        MDPC01 => Ok((Dialect::Rfc7, request(rest)?)),
        MDPW01 => Ok((Dialect::Rfc7, worker_to_broker(Dialect::Rfc7, rest)?)),
        MDPC02 => {
            let (command, rest) = split_command(rest)?;
            let dialect = dialect_02(delimited, command);
            // plantd clients write the leading empty frame, like its workers.
            if dialect == Dialect::Plantd && !delimited {
                return Err(DecodeError::UnknownCommand);
            }
            let expected = match dialect {
                Dialect::Rfc18 => C2_REQUEST,
                Dialect::Majortomo => MT_REQUEST,
                _ => REQUEST,
            };
            if command != expected {
                return Err(unknown_or_wrong_direction(dialect, command, true));
            }
            Ok((dialect, request(rest)?))
        }
        MDPW02 => {
            let dialect = match rest.first() {
                Some(command) => dialect_02(delimited, command.bytes()),
                None => return Err(DecodeError::MissingCommand),
            };
            // plantd workers write the leading empty frame; RFC 18 ones do not.
            if dialect == Dialect::Plantd && !delimited {
                return Err(DecodeError::UnknownCommand);
            }
            Ok((dialect, worker_to_broker(dialect, rest)?))
        }
        _ => Err(DecodeError::UnknownHeader),
    }
}

/// Decodes a message the broker sent to a client or worker.
pub fn decode_from_broker<F: Frame>(frames: &[F]) -> Result<(Dialect, FromBroker<'_, F>)> {
    let (delimited, header, rest) = split_header(frames)?;
    match header {
        MDPC01 | MDPW01 if !delimited => Err(DecodeError::MissingEmptyFrame),
        MDPC01 => {
            let (service, body) = split_service(rest)?;
            Ok((Dialect::Rfc7, FromBroker::Reply { kind: ReplyKind::Final, service: Some(service), body }))
        }
        MDPW01 => Ok((Dialect::Rfc7, broker_to_worker(Dialect::Rfc7, rest)?)),
        MDPC02 => {
            let (command, rest) = split_command(rest)?;
            let dialect = dialect_02(delimited, command);
            // Only majortomo writes a leading empty frame to clients.
            if delimited != (dialect == Dialect::Majortomo) {
                return Err(DecodeError::UnknownCommand);
            }
            let (partial, fin) = match dialect {
                Dialect::Rfc18 => (C2_PARTIAL, C2_FINAL),
                Dialect::Majortomo => (MT_PARTIAL, MT_FINAL),
                _ => (PARTIAL, FINAL),
            };
            let kind = if command == partial {
                ReplyKind::Partial
            } else if command == fin {
                ReplyKind::Final
            } else {
                return Err(unknown_or_wrong_direction(dialect, command, false));
            };
            if dialect == Dialect::Majortomo {
                return Ok((dialect, FromBroker::Reply { kind, service: None, body: rest }));
            }
            let (service, body) = split_service(rest)?;
            Ok((dialect, FromBroker::Reply { kind, service: Some(service), body }))
        }
        MDPW02 => {
            let dialect = match rest.first() {
                Some(command) => dialect_02(delimited, command.bytes()),
                None => return Err(DecodeError::MissingCommand),
            };
            if delimited != (dialect == Dialect::Majortomo) {
                return Err(DecodeError::UnknownCommand);
            }
            Ok((dialect, broker_to_worker(dialect, rest)?))
        }
        _ => Err(DecodeError::UnknownHeader),
    }
}

/// Splits off the optional leading empty frame and the protocol header.
fn split_header<F: Frame>(frames: &[F]) -> Result<(bool, &[u8], &[F])> {
    let (first, rest) = frames.split_first().ok_or(DecodeError::Empty)?;
    let (delimited, header, rest) = if first.bytes().is_empty() {
        let (header, rest) = rest.split_first().ok_or(DecodeError::MissingHeader)?;
        (true, header, rest)
    } else {
        (false, first, rest)
    };
    Ok((delimited, header.bytes(), rest))
}

fn split_command<F: Frame>(frames: &[F]) -> Result<(&[u8], &[F])> {
    let (command, rest) = frames.split_first().ok_or(DecodeError::MissingCommand)?;
    Ok((command.bytes(), rest))
}

/// MDP/0.2 dialects are told apart by the shape of the command frame: one byte
/// for RFC 18 and majortomo (which adds the empty frame), a word for plantd.
fn dialect_02(delimited: bool, command: &[u8]) -> Dialect {
    match (command.len() == 1, delimited) {
        (true, false) => Dialect::Rfc18,
        (true, true) => Dialect::Majortomo,
        (false, _) => Dialect::Plantd,
    }
}

fn split_service<F: Frame>(frames: &[F]) -> Result<(&[u8], &[F])> {
    let (service, body) = frames.split_first().ok_or(DecodeError::MissingService)?;
    let service = service.bytes();
    if service.is_empty() {
        return Err(DecodeError::EmptyService);
    }
    if service.len() > MAX_SERVICE_LEN {
        return Err(DecodeError::ServiceTooLong);
    }
    Ok((service, body))
}

fn request<F: Frame>(frames: &[F]) -> Result<ToBroker<'_, F>> {
    let (service, body) = split_service(frames)?;
    Ok(ToBroker::Request { service, body })
}

/// `client "" body...`, or `client body...` in plantd's worker replies.
fn split_address<F: Frame>(frames: &[F], delimiter: bool) -> Result<(&[u8], &[F])> {
    let (client, rest) = frames.split_first().ok_or(DecodeError::MissingAddress)?;
    let client = client.bytes();
    if client.is_empty() {
        return Err(DecodeError::EmptyAddress);
    }
    if !delimiter {
        return Ok((client, rest));
    }
    match rest.split_first() {
        Some((empty, body)) if empty.bytes().is_empty() => Ok((client, body)),
        _ => Err(DecodeError::MissingDelimiter),
    }
}

fn no_more<F>(frames: &[F]) -> Result<()> {
    if frames.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingFrames)
    }
}

fn worker_to_broker<F: Frame>(dialect: Dialect, frames: &[F]) -> Result<ToBroker<'_, F>> {
    let (command, rest) = split_command(frames)?;
    let (ready, partial, fin, heartbeat, disconnect, request) = match dialect {
        Dialect::Rfc7 => (W1_READY, None, W1_REPLY, W1_HEARTBEAT, W1_DISCONNECT, W1_REQUEST),
        Dialect::Rfc18 | Dialect::Majortomo => {
            (W2_READY, Some(W2_PARTIAL), W2_FINAL, W2_HEARTBEAT, W2_DISCONNECT, W2_REQUEST)
        }
        Dialect::Plantd => (READY, Some(PARTIAL), FINAL, HEARTBEAT, DISCONNECT, REQUEST),
    };
    let delimiter = dialect != Dialect::Plantd;
    if command == ready {
        let (service, rest) = split_service(rest)?;
        // The credit extension: at most one more frame, `credit=N`.
        let credit = match rest {
            [] => 1,
            [frame] if frame.bytes().starts_with(super::CREDIT_PREFIX) => {
                super::parse_credit(frame.bytes()).ok_or(DecodeError::BadCredit)?
            }
            _ => return Err(DecodeError::TrailingFrames),
        };
        Ok(ToBroker::Ready { service, credit })
    } else if command == fin || Some(command) == partial {
        let kind = if command == fin { ReplyKind::Final } else { ReplyKind::Partial };
        let (client, body) = split_address(rest, delimiter)?;
        Ok(ToBroker::Reply { kind, client, body })
    } else if command == heartbeat {
        no_more(rest)?;
        Ok(ToBroker::Heartbeat)
    } else if command == disconnect {
        no_more(rest)?;
        Ok(ToBroker::Disconnect)
    } else if command == request {
        Err(DecodeError::WrongDirection)
    } else {
        Err(DecodeError::UnknownCommand)
    }
}

fn broker_to_worker<F: Frame>(dialect: Dialect, frames: &[F]) -> Result<FromBroker<'_, F>> {
    let (command, rest) = split_command(frames)?;
    let (request, heartbeat, disconnect, wrong): (_, _, _, &[&[u8]]) = match dialect {
        Dialect::Rfc7 => (W1_REQUEST, W1_HEARTBEAT, W1_DISCONNECT, &[W1_READY, W1_REPLY]),
        Dialect::Rfc18 | Dialect::Majortomo => {
            (W2_REQUEST, W2_HEARTBEAT, W2_DISCONNECT, &[W2_READY, W2_PARTIAL, W2_FINAL])
        }
        Dialect::Plantd => (REQUEST, HEARTBEAT, DISCONNECT, &[READY, PARTIAL, FINAL]),
    };
    if command == request {
        let (client, body) = split_address(rest, true)?;
        Ok(FromBroker::Request { client, body })
    } else if command == heartbeat {
        no_more(rest)?;
        Ok(FromBroker::Heartbeat)
    } else if command == disconnect {
        no_more(rest)?;
        Ok(FromBroker::Disconnect)
    } else if wrong.contains(&command) {
        Err(DecodeError::WrongDirection)
    } else {
        Err(DecodeError::UnknownCommand)
    }
}

/// A client command that exists in the dialect but flows the other way is a
/// `WrongDirection`; anything else is unknown.
fn unknown_or_wrong_direction(dialect: Dialect, command: &[u8], to_broker: bool) -> DecodeError {
    let (request, partial, fin) = match dialect {
        Dialect::Rfc18 => (C2_REQUEST, C2_PARTIAL, C2_FINAL),
        Dialect::Majortomo => (MT_REQUEST, MT_PARTIAL, MT_FINAL),
        _ => (REQUEST, PARTIAL, FINAL),
    };
    let other_way = if to_broker { command == partial || command == fin } else { command == request };
    if other_way {
        DecodeError::WrongDirection
    } else {
        DecodeError::UnknownCommand
    }
}
