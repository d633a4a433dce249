//! All of the agent's sled use, behind one small module so the store can be
//! swapped: counters (`meta`) and the local key-value state. (The outbox is
//! a log of its own, [`crate::outbox`].) Nothing outside this file names
//! sled: the rest of the agent sees [`Table`]s of byte keys in order.
//!
//! If sled finds the store damaged (corruption after a power cut, say), the
//! damaged directory is moved aside and a fresh store is started: the agent
//! keeps sampling instead of crash-looping, and says so in its status. Any
//! other failure to open (permissions, no file descriptors, a full disk)
//! stops the agent with the store left in place.

use std::ops::Deref;
use std::path::{Path, PathBuf};

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
    pub state: Table,
    pub state_dirty: Table,
    /// Where a store that would not open was moved, if that happened at this start.
    pub recovered_from: Option<PathBuf>,
}

/// Why the store could not be opened. Only damage is recovered from (by
/// setting the store aside); anything else stops the agent with the store
/// left as it is, since a fresh store would hide data that is still there.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store at {}: {source}{}; it was left in place", path.display(), advice(source))]
    Unusable { path: PathBuf, source: Error },
    #[error("the store at {} is damaged ({damage}) and could not be moved aside: {source}", path.display())]
    SetAside { path: PathBuf, damage: String, source: std::io::Error },
}

/// What to do about an open error that is not damage.
fn advice(e: &Error) -> &'static str {
    let sled::Error::Io(io) = &e.0 else { return "" };
    match io.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            " (permission denied: the data directory and everything in it must belong to the user the agent runs as)"
        }
        Some(libc::EMFILE | libc::ENFILE) => " (too many open files: raise the limit, e.g. LimitNOFILE=)",
        Some(libc::ENOSPC | libc::EDQUOT) => " (the disk is full: free some space)",
        Some(libc::EROFS) => " (the file system is read-only)",
        Some(libc::EIO) => " (an I/O error: the disk or SD card may be failing)",
        _ if io.to_string().contains("could not acquire lock") => {
            " (another process has it open: is another agent running on this data directory?)"
        }
        _ => "",
    }
}

/// Whether an error from opening the store means its files are damaged (so
/// setting them aside is the only way on), rather than the system refusing
/// access, running out of something, or the store being in use.
pub fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
        // sled's "not a store I can read" (say, a config file that is not text).
        sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => {
            matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
        }
        sled::Error::CollectionNotFound(_) => false,
    }
}

/// Set-aside copies of damaged stores kept beside the store; older ones are deleted.
pub const ASIDE_KEPT: usize = 3;

