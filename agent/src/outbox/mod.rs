//! The outbox: every durable sample is appended here first, sent to the hub
//! in order, and removed only when the hub has acknowledged it.
//!
//! Bounded by records and by bytes (encoded records, keys excluded); when
//! full the oldest telemetry is dropped and counted, so sampling never waits
//! on the network. Records carry a CRC-32; one that fails it is moved to the
//! quarantine tree and counted, never decoded into a wrong sample and never
//! a reason to stop. Writes become durable at the next flush; `durable`
//! tells which sample that covers.

use std::sync::Mutex;

use proto::sample::Sample;
use serde::Serialize;

use crate::store::{Result, Store, Table};

pub mod record;

/// Outbox key: epoch then sequence, big-endian, so the store keeps send order.
pub type Key = [u8; 16];

pub fn key(epoch: u64, seq: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn unkey(k: &[u8]) -> Option<(u64, u64)> {
    let k: &Key = k.try_into().ok()?;
    Some((u64::from_be_bytes(k[..8].try_into().ok()?), u64::from_be_bytes(k[8..].try_into().ok()?)))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    pub records: u64,
    pub bytes: u64,
    pub max_records: u64,
    pub max_bytes: u64,
    /// Samples dropped because the outbox was full (since the store was created).
    pub dropped: u64,
    /// Damaged records set aside.
    pub quarantined: u64,
    /// The last (epoch, seq) appended, and the last known to be on disk.
    pub last_appended: Option<(u64, u64)>,
    pub durable: Option<(u64, u64)>,
}

/// What the uplink has sent and awaits an answer for.
#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    /// The last key of the batch on the wire.
    through: Option<Key>,
    /// Records of that batch dropped from the store while it was on the wire:
    /// counted as dropped unless the hub acknowledges the batch.
    dropped: u64,
}

pub struct Outbox {
    tree: Table,
    quarantine: Table,
    meta: Table,
    state: Mutex<(OutboxStats, InFlight)>,
}

