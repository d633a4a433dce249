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
//! key before an earlier one (it reads in key order and would skip it). Each
//! entry is stored after the journal's cumulative byte count before it, so a
//! consumer's backlog in bytes is two numbers apart. Entries are stored in
//! segments of consecutive keys ([`segments`]), which go whole once every
//! consumer is past them.

pub mod consumers;
mod segments;

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Instant;

use proto::consumer::{Policy, ResetTo};
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
            Some((k, v)) => Tail { next: k + 1, cum: offset_of(&v) + stored(&v) },
            None => Tail::default(),
        };
        // Keys keep rising over restarts, even with an empty journal.
        for cursor in cursors {
            tail.next = tail.next.max(cursor + 1);
        }
        tail.next = tail.next.max(1);
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
}

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
        };
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
            false => Err(super::watermarks::reopening()),
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
        let names: Vec<String> = self.consumers().keys().cloned().collect();
        let cursors =
            names.iter().map(|n| read_u64(&disk.meta, &cursor_key(n))).collect::<sled::Result<Vec<_>>>()?;
        let stored = disk.tail(cursors.iter().copied())?;
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            *tail = Tail { next: tail.next.max(stored.next), cum: tail.cum.max(stored.cum) };
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
        self.arrived.notify_all();
        Ok(())
    }

    /// Resolves after the next append (or at once if one came since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// Waits until the journal has an entry after `after`, or `deadline`;
    /// true if it has.
    pub fn wait_after(&self, after: u64, deadline: Instant) -> bool {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if tail.next - 1 > after {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tail = self.arrived.wait_timeout(tail, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Up to `max` entries after key `after`, in order. An entry that cannot
    /// be decoded (a fault of ours) is returned as `None` so the caller can
    /// count it and move past it.
    pub fn read(&self, after: u64, max: usize) -> sled::Result<Vec<(u64, Option<Entry>)>> {
        let mut out = Vec::new();
        let disk = self.disk()?;
        for item in disk.entries.from(after + 1).take(max) {
            let (key, value) = item?;
            out.push((key, decode(&value)));
        }
        Ok(out)
    }

    /// Up to `max` entries of `consumer`'s topics after `after` (or after its
    /// cursor, if that is further on), of at most `budget` bytes (topic and
    /// payload; one entry at least), looking at no more than `scan` entries:
    /// each goes to `take(key, topic, payload)`, in order.
    pub fn fetch(
        &self,
        consumer: &str,
        after: u64,
        (max, scan, budget): (usize, usize, usize),
        mut take: impl FnMut(u64, &str, &[u8]),
    ) -> Result<Fetched, ConsumerError> {
        let (from, spec) = {
            let mut consumers = self.consumers_mut();
            let c = consumers.get_mut(consumer).ok_or_else(|| ConsumerError::Unknown(consumer.into()))?;
            c.last_active = Instant::now();
            c.inactive = false;
            (after.max(c.cursor), c.spec.clone())
        };
        let mut fetched = Fetched { next: from, ..Fetched::default() };
        let mut bytes = 0;
        let disk = self.disk()?;
        for item in disk.entries.from(from + 1).take(scan) {
            let (key, value) = item?;
            match value.get(8..).map(proto::codec::decode::<EntryRef<'_>>) {
                Some(Ok(entry)) if spec.covers(entry.topic) => {
                    bytes += entry.topic.len() + entry.payload.len();
                    if bytes > budget && fetched.count > 0 {
                        break;
                    }
                    take(key, entry.topic, entry.payload);
                    (fetched.count, fetched.next) = (fetched.count + 1, key);
                    if fetched.count >= max {
                        break;
                    }
                    continue;
                }
                Some(Ok(_)) => {}
                _ => fetched.undecodable += 1,
            }
            fetched.next = key;
        }
        if let Some(c) = self.consumers_mut().get_mut(consumer) {
            c.delivered += fetched.count as u64;
        }
        Ok(fetched)
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
        self.disk()?.db.flush().map(|_| ())
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

    /// Adds a durable consumer, past the newest entry, unless `max` durable
    /// consumers exist or its owner has `max_per_owner` of the ones clients made.
    pub fn create(
        &self,
        spec: Spec,
        max: usize,
        max_per_owner: usize,
    ) -> Result<serde_json::Value, ConsumerError> {
        let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
        let mut consumers = self.consumers_mut();
        if consumers.contains_key(&spec.name) {
            return Err(ConsumerError::Exists(spec.name));
        }
        let durable = consumers.values().filter(|c| c.spec.origin != Origin::Hub).count();
        if durable >= max {
            return Err(ConsumerError::Refused(format!(
                "the hub has {max} durable consumers, its max_consumers"
            )));
        }
        let mine = consumers.values().filter(|c| c.spec.origin == Origin::Made && c.spec.owner == spec.owner);
        if spec.origin == Origin::Made && mine.count() >= max_per_owner {
            return Err(ConsumerError::Refused(format!(
                "{} has made {max_per_owner} consumers, its max_consumers_per_identity: remove one first",
                spec.owner.as_deref().unwrap_or("this client")
            )));
        }
        let tail = self.tail();
        let cursor = tail.next - 1;
        let meta = &self.disk()?.meta;
        meta.insert(spec_key(&spec.name), serde_json::to_vec(&spec).expect("a spec is JSON"))?;
        meta.insert(cursor_key(&spec.name), &cursor.to_be_bytes())?;
        let consumer = Consumer::new(spec, cursor, tail.cum, Instant::now());
        let shown = consumer.to_json(cursor, tail.cum, Instant::now());
        consumers.insert(consumer.spec.name.clone(), consumer);
        Ok(shown)
    }

    /// Removes a durable consumer (the hub's own are not removed this way).
    pub fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        {
            let mut consumers = self.consumers_mut();
            match consumers.get(name) {
                None => return Err(ConsumerError::Unknown(name.into())),
                Some(c) if c.spec.origin == Origin::Hub => {
                    return Err(ConsumerError::Refused(format!(
                        "'{name}' is the hub's own (the bridge or a pipeline): change the hub's config"
                    )))
                }
                Some(_) => {}
            }
            consumers.remove(name);
            let meta = &self.disk()?.meta;
            meta.remove(spec_key(name))?;
            meta.remove(cursor_key(name))?;
        }
        self.trim()?;
        Ok(())
    }

    /// Moves a consumer's cursor to the oldest entry held, or past the newest.
    pub fn reset(&self, name: &str, to: ResetTo) -> Result<serde_json::Value, ConsumerError> {
        let oldest = self.disk()?.entries.first()?.map(|(k, _)| k.saturating_sub(1));
        {
            let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
            let mut consumers = self.consumers_mut();
            let c = consumers.get_mut(name).ok_or_else(|| ConsumerError::Unknown(name.into()))?;
            let newest = self.newest();
            let cursor = match to {
                ResetTo::Start => oldest.unwrap_or(newest).min(c.cursor),
                ResetTo::End => newest,
            };
            self.disk()?.meta.insert(cursor_key(name), &cursor.to_be_bytes())?;
            c.cursor = cursor;
            c.cursor_cum = self.cum_through(cursor)?;
        }
        self.trim()?;
        self.show(name).ok_or_else(|| ConsumerError::Unknown(name.into()))
    }

    /// A consumer's definition, if it exists.
    pub fn spec_of(&self, name: &str) -> Option<Spec> {
        self.consumers().get(name).map(|c| c.spec.clone())
    }

    /// A consumer, as `hub consumers show` prints it.
    pub fn show(&self, name: &str) -> Option<serde_json::Value> {
        let tail = self.tail();
        self.consumers().get(name).map(|c| c.to_json(tail.next - 1, tail.cum, Instant::now()))
    }

    /// Every consumer, by name.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let tail = self.tail();
        let now = Instant::now();
        self.consumers().values().map(|c| c.to_json(tail.next - 1, tail.cum, now)).collect()
    }

    /// Whether a durable consumer reads `topic` (for ingest's gate: a
    /// consumer of the topic is there to hear it).
    pub fn covers(&self, topic: &str) -> bool {
        self.consumers().values().any(|c| c.spec.origin != Origin::Hub && c.spec.covers(topic))
    }

    /// Reports consumers idle past their bound (once each), and removes
    /// those whose policy says so. Returns (name, removed) of each reported.
    pub fn sweep_inactive(&self, now: Instant) -> Vec<(String, bool)> {
        let mut reported = Vec::new();
        for c in self.consumers_mut().values_mut() {
            if !c.inactive && c.idle_past(now) {
                c.inactive = true;
                reported.push((c.spec.name.clone(), c.spec.remove_when_inactive));
            }
        }
        for (name, remove) in &reported {
            if *remove {
                if let Err(e) = self.delete(name) {
                    log::warn!("journal: removing inactive consumer '{name}': {e}");
                }
            }
        }
        reported
    }

    /// Each consumer's backlog, bounds, skips and deliveries, for `/metrics`.
    pub fn collect(&self, out: &mut crate::metrics::Families) {
        let tail = self.tail();
        let consumers = self.consumers();
        out.gauge(
            "consumers",
            "Durable consumers of ingest's journal.",
            vec![],
            consumers.values().filter(|c| c.spec.origin != Origin::Hub).count() as u64,
        );
        for c in consumers.values() {
            let labels = || vec![("consumer", c.spec.name.clone())];
            let (records, bytes) = c.backlog(tail.next - 1, tail.cum);
            out.gauge("consumer_backlog_records", "Samples waiting for a consumer.", labels(), records);
            out.gauge("consumer_backlog_bytes", "Bytes waiting for a consumer.", labels(), bytes);
            out.gauge(
                "consumer_max_records",
                "A consumer's bound, in samples.",
                labels(),
                c.spec.max_records,
            );
            out.gauge("consumer_max_bytes", "A consumer's bound, in bytes.", labels(), c.spec.max_bytes);
            out.gauge("consumer_cursor", "The last position a consumer acknowledged.", labels(), c.cursor);
            out.gauge(
                "consumer_inactive",
                "1 while a consumer is idle past its bound.",
                labels(),
                c.inactive.into(),
            );
            out.counter(
                "consumer_skipped",
                "Samples a drop-oldest consumer skipped at its bounds.",
                labels(),
                c.skipped,
            );
            out.counter("consumer_delivered", "Samples fetched by a consumer.", labels(), c.delivered);
        }
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(seq: u64) -> Entry {
        entry_on("org.plantd.Metric.pump-1.t", seq)
    }

    fn entry_on(topic: &str, seq: u64) -> Entry {
        Entry {
            topic: topic.into(),
            payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            agent: "pump-1".into(),
            epoch: 7,
            seq,
            historical: false,
        }
    }

    fn bridge(max_records: u64) -> Spec {
        Spec::hub(BRIDGE, max_records, 1 << 20)
    }

    fn durable(name: &str, policy: Policy, max_records: u64, max_bytes: u64) -> Spec {
        Spec {
            policy,
            origin: Origin::Made,
            inactive_after_ms: Some(1000),
            remove_when_inactive: true,
            ..Spec::hub(name, max_records, max_bytes)
        }
    }

    /// The seqs a consumer's fetch takes, and where it says to acknowledge.
    fn fetch_seqs(j: &Journal, consumer: &str, max: usize, scan: usize) -> (Vec<u64>, u64) {
        let mut seqs = Vec::new();
        let fetched = j
            .fetch(consumer, 0, (max, scan, usize::MAX), |_, _, payload| {
                let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
                seqs.push(json["seq"].as_u64().unwrap());
            })
            .unwrap();
        assert_eq!(fetched.count, seqs.len());
        (seqs, fetched.next)
    }

    fn seqs(read: &[(u64, Option<Entry>)]) -> Vec<u64> {
        read.iter().map(|(_, e)| e.as_ref().unwrap().seq).collect()
    }

    /// sled's background flusher can hold the lock a moment after the last handle is dropped.
    fn reopen(path: &std::path::Path) -> sled::Db {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match sled::open(path) {
                Ok(db) => return db,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    #[test]
    fn entries_wait_in_order_until_acked_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, vec![bridge(5)]).unwrap();
            assert!(j.make_room(50, 100).is_ok(), "an empty journal takes any one batch");
            j.append(&[entry(1), entry(2)]).unwrap();
            j.append(&[entry(3)]).unwrap();
            assert!(j.make_room(2, 100).is_ok());
            let full = j.make_room(3, 100).unwrap_err();
            assert_eq!((full.consumer.as_str(), full.records), (BRIDGE, 3), "bounded in records");
            let read = j.read(0, 10).unwrap();
            assert_eq!(seqs(&read), [1, 2, 3]);
            j.acked(read[1].0).unwrap();
            assert_eq!(j.backlog().0, 1);
            j.flush().unwrap();
        }
        let db = reopen(dir.path());
        let j = Journal::open(&db, vec![bridge(5)]).unwrap();
        let cursor = j.cursor().unwrap();
        assert_eq!(seqs(&j.read(cursor, 10).unwrap()), [3], "what was acked does not come back");
        j.append(&[entry(4)]).unwrap();
        let keys: Vec<u64> = j.read(cursor, 10).unwrap().iter().map(|(k, _)| *k).collect();
        assert!(keys[1] > keys[0], "keys keep rising after a restart: {keys:?}");
    }

    #[test]
    fn an_entry_stays_until_every_consumer_is_done_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let consumers = || vec![bridge(100), Spec::hub("pipeline.archive", 100, 1 << 20)];
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, consumers()).unwrap();
            j.append(&[entry(1), entry(2), entry(3)]).unwrap();
            let keys: Vec<u64> = j.read(0, 10).unwrap().iter().map(|(k, _)| *k).collect();
            j.acked(keys[2]).unwrap();
            assert_eq!(j.backlog().0, 3, "the pipeline has not read them yet");
            j.acked_by("pipeline.archive", keys[0]).unwrap();
            assert_eq!(j.backlog().0, 2, "both are done with the first");
            assert!(j.acked_by("nobody", keys[2]).is_err(), "an unknown consumer moves nothing");
            assert_eq!(j.backlog().0, 2);
            j.flush().unwrap();
        }
        let db = reopen(dir.path());
        let j = Journal::open(&db, consumers()).unwrap();
        let cursor = j.cursor_of("pipeline.archive").unwrap();
        assert_eq!(seqs(&j.read(cursor, 10).unwrap()), [2, 3], "each consumer resumes from its own cursor");
        assert_eq!(j.read(j.cursor().unwrap(), 10).unwrap().len(), 0);
    }

    #[test]
    fn without_consumers_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, Vec::new()).unwrap();
        j.append(&[entry(1), entry(2)]).unwrap();
        assert_eq!(j.backlog(), (0, 0));
        assert!(j.make_room(1_000_000, 1 << 40).is_ok());
    }

    #[test]
    fn a_drop_oldest_consumer_skips_ahead_and_a_block_one_holds() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![durable("fast", Policy::DropOldest, 4, 1 << 20)]).unwrap();
        for seq in 1..=10 {
            j.make_room(1, 100).unwrap();
            j.append(&[entry(seq)]).unwrap();
        }
        let fast = j.show("fast").unwrap();
        assert_eq!(fast["backlog"]["records"], 4, "{fast}");
        assert_eq!(fast["skipped"], 6);
        assert_eq!(fetch_seqs(&j, "fast", 100, 1000).0, [7, 8, 9, 10], "the newest are kept");
        assert_eq!(j.backlog().0, 4, "what nobody needs is gone");

        let spec = Spec { policy: Policy::Block, ..durable("slow", Policy::Block, 2, 1 << 20) };
        j.create(spec, 10, 10).unwrap();
        j.append(&[entry(11), entry(12)]).unwrap();
        let full = j.make_room(1, 100).unwrap_err();
        assert_eq!(full, Full { consumer: "slow".into(), records: 2, bytes: full.bytes });
        j.acked_by("slow", j.newest()).unwrap();
        assert!(j.make_room(1, 100).is_ok());
    }

    #[test]
    fn backlog_bytes_come_from_the_cumulative_offsets() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, vec![Spec::hub("p", 100, 1 << 20)]).unwrap();
            j.append(&[entry(1), entry(2), entry(3)]).unwrap();
            let ((records, bytes), _) = j.backlog_of("p").unwrap();
            assert_eq!((records, bytes), (3, j.backlog().1));
            let keys: Vec<u64> = j.read(0, 10).unwrap().iter().map(|(k, _)| *k).collect();
            j.acked_by("p", keys[0]).unwrap();
            assert_eq!(j.backlog_of("p").unwrap().0, (2, j.backlog().1), "{:?}", j.backlog());
            j.flush().unwrap();
        }
        let db = reopen(dir.path());
        let j = Journal::open(&db, vec![Spec::hub("p", 100, 1 << 20)]).unwrap();
        assert_eq!(j.backlog_of("p").unwrap().0, (2, j.backlog().1), "after reopening");
    }

    #[test]
    fn fetch_reads_its_topics_only_and_next_passes_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, Vec::new()).unwrap();
        let spec = Spec {
            prefixes: vec!["org.plantd.Metric.pump-2.".into()],
            ..durable("p2", Policy::DropOldest, 100, 1 << 20)
        };
        j.create(spec, 10, 10).unwrap();
        j.append(&[entry(1), entry_on("org.plantd.Metric.pump-2.t", 2), entry(3)]).unwrap();
        let (seqs, next) = fetch_seqs(&j, "p2", 10, 100);
        assert_eq!(seqs, [2]);
        assert_eq!(next, j.newest(), "past the pump-1 sample after it");
        assert!(j.covers("org.plantd.Metric.pump-2.t") && !j.covers("org.plantd.Metric.pump-1.t"));
    }

    #[test]
    fn made_consumers_persist_and_config_ones_follow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let declared = Spec { origin: Origin::Declared, ..durable("historian", Policy::Block, 10, 1 << 20) };
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, vec![declared.clone()]).unwrap();
            j.create(durable("tap", Policy::DropOldest, 10, 1 << 20), 10, 10).unwrap();
            assert!(matches!(
                j.create(durable("tap", Policy::DropOldest, 1, 1), 10, 10),
                Err(ConsumerError::Exists(_))
            ));
            assert!(matches!(
                j.create(durable("two", Policy::DropOldest, 1, 1), 2, 10),
                Err(ConsumerError::Refused(_))
            ));
            j.append(&[entry(1)]).unwrap();
            j.flush().unwrap();
        }
        {
            let db = reopen(dir.path());
            let j = Journal::open(&db, vec![declared]).unwrap();
            let names: Vec<String> =
                j.list().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
            assert_eq!(names, ["historian", "tap"]);
            assert_eq!(fetch_seqs(&j, "tap", 10, 10).0, [1], "its cursor came back");
            j.flush().unwrap();
        }
        let db = reopen(dir.path());
        let j = Journal::open(&db, Vec::new()).unwrap();
        assert!(j.spec_of("historian").is_none(), "no longer declared: gone");
        assert!(j.spec_of("tap").is_some());
    }

    #[test]
    fn reset_delete_and_inactivity() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![Spec::hub("keep", 100, 1 << 20)]).unwrap();
        j.append(&[entry(1), entry(2)]).unwrap();
        j.create(durable("late", Policy::DropOldest, 10, 1 << 20), 10, 10).unwrap();
        assert_eq!(j.show("late").unwrap()["backlog"]["records"], 0, "a new consumer starts past the newest");
        j.reset("late", ResetTo::Start).unwrap();
        assert_eq!(fetch_seqs(&j, "late", 10, 10).0, [1, 2], "what the journal still holds");
        assert!(matches!(j.delete("keep"), Err(ConsumerError::Refused(_))), "the hub's own stay");
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(j.sweep_inactive(later), [("late".to_string(), true)]);
        assert!(j.spec_of("late").is_none(), "removed by its policy");
        assert!(j.sweep_inactive(later).is_empty(), "reported once");
    }

    #[test]
    fn a_fetch_stays_within_its_budget_but_takes_one_entry_at_least() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![durable("c", Policy::Block, 100, 1 << 20)]).unwrap();
        j.append(&[entry(1), entry(2), entry(3)]).unwrap();
        let one = entry(1).topic.len() + entry(1).payload.len();
        let mut keys = Vec::new();
        let fetched = j.fetch("c", 0, (10, 10, 2 * one), |k, _, _| keys.push(k)).unwrap();
        assert_eq!((fetched.count, fetched.next), (2, keys[1]), "the third waits for the next fetch");
        let fetched = j.fetch("c", keys[1], (10, 10, 1), |_, _, _| {}).unwrap();
        assert_eq!(fetched.count, 1, "a budget smaller than one entry still takes one");
    }

    #[test]
    fn a_waiting_fetch_wakes_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = std::sync::Arc::new(Journal::open(&db, vec![bridge(100)]).unwrap());
        let newest = j.newest();
        assert!(!j.wait_after(newest, Instant::now() + Duration::from_millis(20)), "nothing came");
        let appender = {
            let j = j.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                j.append(&[entry(1)]).unwrap();
            })
        };
        let started = Instant::now();
        assert!(j.wait_after(newest, Instant::now() + Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        appender.join().unwrap();
    }

    #[test]
    fn a_journal_from_before_offsets_is_moved_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let old = db.open_tree(OLD_ENTRIES).unwrap();
        for seq in 1..=3u64 {
            old.insert(seq.to_be_bytes(), proto::codec::encode(&entry(seq))).unwrap();
        }
        let j = Journal::open(&db, vec![bridge(100)]).unwrap();
        assert_eq!(seqs(&j.read(0, 10).unwrap()), [1, 2, 3]);
        assert_eq!(j.backlog_of(BRIDGE).unwrap().0, (3, j.backlog().1));
        assert!(!db.tree_names().iter().any(|n| &n[..] == OLD_ENTRIES.as_bytes()));
    }
}
