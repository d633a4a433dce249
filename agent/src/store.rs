//! All of the agent's sled use, behind one small module so the store can be
//! swapped: counters (`meta`) and the local key-value state. (The outbox is
//! a log of its own, [`crate::outbox`].) Nothing outside this file names
//! sled: the rest of the agent sees [`Table`]s of byte keys in order.
//!
//! Opened with `stores`: a store sled finds damaged (corruption after a
//! power cut, say) is set aside, what can still be read of it is copied into
//! a fresh one, and the agent keeps sampling instead of crash-looping, saying
//! so in its status. Any other failure to open (permissions, no file
//! descriptors, a full disk) stops the agent with the store left in place.
//!
//! sled fails every write after one I/O error (a full disk) until the store
//! is opened again, so [`Store::heal`] opens it again once the disk has room,
//! carrying over what the failed store held in memory: writes it had
//! acknowledged but could not flush are not lost, and the agent needs no
//! restart.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use stores::{is_damage, OpenError, Recovery, ASIDE_KEPT};

/// Free space the store wants before it is opened again after a failure (or
/// a tenth of a smaller file system): the outbox's smallest reserve.
pub const ROOM_TO_REOPEN: u64 = crate::outbox::RESERVE_MIN;

/// A storage failure (I/O, or damage the store itself detected).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(#[from] sled::Error);

impl Error {
    pub fn sled(&self) -> &sled::Error {
        &self.0
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Bytes read from the store, borrowed without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(sled::IVec);

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The store's trees, as one open of it has them.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    state: sled::Tree,
    state_dirty: sled::Tree,
}

const TREES: [Which; 3] = [Which::Meta, Which::State, Which::StateDirty];

impl Trees {
    fn of(db: sled::Db) -> sled::Result<Trees> {
        Ok(Trees {
            meta: db.open_tree("meta")?,
            state: db.open_tree("state")?,
            state_dirty: db.open_tree("state_dirty")?,
            db,
        })
    }

    fn tree(&self, which: Which) -> &sled::Tree {
        match which {
            Which::Meta => &self.meta,
            Which::State => &self.state,
            Which::StateDirty => &self.state_dirty,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Meta,
    State,
    StateDirty,
}

/// The open store, shared by the [`Store`] and its [`Table`]s: let go of
/// (`None`) while it is opened again, when every call fails.
struct Handle {
    open: RwLock<Option<Trees>>,
    /// A write failed for I/O: the store must be opened again to work.
    broken: AtomicBool,
}

impl Handle {
    fn with<T>(&self, which: Which, f: impl FnOnce(&sled::Tree) -> sled::Result<T>) -> Result<T> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let result = match open.as_ref() {
            Some(trees) => f(trees.tree(which)),
            None => Err(reopening()),
        };
        self.note(result)
    }

    fn db<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let result = match open.as_ref() {
            Some(trees) => f(&trees.db),
            None => Err(reopening()),
        };
        self.note(result)
    }

    /// An I/O error marks the store for opening again (sled will not write until then).
    fn note<T>(&self, result: sled::Result<T>) -> Result<T> {
        if let Err(sled::Error::Io(_)) = &result {
            self.broken.store(true, Relaxed);
        }
        result.map_err(Error)
    }
}

fn reopening() -> sled::Error {
    sled::Error::Io(std::io::Error::other(
        "the local store failed to write and is not open again yet (it is, within seconds of the disk having room)",
    ))
}

/// One table of the store: byte keys kept in order, byte values. Writes are
/// durable at the next [`Store::flush`].
#[derive(Clone)]
pub struct Table {
    handle: Arc<Handle>,
    which: Which,
}

impl Table {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.handle.with(self.which, |t| t.get(key)).map(|v| v.map(Bytes))
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.handle.with(self.which, |t| t.insert(key.as_ref(), value.as_ref())).map(|v| v.map(Bytes))
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.handle.with(self.which, |t| t.remove(key)).map(|v| v.map(Bytes))
    }

    /// Removes `key` only if its value is still `expected`; false if it changed.
    pub fn remove_if(&self, key: impl AsRef<[u8]>, expected: impl AsRef<[u8]>) -> Result<bool> {
        self.handle.with(self.which, |t| {
            Ok(t.compare_and_swap(key, Some(expected.as_ref()), None::<&[u8]>)?.is_ok())
        })
    }

