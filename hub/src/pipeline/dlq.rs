//! The dead-letter store: messages a stage gave up on, with the error, the
//! attempts and the stage, in sled under `data_dir/pipelines`. An entry is
//! flushed before the stage acknowledges the message upstream, so a dead
//! letter is never lost with the message.
//!
//! Replay marks entries; each pipeline's source sends its marked entries
//! again into the stage that gave up on them, and removes an entry only when
//! the pipeline acknowledges it (a replay that fails again makes a new entry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use proto::hub::DlqCommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub pipeline: String,
    pub stage: String,
    /// Stages before it: a replay skips them.
    pub position: u8,
    pub error: String,
    pub attempts: u32,
    /// When it was dead-lettered, in ns since the Unix epoch.
    pub at_ns: i64,
    pub body: Vec<u8>,
    /// Marked for replay.
    pub replay: bool,
}

impl Letter {
    fn to_json(&self, id: u64, with_body: bool) -> Value {
        let at = jiff::Timestamp::from_nanosecond(self.at_ns as i128).map(|t| t.to_string()).ok();
        let mut j = json!({
            "id": id, "pipeline": self.pipeline, "stage": self.stage, "failure": self.error,
            // Not "error": that key means the command failed, to `hub` and other clients.
            "attempts": self.attempts, "at": at, "bytes": self.body.len(), "replay": self.replay,
        });
        if with_body {
            j["body"] = match serde_json::from_slice::<Value>(&self.body) {
                Ok(v) => v,
                Err(_) => Value::String(String::from_utf8_lossy(&self.body).into_owned()),
            };
        }
        j
    }
}

pub struct Dlq {
    path: PathBuf,
    /// `None` only while the store is being opened again.
    disk: RwLock<Option<Disk>>,
    next: Mutex<u64>,
    /// Entries per pipeline.
    counts: Mutex<HashMap<String, u64>>,
    /// Counts replay requests: a source that sees it change looks for marked entries.
    pub replay_generation: AtomicU64,
    pub undecodable: AtomicU64,
    /// Damage found and recovered from when the store was opened.
    pub recovery: Option<stores::Recovery>,
    /// Why the last write failed for I/O, until the store is opened again
    /// (sled fails every write after one I/O error).
    failure: Mutex<Option<String>>,
    reopens: AtomicU64,
}

/// The open store: sled's handles (reference counted) and its count of flushes.
#[derive(Clone)]
struct Disk {
    db: sled::Db,
    /// Counts flushes, so a log cut short is noticed at the next start.
    generation: Arc<stores::Generation>,
    letters: sled::Tree,
}

impl Disk {
    fn new(path: &Path, opened: &stores::Opened) -> Result<(Disk, Option<stores::Recovery>), DlqError> {
        let (generation, loss) = stores::Generation::open(path, opened)?;
        let letters = opened.db.open_tree("dlq.v1")?;
        Ok((Disk { db: opened.db.clone(), generation: Arc::new(generation), letters }, loss))
    }
}

