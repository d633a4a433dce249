//! The desired configurations, one file per target under
//! `<data_dir>/fleet/`: each target's last versions, newest last. A file is
//! replaced whole (written aside, synced, renamed), so a crash leaves the
//! old or the new. Versions come from one counter for the whole hub, the
//! newest version on disk plus one, so they only grow.
//!
//! A file that cannot be read is set aside as `<name>.damaged` and named in
//! the log and in [`Store::damaged`]: its target has no desired
//! configuration until it is set again, and the hub starts regardless.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One version of a target's desired configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    /// FNV-1a 64 of the fragment's text, in hex.
    pub hash: String,
    /// The TOML fragment, as set.
    pub config: String,
    /// The identity that set it (empty: security off).
    pub set_by: String,
    pub set_at_ns: i64,
    /// The version this one restored, when it is a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TargetFile {
    target: String,
    versions: Vec<Version>,
}

/// Every target's history, in memory and on disk.
pub struct Store {
    dir: PathBuf,
    history: usize,
    max_targets: usize,
    targets: BTreeMap<String, Vec<Version>>,
    next: u64,
    damaged: Vec<String>,
}

/// FNV-1a, 64 bits: a short, stable name for a fragment's content.
pub fn hash(text: &str) -> String {
    let h = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// A target as a file name: every character outside `[A-Za-z0-9_-]` (a
/// glob's `*` and `?`) as `%XX`.
fn file_name(target: &str) -> String {
    let mut name = String::new();
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name + ".json"
}

impl Store {
    /// Opens (creating) `dir`; damaged files are set aside, not fatal.
    pub fn open(dir: &Path, history: usize, max_targets: usize) -> std::io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut store = Store {
            dir: dir.into(),
            history,
            max_targets,
            targets: BTreeMap::new(),
            next: 1,
            damaged: Vec::new(),
        };
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<TargetFile>(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(file)
                    if file_name(&file.target) == path.file_name().unwrap_or_default().to_string_lossy() =>
                {
                    let newest = file.versions.iter().map(|v| v.version).max().unwrap_or(0);
                    store.next = store.next.max(newest + 1);
                    store.targets.insert(file.target, file.versions);
                }
                other => {
                    let why = other.err().unwrap_or_else(|| "its target does not match its name".into());
                    let aside = path.with_extension("damaged");
                    log::error!(
                        "fleet configuration {} is damaged ({why}): set aside as {}; set its target again",
                        path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(&path, &aside);
                    store.damaged.push(format!("{}: {why}", path.display()));
                }
            }
        }
        Ok(store)
    }

    /// Files set aside at open.
    pub fn damaged(&self) -> &[String] {
        &self.damaged
    }

    pub fn targets(&self) -> &BTreeMap<String, Vec<Version>> {
        &self.targets
    }

    pub fn history(&self, target: &str) -> Option<&[Version]> {
        self.targets.get(target).map(Vec::as_slice)
    }

    pub fn latest(&self, target: &str) -> Option<&Version> {
        self.targets.get(target).and_then(|v| v.last())
    }

    /// Stores a new version of `target` (durably before it returns); the
    /// oldest beyond the history's length go.
    pub fn put(
        &mut self,
        target: &str,
        config: String,
        set_by: &str,
        set_at_ns: i64,
        rollback_of: Option<u64>,
    ) -> Result<Version, String> {
        if !self.targets.contains_key(target) && self.targets.len() >= self.max_targets {
            return Err(format!(
                "the hub holds {} targets, fleet.max_targets: reuse one",
                self.targets.len()
            ));
        }
        let version = Version {
            version: self.next,
            hash: hash(&config),
            config,
            set_by: set_by.into(),
            set_at_ns,
            rollback_of,
        };
        let mut versions = self.targets.get(target).cloned().unwrap_or_default();
        versions.push(version.clone());
        let excess = versions.len().saturating_sub(self.history);
        versions.drain(..excess);
        let file = TargetFile { target: target.into(), versions };
        self.write(&file).map_err(|e| format!("cannot store it in {}: {e}", self.dir.display()))?;
        self.targets.insert(file.target, file.versions);
        self.next += 1;
        Ok(version)
    }

    fn write(&self, file: &TargetFile) -> std::io::Result<()> {
        let path = self.dir.join(file_name(&file.target));
        let aside = path.with_extension("json.new");
        let mut out = std::fs::File::create(&aside)?;
        out.write_all(&serde_json::to_vec_pretty(file).expect("a target serialises"))?;
        out.sync_all()?;
        std::fs::rename(&aside, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_across_targets_and_reopens_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 10, 100).unwrap();
        for i in 0..12 {
            store.put("pump-*", format!("log_level = \"{i}\"\n"), "ops", i, None).unwrap();
        }
        let v = store.put("pump-1", "log_level = \"x\"\n".into(), "ops", 0, None).unwrap();
        assert_eq!(v.version, 13);
        let history = store.history("pump-*").unwrap();
        assert_eq!((history.len(), history[0].version, history[9].version), (10, 3, 12));
        let mut again = Store::open(dir.path(), 10, 100).unwrap();
        assert_eq!(again.latest("pump-*").unwrap().config, "log_level = \"11\"\n");
        assert_eq!(again.put("pump-1", String::new(), "", 0, None).unwrap().version, 14, "never reused");
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_the_rest_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 10, 100).unwrap();
        store.put("a", String::new(), "", 0, None).unwrap();
        store.put("b*", String::new(), "", 0, None).unwrap();
        std::fs::write(dir.path().join("a.json"), b"{\"target\": \"a\", \"vers").unwrap();
        let store = Store::open(dir.path(), 10, 100).unwrap();
        assert!(store.latest("a").is_none() && store.latest("b*").is_some());
        assert_eq!(store.damaged().len(), 1);
        assert!(dir.path().join("a.damaged").exists());
    }

    #[test]
    fn targets_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 10, 1).unwrap();
        store.put("a", String::new(), "", 0, None).unwrap();
        store.put("a", String::new(), "", 0, None).unwrap();
        assert!(store.put("b", String::new(), "", 0, None).unwrap_err().contains("max_targets"));
    }
}
