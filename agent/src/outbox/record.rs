//! The outbox's on-disk form of a sample: CRC-32 (little-endian) of the rest,
//! then the sample in `proto`'s versioned encoding. A damaged record is
//! detected and set aside, never decoded into a wrong sample.

use proto::codec::{self, WireError};
use proto::sample::Sample;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record too short")]
    Short,
    #[error("record checksum mismatch")]
    Checksum,
    #[error(transparent)]
    Wire(#[from] WireError),
}

pub fn encode(sample: &Sample) -> Vec<u8> {
    let body = codec::encode(sample);
    let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
    out.extend(body);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Sample, RecordError> {
    if bytes.len() < 5 {
        return Err(RecordError::Short);
    }
    let (crc, body) = bytes.split_at(4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(RecordError::Checksum);
    }
    Ok(codec::decode(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::sample::testing::{sample, value};
    use proto::sample::Value;

    #[test]
    fn records_detect_damage() {
        let bytes = encode(&sample(1, Value::Number(21.5)));
        assert_eq!(decode(&bytes).unwrap(), sample(1, Value::Number(21.5)));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flipping byte {i} went unnoticed");
        }
        assert_eq!(decode(&bytes[..3]), Err(RecordError::Short));
    }

    proptest! {
        #[test]
        fn records_round_trip(seq in any::<u64>(), v in value()) {
            let s = sample(seq, v);
            prop_assert_eq!(decode(&encode(&s)).unwrap(), s);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