    /// Every entry, in key order (the tables are small and bounded: see
    /// `[local_state]`; a copy lets the store be opened again meanwhile).
    pub fn entries(&self) -> Result<Vec<(Bytes, Bytes)>> {
        self.handle.with(self.which, |t| t.iter().map(|e| e.map(|(k, v)| (Bytes(k), Bytes(v)))).collect())
    }

    pub fn len(&self) -> usize {
        self.handle.with(self.which, |t| Ok(t.len())).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the failed store held, per tree, to carry into the store opened again.
type Snapshot = Vec<(Which, Vec<(sled::IVec, sled::IVec)>)>;

pub struct Store {
    dir: PathBuf,
    cache_bytes: u64,
    handle: Arc<Handle>,
    pub meta: Table,
    pub state: Table,
    pub state_dirty: Table,
    /// Damage found and recovered from at this start.
    pub recovery: Option<Recovery>,
    /// Where the damaged store was moved, if that happened at this start.
    pub recovered_from: Option<PathBuf>,
    reopens: AtomicU64,
    /// When to try opening it again next (backing off while that fails), and
    /// what the failed store held, until it is carried over.
    retry: Mutex<(Instant, Duration, Option<Snapshot>)>,
}

fn config(cache_bytes: u64) -> sled::Config {
    sled::Config::new().cache_capacity(cache_bytes).flush_every_ms(None)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. A store whose files are
    /// damaged is set aside (the [`ASIDE_KEPT`] most recent copies are kept)
    /// and what can be read of it copied into a fresh one; any other failure
    /// is an error and the store is left alone.
    pub fn open(dir: &Path, cache_bytes: u64) -> std::result::Result<Store, OpenError> {
        let opened = stores::open(dir, config(cache_bytes))?;
        let trees =
            Trees::of(opened.db).map_err(|source| OpenError::Unusable { path: dir.into(), source })?;
        let recovered_from = opened.recovery.as_ref().and_then(|r| r.aside.clone());
        Ok(Self::with(dir, cache_bytes, trees, opened.recovery, recovered_from))
    }

    /// Opens the store as it is, without recovery, for the tools (`agent
    /// store`, `agent check`) on a stopped agent. A panic inside sled is
    /// reported as damage.
    pub fn open_as_is(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let open = || Trees::of(config(cache_bytes).path(dir).open()?);
        let trees = std::panic::catch_unwind(open)
            .unwrap_or_else(|_| Err(sled::Error::ReportableBug("sled panicked opening the store".into())))?;
        Ok(Self::with(dir, cache_bytes, trees, None, None))
    }

    fn with(
        dir: &Path,
        cache_bytes: u64,
        trees: Trees,
        recovery: Option<Recovery>,
        recovered_from: Option<PathBuf>,
    ) -> Store {
        let handle = Arc::new(Handle { open: RwLock::new(Some(trees)), broken: AtomicBool::new(false) });
        let table = |which| Table { handle: handle.clone(), which };
        Store {
            dir: dir.into(),
            cache_bytes,
            meta: table(Which::Meta),
            state: table(Which::State),
            state_dirty: table(Which::StateDirty),
            handle,
            recovery,
            recovered_from,
            reopens: AtomicU64::new(0),
            retry: Mutex::new((Instant::now(), Duration::from_secs(1), None)),
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.handle.db(|db| db.flush().map(|_| ()))
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.meta.get(key)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes))
    }

    pub fn put_u64(&self, key: &str, value: u64) -> Result<()> {
        self.meta.insert(key, value.to_be_bytes())?;
        Ok(())
    }

    /// Whether a write failed for I/O and the store is not open again yet.
    pub fn is_broken(&self) -> bool {
        self.handle.broken.load(Relaxed)
    }

    /// Times the store was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Relaxed)
    }

    /// After an I/O failure, once the disk has room, opens the store again
    /// (at most every second, backing off to 8 s while that fails). Returns
    /// whether it did; an error says why it could not.
    pub fn heal(&self) -> std::result::Result<bool, OpenError> {
        self.heal_at(false)
    }

    /// [`Store::heal`] without waiting for the backoff (the last flush at a stop).
    pub fn heal_now(&self) -> std::result::Result<bool, OpenError> {
        self.heal_at(true)
    }

