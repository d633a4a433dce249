//! The journal: durable samples ingest accepted, kept for the consumers
//! that must have every one of them (the NATS bridge, pipelines fed by
//! ingest, durable consumers), in the ingest store beside the watermarks.
//! One flush makes a batch's journal entries and its watermarks durable
//! together, before the agent is acknowledged; an entry goes only once every
//! consumer has acknowledged it. So a sample is always somewhere durable: in
//! the agent's outbox, in this journal, or with its consumers.
//!
//! Each consumer ([`consumers`]) has a persistent cursor and bounds: at its
//! bounds a `block` consumer makes ingest answer Retry (agents keep
//! buffering), a `drop-oldest` one skips ahead. With no consumer at all,
//! nothing is kept.
//!
//! Keys are a counter, appended under a lock, so a reader never sees a later
//! key before an earlier one (it reads in key order and would skip it).
//! Durable consumers see an entry only once a flush has made it durable
//! ([`Journal::durable`]): keys that were never flushed are handed out again
//! after a crash, so a position past them would skip what lands there then. Each
//! entry is stored after the journal's cumulative byte count before it, so a
//! consumer's backlog in bytes is two numbers apart. Entries are stored in
//! segments of consecutive keys ([`segments`]), which go whole once every
//! consumer is past them.

mod admin;
pub mod consumers;
mod read;
mod segments;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use proto::consumer::Policy;
use serde::{Deserialize, Serialize};

use self::consumers::{Consumer, Origin, Spec};
use self::segments::{key_of, Segments};

/// One durable sample for the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The bus topic (`org.plantd.Metric.<agent>.<channel>`).
    pub topic: String,
    /// The JSON published on the bus, unchanged.
    pub payload: Vec<u8>,
    pub agent: String,
    pub epoch: u64,
    pub seq: u64,
    pub historical: bool,
}

impl Entry {
    fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len() + self.agent.len() + 24) as u64
    }
}

/// What the journal's readers (the bridge, pipelines, durable consumers) take from ingest (which appends to it).
#[derive(Clone)]
pub struct Export {
    pub journal: Arc<Journal>,
    /// Topic prefixes the hub's own consumers take: heard, for the ingest gate.
    pub prefixes: Vec<String>,
}

/// The journal's consumers from the config (the bridge, pipelines, `[[consumer]]`).
#[derive(Clone, Debug, Default)]
pub struct ExportConfig {
    /// Topic prefixes the hub's own consumers take: heard, for the ingest gate.
    pub prefixes: Vec<String>,
    /// Each with its own cursor and bounds in the journal.
    pub consumers: Vec<Spec>,
}

impl ExportConfig {
    /// Both sets of consumers.
    pub fn join(mut self, other: ExportConfig) -> ExportConfig {
        self.prefixes.extend(other.prefixes);
        self.consumers.extend(other.consumers);
        self
    }
}

/// What the ingest store (the journal's and the watermarks') answers while
/// it is detached, being opened again after a storage failure.
pub fn reopening() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the ingest store is being opened again after a storage failure"))
}

/// The bridge's cursor (its key from before there were other consumers).
pub const BRIDGE: &str = "bridge";

fn cursor_key(consumer: &str) -> Vec<u8> {
    match consumer {
        BRIDGE => b"cursor".to_vec(),
        other => format!("cursor.{other}").into_bytes(),
    }
}

/// Where a durable consumer's definition is kept.
fn spec_key(consumer: &str) -> Vec<u8> {
    format!("consumer.{consumer}").into_bytes()
}

/// The entries of the journal before cumulative offsets (read once, moved on).
const OLD_ENTRIES: &str = "export.v1";

/// Bytes an entry of `value.len()` takes in the bounds.
fn stored(value: &[u8]) -> u64 {
    value.len() as u64 + 8
}

/// The newest key and the bytes appended up to it.
#[derive(Clone, Copy, Debug, Default)]
struct Tail {
    next: u64,
    cum: u64,
    /// Entries up to this key are on disk: a flush began after they were appended.
    durable: u64,
}

/// A consumer at its bounds (`block`): ingest answers Retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub consumer: String,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("no consumer named '{0}' (hub consumers list shows them)")]
    Unknown(String),
    #[error("a consumer named '{0}' exists already")]
    Exists(String),
    #[error("{0}")]
    Refused(String),
    #[error("the ingest store: {0}")]
    Storage(#[from] sled::Error),
}

