//! One record of the outbox log as it lies on disk:
//!
//! ```text
//! marker  4 bytes   d5 8e 3c a1 (also the format version: a new format gets a new marker)
//! length  u32 LE    of the payload, at most MAX_PAYLOAD
//! index   u64 LE    the record's place in the log, rising by one per append
//! crc     u32 LE    CRC-32 (IEEE) of index bytes then payload
//! payload           the sample (or alarm event) in `proto`'s versioned encoding
//! ```
//!
//! The marker lets a reader find the next record after damaged bytes; the
//! CRC, over the index too, makes a damaged record (or a stray marker inside
//! another one's payload) fail the check instead of decoding into a wrong
//! sample. A record whose length runs past the end of its file is a torn
//! append.

use proto::alarm::AlarmEvent;
use proto::codec::{self, WireError};
use proto::sample::Sample;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What an outbox holds: anything the hub keys by (epoch, seq).
pub trait Record: Serialize + DeserializeOwned {
    /// (epoch, seq): the key the hub deduplicates on.
    fn key(&self) -> (u64, u64);
    /// When it was made (wall clock, ns since the Unix epoch).
    fn wall_ns(&self) -> i64;
}

impl Record for Sample {
    fn key(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
    fn wall_ns(&self) -> i64 {
        self.wall_ns
    }
}

impl Record for AlarmEvent {
    fn key(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
    fn wall_ns(&self) -> i64 {
        self.wall_ns
    }
}

pub const MARKER: [u8; 4] = [0xd5, 0x8e, 0x3c, 0xa1];
pub const HEADER: usize = 20;
/// Larger payloads are refused at append and treated as damage when read.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A sample (or an alarm event) as a record's payload.
pub fn payload<R: Record>(record: &R) -> Vec<u8> {
    codec::encode(record)
}

pub fn decode<R: Record>(payload: &[u8]) -> Result<R, WireError> {
    codec::decode(payload)
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the framed record to `out`.
pub fn frame(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&crc(index, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the bytes at some offset are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole, intact record of `len` bytes (header included).
    Record { index: u64, len: usize },
    /// Could be a record, but `buf` ends first (it needs `need` bytes).
    Short { need: usize },
    /// Not a record.
    Bad,
}

/// Parses the record `buf` starts with. Never panics, whatever `buf` holds.
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(MARKER.len());
    if buf[..n] != MARKER[..n] {
        return Parsed::Bad;
    }
    if buf.len() < HEADER {
        return Parsed::Short { need: HEADER };
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Bad;
    }
    if buf.len() < HEADER + len {
        return Parsed::Short { need: HEADER + len };
    }
    let index = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let sum = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes"));
    if crc(index, &buf[HEADER..HEADER + len]) != sum {
        return Parsed::Bad;
    }
    Parsed::Record { index, len: HEADER + len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::sample::testing::{sample, value};
    use proto::sample::{Sample, Value};

    #[test]
    fn records_detect_damage() {
        let body = payload(&sample(1, Value::Number(21.5)));
        let mut bytes = Vec::new();
        frame(7, &body, &mut bytes);
        assert_eq!(parse(&bytes), Parsed::Record { index: 7, len: bytes.len() });
        assert_eq!(decode::<Sample>(&bytes[HEADER..]).unwrap(), sample(1, Value::Number(21.5)));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(!matches!(parse(&damaged), Parsed::Record { .. }), "flipping byte {i} went unnoticed");
        }
        assert_eq!(parse(&bytes[..3]), Parsed::Short { need: HEADER });
        assert_eq!(parse(&bytes[..HEADER + 1]), Parsed::Short { need: bytes.len() });
    }

    proptest! {
        #[test]
        fn records_round_trip(seq in any::<u64>(), index in any::<u64>(), v in value()) {
            let s = sample(seq, v);
            let mut bytes = Vec::new();
            frame(index, &payload(&s), &mut bytes);
            prop_assert_eq!(parse(&bytes), Parsed::Record { index, len: bytes.len() });
            prop_assert_eq!(decode::<Sample>(&bytes[HEADER..]).unwrap(), s);
        }

        #[test]
        fn parsing_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), marked in any::<bool>()) {
            let mut buf = if marked { MARKER.to_vec() } else { Vec::new() };
            buf.extend(bytes);
            let _ = parse(&buf);
            let _ = decode::<Sample>(&buf);
        }
    }
}
