//! Ingest watermarks: per agent, the highest sequence number accepted in each
//! of its recent boot epochs, persisted in sled (one value per agent, so a
//! batch costs one read and at most one write).
//!
//! Epochs are random and never come round again, so an agent adds one per
//! boot: only the `keep` most recently used are kept (the oldest retired), and
//! the store stays bounded. A sample of a retired epoch would be accepted
//! again; that needs an agent to reboot `keep` times while holding unacked
//! samples the hub had already taken, which the default (64) makes remote.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::journal::reopening;

#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("watermark store: {}", stores::describe(.0))]
    Storage(#[from] sled::Error),
    #[error("the watermarks of {agent} are unreadable ({why}); they are left as they are")]
    Unreadable { agent: String, why: String },
}

/// One epoch's watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub epoch: u64,
    /// Highest sequence number accepted.
    pub seq: u64,
}

/// An agent's marks, most recently used first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks(pub Vec<Mark>);

impl Marks {
    /// The watermark of `epoch` (0: nothing accepted yet).
    pub fn of(&self, epoch: u64) -> u64 {
        self.0.iter().find(|m| m.epoch == epoch).map_or(0, |m| m.seq)
    }

    /// Raises `epoch`'s watermark to `seq`, moving it to the front, and
    /// retires the oldest beyond `keep`.
    pub fn raise(&mut self, epoch: u64, seq: u64, keep: usize) {
        let seq = match self.0.iter().position(|m| m.epoch == epoch) {
            Some(at) => self.0.remove(at).seq.max(seq),
            None => seq,
        };
        self.0.insert(0, Mark { epoch, seq });
        self.0.truncate(keep.max(1));
    }
}

/// The watermarks' tree, in the ingest store. Detached while the store is
/// opened again after an I/O failure (sled fails every write after one until
/// it is): meanwhile every call fails, and ingest answers Retry.
pub struct Watermarks {
    handles: RwLock<Option<(sled::Db, sled::Tree)>>,
}

const TREE: &str = "watermarks.v2";

impl Watermarks {
    pub fn new(db: &sled::Db) -> sled::Result<Watermarks> {
        let watermarks = Watermarks { handles: RwLock::new(None) };
        watermarks.attach(db)?;
        Ok(watermarks)
    }

    /// Uses `db` from now on.
    pub fn attach(&self, db: &sled::Db) -> sled::Result<()> {
        let tree = db.open_tree(TREE)?;
        *self.handles.write().unwrap_or_else(|e| e.into_inner()) = Some((db.clone(), tree));
        Ok(())
    }

    /// Lets go of the store (so it can be opened again).
    pub fn detach(&self) {
        *self.handles.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn with<T>(&self, f: impl FnOnce(&sled::Db, &sled::Tree) -> sled::Result<T>) -> sled::Result<T> {
        let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
        match handles.as_ref() {
            Some((db, tree)) => f(db, tree),
            None => Err(reopening()),
        }
    }

    pub fn get(&self, agent: &str) -> Result<Marks, WatermarkError> {
        let Some(bytes) = self.with(|_, tree| tree.get(agent.as_bytes()))? else {
            return Ok(Marks::default());
        };
        // A value we cannot read is a fault of ours, not the agent's: fail the batch, keep the value.
        proto::codec::decode(&bytes)
            .map_err(|e| WatermarkError::Unreadable { agent: agent.into(), why: e.to_string() })
    }

    pub fn put(&self, agent: &str, marks: &Marks) -> Result<(), WatermarkError> {
        self.with(|_, tree| tree.insert(agent.as_bytes(), proto::codec::encode(marks)))?;
        Ok(())
    }

    /// Agents with watermarks.
    pub fn agents(&self) -> usize {
        self.with(|_, tree| Ok(tree.len())).unwrap_or(0)
    }

    /// Makes every put so far durable; an error means they may not be.
    pub fn flush(&self) -> Result<(), WatermarkError> {
        self.with(|db, _| db.flush())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_rise_and_old_epochs_retire() {
        let mut m = Marks::default();
        m.raise(7, 10, 2);
        m.raise(7, 5, 2);
        assert_eq!(m.of(7), 10, "a watermark never goes down");
        m.raise(8, 1, 2);
        m.raise(9, 1, 2);
        assert_eq!((m.of(7), m.of(8), m.of(9)), (0, 1, 1), "the least recently used epoch retired");
        m.raise(8, 2, 2);
        m.raise(10, 1, 2);
        assert_eq!((m.of(8), m.of(9)), (2, 0), "using an epoch keeps it");
    }

    #[test]
    fn marks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let w = Watermarks::new(&sled::open(dir.path()).unwrap()).unwrap();
            let mut m = w.get("pi").unwrap();
            m.raise(42, 9, 8);
            w.put("pi", &m).unwrap();
            w.flush().unwrap();
        }
        let w = Watermarks::new(&sled::open(dir.path()).unwrap()).unwrap();
        assert_eq!(w.get("pi").unwrap().of(42), 9);
        assert_eq!(w.agents(), 1);
        w.detach();
        assert!(w.get("pi").is_err() && w.flush().is_err(), "detached: every call fails");
    }
}
