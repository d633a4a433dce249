//! The state service's storage: scopes of key → JSON value, in sled.
//!
//! Durability: sled's own periodic flush is off; the service flushes on its
//! own clock (or after every write) and counts writes that are on disk, so
//! the window is measurable rather than assumed: `durable_writes` catches up
//! with `writes` within one flush interval.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use serde_json::Value;

pub type Result<T> = std::result::Result<T, sled::Error>;

pub struct Store {
    db: sled::Db,
    /// scope name → empty marker.
    scopes: sled::Tree,
    /// scope_key(scope, key) → JSON text.
    values: sled::Tree,
    writes: AtomicU64,
    durable: AtomicU64,
    flush_each_write: bool,
}

/// `len(scope) as u32 BE ++ scope ++ key`: a scope's keys share a prefix no
/// other scope's keys can have.
fn scope_prefix(scope: &str) -> Vec<u8> {
    let mut prefix = (scope.len() as u32).to_be_bytes().to_vec();
    prefix.extend_from_slice(scope.as_bytes());
    prefix
}

fn scope_key(scope: &str, key: &str) -> Vec<u8> {
    let mut k = scope_prefix(scope);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir` with a `cache_bytes` page cache.
    /// With `flush_each_write` every write is on disk before it returns.
    pub fn open(dir: &Path, cache_bytes: u64, flush_each_write: bool) -> Result<Store> {
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes).flush_every_ms(None).open()?;
        let scopes = db.open_tree("scopes")?;
        let values = db.open_tree("values")?;
        Ok(Store {
            db,
            scopes,
            values,
            writes: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            flush_each_write,
        })
    }

    pub fn has_scope(&self, scope: &str) -> Result<bool> {
        self.scopes.contains_key(scope.as_bytes())
    }

    /// Creates `scope`; false if it already existed.
    pub fn create_scope(&self, scope: &str) -> Result<bool> {
        let created = self.scopes.insert(scope.as_bytes(), &[])?.is_none();
        self.wrote()?;
        Ok(created)
    }

    /// Deletes `scope` and its keys; false if it did not exist.
    pub fn delete_scope(&self, scope: &str) -> Result<bool> {
        if self.scopes.remove(scope.as_bytes())?.is_none() {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        for entry in self.values.scan_prefix(scope_prefix(scope)) {
            batch.remove(entry?.0);
        }
        self.values.apply_batch(batch)?;
        self.wrote()?;
        Ok(true)
    }

    pub fn list_scopes(&self) -> Result<Vec<String>> {
        self.scopes.iter().keys().map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned())).collect()
    }

    pub fn list_keys(&self, scope: &str) -> Result<Vec<String>> {
        let prefix = scope_prefix(scope);
        self.values
            .scan_prefix(&prefix)
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()))
            .collect()
    }

    pub fn get(&self, scope: &str, key: &str) -> Result<Option<Value>> {
        Ok(self.values.get(scope_key(scope, key))?.map(|bytes| {
            // Stored as JSON text by `set`; anything else is shown as text, never a failure.
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        }))
    }

    /// Sets `key` in `scope`, creating the scope if needed.
    pub fn set(&self, scope: &str, key: &str, value: &Value) -> Result<()> {
        self.scopes.insert(scope.as_bytes(), &[])?;
        self.values.insert(scope_key(scope, key), value.to_string().into_bytes())?;
        self.wrote()
    }

    /// Deletes `key`; false if it was not there.
    pub fn delete(&self, scope: &str, key: &str) -> Result<bool> {
        let existed = self.values.remove(scope_key(scope, key))?.is_some();
        if existed {
            self.wrote()?;
        }
        Ok(existed)
    }

    fn wrote(&self) -> Result<()> {
        self.writes.fetch_add(1, SeqCst);
        if self.flush_each_write {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        let writes = self.writes.load(SeqCst);
        self.db.flush()?;
        self.durable.fetch_max(writes, SeqCst);
        Ok(())
    }

    /// Writes acknowledged since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(SeqCst)
    }

    /// Writes known to be on disk.
    pub fn durable_writes(&self) -> u64 {
        self.durable.load(SeqCst)
    }

    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_keep_their_keys_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20, false).unwrap();
        s.set("ab", "c", &json!("1")).unwrap();
        s.set("a", "bc", &json!("2")).unwrap();
        assert_eq!(s.list_keys("a").unwrap(), vec!["bc"]);
        assert_eq!(s.list_keys("ab").unwrap(), vec!["c"]);
        assert_eq!(s.get("a", "bc").unwrap(), Some(json!("2")));
        assert!(s.delete_scope("a").unwrap());
        assert_eq!(s.get("ab", "c").unwrap(), Some(json!("1")));
        assert_eq!(s.list_scopes().unwrap(), vec!["ab"]);
    }

    #[test]
    fn flushed_writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20, false).unwrap();
            s.set("plant", "mode", &json!({"auto": true})).unwrap();
            assert_eq!((s.writes(), s.durable_writes()), (1, 0));
            s.flush().unwrap();
            assert_eq!(s.durable_writes(), 1);
        }
        let s = Store::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(s.get("plant", "mode").unwrap(), Some(json!({"auto": true})));
    }

    #[test]
    fn flush_each_write_is_durable_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20, true).unwrap();
        s.set("p", "k", &json!("v")).unwrap();
        assert_eq!(s.durable_writes(), s.writes());
    }
}
