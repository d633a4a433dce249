//! A store's flush count, kept in the store and in a manifest beside it, so
//! that a log sled opened cut short is noticed; and group commit, which lets
//! writers flushing at once share a flush.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{check, guarded, Counts, Opened, Recovery};

/// Counts a store's flushes: in the store, and after them (at most every
/// 100 ms, and when the store is closed) in a small file beside sled's in the
/// store's directory (its manifest). sled
/// opens a log cut short (a truncated file, a zeroed block) without a word,
/// taking it for a write torn by a crash, and what was in the lost part is
/// gone: a store whose count is behind its manifest's lost writes it had
/// flushed, and [`Generation::open`] says so.
pub struct Generation {
    db: sled::Db,
    tree: sled::Tree,
    manifest: PathBuf,
    /// (flushes, when the manifest was last written, and what it says).
    state: std::sync::Mutex<(u64, Option<std::time::Instant>, u64)>,
    /// Group commit: calls to `flush` so far, and how many of them the last
    /// flush to succeed covered (every call counted before it began).
    calls: std::sync::atomic::AtomicU64,
    covered: std::sync::atomic::AtomicU64,
}

/// How often the manifest follows the store, at most: what a crash loses
/// of it (the store's last flushes) goes unnoticed, as sled's own torn tail would.
const MANIFEST_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

const GENERATION_TREE: &str = "stores.generation";
const GENERATION_KEY: &[u8] = b"flushes";
pub(crate) const MANIFEST: &str = "flushes";

impl Generation {
    /// The store's count, checked against its manifest; `Some(Recovery)`
    /// when the store is behind it, or (after a clean close, whose manifest
    /// lists every tree's entries) when a tree holds fewer entries than it
    /// did. `counts`: the store's, as [`open`](crate::open) read them.
    pub fn open(dir: &Path, opened: &Opened) -> sled::Result<(Generation, Option<Recovery>)> {
        let tree = opened.db.open_tree(GENERATION_TREE)?;
        let stored =
            tree.get(GENERATION_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes);
        let manifest = dir.join(MANIFEST);
        let (written, clean) = read_manifest(&manifest);
        let short = |counts: &Counts| {
            clean.iter().find_map(|(tree, was)| {
                let now = counts.get(tree).copied().unwrap_or(0);
                (now < *was).then(|| {
                    format!("{tree} held {was} entries when the store was last closed, and holds {now}")
                })
            })
        };
        let damage = match written {
            Some(w) if w > stored => Some(format!(
                "it had made {w} flushes durable by its manifest, but holds {stored}: its log was cut short or \
                 damaged, and what it held after that is lost"
            )),
            Some(w) if w == stored => opened.counts.as_ref().and_then(short).map(|what| {
                format!("{what}: its files were damaged, and what they held is lost")
            }),
            _ => None,
        };
        let loss = damage.map(|damage| Recovery {
            damage,
            aside: None,
            salvaged: BTreeMap::new(),
            cut_short: Some(Vec::new()),
        });
        let generation = Generation {
            tree,
            manifest,
            state: std::sync::Mutex::new((stored, None, written.unwrap_or(0))),
            db: opened.db.clone(),
            calls: Default::default(),
            covered: Default::default(),
        };
        Ok((generation, loss))
    }

    /// Flushes `db`, counting it (and writing the manifest, at most every 100 ms).
    ///
    /// Makes durable every write made before the call. Concurrent callers
    /// commit as a group: one that waited for another's flush returns at once
    /// if that flush began after its call, so it covered the caller's writes
    /// (made before the call), and N threads flushing together cost about
    /// two flushes instead of N.
    pub fn flush(&self, db: &sled::Db) -> sled::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let call = self.calls.fetch_add(1, SeqCst) + 1;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.covered.load(SeqCst) >= call {
            return Ok(());
        }
        // Every call counted by now made its writes before it was counted.
        let covers = self.calls.load(SeqCst);
        let next = state.0 + 1;
        self.tree.insert(GENERATION_KEY, &next.to_be_bytes())?;
        db.flush()?;
        self.covered.store(covers, SeqCst);
        state.0 = next;
        if state.1.is_none_or(|t| t.elapsed() >= MANIFEST_EVERY) {
            self.write(&mut state);
        }
        Ok(())
    }

    /// Writes the manifest: after the flush it counts, so it never claims
    /// more than the store has on disk (not synced itself: a manifest lost
    /// in a power cut only makes the next check miss a loss).
    fn write(&self, state: &mut (u64, Option<std::time::Instant>, u64)) {
        if let Err(e) = write_manifest(&self.manifest, state.0, None) {
            log::warn!("cannot write {}: {e}", self.manifest.display());
        }
        state.1 = Some(std::time::Instant::now());
        state.2 = state.0;
    }
}

impl Generation {
    /// A clean close: flushes, and writes a manifest that lists every tree's
    /// entries, for the next open to compare. Call it once the store's last
    /// writer has stopped; a flush after it marks the manifest unclean again.
    /// (Drop does this too, but a store shared with a thread that outlives
    /// the process's main path is never dropped.)
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let counts = guarded("counting the store at close", || {
            self.db.flush()?;
            check(&self.db)
        });
        match counts {
            Ok(counts) => match write_manifest(&self.manifest, state.0, Some(&counts)) {
                Ok(()) => {
                    // The next flush must rewrite it at once, not 100 ms later.
                    state.1 = None;
                    state.2 = state.0;
                }
                Err(e) => log::warn!("cannot write {}: {e}", self.manifest.display()),
            },
            Err(_) if state.2 != state.0 => self.write(&mut state),
            Err(_) => {}
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.close();
    }
}

/// The manifest's flush count, and the entries per tree of a clean close.
fn read_manifest(path: &Path) -> (Option<u64>, Counts) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let written = lines.next().and_then(|l| l.trim().parse().ok());
    let clean = lines
        .filter_map(|l| {
            let (count, tree) = l.split_once(' ')?;
            Some((tree.to_string(), count.parse().ok()?))
        })
        .collect();
    (written, clean)
}

/// Replaces `path` with the flush count (and, at a clean close, each tree's
/// entries, a line each): a temporary file, renamed, never half written.
fn write_manifest(path: &Path, flushes: u64, clean: Option<&Counts>) -> std::io::Result<()> {
    let mut text = format!("{flushes}\n");
    for (tree, count) in clean.into_iter().flatten() {
        text.push_str(&format!("{count} {tree}\n"));
    }
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open, tests::config};

    #[test]
    fn callers_flushing_together_share_one_flush() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let opened = open(&path, config()).unwrap();
        let (generation, _) = Generation::open(&path, &opened).unwrap();
        let before = generation.state.lock().unwrap().0;
        std::thread::scope(|s| {
            // A flush in progress (its lock held) while two writers arrive.
            let busy = generation.state.lock().unwrap();
            for key in ["a", "b"] {
                let (db, generation) = (&opened.db, &generation);
                s.spawn(move || {
                    db.insert(key, "1").unwrap();
                    generation.flush(db).unwrap();
                });
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while generation.calls.load(SeqCst) < 2 {
                assert!(std::time::Instant::now() < deadline, "the writers never called flush");
                std::thread::yield_now();
            }
            drop(busy);
        });
        assert_eq!(generation.state.lock().unwrap().0, before + 1, "the first flush covered both callers");
        // One more caller, after them: its own flush.
        generation.flush(&opened.db).unwrap();
        assert_eq!(generation.state.lock().unwrap().0, before + 2);
    }
}
