//! The export journal: durable samples waiting for the NATS bridge, kept in
//! the ingest store beside the watermarks. One flush makes a batch's journal
//! entries and its watermarks durable together, before the agent is
//! acknowledged; the bridge removes entries only once JetStream has
//! acknowledged them, and keeps its cursor here too. So a sample is always
//! somewhere durable: in the agent's outbox, in this journal, or in the stream.
//!
//! Bounded in records and bytes: when the bridge cannot keep up (NATS down),
//! ingest answers Retry and the agents keep buffering.
//!
//! Several consumers may read it (the bridge and each pipeline fed by
//! ingest), each with its own persistent cursor; an entry goes once every
//! consumer has acknowledged it. So the slowest consumer holds the journal
//! back, and at the bounds pushes back on the agents.
//!
//! Keys are a counter, appended under a lock, so the bridge never sees a
//! later key before an earlier one (it reads in key order and would skip it).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_records: u64,
    pub max_bytes: u64,
}

/// The bridge's cursor (its key from before there were other consumers).
pub const BRIDGE: &str = "bridge";

fn cursor_key(consumer: &str) -> Vec<u8> {
    match consumer {
        BRIDGE => b"cursor".to_vec(),
        other => format!("cursor.{other}").into_bytes(),
    }
}

pub struct Journal {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    /// The next key; held while a batch is appended.
    next: Mutex<u64>,
    records: AtomicU64,
    bytes: AtomicU64,
    limits: Limits,
    /// Each consumer's cursor key in `meta`.
    consumers: Vec<(String, Vec<u8>)>,
    /// Held while cursors move and entries go, so two consumers acknowledging
    /// at once agree on what every consumer has.
    trim: Mutex<()>,
    /// Woken on every append, so the bridge publishes at once instead of polling.
    appended: tokio::sync::Notify,
}

impl Journal {
    /// Opens the journal in `db` (the ingest store) for `consumers` (at least
    /// one) and counts what is in it.
    pub fn open(db: &sled::Db, limits: Limits, consumers: &[String]) -> sled::Result<Journal> {
        let entries = db.open_tree("export.v1")?;
        let meta = db.open_tree("export.meta")?;
        let (mut records, mut bytes) = (0, 0);
        for item in entries.iter() {
            let (_, value) = item?;
            records += 1;
            bytes += value.len() as u64 + 8;
        }
        let consumers: Vec<(String, Vec<u8>)> =
            consumers.iter().map(|c| (c.clone(), cursor_key(c))).collect();
        let last = entries.last()?.map_or(0, |(k, _)| key_of(&k));
        let mut highest = last;
        for (_, key) in &consumers {
            highest = highest.max(read_u64(&meta, key)?);
        }
        let next = highest + 1;
        Ok(Journal {
            db: db.clone(),
            entries,
            meta,
            next: Mutex::new(next),
            records: AtomicU64::new(records),
            bytes: AtomicU64::new(bytes),
            limits,
            consumers,
            trim: Mutex::new(()),
            appended: tokio::sync::Notify::new(),
        })
    }

    /// Whether `records` more of `bytes` fit. An empty journal takes any
    /// one batch, however large: a batch bigger than the bounds would
    /// otherwise be refused for ever, and its agent stuck behind it.
    pub fn has_room(&self, records: u64, bytes: u64) -> bool {
        let (held, held_bytes) = (self.records.load(SeqCst), self.bytes.load(SeqCst));
        held == 0
            || (held + records <= self.limits.max_records && held_bytes + bytes <= self.limits.max_bytes)
    }

    /// Bytes `entries` would take.
    pub fn size_of(entries: &[Entry]) -> u64 {
        entries.iter().map(Entry::size).sum()
    }