fn config() -> sled::Config {
    sled::Config::new().cache_capacity(4 << 20).flush_every_ms(Some(1000))
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("the dead-letter store: {0}")]
    Open(#[from] stores::OpenError),
    #[error("dead-letter store: {}", stores::describe(.0))]
    Store(#[from] sled::Error),
}

impl Dlq {
    pub fn open(data_dir: &Path) -> Result<Dlq, DlqError> {
        let path = data_dir.join("pipelines");
        // Damage is set aside and what can be read salvaged: the hub starts.
        let opened = stores::open(&path, config())?;
        let (disk, loss) = Disk::new(&path, &opened)?;
        let recovery = opened.recovery.or(loss);
        let (counts, undecodable) = count(&disk.letters)?;
        let next = disk.letters.last()?.map_or(0, |(k, _)| key_of(&k)) + 1;
        Ok(Dlq {
            path,
            disk: RwLock::new(Some(disk)),
            next: Mutex::new(next),
            counts: Mutex::new(counts),
            replay_generation: AtomicU64::new(0),
            undecodable: AtomicU64::new(undecodable),
            recovery,
            failure: Mutex::new(None),
            reopens: AtomicU64::new(0),
        })
    }

    /// The open store's handles; an error while it is being opened again.
    fn disk(&self) -> sled::Result<Disk> {
        let disk = self.disk.read().unwrap_or_else(|e| e.into_inner()).clone();
        disk.ok_or_else(|| {
            sled::Error::Io(std::io::Error::other("the dead-letter store is being opened again"))
        })
    }

    /// Notes an I/O failure: the store is opened again once the disk has room.
    fn note<T>(&self, result: sled::Result<T>) -> sled::Result<T> {
        if let Err(e @ sled::Error::Io(_)) = &result {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                log::error!(
                    "dead-letter store: {}; it is opened again once the disk has room",
                    stores::describe(e)
                );
            }
            *failure = Some(stores::describe(e));
        }
        result
    }

    /// Why the store does not write now, if it does not.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Times the store was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Relaxed)
    }

    /// Lets go of the store and opens it again, after a failure: what it
    /// holds on disk is counted again (a letter whose flush failed was never
    /// acknowledged upstream: its stage dead-letters it again).
    pub fn reopen(&self) -> Result<(), DlqError> {
        let mut next = lock(&self.next);
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = None;
        let opened = stores::reopen(&self.path, config())?;
        let (disk, loss) = Disk::new(&self.path, &opened)?;
        for recovery in opened.recovery.iter().chain(&loss) {
            log::error!("dead-letter store: {}", recovery.describe());
        }
        let (counts, undecodable) = count(&disk.letters)?;
        *next = (*next).max(disk.letters.last()?.map_or(0, |(k, _)| key_of(&k)) + 1);
        *lock(&self.counts) = counts;
        self.undecodable.store(undecodable, Relaxed);
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = Some(disk);
        *lock(&self.failure) = None;
        self.reopens.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Until `signal`: after a failure, opens the store again once the file
    /// system has room (see [`stores::heal`]).
    pub fn heal(&self, signal: &transport::ShutdownWatch) {
        stores::heal(
            "dead-letter",
            &self.path,
            |wait| signal.sleep(wait),
            || self.failure().is_some(),
            || self.reopen(),
        );
    }

    /// Stores `letter` durably (flushed before returning), unless its
    /// pipeline holds `max` already: then an error, and the stage waits.
    pub fn put(&self, letter: &Letter, max: u64) -> Result<u64, String> {
        if self.count(&letter.pipeline) >= max {
            return Err(format!(
                "the dead-letter store holds {max} letters of this pipeline, its dlq_max_records"
            ));
        }
        let id = {
            let mut next = lock(&self.next);
            let id = *next;
            *next += 1;
            id
        };
        let disk = self.disk().map_err(|e| stores::describe(&e))?;
        let stored = disk.letters.insert(id.to_be_bytes(), proto::codec::encode(letter));
        let stored = stored.and_then(|_| disk.generation.flush(&disk.db));
        self.note(stored)
            .map_err(|e| format!("the dead-letter store cannot write: {}", stores::describe(&e)))?;
        *lock(&self.counts).entry(letter.pipeline.clone()).or_insert(0) += 1;
        Ok(id)
    }

    /// Closes cleanly once the pipelines have stopped (see [`stores::Generation::close`]).
    pub fn close(&self) {
        if let Ok(disk) = self.disk() {
            disk.generation.close();
        }
    }

    pub fn count(&self, pipeline: &str) -> u64 {
        lock(&self.counts).get(pipeline).copied().unwrap_or(0)
    }

    pub fn get(&self, id: u64) -> sled::Result<Option<Letter>> {
        Ok(self.disk()?.letters.get(id.to_be_bytes())?.and_then(|v| proto::codec::decode(&v).ok()))
    }

    /// Removes entry `id` (replayed and acknowledged, or purged).
    pub fn remove(&self, id: u64) -> sled::Result<bool> {
        let Some(old) = self.note(self.disk()?.letters.remove(id.to_be_bytes()))? else { return Ok(false) };
        if let Ok(l) = proto::codec::decode::<Letter>(&old) {
            if let Some(n) = lock(&self.counts).get_mut(&l.pipeline) {
                *n = n.saturating_sub(1);
            }
        }
        Ok(true)
    }

    /// Every entry, oldest first (bounded: each pipeline keeps at most its dlq_max_records).
    pub fn all(&self) -> sled::Result<Vec<(u64, Letter)>> {
        let mut out = Vec::new();
        for item in self.disk()?.letters.iter() {
            let (k, v) = item?;
            if let Ok(l) = proto::codec::decode(&v) {
                out.push((key_of(&k), l));
            }
        }
        Ok(out)
    }

    /// Entries of `pipeline` marked for replay, up to `max`, skipping `busy` ones.
    pub fn marked(
        &self,
        pipeline: &str,
        max: usize,
        busy: impl Fn(u64) -> bool,
    ) -> sled::Result<Vec<(u64, Letter)>> {
        let mut out = Vec::new();
        for item in self.disk()?.letters.iter() {
            let (k, v) = item?;
            let id = key_of(&k);
            match proto::codec::decode::<Letter>(&v) {
                Ok(l) if l.replay && l.pipeline == pipeline && !busy(id) => out.push((id, l)),
                _ => {}
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Marks entry `id` (or every entry) for replay; how many were marked.
    pub fn mark(&self, id: Option<u64>) -> sled::Result<u64> {
        let mut marked = 0;
        for (key, mut letter) in self.all()? {
            if id.is_some_and(|id| id != key) || letter.replay {
                continue;
            }
            letter.replay = true;
            self.note(self.disk()?.letters.insert(key.to_be_bytes(), proto::codec::encode(&letter)))?;
            marked += 1;
        }
        self.flush()?;
        self.replay_generation.fetch_add(1, Relaxed);
        Ok(marked)
    }

    /// Removes entries older than `older_than_ns` ago (all with `None`); how many.
    pub fn purge(&self, older_than_ns: Option<i64>, now_ns: i64) -> sled::Result<u64> {
        let mut removed = 0;
        for (key, letter) in self.all()? {
            if older_than_ns.is_none_or(|age| now_ns - letter.at_ns > age) && self.remove(key)? {
                removed += 1;
            }
        }
        self.flush()?;
        Ok(removed)
    }

    pub fn flush(&self) -> sled::Result<()> {
        self.note(self.disk()?.db.flush().map(|_| ()))
    }

    /// Answers a `hub dlq …` request, as JSON.
    pub fn command(&self, command: DlqCommand, now_ns: i64) -> Value {
        let result = match command {
            DlqCommand::List => self.all().map(
                |all| json!({"letters": all.iter().map(|(id, l)| l.to_json(*id, false)).collect::<Vec<_>>()}),
            ),
            DlqCommand::Show(id) => self.get(id).map(|l| match l {
                Some(l) => l.to_json(id, true),
                None => json!({"error": format!("no dead letter {id}")}),
            }),
            DlqCommand::ReplayAll => self.mark(None).map(|n| json!({"replaying": n})),
            DlqCommand::Replay(id) => self.mark(Some(id)).map(|n| match n {
                0 => json!({"error": format!("no dead letter {id} (or it is being replayed)")}),
                n => json!({"replaying": n}),
            }),
            DlqCommand::Purge(older_than_s) => {
                let older_than_ns =
                    older_than_s.map(|s| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1_000_000_000));
                self.purge(older_than_ns, now_ns).map(|n| json!({"purged": n}))
            }
        };
        result.unwrap_or_else(|e| json!({"error": format!("dead-letter store: {e}")}))
    }
}

/// Letters per pipeline, and how many cannot be decoded.
fn count(letters: &sled::Tree) -> sled::Result<(HashMap<String, u64>, u64)> {
    let (mut counts, mut undecodable) = (HashMap::new(), 0);
    for item in letters.iter() {
        let (_, value) = item?;
        match proto::codec::decode::<Letter>(&value) {
            Ok(l) => *counts.entry(l.pipeline).or_insert(0) += 1,
            Err(_) => undecodable += 1,
        }
    }
    Ok((counts, undecodable))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(at_ns: i64) -> Letter {
        Letter {
            pipeline: "archive".into(),
            stage: "transform".into(),
            position: 0,
            error: "boom".into(),
            attempts: 3,
            at_ns,
            body: br#"{"seq":1}"#.to_vec(),
            replay: false,
        }
    }

    #[test]
    fn letters_are_kept_marked_for_replay_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let dlq = Dlq::open(dir.path()).unwrap();
            let id = dlq.put(&letter(0), 2).unwrap();
            dlq.put(&letter(100), 2).unwrap();
            assert!(dlq.put(&letter(0), 2).is_err(), "bounded per pipeline");
            id
        };
        let dlq = Dlq::open(dir.path()).unwrap();
        assert_eq!(dlq.count("archive"), 2, "durable");
        assert_eq!(dlq.command(DlqCommand::Show(id), 0)["body"]["seq"], 1);
        assert!(dlq.marked("archive", 10, |_| false).unwrap().is_empty());
        assert_eq!(dlq.command(DlqCommand::Replay(id), 0)["replaying"], 1);
        assert_eq!(dlq.marked("archive", 10, |_| false).unwrap()[0].0, id);
        assert_eq!(dlq.purge(Some(150), 200).unwrap(), 1, "only the older one");
        assert_eq!(dlq.command(DlqCommand::Purge(Some(1)), 200)["purged"], 0, "none older than a second");
        assert_eq!(dlq.command(DlqCommand::List, 0)["letters"].as_array().unwrap().len(), 1);
        assert!(dlq.command(DlqCommand::Show(999), 0)["error"].is_string());
    }
}
