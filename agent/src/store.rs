//! All of the agent's sled use, behind one small module so the store can be
//! swapped: counters (`meta`), the outbox, quarantined
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
        Ok(Store {
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

fn aside_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".damaged-{}", jiff::Timestamp::now().as_second()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_will_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path, 1 << 20).unwrap();
            store.put_u64("x", 1).unwrap();
            store.flush().unwrap();
        }
        // Replace sled's files with garbage.
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::write(entry.path(), b"\xde\xad\xbe\xef not a sled file").unwrap();
            }
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        let aside = store.recovered_from.clone().expect("recovered");
        assert!(aside.exists());
        assert_eq!(store.get_u64("x").unwrap(), None, "a fresh store");
    }
}
