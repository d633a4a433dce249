//! Versioned binary encoding: one version byte, then the value in postcard.
//! The ingest messages use it on the wire, the agent's outbox on disk.

use serde::{Deserialize, Serialize};

/// First byte of every encoded value; bumped on incompatible changes.
pub const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}, expected {VERSION}")]
    Version(u8),
    #[error("undecodable: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serialising our own plain data types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes plain data"));
    out
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        None => Err(WireError::Empty),
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| WireError::Decode(e.to_string())),
        Some((&other, _)) => Err(WireError::Version(other)),
    }
}