    fn heal_at(&self, now: bool) -> std::result::Result<bool, OpenError> {
        if !self.is_broken() {
            return Ok(false);
        }
        let mut retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        if (!now && Instant::now() < retry.0) || !stores::has_room(&self.dir, ROOM_TO_REOPEN) {
            return Ok(false);
        }
        match self.reopen(&mut retry.2) {
            Ok(()) => {
                *retry = (Instant::now(), Duration::from_secs(1), None);
                Ok(true)
            }
            Err(e) => {
                retry.1 = (retry.1 * 2).min(Duration::from_secs(8));
                retry.0 = Instant::now() + retry.1;
                Err(e)
            }
        }
    }

    /// Lets go of the store and opens it again, then puts back what the old
    /// one held in memory (the tables are bounded and small).
    fn reopen(&self, kept: &mut Option<Snapshot>) -> std::result::Result<(), OpenError> {
        let unusable = |source| OpenError::Unusable { path: self.dir.clone(), source };
        {
            let mut open = self.handle.open.write().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = open.take() {
                // Reads still work after sled's write failure: they come from memory.
                match snapshot(&old) {
                    Ok(snapshot) => *kept = Some(snapshot),
                    Err(e) => log::error!(
                        "local store: cannot read what it held before opening it again ({e}): writes since its last flush are lost"
                    ),
                }
            }
        }
        let opened = stores::reopen(&self.dir, config(self.cache_bytes))?;
        if let Some(recovery) = &opened.recovery {
            log::error!("local store: {}", recovery.describe());
        }
        let trees = Trees::of(opened.db).map_err(unusable)?;
        if let Some(snapshot) = kept.as_ref() {
            restore(&trees, snapshot).map_err(unusable)?;
        }
        trees.db.flush().map_err(unusable)?;
        *kept = None;
        *self.handle.open.write().unwrap_or_else(|e| e.into_inner()) = Some(trees);
        self.handle.broken.store(false, Relaxed);
        self.reopens.fetch_add(1, Relaxed);
        let room = stores::free_bytes(&self.dir).unwrap_or(0);
        log::info!("local store opened again after a storage failure ({room} bytes free)");
        Ok(())
    }

    /// Hands every record of the outbox an earlier agent kept in sled (its
    /// own format: CRC-32 LE of the rest, then the encoded sample), oldest
    /// first, to `each`, then deletes it: the outbox is a log of its own now.
    /// Damaged records are skipped and counted; returns (moved, damaged).
    pub fn take_legacy_outbox(
        &self,
        mut each: impl FnMut(&proto::sample::Sample) -> std::io::Result<()>,
    ) -> std::result::Result<(u64, u64), Box<dyn std::error::Error>> {
        let open = self.handle.open.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = open.as_ref().map(|t| &t.db) else { return Err(Error(reopening()).into()) };
        if !db.tree_names().iter().any(|n| n.as_ref() == b"outbox") {
            return Ok((0, 0));
        }
        let (mut moved, mut damaged) = (0, 0);
        for entry in db.open_tree("outbox")?.iter() {
            let (_, v) = entry?;
            let decoded = (v.len() > 4 && crc32fast::hash(&v[4..]).to_le_bytes() == v[..4])
                .then(|| proto::codec::decode::<proto::sample::Sample>(&v[4..]).ok())
                .flatten();
            match decoded {
                Some(sample) => {
                    each(&sample)?;
                    moved += 1;
                }
                None => damaged += 1,
            }
        }
        db.drop_tree("outbox")?;
        let _ = db.drop_tree("quarantine");
        db.flush()?;
        Ok((moved, damaged))
    }

    /// Bytes on disk under the store directory.
    pub fn disk_bytes(&self) -> u64 {
        self.handle.db(|db| db.size_on_disk()).unwrap_or(0)
    }
}

fn snapshot(trees: &Trees) -> sled::Result<Snapshot> {
    TREES.iter().map(|&which| Ok((which, trees.tree(which).iter().collect::<sled::Result<_>>()?))).collect()
}

