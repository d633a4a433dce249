//! The fleet configuration an agent applied, kept in its data directory so
//! that it starts on it again, hub or no hub.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A desired version the agent applied: its number, hash and fragment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    pub hash: String,
    /// The TOML fragment, as the hub sent it.
    pub fragment: String,
}

impl Applied {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("fleet-applied.json")
    }

    /// The applied version, if there is one. A file that cannot be read is
    /// an error the caller reports (and then runs on the local file).
    pub fn load(data_dir: &Path) -> Result<Option<Applied>, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!("{} is damaged ({e}): remove it to start on the local file", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Stores it durably: written aside, synced, renamed over the old one,
    /// and the directory synced, so a crash leaves the old or the new.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let aside = path.with_extension("json.new");
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(&serde_json::to_vec(self).expect("an applied version serialises"))?;
        file.sync_all()?;
        std::fs::rename(&aside, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    }

    /// Forgets it: the agent starts on its local file alone.
    pub fn remove(data_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(data_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_loads_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Applied::load(dir.path()).unwrap(), None);
        let a = Applied { version: 7, hash: "ab".into(), fragment: "log_level = \"debug\"\n".into() };
        a.save(dir.path()).unwrap();
        assert_eq!(Applied::load(dir.path()).unwrap(), Some(a));
        std::fs::write(Applied::path(dir.path()), b"{\"vers").unwrap();
        assert!(Applied::load(dir.path()).unwrap_err().contains("remove it"));
        Applied::remove(dir.path()).unwrap();
        assert_eq!(Applied::load(dir.path()).unwrap(), None);
    }
}