impl Store {
    /// Opens (creating if needed) the store in `dir`. A store whose files are
    /// damaged is moved aside (the [`ASIDE_KEPT`] most recent copies are
    /// kept) and a fresh one started; any other failure is an error and the
    /// store is left alone.
    pub fn open(dir: &Path, cache_bytes: u64) -> std::result::Result<Store, OpenError> {
        let error = match Self::open_guarded(dir, cache_bytes) {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        if !is_damage(&error.0) || !dir.exists() {
            return Err(OpenError::Unusable { path: dir.into(), source: error });
        }
        let set_aside = |source| OpenError::SetAside { path: dir.into(), damage: error.to_string(), source };
        let aside = aside_path(dir).map_err(set_aside)?;
        log::error!(
            "store at {} is damaged ({error}); moving it to {} and starting afresh",
            dir.display(),
            aside.display()
        );
        std::fs::rename(dir, &aside).map_err(set_aside)?;
        prune_asides(dir);
        let mut store = Self::open_guarded(dir, cache_bytes)
            .map_err(|source| OpenError::Unusable { path: dir.into(), source })?;
        store.recovered_from = Some(aside);
        Ok(store)
    }

    /// Opens the store; a panic inside sled (its recovery meeting files it
    /// does not expect) is reported as corruption, not passed on.
    fn open_guarded(dir: &Path, cache_bytes: u64) -> Result<Store> {
        std::panic::catch_unwind(|| Self::open_as_is(dir, cache_bytes)).unwrap_or_else(|_| {
            Err(Error(sled::Error::ReportableBug("sled panicked opening the store".into())))
        })
    }

    /// Opens the store without recovery (for `agent store` on a stopped agent).
    pub fn open_as_is(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes).flush_every_ms(None).open()?;
        Ok(Store {
            meta: Table(db.open_tree("meta")?),
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

    /// Hands every record of the outbox an earlier agent kept in sled (its
    /// own format: CRC-32 LE of the rest, then the encoded sample), oldest
    /// first, to `each`, then deletes it: the outbox is a log of its own now.
    /// Damaged records are skipped and counted; returns (moved, damaged).
    pub fn take_legacy_outbox(
        &self,
        mut each: impl FnMut(&proto::sample::Sample) -> std::io::Result<()>,
    ) -> std::result::Result<(u64, u64), Box<dyn std::error::Error>> {
        if !self.db.tree_names().iter().any(|n| n.as_ref() == b"outbox") {
            return Ok((0, 0));
        }
        let (mut moved, mut damaged) = (0, 0);
        for entry in self.db.open_tree("outbox")?.iter() {
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
        self.db.drop_tree("outbox")?;
        let _ = self.db.drop_tree("quarantine");
        self.db.flush()?;
        Ok((moved, damaged))
    }

    /// Bytes on disk under the store directory.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// `<store>.damaged-<n>-<unix seconds>`, n one more than any there: numbered
/// so the oldest is known even when the clock was wrong (a Pi with no RTC).
fn aside_path(dir: &Path) -> std::io::Result<PathBuf> {
    let n = asides(dir)?.last().map_or(1, |(n, _)| n + 1);
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".damaged-{n}-{}", jiff::Timestamp::now().as_second()));
    Ok(PathBuf::from(name))
}

/// The set-aside copies of `dir`, oldest first.
fn asides(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else { return Ok(Vec::new()) };
    let prefix = format!("{}.damaged-", base.to_string_lossy());
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        if let Some(n) = rest.split('-').next().and_then(|n| n.parse::<u64>().ok()) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the [`ASIDE_KEPT`] newest set-aside copies of `dir`.
fn prune_asides(dir: &Path) {
    let found = match asides(dir) {
        Ok(found) => found,
        Err(e) => return log::warn!("cannot list the set-aside stores beside {}: {e}", dir.display()),
    };
    for (_, old) in found.iter().rev().skip(ASIDE_KEPT) {
        log::warn!("deleting the oldest set-aside store {}", old.display());
        if let Err(e) = std::fs::remove_dir_all(old) {
            log::warn!("cannot delete {}: {e}", old.display());
        }
    }
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
            assert_eq!(store.get_u64("x").unwrap(), None, "a fresh store");
            store.put_u64("x", 1).unwrap();
            store.flush().unwrap();
            set_aside.push(aside);
        }
        let kept: Vec<PathBuf> = asides(&path).unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(kept, set_aside[2..], "the three newest are kept, the oldest deleted");
        assert!(!set_aside[0].exists() && !set_aside[1].exists());
    }

    #[test]
    fn only_damage_counts_as_damage() {
        let io = |code| sled::Error::Io(std::io::Error::from_raw_os_error(code));
        for code in
            [libc::EACCES, libc::EPERM, libc::EMFILE, libc::ENFILE, libc::ENOSPC, libc::EIO, libc::EROFS]
        {
            assert!(!is_damage(&io(code)), "errno {code} is not damage");
        }
        let locked = sled::Error::Io(std::io::Error::other("could not acquire lock on \"db\""));
        assert!(!is_damage(&locked));
        assert!(is_damage(&sled::Error::Corruption { at: None, bt: () }));
        assert!(is_damage(&sled::Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
    }

    #[test]
    fn a_store_in_use_is_an_error_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let _first = Store::open(&path, 1 << 20).unwrap();
        let err = Store::open(&path, 1 << 20).err().expect("sled holds its store locked");
        assert!(matches!(err, OpenError::Unusable { .. }), "{err}");
        assert!(err.to_string().contains("another agent"), "{err}");
        assert!(asides(&path).unwrap().is_empty(), "nothing set aside");
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
