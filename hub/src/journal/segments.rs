//! The journal's entries on disk: one sled tree per segment of `SEGMENT`
//! consecutive keys, so that entries every consumer is done with go a
//! segment at a time (`drop_tree` frees a tree's pages; removing keys one
//! by one costs more than writing them did, and dominated a consumer's drain).
//!
//! The newest entries are also kept in memory, up to a bound in bytes: a
//! reader that keeps up (the bridge, a pipeline, a durable consumer polling)
//! takes what ingest just appended from there, handed over without a trip
//! through sled's trees, and only a reader that fell behind reads the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Keys per segment.
pub const SEGMENT: u64 = 4096;

const PREFIX: &str = "journal.";

fn start_of(key: u64) -> u64 {
    key / SEGMENT * SEGMENT
}

fn name_of(start: u64) -> String {
    format!("{PREFIX}{start:016x}")
}

pub struct Segments {
    db: sled::Db,
    /// Each segment's tree, by its first key.
    trees: Mutex<BTreeMap<u64, sled::Tree>>,
    recent: Mutex<Recent>,
    /// Reads served from memory, and from the store.
    pub reads_recent: AtomicU64,
    pub reads_stored: AtomicU64,
}

/// The newest entries, consecutive keys, as stored (the same bytes and buffers).
#[derive(Default)]
struct Recent {
    entries: VecDeque<(u64, sled::IVec)>,
    bytes: usize,
    max_bytes: usize,
}

impl Recent {
    fn push(&mut self, key: u64, value: sled::IVec) {
        if self.entries.back().is_some_and(|(last, _)| last + 1 != key) {
            self.clear();
        }
        self.bytes += value.len();
        self.entries.push_back((key, value));
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.bytes > self.max_bytes && self.pop_front() {}
    }

    /// Forgets the entries below `key` (their segment was dropped).
    fn drop_below(&mut self, key: u64) {
        while self.entries.front().is_some_and(|(k, _)| *k < key) {
            self.pop_front();
        }
    }