/// Makes each tree of the reopened store hold exactly what the snapshot does.
fn restore(trees: &Trees, snapshot: &Snapshot) -> sled::Result<()> {
    for (which, entries) in snapshot {
        let tree = trees.tree(*which);
        let keep: std::collections::HashSet<&[u8]> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        for key in tree.iter().keys() {
            let key = key?;
            if !keep.contains(key.as_ref()) {
                tree.remove(key)?;
            }
        }
        for (key, value) in entries {
            tree.insert(key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn garble(path: &Path) {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::write(entry.path(), b"\xde\xad\xbe\xef not a sled file").unwrap();
            }
        }
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_three_copies_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path, 1 << 20).unwrap();
            store.put_u64("x", 1).unwrap();
            store.flush().unwrap();
        }
        let mut set_aside = Vec::new();
        for round in 1..=5 {
            garble(&path);
            let store = Store::open(&path, 1 << 20).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let aside = store.recovered_from.clone().expect("recovered");
            assert!(aside.exists());
            assert!(store.recovery.as_ref().unwrap().describe().contains("set aside"));
            assert_eq!(store.get_u64("x").unwrap(), None, "a fresh store");
            store.put_u64("x", 1).unwrap();
            store.flush().unwrap();
            set_aside.push(aside);
        }
        let kept: Vec<PathBuf> = stores::asides(&path).unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(kept, set_aside[2..], "the three newest are kept, the oldest deleted");
        assert!(!set_aside[0].exists() && !set_aside[1].exists());
    }

    #[test]
    fn a_store_in_use_is_an_error_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let _first = Store::open(&path, 1 << 20).unwrap();
        let err = Store::open(&path, 1 << 20).err().expect("sled holds its store locked");
        assert!(matches!(err, OpenError::Unusable { .. }), "{err}");
        assert!(err.to_string().contains("another process has it open"), "{err}");
        assert!(stores::asides(&path).unwrap().is_empty(), "nothing set aside");
    }

    #[test]
    fn opening_again_keeps_what_the_store_held_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path, 1 << 20).unwrap();
        store.state.insert("flushed", "1").unwrap();
        store.state.insert("gone", "1").unwrap();
        store.flush().unwrap();
        // Acknowledged but never flushed (as when a full disk fails the flush).
        store.state.insert("unflushed", "2").unwrap();
        store.state.remove("gone").unwrap();
        store.put_u64("counter", 9).unwrap();
        let table = store.state.clone();
        // A real full disk is in the system tests; here the failure is said.
        store.handle.broken.store(true, Relaxed);
        assert!(store.heal().unwrap(), "opened again");
        assert!(!store.is_broken());
        assert_eq!(store.reopens(), 1);
        assert_eq!(
            table.get("unflushed").unwrap().as_deref(),
            Some(&b"2"[..]),
            "a table kept from before works"
        );
        assert_eq!(table.get("gone").unwrap(), None);
        assert_eq!(store.get_u64("counter").unwrap(), Some(9));
        assert!(!store.heal().unwrap(), "nothing to heal");
        drop((table, store));
        let store = Store::open(&path, 1 << 20).unwrap();
        let keys: Vec<Vec<u8>> =
            store.state.entries().unwrap().into_iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, [b"flushed".to_vec(), b"unflushed".to_vec()], "and it was flushed");
    }

    #[test]
    fn an_outbox_an_earlier_agent_kept_in_sled_is_moved_once() {
        use proto::sample::{Quality, Sample, Value};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let sample = |seq: u64| Sample {
            channel: "c".into(),
            epoch: 3,
            seq,
            wall_ns: 0,
            mono_ns: 0,
            clock_synced: false,
            value: Value::Number(seq as f64),
            unit: "u".into(),
            quality: Quality::Good,
        };
        {
            // The old layout: key epoch then seq (big-endian), value CRC-32 LE then the sample.
            let db = sled::open(&path).unwrap();
            let tree = db.open_tree("outbox").unwrap();
            for seq in 1..=5u64 {
                let body = proto::codec::encode(&sample(seq));
                let mut value = crc32fast::hash(&body).to_le_bytes().to_vec();
                value.extend(body);
                if seq == 4 {
                    value[6] ^= 0xff;
                }
                let mut key = 3u64.to_be_bytes().to_vec();
                key.extend(seq.to_be_bytes());
                tree.insert(key, value).unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        let mut moved = Vec::new();
        assert_eq!(
            store
                .take_legacy_outbox(|s| {
                    moved.push(s.seq);
                    Ok(())
                })
                .unwrap(),
            (4, 1)
        );
        assert_eq!(moved, [1, 2, 3, 5]);
        assert_eq!(store.take_legacy_outbox(|_| panic!("moved twice")).unwrap(), (0, 0));
    }
}
