//! Reading the journal: the bridge and pipelines in key order, durable
//! consumers by their topics, and only what a flush has made durable.

use std::time::Instant;

use super::{decode, ConsumerError, Entry, EntryRef, Fetched, Journal};

impl Journal {
    /// Waits until the journal has a durable entry after `after`, or
    /// `deadline`; true if it has.
    pub fn wait_after(&self, after: u64, deadline: Instant) -> bool {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if tail.durable > after {
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
        for item in disk.entries.read_from(after + 1, max) {
            let (key, value) = item?;
            out.push((key, decode(&value)));
        }
        Ok(out)
    }

    /// Up to `max` durable entries of `consumer`'s topics after `after` (or
    /// after its cursor, if that is further on), of at most `budget` bytes
    /// (topic and payload; one entry at least), looking at no more than
    /// `scan` entries: each goes to `take(key, topic, payload)`, in order.
    ///
    /// Only durable entries: a client keeps the position it was given across
    /// a crash of the hub, and the keys of entries that were not flushed are
    /// given again after the restart, to other entries (an agent's batch
    /// appended at once). A position past them would make the client skip
    /// those, acknowledged samples lost to it. For the same reason a position
    /// past the durable entries (which the hub never gave) counts as theirs.
    pub fn fetch(
        &self,
        consumer: &str,
        after: u64,
        (max, scan, budget): (usize, usize, usize),
        mut take: impl FnMut(u64, &str, &[u8]),
    ) -> Result<Fetched, ConsumerError> {
        let durable = self.durable();
        let (from, spec) = {
            let mut consumers = self.consumers_mut();
            let c = consumers.get_mut(consumer).ok_or_else(|| ConsumerError::Unknown(consumer.into()))?;
            c.last_active = Instant::now();
            c.inactive = false;
            (after.min(durable).max(c.cursor), c.spec.clone())
        };
        let mut fetched = Fetched { next: from, ..Fetched::default() };
        let mut bytes = 0;
        let disk = self.disk()?;
        for item in disk.entries.read_from(from + 1, scan) {
            let (key, value) = item?;
            if key > durable {
                break;
            }
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
}