/// What a consumer's fetch read: how many entries of its topics, and the
/// key to acknowledge once they are handled (past the entries of other
/// topics it looked at too).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub count: usize,
    pub next: u64,
    /// Entries that could not be decoded (a fault of ours): counted, passed over.
    pub undecodable: u64,
}

/// An entry as stored, borrowed: what a fetch hands on without copying.
#[derive(Deserialize)]
struct EntryRef<'a> {
    topic: &'a str,
    payload: &'a [u8],
    #[allow(dead_code)]
    agent: &'a str,
}

/// The journal's handles on the store. Let go of while the store is opened
/// again after an I/O failure (sled fails every write after one until it
/// is): meanwhile every call fails, and ingest answers Retry.
struct Disk {
    db: sled::Db,
    entries: Segments,
    meta: sled::Tree,
}

impl Disk {
    fn of(db: &sled::Db) -> sled::Result<Disk> {
        Ok(Disk { db: db.clone(), entries: Segments::open(db)?, meta: db.open_tree(META)? })
    }

    /// The newest entry's key and offset as stored, keys past every cursor.
    fn tail(&self, cursors: impl IntoIterator<Item = u64>) -> sled::Result<Tail> {
        let mut tail = match self.entries.last()? {
            Some((k, v)) => Tail { next: k + 1, cum: offset_of(&v) + stored(&v), durable: 0 },
            None => Tail::default(),
        };
        // Keys keep rising over restarts, even with an empty journal.
        for cursor in cursors {
            tail.next = tail.next.max(cursor + 1);
        }
        tail.next = tail.next.max(1);
        // What was read back from disk is durable.
        tail.durable = tail.next - 1;
        Ok(tail)
    }
}

/// A read lock on the journal's handles, while it has them.
struct DiskRef<'a>(std::sync::RwLockReadGuard<'a, Option<Disk>>);

impl std::ops::Deref for DiskRef<'_> {
    type Target = Disk;

    fn deref(&self) -> &Disk {
        self.0.as_ref().expect("a DiskRef is made only while the handles are there")
    }
}

const META: &str = "export.meta";

pub struct Journal {
    disk: RwLock<Option<Disk>>,
    /// Held while a batch is appended.
    tail: Mutex<Tail>,
    consumers: RwLock<BTreeMap<String, Consumer>>,
    /// Held while cursors move and entries go, so two consumers acknowledging
    /// at once agree on what every consumer has.
    trim: Mutex<()>,
    /// Woken on every append: the bridge (async) ...
    appended: tokio::sync::Notify,
    /// ... and fetches waiting on threads.
    arrived: Condvar,
    /// Bytes of the newest entries kept in memory for readers that keep up.
    memory_bytes: std::sync::atomic::AtomicUsize,
}

/// Bytes of the newest entries kept in memory unless configured
/// (`ingest.journal_memory_bytes`).
pub const MEMORY_BYTES: usize = 8 << 20;

impl Journal {
    /// Opens the journal in `db` (the ingest store). `consumers` are the
    /// hub's own and the config's: a new one starts at the oldest entry (the
    /// hub's) or past the newest (the config's); durable consumers made by
    /// clients are read back; ones the config no longer declares are removed.
    pub fn open(db: &sled::Db, consumers: Vec<Spec>) -> sled::Result<Journal> {
        let disk = Disk::of(db)?;
        migrate(db, &disk.entries)?;
        let meta = &disk.meta;
        let now = Instant::now();
        let mut all = BTreeMap::new();
        for spec in consumers {
            all.insert(spec.name.clone(), spec);
        }
        for item in meta.scan_prefix(b"consumer.") {
            let (key, value) = item?;
            let Ok(spec) = serde_json::from_slice::<Spec>(&value) else {
                log::warn!(
                    "journal: a consumer's definition cannot be read ({}): removed",
                    String::from_utf8_lossy(&key)
                );
                meta.remove(key)?;
                continue;
            };
            match spec.origin {
                Origin::Made if !all.contains_key(&spec.name) => {
                    all.insert(spec.name.clone(), spec);
                }
                Origin::Declared if !all.contains_key(&spec.name) => {
                    log::info!("journal: consumer '{}' is no longer in the config: removed", spec.name);
                    meta.remove(spec_key(&spec.name))?;
                    meta.remove(cursor_key(&spec.name))?;
                }
                _ => {}
            }
        }
        let cursors =
            all.keys().map(|name| read_u64(meta, &cursor_key(name))).collect::<sled::Result<Vec<_>>>()?;
        let tail = disk.tail(cursors)?;
        let oldest = disk.entries.first()?.map_or(tail.next, |(k, _)| k).saturating_sub(1);
        let journal = Journal {
            disk: RwLock::new(Some(disk)),
            tail: Mutex::new(tail),
            consumers: RwLock::new(BTreeMap::new()),
            trim: Mutex::new(()),
            appended: tokio::sync::Notify::new(),
            arrived: Condvar::new(),
            memory_bytes: MEMORY_BYTES.into(),
        };
        journal.disk()?.entries.keep_in_memory(MEMORY_BYTES);
        let newest = tail.next - 1;
        for (name, spec) in all {
            let meta = &journal.disk()?.meta;
            let cursor = match meta.get(cursor_key(&name))? {
                Some(v) => key_of(&v).max(oldest),
                None if spec.origin == Origin::Hub => oldest,
                None => newest,
            };
            if spec.origin != Origin::Hub {
                meta.insert(spec_key(&name), serde_json::to_vec(&spec).expect("a spec is JSON"))?;
            }
            meta.insert(cursor_key(&name), &cursor.to_be_bytes())?;
            let cum = journal.cum_through(cursor)?;
            journal.consumers_mut().insert(name, Consumer::new(spec, cursor, cum, now));
        }
        journal.trim()?;
        Ok(journal)
    }