    /// False when there was nothing to forget.
    fn pop_front(&mut self) -> bool {
        let Some((_, value)) = self.entries.pop_front() else { return false };
        self.bytes -= value.len();
        true
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl Segments {
    /// The segments `db` holds.
    pub fn open(db: &sled::Db) -> sled::Result<Segments> {
        let mut trees = BTreeMap::new();
        for name in db.tree_names() {
            let Some(hex) = name.strip_prefix(PREFIX.as_bytes()) else { continue };
            let Some(start) = std::str::from_utf8(hex).ok().and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            trees.insert(start, db.open_tree(&name)?);
        }
        Ok(Segments {
            db: db.clone(),
            trees: Mutex::new(trees),
            recent: Mutex::default(),
            reads_recent: AtomicU64::new(0),
            reads_stored: AtomicU64::new(0),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps up to `bytes` of the newest entries in memory (0: none).
    pub fn keep_in_memory(&self, bytes: usize) {
        let mut recent = self.recent();
        recent.max_bytes = bytes;
        recent.shrink();
    }

    /// (entries, bytes) held in memory now.
    pub fn in_memory(&self) -> (usize, usize) {
        let recent = self.recent();
        (recent.entries.len(), recent.bytes)
    }

    fn trees(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, sled::Tree>> {
        self.trees.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `values` under consecutive keys from `first` (each segment's
    /// share in one batch).
    pub fn insert(&self, first: u64, values: Vec<Vec<u8>>) -> sled::Result<()> {
        let mut batches: BTreeMap<u64, sled::Batch> = BTreeMap::new();
        // sled makes each value an IVec anyway: made here, memory shares its buffer.
        let values: Vec<sled::IVec> = values.into_iter().map(sled::IVec::from).collect();
        for (i, value) in values.iter().enumerate() {
            let key = first + i as u64;
            batches.entry(start_of(key)).or_default().insert(&key.to_be_bytes(), value.clone());
        }
        for (start, batch) in batches {
            let existing = self.trees().get(&start).cloned();
            let tree = match existing {
                Some(tree) => tree,
                None => {
                    let tree = self.db.open_tree(name_of(start))?;
                    self.trees().insert(start, tree.clone());
                    tree
                }
            };
            if let Err(e) = tree.apply_batch(batch) {
                // Part of it may be stored: memory holds nothing it cannot vouch for.
                self.recent().clear();
                return Err(e);
            }
        }
        let mut recent = self.recent();
        if recent.max_bytes > 0 {
            for (i, value) in values.into_iter().enumerate() {
                recent.push(first + i as u64, value);
            }
        }
        Ok(())
    }

    /// Up to `max` entries from key `from` on, in key order: from memory
    /// when it holds `from`, else from the store.
    pub fn read_from(&self, from: u64, max: usize) -> Vec<sled::Result<(u64, sled::IVec)>> {
        {
            let recent = self.recent();
            if let Some(&(oldest, _)) = recent.entries.front() {
                if from >= oldest && from < oldest + recent.entries.len() as u64 {
                    self.reads_recent.fetch_add(1, Relaxed);
                    let skip = (from - oldest) as usize;
                    return recent.entries.iter().skip(skip).take(max).map(|e| Ok(e.clone())).collect();
                }
            }
        }
        self.reads_stored.fetch_add(1, Relaxed);
        self.from(from).take(max).collect()
    }

    /// Every entry from key `from` on, in key order.
    pub fn from(&self, from: u64) -> impl Iterator<Item = sled::Result<(u64, sled::IVec)>> {
        let trees: Vec<sled::Tree> = self.trees().range(start_of(from)..).map(|(_, t)| t.clone()).collect();
        trees
            .into_iter()
            .flat_map(move |tree| tree.range(from.to_be_bytes()..))
            .map(|item| item.map(|(k, v)| (key_of(&k), v)))
    }

    pub fn first(&self) -> sled::Result<Option<(u64, sled::IVec)>> {
        self.from(0).next().transpose()
    }

    pub fn last(&self) -> sled::Result<Option<(u64, sled::IVec)>> {
        let trees: Vec<sled::Tree> = self.trees().values().rev().cloned().collect();
        for tree in trees {
            if let Some((k, v)) = tree.last()? {
                return Ok(Some((key_of(&k), v)));
            }
        }
        Ok(None)
    }

    /// Drops the segments whose every key is at most `key`.
    pub fn drop_through(&self, key: u64) -> sled::Result<()> {
        let done: Vec<u64> =
            self.trees().keys().copied().filter(|&start| start.saturating_add(SEGMENT - 1) <= key).collect();
        for start in done {
            self.trees().remove(&start);
            self.db.drop_tree(name_of(start))?;
            self.recent().drop_below(start + SEGMENT);
        }
        Ok(())
    }

    /// Segments held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.trees().len()
    }
}

pub fn key_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_span_segments_and_whole_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let segments = Segments::open(&db).unwrap();
        let first = SEGMENT - 2;
        segments.insert(first, (0..5).map(|i| vec![i]).collect()).unwrap();
        assert_eq!(segments.len(), 2, "two segments");
        let keys: Vec<u64> = segments.from(0).map(|e| e.unwrap().0).collect();
        assert_eq!(keys, (first..first + 5).collect::<Vec<_>>(), "in order across segments");
        assert_eq!(segments.from(SEGMENT + 1).count(), 2);
        assert_eq!(segments.last().unwrap().unwrap().0, first + 4);
        segments.drop_through(SEGMENT).unwrap();
        assert_eq!(segments.len(), 1, "the first segment ended at SEGMENT - 1");
        assert_eq!(segments.first().unwrap().unwrap().0, SEGMENT, "a partly done segment stays whole");
        drop(segments);
        let again = Segments::open(&db).unwrap();
        assert_eq!(again.len(), 1, "found again by name");
    }
}
