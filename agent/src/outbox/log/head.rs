//! The `head` file's contents: the head position (every record below it is
//! retired) and the loss counters, versioned and checksummed, so a damaged
//! file is noticed (the log then starts from its oldest record).

use serde::Serialize;

const HEAD_MAGIC: &[u8; 8] = b"PLNTHEAD";
/// Version 2 added the records lost to failed writes; version 1 is still read.
const HEAD_VERSION: u32 = 2;

/// Counters kept with the head position, for the outbox above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub dropped: u64,
    pub dropped_for_space: u64,
}

/// What is persisted in `head`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct HeadState {
    pub head: u64,
    pub counters: Counters,
    pub quarantined: u64,
    pub quarantined_bytes: u64,
    /// Records lost to failed writes (or refused appends), ever.
    pub lost: u64,
}

impl HeadState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = HEAD_MAGIC.to_vec();
        out.extend(HEAD_VERSION.to_le_bytes());
        for v in [
            self.head,
            self.counters.dropped,
            self.counters.dropped_for_space,
            self.quarantined,
            self.quarantined_bytes,
            self.lost,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(crc32fast::hash(&out).to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<HeadState> {
        if bytes.len() < 12 || &bytes[..8] != HEAD_MAGIC {
            return None;
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let values = match version {
            1 => 5,
            2 => 6,
            _ => return None,
        };
        if bytes.len() != 8 + 4 + values * 8 + 4 {
            return None;
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != sum {
            return None;
        }
        let v = |i: usize| u64::from_le_bytes(body[12 + 8 * i..20 + 8 * i].try_into().expect("8 bytes"));
        Some(HeadState {
            head: v(0),
            counters: Counters { dropped: v(1), dropped_for_space: v(2) },
            quarantined: v(3),
            quarantined_bytes: v(4),
            lost: if values > 5 { v(5) } else { 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_of_the_first_version_is_read() {
        let state = HeadState {
            head: 7,
            counters: Counters { dropped: 2, dropped_for_space: 3 },
            quarantined: 1,
            quarantined_bytes: 40,
            lost: 5,
        };
        assert_eq!(HeadState::decode(&state.encode()), Some(state));
        // Version 1: the same without `lost`.
        let mut v1 = HEAD_MAGIC.to_vec();
        v1.extend(1u32.to_le_bytes());
        for v in [7u64, 2, 3, 1, 40] {
            v1.extend(v.to_le_bytes());
        }
        v1.extend(crc32fast::hash(&v1).to_le_bytes());
        assert_eq!(HeadState::decode(&v1), Some(HeadState { lost: 0, ..state }));
        let mut damaged = state.encode();
        damaged[20] ^= 1;
        assert_eq!(HeadState::decode(&damaged), None);
        assert_eq!(HeadState::decode(&v1[..v1.len() - 1]), None);
    }
}