    fn consumers_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Consumer>> {
        self.consumers.write().unwrap_or_else(|e| e.into_inner())
    }

    fn consumers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Consumer>> {
        self.consumers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn tail(&self) -> Tail {
        *self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handles on the store, unless they were let go of for a reopen.
    fn disk(&self) -> sled::Result<DiskRef<'_>> {
        let disk = self.disk.read().unwrap_or_else(|e| e.into_inner());
        match disk.is_some() {
            true => Ok(DiskRef(disk)),
            false => Err(reopening()),
        }
    }

    /// Keeps up to `bytes` of the newest entries in memory (0: none), so
    /// readers that keep up take them from there rather than the store.
    pub fn keep_in_memory(&self, bytes: usize) {
        self.memory_bytes.store(bytes, Relaxed);
        if let Ok(disk) = self.disk() {
            disk.entries.keep_in_memory(bytes);
        }
    }

    /// Lets go of the store, so that it can be opened again (every call
    /// fails meanwhile).
    pub fn detach(&self) {
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Uses `db` (the store opened again) from now on. Where each consumer
    /// is, and the newest entry, are read from it again: what was not flushed
    /// before the failure is gone, so a consumer may get repeats, never gaps;
    /// keys never go back.
    pub fn attach(&self, db: &sled::Db) -> sled::Result<()> {
        let disk = Disk::of(db)?;
        disk.entries.keep_in_memory(self.memory_bytes.load(Relaxed));
        let names: Vec<String> = self.consumers().keys().cloned().collect();
        let cursors =
            names.iter().map(|n| read_u64(&disk.meta, &cursor_key(n))).collect::<sled::Result<Vec<_>>>()?;
        let stored = disk.tail(cursors.iter().copied())?;
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            *tail = Tail {
                next: tail.next.max(stored.next),
                cum: tail.cum.max(stored.cum),
                durable: tail.durable.max(stored.durable),
            };
        }
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = Some(disk);
        let oldest = self.disk()?.entries.first()?.map(|(k, _)| k.saturating_sub(1));
        for (name, cursor) in names.iter().zip(cursors) {
            let cursor = oldest.map_or(cursor, |o| cursor.max(o)).min(self.newest());
            let cum = self.cum_through(cursor)?;
            if let Some(c) = self.consumers_mut().get_mut(name) {
                (c.cursor, c.cursor_cum) = (cursor, cum);
            }
        }
        Ok(())
    }

    /// Bytes appended up to and including `key`.
    fn cum_through(&self, key: u64) -> sled::Result<u64> {
        match self.disk()?.entries.from(key + 1).next() {
            Some(item) => Ok(offset_of(&item?.1)),
            None => Ok(self.tail().cum),
        }
    }

    /// Makes room for `records` more of `bytes`: a `drop-oldest` consumer at
    /// its bounds skips ahead; a `block` one says no (ingest answers Retry).
    pub fn make_room(&self, records: u64, bytes: u64) -> Result<(), Full> {
        let tail = self.tail();
        let newest = tail.next - 1;
        // Most batches fit everyone: a read lock answers them, no ingest worker waits on another.
        let mut must_skip = false;
        for c in self.consumers().values().filter(|c| !c.fits(newest, tail.cum, records, bytes)) {
            if c.spec.policy == Policy::Block {
                let (records, bytes) = c.backlog(newest, tail.cum);
                return Err(Full { consumer: c.spec.name.clone(), records, bytes });
            }
            must_skip = true;
        }
        if !must_skip {
            return Ok(());
        }
        let mut skipped_any = false;
        // Without the store (it is being opened again), the append that follows fails.
        let Ok(disk) = self.disk() else { return Ok(()) };
        {
            let mut consumers = self.consumers_mut();
            for c in consumers.values_mut() {
                if c.fits(newest, tail.cum, records, bytes) {
                    continue;
                }
                if c.spec.policy == Policy::Block {
                    let (records, bytes) = c.backlog(newest, tail.cum);
                    return Err(Full { consumer: c.spec.name.clone(), records, bytes });
                }
                // Skip past the oldest until the batch fits (or nothing is left).
                let (mut cursor, mut cum) = (c.cursor, c.cursor_cum);
                for item in disk.entries.from(c.cursor + 1) {
                    let Ok((key, value)) = item else { break };
                    cursor = key;
                    cum = offset_of(&value) + stored(&value);
                    let left = (newest - cursor, tail.cum - cum);
                    if left.0 + records <= c.spec.max_records && left.1 + bytes <= c.spec.max_bytes {
                        break;
                    }
                }
                c.skipped += cursor - c.cursor;
                (c.cursor, c.cursor_cum) = (cursor, cum);
                let _ = disk.meta.insert(cursor_key(&c.spec.name), &cursor.to_be_bytes());
                skipped_any = true;
            }
        }
        drop(disk);
        if skipped_any {
            let _ = self.trim();
        }
        Ok(())
    }

    /// Bytes `entries` would take.
    pub fn size_of(entries: &[Entry]) -> u64 {
        entries.iter().map(Entry::size).sum()
    }

    /// Appends `entries` in order (durable at the store's next flush); with
    /// no consumer at all, keeps nothing.
    pub fn append(&self, entries: &[Entry]) -> sled::Result<()> {
        if entries.is_empty() || self.consumers().is_empty() {
            return Ok(());
        }
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut cum = tail.cum;
        let values: Vec<Vec<u8>> = entries
            .iter()
            .map(|entry| {
                let mut value = cum.to_be_bytes().to_vec();
                value.extend(proto::codec::encode(entry));
                cum += stored(&value);
                value
            })
            .collect();
        self.disk()?.entries.insert(tail.next, values)?;
        tail.next += entries.len() as u64;
        tail.cum = cum;
        drop(tail);
        // A permit is kept when the bridge is not waiting yet: no wake-up is lost.
        self.appended.notify_one();
        Ok(())
    }

    /// The newest key a durable consumer may be given: entries up to it are
    /// on disk. Past it, an entry may be lost to a crash, and its key given
    /// to another entry after the restart.
    pub fn durable(&self) -> u64 {
        self.tail().durable
    }

    /// Runs `flush` (of the store the journal is in) and, if it works, makes
    /// every entry appended before it visible to durable consumers.
    pub fn flushed_by<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        // Every key up to `newest` was inserted before the flush begins (the
        // tail moves only once the insert is done), so the flush covers it.
        let newest = self.newest();
        flush()?;
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.durable = tail.durable.max(newest);
        // Under the lock a waiting fetch checks under: no wake-up is lost.
        self.arrived.notify_all();
        Ok(())
    }