    /// Appends `entries` in order (durable at the store's next flush).
    pub fn append(&self, entries: &[Entry]) -> sled::Result<()> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for (i, entry) in entries.iter().enumerate() {
            let value = proto::codec::encode(entry);
            bytes += value.len() as u64 + 8;
            batch.insert(&(*next + i as u64).to_be_bytes(), value);
        }
        self.entries.apply_batch(batch)?;
        *next += entries.len() as u64;
        self.records.fetch_add(entries.len() as u64, SeqCst);
        self.bytes.fetch_add(bytes, SeqCst);
        // A permit is kept when the bridge is not waiting yet: no wake-up is lost.
        self.appended.notify_one();
        Ok(())
    }

    /// Resolves after the next append (or at once if one came since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// Up to `max` entries after key `after`, in order. An entry that cannot
    /// be decoded (a fault of ours) is returned as `None` so the caller can
    /// count it and move past it.
    pub fn read(&self, after: u64, max: usize) -> sled::Result<Vec<(u64, Option<Entry>)>> {
        let mut out = Vec::new();
        for item in self.entries.range((after + 1).to_be_bytes()..).take(max) {
            let (key, value) = item?;
            out.push((key_of(&key), proto::codec::decode(&value).ok()));
        }
        Ok(out)
    }

    /// JetStream has every entry up to `key`: the bridge's cursor moves there.
    pub fn acked(&self, key: u64) -> sled::Result<()> {
        self.acked_by(BRIDGE, key)
    }

    /// `consumer` is done with every entry up to `key`: its cursor moves
    /// there, and what every consumer is done with goes (durable at the next
    /// [`Journal::flush`]).
    pub fn acked_by(&self, consumer: &str, key: u64) -> sled::Result<()> {
        let Some((_, cursor_key)) = self.consumers.iter().find(|(c, _)| c == consumer) else {
            return Ok(());
        };
        let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
        if key <= read_u64(&self.meta, cursor_key)? {
            return Ok(());
        }
        self.meta.insert(cursor_key, &key.to_be_bytes())?;
        let mut everyone = u64::MAX;
        for (_, k) in &self.consumers {
            everyone = everyone.min(read_u64(&self.meta, k)?);
        }
        let mut batch = sled::Batch::default();
        let (mut records, mut bytes) = (0, 0);
        for item in self.entries.range(..=everyone.to_be_bytes()) {
            let (k, value) = item?;
            records += 1;
            bytes += value.len() as u64 + 8;
            batch.remove(k);
        }
        self.entries.apply_batch(batch)?;
        self.records.fetch_sub(records.min(self.records.load(SeqCst)), SeqCst);
        self.bytes.fetch_sub(bytes.min(self.bytes.load(SeqCst)), SeqCst);
        Ok(())
    }

    /// The last key JetStream acknowledged.
    pub fn cursor(&self) -> sled::Result<u64> {
        self.cursor_of(BRIDGE)
    }

    /// The last key `consumer` is done with.
    pub fn cursor_of(&self, consumer: &str) -> sled::Result<u64> {
        read_u64(&self.meta, &cursor_key(consumer))
    }

    /// The key the next append takes, less one: the newest entry's.
    pub fn newest(&self) -> u64 {
        self.next.lock().unwrap_or_else(|e| e.into_inner()).saturating_sub(1)
    }

    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(|_| ())
    }

    /// Entries waiting, and their bytes.
    pub fn backlog(&self) -> (u64, u64) {
        (self.records.load(SeqCst), self.bytes.load(SeqCst))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

fn key_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> sled::Result<u64> {
    Ok(tree.get(key)?.map_or(0, |v| key_of(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            topic: "org.plantd.Metric.pump-1.t".into(),
            payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            agent: "pump-1".into(),
            epoch: 7,
            seq,
            historical: false,
        }
    }

    #[test]
    fn entries_wait_in_order_until_acked_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { max_records: 5, max_bytes: 1 << 20 };
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, limits, &[BRIDGE.to_string()]).unwrap();
            assert!(j.has_room(50, 100), "an empty journal takes any one batch");
            j.append(&[entry(1), entry(2)]).unwrap();
            j.append(&[entry(3)]).unwrap();
            assert!(j.has_room(2, 100) && !j.has_room(3, 100), "bounded in records");
            let read = j.read(0, 10).unwrap();
            let seqs: Vec<u64> = read.iter().map(|(_, e)| e.as_ref().unwrap().seq).collect();
            assert_eq!(seqs, [1, 2, 3]);
            j.acked(read[1].0).unwrap();
            assert_eq!(j.backlog().0, 1);
            j.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, limits, &[BRIDGE.to_string()]).unwrap();
        let cursor = j.cursor().unwrap();
        let left: Vec<u64> =
            j.read(cursor, 10).unwrap().iter().map(|(_, e)| e.as_ref().unwrap().seq).collect();
        assert_eq!(left, [3], "what was acked does not come back");
        j.append(&[entry(4)]).unwrap();
        let keys: Vec<u64> = j.read(cursor, 10).unwrap().iter().map(|(k, _)| *k).collect();
        assert!(keys[1] > keys[0], "keys keep rising after a restart: {keys:?}");
    }

    /// sled's background flusher can hold the lock a moment after the last handle is dropped.
    fn reopen(path: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match sled::open(path) {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    #[test]
    fn an_entry_stays_until_every_consumer_is_done_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { max_records: 100, max_bytes: 1 << 20 };
        let consumers = [BRIDGE.to_string(), "pipeline.archive".to_string()];
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db, limits, &consumers).unwrap();
            j.append(&[entry(1), entry(2), entry(3)]).unwrap();
            let keys: Vec<u64> = j.read(0, 10).unwrap().iter().map(|(k, _)| *k).collect();
            j.acked(keys[2]).unwrap();
            assert_eq!(j.backlog().0, 3, "the pipeline has not read them yet");
            j.acked_by("pipeline.archive", keys[0]).unwrap();
            assert_eq!(j.backlog().0, 2, "both are done with the first");
            j.acked_by("nobody", keys[2]).unwrap();
            assert_eq!(j.backlog().0, 2, "an unknown consumer moves nothing");
            j.flush().unwrap();
        }
        let db = reopen(dir.path());
        let j = Journal::open(&db, limits, &consumers).unwrap();
        let cursor = j.cursor_of("pipeline.archive").unwrap();
        let left: Vec<u64> =
            j.read(cursor, 10).unwrap().iter().map(|(_, e)| e.as_ref().unwrap().seq).collect();
        assert_eq!(left, [2, 3], "each consumer resumes from its own cursor");
        assert_eq!(j.read(j.cursor().unwrap(), 10).unwrap().len(), 0);
    }
}
