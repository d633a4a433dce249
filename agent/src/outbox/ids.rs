//! Which agent id made the outbox's records: `<outbox>/ids`, one line per
//! id, `<first index> <id>`: the records from that index up to the next
//! line's were made under that id. The agent's id can change under a
//! backlog (the config, or the hostname in the default id); its samples are
//! sent under the id they were made with, never relabelled.
//!
//! The file is rewritten whole (temporary file, fsync, rename) when the id
//! changes, before anything is appended under the new id: until that works
//! (a full disk), appends are refused and counted, so no record can be read
//! back later under an id it was not made with. An outbox without the file
//! (made before the agent recorded ids) is taken as made under the id the
//! agent has now, and the agent says so.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const FILE: &str = "ids";

/// The id of each stretch of records, by first index (rising).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    entries: Vec<(u64, Arc<str>)>,
    /// What the file on disk says new records are made under (`None`: no
    /// file, or it could not be read).
    on_disk: Option<Arc<str>>,
}

impl Ids {
    /// Reads `dir`'s file; `Err` says why it cannot be used (no file is not an error).
    pub fn read(dir: &Path) -> Result<Ids, String> {
        let text = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ids::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.join(FILE).display())),
        };
        let mut entries: Vec<(u64, Arc<str>)> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = line.split_once(' ').and_then(|(first, id)| {
                let first = first.parse::<u64>().ok()?;
                let rising = entries.last().is_none_or(|(last, _)| first > *last);
                (rising && proto::identity::is_valid(id)).then(|| (first, Arc::from(id)))
            });
            match parsed {
                Some(entry) => entries.push(entry),
                None => return Err(format!("{} is damaged (line {line:?})", dir.join(FILE).display())),
            }
        }
        let on_disk = entries.last().map(|(_, id)| id.clone());
        Ok(Ids { entries, on_disk })
    }

    /// The id record `index` was made under (`None`: not known, an outbox
    /// made before ids were recorded).
    pub fn id_of(&self, index: u64) -> Option<&Arc<str>> {
        let at = self.entries.partition_point(|(first, _)| *first <= index);
        self.entries.get(at.saturating_sub(1)).map(|(_, id)| id)
    }

    /// The first index after `index` made under another id, if any.
    pub fn end_of(&self, index: u64) -> Option<u64> {
        self.entries.iter().map(|(first, _)| *first).find(|first| *first > index)
    }

    /// Makes `id` the id of records from `next` on; forgets the stretches
    /// wholly below `head`. Returns whether that changed anything, and the
    /// id the last records were made under when it was another.
    pub fn adopt(&mut self, id: &str, next: u64, head: u64) -> (bool, Option<Arc<str>>) {
        let (before, count) = (self.entries.last().map(|(_, id)| id.clone()), self.entries.len());
        if self.entries.is_empty() {
            // Nothing recorded: what is there is taken as made under `id`.
            self.entries.push((0, Arc::from(id)));
        } else if before.as_deref() != Some(id) {
            self.entries.push((next, Arc::from(id)));
        }
        // A stretch is wholly retired when the next one starts at or below the head.
        let live = self.entries.partition_point(|(first, _)| *first <= head).saturating_sub(1);
        self.entries.drain(..live);
        let changed = live > 0 || self.entries.len() != count;
        (changed, before.filter(|b| &**b != id))
    }

    /// The stretches with records at or after `head`: (first index, id).
    pub fn live(&self, head: u64) -> Vec<(u64, Arc<str>)> {
        let from = self.entries.partition_point(|(first, _)| *first <= head).saturating_sub(1);
        self.entries[from..].to_vec()
    }

    /// Whether the file on disk still says what is in memory about new records.
    pub fn written(&self) -> bool {
        self.on_disk.is_some() && self.on_disk.as_ref() == self.entries.last().map(|(_, id)| id)
    }

    /// Whether a record appended now would be read back under another id
    /// than `id` (the file says another, and has not been rewritten yet).
    pub fn would_mislabel(&self, id: &str) -> bool {
        self.on_disk.as_deref().is_some_and(|on_disk| on_disk != id)
    }

    /// Rewrites the file (temporary file, fsync, rename, directory fsync).
    pub fn write(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for (first, id) in &self.entries {
            text.push_str(&format!("{first} {id}\n"));
        }
        let temporary = dir.join("ids.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        std::fs::rename(&temporary, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()?;
        self.on_disk = self.entries.last().map(|(_, id)| id.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_name_their_records_and_retired_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::read(dir.path()).unwrap();
        assert_eq!(ids.id_of(5), None, "nothing recorded");
        assert_eq!(ids.adopt("pump-old", 10, 1), (true, None));
        assert!(!ids.written() && !ids.would_mislabel("pump-new"), "no file yet: nothing to contradict");
        ids.write(dir.path()).unwrap();
        assert_eq!(ids.id_of(3).map(|i| &**i), Some("pump-old"), "an outbox with no ids: taken as this id's");
        assert_eq!(ids.adopt("pump-new", 40, 1), (true, Some(Arc::from("pump-old"))));
        assert!(ids.would_mislabel("pump-new"), "the file still says pump-old");
        ids.write(dir.path()).unwrap();
        assert!(ids.written() && !ids.would_mislabel("pump-new"));
        let read = Ids::read(dir.path()).unwrap();
        assert_eq!(read, ids);
        assert_eq!(
            (read.id_of(39).map(|i| &**i), read.id_of(40).map(|i| &**i)),
            (Some("pump-old"), Some("pump-new"))
        );
        assert_eq!((read.end_of(12), read.end_of(40)), (Some(40), None));
        assert_eq!(read.live(20).len(), 2);
        // Once the head passes 40, pump-old's stretch is gone.
        assert_eq!(ids.adopt("pump-new", 90, 40), (true, None));
        assert_eq!(ids.adopt("pump-new", 95, 41), (false, None), "nothing new");
        assert_eq!(ids.live(40), [(40, Arc::from("pump-new"))]);
    }

    #[test]
    fn a_damaged_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["12 pump\nx y\n", "12 pump\n5 other\n", "1 not.valid\n"] {
            std::fs::write(dir.path().join(FILE), text).unwrap();
            assert!(Ids::read(dir.path()).unwrap_err().contains("damaged"), "{text:?}");
        }
    }
}
