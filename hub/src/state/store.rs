//! The state service's storage: scopes of key → JSON value, in sled.
//!
//! Durability: sled's own periodic flush is off; the service flushes on its
//! own clock (or, with `flush_each_write`, at every [`Store::commit`]) and
//! counts writes that are on disk, so the window is measurable rather than
//! assumed: `durable_writes` catches up with `writes` within one flush
//! interval. Writes never flush by themselves: the service commits a whole
//! batch of requests with one flush before it answers any of them.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", stores::describe(.0))]
    Storage(#[from] sled::Error),
    /// A write that would take the store past a bound; nothing was written.
    #[error("{0}")]
    Quota(String),
    /// A flush failed: acknowledged writes may not be on disk, so no more are
    /// taken until the store is opened again (sled keeps failing after an
    /// I/O error), which the hub does once the disk has room.
    #[error("the store failed to flush ({0}): it takes no writes until it is opened again, once the disk has room")]
    Failed(String),
    #[error("{0}")]
    Open(#[from] stores::OpenError),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Storage(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub use super::limits::Limits;

/// What each scope holds, and who owns it: the quota accounting, kept in
/// memory (rebuilt from the store at open) and changed only under its lock,
/// which also makes every write's check-then-change atomic.
#[derive(Default)]
struct Usage {
    scopes: HashMap<String, ScopeUsage>,
    owned: HashMap<String, usize>,
}

#[derive(Default)]
struct ScopeUsage {
    owner: String,
    keys: usize,
    bytes: usize,
}

/// The open store: sled's handles (cloned for each use: they are reference
/// counted) and its count of flushes.
#[derive(Clone)]
struct Disk {
    db: sled::Db,
    /// scope name → its owner (the identity that created it; empty for the hub or without security).
    scopes: sled::Tree,
    /// scope_key(scope, key) → JSON text.
    values: sled::Tree,
    /// Counts flushes, so a store cut short is noticed at the next start.
    generation: Arc<stores::Generation>,
}

impl Disk {
    fn new(opened: &stores::Opened, dir: &Path) -> Result<(Disk, Option<stores::Recovery>)> {
        let (generation, loss) = stores::Generation::open(dir, opened)?;
        let db = opened.db.clone();
        let (scopes, values) = (db.open_tree("scopes")?, db.open_tree("values")?);
        Ok((Disk { db, scopes, values, generation: Arc::new(generation) }, loss))
    }

    /// The usage accounting, read from the store.
    fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for entry in self.scopes.iter() {
            let (name, owner) = entry?;
            let scope = ScopeUsage { owner: text(&owner), ..ScopeUsage::default() };
            *usage.owned.entry(scope.owner.clone()).or_default() += 1;
            usage.scopes.insert(text(&name), scope);
        }
        for entry in self.values.iter() {
            let (key, value) = entry?;
            let Some(len) = key.get(..4).map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
            else {
                continue;
            };
            if let Some(scope) = key.get(4..4 + len).and_then(|s| usage.scopes.get_mut(&text(s))) {
                scope.keys += 1;
                // The key counts as much as its value: both are stored, and listed.
                scope.bytes += key.len().saturating_sub(4 + len) + value.len();
            }
        }
        Ok(usage)
    }
}

fn config(cache_bytes: u64) -> sled::Config {
    sled::Config::new().cache_capacity(cache_bytes).flush_every_ms(None)
}

pub struct Store {
    dir: PathBuf,
    cache_bytes: u64,
    /// `None` only while the store is being opened again.
    disk: RwLock<Option<Disk>>,
    limits: Limits,
    usage: Mutex<Usage>,
    writes: AtomicU64,
    durable: AtomicU64,
    /// Requests refused for a bound (sizes, counts), counted with or without security.
    refused: AtomicU64,
    flush_each_write: bool,
    /// Why the last flush failed, while it does.
    failure: Mutex<Option<String>>,
    /// When the oldest write not yet flushed was made.
    pending_since: Mutex<Option<Instant>>,
    /// Damage found and recovered from when the store was opened.
    recovery: Option<stores::Recovery>,
    /// Times the store was opened again after a failure.
    reopens: AtomicU64,
    /// Writes acknowledged but never made durable, lost to storage failures.
    lost_writes: AtomicU64,
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Store {
    /// Opens (or creates) the store in `dir` with a `cache_bytes` page cache.
    /// With `flush_each_write`, [`Store::commit`] puts every write on disk
    /// (the service commits before it acknowledges a write).
    pub fn open(dir: &Path, cache_bytes: u64, flush_each_write: bool, limits: Limits) -> Result<Store> {
        // Damage is set aside and what can be read salvaged: the hub starts.
        let opened = stores::open(dir, config(cache_bytes))?;
        let (disk, loss) = Disk::new(&opened, dir)?;
        let usage = disk.usage()?;
        let recovery = opened.recovery.or(loss);
        Ok(Store {
            dir: dir.into(),
            cache_bytes,
            disk: RwLock::new(Some(disk)),
            limits,
            usage: Mutex::new(usage),
            writes: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            flush_each_write,
            failure: Mutex::new(None),
            pending_since: Mutex::new(None),
            recovery,
            reopens: AtomicU64::new(0),
            lost_writes: AtomicU64::new(0),
        })
    }

    /// The open store's handles; an error while it is being opened again.
    fn disk(&self) -> Result<Disk> {
        let disk = self.disk.read().unwrap_or_else(|e| e.into_inner());
        disk.clone().ok_or_else(|| StoreError::Failed("it is being opened again".into()))
    }

    /// Lets go of the store and opens it again, after a failure: writes
    /// acknowledged but not yet durable are counted as lost (the store is
    /// read again for what it holds).
    pub fn reopen(&self) -> Result<()> {
        // Holding the usage lock keeps every writer out until it is done.
        let mut usage = self.usage();
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = None;
        let opened = stores::reopen(&self.dir, config(self.cache_bytes))?;
        let (disk, loss) = Disk::new(&opened, &self.dir)?;
        for recovery in opened.recovery.iter().chain(&loss) {
            log::error!("state store: {}", recovery.describe());
        }
        *usage = disk.usage()?;
        let writes = self.writes.load(SeqCst);
        let lost = writes.saturating_sub(self.durable.swap(writes, SeqCst));
        if lost > 0 {
            log::error!("state store: {lost} acknowledged write(s) were never made durable and are lost");
        }
        self.lost_writes.fetch_add(lost, SeqCst);
        *self.pending_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.disk.write().unwrap_or_else(|e| e.into_inner()) = Some(disk);
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.reopens.fetch_add(1, SeqCst);
        Ok(())
    }

    /// Until `signal`: after a failure, opens the store again once the file
    /// system has room (see [`stores::heal`]).
    pub fn heal(&self, signal: &transport::ShutdownWatch) {
        stores::heal(
            "state",
            &self.dir,
            |wait| signal.sleep(wait),
            || self.failure().is_some(),
            || self.reopen(),
        );
    }

    /// Times the store was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(SeqCst)
    }

    /// Acknowledged writes lost to storage failures since start.
    pub fn lost_writes(&self) -> u64 {
        self.lost_writes.load(SeqCst)
    }

    /// Damage found and recovered from when the store was opened.
    pub fn recovery(&self) -> Option<&stores::Recovery> {
        self.recovery.as_ref()
    }

    /// The usage accounting, locked: every write holds it, and refuses to
    /// start while the store is failing.
    fn usage(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writable(&self) -> Result<MutexGuard<'_, Usage>> {
        if let Some(why) = self.failure() {
            return Err(StoreError::Failed(why));
        }
        Ok(self.usage())
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A refusal for a bound: counted, for the state service's counters.
    pub fn quota(&self, why: String) -> StoreError {
        self.count_refusal();
        StoreError::Quota(why)
    }

    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, SeqCst);
    }

    /// Requests refused for a bound since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(SeqCst)
    }

    /// Refuses a scope name or key longer than `max_key_bytes`.
    pub fn check_name(&self, what: &str, name: &str) -> Result<()> {
        if name.len() > self.limits.max_key_bytes {
            return Err(self.quota(format!(
                "a {what} of {} bytes is over the limit of {} (max_key_bytes)",
                name.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Why the store takes no writes, if it does not.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn has_scope(&self, scope: &str) -> Result<bool> {
        Ok(self.disk()?.scopes.contains_key(scope.as_bytes())?)
    }

    /// The identity that created `scope` (empty: the hub, or security off).
    pub fn owner(&self, scope: &str) -> Option<String> {
        self.usage().scopes.get(scope).map(|s| s.owner.clone())
    }

    /// Room for one more scope, owned by `owner`?
    fn check_new_scope(&self, usage: &Usage, owner: &str) -> Result<()> {
        if usage.scopes.len() >= self.limits.max_scopes {
            return Err(self.quota(format!("the store holds {} scopes, its limit", self.limits.max_scopes)));
        }
        let owned = usage.owned.get(owner).copied().unwrap_or(0);
        if !owner.is_empty() && owned >= self.limits.max_scopes_per_identity {
            return Err(
                self.quota(format!("{owner} owns {owned} scopes, its limit (max_scopes_per_identity)"))
            );
        }
        Ok(())
    }

    /// Creates `scope`, owned by `owner`; false if it already existed.
    pub fn create_scope(&self, scope: &str, owner: &str) -> Result<bool> {
        self.check_name("scope name", scope)?;
        let mut usage = self.writable()?;
        if usage.scopes.contains_key(scope) {
            return Ok(false);
        }
        self.check_new_scope(&usage, owner)?;
        self.disk()?.scopes.insert(scope.as_bytes(), owner.as_bytes())?;
        usage.scopes.insert(scope.into(), ScopeUsage { owner: owner.into(), ..ScopeUsage::default() });
        *usage.owned.entry(owner.into()).or_default() += 1;
        drop(usage);
        self.wrote();
        Ok(true)
    }

    /// Deletes `scope` and its keys, atomically; false if it did not exist.
    pub fn delete_scope(&self, scope: &str) -> Result<bool> {
        let mut usage = self.writable()?;
        let Some(gone) = usage.scopes.get(scope) else { return Ok(false) };
        let owner = gone.owner.clone();
        // Writes hold the usage lock, so no key can be added between this scan and the transaction.
        let disk = self.disk()?;
        let keys = disk.values.scan_prefix(scope_prefix(scope)).keys().collect::<sled::Result<Vec<_>>>()?;
        (&disk.scopes, &disk.values).transaction(|(scopes, values)| {
            scopes.remove(scope.as_bytes())?;
            for key in &keys {
                values.remove(key)?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        usage.scopes.remove(scope);
        if let Some(n) = usage.owned.get_mut(&owner) {
            *n -= 1;
        }
        drop(usage);
        self.wrote();
        Ok(true)
    }

    pub fn list_scopes(&self) -> Result<Vec<String>> {
        Ok(self.disk()?.scopes.iter().keys().map(|k| k.map(|k| text(&k))).collect::<sled::Result<_>>()?)
    }

    pub fn list_keys(&self, scope: &str) -> Result<Vec<String>> {
        self.keys_after(scope, None).collect()
    }

    /// `scope`'s keys in order, from the first after `after` (all, with `None`).
    pub fn keys_after(&self, scope: &str, after: Option<&str>) -> Box<dyn Iterator<Item = Result<String>>> {
        let disk = match self.disk() {
            Ok(disk) => disk,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let prefix = scope_prefix(scope);
        let start = match after {
            Some(after) => Bound::Excluded(scope_key(scope, after)),
            None => Bound::Included(prefix.clone()),
        };
        let skip = prefix.len();
        Box::new(
            disk.values
                .range::<Vec<u8>, _>((start, Bound::Unbounded))
                .keys()
                .take_while(move |k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
                .map(move |k| Ok(text(&k?[skip..]))),
        )
    }

    /// Scope names in order, from the first after `after` (all, with `None`).
    pub fn scopes_after(&self, after: Option<&str>) -> Box<dyn Iterator<Item = Result<String>>> {
        let disk = match self.disk() {
            Ok(disk) => disk,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let start = match after {
            Some(after) => Bound::Excluded(after.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        Box::new(disk.scopes.range::<Vec<u8>, _>((start, Bound::Unbounded)).keys().map(|k| Ok(text(&k?))))
    }

    pub fn get(&self, scope: &str, key: &str) -> Result<Option<Value>> {
        Ok(self.disk()?.values.get(scope_key(scope, key))?.map(|bytes| {
            // Stored as JSON text by `set`; anything else is shown as text, never a failure.
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        }))
    }

    /// Sets `key` in `scope`, creating the scope (owned by `owner`) if
    /// needed, atomically, within the bounds.
    pub fn set(&self, scope: &str, key: &str, value: &Value, owner: &str) -> Result<()> {
        let text = value.to_string();
        let l = &self.limits;
        self.check_name("scope name", scope)?;
        self.check_name("key", key)?;
        if text.len() > l.max_value_bytes {
            return Err(self.quota(format!(
                "a value of {} bytes is over the limit of {}",
                text.len(),
                l.max_value_bytes
            )));
        }
        let mut usage = self.writable()?;
        let new_scope = !usage.scopes.contains_key(scope);
        if new_scope {
            self.check_new_scope(&usage, owner)?;
        }
        let k = scope_key(scope, key);
        let disk = self.disk()?;
        let previous = disk.values.get(&k)?;
        // What the entry costs the scope: its key and its value.
        let (existed, old) = (previous.is_some(), previous.map_or(0, |v| key.len() + v.len()));
        let new = key.len() + text.len();
        let held = usage.scopes.get(scope);
        let (keys, bytes) = held.map_or((0, 0), |s| (s.keys, s.bytes));
        if !existed && keys >= l.max_keys_per_scope {
            return Err(self.quota(format!("scope '{scope}' holds {keys} keys, its limit")));
        }
        // Saturating: a value salvaged without its scope (see `Disk::usage`) is
        // not counted, so the scope may hold less than it costs.
        if bytes.saturating_sub(old) + new > l.max_scope_bytes {
            return Err(self.quota(format!(
                "scope '{scope}' would hold more than {} bytes of keys and values (max_scope_bytes)",
                l.max_scope_bytes
            )));
        }
        if new_scope {
            (&disk.scopes, &disk.values).transaction(|(scopes, values)| {
                scopes.insert(scope.as_bytes(), owner.as_bytes())?;
                values.insert(k.as_slice(), text.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
            usage.scopes.insert(scope.into(), ScopeUsage { owner: owner.into(), ..ScopeUsage::default() });
            *usage.owned.entry(owner.into()).or_default() += 1;
        } else {
            // One key in a scope that exists: a plain insert is atomic on its own. A sled
            // transaction would seal its log buffer, so every set would cost a write and a
            // sync_file_range of its own.
            disk.values.insert(k.as_slice(), text.as_bytes())?;
        }
        let held = usage.scopes.get_mut(scope).expect("present");
        held.keys += usize::from(!existed);
        held.bytes = held.bytes.saturating_sub(old) + new;
        drop(usage);
        self.wrote();
        Ok(())
    }

    /// Deletes `key`; false if it was not there.
    pub fn delete(&self, scope: &str, key: &str) -> Result<bool> {
        let mut usage = self.writable()?;
        let Some(old) = self.disk()?.values.remove(scope_key(scope, key))? else { return Ok(false) };
        if let Some(held) = usage.scopes.get_mut(scope) {
            held.keys = held.keys.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(key.len() + old.len());
        }
        drop(usage);
        self.wrote();
        Ok(true)
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, SeqCst);
        self.pending_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
    }

    /// Ends a group of writes. With `flush_each_write` it flushes them, all
    /// with one fsync, and fails if they may not be on disk; otherwise the
    /// flush loop's clock does that.
    pub fn commit(&self) -> Result<()> {
        match self.flush_each_write {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Makes every write so far durable. A failure stops the store taking
    /// writes (they could not be made durable either).
    pub fn flush(&self) -> Result<()> {
        let writes = self.writes.load(SeqCst);
        let disk = self.disk()?;
        if let Err(e) = disk.generation.flush(&disk.db) {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_none() {
                log::error!("state store: flush failed ({e}); refusing writes until it is opened again");
            }
            *failure = Some(stores::describe(&e));
            return Err(e.into());
        }
        self.durable.fetch_max(writes, SeqCst);
        let mut pending = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.writes.load(SeqCst) == writes {
            *pending = None;
        }
        Ok(())
    }

    /// Closes cleanly once the state service has stopped: flushed, with a
    /// manifest that lets the next start notice a store that lost entries.
    pub fn close(&self) {
        if let Ok(disk) = self.disk() {
            disk.generation.close();
        }
    }

    /// How long the oldest write not yet durable has waited (zero if none).
    pub fn durability_lag(&self) -> Duration {
        let pending = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        pending.map_or(Duration::ZERO, |since| since.elapsed())
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
        self.usage().scopes.len()
    }
}

#[cfg(test)]
mod tests;
