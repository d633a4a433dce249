//! The boot epoch: a random number drawn at every start, so that
//! (agent, epoch, seq) names one sample forever. The hub drops samples at or
//! below its (agent, epoch) watermark, so an epoch that came round again would
//! have new samples discarded as repeats.
//!
//! Nothing stored and no clock is involved: a wiped data directory, a store
//! moved aside, or a Raspberry Pi without an RTC booting at 1970 cannot make
//! an epoch repeat. It is 53 random bits (exact in JSON numbers read by
//! JavaScript), so by the birthday bound n²/2^54 one agent started a million
//! times has a chance of about 1 in 18 000 of ever drawing the same epoch
//! twice; the hub keeps only its most recent epochs per agent, which shrinks
//! that further. Epochs are never compared for order: the hub keys on them
//! and the outbox orders records by its own index.

use std::io::Read;

/// Epochs are in [1, 2^53).
pub const EPOCH_BITS: u32 = 53;

/// A fresh boot epoch: 8 bytes from /dev/urandom masked to 53 bits, never 0.
pub fn boot_epoch() -> std::io::Result<u64> {
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    loop {
        let mut bytes = [0u8; 8];
        urandom.read_exact(&mut bytes)?;
        let epoch = u64::from_le_bytes(bytes) & ((1 << EPOCH_BITS) - 1);
        if epoch != 0 {
            return Ok(epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn epochs_are_in_range_and_do_not_repeat() {
        let epochs: std::collections::HashSet<u64> = (0..10_000).map(|_| boot_epoch().unwrap()).collect();
        assert_eq!(epochs.len(), 10_000, "no repeats in ten thousand starts");
        assert!(epochs.iter().all(|&e| (1..1 << EPOCH_BITS).contains(&e)));
        // Random, not counting: the high bits are used too.
        assert!(epochs.iter().any(|&e| e >= 1 << (EPOCH_BITS - 1)));
    }

    #[test]
    fn a_wiped_store_and_a_clock_set_back_still_give_a_fresh_epoch() {
        // The epoch takes no store and reads no clock (see the signature of
        // `boot_epoch`): a store wiped between two starts, with the clock at
        // 1970 or anywhere else, gets an epoch unrelated to the last one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let first = {
            let _store = Store::open(&path, 1 << 20).unwrap();
            boot_epoch().unwrap()
        };
        std::fs::remove_dir_all(&path).unwrap();
        let _store = Store::open(&path, 1 << 20).unwrap();
        let second = boot_epoch().unwrap();
        assert_ne!(first, second);
        assert!(second >= 1);
    }
}