    /// Resolves after the next append (or at once if one came since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// JetStream has every entry up to `key`: the bridge's cursor moves there.
    pub fn acked(&self, key: u64) -> sled::Result<()> {
        match self.acked_by(BRIDGE, key) {
            Err(ConsumerError::Storage(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// `consumer` is done with every entry up to `key`: its cursor moves
    /// there (never back, never past the newest), and what every consumer
    /// is done with goes (durable at the next [`Journal::flush`]).
    pub fn acked_by(&self, consumer: &str, key: u64) -> Result<u64, ConsumerError> {
        let key = key.min(self.newest());
        let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = {
            let mut consumers = self.consumers_mut();
            let c = consumers.get_mut(consumer).ok_or_else(|| ConsumerError::Unknown(consumer.into()))?;
            c.last_active = Instant::now();
            c.inactive = false;
            if key <= c.cursor {
                return Ok(c.cursor);
            }
            self.disk()?.meta.insert(cursor_key(consumer), &key.to_be_bytes())?;
            c.cursor = key;
            c.cursor_cum = self.cum_through(key)?;
            key
        };
        self.trim_locked()?;
        Ok(cursor)
    }

    /// Removes what every consumer is done with.
    fn trim(&self) -> sled::Result<()> {
        let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
        self.trim_locked()
    }

    fn trim_locked(&self) -> sled::Result<()> {
        let everyone = self.consumers().values().map(|c| c.cursor).min().unwrap_or(u64::MAX);
        self.disk()?.entries.drop_through(everyone)
    }

    /// The last key JetStream acknowledged.
    pub fn cursor(&self) -> sled::Result<u64> {
        self.cursor_of(BRIDGE)
    }

    /// The last key `consumer` is done with.
    pub fn cursor_of(&self, consumer: &str) -> sled::Result<u64> {
        match self.consumers().get(consumer) {
            Some(c) => Ok(c.cursor),
            None => read_u64(&self.disk()?.meta, &cursor_key(consumer)),
        }
    }

    /// The newest entry's key.
    pub fn newest(&self) -> u64 {
        self.tail().next - 1
    }

    pub fn flush(&self) -> sled::Result<()> {
        let db = self.disk()?.db.clone();
        self.flushed_by(|| db.flush().map(|_| ()))
    }

    /// `consumer`'s backlog and its bounds as JSON (`hub bridge status`,
    /// `hub sparkplug status`), `null` for a consumer the journal lacks.
    pub fn backlog_json(&self, consumer: &str) -> serde_json::Value {
        match self.backlog_of(consumer) {
            Some(((records, bytes), max)) => serde_json::json!({
                "records": records, "bytes": bytes, "max_records": max.0, "max_bytes": max.1,
            }),
            None => serde_json::Value::Null,
        }
    }

    /// `consumer`'s backlog and bounds as `plantd_<prefix>_backlog_*` and
    /// `_max_backlog_*` gauges; `waiting` is the records' help (what they wait for).
    pub fn collect_backlog(
        &self,
        consumer: &str,
        prefix: &str,
        waiting: &'static str,
        out: &mut crate::metrics::Families,
    ) {
        let Some(((records, bytes), max)) = self.backlog_of(consumer) else { return };
        out.gauge(&format!("{prefix}_backlog_records"), waiting, vec![], records);
        out.gauge(&format!("{prefix}_backlog_bytes"), "Bytes of them.", vec![], bytes);
        out.gauge(&format!("{prefix}_max_backlog_records"), "Waiting samples, at most.", vec![], max.0);
        out.gauge(&format!("{prefix}_max_backlog_bytes"), "Waiting bytes, at most.", vec![], max.1);
    }

    /// `consumer`'s backlog (records, bytes) and its bounds (records, bytes).
    pub fn backlog_of(&self, consumer: &str) -> Option<((u64, u64), (u64, u64))> {
        let tail = self.tail();
        let consumers = self.consumers();
        let c = consumers.get(consumer)?;
        Some((c.backlog(tail.next - 1, tail.cum), (c.spec.max_records, c.spec.max_bytes)))
    }

    /// Entries some consumer still needs, and their bytes.
    pub fn backlog(&self) -> (u64, u64) {
        let tail = self.tail();
        let consumers = self.consumers();
        let oldest = consumers.values().min_by_key(|c| c.cursor);
        oldest.map_or((0, 0), |c| c.backlog(tail.next - 1, tail.cum))
    }
}

/// The entry stored in `value` (after its cumulative offset).
fn decode(value: &[u8]) -> Option<Entry> {
    proto::codec::decode(value.get(8..)?).ok()
}

/// The journal's cumulative byte count before the entry in `value`.
fn offset_of(value: &[u8]) -> u64 {
    value.get(..8).map_or(0, key_of)
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> sled::Result<u64> {
    Ok(tree.get(key)?.map_or(0, |v| key_of(&v)))
}

/// Moves the entries of a journal written before segments and cumulative
/// offsets into `entries`, keys unchanged.
fn migrate(db: &sled::Db, entries: &Segments) -> sled::Result<()> {
    if !db.tree_names().iter().any(|n| &n[..] == OLD_ENTRIES.as_bytes()) {
        return Ok(());
    }
    let old = db.open_tree(OLD_ENTRIES)?;
    let (mut cum, mut moved) = (0u64, 0u64);
    for item in old.iter() {
        let (key, value) = item?;
        let mut new = cum.to_be_bytes().to_vec();
        new.extend_from_slice(&value);
        cum += stored(&new);
        entries.insert(key_of(&key), vec![new])?;
        moved += 1;
    }
    db.drop_tree(OLD_ENTRIES)?;
    if moved > 0 {
        log::info!("journal: moved {moved} entries to the journal's new layout");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
