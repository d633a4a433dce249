//! Ingest watermarks: per agent, the highest sequence number accepted in each
//! of its recent boot epochs, persisted in sled (one value per agent, so a
//! batch costs one read and at most one write).
//!
//! Epochs are random and never come round again, so an agent adds one per
//! boot: only the `keep` most recently used are kept (the oldest retired), and
//! the store stays bounded. A sample of a retired epoch would be accepted
//! again; that needs an agent to reboot `keep` times while holding unacked
//! samples the hub had already taken, which the default (64) makes remote.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("watermark store: {0}")]
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

pub struct Watermarks {
    db: sled::Db,
    tree: sled::Tree,
}

impl Watermarks {
    pub fn open(dir: &std::path::Path) -> sled::Result<Watermarks> {
        let db = sled::Config::new().path(dir).cache_capacity(4 << 20).flush_every_ms(None).open()?;
        let tree = db.open_tree("watermarks.v2")?;
        Ok(Watermarks { db, tree })
    }

    pub fn get(&self, agent: &str) -> Result<Marks, WatermarkError> {
        let Some(bytes) = self.tree.get(agent.as_bytes())? else { return Ok(Marks::default()) };
        // A value we cannot read is a fault of ours, not the agent's: fail the batch, keep the value.
        proto::codec::decode(&bytes)
            .map_err(|e| WatermarkError::Unreadable { agent: agent.into(), why: e.to_string() })
    }

    pub fn put(&self, agent: &str, marks: &Marks) -> Result<(), WatermarkError> {
        self.tree.insert(agent.as_bytes(), proto::codec::encode(marks))?;
        Ok(())
    }

    /// The store itself (the export journal lives in it too).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Agents with watermarks.
    pub fn agents(&self) -> usize {
        self.tree.len()
    }

    /// Makes every put so far durable; an error means they may not be.
    pub fn flush(&self) -> Result<(), WatermarkError> {
        self.db.flush()?;
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
            let w = Watermarks::open(dir.path()).unwrap();
            let mut m = w.get("pi").unwrap();
            m.raise(42, 9, 8);
            w.put("pi", &m).unwrap();
            w.flush().unwrap();
        }
        let w = Watermarks::open(dir.path()).unwrap();
        assert_eq!(w.get("pi").unwrap().of(42), 9);
        assert_eq!(w.agents(), 1);
    }
}
