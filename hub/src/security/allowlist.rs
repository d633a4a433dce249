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

/// One public key in several files: one key, one identity, so none of
/// those names is allowed until all files but one are gone. Whichever file
/// sorts first winning would let whoever can write a file there take over
/// another identity's key (an agent's key become an operator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub key: Key,
    /// The files, in name order.
    pub paths: Vec<PathBuf>,
}

impl Conflict {
    /// The identities the files name.
    pub fn names(&self) -> Vec<String> {
        self.paths.iter().map(|p| stem(p).to_string()).collect()
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "{} hold the same key: one key, one identity, so none of {} is allowed. Remove the files \
             that are not this key's identity, then `hub keys reload`",
            files.join(" and "),
            self.names().join(", ")
        )
    }
}

/// What [`AllowList::load`] read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub list: AllowList,
    pub skipped: Vec<Skipped>,
    pub conflicts: Vec<Conflict>,
}

fn stem(path: &Path) -> &str {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or_default()
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

    /// Takes `name` out; its key, if it was listed.
    pub fn remove(&mut self, name: &str) -> Option<Key> {
        let key = self.by_name.remove(name)?;
        self.by_key.remove(&key);
        Some(key)
    }

    /// Reads every `*.key` in `dir`. Unreadable or malformed files are
    /// skipped and reported; a key in several files is in none (a
    /// [`Conflict`]); a missing directory is an error.
    pub fn load(dir: &Path) -> std::io::Result<Loaded> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        entries.sort();
        let mut loaded = Loaded::default();
        let mut by_key: HashMap<Key, Vec<PathBuf>> = HashMap::new();
        for path in entries {
            if !proto::identity::is_valid(stem(&path)) {
                let why = format!("the name is not a valid identity ({})", proto::identity::RULE);
                loaded.skipped.push(Skipped { path, why });
                continue;
            }
            match read_certificate(&path) {
                Ok(cert) => by_key.entry(cert.public).or_default().push(path),
                Err(e) => loaded.skipped.push(Skipped { path, why: e.to_string() }),
            }
        }
        for (key, paths) in by_key {
            match <[PathBuf; 1]>::try_from(paths) {
                Ok([path]) => {
                    loaded.list.insert(key, stem(&path).to_string());
                }
                Err(paths) => loaded.conflicts.push(Conflict { key, paths }),
            }
        }
        loaded.conflicts.sort_by(|a, b| a.paths.cmp(&b.paths));
        Ok(loaded)
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
        transport::curve::write_new_pair(dir.path(), "pump-1", "test").unwrap();
        // A secret certificate lying around is not an allow-list entry.
        std::fs::write(dir.path().join("broken.key"), "curve\n    public-key = \"nope\"\n").unwrap();
        // A '.' would let "pump" publish under "pump.x"'s topics.
        transport::curve::write_new_pair(dir.path(), "pump.x", "test").unwrap();
        let loaded = AllowList::load(dir.path()).unwrap();
        assert_eq!(loaded.list.identities(), ["pump-1"]);
        assert_eq!(loaded.skipped.len(), 2, "{:?}", loaded.skipped);
        assert!(
            loaded.skipped.iter().any(|s| s.why.contains("not a valid identity")),
            "{:?}",
            loaded.skipped
        );
        assert!(loaded.conflicts.is_empty());
        assert!(AllowList::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_key_in_two_files_is_in_neither() {
        let dir = tempfile::tempdir().unwrap();
        let (public, _) = transport::curve::write_new_pair(dir.path(), "pump-2", "test").unwrap();
        transport::curve::write_new_pair(dir.path(), "pump-3", "test").unwrap();
        // "ops-0" sorts first: with "first file wins" it would take pump-2's key.
        std::fs::copy(&public, dir.path().join("ops-0.key")).unwrap();
        let loaded = AllowList::load(dir.path()).unwrap();
        assert_eq!(loaded.list.identities(), ["pump-3"], "neither name is allowed");
        let key = read_certificate(&public).unwrap().public;
        assert_eq!(loaded.list.identity(&key), None);
        let [conflict] = &loaded.conflicts[..] else { panic!("one conflict: {:?}", loaded.conflicts) };
        assert_eq!(conflict.names(), ["ops-0", "pump-2"]);
        let said = conflict.to_string();
        assert!(said.contains("ops-0.key and ") && said.contains("pump-2.key hold the same key"), "{said}");
    }
}