impl Outbox {
    /// Opens the outbox in `store`, counting what is already there.
    pub fn open(store: &Store, max_records: u64, max_bytes: u64) -> Result<Outbox> {
        let (mut records, mut bytes, mut last) = (0, 0, None);
        for entry in store.outbox.iter() {
            let (k, v) = entry?;
            records += 1;
            bytes += v.len() as u64;
            last = unkey(&k);
        }
        let stats = OutboxStats {
            records,
            bytes,
            max_records,
            max_bytes,
            dropped: store.get_u64("outbox.dropped")?.unwrap_or(0),
            quarantined: store.quarantine.len() as u64,
            last_appended: last,
            // What survived the last run is on disk by definition.
            durable: last,
        };
        Ok(Outbox {
            tree: store.outbox.clone(),
            quarantine: store.quarantine.clone(),
            meta: store.meta.clone(),
            state: Mutex::new((stats, InFlight::default())),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (OutboxStats, InFlight)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> OutboxStats {
        self.state().0
    }

    /// Appends a sample, dropping the oldest ones first if it would not fit.
    pub fn append(&self, sample: &Sample) -> Result<()> {
        let record = record::encode(sample);
        let mut guard = self.state();
        let (s, flight) = &mut *guard;
        while s.records > 0 && (s.records + 1 > s.max_records || s.bytes + record.len() as u64 > s.max_bytes)
        {
            match self.tree.pop_first()? {
                Some((k, old)) => {
                    s.records = s.records.saturating_sub(1);
                    s.bytes = s.bytes.saturating_sub(old.len() as u64);
                    s.dropped += 1;
                    if flight.through.is_some_and(|t| k.as_ref() <= t.as_slice()) {
                        flight.dropped += 1;
                    }
                }
                None => break,
            }
        }
        // A key already present (an epoch reused after a lost store) is replaced, not double-counted.
        if let Some(old) = self.tree.insert(key(sample.epoch, sample.seq), record.as_slice())? {
            s.records = s.records.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(old.len() as u64);
        }
        s.records += 1;
        s.bytes += record.len() as u64;
        s.last_appended = Some((sample.epoch, sample.seq));
        Ok(())
    }

    /// The uplink sent a batch ending at `through` and awaits the answer.
    pub fn sending(&self, through: Key) {
        self.state().1 = InFlight { through: Some(through), dropped: 0 };
    }

    /// No answer came for the batch in flight: whatever was dropped from it is lost.
    pub fn not_sent(&self) {
        self.state().1 = InFlight::default();
    }

    /// Recounts records and bytes from the store (after an inconsistency).
    pub fn resync(&self) -> Result<()> {
        let (mut records, mut bytes) = (0, 0);
        for entry in self.tree.iter() {
            records += 1;
            bytes += entry?.1.len() as u64;
        }
        let mut state = self.state();
        state.0.records = records;
        state.0.bytes = bytes;
        Ok(())
    }

    /// The oldest samples, up to `max_records` and about `max_bytes`. Damaged
    /// records met on the way are quarantined.
    pub fn peek(&self, max_records: usize, max_bytes: usize) -> Result<Vec<(Key, Sample)>> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in self.tree.iter() {
            let (k, v) = entry?;
            if batch.len() >= max_records || (bytes > 0 && bytes + v.len() > max_bytes) {
                break;
            }
            match (k.as_ref().try_into(), record::decode(&v)) {
                (Ok(k), Ok(sample)) => {
                    bytes += v.len();
                    batch.push((k, sample));
                }
                (_, Err(e)) => self.set_aside(&k, &v, &e.to_string())?,
                (Err(_), _) => self.set_aside(&k, &v, "malformed key")?,
            }
        }
        Ok(batch)
    }

    fn set_aside(&self, k: &[u8], v: &[u8], why: &str) -> Result<()> {
        log::error!("outbox record {:?} is damaged ({why}): quarantined", unkey(k));
        self.quarantine.insert(k, v)?;
        let removed = self.tree.remove(k)?;
        let mut state = self.state();
        let s = &mut state.0;
        if let Some(old) = removed {
            s.records = s.records.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(old.len() as u64);
        }
        s.quarantined += 1;
        Ok(())
    }

    /// Removes every record up to and including `through`: the hub has them.
    /// Records of that batch the outbox dropped while it was on the wire were
    /// delivered after all, so they no longer count as dropped.
    pub fn retire(&self, through: &Key) -> Result<usize> {
        let mut removed = 0;
        let mut freed = 0;
        while let Some((k, v)) = self.tree.first()? {
            if k.as_ref() > through.as_slice() {
                break;
            }
            if self.tree.remove(&k)?.is_some() {
                removed += 1;
                freed += v.len() as u64;
            }
        }
        let mut guard = self.state();
        let (s, flight) = &mut *guard;
        s.records = s.records.saturating_sub(removed);
        s.bytes = s.bytes.saturating_sub(freed);
        if flight.through.is_some_and(|t| t.as_slice() <= through.as_slice()) {
            s.dropped = s.dropped.saturating_sub(flight.dropped);
            *flight = InFlight::default();
        }
        Ok(removed as usize)
    }

    /// Makes everything appended so far durable (and the drop counter with it).
    pub fn flush(&self, store: &Store) -> Result<()> {
        let (appended, dropped) = {
            let s = self.stats();
            (s.last_appended, s.dropped)
        };
        self.meta.insert("outbox.dropped", dropped.to_be_bytes())?;
        store.flush()?;
        self.state().0.durable = appended;
        Ok(())
    }

    /// The oldest sample's wall time, if any.
    pub fn oldest_wall_ns(&self) -> Option<i64> {
        let (_, v) = self.tree.first().ok()??;
        record::decode(&v).ok().map(|s| s.wall_ns)
    }

    /// Counts intact and damaged records (`agent store verify`).
    pub fn verify(&self) -> Result<(u64, u64)> {
        let (mut ok, mut damaged) = (0, 0);
        for entry in self.tree.iter() {
            let (_, v) = entry?;
            if record::decode(&v).is_ok() {
                ok += 1;
            } else {
                damaged += 1;
            }
        }
        Ok((ok, damaged))
    }

    /// Quarantines every damaged record (`agent store repair`); returns how many.
    pub fn repair(&self) -> Result<u64> {
        let mut moved = 0;
        for entry in self.tree.iter() {
            let (k, v) = entry?;
            if let Err(e) = record::decode(&v) {
                self.set_aside(&k, &v, &e.to_string())?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Every intact record, oldest first, up to `limit` (`agent store dump`).
    pub fn dump(&self, limit: usize) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for entry in self.tree.iter() {
            if out.len() >= limit {
                break;
            }
            if let Ok(sample) = record::decode(&entry?.1) {
                out.push(sample);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::sample::{Quality, Value};

    fn sample(epoch: u64, seq: u64) -> Sample {
        Sample {
            channel: "c".into(),
            epoch,
            seq,
            wall_ns: seq as i64,
            mono_ns: seq,
            clock_synced: true,
            value: Value::Number(seq as f64),
            unit: "u".into(),
            quality: Quality::Good,
        }
    }

    fn rig(max_records: u64, max_bytes: u64) -> (Store, Outbox, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        let outbox = Outbox::open(&store, max_records, max_bytes).unwrap();
        (store, outbox, dir)
    }

    #[test]
    fn keeps_order_and_retires_through_a_key() {
        let (_store, outbox, _dir) = rig(100, 1 << 20);
        for seq in 1..=5 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.append(&sample(2, 1)).unwrap();
        let batch = outbox.peek(4, 1 << 20).unwrap();
        assert_eq!(
            batch.iter().map(|(_, s)| (s.epoch, s.seq)).collect::<Vec<_>>(),
            [(1, 1), (1, 2), (1, 3), (1, 4)]
        );
        assert_eq!(outbox.retire(&batch[3].0).unwrap(), 4);
        let rest: Vec<_> =
            outbox.peek(10, 1 << 20).unwrap().into_iter().map(|(_, s)| (s.epoch, s.seq)).collect();
        assert_eq!(rest, [(1, 5), (2, 1)]);
        assert_eq!(outbox.stats().records, 2);
    }

    #[test]
    fn full_outbox_drops_the_oldest_and_counts_exactly() {
        let (_store, outbox, _dir) = rig(10, 1 << 20);
        for seq in 1..=25 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        let s = outbox.stats();
        assert_eq!((s.records, s.dropped), (10, 15));
        assert_eq!(outbox.peek(100, 1 << 20).unwrap()[0].1.seq, 16);
        // The byte bound holds too.
        let one = record::encode(&sample(1, 1)).len() as u64;
        let (_store, outbox, _dir) = rig(1000, one * 3 + 1);
        for seq in 1..=7 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        let s = outbox.stats();
        assert_eq!((s.records, s.dropped), (3, 4));
        assert!(s.bytes <= s.max_bytes);
    }

    #[test]
    fn drops_from_a_batch_the_hub_then_acknowledges_are_not_counted() {
        let (_store, outbox, _dir) = rig(5, 1 << 20);
        for seq in 1..=5 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        let batch = outbox.peek(5, 1 << 20).unwrap();
        outbox.sending(batch[4].0);
        for seq in 6..=7 {
            outbox.append(&sample(1, seq)).unwrap(); // drops 1 and 2, which are on the wire
        }
        assert_eq!(outbox.stats().dropped, 2);
        outbox.retire(&batch[4].0).unwrap(); // the hub had them
        assert_eq!(outbox.stats(), OutboxStats { records: 2, dropped: 0, ..outbox.stats() });
        // Without an answer they stay counted.
        let batch = outbox.peek(5, 1 << 20).unwrap();
        outbox.sending(batch[1].0);
        for seq in 8..=11 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.not_sent();
        assert_eq!(outbox.stats().dropped, 1);
    }

    #[test]
    fn a_reused_key_replaces_instead_of_double_counting() {
        let (_store, outbox, _dir) = rig(100, 1 << 20);
        outbox.append(&sample(1, 1)).unwrap();
        outbox.append(&sample(1, 1)).unwrap();
        let s = outbox.stats();
        assert_eq!((s.records, s.bytes), (1, record::encode(&sample(1, 1)).len() as u64));
    }

    #[test]
    fn damaged_records_are_quarantined_and_counted() {
        let (store, outbox, _dir) = rig(100, 1 << 20);
        for seq in 1..=3 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        let mut bad = record::encode(&sample(1, 2));
        bad[10] ^= 0xff;
        store.outbox.insert(key(1, 2), bad).unwrap();
        assert_eq!(outbox.verify().unwrap(), (2, 1));
        let seqs: Vec<u64> = outbox.peek(10, 1 << 20).unwrap().into_iter().map(|(_, s)| s.seq).collect();
        assert_eq!(seqs, [1, 3]);
        let s = outbox.stats();
        assert_eq!((s.records, s.quarantined), (2, 1));
        assert_eq!(store.quarantine.len(), 1);
    }

    #[test]
    fn counts_and_drops_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path, 1 << 20).unwrap();
            let outbox = Outbox::open(&store, 5, 1 << 20).unwrap();
            for seq in 1..=8 {
                outbox.append(&sample(1, seq)).unwrap();
            }
            outbox.flush(&store).unwrap();
            assert_eq!(outbox.stats().durable, Some((1, 8)));
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        let s = Outbox::open(&store, 5, 1 << 20).unwrap().stats();
        assert_eq!((s.records, s.dropped, s.last_appended), (5, 3, Some((1, 8))));
    }
}
