//! The allow-list: the public certificates in `clients_dir` (czmq's
//! `zcertstore` layout, as pyzmq and czmq tools write it). A peer's identity
//! is its file's stem: `pump-station-1.key` is `pump-station-1`, and must
//! be a valid name (`proto::identity`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use transport::curve::{read_certificate, Key};

/// Public key → identity, and back (one key per identity).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    by_key: HashMap<Key, String>,
    by_name: HashMap<String, Key>,
}

/// A file in the directory that could not be used (it is skipped, and said).
#[derive(Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

impl AllowList {
    pub fn new(entries: impl IntoIterator<Item = (Key, String)>) -> AllowList {
        let mut list = AllowList::default();
        for (key, name) in entries {
            list.insert(key, name);
        }
        list
    }

    /// Adds `name` with `key`, unless either is listed already; true if added.
    pub fn insert(&mut self, key: Key, name: String) -> bool {
        if self.by_key.contains_key(&key) || self.by_name.contains_key(&name) {
            return false;
        }
        self.by_name.insert(name.clone(), key);
        self.by_key.insert(key, name);
        true
    }

    /// Reads every `*.key` in `dir`. Unreadable or malformed files, and a key
    /// listed twice, are skipped and reported; a missing directory is an error.
    pub fn load(dir: &Path) -> std::io::Result<(AllowList, Vec<Skipped>)> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        entries.sort();
        let (mut list, mut skipped) = (AllowList::default(), Vec::new());
        for path in entries {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if !proto::identity::is_valid(&name) {
                let why = format!("the name is not a valid identity ({})", proto::identity::RULE);
                skipped.push(Skipped { path, why });
                continue;
            }
            match read_certificate(&path) {
                Ok(cert) => {
                    if let Some(other) = list.by_key.get(&cert.public) {
                        let why = format!("the same key as {other}.key: one key, one identity");
                        skipped.push(Skipped { path, why });
                    } else {
                        list.insert(cert.public, name);
                    }
                }
                Err(e) => skipped.push(Skipped { path, why: e.to_string() }),
            }
        }
        Ok((list, skipped))
    }

    pub fn identity(&self, key: &Key) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    pub fn key_of(&self, identity: &str) -> Option<Key> {
        self.by_name.get(identity).copied()
    }

    pub fn contains_identity(&self, identity: &str) -> bool {
        self.by_name.contains_key(identity)
    }

    pub fn identities(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_key.values().map(String::as_str).collect();
        names.sort();
        names
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_public_certificates_by_stem_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (public, _) = transport::curve::write_new_pair(dir.path(), "pump-1", "test").unwrap();
        // A secret certificate lying around is not an allow-list entry.
        std::fs::write(dir.path().join("broken.key"), "curve\n    public-key = \"nope\"\n").unwrap();
        std::fs::copy(&public, dir.path().join("clone.key")).unwrap();
        // A '.' would let "pump" publish under "pump.x"'s topics.
        transport::curve::write_new_pair(dir.path(), "pump.x", "test").unwrap();
        let (list, skipped) = AllowList::load(dir.path()).unwrap();
        assert_eq!(list.identities(), ["clone"], "files are read in name order; the copy comes first");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.why.contains("not a valid identity")), "{skipped:?}");
        let key = read_certificate(&public).unwrap().public;
        assert_eq!(list.identity(&key), Some("clone"));
        assert!(AllowList::load(&dir.path().join("missing")).is_err());
    }
}
