//! All of the agent's sled use, behind one small module so the store can be
//! swapped: the boot epoch and counters (`meta`), the outbox, quarantined
//! records, and the local key-value state. Nothing outside this file names
//! sled: the rest of the agent sees [`Table`]s of byte keys in order.
//!
//! If sled cannot open the store (corruption after a power cut, say), the
//! damaged directory is moved aside and a fresh store is started: the agent
//! keeps sampling instead of crash-looping, and says so in its status.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A storage failure (I/O, or damage the store itself detected).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(#[from] sled::Error);

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

/// One table of the store: byte keys kept in order, byte values. Writes are
/// durable at the next [`Store::flush`].
#[derive(Clone)]
pub struct Table(sled::Tree);

impl Table {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        Ok(self.0.get(key)?.map(Bytes))
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        Ok(self.0.insert(key.as_ref(), value.as_ref())?.map(Bytes))
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        Ok(self.0.remove(key)?.map(Bytes))
    }

    /// Removes `key` only if its value is still `expected`; false if it changed.
    pub fn remove_if(&self, key: impl AsRef<[u8]>, expected: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.0.compare_and_swap(key, Some(expected.as_ref()), None::<&[u8]>)?.is_ok())
    }

    /// The first entry in key order.
    pub fn first(&self) -> Result<Option<(Bytes, Bytes)>> {
        Ok(self.0.first()?.map(|(k, v)| (Bytes(k), Bytes(v))))
    }

    /// Removes and returns the first entry in key order.
    pub fn pop_first(&self) -> Result<Option<(Bytes, Bytes)>> {
        Ok(self.0.pop_min()?.map(|(k, v)| (Bytes(k), Bytes(v))))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Bytes, Bytes)>> {
        self.0.iter().map(|entry| entry.map(|(k, v)| (Bytes(k), Bytes(v))).map_err(Error))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct Store {
    db: sled::Db,
    /// A copy of the boot epoch outside sled (`<data_dir>/epoch`), which
    /// survives the store being moved aside.
    epoch_file: PathBuf,
    pub meta: Table,
    pub outbox: Table,
    pub quarantine: Table,
    pub state: Table,
    pub state_dirty: Table,
    /// Where a store that would not open was moved, if that happened at this start.
    pub recovered_from: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, recovering from one that will not open.
    pub fn open(dir: &Path, cache_bytes: u64) -> std::io::Result<Store> {
        match Self::open_as_is(dir, cache_bytes) {
            Ok(store) => Ok(store),
            Err(e) if dir.exists() => {
                let aside = aside_path(dir);
                log::error!(
                    "store at {} will not open ({e}); moving it to {} and starting afresh",
                    dir.display(),
                    aside.display()
                );
                std::fs::rename(dir, &aside)?;
                let mut store = Self::open_as_is(dir, cache_bytes).map_err(std::io::Error::other)?;
                store.recovered_from = Some(aside);
                Ok(store)
            }
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Opens the store without recovery (for `agent store` on a stopped agent).
    pub fn open_as_is(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes).flush_every_ms(None).open()?;
        let epoch_file = dir.parent().unwrap_or(Path::new(".")).join("epoch");
        Ok(Store {
            epoch_file,
            meta: Table(db.open_tree("meta")?),
            outbox: Table(db.open_tree("outbox")?),
            quarantine: Table(db.open_tree("quarantine")?),
            state: Table(db.open_tree("state")?),
            state_dirty: Table(db.open_tree("state_dirty")?),
            db,
            recovered_from: None,
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bumps and returns the boot epoch, durably: samples of this run are
    /// told apart from those of every earlier run, and the hub deduplicates on
    /// it, so an epoch must never come round again. It is kept in sled and in
    /// a file beside the store (so a store moved aside after damage does not
    /// take it along), and it is never lower than the minutes since 2024 by
    /// the wall clock (so even a wiped data directory does not reuse one,
    /// unless the clock is wrong too).
    pub fn next_epoch(&self) -> Result<u32> {
        let stored = self.get_u64("epoch")?.unwrap_or(0);
        let in_file = std::fs::read_to_string(&self.epoch_file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let by_clock = (crate::clock::wall_ns() / 1_000_000_000 - EPOCH_CLOCK_ORIGIN).max(0) as u64 / 60;
        let epoch = (stored.max(in_file) + 1).max(by_clock).min(u32::MAX.into()) as u32;
        self.put_u64("epoch", epoch.into())?;
        self.flush()?;
        if let Err(e) = write_atomically(&self.epoch_file, epoch.to_string().as_bytes()) {
            log::warn!("cannot keep the boot epoch in {}: {e}", self.epoch_file.display());
        }
        Ok(epoch)
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.meta.get(key)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes))
    }

    pub fn put_u64(&self, key: &str, value: u64) -> Result<()> {
        self.meta.insert(key, value.to_be_bytes())?;
        Ok(())
    }

    /// Bytes on disk under the store directory.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// 2024-01-01T00:00:00Z: epochs derived from the clock count minutes from here.
const EPOCH_CLOCK_ORIGIN: i64 = 1_704_067_200;

/// Replaces `path` with `bytes` so a crash leaves the old or the new content, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn aside_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".damaged-{}", jiff::Timestamp::now().as_second()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_go_up_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let first = Store::open(&path, 1 << 20).unwrap().next_epoch().unwrap();
        let second = Store::open(&path, 1 << 20).unwrap().next_epoch().unwrap();
        assert!(second > first, "{first} then {second}");
        // Even with the clock before 2024 the count goes on from the stored value.
        assert!(first >= 1);
    }

    #[test]
    fn a_store_that_will_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let before = {
            let store = Store::open(&path, 1 << 20).unwrap();
            store.next_epoch().unwrap();
            store.next_epoch().unwrap()
        };
        // Replace sled's files with garbage.
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::write(entry.path(), b"\xde\xad\xbe\xef not a sled file").unwrap();
            }
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        let aside = store.recovered_from.clone().expect("recovered");
        assert!(aside.exists());
        // A fresh store, but not a reused epoch: the hub has seen the old ones.
        assert!(store.next_epoch().unwrap() > before);
    }
}
