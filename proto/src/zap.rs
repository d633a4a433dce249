//! ZAP, the ZeroMQ Authentication Protocol (RFC 27): libzmq asks a handler
//! on `inproc://zeromq.zap.01` whether each new connection may proceed.
//!
//! Request: `"1.0" request-id domain address routing-id mechanism credentials...`
//! (for CURVE, one credential: the client's 32-byte public key). Reply:
//! `"1.0" request-id status-code status-text user-id metadata`; a 200 admits
//! the peer and its user id then comes with every message it sends (the
//! `User-Id` message property).

use crate::Frame;

pub const ENDPOINT: &str = "inproc://zeromq.zap.01";
const VERSION: &[u8] = b"1.0";

/// One authentication request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub request_id: &'a [u8],
    /// The server socket's ZAP domain (which socket the peer is connecting to).
    pub domain: &'a [u8],
    /// The peer's IP address, as text.
    pub address: &'a [u8],
    pub mechanism: &'a [u8],
    /// For CURVE, the client's public key.
    pub credentials: &'a [&'a [u8]],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ZapError {
    #[error("a ZAP request has at least 6 frames")]
    TooShort,
    #[error("unsupported ZAP version")]
    Version,
}

/// What the handler answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: admitted, as this user id.
    Allow,
    /// 400: refused.
    Deny,
    /// 500: the handler itself failed (malformed request).
    Error,
}

impl Status {
    pub fn code(self) -> &'static [u8] {
        match self {
            Status::Allow => b"200",
            Status::Deny => b"400",
            Status::Error => b"500",
        }
    }
}

/// Parses a request. `scratch` holds the credential slices (CURVE has one).
pub fn parse<'a, F: Frame>(frames: &'a [F], scratch: &'a mut Vec<&'a [u8]>) -> Result<Request<'a>, ZapError> {
    if frames.len() < 6 {
        return Err(ZapError::TooShort);
    }
    if frames[0].bytes() != VERSION {
        return Err(ZapError::Version);
    }
    scratch.clear();
    scratch.extend(frames[6..].iter().map(|f| f.bytes()));
    Ok(Request {
        request_id: frames[1].bytes(),
        domain: frames[2].bytes(),
        address: frames[3].bytes(),
        mechanism: frames[5].bytes(),
        credentials: scratch,
    })
}

/// The six reply frames: version, request id, status code, status text, user id, metadata (none).
pub fn reply<'a>(request_id: &'a [u8], status: Status, text: &'a str, user_id: &'a str) -> [&'a [u8]; 6] {
    [VERSION, request_id, status.code(), text.as_bytes(), user_id.as_bytes(), b""]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn curve_requests_parse_and_replies_encode() {
        let key = [5u8; 32];
        let frames: Vec<&[u8]> = vec![b"1.0", b"7", b"plantd", b"10.0.0.9", b"", b"CURVE", &key];
        let mut scratch = Vec::new();
        let request = parse(&frames, &mut scratch).unwrap();
        assert_eq!(request.mechanism, b"CURVE");
        assert_eq!(request.domain, b"plantd");
        assert_eq!(request.credentials, [&key[..]]);
        let reply = reply(request.request_id, Status::Allow, "OK", "pump-1");
        assert_eq!(reply, [&b"1.0"[..], b"7", b"200", b"OK", b"pump-1", b""]);
    }

    #[test]
    fn short_or_foreign_requests_are_errors() {
        let mut scratch = Vec::new();
        assert_eq!(parse(&[b"1.0".to_vec()], &mut scratch), Err(ZapError::TooShort));
        let frames: Vec<Vec<u8>> =
            ["2.0", "1", "d", "a", "", "NULL"].iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut scratch = Vec::new();
        assert_eq!(parse(&frames, &mut scratch), Err(ZapError::Version));
    }

    proptest! {
        #[test]
        fn parsing_anything_never_panics(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let mut scratch = Vec::new();
            let _ = parse(&frames, &mut scratch);
        }
    }
}
