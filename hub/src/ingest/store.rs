//! Ingest's store: the watermarks and the journal, in one sled database
//! under `data_dir/ingest`.
//!
//! Opened with `stores`: damage found at start is set aside and salvaged,
//! and the hub starts (what was lost is in [`IngestStore::recovery`]). sled
//! fails every write after one I/O error (a full disk) until the store is
//! opened again, so [`IngestStore::heal`] opens it again once there is room:
//! ingest answers Retry meanwhile, and works again within seconds of space
//! returning, without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use transport::ShutdownWatch;

use super::watermarks::Watermarks;
use crate::journal::consumers::Spec;
use crate::journal::{reopening, Journal};

fn config() -> sled::Config {
    sled::Config::new().cache_capacity(4 << 20).flush_every_ms(None)
}

pub struct IngestStore {
    dir: PathBuf,
    pub watermarks: Watermarks,
    pub journal: Arc<Journal>,
    /// The store and its count of flushes (let go of while it is opened again).
    disk: std::sync::RwLock<Option<(sled::Db, stores::Generation)>>,
    /// Damage found and recovered from when the hub started.
    recovery: Option<stores::Recovery>,
    /// A write failed for I/O: the store must be opened again to work.
    broken: AtomicBool,
    reopens: AtomicU64,
}

impl IngestStore {
    /// Opens the store in `dir` for the journal's `consumers`.
    pub fn open(dir: &Path, consumers: Vec<Spec>) -> Result<IngestStore, stores::OpenError> {
        let opened = stores::open(dir, config())?;
        let unusable = |source| stores::OpenError::Unusable { path: dir.into(), source };
        let (generation, loss) = stores::Generation::open(dir, &opened).map_err(unusable)?;
        let watermarks = Watermarks::new(&opened.db).map_err(unusable)?;
        let journal = Journal::open(&opened.db, consumers).map_err(unusable)?;
        Ok(IngestStore {
            dir: dir.into(),
            watermarks,
            journal: Arc::new(journal),
            disk: std::sync::RwLock::new(Some((opened.db, generation))),
            recovery: opened.recovery.or(loss),
            broken: AtomicBool::new(false),
            reopens: AtomicU64::new(0),
        })
    }

    pub fn recovery(&self) -> Option<&stores::Recovery> {
        self.recovery.as_ref()
    }

    /// Times the store was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Relaxed)
    }

    /// Whether a write failed for I/O and the store is not open again yet:
    /// what it holds in memory may not be on disk (a watermark raised but
    /// never flushed would make the agent's resent batch look like repeats),
    /// so nothing is to be trusted or taken until it is opened again.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    /// A write failed with `e`: if it was I/O, the store is to be opened again.
    pub fn failed(&self, e: &sled::Error) {
        if matches!(e, sled::Error::Io(_)) {
            self.broken.store(true, Relaxed);
        }
    }

    /// Makes every write so far durable (counting the flush: see
    /// `stores::Generation`); an error means they may not be.
    pub fn flush(&self) -> sled::Result<()> {
        let disk = self.disk.read().unwrap_or_else(|e| e.into_inner());
        match disk.as_ref() {
            // Entries appended before the flush are durable after it: then
            // (not at their append) durable consumers may see them.
            Some((db, generation)) => self.journal.flushed_by(|| generation.flush(db)),
            None => Err(reopening()),
        }
    }

    /// Lets go of the store and opens it again; until that works, every call fails.
    pub fn reopen(&self) -> Result<(), stores::OpenError> {
        self.watermarks.detach();
        self.journal.detach();
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = None;
        let opened = stores::reopen(&self.dir, config())?;
        let unusable = |source| stores::OpenError::Unusable { path: self.dir.clone(), source };
        let (generation, loss) = stores::Generation::open(&self.dir, &opened).map_err(unusable)?;
        self.watermarks.attach(&opened.db).map_err(unusable)?;
        self.journal.attach(&opened.db).map_err(unusable)?;
        for recovery in opened.recovery.iter().chain(&loss) {
            log::error!("ingest store: {}", recovery.describe());
        }
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = Some((opened.db, generation));
        self.reopens.fetch_add(1, Relaxed);
        self.broken.store(false, Relaxed);
        Ok(())
    }

    /// Until `signal`: after an I/O failure, opens the store again once the
    /// file system has room (see [`stores::heal`]).
    pub fn heal(&self, signal: &ShutdownWatch) {
        stores::heal("ingest", &self.dir, |wait| signal.sleep(wait), || self.is_broken(), || self.reopen());
    }
}
