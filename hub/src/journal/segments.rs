//! The journal's entries on disk: one sled tree per segment of `SEGMENT`
//! consecutive keys, so that entries every consumer is done with go a
//! segment at a time (`drop_tree` frees a tree's pages; removing keys one
//! by one costs more than writing them did, and dominated a consumer's drain).

use std::collections::BTreeMap;
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
        Ok(Segments { db: db.clone(), trees: Mutex::new(trees) })
    }

    fn trees(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, sled::Tree>> {
        self.trees.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `values` under consecutive keys from `first` (each segment's
    /// share in one batch).
    pub fn insert(&self, first: u64, values: Vec<Vec<u8>>) -> sled::Result<()> {
        let mut batches: BTreeMap<u64, sled::Batch> = BTreeMap::new();
        for (i, value) in values.into_iter().enumerate() {
            let key = first + i as u64;
            batches.entry(start_of(key)).or_default().insert(&key.to_be_bytes(), value);
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
            tree.apply_batch(batch)?;
        }
        Ok(())
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
